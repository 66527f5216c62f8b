//! The suite: groups of cases, each an async check against the base under test. Later issues add
//! groups (security, search, transactions, federation, social domain).

mod bad_input;
mod capabilities;
mod conditional;
mod crud;
pub mod federation;
mod operations;
mod search;
mod security;
pub mod social;
mod transactions;
mod versioning;

use crate::client::Fhir;
use futures::future::BoxFuture;

pub type Outcome = Result<(), String>;

pub struct Case {
    pub name: &'static str,
    pub run: fn(Fhir) -> BoxFuture<'static, Outcome>,
}

pub struct Group {
    pub name: &'static str,
    pub cases: Vec<Case>,
}

pub fn groups() -> Vec<Group> {
    vec![
        Group {
            name: "capabilities",
            cases: capabilities::cases(),
        },
        Group {
            name: "crud",
            cases: crud::cases(),
        },
        Group {
            name: "versioning",
            cases: versioning::cases(),
        },
        Group {
            name: "conditional",
            cases: conditional::cases(),
        },
        Group {
            name: "bad-input",
            cases: bad_input::cases(),
        },
        Group {
            name: "security",
            cases: security::cases(),
        },
        Group {
            name: "search",
            cases: search::cases(),
        },
        Group {
            name: "transactions",
            cases: transactions::cases(),
        },
        Group {
            name: "operations",
            cases: operations::cases(),
        },
        Group {
            name: "federation",
            cases: federation::cases(),
        },
        Group {
            name: "social-domain",
            cases: social::cases(),
        },
    ]
}

/// `Err(message)` unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// A case from an async fn.
#[macro_export]
macro_rules! case {
    ($name:literal, $f:path) => {
        $crate::cases::Case {
            name: $name,
            run: |c| Box::pin($f(c)),
        }
    };
}

/// A Patient with a unique identifier, so cases never see each other's data.
pub fn test_patient(tag: &str) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:conformance:test", "value": format!("{tag}-{}", uuid::Uuid::new_v4()) }],
        "name": [{ "family": "Conformance", "given": [tag] }],
        "birthDate": "1980-05-17"
    })
}

/// The response is an OperationOutcome with at least one issue.
pub fn is_outcome(body: &serde_json::Value) -> bool {
    body["resourceType"] == "OperationOutcome"
        && body["issue"].as_array().is_some_and(|a| !a.is_empty())
}

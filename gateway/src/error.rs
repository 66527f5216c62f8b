//! The gateway's one error type. Every failure says where it came from; [`Error::outcome`] is the
//! one place where an error becomes an HTTP status and an `OperationOutcome`, and it never lets
//! internal detail (SQL, paths, upstream bodies) through: that goes to the log only.

use http::StatusCode;
use serde_json::{Value, json};
use std::fmt;

/// Where a failure came from. Decides the log level and whether detail may be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The request was wrong; the message is written for the client.
    Client,
    /// The policy said no.
    Policy,
    /// The gateway's own store failed.
    Store,
    /// A backend behind an adapter failed.
    Upstream,
    /// A defect or resource exhaustion in the gateway itself.
    Internal,
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: &'static str,
    /// FHIR IssueType code (`invalid`, `not-found`, `conflict`, ...).
    pub code: &'static str,
    pub diagnostics: String,
    /// FHIRPath-like location in the resource, when the issue has one.
    pub expression: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub status: StatusCode,
    pub origin: Origin,
    pub issues: Vec<Issue>,
    /// `WWW-Authenticate` value of a 401.
    pub challenge: Option<String>,
    /// Logged, never sent.
    internal: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Error {
        Error {
            status,
            origin: Origin::Client,
            issues: vec![Issue {
                severity: "error",
                code,
                diagnostics: message.into(),
                expression: None,
            }],
            challenge: None,
            internal: None,
        }
    }

    /// No credentials: 401 with a bare Bearer challenge (RFC 6750 section 3.1).
    pub fn unauthenticated() -> Error {
        Error {
            origin: Origin::Policy,
            challenge: Some("Bearer realm=\"fhir\"".into()),
            ..Error::client(
                StatusCode::UNAUTHORIZED,
                "login",
                "authentication required: send a bearer token",
            )
        }
    }

    /// Credentials that do not hold: 401 with the RFC 6750 error code.
    pub fn unauthorized(error: &str, description: &str) -> Error {
        Error {
            origin: Origin::Policy,
            challenge: Some(format!(
                "Bearer realm=\"fhir\", error=\"{error}\", error_description=\"{description}\""
            )),
            ..Error::client(StatusCode::UNAUTHORIZED, "security", description.to_owned())
        }
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::client(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// A resource that failed validation: one issue per finding, each with its location.
    pub fn invalid_resource(issues: Vec<Issue>) -> Error {
        Error {
            status: StatusCode::BAD_REQUEST,
            origin: Origin::Client,
            issues,
            challenge: None,
            internal: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::client(StatusCode::NOT_FOUND, "not-found", message)
    }

    pub fn gone(message: impl Into<String>) -> Error {
        Error::client(StatusCode::GONE, "deleted", message)
    }

    pub fn precondition_failed(message: impl Into<String>) -> Error {
        Error::client(StatusCode::PRECONDITION_FAILED, "conflict", message)
    }

    pub fn conflict(message: impl Into<String>) -> Error {
        Error::client(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn not_supported(status: StatusCode, message: impl Into<String>) -> Error {
        Error::client(status, "not-supported", message)
    }

    pub fn too_large(message: impl Into<String>) -> Error {
        Error::client(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Error {
        Error {
            origin: Origin::Policy,
            ..Error::client(StatusCode::FORBIDDEN, "forbidden", message)
        }
    }

    pub fn timeout() -> Error {
        Error {
            origin: Origin::Internal,
            ..Error::client(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took longer than the server allows",
            )
        }
    }

    /// The store failed. The client learns only that, and whether trying again may help.
    pub fn store(detail: impl fmt::Display, transient: bool) -> Error {
        let (status, message) = if transient {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is unavailable; try again",
            )
        } else {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed to process the request",
            )
        };
        Error {
            status,
            origin: Origin::Store,
            issues: vec![Issue {
                severity: "error",
                code: "exception",
                diagnostics: message.into(),
                expression: None,
            }],
            challenge: None,
            internal: Some(detail.to_string()),
        }
    }

    /// A backend behind an adapter failed (502, or 504 when it timed out): the client learns
    /// which backend, never what it said.
    pub fn upstream(status: StatusCode, message: impl Into<String>) -> Error {
        let code = if status == StatusCode::GATEWAY_TIMEOUT {
            "timeout"
        } else {
            "transient"
        };
        Error {
            origin: Origin::Upstream,
            ..Error::client(status, code, message)
        }
    }

    pub fn internal(detail: impl fmt::Display) -> Error {
        Error {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            origin: Origin::Internal,
            issues: vec![Issue {
                severity: "fatal",
                code: "exception",
                diagnostics: "internal error".into(),
                expression: None,
            }],
            challenge: None,
            internal: Some(detail.to_string()),
        }
    }

    /// The same error, placed: each issue says where (`Bundle.entry[3]`) before what.
    pub fn at(mut self, place: &str) -> Error {
        for i in &mut self.issues {
            i.diagnostics = format!("{place}: {}", i.diagnostics);
            if i.expression.is_none() {
                i.expression = Some(place.to_owned());
            }
        }
        self
    }

    /// What goes to the log: the client's message plus any internal detail.
    pub fn log_detail(&self) -> String {
        let mut s = self
            .issues
            .iter()
            .map(|i| i.diagnostics.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if let Some(d) = &self.internal {
            s.push_str(" | ");
            s.push_str(d);
        }
        s
    }

    /// The one mapping to the wire.
    pub fn outcome(&self) -> (StatusCode, Value) {
        (self.status, outcome(&self.issues))
    }
}

/// An `OperationOutcome` from issues (also used for informational outcomes).
pub fn outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut v =
                json!({ "severity": i.severity, "code": i.code, "diagnostics": i.diagnostics });
            if let Some(e) = &i.expression {
                v["expression"] = json!([e]);
            }
            v
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

/// An informational outcome, e.g. for `Prefer: return=OperationOutcome` or a deletion.
pub fn information(message: impl Into<String>) -> Value {
    outcome(&[Issue {
        severity: "information",
        code: "informational",
        diagnostics: message.into(),
        expression: None,
    }])
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?}): {}",
            self.status,
            self.origin,
            self.log_detail()
        )
    }
}

impl std::error::Error for Error {}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        if let sqlx::Error::Database(d) = &e {
            match d.code().as_deref() {
                // unique_violation: a concurrent writer got there first (the locks make this rare).
                Some("23505") => {
                    return Error {
                        internal: Some(e.to_string()),
                        ..Error::conflict("a concurrent write won; retry")
                    };
                }
                // query_canceled: the statement time-out. The store is slow, not gone.
                Some("57014") => {
                    return Error {
                        origin: Origin::Store,
                        internal: Some(e.to_string()),
                        ..Error::client(
                            StatusCode::GATEWAY_TIMEOUT,
                            "timeout",
                            "the store did not answer in time",
                        )
                    };
                }
                // admin_shutdown, crash_shutdown, cannot_connect_now, SQLite's busy/locked.
                Some("57P01" | "57P02" | "57P03" | "5" | "6") => return Error::store(e, true),
                _ => {}
            }
        }
        let transient = matches!(
            e,
            sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::WorkerCrashed
        ) || matches!(&e, sqlx::Error::Database(d) if d.message().contains("database is locked"));
        Error::store(e, transient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_hide_their_detail() {
        let e = Error::store(
            "near \"SELEC\": syntax error in SELEC * FROM resource",
            false,
        );
        let (status, body) = e.outcome();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let text = body.to_string();
        assert!(!text.contains("SELEC"), "{text}");
        assert!(e.log_detail().contains("SELEC"));
    }

    #[test]
    fn validation_issues_carry_their_location() {
        let e = Error::invalid_resource(vec![Issue {
            severity: "error",
            code: "structure",
            diagnostics: "bad".into(),
            expression: Some("Patient.gender".into()),
        }]);
        let (_, body) = e.outcome();
        assert_eq!(body["issue"][0]["expression"][0], "Patient.gender");
    }
}

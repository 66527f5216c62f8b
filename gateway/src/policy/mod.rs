//! The chokepoint. Two types make it impossible to skip:
//! - [`Permit<T>`]: the store takes one for every call, and only [`Policy::authorize`] makes one;
//! - [`Disclosed<T>`]: the response writer takes only these, and only [`Policy::disclose`] makes
//!   them, so every resource that leaves passes the same function.
//!
//! The foundation has no authentication yet: every request carries [`Principal::Open`], the
//! explicit "no authentication configured" principal, and the policy allows it everything. The
//! authorization issue replaces the decision (JWT, SMART scopes, consent, audit) behind these same
//! signatures; no caller changes.

use crate::error::Result;
use crate::fhir::operation::Operation;
use std::sync::Arc;

mod sealed {
    /// Private field: code outside `policy` cannot build a `Permit` or `Disclosed`.
    #[derive(Debug, Clone, Copy)]
    pub struct Sealed(pub(super) ());
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The development mode of the foundation: no authentication is configured.
    Open,
}

/// Proof that the policy allowed `op` for `principal`.
#[derive(Debug)]
pub struct Permit<T> {
    op: T,
    principal: Arc<Principal>,
    _sealed: sealed::Sealed,
}

impl<T> Permit<T> {
    pub fn op(&self) -> &T {
        &self.op
    }
    pub fn principal(&self) -> &Principal {
        &self.principal
    }
}

/// A value the policy has released to the principal.
#[derive(Debug)]
pub struct Disclosed<T> {
    value: T,
    _sealed: sealed::Sealed,
}

impl<T> Disclosed<T> {
    pub fn get(&self) -> &T {
        &self.value
    }
    pub fn into_inner(self) -> T {
        self.value
    }
}

/// The policy decision point.
#[derive(Debug, Default)]
pub struct Policy {}

impl Policy {
    pub fn new() -> Policy {
        Policy {}
    }

    /// Decides whether `principal` may perform `op`. Deny is the default of every later mode.
    pub fn authorize<T>(&self, principal: &Arc<Principal>, op: T) -> Result<Permit<T>> {
        match principal.as_ref() {
            Principal::Open => Ok(Permit {
                op,
                principal: principal.clone(),
                _sealed: sealed::Sealed(()),
            }),
        }
    }

    /// Decides whether a value may leave the server for `principal`.
    pub fn disclose<T>(&self, principal: &Principal, value: T) -> Result<Disclosed<T>> {
        match principal {
            Principal::Open => Ok(Disclosed {
                value,
                _sealed: sealed::Sealed(()),
            }),
        }
    }

    /// The interaction name of an operation (for logs and, later, audit).
    pub fn interaction(op: &Operation) -> &'static str {
        match op {
            Operation::Capabilities => "capabilities",
            Operation::Read(_) => "read",
            Operation::VRead(_) => "vread",
            Operation::Create(_) => "create",
            Operation::Update(_) => "update",
            Operation::Delete(_) => "delete",
            Operation::History(_) => "history",
            Operation::Search(_) => "search-type",
        }
    }
}

//! The chokepoint. Two types make it impossible to skip:
//! - [`Permit<T>`]: the store takes one for every call, and only [`Policy::authorize`] makes one;
//! - [`Disclosed<T>`]: a reply carries only these, and only [`Policy`] makes them, so every
//!   resource that leaves passes the same decision.
//!
//! Deny by default: an anonymous principal may read the CapabilityStatement and nothing else
//! (401); an authenticated one only what its SMART scopes grant (403 otherwise). Reads of single
//! resources the principal may not see answer 404, so that existence does not leak.

pub mod auth;
pub mod demo;
pub mod scopes;

use crate::config::Organization;
use crate::error::{Error, Result};
use crate::fhir::compartment;
use crate::fhir::operation::{
    Create, Delete, History, HistoryScope, Operation, Read, Search, Update, VRead,
};
use crate::store::Stored;
use scopes::{Context, Permission, Scope};
use serde_json::Value;
use std::sync::Arc;

mod sealed {
    /// Private field: code outside `policy` cannot build a `Permit` or `Disclosed`.
    #[derive(Debug, Clone, Copy)]
    pub struct Sealed(pub(super) ());
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    /// No credentials were presented.
    Anonymous,
    Token(Arc<TokenPrincipal>),
}

/// A verified token's subject.
#[derive(Debug)]
pub struct TokenPrincipal {
    pub issuer: String,
    pub subject: String,
    /// The organisation the issuer speaks for.
    pub organization: Arc<Organization>,
    pub scopes: Vec<Scope>,
    /// SMART launch context: the patient a `patient/` scope is about.
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
    pub client_id: Option<String>,
    pub purpose_of_use: Option<String>,
    pub token_id: Option<String>,
}

/// Proof that the policy allowed `op` for `principal`.
#[derive(Debug)]
pub struct Permit<T> {
    op: T,
    principal: Principal,
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

fn disclosed<T>(value: T) -> Disclosed<T> {
    Disclosed {
        value,
        _sealed: sealed::Sealed(()),
    }
}

/// What an operation needs from the scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Open to anyone (the CapabilityStatement).
    Public,
    /// A permission on one resource type.
    Type(String, Permission),
    /// A permission on every type (system-level history).
    AnyType(Permission),
}

pub trait Authorizable {
    fn requirement(&self) -> Requirement;
}

impl Authorizable for () {
    fn requirement(&self) -> Requirement {
        Requirement::Public
    }
}
impl Authorizable for Read {
    fn requirement(&self) -> Requirement {
        Requirement::Type(self.ty.clone(), Permission::Read)
    }
}
impl Authorizable for VRead {
    fn requirement(&self) -> Requirement {
        Requirement::Type(self.ty.clone(), Permission::Read)
    }
}
impl Authorizable for Create {
    fn requirement(&self) -> Requirement {
        Requirement::Type(self.ty.clone(), Permission::Create)
    }
}
impl Authorizable for Update {
    fn requirement(&self) -> Requirement {
        Requirement::Type(self.ty.clone(), Permission::Update)
    }
}
impl Authorizable for Delete {
    fn requirement(&self) -> Requirement {
        Requirement::Type(self.ty.clone(), Permission::Delete)
    }
}
impl Authorizable for Search {
    fn requirement(&self) -> Requirement {
        Requirement::Type(self.ty.clone(), Permission::Search)
    }
}
impl Authorizable for History {
    fn requirement(&self) -> Requirement {
        match &self.scope {
            HistoryScope::Instance(ty, _) => Requirement::Type(ty.clone(), Permission::Read),
            HistoryScope::Type(ty) => Requirement::Type(ty.clone(), Permission::Search),
            HistoryScope::System => Requirement::AnyType(Permission::Search),
        }
    }
}

/// The policy decision point.
#[derive(Debug, Default)]
pub struct Policy {}

impl Policy {
    pub fn new() -> Policy {
        Policy {}
    }

    /// Decides whether `principal` may perform `op`.
    pub fn authorize<T: Authorizable>(&self, principal: &Principal, op: T) -> Result<Permit<T>> {
        let requirement = op.requirement();
        if requirement != Requirement::Public {
            let token = match principal {
                Principal::Anonymous => return Err(Error::unauthenticated()),
                Principal::Token(t) => t,
            };
            let granted = token.scopes.iter().any(|s| match &requirement {
                Requirement::Public => true,
                Requirement::Type(ty, p) => s.grants(ty, *p) && usable(token, s, *p),
                Requirement::AnyType(p) => {
                    s.resource_type.is_none() && s.grants("", *p) && usable(token, s, *p)
                }
            });
            if !granted {
                return Err(Error::forbidden(match &requirement {
                    Requirement::Type(ty, p) => {
                        format!("the token's scopes do not allow {} on {ty}", verb(*p))
                    }
                    _ => "the token's scopes do not allow this".into(),
                }));
            }
        }
        Ok(Permit {
            op,
            principal: principal.clone(),
            _sealed: sealed::Sealed(()),
        })
    }

    /// One resource for a read: released, or "not found" (existence is not revealed).
    pub fn disclose(
        &self,
        principal: &Principal,
        s: Stored,
        how: Permission,
    ) -> Result<Disclosed<Stored>> {
        if self.may_see(principal, &s, how) {
            Ok(disclosed(s))
        } else {
            Err(Error::not_found(format!("{}/{} is not known", s.ty, s.id)))
        }
    }

    /// The entries of a page: what may not be seen is left out (filtered, not an error).
    /// Returns the released entries and how many were withheld.
    pub fn disclose_each(
        &self,
        principal: &Principal,
        items: Vec<Stored>,
        how: Permission,
    ) -> (Vec<Disclosed<Stored>>, usize) {
        let before = items.len();
        let out: Vec<Disclosed<Stored>> = items
            .into_iter()
            .filter(|s| self.may_see(principal, s, how))
            .map(disclosed)
            .collect();
        let withheld = before - out.len();
        (out, withheld)
    }

    /// A document assembled from disclosed parts (a bundle), or public (the CapabilityStatement).
    pub fn release_document(
        &self,
        _parts: &[Disclosed<Stored>],
        document: Value,
    ) -> Disclosed<Value> {
        disclosed(document)
    }

    /// The CapabilityStatement is public.
    pub fn release_public(&self, permit: &Permit<()>, document: Value) -> Disclosed<Value> {
        let _ = permit;
        disclosed(document)
    }

    /// The decision for one stored resource (deletions carry no data and pass on type alone).
    fn may_see(&self, principal: &Principal, s: &Stored, how: Permission) -> bool {
        let Principal::Token(token) = principal else {
            return false;
        };
        let granting: Vec<&Scope> = token
            .scopes
            .iter()
            .filter(|sc| sc.grants(&s.ty, how) && usable(token, sc, how))
            .collect();
        if granting.is_empty() {
            return false;
        }
        let Some(body) = &s.body else { return true };
        let needs_content = granting
            .iter()
            .all(|sc| !sc.constraints.is_empty() || sc.context == Context::Patient);
        if !needs_content {
            return true;
        }
        let Ok(resource) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        granting.iter().any(|sc| {
            let in_context = match sc.context {
                // Until patient compartments are indexed, a patient-context scope reaches the
                // patient's own Patient resource, and the AuditEvents of accesses to it.
                // A patient-context scope reaches the patient's compartment (the Patient itself,
                // and what references it where the CompartmentDefinition says).
                Context::Patient => {
                    let me = token.patient.as_deref().unwrap_or_default();
                    compartment::patients(&s.ty, &s.id, &resource)
                        .iter()
                        .any(|p| p == me)
                }
                Context::User | Context::System => true,
            };
            in_context
                && sc
                    .constraints
                    .iter()
                    .all(|(param, value)| constraint_holds(&resource, param, value))
        })
    }

    /// The patient whose compartment a search of `ty` must be limited to: when every scope that
    /// would let the principal search `ty` is a patient-context scope. The store then searches
    /// only that compartment; disclosure checks each entry all the same.
    pub fn search_compartment(&self, principal: &Principal, ty: &str) -> Option<String> {
        let Principal::Token(t) = principal else {
            return None;
        };
        let granting: Vec<&Scope> = t
            .scopes
            .iter()
            .filter(|s| s.grants(ty, Permission::Search) && usable(t, s, Permission::Search))
            .collect();
        if !granting.is_empty() && granting.iter().all(|s| s.context == Context::Patient) {
            t.patient.clone()
        } else {
            None
        }
    }

    /// The interaction name of an operation (for logs and audit).
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

/// Whether a scope can be used at all by this token: a `patient/` scope needs the patient launch
/// context, and (until patient compartments are indexed) grants reading only.
fn usable(token: &TokenPrincipal, scope: &Scope, p: Permission) -> bool {
    match scope.context {
        Context::Patient => {
            token.patient.is_some() && matches!(p, Permission::Read | Permission::Search)
        }
        Context::User | Context::System => true,
    }
}

fn verb(p: Permission) -> &'static str {
    match p {
        Permission::Create => "create",
        Permission::Read => "read",
        Permission::Update => "update",
        Permission::Delete => "delete",
        Permission::Search => "search",
    }
}

/// A token constraint `param=[system|]code` against the resource element of the same name
/// (`category`, `code`, `status`, ...): a code, a Coding or a CodeableConcept, single or repeated.
/// Constraints on other parameter kinds are not evaluated and so never hold (deny).
fn constraint_holds(resource: &Value, param: &str, value: &str) -> bool {
    let (system, code) = match value.split_once('|') {
        Some((s, c)) => (Some(s), c),
        None => (None, value),
    };
    let matches_coding = |c: &Value| {
        c["code"].as_str() == Some(code)
            && system.is_none_or(|s| c["system"].as_str().unwrap_or("") == s)
    };
    let matches = |v: &Value| match v {
        Value::String(s) => system.is_none_or(str::is_empty) && s == code,
        Value::Object(_) if v.get("coding").is_some() => v["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(matches_coding),
        Value::Object(_) => matches_coding(v),
        _ => false,
    };
    value.split(',').count() == 1
        && match resource.get(param) {
            Some(Value::Array(items)) => items.iter().any(matches),
            Some(v) => matches(v),
            None => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn constraints_match_codes_codings_and_concepts() {
        let obs = json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]});
        assert!(constraint_holds(
            &obs,
            "category",
            "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
        ));
        assert!(constraint_holds(&obs, "category", "laboratory"));
        assert!(!constraint_holds(&obs, "category", "other|laboratory"));
        assert!(!constraint_holds(&obs, "category", "vital-signs"));
        assert!(constraint_holds(&obs, "status", "final"));
        assert!(!constraint_holds(&obs, "code", "x"));
    }
}

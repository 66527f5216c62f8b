//! The chokepoint. Two types make it impossible to skip:
//! - [`Permit<T>`]: the store takes one for every call, and only [`Policy::authorize`] makes one;
//! - [`Disclosed<T>`]: a reply carries only these, and only [`Policy`] makes them, so every
//!   resource that leaves passes the same decision.
//!
//! Deny by default: an anonymous principal may read the CapabilityStatement and nothing else
//! (401); an authenticated one only what its SMART scopes grant (403 otherwise). Each resource
//! then passes the region's rules and the patient's consent ([`privacy`]). Reads of single
//! resources the principal may not see answer 404, so that existence does not leak.

pub mod auth;
pub mod consent;
pub mod demo;
pub mod pdp;
pub mod privacy;
pub mod regional;
pub mod scopes;
mod traits;

use crate::config::{Config, Organization};
use crate::error::{Error, Result};
use crate::fhir::compartment;
use crate::fhir::operation::{
    Create, Delete, History, HistoryScope, Operation, Read, Search, Target, Update, VRead,
};
use crate::store::{Store, Stored};
use privacy::Privacy;
pub use privacy::{Asked, Release};
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
#[derive(Debug, Clone)]
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
    /// The launch patient's other records (same BSN, other organisations; local ids and
    /// `{adapter}.{id}`): one person, so a `patient/` scope reaches their compartments too.
    /// Filled only by [`Policy::as_person`]; the launch patient stays the one writes go to.
    pub linked: Vec<String>,
}

impl TokenPrincipal {
    /// Whether `patient` is the launch patient or one of their linked records.
    fn is_me(&self, patient: &str) -> bool {
        self.patient.as_deref() == Some(patient) || self.linked.iter().any(|l| l == patient)
    }
}

/// A hospital's HL7 v2 feed (the MLLP listener): a system principal for the sending
/// organisation that may create and update what its messages carry, and nothing else. Only the
/// feed makes one, for a sender its config names; what it writes is audited like any request.
pub fn feed_principal(organization: Organization, feed: &str) -> Principal {
    Principal::Token(Arc::new(TokenPrincipal {
        issuer: "urn:healthhub-utrecht:gateway-feed".into(),
        subject: format!("hl7v2-feed/{feed}"),
        organization: Arc::new(organization),
        scopes: scopes::parse(
            "system/Patient.crus system/Encounter.crus system/Observation.crus \
             system/DiagnosticReport.crus system/Basic.crus",
        ),
        patient: None,
        fhir_user: None,
        client_id: Some(format!("hl7v2 feed {feed}")),
        purpose_of_use: None,
        token_id: None,
        linked: Vec::new(),
    }))
}

/// A municipality's iWmo/iJw messages (the `/istandaarden` route and the drop directory): a
/// system principal for the municipality that may create and update the clients and
/// allocations its messages carry, and the messages' receipts. Only the inbox makes one, for a
/// municipality its config names.
pub fn inbox_principal(organization: Organization, sender: &str) -> Principal {
    Principal::Token(Arc::new(TokenPrincipal {
        issuer: "urn:healthhub-utrecht:gateway-inbox".into(),
        subject: format!("istandaarden/{sender}"),
        organization: Arc::new(organization),
        scopes: scopes::parse("system/Patient.crus system/ServiceRequest.crus system/Basic.crus"),
        patient: None,
        fhir_user: None,
        client_id: Some(format!("istandaarden inbox {sender}")),
        purpose_of_use: None,
        token_id: None,
        linked: Vec::new(),
    }))
}

/// The operator of this gateway at its command line (`gateway import`): a system principal for
/// `organization` with every permission. Only the CLI makes one (it holds the data directory or
/// the database credentials already); what it does is audited like any request.
pub fn local_operator(organization: Organization) -> Principal {
    Principal::Token(Arc::new(TokenPrincipal {
        issuer: "urn:healthhub-utrecht:gateway-cli".into(),
        subject: "local-operator".into(),
        organization: Arc::new(organization),
        scopes: scopes::parse("system/*.cruds"),
        patient: None,
        fhir_user: None,
        client_id: Some("gateway import".into()),
        purpose_of_use: None,
        token_id: None,
        linked: Vec::new(),
    }))
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
    /// The permitted operation, for the store call that carries it out (the permit is used up).
    pub fn into_op(self) -> T {
        self.op
    }
}

/// A permit for the policy's own reads (a patient's consents, a BSN): never handed out, and what
/// it reads never leaves the policy.
fn internal_permit<T>(op: T) -> Permit<T> {
    Permit {
        op,
        principal: Principal::Anonymous,
        _sealed: sealed::Sealed(()),
    }
}

/// A value the policy has released to the principal.
#[derive(Debug)]
pub struct Disclosed<T> {
    value: T,
    /// Released by break-the-glass over a consent deny.
    emergency: bool,
    /// `Patient/[id]` of the patients a released resource concerns (for the audit), found
    /// while deciding, so the body is not parsed again.
    patients: Vec<String>,
    _sealed: sealed::Sealed,
}

impl<T> Disclosed<T> {
    pub fn get(&self) -> &T {
        &self.value
    }
    pub fn into_inner(self) -> T {
        self.value
    }
    pub fn by_emergency(&self) -> bool {
        self.emergency
    }
    pub fn patients(&self) -> &[String] {
        &self.patients
    }
    /// The released value with something added that the principal may also see (a Patient's
    /// `link`s to records it found with its own permits); the release stays as decided.
    pub fn amend(mut self, f: impl FnOnce(&mut T)) -> Disclosed<T> {
        f(&mut self.value);
        self
    }
}

fn disclosed<T>(value: T) -> Disclosed<T> {
    Disclosed {
        value,
        emergency: false,
        patients: Vec::new(),
        _sealed: sealed::Sealed(()),
    }
}

/// A stored resource the decision released.
fn released(s: Stored, release: Release, patients: Vec<String>) -> Option<Disclosed<Stored>> {
    let emergency = match release {
        Release::Allowed => false,
        Release::Emergency => true,
        Release::Withheld => return None,
    };
    Some(Disclosed {
        value: s,
        emergency,
        patients,
        _sealed: sealed::Sealed(()),
    })
}

/// What an operation needs from the scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Open to anyone (the CapabilityStatement).
    Public,
    /// Any authenticated principal (a bundle, whose entries are then each decided on their own).
    Authenticated,
    /// A permission on one resource type.
    Type(String, Permission),
    /// A permission on every type (system-level history).
    AnyType(Permission),
    /// Maintenance of the server itself (`$reindex`): a system-level scope with this permission
    /// on every type (`system/*.u`), never a user's or a patient's.
    System(Permission),
}

pub trait Authorizable {
    fn requirement(&self) -> Requirement;
    /// The resource a write would store, with the id it would get if known (for patient-context
    /// and constrained write scopes).
    fn written(&self) -> Option<(&str, &Value)> {
        None
    }
    /// What the permit fixes about the operation: a write is stamped with the organisation that
    /// holds it (see [`regional::stamp_holder`]).
    fn bind(&mut self, _holder: &Organization) {}
    /// The existing resource an update or delete changes (type and target).
    fn target(&self) -> Option<(&str, &Target)> {
        None
    }
}

/// What a request that is only a container (a batch or transaction) needs: a principal.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated;

impl Authorizable for Authenticated {
    fn requirement(&self) -> Requirement {
        Requirement::Authenticated
    }
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
    fn written(&self) -> Option<(&str, &Value)> {
        Some(("", &self.resource))
    }
    fn bind(&mut self, holder: &Organization) {
        regional::stamp_holder(&mut self.resource, holder);
    }
}
impl Authorizable for Update {
    fn requirement(&self) -> Requirement {
        Requirement::Type(self.ty.clone(), Permission::Update)
    }
    fn written(&self) -> Option<(&str, &Value)> {
        let id = match &self.target {
            Target::Id(id) => id.as_str(),
            Target::Criteria(_) => self.resource["id"].as_str().unwrap_or(""),
        };
        Some((id, &self.resource))
    }
    fn bind(&mut self, holder: &Organization) {
        regional::stamp_holder(&mut self.resource, holder);
    }
    fn target(&self) -> Option<(&str, &Target)> {
        Some((&self.ty, &self.target))
    }
}
impl Authorizable for Delete {
    fn requirement(&self) -> Requirement {
        Requirement::Type(self.ty.clone(), Permission::Delete)
    }
    fn target(&self) -> Option<(&str, &Target)> {
        Some((&self.ty, &self.target))
    }
}
impl Authorizable for Search {
    fn requirement(&self) -> Requirement {
        if self.ty == crate::fhir::operation::ALL_TYPES {
            Requirement::AnyType(Permission::Search)
        } else {
            Requirement::Type(self.ty.clone(), Permission::Search)
        }
    }
}
impl Authorizable for crate::fhir::patch::Patch {
    fn requirement(&self) -> Requirement {
        Requirement::Type(self.ty.clone(), Permission::Update)
    }
    fn target(&self) -> Option<(&str, &Target)> {
        Some((&self.ty, &self.target))
    }
}
impl Authorizable for crate::fhir::operation::Reindex {
    fn requirement(&self) -> Requirement {
        Requirement::System(Permission::Update)
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

/// What a page's disclosure released.
pub struct Disclosure {
    pub entries: Vec<Disclosed<Stored>>,
    /// How many entries were left out.
    pub withheld: usize,
}

/// The policy decision point.
pub struct Policy {
    store: Arc<dyn Store>,
    privacy: Privacy,
}

impl Policy {
    pub fn new(store: Arc<dyn Store>, config: &Config) -> Result<Policy> {
        Ok(Policy {
            privacy: Privacy::new(store.clone(), config)?,
            store,
        })
    }

    /// A patient-context token as the person it speaks for: its launch patient and that
    /// patient's other records (same BSN, here and at the backends), so that a `patient/` scope
    /// reaches the person's data at every organisation (each resource still disclosed, consent
    /// deciding). Any other principal is returned as it is.
    pub async fn as_person(&self, principal: &Principal) -> Result<Principal> {
        let Principal::Token(t) = principal else {
            return Ok(principal.clone());
        };
        let Some(patient) = &t.patient else {
            return Ok(principal.clone());
        };
        let linked = self.privacy.person(patient).await?;
        if linked.is_empty() {
            return Ok(principal.clone());
        }
        let mut person = TokenPrincipal::clone(t);
        person.linked = linked.as_ref().clone();
        Ok(Principal::Token(Arc::new(person)))
    }

    /// Identity linking's read of a Patient (`rest::link`): what `store.read` answers for the
    /// permit, from a copy kept as long as the consent caches keep theirs and dropped on a
    /// Patient write through this process. Only `disclose` releases it.
    pub async fn read_for_linking(&self, permit: &Permit<Read>) -> Result<Option<Stored>> {
        if permit.op().ty == "Patient" {
            self.privacy.patient(&permit.op().id).await
        } else {
            self.store.read(permit).await
        }
    }

    /// Identity linking's search for the Patients that carry one BSN: what `store.search`
    /// answers for the permit (its first page), cached like [`Policy::read_for_linking`] when
    /// the search is exactly that; any other search goes to the store. Only `disclose_each`
    /// releases what it finds.
    pub async fn search_for_linking(&self, permit: &Permit<Search>) -> Result<Vec<Stored>> {
        let op = permit.op();
        let c = &op.criteria;
        let bsn = match c.identifiers.as_slice() {
            [one] => match one.as_slice() {
                [t] if t.system.as_deref() == Some(privacy::BSN_SYSTEM) => t.value.as_deref(),
                _ => None,
            },
            _ => None,
        };
        let only_the_bsn = c.ids.is_empty()
            && c.compartment_linked.is_empty()
            && c.clauses.is_empty()
            && c.within.is_none()
            && c.fulltext.is_empty()
            && c.types.is_empty()
            && op.ty == "Patient"
            && op.cursor.is_none()
            && op.sort.is_empty()
            && op.includes.is_empty()
            && op.audit.is_none();
        match bsn {
            Some(bsn) if only_the_bsn => Ok(self
                .privacy
                .holders_of_bsn(bsn, c.compartment.as_deref(), op.count)
                .await?
                .as_ref()
                .clone()),
            _ => Ok(self.store.search(permit).await?.entries),
        }
    }

    /// Backend Patients' BSNs (for consent across organisations) come from `directory`.
    pub fn with_directory(mut self, directory: Arc<dyn privacy::Directory>) -> Policy {
        self.privacy.set_directory(directory);
        self
    }

    /// Every stored SearchParameter: the server's own configuration, read with an internal
    /// permit to install them (`search_params::install`), never disclosed through this call.
    pub async fn search_parameter_resources(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .search(&internal_permit(Search {
                    ty: "SearchParameter".into(),
                    count: 1000,
                    cursor: cursor.take(),
                    ..Default::default()
                }))
                .await?;
            for s in &page.entries {
                if let Some(body) = &s.body {
                    out.push(serde_json::from_slice(body).map_err(Error::internal)?);
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// The StructureDefinition with this canonical URL (`url|version` picks a version), read
    /// with an internal permit to validate against it: a profile is the server's configuration,
    /// not patient data, and its content is never disclosed through this call.
    pub async fn structure_definition(&self, canonical: &str) -> Result<Option<Value>> {
        let (url, version) = match canonical.split_once('|') {
            Some((u, v)) => (u, Some(v)),
            None => (canonical, None),
        };
        let mut cursor = None;
        let mut best: Option<Value> = None;
        loop {
            let page = self
                .store
                .search(&internal_permit(Search {
                    ty: "StructureDefinition".into(),
                    count: 200,
                    cursor: cursor.take(),
                    ..Default::default()
                }))
                .await?;
            for s in &page.entries {
                let Some(body) = &s.body else { continue };
                let v: Value = serde_json::from_slice(body).map_err(Error::internal)?;
                if v["url"].as_str() == Some(url)
                    && version.is_none_or(|want| v["version"].as_str() == Some(want))
                {
                    best = Some(v);
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(best),
            }
        }
    }

    /// Decides whether `principal` may perform `op`.
    pub fn authorize<T: Authorizable>(
        &self,
        principal: &Principal,
        mut op: T,
    ) -> Result<Permit<T>> {
        let requirement = op.requirement();
        if requirement != Requirement::Public {
            let token = match principal {
                Principal::Anonymous => return Err(Error::unauthenticated()),
                Principal::Token(t) => t,
            };
            let written = op.written();
            let granted = requirement == Requirement::Authenticated
                || token.scopes.iter().any(|s| match &requirement {
                    Requirement::Public | Requirement::Authenticated => true,
                    Requirement::Type(ty, p) => {
                        s.grants(ty, *p) && usable(token, s) && writable(token, s, ty, written)
                    }
                    Requirement::AnyType(p) => {
                        s.resource_type.is_none() && s.grants("", *p) && usable(token, s)
                    }
                    Requirement::System(p) => {
                        s.context == Context::System
                            && s.resource_type.is_none()
                            && s.grants("", *p)
                    }
                });
            if !granted {
                return Err(Error::forbidden(match &requirement {
                    Requirement::Type(ty, p) if written.is_some() => {
                        format!("the token's scopes do not allow {} of this {ty}", verb(*p))
                    }
                    Requirement::Type(ty, p) => {
                        format!("the token's scopes do not allow {} on {ty}", verb(*p))
                    }
                    _ => "the token's scopes do not allow this".into(),
                }));
            }
            op.bind(&token.organization);
        }
        Ok(Permit {
            op,
            principal: principal.clone(),
            _sealed: sealed::Sealed(()),
        })
    }

    /// Before an update or delete of an existing resource: a principal whose only way to write
    /// `ty` is a patient-context scope may touch only resources in that patient's compartment
    /// (and no conditional writes, whose target it could not see).
    pub async fn check_target<T: Authorizable>(&self, permit: &Permit<T>) -> Result<()> {
        let Principal::Token(token) = permit.principal() else {
            return Err(Error::unauthenticated());
        };
        let (Some((ty, target)), Requirement::Type(_, p)) =
            (permit.op().target(), permit.op().requirement())
        else {
            return Ok(());
        };
        let only_patient = token
            .scopes
            .iter()
            .filter(|s| s.grants(ty, p) && usable(token, s))
            .all(|s| s.context == Context::Patient);
        if !only_patient {
            return Ok(());
        }
        let id = match target {
            Target::Id(id) => id,
            Target::Criteria(_) => {
                return Err(Error::forbidden(
                    "conditional writes need a user or system scope",
                ));
            }
        };
        let read = internal_permit(Read {
            ty: ty.to_owned(),
            id: id.clone(),
        });
        let current = self.store.read(&read).await?;
        let me = token.patient.as_deref().unwrap_or_default();
        match current.and_then(|s| s.body) {
            None => Ok(()),
            Some(body) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if compartment::patients(ty, id, &v).iter().any(|x| x == me) {
                    Ok(())
                } else {
                    Err(Error::forbidden(format!(
                        "{ty}/{id} is not in the patient's compartment"
                    )))
                }
            }
        }
    }

    /// The version a PATCH applies to, once the principal may update the type (and, for a
    /// patient-context scope, that resource). Read with an internal permit: its content leaves
    /// only as the patched result, through [`Policy::disclose`].
    pub async fn patch_base(
        &self,
        principal: &Principal,
        op: &crate::fhir::patch::Patch,
    ) -> Result<Stored> {
        let permit = self.authorize(principal, op.clone())?;
        self.check_target(&permit).await?;
        let what = |id: &str| format!("{}/{id} is not known", op.ty);
        let current = match &op.target {
            Target::Id(id) => self
                .store
                .read(&internal_permit(Read {
                    ty: op.ty.clone(),
                    id: id.clone(),
                }))
                .await?
                .ok_or_else(|| Error::not_found(what(id)))?,
            Target::Criteria(criteria) => {
                let mut page = self
                    .store
                    .search(&internal_permit(Search {
                        ty: op.ty.clone(),
                        criteria: criteria.clone(),
                        count: 2,
                        ..Default::default()
                    }))
                    .await?;
                match page.entries.len() {
                    0 => return Err(Error::not_found("no resource matches the criteria")),
                    1 => page.entries.remove(0),
                    _ => {
                        return Err(Error::precondition_failed(
                            "the conditional criteria match more than one resource",
                        ));
                    }
                }
            }
        };
        if current.is_deleted() {
            return Err(Error::gone(format!(
                "{}/{} was deleted",
                current.ty, current.id
            )));
        }
        Ok(current)
    }

    /// One resource for a read: released, or "not found" (existence is not revealed).
    pub async fn disclose(
        &self,
        principal: &Principal,
        asked: &Asked,
        s: Stored,
        how: Permission,
    ) -> Result<Disclosed<Stored>> {
        let (release, patients) = self.may_see(principal, asked, &s, how).await?;
        let what = format!("{}/{} is not known", s.ty, s.id);
        released(s, release, patients).ok_or_else(|| Error::not_found(what))
    }

    /// The entries of a page: what may not be seen is left out (filtered, not an error).
    pub async fn disclose_each(
        &self,
        principal: &Principal,
        asked: &Asked,
        items: Vec<Stored>,
        how: Permission,
    ) -> Result<Disclosure> {
        let before = items.len();
        let mut entries = Vec::with_capacity(before);
        for s in items {
            let (release, patients) = self.may_see(principal, asked, &s, how).await?;
            entries.extend(released(s, release, patients));
        }
        Ok(Disclosure {
            withheld: before - entries.len(),
            entries,
        })
    }

    /// A document assembled from disclosed parts (a bundle), or public (the CapabilityStatement).
    pub fn release_document<T>(&self, _parts: &[Disclosed<Stored>], document: T) -> Disclosed<T> {
        disclosed(document)
    }

    /// The CapabilityStatement is public.
    pub fn release_public(&self, permit: &Permit<()>, document: Value) -> Disclosed<Value> {
        let _ = permit;
        disclosed(document)
    }

    /// A patient's BSN, for the audit (cached; `None` when the Patient carries none).
    pub async fn bsn_of(&self, patient: &str) -> Option<String> {
        match self.privacy.bsn_of(patient).await {
            Ok(b) => b.map(|b| b.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "BSN lookup for the audit failed");
                None
            }
        }
    }

    /// A write went through: drop what the consent caches derived from the old version.
    pub async fn written(&self, ty: &str, id: &str) {
        match ty {
            "Consent" => self.privacy.consent_changed(),
            "Patient" => self.privacy.patient_changed(id).await,
            _ => {}
        }
    }

    /// The decision for one stored resource: scopes (with their constraints and patient
    /// context), then the region's rules and the patient's consent. Deletions carry no data and
    /// pass on type alone. With the decision come the patients the resource concerns (for the
    /// audit of what was released).
    async fn may_see(
        &self,
        principal: &Principal,
        asked: &Asked,
        s: &Stored,
        how: Permission,
    ) -> Result<(Release, Vec<String>)> {
        let withheld = Ok((Release::Withheld, Vec::new()));
        let Principal::Token(token) = principal else {
            return withheld;
        };
        let granting: Vec<&Scope> = token
            .scopes
            .iter()
            .filter(|sc| sc.grants(&s.ty, how) && usable(token, sc))
            .collect();
        if granting.is_empty() {
            return withheld;
        }
        let Some(body) = &s.body else {
            let patients = crate::audit::patients_of(&s.ty, &s.id, &Value::Null);
            return Ok((Release::Allowed, patients));
        };
        let Some(traits) = self.privacy.traits(&s.ty, &s.id, body).await else {
            return withheld;
        };
        // Scope constraints are checked on the resource itself, parsed only for them.
        let resource = if granting.iter().any(|sc| !sc.constraints.is_empty()) {
            match serde_json::from_slice::<Value>(body) {
                Ok(r) => Some(r),
                Err(_) => return withheld,
            }
        } else {
            None
        };
        let in_scope = granting.iter().any(|sc| {
            let in_context = match sc.context {
                // A patient-context scope reaches the patient's compartment (the Patient itself,
                // and what references it where the CompartmentDefinition says).
                Context::Patient => traits.compartment.iter().any(|p| token.is_me(p)),
                Context::User | Context::System => true,
            };
            in_context
                && sc.constraints.iter().all(|(param, value)| {
                    resource
                        .as_ref()
                        .is_some_and(|r| constraint_holds(r, param, value))
                })
        });
        if !in_scope {
            return withheld;
        }
        let release = self.privacy.release(token, asked, &s.ty, &traits).await?;
        Ok((release, traits.audited.clone()))
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
            .filter(|s| s.grants(ty, Permission::Search) && usable(t, s))
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
            Operation::Reindex(_) => "operation",
            Operation::Bundle(b) => match b.kind {
                crate::fhir::bundle_request::Kind::Batch => "batch",
                crate::fhir::bundle_request::Kind::Transaction => "transaction",
            },
            Operation::Patch(p) => match p.body {
                crate::fhir::patch::PatchBody::Meta { .. } => "operation",
                _ => "patch",
            },
            Operation::Meta(_)
            | Operation::Everything(_)
            | Operation::Validate(_)
            | Operation::Export(_)
            | Operation::ExportJob(_) => "operation",
        }
    }
}

/// Whether a scope can be used at all by this token: a `patient/` scope needs the patient launch
/// context.
fn usable(token: &TokenPrincipal, scope: &Scope) -> bool {
    match scope.context {
        Context::Patient => token.patient.is_some(),
        Context::User | Context::System => true,
    }
}

/// Whether a scope lets this resource be written: a patient-context scope only into the
/// patient's compartment, a constrained scope only what meets its constraints.
fn writable(
    token: &TokenPrincipal,
    scope: &Scope,
    ty: &str,
    written: Option<(&str, &Value)>,
) -> bool {
    let Some((id, body)) = written else {
        return true;
    };
    let in_context = match scope.context {
        Context::Patient => {
            let me = token.patient.as_deref().unwrap_or_default();
            compartment::patients(ty, id, body).iter().any(|p| p == me)
        }
        Context::User | Context::System => true,
    };
    in_context
        && scope
            .constraints
            .iter()
            .all(|(param, value)| constraint_holds(body, param, value))
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

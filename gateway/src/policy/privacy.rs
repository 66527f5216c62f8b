//! The consent decision for one resource leaving the server: regional rules, the patient's
//! `Consent` resources (read from the gateway's own store), the optional external decision point,
//! and break-the-glass. Decisions, consent rules, decision-point answers, patients' BSNs and the
//! Patients that identity linking reads (`rest::link`) are cached in moka. A Consent or Patient
//! write through this process drops what it may change; the time-to-live bounds how long another
//! replica's write takes to be seen.

use super::consent::{self, Facts, Rule, Verdict};
use super::pdp::DecisionPoint;
use super::regional::DataClass;
use super::traits::{TraitCache, Traits};
use super::{TokenPrincipal, internal_permit};
use crate::config::{Config, ConsentPolicy, Organization};
use crate::error::{Error, Result};
use crate::fhir::operation::{Read, Search};
use crate::fhir::search::Criteria;
use crate::store::{Store, Stored};
use moka::future::Cache;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";

/// Where the policy learns the BSN of a Patient that a backend holds (`{adapter}.{id}`), so that
/// the person's consents, recorded on any of their records, govern every organisation's data
/// about them. Implemented by the federation; what it reads never leaves the policy.
pub trait Directory: Send + Sync {
    /// Whether `patient` names a Patient held at a backend.
    fn holds(&self, patient: &str) -> bool;
    /// That Patient's BSN (`None`: unknown there, none recorded, or the backend is down).
    fn bsn_of<'a>(&'a self, patient: &'a str) -> futures::future::BoxFuture<'a, Option<String>>;
    /// The ids (`{adapter}.{id}`) of the backends' Patients that carry `bsn`; a backend that is
    /// down contributes none.
    fn records_with<'a>(&'a self, bsn: &'a str) -> futures::future::BoxFuture<'a, Vec<String>>;
}

/// Purposes of use that ask for emergency access (v3 ActReason).
const EMERGENCY: [&str; 2] = ["ETREAT", "BTG"];

/// What the request says about why it is made.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    /// v3 ActReason purpose of use (`TREAT` when nothing was said).
    pub purpose: String,
    /// Break-the-glass: an emergency purpose with a stated reason.
    pub emergency_reason: Option<String>,
}

impl Asked {
    /// From the token's `purpose_of_use` claim, overridden by the `X-Purpose-Of-Use` header, and
    /// the `X-Break-Glass-Reason` header. An emergency purpose without a reason is refused (400):
    /// break-the-glass is never implicit.
    pub fn from_request(
        token_purpose: Option<&str>,
        header_purpose: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Asked> {
        let purpose = header_purpose
            .or(token_purpose)
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or("TREAT")
            .to_owned();
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        let emergency = EMERGENCY.contains(&purpose.as_str());
        match (emergency, reason) {
            (true, Some(r)) => Ok(Asked {
                purpose,
                emergency_reason: Some(r.chars().take(500).collect()),
            }),
            (true, None) if header_purpose.is_some() => Err(Error::invalid(
                "emergency access (break-the-glass) needs a reason in X-Break-Glass-Reason",
            )),
            (false, Some(_)) => Err(Error::invalid(
                "X-Break-Glass-Reason is only meaningful with purpose of use ETREAT",
            )),
            _ => Ok(Asked {
                purpose,
                emergency_reason: None,
            }),
        }
    }
}

/// The consent layer's answer for one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Allowed,
    /// Consent (or the region's opt-in default) denied; break-the-glass overrode it.
    Emergency,
    Withheld,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    patient: String,
    requester: (String, String),
    holder: Option<(String, String)>,
    ty: String,
    categories: Vec<(String, String)>,
    purpose: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PdpKey {
    bsn: String,
    requester: (String, String),
    holder: (String, String),
    purpose: String,
}

pub struct Privacy {
    store: Arc<dyn Store>,
    policy: ConsentPolicy,
    orgs: HashMap<(String, String), Arc<Organization>>,
    rules: Cache<String, Arc<Vec<Rule>>>,
    decisions: Cache<DecisionKey, Verdict>,
    answers: Cache<PdpKey, Verdict>,
    bsns: Cache<String, Option<Arc<str>>>,
    persons: Cache<String, Arc<Vec<String>>>,
    /// Patients of this store as read for identity linking (`rest::link`), by id.
    patients: Cache<String, Option<Stored>>,
    /// This store's Patients carrying a BSN (within a patient compartment, if the search was
    /// limited to one), for identity linking.
    holders_of_bsn: Cache<(String, Option<String>, u32), Arc<Vec<Stored>>>,
    /// What decisions read from a resource, by its exact body.
    traits: TraitCache,
    pdp: Option<DecisionPoint>,
    directory: Option<Arc<dyn Directory>>,
}

fn cache<K, V>(capacity: u64, ttl_secs: u64) -> Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(if ttl_secs == 0 { 0 } else { capacity })
        .time_to_live(Duration::from_secs(ttl_secs.max(1)))
        .build()
}

impl Privacy {
    pub fn new(store: Arc<dyn Store>, config: &Config) -> Result<Privacy> {
        let policy = config.consent.clone();
        let mut orgs = HashMap::new();
        let mut known: Vec<Organization> = config
            .auth
            .issuers
            .iter()
            .map(|i| i.organization.clone())
            .collect();
        if config.auth.demo {
            known.extend(super::demo::organizations().into_iter().map(|(_, o)| o));
        }
        for o in known {
            orgs.insert((o.system.clone(), o.value.clone()), Arc::new(o));
        }
        let pdp = match &policy.decision_point {
            Some(c) => Some(DecisionPoint::new(c).map_err(Error::internal)?),
            None => None,
        };
        let ttl = policy.cache_ttl_secs;
        let decision_ttl = match &policy.decision_point {
            Some(d) => ttl.min(d.cache_ttl_secs),
            None => ttl,
        };
        let pdp_ttl = policy
            .decision_point
            .as_ref()
            .map_or(0, |d| d.cache_ttl_secs);
        Ok(Privacy {
            store,
            rules: cache(policy.cache_capacity, ttl),
            decisions: cache(policy.cache_capacity, decision_ttl),
            answers: cache(policy.cache_capacity, pdp_ttl),
            bsns: cache(policy.cache_capacity, ttl),
            persons: cache(policy.cache_capacity, ttl),
            patients: cache(policy.cache_capacity, ttl),
            holders_of_bsn: cache(policy.cache_capacity, ttl),
            traits: TraitCache::new(),
            policy,
            orgs,
            pdp,
            directory: None,
        })
    }

    /// Backend Patients' BSNs come from `directory`.
    pub fn set_directory(&mut self, directory: Arc<dyn Directory>) {
        self.directory = Some(directory);
    }

    /// The traits of a stored resource's body (see [`super::traits`]); `None` if it is not JSON.
    pub async fn traits(&self, ty: &str, id: &str, body: &bytes::Bytes) -> Option<Arc<Traits>> {
        self.traits.of(&self.policy, ty, id, body).await
    }

    /// May this resource be released to `token`, as far as the region's rules and the patient's
    /// consent go? (Scopes were checked before; this never widens them.)
    pub async fn release(
        &self,
        token: &TokenPrincipal,
        asked: &Asked,
        ty: &str,
        traits: &Traits,
    ) -> Result<Release> {
        let me = &token.organization;
        let holder_ids = traits
            .holder
            .as_ref()
            .map(|(s, v)| (s.as_str(), v.as_str()));
        if holder_ids.is_some_and(|(s, v)| s == me.system && v == me.value) {
            return Ok(Release::Allowed);
        }
        let (class, categories) = (traits.class, &traits.categories);
        let barred = self.policy.medical_barred.contains(&me.kind);
        if class == DataClass::Medical && barred {
            return Ok(Release::Withheld);
        }
        let patients = &traits.compartment;
        // Administrative data is shared by scope alone, except with a social-domain organisation
        // (a municipality): that a care provider holds a record of someone tells of care, so a
        // patient's record held by another organisation needs the person's consent, like
        // social-domain data (below); its own residents' records it holds itself (above).
        if class == DataClass::Administrative && (!barred || patients.is_empty()) {
            return Ok(Release::Allowed);
        }
        if patients.is_empty() {
            return Ok(Release::Allowed);
        }
        let holder = holder_ids.map(|(s, v)| self.organization(s, v));
        // Social-domain data addressed to the asking organisation (an allocation whose
        // performer it is): its mandate, unless the patient's consent says otherwise.
        if class == DataClass::SocialDomain && traits.addressed_to(me) {
            for patient in patients {
                let rules = self.rules_for(patient).await?;
                let facts = Facts {
                    requester: me,
                    holder: holder.as_deref(),
                    purpose: &asked.purpose,
                    resource_type: ty,
                    categories,
                    at: time::OffsetDateTime::now_utc(),
                };
                if let Some((Verdict::Deny, _)) = consent::decide(&rules, &facts) {
                    return Ok(Release::Withheld);
                }
            }
            return Ok(Release::Allowed);
        }
        // The patient's own record, to the patient (fhirUser names them, or names the launch
        // patient of whose person the record is one).
        let launched_by_me = token
            .patient
            .as_deref()
            .zip(token.fhir_user.as_deref())
            .is_some_and(|(me, user)| names_patient(user, me));
        if let Some(user) = &token.fhir_user
            && patients
                .iter()
                .any(|p| names_patient(user, p) || (launched_by_me && token.is_me(p)))
        {
            return Ok(Release::Allowed);
        }
        for patient in patients {
            let verdict = self
                .decision(patient, token, holder.as_deref(), ty, categories, asked)
                .await?;
            if verdict == Verdict::Deny {
                return Ok(if asked.emergency_reason.is_some() {
                    Release::Emergency
                } else {
                    Release::Withheld
                });
            }
        }
        Ok(Release::Allowed)
    }

    async fn decision(
        &self,
        patient: &str,
        token: &TokenPrincipal,
        holder: Option<&Organization>,
        ty: &str,
        categories: &[(String, String)],
        asked: &Asked,
    ) -> Result<Verdict> {
        let me = &token.organization;
        let key = DecisionKey {
            patient: patient.to_owned(),
            requester: (me.system.clone(), me.value.clone()),
            holder: holder.map(|h| (h.system.clone(), h.value.clone())),
            ty: ty.to_owned(),
            categories: categories.to_vec(),
            purpose: asked.purpose.clone(),
        };
        self.decisions
            .try_get_with(key, async {
                let rules = self.rules_for(patient).await?;
                let facts = Facts {
                    requester: me,
                    holder,
                    purpose: &asked.purpose,
                    resource_type: ty,
                    categories,
                    at: time::OffsetDateTime::now_utc(),
                };
                if let Some((verdict, _)) = consent::decide(&rules, &facts) {
                    return Ok(verdict);
                }
                if let (Some(pdp), Some(holder)) = (&self.pdp, holder)
                    && let Some(bsn) = self.bsn_of(patient).await?
                {
                    let key = PdpKey {
                        bsn: bsn.to_string(),
                        requester: (me.system.clone(), me.value.clone()),
                        holder: (holder.system.clone(), holder.value.clone()),
                        purpose: asked.purpose.clone(),
                    };
                    let verdict = self
                        .answers
                        .get_with(key, pdp.ask(&bsn, me, holder, &asked.purpose))
                        .await;
                    return Ok(verdict);
                }
                Ok(if self.policy.opt_in {
                    Verdict::Deny
                } else {
                    Verdict::Permit
                })
            })
            .await
            .map_err(|e: Arc<Error>| {
                Error::store(format!("consent could not be decided: {e}"), true)
            })
    }

    /// The rules of every Consent in the compartment of the patient or of any other record of
    /// the same person in this store (same BSN): a person's consent is theirs, whichever
    /// organisation's record it was recorded on (as Mitz keys consent by BSN).
    async fn rules_for(&self, patient: &str) -> Result<Arc<Vec<Rule>>> {
        self.rules
            .try_get_with(patient.to_owned(), async {
                let linked = match self.bsn_of(patient).await? {
                    Some(bsn) => self.records_with(&bsn, patient).await?,
                    None => Vec::new(),
                };
                let mut rules = Vec::new();
                let mut cursor = None;
                // A patient with more than 10,000 consents is not a patient but an attack; the
                // rules beyond are not read, and that can only narrow what is permitted if they
                // were permits (a deny among them would be missed: refuse instead).
                for _ in 0..10 {
                    let permit = internal_permit(Search {
                        ty: "Consent".into(),
                        criteria: Criteria {
                            compartment: Some(patient.to_owned()),
                            compartment_linked: linked.clone(),
                            ..Default::default()
                        },
                        count: 1000,
                        cursor: cursor.take(),
                        applied: vec![],
                        audit: None,
                        includes: Vec::new(),
                        total: false,
                        subset: None,
                        ..Default::default()
                    });
                    let page = self.store.search(&permit).await?;
                    for s in &page.entries {
                        if let Some(body) = &s.body
                            && let Ok(v) = serde_json::from_slice::<Value>(body)
                        {
                            rules.extend(consent::rules_of(&v, &s.id));
                        }
                    }
                    match page.next {
                        Some(n) => cursor = Some(n),
                        None => return Ok(Arc::new(rules)),
                    }
                }
                Err(Error::store(
                    "too many Consent resources for one patient",
                    false,
                ))
            })
            .await
            .map_err(|e: Arc<Error>| Error::store(format!("consents could not be read: {e}"), true))
    }

    /// The patient's other records, here and at the backends (same BSN): one person. Cached for
    /// the consent cache's time-to-live, dropped on any Patient write through this process.
    pub async fn person(&self, patient: &str) -> Result<Arc<Vec<String>>> {
        self.persons
            .try_get_with(patient.to_owned(), async {
                let Some(bsn) = self.bsn_of(patient).await? else {
                    return Ok(Arc::new(Vec::new()));
                };
                let mut out = self.records_with(&bsn, patient).await?;
                if let Some(d) = &self.directory {
                    out.extend(
                        d.records_with(&bsn)
                            .await
                            .into_iter()
                            .filter(|id| id != patient),
                    );
                }
                Ok::<_, Error>(Arc::new(out))
            })
            .await
            .map_err(|e: Arc<Error>| {
                Error::store(format!("patient could not be linked: {e}"), true)
            })
    }

    /// The other Patients in this store that carry `bsn` (at most 100: one person, a few
    /// organisations).
    async fn records_with(&self, bsn: &str, patient: &str) -> Result<Vec<String>> {
        Ok(self
            .holders_of_bsn(bsn, None, 100)
            .await?
            .iter()
            .filter(|s| s.id != patient)
            .map(|s| s.id.clone())
            .collect())
    }

    /// The patient's BSN, if the Patient resource carries one: from this store, or for a
    /// backend's Patient from the directory (not cached here: the adapter's cache is, and a
    /// backend that is down must not leave a "no BSN" behind).
    pub async fn bsn_of(&self, patient: &str) -> Result<Option<Arc<str>>> {
        if let Some(d) = &self.directory
            && d.holds(patient)
        {
            return Ok(d.bsn_of(patient).await.map(Arc::from));
        }
        self.bsns
            .try_get_with(patient.to_owned(), async {
                // The Patient as identity linking reads it: one cached read for both.
                let stored = self.patient(patient).await?;
                let bsn = stored
                    .and_then(|s| s.body)
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|v| bsn_in(&v).map(Arc::from));
                Ok::<_, Error>(bsn)
            })
            .await
            .map_err(|e: Arc<Error>| Error::store(format!("patient could not be read: {e}"), true))
    }

    /// A Patient of this store, as `store.read` of a `Patient` read answers, cached like the
    /// consent caches. Every search for one patient's data links by BSN, which read the Patient
    /// and searched its BSN on every request: two of the three statements of a lab page.
    pub async fn patient(&self, id: &str) -> Result<Option<Stored>> {
        self.patients
            .try_get_with(id.to_owned(), async {
                let permit = internal_permit(Read {
                    ty: "Patient".into(),
                    id: id.to_owned(),
                });
                self.store.read(&permit).await
            })
            .await
            .map_err(|e: Arc<Error>| Error::store(format!("patient could not be read: {e}"), true))
    }

    /// This store's Patients (deleted ones left out) that carry `bsn`, within `compartment` if
    /// given; at most `limit`. Cached like [`Privacy::patient`].
    pub async fn holders_of_bsn(
        &self,
        bsn: &str,
        compartment: Option<&str>,
        limit: u32,
    ) -> Result<Arc<Vec<Stored>>> {
        let key = (bsn.to_owned(), compartment.map(str::to_owned), limit);
        self.holders_of_bsn
            .try_get_with(key, async {
                let permit = internal_permit(Search {
                    ty: "Patient".into(),
                    criteria: Criteria {
                        identifiers: vec![vec![crate::fhir::search::Token {
                            system: Some(BSN_SYSTEM.into()),
                            value: Some(bsn.to_owned()),
                        }]],
                        compartment: compartment.map(str::to_owned),
                        ..Default::default()
                    },
                    count: limit,
                    total: false,
                    ..Default::default()
                });
                let page = self.store.search(&permit).await?;
                Ok::<_, Error>(Arc::new(
                    page.entries
                        .into_iter()
                        .filter(|s| !s.is_deleted())
                        .collect(),
                ))
            })
            .await
            .map_err(|e: Arc<Error>| {
                Error::store(format!("patients could not be searched: {e}"), true)
            })
    }

    /// A Consent was written or deleted: every cached rule and decision may be stale.
    pub fn consent_changed(&self) {
        self.rules.invalidate_all();
        self.decisions.invalidate_all();
    }

    /// A Patient was written or deleted: its BSN may have changed.
    pub async fn patient_changed(&self, id: &str) {
        self.bsns.invalidate(id).await;
        self.persons.invalidate_all();
        self.patients.invalidate(id).await;
        // A new or changed Patient may carry any BSN.
        self.holders_of_bsn.invalidate_all();
        // Which records are one person (and so whose consents apply) may have changed too.
        self.rules.invalidate_all();
        self.decisions.invalidate_all();
    }

    /// The organisation with this identifier, as configured (type `unknown` otherwise).
    fn organization(&self, system: &str, value: &str) -> Arc<Organization> {
        self.orgs
            .get(&(system.to_owned(), value.to_owned()))
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(Organization {
                    system: system.to_owned(),
                    value: value.to_owned(),
                    kind: "unknown".into(),
                    name: value.to_owned(),
                })
            })
    }
}

/// The BSN among a Patient's identifiers.
pub fn bsn_in(patient: &Value) -> Option<String> {
    patient["identifier"]
        .as_array()?
        .iter()
        .find(|i| i["system"] == BSN_SYSTEM)?["value"]
        .as_str()
        .map(str::to_owned)
}

/// Whether a `fhirUser` (`Patient/x` or an absolute URL ending so) names this patient.
fn names_patient(fhir_user: &str, patient: &str) -> bool {
    let tail = format!("Patient/{patient}");
    fhir_user == tail || fhir_user.ends_with(&format!("/{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purpose_and_break_the_glass() {
        let a = Asked::from_request(None, None, None).unwrap();
        assert_eq!(a.purpose, "TREAT");
        assert!(a.emergency_reason.is_none());
        let a = Asked::from_request(Some("TREAT"), Some("ETREAT"), Some(" unconscious ")).unwrap();
        assert_eq!(a.emergency_reason.as_deref(), Some("unconscious"));
        assert!(Asked::from_request(None, Some("ETREAT"), None).is_err());
        assert!(Asked::from_request(None, None, Some("why")).is_err());
        // A token that says ETREAT without a reason gets no override, and no error.
        let a = Asked::from_request(Some("ETREAT"), None, None).unwrap();
        assert!(a.emergency_reason.is_none());
        assert!(names_patient("https://x/fhir/Patient/7", "7"));
        assert!(!names_patient("Patient/17", "7"));
    }
}

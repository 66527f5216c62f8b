//! What the disclosure decision reads from a stored resource (its holder, data class and
//! categories, the patients whose compartment it is in, the organisations it is addressed to,
//! the patients the audit names), derived once per exact body and cached.
//!
//! Why: every resource that leaves the server is decided on, and parsing its JSON into a
//! `serde_json::Value` for that was ~7 % of the gateway's CPU under point reads (perf,
//! `wrk -c32`), more than the consent decision itself. The same body always gives the same traits
//! (the region's policy is fixed for the life of the process), so the cache is keyed by the body's
//! bytes themselves, with its type and id: never stale, whichever store or adapter the resource
//! came from, and nothing of it is ever answered from the cache. A token's scope constraints
//! (`?category=...`) are not traits: they are checked on the parsed resource, parsed only then.

use super::regional::{self, DataClass};
use crate::config::{ConsentPolicy, Organization};
use crate::fhir::compartment;
use bytes::Bytes;
use moka::future::Cache;
use serde_json::Value;
use std::sync::Arc;

/// Bodies larger than this are derived each time rather than kept as a cache key.
const MAX_CACHED_BODY: usize = 64 << 10;
/// The cache's budget, in bytes of the bodies it keys by (plus a fixed cost per entry).
const CACHE_BYTES: u64 = 32 << 20;
const ENTRY_COST: u32 = 512;

#[derive(Debug, PartialEq, Eq)]
pub struct Traits {
    /// The organisation that holds it (identifier system, value), from its holder tag.
    pub holder: Option<(String, String)>,
    pub class: DataClass,
    /// Its data categories (see [`regional::classify`]).
    pub categories: Vec<(String, String)>,
    /// The patients whose compartment it is in.
    pub compartment: Vec<String>,
    /// The identifiers (system, value) its `performer`s carry.
    performers: Vec<(String, String)>,
    /// `Patient/[id]` of the patients the audit names (see `audit::patients_of`).
    pub audited: Vec<String>,
}

impl Traits {
    pub fn of(policy: &ConsentPolicy, ty: &str, id: &str, resource: &Value) -> Traits {
        let holder = regional::holder_of(resource).map(|(s, v)| (s.to_owned(), v.to_owned()));
        let (class, categories) = regional::classify(policy, ty, resource);
        let performers = resource["performer"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let i = &p["identifier"];
                Some((
                    i["system"].as_str()?.to_owned(),
                    i["value"].as_str()?.to_owned(),
                ))
            })
            .collect();
        Traits {
            holder,
            class,
            categories,
            compartment: compartment::patients(ty, id, resource),
            performers,
            audited: crate::audit::patients_of(ty, id, resource),
        }
    }

    /// Whether a `performer` names `org` by identifier (an allocation addressed to it).
    pub fn addressed_to(&self, org: &Organization) -> bool {
        self.performers
            .iter()
            .any(|(s, v)| *s == org.system && *v == org.value)
    }
}

/// Traits by (type, id, body).
pub struct TraitCache {
    cache: Cache<(String, String, Bytes), Arc<Traits>>,
}

impl TraitCache {
    pub fn new() -> TraitCache {
        TraitCache {
            cache: Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|(_, _, body): &(String, String, Bytes), _| {
                    ENTRY_COST.saturating_add(u32::try_from(body.len()).unwrap_or(u32::MAX))
                })
                .build(),
        }
    }

    /// The traits of a stored body; `None` if it is not JSON (such a body is never released).
    pub async fn of(
        &self,
        policy: &ConsentPolicy,
        ty: &str,
        id: &str,
        body: &Bytes,
    ) -> Option<Arc<Traits>> {
        let derive = || -> Option<Arc<Traits>> {
            let resource: Value = serde_json::from_slice(body).ok()?;
            Some(Arc::new(Traits::of(policy, ty, id, &resource)))
        };
        if body.len() > MAX_CACHED_BODY {
            return derive();
        }
        let key = (ty.to_owned(), id.to_owned(), body.clone());
        if let Some(t) = self.cache.get(&key).await {
            return Some(t);
        }
        let traits = derive()?;
        // A copy: the body may be a slice of a larger buffer, which the cache would keep alive
        // beyond what it weighs.
        let (ty, id, body) = key;
        let key = (ty, id, Bytes::copy_from_slice(&body));
        self.cache.insert(key, traits.clone()).await;
        Some(traits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ConsentPolicy {
        crate::config::Config::default().consent
    }

    fn body(v: &Value) -> Bytes {
        Bytes::from(serde_json::to_vec(v).unwrap())
    }

    #[tokio::test]
    async fn traits_are_those_of_the_exact_body() {
        let cache = TraitCache::new();
        let p = policy();
        let lab = serde_json::json!({
            "resourceType": "Observation", "id": "o1",
            "meta": { "tag": [{ "system": regional::HOLDER_SYSTEM, "code": "http://fhir.nl/fhir/NamingSystem/ura|1" }] },
            "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory" }] }],
            "subject": { "reference": "Patient/p1" },
            "performer": [{ "identifier": { "system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "2" } }, { "identifier": { "value": 3 } }]
        });
        let t = cache
            .of(&p, "Observation", "o1", &body(&lab))
            .await
            .unwrap();
        assert_eq!(*t, Traits::of(&p, "Observation", "o1", &lab));
        assert_eq!(
            t.holder,
            Some(("http://fhir.nl/fhir/NamingSystem/ura".into(), "1".into()))
        );
        assert!(t.categories.iter().any(|(_, c)| c == "lab"));
        assert_eq!(t.compartment, vec!["p1".to_owned()]);
        assert_eq!(t.audited, vec!["Patient/p1".to_owned()]);
        let org = |value: &str| Organization {
            system: "http://fhir.nl/fhir/NamingSystem/ura".into(),
            value: value.into(),
            kind: "municipality".into(),
            name: "M".into(),
        };
        assert!(t.addressed_to(&org("2")) && !t.addressed_to(&org("1")));
        // The same id with another body (an adapter's record changed behind the same version)
        // gets that body's traits, not the cached ones.
        let mut moved = lab.clone();
        moved["subject"]["reference"] = "Patient/p2".into();
        moved["meta"]["tag"][0]["code"] = "http://fhir.nl/fhir/NamingSystem/ura|9".into();
        let t2 = cache
            .of(&p, "Observation", "o1", &body(&moved))
            .await
            .unwrap();
        assert_eq!(t2.compartment, vec!["p2".to_owned()]);
        assert_eq!(t2.holder.as_ref().map(|h| h.1.as_str()), Some("9"));
        // And the first body still gets its own.
        let again = cache
            .of(&p, "Observation", "o1", &body(&lab))
            .await
            .unwrap();
        assert_eq!(*again, *t);
        assert!(
            cache
                .of(&p, "Observation", "o1", &Bytes::from_static(b"{not json"))
                .await
                .is_none()
        );
    }
}

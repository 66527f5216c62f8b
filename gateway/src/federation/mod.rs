//! Federation: the backends behind adapters, reached only from here and only with a policy
//! permit. The adapters are private to this module, so a path to a backend that skips the policy
//! does not compile; what they return is stamped with its holder here (a backend cannot claim to
//! be another organisation) and then disclosed by the caller through the same policy function as
//! local data.
//!
//! A search fans out to every backend that can answer it, in parallel with the local store; a
//! backend that fails, times out or cannot evaluate the search is named in an `OperationOutcome`
//! entry (search mode `outcome`), never a silent gap.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fhir::operation::{Read, Search};
use crate::policy::Permit;
use crate::store::{Stored, WriteMethod};
use adapters::{Adapter, AdapterError, Health, Interaction};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use time::OffsetDateTime;

pub struct Federation {
    adapters: Vec<Arc<dyn Adapter>>,
}

/// What the backends answered to one search.
#[derive(Debug, Default)]
pub struct Fanned {
    pub matches: Vec<Stored>,
    /// The sum of the backends' totals, when every backend asked said one.
    pub total: Option<u64>,
    /// One `OperationOutcome` per backend that failed or was not asked, for the bundle.
    pub outcomes: Vec<Value>,
    /// Each backend's token for its next page, by adapter name.
    pub next: BTreeMap<String, String>,
}

/// The cursor of a federated search's next page: the local store's own cursor (or that the
/// local matches are done) and each backend's next-page token. Sent to the client as `_cursor`
/// (`~` and URL-safe base64 of JSON); a backend token is only ever fetched under that backend's
/// configured base (the adapter checks), and what it returns is disclosed like any answer.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(rename = "d", default)]
    pub local_done: bool,
    #[serde(rename = "b", default)]
    pub backends: BTreeMap<String, String>,
}

impl Cursor {
    const PREFIX: &str = "~";

    /// `None` for a cursor that is not a federated one (the local store's own).
    pub fn decode(s: &str) -> Result<Option<Cursor>> {
        use base64::Engine;
        let Some(rest) = s.strip_prefix(Self::PREFIX) else {
            return Ok(None);
        };
        let bad = || Error::invalid("_cursor is not one this server gave out");
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(rest)
            .map_err(|_| bad())?;
        serde_json::from_slice(&json).map(Some).map_err(|_| bad())
    }

    pub fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).expect("a cursor serializes");
        format!(
            "{}{}",
            Self::PREFIX,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }
}

/// Search parameters that shape the answer rather than select; not sent to a backend.
const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_total",
    "_sort",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_format",
    "_pretty",
];

impl Federation {
    /// The adapters of the config, each section checked against its schema.
    pub fn build(config: &Config) -> Result<Federation> {
        let adapters = adapters::build_all(&config.adapters)
            .map_err(|e| Error::internal(format!("config: {e}")))?;
        Ok(Federation { adapters })
    }

    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    fn owner(&self, id: &str) -> Option<&Arc<dyn Adapter>> {
        owner(&self.adapters, id)
    }

    /// Resource types some backend can search by `patient` (what `$everything` asks them for).
    pub fn patient_types(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .adapters
            .iter()
            .flat_map(|a| a.capabilities().resources.iter())
            .filter(|r| {
                r.interactions.contains(&Interaction::Search)
                    && r.search_params.iter().any(|p| p == "patient")
            })
            .map(|r| r.resource_type.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether `id` names a resource held by a backend (its prefix is an adapter's name).
    pub fn holds(&self, id: &str) -> bool {
        self.owner(id).is_some()
    }

    /// The backends as the policy's directory of their Patients' BSNs (consent across
    /// organisations). The policy's own lookup, not a disclosure: nothing read leaves it.
    pub fn directory(&self) -> Arc<dyn crate::policy::privacy::Directory> {
        Arc::new(Backends {
            adapters: self.adapters.clone(),
        })
    }

    /// Each backend's health, for readiness and operators.
    pub async fn health(&self) -> Vec<(String, Health)> {
        let checks = self
            .adapters
            .iter()
            .map(|a| async move { (a.name().to_owned(), a.health().await) });
        futures::future::join_all(checks).await
    }

    /// For operators (`GET /federation`): each backend's health and cache counters. Names and
    /// counts only, no data.
    pub async fn status(&self) -> Value {
        let health = self.health().await;
        let backends: Vec<Value> = self
            .adapters
            .iter()
            .zip(health)
            .map(|(a, (_, h))| {
                let types: Vec<&str> = a
                    .capabilities()
                    .resources
                    .iter()
                    .filter(|r| r.interactions.contains(&Interaction::Search))
                    .map(|r| r.resource_type.as_str())
                    .collect();
                json!({
                    "name": a.name(),
                    "organization": a.organization().name,
                    "searchable": types,
                    "health": h.to_string(),
                    "cache": a.cache_stats(),
                })
            })
            .collect();
        json!({ "backends": backends })
    }

    /// A permitted read of a resource a backend holds.
    pub async fn read(&self, permit: &Permit<Read>) -> Result<Option<Stored>> {
        let op = permit.op();
        let Some(a) = self.owner(&op.id) else {
            return Ok(None);
        };
        if !a.capabilities().serves(&op.ty, Interaction::Read) {
            return Ok(None);
        }
        match a.read(&op.ty, &op.id).await {
            Ok(Some(r)) => Ok(Some(stored(a.as_ref(), &op.ty, r)?)),
            Ok(None) => Ok(None),
            Err(e) => Err(upstream(&e)),
        }
    }

    /// A permitted search, fanned out to every backend that serves the type; or, with `pages`
    /// (from a federated cursor), to the backends named there, each for its next page.
    pub async fn search(
        &self,
        permit: &Permit<Search>,
        pages: Option<&BTreeMap<String, String>>,
    ) -> Fanned {
        let op = permit.op();
        let mut out = Fanned::default();
        let params: Vec<(String, String)> = op
            .applied
            .iter()
            .filter(|(k, _)| !RESULT_PARAMS.contains(&k.as_str()))
            .cloned()
            .chain(std::iter::once(("_count".to_owned(), op.count.to_string())))
            .collect();
        let mut asked = Vec::new();
        for a in &self.adapters {
            if let Some(pages) = pages {
                if pages.contains_key(a.name()) {
                    asked.push(a.clone());
                }
                continue;
            }
            let Some(cap) = a.capabilities().resources.iter().find(|r| {
                r.resource_type == op.ty && r.interactions.contains(&Interaction::Search)
            }) else {
                continue;
            };
            let unsupported: Vec<&str> = params
                .iter()
                .map(|(k, _)| k.split(':').next().unwrap_or(k))
                .filter(|k| *k != "_count" && !cap.search_params.iter().any(|p| p == k))
                .collect();
            if !unsupported.is_empty() {
                out.outcomes.push(outcome(
                    "information",
                    "not-supported",
                    &format!(
                        "backend {} was not asked: it cannot evaluate {}",
                        a.name(),
                        unsupported.join(", ")
                    ),
                ));
                continue;
            }
            asked.push(a.clone());
        }
        let calls = asked.iter().map(|a| {
            let params = &params;
            let page = pages.and_then(|p| p.get(a.name())).map(String::as_str);
            async move { (a, a.search(&op.ty, params, page).await) }
        });
        let mut total = Some(0u64);
        for (a, r) in futures::future::join_all(calls).await {
            match r {
                Ok(page) => {
                    total = total.zip(page.total).map(|(t, n)| t + n);
                    for w in &page.warnings {
                        out.outcomes.push(outcome("warning", "processing", w));
                    }
                    if let Some(next) = page.next {
                        out.next.insert(a.name().to_owned(), next);
                    }
                    for r in page.matches {
                        match stored(a.as_ref(), &op.ty, r) {
                            Ok(s) => out.matches.push(s),
                            Err(e) => {
                                tracing::warn!(backend = a.name(), error = %e.log_detail(), "dropped")
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(backend = %e.backend, error = %e.detail, "backend search failed");
                    total = None;
                    out.outcomes.push(outcome(
                        "warning",
                        if e.status() == 504 {
                            "timeout"
                        } else {
                            "transient"
                        },
                        &format!("{e}: the results leave out what it holds"),
                    ));
                }
            }
        }
        out.total = if asked.is_empty() { Some(0) } else { total };
        out
    }
}

/// A backend's resource as a version the policy can disclose: holder stamped, server meta kept.
fn stored(a: &dyn Adapter, ty: &str, mut r: Value) -> Result<Stored> {
    if r["resourceType"] != ty {
        return Err(Error::internal(format!(
            "backend {} answered a {} to a {ty} search",
            a.name(),
            r["resourceType"]
        )));
    }
    crate::policy::regional::stamp_holder(&mut r, a.organization());
    let id = r["id"].as_str().unwrap_or_default().to_owned();
    let version = r["meta"]["versionId"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let last_updated = r["meta"]["lastUpdated"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(crate::store::now_ms);
    let body = serde_json::to_vec(&r).map_err(Error::internal)?;
    Ok(Stored {
        ty: ty.to_owned(),
        id,
        version,
        last_updated,
        method: WriteMethod::parse("PUT"),
        body: Some(body.into()),
    })
}

/// A backend that was the whole answer failed: 502 or 504 naming it, nothing of what it said.
fn upstream(e: &AdapterError) -> Error {
    tracing::warn!(backend = %e.backend, error = %e.detail, "backend call failed");
    let status = http::StatusCode::from_u16(e.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
    Error::upstream(status, e.to_string())
}

fn outcome(severity: &str, code: &str, text: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}]
    })
}

/// The adapter whose namespace `id` is in.
fn owner<'a>(adapters: &'a [Arc<dyn Adapter>], id: &str) -> Option<&'a Arc<dyn Adapter>> {
    let name = adapters::namespace::adapter_of(id)?;
    adapters.iter().find(|a| a.name() == name)
}

/// The backends, as seen by the policy when it needs a backend Patient's BSN.
struct Backends {
    adapters: Vec<Arc<dyn Adapter>>,
}

impl Backends {
    fn owner(&self, id: &str) -> Option<&Arc<dyn Adapter>> {
        owner(&self.adapters, id)
    }
}

impl crate::policy::privacy::Directory for Backends {
    fn holds(&self, patient: &str) -> bool {
        self.owner(patient).is_some()
    }

    fn bsn_of<'a>(&'a self, patient: &'a str) -> futures::future::BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let a = self.owner(patient)?;
            if !a.capabilities().serves("Patient", Interaction::Read) {
                return None;
            }
            match a.read("Patient", patient).await {
                Ok(found) => crate::policy::privacy::bsn_in(&found?),
                Err(e) => {
                    tracing::warn!(backend = %e.backend, error = %e.detail, "patient BSN not read");
                    None
                }
            }
        })
    }

    fn records_with<'a>(&'a self, bsn: &'a str) -> futures::future::BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let params = [(
                "identifier".to_owned(),
                format!("{}|{bsn}", crate::policy::privacy::BSN_SYSTEM),
            )];
            let asked = self.adapters.iter().filter(|a| {
                a.capabilities().resources.iter().any(|r| {
                    r.resource_type == "Patient"
                        && r.interactions.contains(&Interaction::Search)
                        && r.search_params.iter().any(|p| p == "identifier")
                })
            });
            let params = &params;
            let calls = asked.map(|a| async move { (a, a.search("Patient", params, None).await) });
            let mut out = Vec::new();
            for (a, r) in futures::future::join_all(calls).await {
                match r {
                    // Only Patients that really carry the BSN (a backend may match loosely).
                    Ok(page) => out.extend(
                        page.matches
                            .iter()
                            .filter(|p| crate::policy::privacy::bsn_in(p).as_deref() == Some(bsn))
                            .filter_map(|p| p["id"].as_str().map(str::to_owned)),
                    ),
                    Err(e) => {
                        tracing::warn!(backend = a.name(), error = %e.detail, "patient records not searched")
                    }
                }
            }
            out
        })
    }
}

//! An organisation's own FHIR R4 server (St. Antonius, say), read through the gateway as if it
//! were local: reads and searches are forwarded, answers rewritten into the gateway's namespace.
//! `config.rs` the section, `mapping.rs` ids and references, `source.rs` the HTTP connection,
//! `tests.rs` unit tests (the end-to-end tests start two gateway processes).

pub mod config;
pub mod mapping;
pub mod source;
#[cfg(test)]
pub(crate) mod tests;

use crate::error::{AdapterError, ConfigError, Failure};
use crate::{
    Adapter, Capabilities, Health, Interaction, Organization, ResourceCapability, SearchPage,
    namespace,
};
use serde_json::Value;
use source::{Answer, Source};

pub struct UpstreamFhir {
    config: config::Config,
    capabilities: Capabilities,
    source: Source,
}

impl UpstreamFhir {
    /// From a config section already checked against the schema.
    pub fn from_config(section: &Value) -> Result<UpstreamFhir, ConfigError> {
        let name = section["name"].as_str().map(str::to_owned);
        let err = |message: String| ConfigError {
            name: name.clone(),
            message,
        };
        let config: config::Config =
            serde_json::from_value(section.clone()).map_err(|e| err(e.to_string()))?;
        let capabilities = Capabilities {
            resources: config
                .resources
                .iter()
                .map(|r| ResourceCapability {
                    resource_type: r.resource_type.clone(),
                    interactions: r
                        .interactions
                        .iter()
                        .filter_map(|i| match i.as_str() {
                            "read" => Some(Interaction::Read),
                            "search" => Some(Interaction::Search),
                            _ => None,
                        })
                        .collect(),
                    search_params: r.search_params.clone(),
                })
                .collect(),
        };
        let source = Source::new(&config).map_err(err)?;
        Ok(UpstreamFhir {
            config,
            capabilities,
            source,
        })
    }

    fn fail(&self, kind: Failure, detail: impl Into<String>) -> AdapterError {
        AdapterError::new(&self.config.name, kind, detail)
    }

    /// The search parameters as the backend takes them: references into this backend rewritten
    /// back, `None` when a parameter can only match resources of another backend (so this one
    /// has no matches and is not asked).
    fn params_inward(&self, params: &[(String, String)]) -> Option<Vec<(String, String)>> {
        let name = &self.config.name;
        let mut out = Vec::with_capacity(params.len());
        for (k, v) in params {
            let mut kept = Vec::new();
            for alt in v.split(',') {
                match reference_value(alt) {
                    Some((ty, id)) => match namespace::inward(name, id) {
                        Some(inner) => kept.push(match ty {
                            Some(ty) => format!("{ty}/{inner}"),
                            None => inner.to_owned(),
                        }),
                        // Another backend's, or the gateway's own (ids without a prefix are
                        // only compared when typed: `Patient/<uuid>`).
                        None if ty.is_some() || namespace::adapter_of(id).is_some() => {}
                        None => kept.push(alt.to_owned()),
                    },
                    None => kept.push(alt.to_owned()),
                }
            }
            if kept.is_empty() {
                return None;
            }
            out.push((k.clone(), kept.join(",")));
        }
        Some(out)
    }

    fn page_from_bundle(&self, bundle: Value) -> Result<SearchPage, AdapterError> {
        if bundle["resourceType"] != "Bundle" || bundle["type"] != "searchset" {
            return Err(self.fail(Failure::Protocol, "search did not answer a searchset"));
        }
        let (name, base) = (&self.config.name, &self.config.base_url);
        let mut page = SearchPage {
            total: bundle["total"].as_u64(),
            ..Default::default()
        };
        for e in bundle["entry"].as_array().into_iter().flatten() {
            let mode = e["search"]["mode"].as_str().unwrap_or("match");
            if mode == "outcome" {
                continue; // the backend's warnings are for its operators, not our clients
            }
            let mut r = e["resource"].clone();
            if !mapping::outward(&mut r, name, base) {
                tracing::warn!(backend = %name, "dropped a search entry without a usable id");
                continue;
            }
            if mode == "include" {
                page.included.push(r);
            } else {
                page.matches.push(r);
            }
        }
        page.next = bundle["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .filter(|u| self.is_own_url(u))
            .map(str::to_owned);
        Ok(page)
    }

    /// A search for some patients' data answers only their data: matches whose `subject` or
    /// `patient` names another Patient are left out and reported. (helios-hfs 0.2.7's next links
    /// drop the search parameters, so its second page of `Observation?patient=X` holds other
    /// patients' results; a server that keeps the search by id, as HAPI does, cannot be checked
    /// by its links, so the answer is.)
    fn keep_the_patients(&self, page: &mut SearchPage, params: &[(String, String)]) {
        let wanted: Vec<String> = params
            .iter()
            .filter(|(k, _)| ["patient", "subject", "subject:Patient"].contains(&k.as_str()))
            .flat_map(|(_, v)| v.split(','))
            .map(|r| {
                if r.contains('/') {
                    r.to_owned()
                } else {
                    format!("Patient/{r}")
                }
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let before = page.matches.len();
        page.matches.retain(|r| {
            let named = ["subject", "patient"]
                .iter()
                .filter_map(|k| r[*k]["reference"].as_str())
                .collect::<Vec<_>>();
            // A resource that names no patient (a Patient itself) is not judged here.
            named.is_empty() || named.iter().any(|n| wanted.iter().any(|w| w == n))
        });
        let dropped = before - page.matches.len();
        if dropped > 0 {
            tracing::warn!(backend = %self.config.name, dropped, "backend answered other patients' data");
            page.warnings.push(format!(
                "backend {} answered {dropped} resource(s) of other patients than asked; left out",
                self.config.name
            ));
        }
    }

    /// Only URLs under the configured base are ever fetched (a next link, or a page token that
    /// came back through a client, cannot send the gateway elsewhere).
    fn is_own_url(&self, url: &str) -> bool {
        let base = &self.config.base_url;
        url.strip_prefix(base.as_str())
            .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'))
    }
}

/// `Type/id` (`Some(Type)`) or a bare id-like value (`None`), if `v` could be a reference.
fn reference_value(v: &str) -> Option<(Option<&str>, &str)> {
    if v.contains(':') || v.contains('|') {
        return None;
    }
    match v.split_once('/') {
        Some((ty, id))
            if ty.starts_with(|c: char| c.is_ascii_uppercase()) && namespace::valid_id(id) =>
        {
            Some((Some(ty), id))
        }
        Some(_) => None,
        None => namespace::valid_id(v).then_some((None, v)),
    }
}

#[async_trait::async_trait]
impl Adapter for UpstreamFhir {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn organization(&self) -> &Organization {
        &self.config.organization
    }

    fn source(&self) -> &str {
        &self.config.base_url
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn health(&self) -> Health {
        if self.source.breaker_open() {
            return Health::Down("circuit open after repeated failures".into());
        }
        match self.source.metadata(&self.config.base_url).await {
            Ok(()) => Health::Up,
            Err(e) => Health::Down(e.to_string()),
        }
    }

    fn cache_stats(&self) -> Option<crate::CacheStats> {
        self.source.cache_stats()
    }

    async fn read(&self, resource_type: &str, id: &str) -> Result<Option<Value>, AdapterError> {
        // A valid FHIR id needs no escaping in a path; anything else cannot be the backend's.
        let Some(inner) =
            namespace::inward(&self.config.name, id).filter(|i| namespace::valid_id(i))
        else {
            return Ok(None);
        };
        if !resource_type.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Ok(None);
        }
        let url = format!("{}/{resource_type}/{inner}", self.config.base_url);
        match self.source.get(&url).await? {
            Answer::Gone => Ok(None),
            Answer::Found(mut r) => {
                if r["resourceType"] != resource_type || r["id"] != inner {
                    return Err(self.fail(Failure::Protocol, "read answered another resource"));
                }
                if !mapping::outward(&mut r, &self.config.name, &self.config.base_url) {
                    return Err(self.fail(Failure::Protocol, "resource without a usable id"));
                }
                Ok(Some(r))
            }
        }
    }

    async fn search(
        &self,
        resource_type: &str,
        params: &[(String, String)],
        page: Option<&str>,
    ) -> Result<SearchPage, AdapterError> {
        let Some(inward) = self.params_inward(params) else {
            return Ok(SearchPage::default());
        };
        let url = match page {
            Some(next) if self.is_own_url(next) => next.to_owned(),
            Some(_) => return Err(self.fail(Failure::Unsupported, "foreign page link")),
            None => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                for (k, v) in &inward {
                    q.append_pair(k, v);
                }
                format!("{}/{resource_type}?{}", self.config.base_url, q.finish())
            }
        };
        let mut page = match self.source.get(&url).await? {
            Answer::Gone => return Err(self.fail(Failure::Status(404), "search answered 404")),
            Answer::Found(bundle) => self.page_from_bundle(bundle)?,
        };
        self.keep_the_patients(&mut page, params);
        Ok(page)
    }
}

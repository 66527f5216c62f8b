//! Backend adapters: each brings one kind of backend (an upstream FHIR server, HL7v2 over MLLP, a
//! SQL database, a municipal REST or iWmo/iJw source) onto FHIR R4.
//!
//! Every adapter kind is one folder with the same files:
//! `config.rs` (its config section; the JSON Schema is `schemas/adapter.schema.json`),
//! `mapping.rs` (backend shape <-> FHIR), `source.rs` (the connection) and `tests.rs`.
//!
//! Ids and references of a backend are moved into the gateway's namespace by the adapter: a
//! backend's `Patient/123` is `Patient/{adapter name}.123` at the gateway ([`namespace`]), so a
//! client follows every reference through the gateway, and the gateway knows from an id alone
//! which backend holds it.
//!
//! The gateway holds its adapters privately in its federation module and calls them only with a
//! policy permit; whatever they return is disclosed through the same policy function as local
//! data. Nothing here decides access.

pub mod breaker;
pub mod er7;
pub mod error;
pub mod hl7v2;
pub mod istandaarden;
pub mod local_time;
pub mod namespace;
pub mod nl_core;
pub mod rest;
pub mod sql;
pub mod upstream_fhir;

pub use error::{AdapterError, ConfigError, Failure};
use serde_json::Value;
use std::sync::Arc;

use std::fmt;

/// A FHIR interaction an adapter can serve for a resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Interaction {
    Read,
    Search,
    Create,
    Update,
}

/// What a backend can serve: for each resource type, its interactions and search parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub resources: Vec<ResourceCapability>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceCapability {
    pub resource_type: String,
    pub interactions: Vec<Interaction>,
    /// Search parameter codes the backend evaluates itself.
    pub search_params: Vec<String>,
}

impl Capabilities {
    /// Whether the backend serves `interaction` on `resource_type`.
    pub fn serves(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.resources
            .iter()
            .any(|r| r.resource_type == resource_type && r.interactions.contains(&interaction))
    }
}

/// A backend's health, as the gateway's readiness and fan-out see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Answering, but slowly or partly; the reason is for operators, never for clients.
    Degraded(String),
    Down(String),
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Up => write!(f, "up"),
            Health::Degraded(r) => write!(f, "degraded: {r}"),
            Health::Down(r) => write!(f, "down: {r}"),
        }
    }
}

/// An organisation of the region: the one a backend's data is held by (the holder of every
/// resource the adapter returns, which the gateway's consent rules decide on), and the type the
/// gateway's config uses for its issuers' organisations too.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Organization {
    /// Identifier system (URA, AGB, ...) and value.
    pub system: String,
    pub value: String,
    /// hospital, gp, vvt, youth-care, municipality, ggd.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
}

/// One page of a backend's search answer, already in the gateway's namespace.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    /// Matches (search mode `match`), in the backend's order.
    pub matches: Vec<Value>,
    /// Resources the backend added (`_include`, search mode `include`).
    pub included: Vec<Value>,
    /// The backend's total, when it said one.
    pub total: Option<u64>,
    /// An opaque token for the backend's next page (given back to [`Adapter::search`]).
    pub next: Option<String>,
    /// What the adapter noticed about the answer and corrected (for an outcome entry).
    pub warnings: Vec<String>,
}

/// One configured backend.
#[async_trait::async_trait]
pub trait Adapter: Send + Sync {
    /// The name operators gave it in the config: the prefix of its ids at the gateway, and the
    /// name in logs and in the outcomes that report it.
    fn name(&self) -> &str;
    /// Who holds the data this backend serves.
    fn organization(&self) -> &Organization;
    /// Where the data comes from (`meta.source` of what it returns).
    fn source(&self) -> &str;
    fn capabilities(&self) -> &Capabilities;
    async fn health(&self) -> Health;
    /// The resource `Type/id`, `id` in the gateway's namespace; `None` when the backend has none
    /// (or it is gone).
    async fn read(&self, resource_type: &str, id: &str) -> Result<Option<Value>, AdapterError>;
    /// A search with FHIR search parameters, values in the gateway's namespace (references
    /// are rewritten back before they reach the backend). `page` is a [`SearchPage::next`].
    async fn search(
        &self,
        resource_type: &str,
        params: &[(String, String)],
        page: Option<&str>,
    ) -> Result<SearchPage, AdapterError>;
    /// The response cache's counters, when the adapter caches.
    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }
}

/// How a response cache has done since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Answered from the cache without asking the backend.
    pub hits: u64,
    /// Not in the cache: asked the backend.
    pub misses: u64,
    /// In the cache but no longer fresh: the backend confirmed it unchanged (304).
    pub revalidated: u64,
    pub entries: u64,
}

/// The JSON Schema of an adapter config section (all kinds), compiled into the binary.
pub const SCHEMA: &str = include_str!("../../schemas/adapter.schema.json");

/// The JSON Schema of a SQL adapter's `mappings`, compiled into the binary.
pub const MAPPING_SCHEMA: &str = include_str!("../../schemas/mapping.schema.json");

/// The schemas [`SCHEMA`] refers to, from the binary (nothing is fetched).
struct Schemas;

impl jsonschema::Retrieve for Schemas {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        match uri.as_str() {
            "https://healthhub-utrecht.nl/schemas/mapping.schema.json" => {
                Ok(serde_json::from_str(MAPPING_SCHEMA)?)
            }
            other => Err(format!("no schema {other} in the binary").into()),
        }
    }
}

/// Builds every adapter of the config, each section checked against [`SCHEMA`] first. Names must
/// be unique and usable as an id prefix.
pub fn build_all(sections: &[Value]) -> Result<Vec<Arc<dyn Adapter>>, ConfigError> {
    let schema: Value = serde_json::from_str(SCHEMA).map_err(|e| ConfigError {
        name: None,
        message: format!("adapter schema: {e}"),
    })?;
    let validator = jsonschema::options()
        .with_retriever(Schemas)
        .build(&schema)
        .map_err(|e| ConfigError {
            name: None,
            message: format!("adapter schema: {e}"),
        })?;
    let mut out: Vec<Arc<dyn Adapter>> = Vec::new();
    for section in sections {
        let name = section["name"].as_str().map(str::to_owned);
        if let Some(e) = validator.iter_errors(section).next() {
            return Err(ConfigError {
                name,
                message: format!("{} at {}", e, e.instance_path()),
            });
        }
        let name = name.unwrap_or_default();
        if out.iter().any(|a| a.name() == name) {
            return Err(ConfigError {
                name: Some(name),
                message: "two adapters with one name".into(),
            });
        }
        let adapter: Arc<dyn Adapter> = match section["kind"].as_str() {
            Some("fhir") => Arc::new(upstream_fhir::UpstreamFhir::from_config(section)?),
            Some("sql") => Arc::new(sql::SqlAdapter::from_config(section)?),
            Some("rest") => Arc::new(rest::RestAdapter::from_config(section)?),
            other => {
                return Err(ConfigError {
                    name: Some(name),
                    message: format!("unknown adapter kind {other:?}"),
                });
            }
        };
        out.push(adapter);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_what_is_declared() {
        let c = Capabilities {
            resources: vec![ResourceCapability {
                resource_type: "Patient".into(),
                interactions: vec![Interaction::Read, Interaction::Search],
                search_params: vec!["identifier".into()],
            }],
        };
        assert!(c.serves("Patient", Interaction::Read));
        assert!(!c.serves("Patient", Interaction::Create));
        assert!(!c.serves("Observation", Interaction::Read));
        assert_eq!(
            Health::Degraded("slow".into()).to_string(),
            "degraded: slow"
        );
    }
}

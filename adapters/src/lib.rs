//! Backend adapters: each brings one kind of backend (an upstream FHIR server, HL7v2 over MLLP, a
//! SQL database, a municipal REST or iWmo/iJw source) onto FHIR R4.
//!
//! Every adapter kind is one folder with the same files:
//! `config.rs` (its config section and JSON Schema), `mapping.rs` (backend shape <-> FHIR, with
//! fhir-sdk's typed models, which live in this crate only), `source.rs` (the connection) and
//! `tests.rs`. The gateway reaches an adapter only through its policy chokepoint.
//!
//! This release declares what an adapter offers and how its health is reported; the calls the
//! gateway makes (read, search, write with a permit) arrive with the first adapter kind.

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

/// One configured backend.
#[async_trait::async_trait]
pub trait Adapter: Send + Sync {
    /// The name operators gave it in the config (used in logs, `meta.source` and outcomes).
    fn name(&self) -> &str;
    fn capabilities(&self) -> &Capabilities;
    async fn health(&self) -> Health;
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

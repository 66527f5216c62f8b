//! The CapabilityStatement, derived from what the code implements: the resource types come from
//! the schema the validator uses, the search parameters from what the store indexes, the
//! interactions from the same table the router serves (`INTERACTIONS`).

use crate::config::Config;
use crate::fhir::search::supported_parameters;
use crate::fhir::validate::Structure;
use serde_json::{Value, json};

/// Type-level interactions every resource type supports (see `operation::parse`).
pub const INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// System-level interactions.
pub const SYSTEM_INTERACTIONS: &[&str] = &["history-system"];

pub fn capability_statement(config: &Config, structure: &Structure) -> Value {
    let resources: Vec<Value> = structure
        .resource_types()
        .map(|ty| {
            let params: Vec<Value> = supported_parameters(ty, structure)
                .into_iter()
                .map(|(name, kind)| {
                    json!({
                        "name": name,
                        "definition": format!("http://hl7.org/fhir/SearchParameter/{}", if name == "_id" { "Resource-id".to_owned() } else { format!("{ty}-{name}") }),
                        "type": kind
                    })
                })
                .collect();
            json!({
                "type": ty,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{ty}"),
                "interaction": INTERACTIONS.iter().map(|i| json!({ "code": i })).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": config.rest.update_create,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchParam": params,
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        // When this server started: the statement describes this running instance.
        "date": crate::store::format_instant(time::OffsetDateTime::now_utc()),
        "publisher": "Health Hub Utrecht",
        "kind": "instance",
        "software": { "name": "Health Hub Utrecht regional FHIR gateway", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Regional FHIR R4 gateway" },
        "fhirVersion": "4.0.1",
        // JSON only: XML requests are answered 406/415 with an OperationOutcome.
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Paging uses an opaque _cursor in next links. Search parameters: _id, identifier (more with the search release).",
            "resource": resources,
            "interaction": SYSTEM_INTERACTIONS.iter().map(|i| json!({ "code": i })).collect::<Vec<_>>(),
        }]
    })
}

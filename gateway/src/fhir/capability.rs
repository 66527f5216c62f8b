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
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// The operations `operation::parse` routes (name, OperationDefinition).
const OPERATIONS: &[(&str, &str)] = &[
    (
        "everything",
        "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    ),
    (
        "validate",
        "http://hl7.org/fhir/OperationDefinition/Resource-validate",
    ),
    (
        "meta",
        "http://hl7.org/fhir/OperationDefinition/Resource-meta",
    ),
    (
        "meta-add",
        "http://hl7.org/fhir/OperationDefinition/Resource-meta-add",
    ),
    (
        "meta-delete",
        "http://hl7.org/fhir/OperationDefinition/Resource-meta-delete",
    ),
    (
        "export",
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
    ),
    (
        "patient-export",
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
    ),
    (
        "group-export",
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
    ),
];

/// System-level interactions.
pub const SYSTEM_INTERACTIONS: &[&str] = &["transaction", "batch", "history-system"];

/// SMART App Launch v2 discovery (`[base]/.well-known/smart-configuration`). The gateway is a
/// resource server: tokens come from each organisation's issuer, and the token endpoint named
/// here is the region's (`auth.token_endpoint`).
pub fn smart_configuration(config: &Config) -> Value {
    json!({
        "issuer": config.auth.issuers.first().map(|i| i.iss.clone()),
        "token_endpoint": token_endpoint(config),
        "grant_types_supported": ["client_credentials", "authorization_code"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
        "scopes_supported": ["system/*.cruds", "user/*.cruds", "patient/*.rs", "launch/patient", "fhirUser", "openid"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "permission-v1", "permission-v2", "permission-patient", "permission-user", "client-confidential-asymmetric",
            "context-standalone-patient", "sso-openid-connect"
        ]
    })
}

fn token_endpoint(config: &Config) -> String {
    config
        .auth
        .token_endpoint
        .clone()
        .unwrap_or_else(|| "https://demo.healthhub-utrecht.nl/token".into())
}

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
                // `If-None-Match` and `If-Modified-Since`.
                "conditionalRead": "full-support",
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
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        // JSON only: XML requests are answered 406/415 with an OperationOutcome.
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Paging uses an opaque _cursor in next links. Search parameters: _id, identifier (more with the search release).",
            "security": {
                "cors": false,
                "service": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR" }] }],
                "description": "Bearer JWTs from the region's trusted issuers; SMART App Launch v2 scopes; consent and audit on every request.",
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{ "url": "token", "valueUri": token_endpoint(config) }]
                }]
            },
            "resource": resources,
            "interaction": SYSTEM_INTERACTIONS.iter().map(|i| json!({ "code": i })).collect::<Vec<_>>(),
            "operation": OPERATIONS.iter().map(|(name, definition)| json!({ "name": name, "definition": definition })).collect::<Vec<_>>(),
        }]
    })
}

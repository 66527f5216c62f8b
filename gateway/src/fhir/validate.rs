//! Structural validation of every write against FHIR R4, with the schema the project generates
//! from the official StructureDefinitions (`schemas/fhir/`, see its PROVENANCE.md).
//!
//! The schema dispatches on `resourceType` (no `oneOf` over all types), so collecting the errors
//! of a bad resource costs about as much as checking a good one; the number of errors reported
//! is capped all the same.

use crate::error::{Error, Issue, Result};
use jsonschema::{PatternOptions, Validator};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The generated FHIR R4 schema, compiled into the binary.
pub const FHIR_SCHEMA: &str = include_str!("../../../schemas/fhir/fhir-r4.schema.json");

/// What the gateway knows of FHIR's structure: the validator and the facts derived from the same
/// schema (which types exist, which have an `identifier`).
pub struct Structure {
    validator: Validator,
    resource_types: BTreeSet<String>,
    /// Resource type -> whether `identifier` is a list (`true`) or a single element.
    identifier: BTreeMap<String, bool>,
    /// The schema's definitions: element cardinality and types (for FHIRPath Patch).
    definitions: Value,
    max_errors: usize,
}

impl Structure {
    pub fn load(max_errors: usize) -> Result<Structure> {
        let schema: Value = serde_json::from_str(FHIR_SCHEMA).map_err(Error::internal)?;
        // Linear-time regexes: a pattern check can never be made to backtrack by a hostile value.
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft7)
            .with_pattern_options(PatternOptions::regex())
            .build(&schema)
            .map_err(|e| Error::internal(format!("FHIR schema does not compile: {e}")))?;
        let defs = &schema["definitions"];
        let resource_types: BTreeSet<String> =
            defs["ResourceList"]["properties"]["resourceType"]["enum"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
        if resource_types.len() < 140 {
            return Err(Error::internal("FHIR schema lists too few resource types"));
        }
        let identifier = resource_types
            .iter()
            .filter_map(|t| {
                let p = &defs[t]["properties"]["identifier"];
                (!p.is_null()).then(|| (t.clone(), p["type"] == "array"))
            })
            .collect();
        Ok(Structure {
            validator,
            resource_types,
            identifier,
            definitions: schema["definitions"].clone(),
            max_errors,
        })
    }

    pub fn is_resource_type(&self, ty: &str) -> bool {
        self.resource_types.contains(ty)
    }

    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.resource_types.iter().map(String::as_str)
    }

    /// Whether the type has an `identifier` element (and so an `identifier` search parameter).
    pub fn has_identifier(&self, ty: &str) -> bool {
        self.identifier.contains_key(ty)
    }

    /// Element `name` of the definition `def` (a type such as `Patient` or a backbone such as
    /// `Patient_Contact`): whether it repeats, and the definition of its type.
    pub fn element(&self, def: &str, name: &str) -> Option<(bool, Option<String>)> {
        let p = self.definitions.get(def)?.get("properties")?.get(name)?;
        let repeats = p.get("type").and_then(Value::as_str) == Some("array");
        let target = if repeats { &p["items"] } else { p };
        let r = target
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/definitions/"))
            .map(str::to_owned);
        Some((repeats, r))
    }

    /// Checks a resource; on failure, one issue per finding (at most the configured number).
    pub fn validate(&self, resource: &Value) -> Result<()> {
        if self.validator.is_valid(resource) {
            return Ok(());
        }
        let ty = resource["resourceType"].as_str().unwrap_or("Resource");
        let mut issues: Vec<Issue> = self
            .validator
            .iter_errors(resource)
            .take(self.max_errors)
            .map(|e| Issue {
                severity: "error",
                code: "structure",
                diagnostics: clip(&e.to_string(), 300),
                expression: Some(fhirpath_of(ty, &e.instance_path().to_string())),
            })
            .collect();
        if issues.is_empty() {
            issues.push(Issue {
                severity: "error",
                code: "structure",
                diagnostics: "resource does not conform to FHIR R4".into(),
                expression: None,
            });
        }
        Err(Error::invalid_resource(issues))
    }
}

/// JSON pointer `/name/0/given` -> `Patient.name[0].given`.
fn fhirpath_of(ty: &str, pointer: &str) -> String {
    let mut out = ty.to_owned();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            out.push('.');
            out.push_str(&seg);
        }
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_owned();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::OnceLock;

    fn structure() -> &'static Structure {
        static S: OnceLock<Structure> = OnceLock::new();
        S.get_or_init(|| Structure::load(20).unwrap())
    }

    #[test]
    fn knows_every_r4_resource_type() {
        let s = structure();
        assert_eq!(s.resource_types().count(), 146);
        assert!(
            s.is_resource_type("Patient")
                && s.is_resource_type("MedicinalProductUndesirableEffect")
        );
        assert!(!s.is_resource_type("DomainResource") && !s.is_resource_type("Foo"));
        assert!(
            s.has_identifier("Patient")
                && s.has_identifier("Bundle")
                && !s.has_identifier("Binary")
        );
    }

    #[test]
    fn good_resource_passes() {
        let p = json!({"resourceType": "Patient", "id": "a", "active": true, "name": [{"family": "Berg",
            "given": ["Jan", null], "_given": [null, {"extension": [{"url": "http://x", "valueString": "y"}]}]}],
            "birthDate": "1970-01-31", "contained": [{"resourceType": "Organization", "name": "x"}]});
        structure().validate(&p).unwrap();
    }

    #[test]
    fn bad_resource_lists_each_error_with_location() {
        let p = json!({"resourceType": "Patient", "gender": 5, "birthDate": "1970-13-01", "foo": 1,
            "contained": [{"resourceType": "Observation", "status": "final"}]});
        let err = structure().validate(&p).unwrap_err();
        let paths: Vec<_> = err
            .issues
            .iter()
            .filter_map(|i| i.expression.clone())
            .collect();
        assert!(paths.contains(&"Patient.gender".to_owned()), "{paths:?}");
        assert!(paths.contains(&"Patient.birthDate".to_owned()), "{paths:?}");
        // The contained Observation lacks its required `code`: checked against its own type only.
        assert!(
            paths.iter().any(|p| p.starts_with("Patient.contained[0]")),
            "{paths:?}"
        );
        assert!(err.issues.len() <= 20);
    }

    #[test]
    fn unknown_type_and_empty_arrays_are_refused() {
        assert!(
            structure()
                .validate(&json!({"resourceType": "Foo"}))
                .is_err()
        );
        assert!(
            structure()
                .validate(&json!({"resourceType": "Patient", "name": []}))
                .is_err()
        );
        assert!(
            structure()
                .validate(&json!({"resourceType": "Patient", "id": "a_b"}))
                .is_err()
        );
    }
}

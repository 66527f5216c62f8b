//! Validation against a profile: a StructureDefinition loaded into the gateway (stored like any
//! resource) constrains a resource type. What is checked, per element of the snapshot (or, when
//! the profile has none, its differential): the cardinality (`min`, `max`) within each
//! occurrence of the parent element, and `fixed[x]` (exact) and `pattern[x]` (the value holds
//! at least what the pattern has) on every value. Slices (`sliceName`) and invariants
//! (`constraint`, FHIRPath) are reported as not evaluated, never silently passed as checked.

use crate::error::Issue;
use serde_json::Value;

/// The issues of `resource` against the profile `sd` (empty: it conforms).
pub fn check(sd: &Value, resource: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    let url = sd["url"].as_str().unwrap_or("?");
    let ty = resource["resourceType"].as_str().unwrap_or_default();
    if sd["resourceType"] != "StructureDefinition" || sd["kind"] != "resource" {
        issues.push(error(
            "processing",
            format!("{url} is not a resource profile"),
            None,
        ));
        return issues;
    }
    if sd["type"].as_str() != Some(ty) {
        issues.push(error(
            "invalid",
            format!(
                "the profile {url} constrains {}, not {ty}",
                sd["type"].as_str().unwrap_or("?")
            ),
            None,
        ));
        return issues;
    }
    let elements = sd["snapshot"]["element"]
        .as_array()
        .or_else(|| sd["differential"]["element"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut unevaluated = 0usize;
    for e in &elements {
        let Some(path) = e["path"].as_str() else {
            continue;
        };
        if e.get("sliceName").is_some() || e["id"].as_str().is_some_and(|i| i.contains(':')) {
            unevaluated += 1;
            continue;
        }
        let segments: Vec<&str> = path.split('.').collect();
        if segments.len() < 2 || segments[0] != ty {
            continue;
        }
        let (parent_path, name) = segments.split_at(segments.len() - 1);
        let name = name[0];
        for (parent_at, parent) in nodes(resource, &parent_path[1..], ty) {
            let values = children(parent, name);
            let at = format!("{parent_at}.{}", name.trim_end_matches("[x]"));
            if let Some(min) = e["min"].as_u64()
                && (values.len() as u64) < min
            {
                issues.push(error(
                    "required",
                    format!("{path}: at least {min} required by {url}"),
                    Some(at.clone()),
                ));
            }
            if let Some(max) = e["max"].as_str().and_then(|m| m.parse::<u64>().ok())
                && values.len() as u64 > max
            {
                issues.push(error(
                    "structure",
                    format!("{path}: at most {max} allowed by {url}"),
                    Some(at.clone()),
                ));
            }
            for (key, expected) in e.as_object().into_iter().flatten() {
                let exact = key.starts_with("fixed");
                if !(exact || key.starts_with("pattern")) {
                    continue;
                }
                for v in &values {
                    let ok = if exact {
                        *v == expected
                    } else {
                        holds(v, expected)
                    };
                    if !ok {
                        let how = if exact { "fixed" } else { "pattern" };
                        issues.push(error(
                            "value",
                            format!("{path}: the value does not match the {how} value of {url}"),
                            Some(at.clone()),
                        ));
                    }
                }
            }
        }
        // The profile's own invariants (a snapshot also repeats the base ones, whose `source`
        // is the base definition; the structure validation covers those).
        unevaluated += e["constraint"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["source"].as_str().is_none_or(|s| s == url))
            .count();
    }
    if unevaluated > 0 {
        issues.push(Issue {
            severity: "information",
            code: "informational",
            diagnostics: format!(
                "{unevaluated} slice or invariant definitions of {url} were not evaluated"
            ),
            expression: None,
        });
    }
    issues
}

fn error(code: &'static str, diagnostics: String, expression: Option<String>) -> Issue {
    Issue {
        severity: "error",
        code,
        diagnostics,
        expression,
    }
}

/// The nodes at `path` below the root, each with its location (`Patient.name[1]`).
fn nodes<'v>(root: &'v Value, path: &[&str], ty: &str) -> Vec<(String, &'v Value)> {
    let mut out = vec![(ty.to_owned(), root)];
    for seg in path {
        let mut next = Vec::new();
        for (at, node) in out {
            let found = children(node, seg);
            let many = found.len() > 1 || matches!(child_raw(node, seg), Some(Value::Array(_)));
            for (i, v) in found.into_iter().enumerate() {
                let name = seg.trim_end_matches("[x]");
                let loc = if many {
                    format!("{at}.{name}[{i}]")
                } else {
                    format!("{at}.{name}")
                };
                next.push((loc, v));
            }
        }
        out = next;
    }
    out
}

/// The element `name` of `node`; `value[x]` is any `valueQuantity`, `valueString`, ...
fn child_raw<'v>(node: &'v Value, name: &str) -> Option<&'v Value> {
    let obj = node.as_object()?;
    match name.strip_suffix("[x]") {
        None => obj.get(name),
        Some(prefix) => obj.iter().find_map(|(k, v)| {
            k.strip_prefix(prefix)
                .filter(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
                .map(|_| v)
        }),
    }
}

/// The values of the element `name` (a repeated element's items).
fn children<'v>(node: &'v Value, name: &str) -> Vec<&'v Value> {
    match child_raw(node, name) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
    }
}

/// `pattern[x]`: every property of the pattern is in the value (arrays: each pattern item is
/// matched by some item of the value).
fn holds(value: &Value, pattern: &Value) -> bool {
    match (value, pattern) {
        (Value::Object(v), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| holds(vv, pv))),
        (Value::Array(v), Value::Array(p)) => p.iter().all(|pi| v.iter().any(|vi| holds(vi, pi))),
        (v, p) => v == p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile() -> Value {
        json!({"resourceType": "StructureDefinition", "url": "http://example.org/p", "kind": "resource",
        "type": "Patient", "differential": {"element": [
            {"id": "Patient", "path": "Patient"},
            {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1},
            {"id": "Patient.identifier.system", "path": "Patient.identifier.system", "min": 1,
             "fixedUri": "http://fhir.nl/fhir/NamingSystem/bsn"},
            {"id": "Patient.name", "path": "Patient.name", "max": "1"},
            {"id": "Patient.maritalStatus", "path": "Patient.maritalStatus",
             "patternCodeableConcept": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"}]}},
            {"id": "Patient.deceased[x]", "path": "Patient.deceased[x]", "max": "0"}
        ]}})
    }

    #[test]
    fn cardinality_fixed_and_pattern_are_checked() {
        let good = json!({"resourceType": "Patient",
            "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "1"}],
            "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]}});
        assert!(check(&profile(), &good).is_empty());
        let bad = json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1", "value": "1"}, {"value": "2"}],
            "name": [{"family": "a"}, {"family": "b"}],
            "maritalStatus": {"coding": [{"system": "other", "code": "M"}]},
            "deceasedBoolean": false});
        let issues = check(&profile(), &bad);
        let at: Vec<&str> = issues
            .iter()
            .filter_map(|i| i.expression.as_deref())
            .collect();
        assert!(at.contains(&"Patient.identifier[0].system"), "{at:?}");
        assert!(at.contains(&"Patient.identifier[1].system"), "{at:?}");
        assert!(at.contains(&"Patient.name"), "{at:?}");
        assert!(at.contains(&"Patient.maritalStatus"), "{at:?}");
        assert!(at.contains(&"Patient.deceased"), "{at:?}");
        assert_eq!(issues.len(), 5, "{issues:?}");
        let none = json!({"resourceType": "Patient"});
        assert_eq!(check(&profile(), &none).len(), 1);
        let other = json!({"resourceType": "Observation"});
        assert_eq!(check(&profile(), &other)[0].code, "invalid");
    }
}

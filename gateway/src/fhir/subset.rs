//! `_summary` and `_elements`: returning part of each resource, marked `SUBSETTED` so that no
//! client mistakes it for the whole (R4 search §3.1.1.5.8-9).

use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::LazyLock;

/// Per type, the top-level elements marked `isSummary` (generated from the StructureDefinitions).
static SUMMARY: LazyLock<HashMap<String, Vec<String>>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../../schemas/fhir/summary-elements.json"))
        .expect("the generated summary elements are JSON")
});

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subset {
    /// `_summary=true`: the elements marked summary.
    Summary,
    /// `_summary=text`: text, id and meta.
    Text,
    /// `_summary=data`: everything but the narrative.
    Data,
    /// `_elements=a,b`: those elements (and id, meta).
    Elements(Vec<String>),
}

/// Whether JSON key `key` is element `name` (a choice element `value` is `valueQuantity`, ...).
fn is_element(key: &str, name: &str) -> bool {
    key == name
        || key
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        || key.strip_prefix('_').is_some_and(|k| is_element(k, name))
}

/// The resource reduced to `subset`, tagged SUBSETTED.
pub fn apply(subset: &Subset, resource: Value) -> Value {
    let Value::Object(map) = resource else {
        return resource;
    };
    let ty = map
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let keep = |key: &str| -> bool {
        if matches!(key, "resourceType" | "id" | "meta") {
            return true;
        }
        match subset {
            Subset::Summary => SUMMARY
                .get(&ty)
                .is_some_and(|names| names.iter().any(|n| is_element(key, n))),
            Subset::Text => key == "text",
            Subset::Data => key != "text",
            Subset::Elements(names) => names.iter().any(|n| is_element(key, n)),
        }
    };
    let mut out: Map<String, Value> = map.into_iter().filter(|(k, _)| keep(k)).collect();
    let meta = out.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
                "display": "subsetted"
            }));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient() -> Value {
        json!({
            "resourceType": "Patient", "id": "p", "meta": { "versionId": "1" },
            "text": { "status": "generated", "div": "<div/>" },
            "name": [{ "family": "X" }], "gender": "female", "deceasedBoolean": false,
            "contact": [{ "name": { "family": "Y" } }], "photo": [{ "url": "x" }]
        })
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    #[test]
    fn summary_text_data_and_elements() {
        let s = apply(&Subset::Summary, patient());
        assert_eq!(
            keys(&s),
            [
                "resourceType",
                "id",
                "meta",
                "name",
                "gender",
                "deceasedBoolean"
            ]
        );
        assert_eq!(s["meta"]["tag"][0]["code"], "SUBSETTED");
        assert_eq!(
            keys(&apply(&Subset::Text, patient())),
            ["resourceType", "id", "meta", "text"]
        );
        assert!(!keys(&apply(&Subset::Data, patient())).contains(&"text"));
        let e = apply(
            &Subset::Elements(vec!["gender".into(), "deceased".into()]),
            patient(),
        );
        assert_eq!(
            keys(&e),
            ["resourceType", "id", "meta", "gender", "deceasedBoolean"]
        );
    }
}

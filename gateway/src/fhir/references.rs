//! References inside a resource: found and rewritten wherever they are (nested elements,
//! extensions, contained resources), for a transaction that resolves `urn:uuid:`/`urn:oid:` full
//! URLs and conditional references (`Patient?identifier=...`) to the ids the store decided. The
//! narrative's links (`href`/`src` attributes in `text.div`) are rewritten too, as the spec asks.

use serde_json::Value;
use std::collections::HashMap;

/// Every `reference` string in the resource, in document order.
pub fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => collect(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        _ => {}
    }
}

/// Replaces every `reference` equal to a key of `map` with its value, and the same strings
/// quoted as attribute values in the narrative. Returns how many were replaced.
pub fn rewrite(v: &mut Value, map: &HashMap<String, String>) -> usize {
    if map.is_empty() {
        return 0;
    }
    let mut n = 0;
    match v {
        Value::Object(obj) => {
            for (k, child) in obj.iter_mut() {
                match (k.as_str(), child) {
                    ("reference", Value::String(s)) => {
                        if let Some(to) = map.get(s.as_str()) {
                            *s = to.clone();
                            n += 1;
                        }
                    }
                    ("div", Value::String(html)) => n += rewrite_html(html, map),
                    (_, child) => n += rewrite(child, map),
                }
            }
        }
        Value::Array(items) => {
            for i in items {
                n += rewrite(i, map);
            }
        }
        _ => {}
    }
    n
}

fn rewrite_html(html: &mut String, map: &HashMap<String, String>) -> usize {
    let mut n = 0;
    for (from, to) in map {
        for quote in ['"', '\''] {
            let needle = format!("{quote}{from}{quote}");
            if html.contains(&needle) {
                *html = html.replace(&needle, &format!("{quote}{to}{quote}"));
                n += 1;
            }
        }
    }
    n
}

/// A reference a transaction must resolve: to another entry (`urn:uuid:`, `urn:oid:`).
pub fn is_placeholder(r: &str) -> bool {
    r.starts_with("urn:uuid:") || r.starts_with("urn:oid:")
}

/// A conditional reference (`Type?query`): the type and the query.
pub fn conditional(r: &str) -> Option<(&str, &str)> {
    let (ty, query) = r.split_once('?')?;
    (!ty.is_empty() && !ty.contains('/') && ty.chars().all(|c| c.is_ascii_alphanumeric()))
        .then_some((ty, query))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rewrites_everywhere_references_live() {
        let mut r = json!({
            "resourceType": "Observation",
            "subject": {"reference": "urn:uuid:p"},
            "extension": [{"url": "x", "valueReference": {"reference": "urn:uuid:p"}}],
            "contained": [{"resourceType": "Provenance", "target": [{"reference": "urn:oid:1.2"}]}],
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"urn:uuid:p\">p</a></div>"},
            "note": [{"text": "urn:uuid:p stays text"}]
        });
        let mut refs = Vec::new();
        collect(&r, &mut refs);
        assert_eq!(refs, vec!["urn:uuid:p", "urn:uuid:p", "urn:oid:1.2"]);
        let map = HashMap::from([
            ("urn:uuid:p".to_owned(), "Patient/1".to_owned()),
            ("urn:oid:1.2".to_owned(), "Device/2".to_owned()),
        ]);
        assert_eq!(rewrite(&mut r, &map), 4);
        assert_eq!(r["subject"]["reference"], "Patient/1");
        assert_eq!(
            r["extension"][0]["valueReference"]["reference"],
            "Patient/1"
        );
        assert_eq!(r["contained"][0]["target"][0]["reference"], "Device/2");
        assert!(
            r["text"]["div"]
                .as_str()
                .unwrap()
                .contains("href=\"Patient/1\"")
        );
        assert_eq!(r["note"][0]["text"], "urn:uuid:p stays text");
    }

    #[test]
    fn recognises_placeholders_and_conditionals() {
        assert!(is_placeholder("urn:uuid:0c3f"));
        assert!(!is_placeholder("Patient/1"));
        assert_eq!(
            conditional("Patient?identifier=http://x|1"),
            Some(("Patient", "identifier=http://x|1"))
        );
        assert_eq!(conditional("Patient/1"), None);
        assert_eq!(conditional("http://x/fhir/Patient?x=1"), None);
    }
}

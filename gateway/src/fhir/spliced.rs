//! A Bundle (searchset, history) whose entries carry stored resources as kept: written to the
//! wire by splicing each stored body between the entry's other members, instead of parsing
//! every body into a `Value` and serializing it again.
//!
//! Why: a search page of 20 Observations spent about a quarter of the gateway's CPU on parsing
//! the bodies into `Value`s for the Bundle and another few percent writing them back out
//! (perf, `Observation?patient=X&category=laboratory` on PostgreSQL, wrk -c8). The stored body
//! is JSON the gateway wrote; it is checked to be one well-formed JSON value before it is
//! spliced (`RawValue`, which allocates nothing for the check), and one that is not is written
//! as `null`, as the parsed path did.
//!
//! `_pretty`, batch entries and anything else that needs the document as a `Value` call
//! [`SplicedBundle::into_value`], which gives exactly what the parsed path built.

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A Bundle: its members but `entry`, then its entries.
#[derive(Debug, Clone, Default)]
pub struct SplicedBundle {
    /// The Bundle's members before `entry` (resourceType, id, meta, type, total, link).
    pub head: Map<String, Value>,
    pub entries: Vec<Entry>,
}

/// One entry: its members before `resource`, the resource, its members after it.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub before: Map<String, Value>,
    pub resource: Option<Resource>,
    pub after: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub enum Resource {
    /// A stored resource's JSON, written as kept.
    Stored(Bytes),
    /// A resource shaped by the gateway (`_elements`, `_summary`, an OperationOutcome).
    Json(Value),
}

impl Resource {
    fn to_value(&self) -> Value {
        match self {
            Resource::Stored(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
            Resource::Json(v) => v.clone(),
        }
    }
}

impl SplicedBundle {
    /// The document as a `Value`, member for member what [`SplicedBundle::to_bytes`] writes.
    pub fn into_value(self) -> Value {
        let mut doc = self.head;
        if !self.entries.is_empty() {
            let entries = self.entries.into_iter().map(Entry::into_value).collect();
            doc.insert("entry".into(), Value::Array(entries));
        }
        Value::Object(doc)
    }

    /// Compact JSON, as `serde_json::to_vec(&self.into_value())` would write it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size: usize = self
            .entries
            .iter()
            .map(|e| match &e.resource {
                Some(Resource::Stored(b)) => b.len() + 160,
                _ => 256,
            })
            .sum();
        let mut out = Vec::with_capacity(size + 512);
        out.push(b'{');
        let empty = members(&mut out, &self.head, true);
        if !self.entries.is_empty() {
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(br#""entry":["#);
            for (i, e) in self.entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                e.write(&mut out);
            }
            out.push(b']');
        }
        out.push(b'}');
        out
    }
}

impl Entry {
    fn into_value(self) -> Value {
        let mut e = self.before;
        if let Some(r) = &self.resource {
            e.insert("resource".into(), r.to_value());
        }
        e.extend(self.after);
        Value::Object(e)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = members(out, &self.before, true);
        if let Some(r) = &self.resource {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(br#""resource":"#);
            match r {
                Resource::Stored(b) => match serde_json::from_slice::<&RawValue>(b) {
                    Ok(raw) => out.extend_from_slice(raw.get().as_bytes()),
                    Err(_) => out.extend_from_slice(b"null"),
                },
                Resource::Json(v) => write_json(out, v),
            }
            first = false;
        }
        members(out, &self.after, first);
        out.push(b'}');
    }
}

/// Writes `map`'s members (no braces); `first` says nothing precedes them in the object.
/// Returns whether the object is still empty.
fn members(out: &mut Vec<u8>, map: &Map<String, Value>, mut first: bool) -> bool {
    for (k, v) in map {
        if !first {
            out.push(b',');
        }
        write_json(out, k);
        out.push(b':');
        write_json(out, v);
        first = false;
    }
    first
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing a `Value` or a `String` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn sample() -> SplicedBundle {
        // As stored: the decimal's text as sent, escapes and characters beyond the BMP.
        let stored = r#"{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50},"note":[{"text":"\"quoted\" é 😀"}]}"#;
        SplicedBundle {
            head: map(json!({"resourceType": "Bundle", "type": "searchset", "total": 3})),
            entries: vec![
                Entry {
                    before: map(json!({"fullUrl": "http://x/fhir/Observation/o1"})),
                    resource: Some(Resource::Stored(Bytes::from_static(stored.as_bytes()))),
                    after: map(json!({"search": {"mode": "match"}})),
                },
                Entry {
                    before: map(json!({"fullUrl": "http://x/fhir/Patient/p"})),
                    resource: Some(Resource::Json(
                        json!({"resourceType": "Patient", "id": "p"}),
                    )),
                    after: map(json!({"search": {"mode": "include"}})),
                },
                // A deletion in a history bundle: no resource.
                Entry {
                    before: map(
                        json!({"fullUrl": "http://x/fhir/Patient/q", "request": {"method": "DELETE"}}),
                    ),
                    resource: None,
                    after: Map::new(),
                },
                // An entry whose only member is the resource.
                Entry {
                    before: Map::new(),
                    resource: Some(Resource::Json(json!({"resourceType": "OperationOutcome"}))),
                    after: map(json!({"search": {"mode": "outcome"}})),
                },
            ],
        }
    }

    #[test]
    fn spliced_bytes_are_the_parsed_document_serialized() {
        let b = sample();
        let spliced = b.to_bytes();
        let parsed = serde_json::to_vec(&b.clone().into_value()).unwrap();
        assert_eq!(
            String::from_utf8(spliced).unwrap(),
            String::from_utf8(parsed).unwrap()
        );
    }

    #[test]
    fn decimals_keep_their_text() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        assert!(text.contains(r#""value":1.50"#), "{text}");
    }

    #[test]
    fn a_body_that_is_not_json_is_written_as_null() {
        for bad in [&b"{\"resourceType\":"[..], b"", b"{} {}", b"nonsense"] {
            let b = SplicedBundle {
                head: map(json!({"resourceType": "Bundle"})),
                entries: vec![Entry {
                    before: Map::new(),
                    resource: Some(Resource::Stored(Bytes::copy_from_slice(bad))),
                    after: Map::new(),
                }],
            };
            let v: Value = serde_json::from_slice(&b.to_bytes()).expect("well-formed JSON");
            assert_eq!(v["entry"][0]["resource"], Value::Null);
            assert_eq!(b.into_value()["entry"][0]["resource"], Value::Null);
        }
    }

    #[test]
    fn no_entries_no_entry_member() {
        let b = SplicedBundle {
            head: map(json!({"resourceType": "Bundle", "type": "searchset"})),
            entries: Vec::new(),
        };
        assert_eq!(
            b.to_bytes(),
            br#"{"resourceType":"Bundle","type":"searchset"}"#
        );
        assert_eq!(
            b.into_value(),
            json!({"resourceType": "Bundle", "type": "searchset"})
        );
        assert_eq!(SplicedBundle::default().to_bytes(), b"{}");
    }
}

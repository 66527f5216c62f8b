//! `$meta`, `$meta-add` and `$meta-delete` (R4 Resource operations): a resource's profiles,
//! security labels and tags as a `Parameters` resource, and adding or removing them.
//!
//! Profiles are compared by their canonical, codings by `system` and `code` (the spec: "the
//! version and display are ignored"). The server's own `versionId` and `lastUpdated` are never
//! taken from the client.

use crate::error::{Error, Result};
use serde_json::{Map, Value, json};

/// The `meta` a `$meta-add` or `$meta-delete` body carries: `Parameters` with one `meta`
/// parameter whose `valueMeta` holds the profiles, security labels and tags.
pub fn meta_parameter(body: &Value) -> Result<Value> {
    if body["resourceType"] != "Parameters" {
        return Err(Error::invalid(
            "$meta-add and $meta-delete take a Parameters resource",
        ));
    }
    let metas: Vec<&Value> = body["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "meta")
        .collect();
    match metas.as_slice() {
        [p] => match p.get("valueMeta") {
            Some(m) if m.is_object() => Ok(m.clone()),
            _ => Err(Error::invalid("the 'meta' parameter needs a valueMeta")),
        },
        [] => Err(Error::invalid("a 'meta' parameter is required")),
        _ => Err(Error::invalid("only one 'meta' parameter is allowed")),
    }
}

/// The answer of all three operations: `Parameters` with `return` = the meta.
pub fn parameters(meta: &Value) -> Value {
    json!({
        "resourceType": "Parameters",
        "parameter": [{"name": "return", "valueMeta": meta}]
    })
}

/// The meta of a stored resource (empty object when it has none).
pub fn of(resource: &Value) -> Value {
    resource
        .get("meta")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Map::new()))
}

/// Adds (`add`) or removes the profiles, security labels and tags of `change` to or from the
/// resource's meta. Returns the changed resource.
pub fn apply(resource: &Value, change: &Value, add: bool) -> Value {
    let mut out = resource.clone();
    let Some(obj) = out.as_object_mut() else {
        return out;
    };
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let meta = meta.as_object_mut().expect("meta is an object");
    for field in ["profile", "security", "tag"] {
        let given: Vec<Value> = change[field].as_array().cloned().unwrap_or_default();
        if given.is_empty() {
            continue;
        }
        let same = |a: &Value, b: &Value| {
            if field == "profile" {
                a == b
            } else {
                a.get("system") == b.get("system") && a.get("code") == b.get("code")
            }
        };
        let mut list: Vec<Value> = meta
            .get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if add {
            for g in given {
                if !list.iter().any(|x| same(x, &g)) {
                    list.push(g);
                }
            }
        } else {
            list.retain(|x| !given.iter().any(|g| same(x, g)));
        }
        if list.is_empty() {
            meta.remove(field);
        } else {
            meta.insert(field.to_owned(), Value::Array(list));
        }
    }
    if meta.is_empty() {
        obj.remove("meta");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_merges_by_system_and_code_and_delete_removes() {
        let r = json!({"resourceType": "Patient", "id": "p",
            "meta": {"versionId": "1", "tag": [{"system": "s", "code": "a", "display": "A"}]}});
        let add = json!({"tag": [{"system": "s", "code": "a", "display": "other"},
                                 {"system": "s", "code": "b"}],
                         "profile": ["http://x/p"], "security": [{"system": "v", "code": "R"}]});
        let added = apply(&r, &add, true);
        assert_eq!(added["meta"]["tag"].as_array().unwrap().len(), 2);
        assert_eq!(added["meta"]["tag"][0]["display"], "A");
        assert_eq!(added["meta"]["profile"], json!(["http://x/p"]));
        let del = json!({"tag": [{"system": "s", "code": "a"}], "profile": ["http://x/p"],
                         "security": [{"system": "v", "code": "R"}]});
        let deleted = apply(&added, &del, false);
        assert_eq!(
            deleted["meta"]["tag"],
            json!([{"system": "s", "code": "b"}])
        );
        assert!(deleted["meta"].get("profile").is_none());
        assert!(deleted["meta"].get("security").is_none());
        assert_eq!(deleted["meta"]["versionId"], "1");
    }

    #[test]
    fn the_body_needs_one_meta_parameter() {
        let ok = json!({"resourceType": "Parameters",
            "parameter": [{"name": "meta", "valueMeta": {"tag": [{"code": "x"}]}}]});
        assert_eq!(meta_parameter(&ok).unwrap()["tag"][0]["code"], "x");
        for bad in [
            json!({"resourceType": "Patient"}),
            json!({"resourceType": "Parameters"}),
            json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueString": "x"}]}),
        ] {
            assert_eq!(meta_parameter(&bad).unwrap_err().status, 400);
        }
    }
}

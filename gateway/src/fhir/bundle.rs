//! Search and history bundles. Entries are built only from disclosed resources.

use crate::fhir::spliced::{Entry, Resource, SplicedBundle};
use crate::policy::Disclosed;
use crate::store::{Stored, WriteMethod, format_instant};
use serde_json::{Map, Value, json};

/// The resource JSON of a stored version (deletions have none).
pub fn resource_json(s: &Stored) -> Option<Value> {
    s.body.as_ref().and_then(|b| serde_json::from_slice(b).ok())
}

pub fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// Query string of a page link; `extra` is the cursor.
fn link(base_path: &str, params: &[(String, String)], extra: Option<(&str, &str)>) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    if let Some((k, v)) = extra {
        ser.append_pair(k, v);
    }
    let q = ser.finish();
    if q.is_empty() {
        base_path.to_owned()
    } else {
        format!("{base_path}?{q}")
    }
}

fn links(
    url: &str,
    params: &[(String, String)],
    cursor_param: Option<&str>,
    next: Option<&str>,
) -> Vec<Value> {
    let mut out = vec![
        json!({ "relation": "self", "url": link(url, params, cursor_param.map(|c| ("_cursor", c))) }),
    ];
    if let Some(n) = next {
        out.push(json!({ "relation": "next", "url": link(url, params, Some(("_cursor", n))) }));
    }
    out
}

pub struct PageInfo<'a> {
    /// The URL of the search or history endpoint (without query).
    pub url: String,
    /// Parameters to repeat in links.
    pub params: Vec<(String, String)>,
    /// The cursor this page was fetched with.
    pub cursor: Option<&'a str>,
    pub next: Option<&'a str>,
    pub total: Option<u64>,
}

/// A searchset: the matches, then what `_include`/`_revinclude` added (search mode `include`).
/// Stored bodies go out as kept (see `spliced`); only `_summary`/`_elements` parse them.
pub fn searchset(
    base: &str,
    page: PageInfo<'_>,
    matches: &[Disclosed<Stored>],
    included: &[Disclosed<Stored>],
    subset: Option<&crate::fhir::subset::Subset>,
) -> SplicedBundle {
    let entry = |d: &Disclosed<Stored>, mode: &str| {
        let s = d.get();
        // `_summary`/`_elements` shape the matches; included resources come whole.
        let resource = match (subset, mode) {
            (Some(subset), "match") => Some(Resource::Json(
                resource_json(s)
                    .map(|r| crate::fhir::subset::apply(subset, r))
                    .unwrap_or(Value::Null),
            )),
            _ => Some(stored_resource(s)),
        };
        Entry {
            before: object(json!({ "fullUrl": format!("{base}/{}/{}", s.ty, s.id) })),
            resource,
            after: object(json!({ "search": { "mode": mode } })),
        }
    };
    let entries = matches
        .iter()
        .map(|d| entry(d, "match"))
        .chain(included.iter().map(|d| entry(d, "include")))
        .collect();
    bundle("searchset", page, entries)
}

pub fn history(base: &str, page: PageInfo<'_>, entries: &[Disclosed<Stored>]) -> SplicedBundle {
    let entries = entries
        .iter()
        .map(|d| {
            let s = d.get();
            let (url, status) = match s.method {
                WriteMethod::Post => (s.ty.clone(), "201 Created"),
                WriteMethod::Put if s.version == 1 => (format!("{}/{}", s.ty, s.id), "201 Created"),
                WriteMethod::Put => (format!("{}/{}", s.ty, s.id), "200 OK"),
                WriteMethod::Delete => (format!("{}/{}", s.ty, s.id), "204 No Content"),
            };
            Entry {
                before: object(json!({
                    "fullUrl": format!("{base}/{}/{}", s.ty, s.id),
                    "request": { "method": s.method.as_str(), "url": url },
                    "response": { "status": status, "etag": etag(s.version), "lastModified": format_instant(s.last_updated) }
                })),
                // A deletion has no resource.
                resource: s.body.as_ref().map(|b| Resource::Stored(b.clone())),
                after: Map::new(),
            }
        })
        .collect();
    bundle("history", page, entries)
}

/// A stored version's body as kept (`null` for a version without one, as `resource_json` gives).
fn stored_resource(s: &Stored) -> Resource {
    match &s.body {
        Some(b) => Resource::Stored(b.clone()),
        None => Resource::Json(Value::Null),
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn bundle(kind: &str, page: PageInfo<'_>, entries: Vec<Entry>) -> SplicedBundle {
    let mut head = object(json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "lastUpdated": format_instant(time::OffsetDateTime::now_utc()) },
        "type": kind,
    }));
    if let Some(t) = page.total {
        head.insert("total".into(), json!(t));
    }
    head.insert(
        "link".into(),
        Value::Array(links(&page.url, &page.params, page.cursor, page.next)),
    );
    SplicedBundle { head, entries }
}

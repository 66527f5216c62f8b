//! Search and history bundles. Entries are built only from disclosed resources.

use crate::policy::Disclosed;
use crate::store::{Stored, WriteMethod, format_instant};
use serde_json::{Value, json};

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
pub fn searchset(
    base: &str,
    page: PageInfo<'_>,
    matches: &[Disclosed<Stored>],
    included: &[Disclosed<Stored>],
    subset: Option<&crate::fhir::subset::Subset>,
) -> Value {
    let entry = |d: &Disclosed<Stored>, mode: &str| {
        let s = d.get();
        // `_summary`/`_elements` shape the matches; included resources come whole.
        let resource = match (subset, mode) {
            (Some(subset), "match") => {
                resource_json(s).map(|r| crate::fhir::subset::apply(subset, r))
            }
            _ => resource_json(s),
        };
        json!({
            "fullUrl": format!("{base}/{}/{}", s.ty, s.id),
            "resource": resource,
            "search": { "mode": mode }
        })
    };
    let entries: Vec<Value> = matches
        .iter()
        .map(|d| entry(d, "match"))
        .chain(included.iter().map(|d| entry(d, "include")))
        .collect();
    bundle("searchset", page, entries)
}

pub fn history(base: &str, page: PageInfo<'_>, entries: &[Disclosed<Stored>]) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .map(|d| {
            let s = d.get();
            let (url, status) = match s.method {
                WriteMethod::Post => (s.ty.clone(), "201 Created"),
                WriteMethod::Put if s.version == 1 => (format!("{}/{}", s.ty, s.id), "201 Created"),
                WriteMethod::Put => (format!("{}/{}", s.ty, s.id), "200 OK"),
                WriteMethod::Delete => (format!("{}/{}", s.ty, s.id), "204 No Content"),
            };
            let mut e = json!({
                "fullUrl": format!("{base}/{}/{}", s.ty, s.id),
                "request": { "method": s.method.as_str(), "url": url },
                "response": { "status": status, "etag": etag(s.version), "lastModified": format_instant(s.last_updated) }
            });
            if let Some(r) = resource_json(s) {
                e["resource"] = r;
            }
            e
        })
        .collect();
    bundle("history", page, entries)
}

fn bundle(kind: &str, page: PageInfo<'_>, entries: Vec<Value>) -> Value {
    let mut b = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "lastUpdated": format_instant(time::OffsetDateTime::now_utc()) },
        "type": kind,
    });
    if let Some(t) = page.total {
        b["total"] = json!(t);
    }
    b["link"] = Value::Array(links(&page.url, &page.params, page.cursor, page.next));
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    b
}

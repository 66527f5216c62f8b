//! What the search oracles share: following a search's pages, and reading resources' JSON
//! plainly (not through the gateway's FHIRPath or index).

use super::*;
use serde_json::Value;
use std::collections::BTreeSet;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Which resources of a type a query must return.
pub type Oracle = Box<dyn Fn(&Value) -> bool>;

/// The ids of a search's matches in order, following `next` links; the error names the status.
async fn matches(gw: &Gateway, ty: &str, query: &str, count: u32) -> Result<Vec<String>, String> {
    let c = client();
    let mut url = format!("{}/{ty}?{query}&_count={count}", gw.base);
    let mut ids = Vec::new();
    loop {
        let resp = c.get(&url).send().await.unwrap();
        let status = resp.status();
        let bundle: Value = resp.json().await.unwrap();
        if !status.is_success() {
            return Err(format!("{status}: {bundle}"));
        }
        for e in bundle["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "match" {
                ids.push(e["resource"]["id"].as_str().unwrap().to_owned());
            }
        }
        match bundle["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().unwrap().to_owned(),
            None => return Ok(ids),
        }
    }
}

/// Every id a search returns, following `next` links.
pub async fn search_ids(gw: &Gateway, ty: &str, query: &str) -> Result<BTreeSet<String>, String> {
    Ok(matches(gw, ty, query, 200).await?.into_iter().collect())
}

/// Every id a search returns in order (`_count` small, so that the pages of a sorted search come
/// from its snapshot).
pub async fn search_ordered(gw: &Gateway, ty: &str, query: &str, count: u32) -> Vec<String> {
    matches(gw, ty, query, count)
        .await
        .unwrap_or_else(|e| panic!("{ty}?{query}: {e}"))
}

/// Stores every resource with `PUT [type]/[id]` (ids kept, so the oracle knows them).
pub async fn put_all(gw: &Gateway, by_type: &std::collections::HashMap<String, Vec<Value>>) {
    let c = client();
    for (ty, list) in by_type {
        for r in list {
            let id = r["id"].as_str().unwrap();
            let resp = c
                .put(format!("{}/{ty}/{id}", gw.base))
                .header("content-type", FHIR_JSON)
                .body(r.to_string())
                .send()
                .await
                .unwrap();
            assert!(
                resp.status().is_success(),
                "{ty}/{id}: {}",
                resp.text().await.unwrap()
            );
        }
    }
}

// The oracle's own readings of the JSON.

pub fn strs<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a str> {
    let mut cur = vec![v];
    for k in path {
        cur = cur
            .into_iter()
            .flat_map(|x| match &x[*k] {
                Value::Array(a) => a.iter().collect::<Vec<_>>(),
                Value::Null => vec![],
                other => vec![other],
            })
            .collect();
    }
    cur.into_iter().filter_map(Value::as_str).collect()
}

pub fn lower_plain(s: &str) -> String {
    s.to_lowercase()
        .replace(['é', 'è', 'ë', 'ê'], "e")
        .replace(['ü', 'ú'], "u")
        .replace(['ö', 'ó'], "o")
        .replace(['ï', 'í'], "i")
        .replace(['á', 'ä', 'à'], "a")
}

pub fn instant(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

pub fn codes<'a>(r: &'a Value, field: &str) -> Vec<(&'a str, &'a str)> {
    let concepts: Vec<&Value> = match &r[field] {
        Value::Array(a) => a.iter().collect(),
        Value::Null => vec![],
        v => vec![v],
    };
    concepts
        .into_iter()
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .map(|c| {
            (
                c["system"].as_str().unwrap_or(""),
                c["code"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

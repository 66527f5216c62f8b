//! Federation: resources from backends behind the gateway's adapters. The backends are found at
//! the gateway's operator endpoint `GET /federation` (beside `/fhir`); a deployment that lists
//! none skips this group (the summary says so).

use super::{Case, Outcome, is_outcome};
use crate::client::Fhir;
use crate::{case, ensure};
use serde_json::Value;

const HOLDER: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/holder";

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "resources from a backend carry its id prefix, meta.source and the holder tag",
            provenance
        ),
        case!(
            "a backend's unknown id is 404; a backend that is down is a 502/504 naming it",
            reads
        ),
        case!(
            "a search answers 200 with what it has; a backend down is named in an outcome entry",
            partial_results
        ),
        case!("a tampered federated cursor is refused with 400", cursor),
    ]
}

/// The backends the deployment lists (`GET /federation`), empty when it lists none.
pub async fn backends(c: &Fhir) -> Vec<Value> {
    let root = c.base.trim_end_matches('/').trim_end_matches("/fhir");
    let Ok(r) = c.anonymous.get(format!("{root}/federation")).send().await else {
        return Vec::new();
    };
    let Ok(v) = r.json::<Value>().await else {
        return Vec::new();
    };
    v["backends"].as_array().cloned().unwrap_or_default()
}

fn name(b: &Value) -> &str {
    b["name"].as_str().unwrap_or_default()
}

fn is_up(b: &Value) -> bool {
    b["health"] == "up"
}

fn first_type(b: &Value) -> Option<&str> {
    b["searchable"].as_array()?.first()?.as_str()
}

fn outcome_texts(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "outcome")
        .map(|e| e["resource"].to_string())
        .collect()
}

async fn provenance(c: Fhir) -> Outcome {
    let all = backends(&c).await;
    let up: Vec<&Value> = all.iter().filter(|b| is_up(b)).collect();
    ensure!(!up.is_empty(), "no backend is up at /federation: {all:?}");
    for b in up {
        let Some(ty) = first_type(b) else { continue };
        let a = c.get(&format!("{ty}?_count=50")).await?;
        ensure!(a.status == 200, "{ty} search: {} {}", a.status, a.text);
        let prefix = format!("{}.", name(b));
        let theirs: Vec<&Value> = a.body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| &e["resource"])
            .filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with(&prefix)))
            .collect();
        ensure!(
            !theirs.is_empty(),
            "no {ty} from backend {} in the first 50 matches",
            name(b)
        );
        for r in theirs {
            ensure!(
                r["meta"]["source"].as_str().is_some_and(|s| !s.is_empty()),
                "{} has no meta.source",
                r["id"]
            );
            let tags = r["meta"]["tag"].as_array().cloned().unwrap_or_default();
            ensure!(
                tags.iter().any(|t| t["system"] == HOLDER),
                "{} has no holder tag",
                r["id"]
            );
        }
    }
    Ok(())
}

async fn reads(c: Fhir) -> Outcome {
    let all = backends(&c).await;
    ensure!(!all.is_empty(), "no backends at /federation");
    for b in &all {
        let Some(ty) = first_type(b) else { continue };
        let id = format!("{}.conformance-{}", name(b), uuid::Uuid::new_v4().simple());
        let a = c.get(&format!("{ty}/{id}")).await?;
        ensure!(
            is_outcome(&a.body),
            "{ty}/{id}: not an OperationOutcome: {}",
            a.text
        );
        if is_up(b) {
            ensure!(
                a.status == 404,
                "{ty}/{id} at a backend that is up: {}",
                a.status
            );
        } else {
            ensure!(
                a.status == 502 || a.status == 504,
                "{ty}/{id} at a backend that is down: {}",
                a.status
            );
            ensure!(
                a.text.contains(name(b)),
                "the outcome does not name {}",
                name(b)
            );
        }
    }
    Ok(())
}

async fn partial_results(c: Fhir) -> Outcome {
    let all = backends(&c).await;
    ensure!(!all.is_empty(), "no backends at /federation");
    for b in &all {
        let Some(ty) = first_type(b) else { continue };
        let a = c.get(&format!("{ty}?_count=5")).await?;
        ensure!(a.status == 200, "{ty} search: {} {}", a.status, a.text);
        let named = outcome_texts(&a.body)
            .iter()
            .any(|o| o.contains(&format!("backend {}", name(b))) && o.contains("\"warning\""));
        if is_up(b) {
            ensure!(!named, "backend {} is up but reported failed", name(b));
        } else {
            ensure!(named, "backend {} is down but no outcome names it", name(b));
            ensure!(
                a.body.get("total").is_none(),
                "a partial result carries a total"
            );
        }
    }
    Ok(())
}

async fn cursor(c: Fhir) -> Outcome {
    let all = backends(&c).await;
    let ty = all.iter().find_map(first_type).unwrap_or("Patient");
    let a = c.get(&format!("{ty}?_cursor=~bm90LWpzb24")).await?;
    ensure!(a.status == 400, "tampered cursor: {} {}", a.status, a.text);
    ensure!(is_outcome(&a.body), "not an OperationOutcome: {}", a.text);
    Ok(())
}

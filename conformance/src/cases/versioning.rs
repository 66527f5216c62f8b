use super::crud::create_patient;
use super::{Case, Outcome, is_outcome};
use crate::client::Fhir;
use crate::{case, ensure};
use serde_json::json;

pub fn cases() -> Vec<Case> {
    vec![
        case!("vread returns each version", vread),
        case!("If-Match with a stale version answers 412", stale_if_match),
        case!(
            "If-Match with the current version succeeds",
            current_if_match
        ),
        case!(
            "instance history lists every version, newest first, deletion included",
            history
        ),
        case!("history pages with _count and next links", history_paging),
    ]
}

async fn vread(c: Fhir) -> Outcome {
    let (id, mut p) = create_patient(&c, "vread").await?;
    p["gender"] = json!("male");
    c.put(&format!("Patient/{id}"), &p, &[]).await?;
    let v1 = c.get(&format!("Patient/{id}/_history/1")).await?;
    let v2 = c.get(&format!("Patient/{id}/_history/2")).await?;
    ensure!(
        v1.status == 200 && v2.status == 200,
        "status {} {}",
        v1.status,
        v2.status
    );
    ensure!(
        v1.body.get("gender").is_none() && v2.body["gender"] == "male",
        "versions mixed up"
    );
    Ok(())
}

async fn stale_if_match(c: Fhir) -> Outcome {
    let (id, p) = create_patient(&c, "stale").await?;
    c.put(&format!("Patient/{id}"), &p, &[]).await?;
    let a = c
        .put(&format!("Patient/{id}"), &p, &[("if-match", "W/\"1\"")])
        .await?;
    ensure!(a.status == 412, "status {}", a.status);
    ensure!(is_outcome(&a.body), "no OperationOutcome");
    Ok(())
}

async fn current_if_match(c: Fhir) -> Outcome {
    let (id, p) = create_patient(&c, "current").await?;
    let a = c
        .put(&format!("Patient/{id}"), &p, &[("if-match", "W/\"1\"")])
        .await?;
    ensure!(a.status == 200, "status {}", a.status);
    Ok(())
}

async fn history(c: Fhir) -> Outcome {
    let (id, p) = create_patient(&c, "history").await?;
    c.put(&format!("Patient/{id}"), &p, &[]).await?;
    c.delete(&format!("Patient/{id}"), &[]).await?;
    let a = c.get(&format!("Patient/{id}/_history")).await?;
    ensure!(a.status == 200, "status {}", a.status);
    ensure!(a.body["type"] == "history", "type {}", a.body["type"]);
    let methods: Vec<&str> = a.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["request"]["method"].as_str())
        .collect();
    ensure!(methods == ["DELETE", "PUT", "POST"], "methods {methods:?}");
    Ok(())
}

async fn history_paging(c: Fhir) -> Outcome {
    let (id, p) = create_patient(&c, "paging").await?;
    for _ in 0..4 {
        c.put(&format!("Patient/{id}"), &p, &[]).await?;
    }
    let mut url = format!("Patient/{id}/_history?_count=2");
    let mut versions = Vec::new();
    for _ in 0..10 {
        let a = c.get(&url).await?;
        ensure!(a.status == 200, "status {}", a.status);
        for e in a.body["entry"].as_array().into_iter().flatten() {
            versions.push(
                e["resource"]["meta"]["versionId"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            );
        }
        match a.body["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => {
                let full = next["url"].as_str().unwrap_or_default();
                url = full
                    .strip_prefix(&format!("{}/", c.base))
                    .unwrap_or(full)
                    .to_owned();
            }
            None => break,
        }
    }
    ensure!(
        versions == ["5", "4", "3", "2", "1"],
        "versions {versions:?}"
    );
    Ok(())
}

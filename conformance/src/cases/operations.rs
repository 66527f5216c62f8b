//! Operations: `$everything`, `$meta`/`$meta-add`/`$meta-delete`, `$validate`, bulk `$export`.

use super::{Case, Outcome, is_outcome, test_patient};
use crate::client::Fhir;
use crate::{case, ensure};
use serde_json::{Value, json};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "Patient/$everything pages the patient's compartment; _type narrows it",
            everything
        ),
        case!("$meta-add, $meta and $meta-delete", meta),
        case!(
            "$validate answers an OperationOutcome; invalid is an error issue, not a write",
            validate
        ),
        case!(
            "$validate mode=delete on an unknown instance is 404",
            validate_delete
        ),
        case!(
            "bulk $export: kick-off, poll, NDJSON output, delete",
            export
        ),
        case!(
            "$export without Prefer: respond-async is 400",
            export_needs_async
        ),
    ]
}

async fn create(c: &Fhir, body: &Value) -> Result<String, String> {
    let ty = body["resourceType"].as_str().unwrap_or_default();
    let a = c.post(ty, body, &[]).await?;
    ensure!(a.status == 201, "create {ty}: {} {}", a.status, a.text);
    Ok(a.body["id"].as_str().unwrap_or_default().to_owned())
}

async fn everything(c: Fhir) -> Outcome {
    let pid = create(&c, &test_patient("everything")).await?;
    let subject = json!({"reference": format!("Patient/{pid}")});
    for n in 0..3 {
        create(
            &c,
            &json!({"resourceType": "Observation", "status": "final",
                "code": {"text": format!("everything {n}")}, "subject": subject}),
        )
        .await?;
    }
    create(
        &c,
        &json!({"resourceType": "Condition", "subject": subject}),
    )
    .await?;
    let mut seen = Vec::new();
    let mut next = Some(c.url(&format!("Patient/{pid}/$everything?_count=2")));
    let mut pages = 0;
    while let Some(u) = next.take() {
        let a = c.get_url(&u).await?;
        ensure!(a.status == 200, "status {} {}", a.status, a.text);
        ensure!(a.body["type"] == "searchset", "type {}", a.body["type"]);
        for e in a.body["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] != "include" {
                seen.push(
                    e["resource"]["resourceType"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                );
            }
        }
        next = a.body["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
        pages += 1;
        ensure!(pages < 20, "paging does not end");
    }
    seen.sort();
    ensure!(
        seen == [
            "Condition",
            "Observation",
            "Observation",
            "Observation",
            "Patient"
        ],
        "matches {seen:?}"
    );
    let a = c
        .get(&format!("Patient/{pid}/$everything?_type=Condition"))
        .await?;
    let types: Vec<&str> = a.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] != "include")
        .filter_map(|e| e["resource"]["resourceType"].as_str())
        .collect();
    ensure!(types == ["Condition"], "_type=Condition gave {types:?}");
    Ok(())
}

fn meta_body(tag: &str) -> Value {
    json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {
        "tag": [{"system": "urn:conformance:tag", "code": tag}]}}]})
}

fn has_tag(meta: &Value, tag: &str) -> bool {
    meta["tag"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["system"] == "urn:conformance:tag" && t["code"] == tag)
}

async fn meta(c: Fhir) -> Outcome {
    let pid = create(&c, &test_patient("meta")).await?;
    let a = c
        .post(&format!("Patient/{pid}/$meta-add"), &meta_body("x"), &[])
        .await?;
    ensure!(a.status == 200, "$meta-add: {} {}", a.status, a.text);
    ensure!(
        a.body["resourceType"] == "Parameters"
            && has_tag(&a.body["parameter"][0]["valueMeta"], "x"),
        "$meta-add answered {}",
        a.text
    );
    let a = c.get(&format!("Patient/{pid}/$meta")).await?;
    ensure!(
        a.status == 200 && has_tag(&a.body["parameter"][0]["valueMeta"], "x"),
        "$meta: {} {}",
        a.status,
        a.text
    );
    let a = c
        .post(&format!("Patient/{pid}/$meta-delete"), &meta_body("x"), &[])
        .await?;
    ensure!(
        a.status == 200 && !has_tag(&a.body["parameter"][0]["valueMeta"], "x"),
        "$meta-delete: {} {}",
        a.status,
        a.text
    );
    let r = c.get(&format!("Patient/{pid}")).await?;
    ensure!(
        !has_tag(&r.body["meta"], "x"),
        "the tag is still on the resource"
    );
    Ok(())
}

async fn validate(c: Fhir) -> Outcome {
    let mut p = test_patient("validate");
    let a = c.post("Patient/$validate", &p, &[]).await?;
    ensure!(
        a.status == 200 && is_outcome(&a.body),
        "valid: {} {}",
        a.status,
        a.text
    );
    let errors = |b: &Value| {
        b["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["severity"] == "error" || i["severity"] == "fatal")
            .count()
    };
    ensure!(
        errors(&a.body) == 0,
        "a valid patient has errors: {}",
        a.text
    );
    p["birthDate"] = json!("not a date");
    let a = c.post("Patient/$validate", &p, &[]).await?;
    ensure!(a.status == 200, "invalid: status {} {}", a.status, a.text);
    ensure!(errors(&a.body) > 0, "no error issue: {}", a.text);
    let ident = p["identifier"][0]["value"].as_str().unwrap_or_default();
    let s = c
        .get(&format!(
            "Patient?identifier=urn:conformance:test%7C{ident}"
        ))
        .await?;
    ensure!(s.body["total"] == 0, "$validate wrote the resource");
    Ok(())
}

async fn validate_delete(c: Fhir) -> Outcome {
    let a = c
        .raw(
            "POST",
            "Patient/conformance-no-such-patient/$validate?mode=delete",
            Vec::new(),
            &[],
        )
        .await?;
    ensure!(a.status == 404, "status {} {}", a.status, a.text);
    Ok(())
}

async fn export(c: Fhir) -> Outcome {
    let pid = create(&c, &test_patient("export")).await?;
    let a = c
        .send(
            c.http
                .get(c.url("$export?_type=Patient"))
                .header("accept", "application/fhir+json")
                .header("prefer", "respond-async"),
        )
        .await?;
    ensure!(a.status == 202, "kick-off: {} {}", a.status, a.text);
    let status = a.header("content-location").to_owned();
    ensure!(!status.is_empty(), "no Content-Location");
    let mut manifest = Value::Null;
    for _ in 0..1200 {
        let s = c.get_url(&status).await?;
        match s.status {
            202 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            200 => {
                manifest = s.body;
                break;
            }
            other => return Err(format!("status poll: {other} {}", s.text)),
        }
    }
    ensure!(
        manifest.is_object(),
        "the export did not finish in 2 minutes"
    );
    let outputs = manifest["output"].as_array().cloned().unwrap_or_default();
    ensure!(
        outputs.iter().all(|o| o["type"] == "Patient"),
        "_type=Patient gave {outputs:?}"
    );
    let mut found = false;
    for o in &outputs {
        let f = c
            .send(c.http.get(o["url"].as_str().unwrap_or_default()))
            .await?;
        ensure!(f.status == 200, "file: {}", f.status);
        for line in f.text.lines() {
            let v: Value =
                serde_json::from_str(line).map_err(|e| format!("not NDJSON: {e}: {line}"))?;
            found |= v["id"] == pid.as_str();
        }
    }
    ensure!(found, "the new patient is not in the export");
    let d = c.send(c.http.delete(&status)).await?;
    ensure!(d.status == 202, "delete: {} {}", d.status, d.text);
    let s = c.get_url(&status).await?;
    ensure!(s.status == 404, "a deleted job answers {}", s.status);
    Ok(())
}

async fn export_needs_async(c: Fhir) -> Outcome {
    let a = c.get("$export").await?;
    ensure!(
        a.status == 400 && is_outcome(&a.body),
        "status {} {}",
        a.status,
        a.text
    );
    Ok(())
}

use super::{Case, Outcome, is_outcome};
use crate::client::Fhir;
use crate::{case, ensure};
use serde_json::json;

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "malformed JSON answers 400 with an OperationOutcome",
            malformed
        ),
        case!(
            "an invalid resource answers 400 listing its errors",
            invalid
        ),
        case!(
            "resourceType differing from the URL answers 400",
            wrong_type
        ),
        case!(
            "an unknown resource type answers 4xx with an OperationOutcome",
            unknown_type
        ),
        case!("deeply nested JSON is refused, not crashed on", deep),
        case!("an id over 64 characters is refused", long_id),
        case!("XML is refused with 406/415 and an OperationOutcome", xml),
        case!("the server still answers after bad input", still_alive),
    ]
}

async fn malformed(c: Fhir) -> Outcome {
    let a = c
        .raw(
            "POST",
            "Patient",
            br#"{"resourceType":"Patient","name":[{"#.to_vec(),
            &[],
        )
        .await?;
    ensure!(a.status == 400, "status {}", a.status);
    ensure!(is_outcome(&a.body), "no OperationOutcome: {}", a.text);
    Ok(())
}

async fn invalid(c: Fhir) -> Outcome {
    let a = c
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "gender": 12, "birthDate": "not a date"}),
            &[],
        )
        .await?;
    ensure!(a.status == 400 || a.status == 422, "status {}", a.status);
    ensure!(is_outcome(&a.body), "no OperationOutcome");
    let n = a.body["issue"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(n >= 2, "{n} issues for two errors");
    Ok(())
}

async fn wrong_type(c: Fhir) -> Outcome {
    let a = c
        .post("Observation", &json!({"resourceType": "Patient"}), &[])
        .await?;
    ensure!(a.status == 400, "status {}", a.status);
    ensure!(is_outcome(&a.body), "no OperationOutcome");
    Ok(())
}

async fn unknown_type(c: Fhir) -> Outcome {
    let a = c.get("NoSuchType/1").await?;
    ensure!(a.status == 404 || a.status == 400, "status {}", a.status);
    ensure!(is_outcome(&a.body), "no OperationOutcome");
    Ok(())
}

async fn deep(c: Fhir) -> Outcome {
    let body = format!(
        "{{\"resourceType\":\"Patient\",\"x\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let a = c.raw("POST", "Patient", body.into_bytes(), &[]).await?;
    ensure!(
        a.status == 400 || a.status == 413 || a.status == 422,
        "status {}",
        a.status
    );
    ensure!(is_outcome(&a.body), "no OperationOutcome");
    Ok(())
}

async fn long_id(c: Fhir) -> Outcome {
    let a = c.get(&format!("Patient/{}", "a".repeat(65))).await?;
    ensure!(a.status == 400 || a.status == 404, "status {}", a.status);
    ensure!(is_outcome(&a.body), "no OperationOutcome");
    Ok(())
}

async fn xml(c: Fhir) -> Outcome {
    let a = c
        .raw(
            "POST",
            "Patient",
            b"<Patient xmlns=\"http://hl7.org/fhir\"/>".to_vec(),
            &[("content-type", "application/fhir+xml")],
        )
        .await?;
    ensure!(a.status == 415 || a.status == 406, "status {}", a.status);
    ensure!(is_outcome(&a.body), "no OperationOutcome");
    Ok(())
}

async fn still_alive(c: Fhir) -> Outcome {
    let a = c.get("metadata").await?;
    ensure!(a.status == 200, "status {}", a.status);
    Ok(())
}

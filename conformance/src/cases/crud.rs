use super::{Case, Outcome, is_outcome, test_patient};
use crate::client::Fhir;
use crate::{case, ensure};
use serde_json::json;

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "create assigns id, Location, ETag and Last-Modified",
            create
        ),
        case!("read returns what was created", read),
        case!("update creates a new version", update),
        case!("delete then read answers 410 Gone", delete),
        case!(
            "read of an unknown id answers 404 with an OperationOutcome",
            unknown
        ),
        case!(
            "the server owns meta.versionId and meta.lastUpdated",
            server_meta
        ),
        case!("Prefer: return=minimal sends no body", prefer_minimal),
    ]
}

pub async fn create_patient(c: &Fhir, tag: &str) -> Result<(String, serde_json::Value), String> {
    let a = c.post("Patient", &test_patient(tag), &[]).await?;
    ensure!(a.status == 201, "create: status {} {}", a.status, a.text);
    let id = a.body["id"]
        .as_str()
        .ok_or("create: no id in the body")?
        .to_owned();
    Ok((id, a.body))
}

async fn create(c: Fhir) -> Outcome {
    let a = c.post("Patient", &test_patient("create"), &[]).await?;
    ensure!(a.status == 201, "status {}", a.status);
    let id = a.body["id"].as_str().unwrap_or_default();
    ensure!(!id.is_empty(), "no id");
    let loc = a.header("location");
    ensure!(
        loc.contains(&format!("Patient/{id}/_history/")),
        "Location {loc}"
    );
    ensure!(a.header("etag") == "W/\"1\"", "ETag {}", a.header("etag"));
    ensure!(!a.header("last-modified").is_empty(), "no Last-Modified");
    Ok(())
}

async fn read(c: Fhir) -> Outcome {
    let (id, created) = create_patient(&c, "read").await?;
    let a = c.get(&format!("Patient/{id}")).await?;
    ensure!(a.status == 200, "status {}", a.status);
    ensure!(a.body == created, "read differs from create");
    ensure!(a.header("etag") == "W/\"1\"", "ETag {}", a.header("etag"));
    Ok(())
}

async fn update(c: Fhir) -> Outcome {
    let (id, mut p) = create_patient(&c, "update").await?;
    p["gender"] = json!("female");
    let a = c.put(&format!("Patient/{id}"), &p, &[]).await?;
    ensure!(a.status == 200, "status {} {}", a.status, a.text);
    ensure!(
        a.body["meta"]["versionId"] == "2",
        "versionId {}",
        a.body["meta"]["versionId"]
    );
    ensure!(a.body["gender"] == "female", "update not applied");
    Ok(())
}

async fn delete(c: Fhir) -> Outcome {
    let (id, _) = create_patient(&c, "delete").await?;
    let a = c.delete(&format!("Patient/{id}"), &[]).await?;
    ensure!(
        a.status == 200 || a.status == 204,
        "delete status {}",
        a.status
    );
    let a = c.get(&format!("Patient/{id}")).await?;
    ensure!(a.status == 410, "read after delete: status {}", a.status);
    Ok(())
}

async fn unknown(c: Fhir) -> Outcome {
    let a = c.get(&format!("Patient/{}", uuid::Uuid::new_v4())).await?;
    ensure!(a.status == 404, "status {}", a.status);
    ensure!(is_outcome(&a.body), "no OperationOutcome: {}", a.text);
    Ok(())
}

async fn server_meta(c: Fhir) -> Outcome {
    let mut p = test_patient("meta");
    p["meta"] = json!({ "versionId": "42", "lastUpdated": "2001-01-01T00:00:00Z", "tag": [{ "system": "urn:t", "code": "kept" }] });
    let a = c.post("Patient", &p, &[]).await?;
    ensure!(a.status == 201, "status {}", a.status);
    ensure!(
        a.body["meta"]["versionId"] == "1",
        "versionId {}",
        a.body["meta"]["versionId"]
    );
    ensure!(
        a.body["meta"]["lastUpdated"] != "2001-01-01T00:00:00Z",
        "lastUpdated taken from the client"
    );
    ensure!(
        a.body["meta"]["tag"][0]["code"] == "kept",
        "client tag lost"
    );
    Ok(())
}

async fn prefer_minimal(c: Fhir) -> Outcome {
    let a = c
        .post(
            "Patient",
            &test_patient("minimal"),
            &[("prefer", "return=minimal")],
        )
        .await?;
    ensure!(a.status == 201, "status {}", a.status);
    ensure!(a.text.is_empty(), "body sent: {}", a.text);
    ensure!(!a.header("location").is_empty(), "no Location");
    Ok(())
}

//! Transactions, batches, PATCH and conditional reads: what an integration engine relies on.

use super::{Case, Outcome, test_patient};
use crate::client::Fhir;
use crate::{case, ensure};
use serde_json::{Value, json};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "a transaction resolves urn:uuid references and answers each entry",
            resolves_references
        ),
        case!("a failing transaction writes nothing", all_or_nothing),
        case!("batch entries succeed and fail on their own", batch),
        case!(
            "20 concurrent transactions conditionally create one patient",
            concurrent
        ),
        case!(
            "JSON Patch with If-Match; a stale version is 412",
            json_patch
        ),
        case!("FHIRPath Patch (Parameters)", fhirpath_patch),
        case!("If-None-Match on a read answers 304", conditional_read),
    ]
}

fn identifier(p: &Value) -> String {
    format!(
        "identifier=urn:conformance:test%7C{}",
        p["identifier"][0]["value"].as_str().unwrap_or_default()
    )
}

fn observation(subject: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": "conformance"},
        "subject": {"reference": subject}})
}

fn statuses(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["response"]["status"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn resolves_references(c: Fhir) -> Outcome {
    let p = test_patient("tx");
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b", "resource": p,
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": observation("urn:uuid:3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b"),
         "request": {"method": "POST", "url": "Observation"}}]});
    let a = c.post("", &tx, &[]).await?;
    ensure!(a.status == 200, "status {} {}", a.status, a.text);
    ensure!(
        a.body["type"] == "transaction-response",
        "type {}",
        a.body["type"]
    );
    let s = statuses(&a.body);
    ensure!(
        s.iter().all(|x| x.starts_with("201")),
        "entry statuses {s:?}"
    );
    let obs_location = a.body["entry"][1]["response"]["location"]
        .as_str()
        .unwrap_or_default();
    let patient_location = a.body["entry"][0]["response"]["location"]
        .as_str()
        .unwrap_or_default();
    let obs_path = obs_location.split("/_history").next().unwrap_or_default();
    let obs_path = obs_path
        .rsplit_once("/Observation/")
        .map(|(_, id)| id)
        .unwrap_or(obs_path);
    let o = c.get(&format!("Observation/{obs_path}")).await?;
    let subject = o.body["subject"]["reference"].as_str().unwrap_or_default();
    ensure!(
        subject.starts_with("Patient/") && patient_location.contains(subject),
        "subject {subject}, patient at {patient_location}"
    );
    Ok(())
}

async fn all_or_nothing(c: Fhir) -> Outcome {
    let p = test_patient("txfail");
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": p, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "not a date"},
         "request": {"method": "POST", "url": "Patient"}}]});
    let a = c.post("", &tx, &[]).await?;
    ensure!(
        (400..500).contains(&a.status),
        "status {} {}",
        a.status,
        a.text
    );
    let s = c.get(&format!("Patient?{}", identifier(&p))).await?;
    ensure!(
        s.body["total"] == 0,
        "the first entry was kept: total {}",
        s.body["total"]
    );
    Ok(())
}

async fn batch(c: Fhir) -> Outcome {
    let p = test_patient("batch");
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": p, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "not a date"},
         "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": format!("Patient?{}", identifier(&p))}}]});
    let a = c.post("", &b, &[]).await?;
    ensure!(a.status == 200, "status {} {}", a.status, a.text);
    let s = statuses(&a.body);
    ensure!(
        s.len() == 3
            && s[0].starts_with("201")
            && s[1].starts_with("400")
            && s[2].starts_with("200"),
        "entry statuses {s:?}"
    );
    ensure!(
        a.body["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome",
        "the failed entry has no OperationOutcome"
    );
    ensure!(
        a.body["entry"][2]["resource"]["total"] == 1,
        "the batch's create is not found by its later search"
    );
    Ok(())
}

async fn concurrent(c: Fhir) -> Outcome {
    let p = test_patient("txrace");
    let cond = identifier(&p).replace("%7C", "|");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, p, cond) = (c.clone(), p.clone(), cond.clone());
            tokio::spawn(async move {
                let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"fullUrl": "urn:uuid:7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918", "resource": p,
                     "request": {"method": "POST", "url": "Patient", "ifNoneExist": cond}},
                    {"resource": observation("urn:uuid:7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918"),
                     "request": {"method": "POST", "url": "Observation"}}]});
                c.post("", &tx, &[]).await
            })
        })
        .collect();
    let mut subjects = std::collections::BTreeSet::new();
    for t in tasks {
        let a = t.await.map_err(|e| e.to_string())??;
        ensure!(a.status == 200, "status {} {}", a.status, a.text);
        subjects.insert(
            a.body["entry"][1]["resource"]["subject"]["reference"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ensure!(
        subjects.len() == 1,
        "the observations reference {} patients",
        subjects.len()
    );
    let s = c.get(&format!("Patient?{}", identifier(&p))).await?;
    ensure!(s.body["total"] == 1, "{} patients", s.body["total"]);
    Ok(())
}

async fn json_patch(c: Fhir) -> Outcome {
    let a = c.post("Patient", &test_patient("jpatch"), &[]).await?;
    let id = a.body["id"].as_str().unwrap_or_default().to_owned();
    let patch = json!([{"op": "replace", "path": "/birthDate", "value": "1981-06-18"}]);
    let headers = [
        ("content-type", "application/json-patch+json"),
        ("if-match", "W/\"1\""),
    ];
    let b = c
        .raw(
            "PATCH",
            &format!("Patient/{id}"),
            patch.to_string().into_bytes(),
            &headers,
        )
        .await?;
    ensure!(b.status == 200, "status {} {}", b.status, b.text);
    ensure!(
        b.body["birthDate"] == "1981-06-18" && b.body["meta"]["versionId"] == "2",
        "not patched: {}",
        b.text
    );
    let stale = c
        .raw(
            "PATCH",
            &format!("Patient/{id}"),
            patch.to_string().into_bytes(),
            &headers,
        )
        .await?;
    ensure!(
        stale.status == 412,
        "stale If-Match: status {}",
        stale.status
    );
    Ok(())
}

async fn fhirpath_patch(c: Fhir) -> Outcome {
    let a = c.post("Patient", &test_patient("fppatch"), &[]).await?;
    let id = a.body["id"].as_str().unwrap_or_default().to_owned();
    let params = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
        {"name": "name", "valueString": "gender"}, {"name": "value", "valueCode": "female"}]}]});
    let b = c
        .raw(
            "PATCH",
            &format!("Patient/{id}"),
            params.to_string().into_bytes(),
            &[],
        )
        .await?;
    ensure!(b.status == 200, "status {} {}", b.status, b.text);
    ensure!(b.body["gender"] == "female", "not patched: {}", b.text);
    Ok(())
}

async fn conditional_read(c: Fhir) -> Outcome {
    let a = c.post("Patient", &test_patient("cread"), &[]).await?;
    let id = a.body["id"].as_str().unwrap_or_default().to_owned();
    let r = c
        .raw(
            "GET",
            &format!("Patient/{id}"),
            Vec::new(),
            &[("if-none-match", "W/\"1\"")],
        )
        .await?;
    ensure!(r.status == 304, "status {}", r.status);
    Ok(())
}

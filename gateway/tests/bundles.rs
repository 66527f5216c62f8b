//! Transactions, batches, PATCH and conditional reads against the real binary, on SQLite and on
//! PostgreSQL: all-or-nothing transactions with `urn:uuid:` and conditional references resolved,
//! 50 concurrent transactions that conditionally create one patient, batches whose entries stand
//! alone, and every entry through the policy chokepoint.

mod common;

use common::*;
use serde_json::{Value, json};

const BSN: &str = "http://fhir.nl/fhir/NamingSystem/bsn";

fn stores() -> Vec<(&'static str, String)> {
    vec![
        ("sqlite", String::new()),
        ("postgres", postgres_toml(&fresh_schema(), "")),
    ]
}

async fn post_bundle(c: &reqwest::Client, base: &str, b: &Value) -> (u16, Value) {
    let r = c
        .post(base.to_owned())
        .header("content-type", FHIR_JSON)
        .body(b.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn patient(bsn: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": BSN, "value": bsn}],
        "name": [{"family": family}]})
}

fn observation(subject: &str, encounter: Option<&str>) -> Value {
    let mut o = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": subject}});
    if let Some(e) = encounter {
        o["encounter"] = json!({"reference": e});
        o["extension"] = json!([{"url": "https://healthhub-utrecht.nl/ext/seen-in", "valueReference": {"reference": e}}]);
        o["contained"] = json!([{"resourceType": "Provenance", "id": "p1", "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": {"display": "lab"}}], "target": [{"reference": e}]}]);
        o["text"] = json!({"status": "generated",
            "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"{e}\">encounter</a></div>")});
    }
    o
}

fn statuses(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn count(c: &reqwest::Client, base: &str, query: &str) -> u64 {
    let b: Value = c
        .get(format!("{base}/{query}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    b["total"].as_u64().unwrap()
}

async fn read(c: &reqwest::Client, base: &str, location: &str) -> Value {
    let path = location.split("/_history/").next().unwrap();
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{base}/{path}")
    };
    c.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn transactions_are_atomic_and_resolve_references() {
    for (store, config) in stores() {
        let gw = Gateway::start_with(&config);
        let c = client();
        let base = &gw.base;
        let doomed = c
            .post(format!("{base}/Basic"))
            .header("content-type", FHIR_JSON)
            .body(json!({"resourceType": "Basic", "code": {"text": "old"}}).to_string())
            .send()
            .await
            .unwrap();
        let doomed: Value = doomed.json().await.unwrap();
        let doomed_id = doomed["id"].as_str().unwrap();
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "GET", "url": "Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911120"}},
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": observation("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", Some("urn:uuid:e5f2c4f6-1111-4e0b-9d3e-2a6a3c0f0e01")),
             "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", "resource": patient("999911120", "Jansen"),
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911120"}},
            {"fullUrl": "urn:uuid:e5f2c4f6-1111-4e0b-9d3e-2a6a3c0f0e01",
             "resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                          "subject": {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"}},
             "request": {"method": "POST", "url": "Encounter"}},
            {"fullUrl": format!("{base}/Organization/umcu-lab"),
             "resource": {"resourceType": "Organization", "id": "umcu-lab", "name": "UMCU lab"},
             "request": {"method": "PUT", "url": "Organization/umcu-lab"}},
            {"request": {"method": "DELETE", "url": format!("Basic/{doomed_id}")}}
        ]});
        let (status, resp) = post_bundle(&c, base, &tx).await;
        assert_eq!(status, 200, "{store}: {resp}");
        assert_eq!(resp["type"], "transaction-response");
        assert_eq!(
            statuses(&resp),
            vec![
                "200 OK",
                "201 Created",
                "201 Created",
                "201 Created",
                "201 Created",
                "200 OK"
            ],
            "{store}: {resp}"
        );
        // The GET ran after the writes, so it finds the patient the transaction created.
        assert_eq!(resp["entry"][0]["resource"]["total"], 1, "{store}");
        let e = &resp["entry"];
        for i in 1..=4 {
            assert!(
                e[i]["response"]["location"]
                    .as_str()
                    .unwrap()
                    .contains("/_history/1")
            );
            assert_eq!(e[i]["response"]["etag"], "W/\"1\"");
        }
        let patient_id = e[2]["resource"]["id"].as_str().unwrap().to_owned();
        let encounter_id = e[3]["resource"]["id"].as_str().unwrap().to_owned();
        let obs = read(&c, base, e[1]["response"]["location"].as_str().unwrap()).await;
        let p_ref = format!("Patient/{patient_id}");
        let e_ref = format!("Encounter/{encounter_id}");
        assert_eq!(obs["subject"]["reference"], p_ref, "{store}");
        assert_eq!(obs["encounter"]["reference"], e_ref);
        assert_eq!(obs["extension"][0]["valueReference"]["reference"], e_ref);
        assert_eq!(obs["contained"][0]["target"][0]["reference"], e_ref);
        assert!(
            obs["text"]["div"]
                .as_str()
                .unwrap()
                .contains(&format!("href=\"{e_ref}\""))
        );
        let enc = read(&c, base, e[3]["response"]["location"].as_str().unwrap()).await;
        assert_eq!(enc["subject"]["reference"], p_ref);
        // The index sees the rewritten reference.
        assert_eq!(
            count(&c, base, &format!("Observation?subject={p_ref}")).await,
            1
        );
        let gone = c
            .get(format!("{base}/Basic/{doomed_id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), 410);

        // The same transaction again: the conditional create finds the patient (200), no duplicate.
        let again = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": observation("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", None),
             "request": {"method": "POST", "url": "Observation"}},
            tx["entry"][2]]});
        let (status, resp) = post_bundle(&c, base, &again).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(statuses(&resp), vec!["201 Created", "200 OK"]);
        assert_eq!(resp["entry"][1]["resource"]["id"], patient_id.as_str());
        assert_eq!(count(&c, base, "Patient?identifier=999911120").await, 1);

        // A conditional reference resolves to the one match.
        let by_ref = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": observation("Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911120", None),
             "request": {"method": "POST", "url": "Observation"}}]});
        let (status, resp) = post_bundle(&c, base, &by_ref).await;
        assert_eq!(status, 200, "{resp}");
        let o = read(
            &c,
            base,
            resp["entry"][0]["response"]["location"].as_str().unwrap(),
        )
        .await;
        assert_eq!(o["subject"]["reference"], p_ref);

        // All or nothing: a valid create followed by an invalid resource writes nothing.
        let before = count(&c, base, "Patient").await;
        let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient("999911132", "Bakker"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "gender": 42}, "request": {"method": "POST", "url": "Patient"}}]});
        let (status, resp) = post_bundle(&c, base, &bad).await;
        assert_eq!(status, 400, "{resp}");
        assert!(resp.to_string().contains("Bundle.entry[1]"), "{resp}");
        // A version conflict in the last entry undoes the first.
        let conflict = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient("999911132", "Bakker"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Organization", "id": "umcu-lab", "name": "renamed"},
             "request": {"method": "PUT", "url": "Organization/umcu-lab", "ifMatch": "W/\"9\""}}]});
        let (status, resp) = post_bundle(&c, base, &conflict).await;
        assert_eq!(status, 412, "{resp}");
        // Conditional references that match none or several fail the transaction.
        let ambiguous = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": observation("Patient?name=Jansen,Smit", None), "request": {"method": "POST", "url": "Observation"}}]});
        c.post(format!("{base}/Patient"))
            .header("content-type", FHIR_JSON)
            .body(patient("999911144", "Smit").to_string())
            .send()
            .await
            .unwrap();
        let (status, _) = post_bundle(&c, base, &ambiguous).await;
        assert_eq!(status, 412);
        let nobody = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": observation("Patient?identifier=nobody", None), "request": {"method": "POST", "url": "Observation"}}]});
        assert_eq!(post_bundle(&c, base, &nobody).await.0, 404);
        let dangling = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": observation("urn:uuid:6d5b1c1e-0000-4000-8000-000000000000", None), "request": {"method": "POST", "url": "Observation"}}]});
        assert_eq!(post_bundle(&c, base, &dangling).await.0, 400);
        let twice = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Organization", "id": "o", "name": "a"}, "request": {"method": "PUT", "url": "Organization/o"}},
            {"resource": {"resourceType": "Organization", "id": "o", "name": "b"}, "request": {"method": "PUT", "url": "Organization/o"}}]});
        assert_eq!(post_bundle(&c, base, &twice).await.0, 400);
        assert_eq!(
            count(&c, base, "Patient").await,
            before + 1,
            "{store}: only Smit was added"
        );
        assert_eq!(count(&c, base, "Organization?name=renamed").await, 0);
    }
}

#[tokio::test]
async fn fifty_concurrent_transactions_create_one_patient() {
    for (store, config) in stores() {
        let gw = Gateway::start_with(&config);
        let c = client();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (c, base) = (c.clone(), gw.base.clone());
                tokio::spawn(async move {
                    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                        {"fullUrl": "urn:uuid:9a3c7d2e-5f4b-4c1a-8e6d-0b2f3a4c5d6e", "resource": patient("999911156", "Visser"),
                         "request": {"method": "POST", "url": "Patient",
                                     "ifNoneExist": "identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911156"}},
                        {"resource": observation("urn:uuid:9a3c7d2e-5f4b-4c1a-8e6d-0b2f3a4c5d6e", None),
                         "request": {"method": "POST", "url": "Observation"}}]});
                    post_bundle(&c, &base, &tx).await
                })
            })
            .collect();
        let mut subjects = std::collections::BTreeSet::new();
        let mut created = 0;
        for t in tasks {
            let (status, resp) = t.await.unwrap();
            assert_eq!(status, 200, "{store}: {resp}");
            if resp["entry"][0]["response"]["status"] == "201 Created" {
                created += 1;
            }
            subjects.insert(
                resp["entry"][1]["resource"]["subject"]["reference"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(
            created, 1,
            "{store}: exactly one transaction created the patient"
        );
        assert_eq!(
            subjects.len(),
            1,
            "{store}: every observation references that one patient"
        );
        assert_eq!(count(&c, &gw.base, "Patient?identifier=999911156").await, 1);
        assert_eq!(count(&c, &gw.base, "Observation").await, 50);
    }
}

#[tokio::test]
async fn batch_entries_stand_alone() {
    let gw = Gateway::start();
    let c = client();
    let base = &gw.base;
    let (_, created) = post_bundle(&c, base, &json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("999911168", "de Vries"), "request": {"method": "POST", "url": "Patient"}}]})).await;
    let id = created["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("999911181", "Mulder"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": 42}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        {"request": {"method": "GET", "url": format!("Patient/{id}")}},
        {"request": {"method": "GET", "url": format!("Patient/{id}"), "ifNoneMatch": "W/\"1\""}},
        {"request": {"method": "GET", "url": "Patient?family=Mulder"}},
        {"request": {"method": "PUT", "url": "Patient/x"}},
        {"request": {"method": "TRACE", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Nonsense/1"}},
        {"request": {"method": "DELETE", "url": format!("Patient/{id}")}}
    ]});
    let (status, resp) = post_bundle(&c, base, &b).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["type"], "batch-response");
    // The method an entry names is read even to refuse it; a bad entry is only that entry's.
    assert_eq!(
        statuses(&resp),
        vec![
            "201 Created",
            "400 Bad Request",
            "404 Not Found",
            "200 OK",
            "304 Not Modified",
            "200 OK",
            "400 Bad Request",
            "400 Bad Request",
            "404 Not Found",
            "200 OK"
        ],
        "{resp}"
    );
    assert_eq!(
        resp["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(resp["entry"][3]["resource"]["id"], id.as_str());
    assert_eq!(
        resp["entry"][5]["resource"]["total"], 1,
        "the batch's own create is visible to its later GET"
    );
    assert_eq!(count(&c, base, "Patient?family=Mulder").await, 1);

    // Limits: more entries than limits.max_bundle_entries is 413; not a batch or transaction is 400.
    let gw = Gateway::start_with("[limits]\nmax_bundle_entries = 3\n");
    let entry = json!({"request": {"method": "GET", "url": "Patient"}});
    let big =
        json!({"resourceType": "Bundle", "type": "batch", "entry": [entry, entry, entry, entry]});
    assert_eq!(post_bundle(&c, &gw.base, &big).await.0, 413);
    let ok = json!({"resourceType": "Bundle", "type": "batch", "entry": [entry, entry, entry]});
    assert_eq!(post_bundle(&c, &gw.base, &ok).await.0, 200);
    let doc = json!({"resourceType": "Bundle", "type": "document", "entry": []});
    assert_eq!(post_bundle(&c, &gw.base, &doc).await.0, 400);
    let nested = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Bundle", "type": "batch"}, "request": {"method": "POST", "url": ""}}]});
    let (_, resp) = post_bundle(&c, &gw.base, &nested).await;
    assert_eq!(statuses(&resp), vec!["400 Bad Request"]);
}

#[tokio::test]
async fn every_entry_passes_the_chokepoint() {
    let gw = Gateway::start();
    let base = &gw.base;
    let admin = client();
    let (_, made) = post_bundle(&admin, base, &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001", "resource": patient("999911193", "Own"), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002", "resource": patient("999911211", "Other"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": observation("urn:uuid:aaaaaaaa-0000-4000-8000-000000000001", None), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation("urn:uuid:aaaaaaaa-0000-4000-8000-000000000002", None), "request": {"method": "POST", "url": "Observation"}}
    ]})).await;
    let id = |i: usize| {
        made["entry"][i]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (own, other, own_obs, other_obs) = (id(0), id(1), id(2), id(3));

    // Patients only: Observation entries are refused one by one in a batch...
    let patients_only = client_with(&token("user/Patient.rs", "umcu", None));
    let (_, resp) = post_bundle(
        &patients_only,
        base,
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{own}")}},
        {"request": {"method": "GET", "url": format!("Observation/{own_obs}")}},
        {"request": {"method": "GET", "url": "Observation?code=718-7"}}]}),
    )
    .await;
    assert_eq!(
        statuses(&resp),
        vec!["200 OK", "403 Forbidden", "403 Forbidden"]
    );
    // ...and refuse a whole transaction, which then writes nothing.
    let before = count(&admin, base, "Patient").await;
    let (status, _) = post_bundle(&patients_only, base, &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{own}")}},
        {"resource": observation(&format!("Patient/{own}"), None), "request": {"method": "POST", "url": "Observation"}}]})).await;
    assert_eq!(status, 403);
    let (status, _) = post_bundle(&client_with(&token("user/Patient.crus", "umcu", None)), base, &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("999911223", "New"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": observation(&format!("Patient/{own}"), None), "request": {"method": "POST", "url": "Observation"}}]})).await;
    assert_eq!(status, 403);
    assert_eq!(count(&admin, base, "Patient").await, before);

    // A patient-context token sees its own compartment only, entry by entry, search by search.
    let me = client_with(&token("patient/*.rs", "umcu", Some(&own)));
    let (_, resp) = post_bundle(
        &me,
        base,
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Observation/{own_obs}")}},
        {"request": {"method": "GET", "url": format!("Observation/{other_obs}")}},
        {"request": {"method": "GET", "url": format!("Patient/{other}")}},
        {"request": {"method": "GET", "url": "Observation"}}]}),
    )
    .await;
    assert_eq!(
        statuses(&resp),
        vec!["200 OK", "404 Not Found", "404 Not Found", "200 OK"],
        "{resp}"
    );
    let listed: Vec<&str> = resp["entry"][3]["resource"]["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![own_obs.as_str()]);
    // Nothing of the other patient's data is in the response.
    assert!(!resp["entry"][3].to_string().contains(&other));
    assert!(!resp.to_string().contains("999911211"));

    // Without a token, a bundle is 401 like any request.
    let (status, _) = post_bundle(
        &anon(),
        base,
        &json!({"resourceType": "Bundle", "type": "batch", "entry": []}),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn patch_and_conditional_read() {
    for (store, config) in stores() {
        let gw = Gateway::start_with(&config);
        let c = client();
        let base = &gw.base;
        let r = c.post(format!("{base}/Patient")).header("content-type", FHIR_JSON)
            .body(json!({"resourceType": "Patient", "identifier": [{"system": BSN, "value": "999911235"}],
                "birthDate": "1970-01-01", "name": [{"family": "Dekker"}]}).to_string())
            .send().await.unwrap();
        let p: Value = r.json().await.unwrap();
        let id = p["id"].as_str().unwrap().to_owned();
        let url = format!("{base}/Patient/{id}");

        // Conditional read.
        let r = c
            .get(&url)
            .header("if-none-match", "W/\"1\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{store}");
        assert_eq!(r.headers()["etag"], "W/\"1\"");
        let r = c
            .get(&url)
            .header("if-modified-since", "Tue, 01 Jan 2999 00:00:00 GMT")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        let r = c
            .get(&url)
            .header("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        // JSON Patch with If-Match.
        let jp = json!([{"op": "replace", "path": "/birthDate", "value": "1971-02-03"},
                        {"op": "add", "path": "/name/0/given", "value": ["Anna"]}]);
        let r = c
            .patch(&url)
            .header("content-type", "application/json-patch+json")
            .header("if-match", "W/\"1\"")
            .body(jp.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{store}");
        assert_eq!(r.headers()["etag"], "W/\"2\"");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["birthDate"], "1971-02-03");
        assert_eq!(v["name"][0]["given"][0], "Anna");
        // A stale If-Match is 412; nothing changes.
        let r = c
            .patch(&url)
            .header("content-type", "application/json-patch+json")
            .header("if-match", "W/\"1\"")
            .body(
                json!([{"op": "replace", "path": "/birthDate", "value": "1999-01-01"}]).to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 412);
        // FHIRPath Patch, conditional on the BSN.
        let fp = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "telecom"},
            {"name": "value", "valueContactPoint": {"system": "phone", "value": "030-1234567"}}]},
            {"name": "operation", "part": [{"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.name.where(family = 'Dekker').family"}, {"name": "value", "valueString": "Dekker-Smit"}]}]});
        let r = c
            .patch(format!("{base}/Patient?identifier={BSN}|999911235"))
            .header("content-type", FHIR_JSON)
            .body(fp.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{store}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["telecom"],
            json!([{"system": "phone", "value": "030-1234567"}])
        );
        assert_eq!(v["name"][0]["family"], "Dekker-Smit");
        assert_eq!(v["meta"]["versionId"], "3");
        // The result is validated like any write; the id cannot change; the media type is checked.
        let r = c
            .patch(&url)
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op": "add", "path": "/gender", "value": 42}]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = c
            .patch(&url)
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op": "replace", "path": "/id", "value": "other"}]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let r = c
            .patch(&url)
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op": "test", "path": "/birthDate", "value": "1800-01-01"}]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "a failed test op");
        let r = c
            .patch(&url)
            .header("content-type", "text/plain")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415);
        let r = c
            .patch(format!("{base}/Patient/nobody"))
            .header("content-type", "application/json-patch+json")
            .body("[]")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        // A reader may not patch.
        let reader = client_with(&token("user/Patient.rs", "umcu", None));
        let r = reader
            .patch(&url)
            .header("content-type", "application/json-patch+json")
            .body("[]")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        // PATCH inside a transaction (JSON Patch as a Binary).
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(
            json!([{"op": "replace", "path": "/birthDate", "value": "1972-12-12"}]).to_string(),
        );
        let (status, resp) = post_bundle(&c, base, &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data},
             "request": {"method": "PATCH", "url": format!("Patient/{id}")}}]})).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["entry"][0]["resource"]["birthDate"], "1972-12-12");
        assert_eq!(resp["entry"][0]["response"]["etag"], "W/\"4\"");
    }
}

/// Many patches of one resource at once: each is applied to the version it read, a conflict is
/// retried, and no change is lost.
#[tokio::test]
async fn concurrent_patches_lose_nothing() {
    let c = client();
    let gw2 = Gateway::start();
    let r = c.post(format!("{}/Patient", gw2.base)).header("content-type", FHIR_JSON)
        .body(json!({"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "start"}]}).to_string()).send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (c, url) = (c.clone(), format!("{}/Patient/{id}", gw2.base));
            tokio::spawn(async move {
                c.patch(url).header("content-type", "application/json-patch+json")
                    .body(json!([{"op": "add", "path": "/identifier/-", "value": {"system": "urn:x", "value": i.to_string()}}]).to_string())
                    .send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s == 200 || s == 412, "{s}");
        ok += usize::from(s == 200);
    }
    let p: Value = c
        .get(format!("{}/Patient/{id}", gw2.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        p["identifier"].as_array().unwrap().len(),
        1 + ok,
        "every acknowledged patch is in the result"
    );
    assert!(ok >= 1);
}

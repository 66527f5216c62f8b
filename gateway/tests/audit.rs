//! The NEN 7513 access log: one BALP AuditEvent per request, searchable only with an audit scope,
//! hash-chained (verified by `gateway audit verify`), and failing closed.

mod common;

use common::{FHIR_JSON, Gateway, anon, client, client_with, token};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

fn auditor() -> reqwest::Client {
    client_with(&token("system/AuditEvent.rs", "umcu", None))
}

async fn events(gw: &Gateway, query: &str) -> Vec<Value> {
    let s: Value = auditor()
        .get(format!("{}/AuditEvent?_count=1000&{query}", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    s["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["resource"].clone())
        .collect()
}

fn subtype(e: &Value) -> &str {
    e["subtype"][0]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn every_request_leaves_an_audit_event() {
    let gw = Gateway::start();
    let c = client();
    let b = &gw.base;
    let p: Value = c.post(format!("{b}/Patient")).header("content-type", FHIR_JSON)
        .body(json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}]}).to_string())
        .send().await.unwrap().json().await.unwrap();
    let pid = p["id"].as_str().unwrap();
    c.post(format!("{b}/Observation")).header("content-type", FHIR_JSON)
        .body(json!({"resourceType": "Observation", "status": "final", "code": {"text": "Hb"}, "subject": {"reference": format!("Patient/{pid}")}}).to_string())
        .send().await.unwrap();
    c.get(format!("{b}/Patient/{pid}")).send().await.unwrap();
    c.get(format!("{b}/Observation?_count=5"))
        .send()
        .await
        .unwrap();
    c.get(format!("{b}/Patient/unknown-id"))
        .send()
        .await
        .unwrap();
    client_with(&token("user/Patient.rs", "gp", None))
        .get(format!("{b}/Observation"))
        .send()
        .await
        .unwrap();
    anon().get(format!("{b}/Patient")).send().await.unwrap();

    let all = events(&gw, "").await;
    let find = |sub: &str, outcome: &str| {
        all.iter()
            .filter(|e| subtype(e) == sub && e["outcome"] == outcome)
            .count()
    };
    assert_eq!(find("create", "0"), 2, "{all:#?}");
    assert!(find("read", "0") >= 1);
    assert_eq!(find("read", "4"), 1, "a 404 is a minor failure");
    assert_eq!(find("search-type", "4"), 2, "403 and 401 are logged too");
    assert!(find("search-type", "0") >= 1);

    let read = all
        .iter()
        .find(|e| subtype(e) == "read" && e["outcome"] == "0")
        .unwrap();
    assert_eq!(read["type"]["code"], "rest");
    assert_eq!(read["action"], "R");
    assert_eq!(read["agent"][0]["requestor"], true);
    assert_eq!(
        read["agent"][0]["who"]["identifier"]["system"],
        "https://demo.healthhub-utrecht.nl/issuer/umcu"
    );
    assert_eq!(read["agent"][0]["network"]["address"], "127.0.0.1");
    assert_eq!(
        read["agent"][1]["who"]["identifier"]["value"], "90000001",
        "the organisation acted for"
    );
    let entity_refs: Vec<&str> = read["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["what"]["reference"].as_str())
        .collect();
    assert!(
        entity_refs.contains(&format!("Patient/{pid}").as_str()),
        "{entity_refs:?}"
    );
    assert!(
        entity_refs
            .iter()
            .any(|r| r.starts_with(&format!("Patient/{pid}/_history/")))
    );

    let search = all
        .iter()
        .find(|e| {
            subtype(e) == "search-type"
                && e["outcome"] == "0"
                && e["entity"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["role"]["code"] == "24"))
        })
        .unwrap();
    assert_eq!(search["action"], "E");
    let q = search["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["role"]["code"] == "24")
        .unwrap();
    assert!(q["query"].as_str().is_some(), "the query, base64");
    let anonymous = all
        .iter()
        .find(|e| e["agent"][0]["who"]["display"] == "anonymous")
        .unwrap();
    assert_eq!(anonymous["outcome"], "4");

    // Searchable by patient, outcome and date.
    let about = events(&gw, &format!("patient={pid}")).await;
    assert!(
        about.len() >= 2,
        "create and read of the patient, read of its observation"
    );
    assert!(about.iter().all(|e| {
        e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["what"]["reference"] == format!("Patient/{pid}"))
    }));
    let failures = events(&gw, "outcome=4").await;
    assert!(failures.len() >= 3 && failures.iter().all(|e| e["outcome"] == "4"));
    let none = events(&gw, "date=lt2000-01-01").await;
    assert!(none.is_empty());
}

#[tokio::test]
async fn the_audit_log_needs_an_audit_scope_and_is_read_only() {
    let gw = Gateway::start();
    let b = &gw.base;
    let clinician = client_with(&token("user/*.cruds", "gp", None).replace(' ', ""));
    // user/*.cruds includes AuditEvent: a type wildcard is an audit scope too. A narrower token is not.
    let narrow = client_with(&token("user/Patient.rs user/Observation.rs", "gp", None));
    assert_eq!(
        narrow
            .get(format!("{b}/AuditEvent"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        clinician
            .get(format!("{b}/AuditEvent"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let r = client().post(format!("{b}/AuditEvent")).header("content-type", FHIR_JSON)
        .body(json!({"resourceType": "AuditEvent", "type": {"code": "x"}, "recorded": "2020-01-01T00:00:00Z", "agent": [{"requestor": true}], "source": {"observer": {"display": "x"}}}).to_string())
        .send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_patient_sees_who_accessed_their_own_record() {
    let gw = Gateway::start();
    let c = client();
    let b = &gw.base;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let p: Value = c
            .post(format!("{b}/Patient"))
            .header("content-type", FHIR_JSON)
            .body(r#"{"resourceType":"Patient"}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        client_with(&token("user/Patient.rs", "gp", None))
            .get(format!("{b}/Patient/{id}"))
            .send()
            .await
            .unwrap();
    }
    let me = client_with(&token("patient/AuditEvent.rs", "gp", Some(&ids[0])));
    let s: Value = me
        .get(format!("{b}/AuditEvent"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seen: Vec<&Value> = s["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    assert!(seen.len() >= 2, "the create and the GP's read: {s}");
    for e in &seen {
        let refs: Vec<&str> = e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["what"]["reference"].as_str())
            .collect();
        assert!(
            refs.contains(&format!("Patient/{}", ids[0]).as_str()),
            "only accesses to the patient's own record: {refs:?}"
        );
    }
    assert!(
        seen.iter()
            .any(|e| e["agent"][1]["who"]["identifier"]["value"] == "90000003"),
        "the GP practice is named"
    );
}

fn verify(dir: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["audit", "verify", "--data"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn audit_verify_detects_edited_and_removed_records() {
    let gw = Gateway::start();
    let c = client();
    for _ in 0..5 {
        c.get(format!("{}/Patient", gw.base)).send().await.unwrap();
    }
    let dir = gw.stop_keep_data();
    let data = dir.path().join("data");
    let (ok, out) = verify(&data);
    assert!(ok, "{out}");
    assert!(out.contains("5 records, chain intact"), "{out}");

    let url = format!("sqlite://{}", data.join("audit.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    // The database refuses edits outright...
    assert!(
        sqlx::query("UPDATE audit_log SET outcome = '0' WHERE seq = 2")
            .execute(&mut db)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM audit_log WHERE seq = 3")
            .execute(&mut db)
            .await
            .is_err()
    );
    // ...so an attacker with the file drops the guard first; the chain still gives them away.
    sqlx::query("DROP TRIGGER audit_log_no_update")
        .execute(&mut db)
        .await
        .unwrap();
    // A record is stored as the access's facts (a tag byte, then JSON): the attacker rewrites
    // the outcome in place.
    let original: Vec<u8> = sqlx::query_scalar("SELECT body FROM audit_log WHERE seq = 2")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(original.first(), Some(&2), "stored as facts");
    let text = String::from_utf8(original[1..].to_vec()).unwrap();
    assert!(text.contains(r#""status":200"#), "{text}");
    let mut forged = vec![2];
    forged.extend(
        text.replace(r#""status":200"#, r#""status":403"#)
            .into_bytes(),
    );
    sqlx::query("UPDATE audit_log SET body = ? WHERE seq = 2")
        .bind(forged)
        .execute(&mut db)
        .await
        .unwrap();
    drop(db);
    let (ok, out) = verify(&data);
    assert!(
        !ok && out.contains("BROKEN") && out.contains("[2]"),
        "{out}"
    );

    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("DROP TRIGGER audit_log_no_delete")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET body = ? WHERE seq = 2")
        .bind(original)
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 4")
        .execute(&mut db)
        .await
        .unwrap();
    drop(db);
    let (ok, out) = verify(&data);
    assert!(
        !ok && out.contains("[5]") && !out.contains("[2"),
        "record 2 restored verifies again; removing record 4 breaks the link of record 5: {out}"
    );
}

#[tokio::test]
async fn a_failing_audit_write_fails_the_request() {
    let gw = Gateway::start();
    let c = client();
    let p: Value = c
        .post(format!("{}/Patient", gw.base))
        .header("content-type", FHIR_JSON)
        .body(r#"{"resourceType":"Patient","gender":"female"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("sqlite://{}", gw.dir.path().join("data/audit.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    // The log's index refuses its records from now on (a full disk, say). A request whose record
    // reached the journal first may still be answered; the next ones are not.
    sqlx::query("CREATE TRIGGER audit_broken BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        .execute(&mut db)
        .await
        .unwrap();
    let read = || async {
        c.get(format!("{}/Patient/{}", gw.base, p["id"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
    };
    let mut r = read().await;
    for _ in 0..100 {
        if r.status() != StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        r = read().await;
    }
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "no answer without its audit record"
    );
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("female"),
        "the resource was not disclosed: {body}"
    );
    assert!(!body.contains("disk full"), "no store detail: {body}");
    sqlx::query("DROP TRIGGER audit_broken")
        .execute(&mut db)
        .await
        .unwrap();
    // Once the index takes records again, requests are answered again.
    let mut r = read().await;
    for _ in 0..100 {
        if r.status() == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        r = read().await;
    }
    assert_eq!(r.status(), StatusCode::OK);
}

/// Every answered request's record survives a crash (SIGKILL, no shutdown at all): it was in the
/// journal before the answer, and the next start indexes it.
#[tokio::test]
async fn answered_requests_keep_their_records_through_a_crash() {
    let gw = Gateway::start();
    let c = client();
    for _ in 0..20 {
        let r = c.get(format!("{}/Patient", gw.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let dir = gw.kill_keep_data();
    let (ok, out) = verify(&dir.path().join("data"));
    assert!(ok, "{out}");
    assert!(out.contains("20 records, chain intact"), "{out}");
}

//! Consent end to end, on the real binary: the region's rules (own data, opt-in, the
//! municipality bar), FHIR Consent provisions and their cache invalidation, break-the-glass and
//! its audit trail, the external decision point (permit, deny, time-out), the holder tag, BSNs in
//! the audit, patient-context writes, and requests cut off by the time-out being audited.

mod common;

use common::{FHIR_JSON, Gateway, client_with, get_json, token};
use http::StatusCode;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const BSN: &str = "999911120";
const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const ORG_TYPE: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/organization-type";
const HOLDER: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/holder";

fn as_org(org: &str) -> reqwest::Client {
    client_with(&token("system/*.cruds", org, None))
}

async fn post(c: &reqwest::Client, base: &str, body: Value) -> Value {
    let ty = body["resourceType"].as_str().unwrap().to_owned();
    let r = c
        .post(format!("{base}/{ty}"))
        .header("content-type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create {ty}: {}", r.status());
    r.json().await.unwrap()
}

async fn status(c: &reqwest::Client, url: &str) -> StatusCode {
    c.get(url).send().await.unwrap().status()
}

fn consent(patient: &str, provision: Value) -> Value {
    json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "policy": [{"uri": "https://healthhub-utrecht.nl/consent-policy"}],
        "provision": provision})
}

fn actor_type(kind: &str) -> Value {
    json!([{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
        "reference": {"identifier": {"system": ORG_TYPE, "value": kind}}}])
}

/// A patient (with BSN) and, held by the hospital, a lab result and a condition.
async fn hospital_record(gw: &Gateway) -> (String, String, String) {
    let umcu = as_org("umcu");
    let p = post(
        &umcu,
        &gw.base,
        json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": BSN}]}),
    )
    .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let lab = post(
        &umcu,
        &gw.base,
        json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": LAB, "code": "laboratory"}]}], "code": {"text": "Hb"},
        "subject": {"reference": format!("Patient/{pid}")}}),
    )
    .await;
    let cond = post(
        &umcu,
        &gw.base,
        json!({"resourceType": "Condition",
        "subject": {"reference": format!("Patient/{pid}")}}),
    )
    .await;
    (
        pid,
        lab["id"].as_str().unwrap().to_owned(),
        cond["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regional_rules_and_consent_provisions() {
    let gw = Gateway::start();
    let b = &gw.base;
    let (pid, lab, cond) = hospital_record(&gw).await;
    let (umcu, gp, utrecht) = (as_org("umcu"), as_org("gp"), as_org("utrecht"));
    let lab_url = format!("{b}/Observation/{lab}");
    let cond_url = format!("{b}/Condition/{cond}");

    // Own data; administrative data by scope; medical data of another holder needs a permit.
    assert_eq!(status(&umcu, &lab_url).await, StatusCode::OK);
    assert_eq!(
        status(&gp, &format!("{b}/Patient/{pid}")).await,
        StatusCode::OK
    );
    assert_eq!(status(&gp, &lab_url).await, StatusCode::NOT_FOUND);
    let search: Value = gp
        .get(format!("{b}/Observation"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(search["entry"].as_array().is_none_or(|e| e.is_empty()));
    assert!(
        search.get("total").is_none(),
        "a total would count withheld entries"
    );

    // Permit GPs, except lab results (a nested exception).
    let c = post(
        &umcu,
        b,
        consent(
            &pid,
            json!({"type": "deny", "provision": [{"type": "permit", "actor": actor_type("gp"),
                "provision": [{"type": "deny", "securityLabel": [{"system": "https://healthhub-utrecht.nl/fhir/CodeSystem/data-category", "code": "lab"}]}]}]}),
        ),
    )
    .await;
    assert_eq!(status(&gp, &cond_url).await, StatusCode::OK);
    assert_eq!(status(&gp, &lab_url).await, StatusCode::NOT_FOUND);
    // Other organisations: still nothing.
    assert_eq!(
        status(&as_org("vvt"), &cond_url).await,
        StatusCode::NOT_FOUND
    );

    // The patient withdraws: the cached decision is dropped at once.
    let mut withdrawn = c.clone();
    withdrawn["provision"] = json!({"type": "deny"});
    let r = umcu
        .put(format!("{b}/Consent/{}", c["id"].as_str().unwrap()))
        .header("content-type", FHIR_JSON)
        .body(withdrawn.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(status(&gp, &cond_url).await, StatusCode::NOT_FOUND);

    // A permit for everyone does not open medical data to the municipality; demographics yes.
    let mut open = c.clone();
    open["provision"] = json!({"type": "permit"});
    let r = umcu
        .put(format!("{b}/Consent/{}", c["id"].as_str().unwrap()))
        .header("content-type", FHIR_JSON)
        .body(open.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(status(&as_org("vvt"), &cond_url).await, StatusCode::OK);
    assert_eq!(status(&gp, &lab_url).await, StatusCode::OK);
    assert_eq!(status(&utrecht, &cond_url).await, StatusCode::NOT_FOUND);
    assert_eq!(
        status(&utrecht, &format!("{b}/Patient/{pid}")).await,
        StatusCode::OK
    );
    // A second consent objecting as broadly: equally specific, so the objection wins.
    post(&umcu, b, consent(&pid, json!({"type": "deny"}))).await;
    assert_eq!(
        status(&as_org("vvt"), &cond_url).await,
        StatusCode::NOT_FOUND
    );
    // Inactive consents do not count.
    let inactive = post(&umcu, b, {
        let mut x = consent(&pid, json!({"type": "deny", "actor": actor_type("vvt")}));
        x["status"] = json!("inactive");
        x
    })
    .await;
    assert_eq!(inactive["status"], "inactive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_tag_is_the_writers_whatever_the_client_sends() {
    let gw = Gateway::start();
    let b = &gw.base;
    let (pid, ..) = hospital_record(&gw).await;
    let gp = as_org("gp");
    let forged = post(&gp, b, json!({"resourceType": "Condition",
        "meta": {"tag": [{"system": HOLDER, "code": "http://fhir.nl/fhir/NamingSystem/ura|90000001"}]},
        "subject": {"reference": format!("Patient/{pid}")}}))
    .await;
    let tags: Vec<&Value> = forged["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["system"] == HOLDER)
        .collect();
    assert_eq!(tags.len(), 1);
    assert_eq!(
        tags[0]["code"],
        "http://fhir.nl/fhir/NamingSystem/ura|90000003"
    );
    // The hospital it pretended to be does not hold it, so cannot see it without consent.
    let url = format!("{b}/Condition/{}", forged["id"].as_str().unwrap());
    assert_eq!(status(&as_org("umcu"), &url).await, StatusCode::NOT_FOUND);
    assert_eq!(status(&gp, &url).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_the_glass_overrides_consent_and_is_audited() {
    let gw = Gateway::start();
    let b = &gw.base;
    let (pid, lab, _) = hospital_record(&gw).await;
    let lab_url = format!("{b}/Observation/{lab}");
    let gp = as_org("gp");
    let btg = |c: &reqwest::Client| {
        c.get(&lab_url)
            .header("x-purpose-of-use", "ETREAT")
            .header("x-break-glass-reason", "unconscious at the GP post")
    };
    assert_eq!(status(&gp, &lab_url).await, StatusCode::NOT_FOUND);
    assert_eq!(btg(&gp).send().await.unwrap().status(), StatusCode::OK);
    // Never without a reason, never over a scope, never for the municipality's medical bar.
    let r = gp
        .get(&lab_url)
        .header("x-purpose-of-use", "ETREAT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let no_scope = client_with(&token("user/Patient.rs", "gp", None));
    assert_eq!(
        btg(&no_scope).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        btg(&as_org("utrecht")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // The patient sees it in their access log, as its own event type, with the reason.
    let me = client_with(
        &gateway::policy::demo::mint(&gateway::policy::demo::TokenRequest {
            org: "umcu",
            scope: "patient/AuditEvent.rs",
            patient: Some(&pid),
            fhir_user: Some(&format!("Patient/{pid}")),
            purpose_of_use: None,
            subject: None,
            ttl_secs: 600,
        })
        .unwrap(),
    );
    let log: Value = me
        .get(format!("{b}/AuditEvent?_count=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events: Vec<&Value> = log["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|e| e["type"]["code"] == "110113")
        .collect();
    assert_eq!(
        events.len(),
        1,
        "exactly the one successful emergency read: {log}"
    );
    let e = events[0];
    assert_eq!(e["outcome"], "0");
    assert_eq!(e["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
    let subtype = e["subtype"].as_array().unwrap();
    let glass = subtype
        .iter()
        .find(|s| s["code"] == "break-the-glass")
        .unwrap();
    assert!(
        glass["display"]
            .as_str()
            .unwrap()
            .starts_with("unconscious at the GP post")
    );
    assert!(glass["display"].as_str().unwrap().contains("released 1"));
    let patient = e["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["role"]["code"] == "1")
        .unwrap();
    assert_eq!(patient["what"]["reference"], format!("Patient/{pid}"));
    assert_eq!(
        patient["what"]["identifier"]["value"], BSN,
        "NEN 7513: the patient by BSN"
    );
}

/// A decision point that permits GPs, denies everyone else, and never answers for St. Antonius.
async fn decision_point() -> (String, Arc<Mutex<Vec<Value>>>) {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/decide", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let q: Value = serde_json::from_slice(&body).unwrap();
                            log.lock().unwrap().push(q.clone());
                            if q["requester"]["value"] == "90000002" {
                                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                            }
                            let decision = if q["requester"]["type"] == "gp" {
                                "Permit"
                            } else {
                                "Deny"
                            };
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                bytes::Bytes::from(json!({"decision": decision}).to_string()),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_decision_point_decides_and_fails_closed() {
    let (url, seen) = decision_point().await;
    let gw = Gateway::start_with(&format!(
        "[consent.decision_point]\nurl = \"{url}\"\ntimeout_ms = 300\n"
    ));
    let b = &gw.base;
    let (_, _, cond) = hospital_record(&gw).await;
    let cond_url = format!("{b}/Condition/{cond}");
    assert_eq!(status(&as_org("gp"), &cond_url).await, StatusCode::OK);
    assert_eq!(
        status(&as_org("vvt"), &cond_url).await,
        StatusCode::NOT_FOUND
    );
    let started = std::time::Instant::now();
    assert_eq!(
        status(&as_org("antonius"), &cond_url).await,
        StatusCode::NOT_FOUND
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the time-out bounds the wait"
    );
    let questions = seen.lock().unwrap().clone();
    let q = questions
        .iter()
        .find(|q| q["requester"]["type"] == "gp")
        .unwrap();
    assert_eq!(q["patient"]["value"], BSN);
    assert_eq!(
        q["patient"]["system"],
        "http://fhir.nl/fhir/NamingSystem/bsn"
    );
    assert_eq!(q["holder"]["value"], "90000001");
    assert_eq!(q["holder"]["type"], "hospital");
    assert_eq!(q["purpose"], "TREAT");
    // Cached: asking again does not ask the decision point again.
    let before = seen.lock().unwrap().len();
    assert_eq!(status(&as_org("gp"), &cond_url).await, StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_decision_point_denies() {
    let port = common::free_port();
    let gw = Gateway::start_with(&format!(
        "[consent.decision_point]\nurl = \"http://127.0.0.1:{port}/decide\"\ntimeout_ms = 300\n"
    ));
    let (_, _, cond) = hospital_record(&gw).await;
    let url = format!("{}/Condition/{cond}", gw.base);
    assert_eq!(status(&as_org("gp"), &url).await, StatusCode::NOT_FOUND);
    assert_eq!(status(&as_org("umcu"), &url).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_context_writes_stay_in_the_patients_compartment() {
    let gw = Gateway::start();
    let b = &gw.base;
    let (pid, _, _) = hospital_record(&gw).await;
    let (other, _, other_cond) = hospital_record(&gw).await;
    let me = client_with(&token("patient/Condition.cruds", "umcu", Some(&pid)));
    let write = |method: reqwest::Method, url: String, subject: &str| {
        me.request(method, url)
            .header("content-type", FHIR_JSON)
            .body(json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{subject}")}}).to_string())
            .send()
    };
    assert_eq!(
        write(reqwest::Method::POST, format!("{b}/Condition"), &pid)
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        write(reqwest::Method::POST, format!("{b}/Condition"), &other)
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    // Taking over another patient's resource, or moving it: both refused.
    let r = me
        .put(format!("{b}/Condition/{other_cond}"))
        .header("content-type", FHIR_JSON)
        .body(json!({"resourceType": "Condition", "id": other_cond, "subject": {"reference": format!("Patient/{pid}")}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = me
        .delete(format!("{b}/Condition/{other_cond}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = me
        .delete(format!("{b}/Condition?identifier=x|y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The other patient's condition is untouched.
    assert_eq!(
        status(&as_org("umcu"), &format!("{b}/Condition/{other_cond}")).await,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_off_by_the_time_out_is_audited() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start_with("[limits]\nrequest_timeout_ms = 400\n");
    let mut s = tokio::net::TcpStream::connect(&gw.addr).await.unwrap();
    let head = format!(
        "POST /fhir/Basic HTTP/1.1\r\nHost: x\r\n{}Content-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{{\"resourceType\":",
        common::auth_line()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered within the time-out")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let log: Value = as_org("umcu")
        .get(format!("{}/AuditEvent?outcome=8&_count=50", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cut = log["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["resource"]["outcomeDesc"] == "HTTP 503");
    assert!(cut, "the cut-off request is in the audit log: {log}");
}

/// Identity linking reads the Patient and searches its BSN from a cache; a Patient written after
/// the first search (a new record of the person, or one that no longer carries the BSN) changes
/// the very next search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_sees_patients_written_after_a_search() {
    let gw = Gateway::start();
    let b = &gw.base;
    let (pid, lab, _) = hospital_record(&gw).await;
    let umcu = as_org("umcu");
    let query = format!("{b}/Observation?patient={pid}&category=laboratory");
    let found = |bundle: &Value| -> Vec<String> {
        let mut ids: Vec<String> = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    // Twice: the second search is answered from the cache.
    for _ in 0..2 {
        assert_eq!(found(&get_json(&umcu, &query).await), vec![lab.clone()]);
    }
    // A second record of the person (same BSN), with a lab result of its own.
    let twin = post(
        &umcu,
        b,
        json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": BSN}]}),
    )
    .await;
    let twin_id = twin["id"].as_str().unwrap().to_owned();
    let twin_lab = post(
        &umcu,
        b,
        json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": LAB, "code": "laboratory"}]}], "code": {"text": "Ht"},
        "subject": {"reference": format!("Patient/{twin_id}")}}),
    )
    .await;
    let mut both = vec![lab.clone(), twin_lab["id"].as_str().unwrap().to_owned()];
    both.sort();
    assert_eq!(found(&get_json(&umcu, &query).await), both);
    // The twin's BSN corrected to another person's: no longer linked.
    let r = umcu
        .put(format!("{b}/Patient/{twin_id}"))
        .header("content-type", FHIR_JSON)
        .body(
            json!({"resourceType": "Patient", "id": twin_id,
            "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "111222333"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(found(&get_json(&umcu, &query).await), vec![lab]);
}

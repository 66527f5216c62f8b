//! Federation end to end: a second gateway process is the partner's FHIR server (St. Antonius);
//! the gateway under test reads and searches it through the upstream-FHIR adapter, authenticated
//! with SMART Backend Services against a token endpoint in this test, and discloses what comes
//! back through its own policy.

mod common;

use common::{Gateway, client_with, get_json, token};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DEMO_KEY: &str = "src/policy/demo/demo-issuer.key.pem";

/// A SMART token endpoint: checks the client assertion (signature with the client's key, iss,
/// sub, aud, grant type) and answers with a demo token of the partner's organisation, which the
/// partner's gateway trusts. Counts the tokens it issued.
/// St. Antonius' authorization server (the demo region's, which checks the client assertion).
async fn token_endpoint(issued: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(gateway::demo_region::token_endpoint(
        listener,
        url.clone(),
        "gateway-under-test".into(),
        issued,
    ));
    url
}

fn adapter_config(upstream: &str, token_url: &str) -> String {
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DEMO_KEY);
    format!(
        r#"
[[adapters]]
name = "antonius"
kind = "fhir"
base_url = "{upstream}"
timeout_ms = 2000
retries = 1
resources = [
  {{ type = "Patient", search_params = ["identifier", "name", "_id"] }},
  {{ type = "Observation", search_params = ["patient", "subject", "category", "code"] }},
]
[adapters.organization]
system = "http://fhir.nl/fhir/NamingSystem/ura"
value = "90000002"
type = "hospital"
name = "St. Antonius (partner server)"
[adapters.auth]
kind = "smart-backend"
token_url = "{token_url}"
client_id = "gateway-under-test"
private_key_file = "{}"
algorithm = "ES256"
scope = "system/*.rs"

# A second partner whose server is not there (nothing listens on port 9): every call fails.
[[adapters]]
name = "dead"
kind = "fhir"
base_url = "http://127.0.0.1:9/fhir"
retries = 0
resources = [{{ type = "Patient", search_params = ["identifier", "name", "_id"] }}]
[adapters.organization]
system = "http://fhir.nl/fhir/NamingSystem/ura"
value = "90000009"
type = "vvt"
name = "Unreachable care home"
"#,
        key.display()
    )
}

async fn post(c: &reqwest::Client, base: &str, r: Value) -> String {
    let resp = c
        .post(format!("{base}/{}", r["resourceType"].as_str().unwrap()))
        .header("Content-Type", "application/fhir+json")
        .header("Prefer", "return=representation")
        .json(&r)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn lab(patient: &str, code: &str) -> Value {
    json!({
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 7.1, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    })
}

async fn cache_stats(gw: &Gateway) -> Value {
    let s: Value = reqwest::get(format!("http://{}/federation", gw.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["backends"][0]["name"], "antonius", "{s}");
    s["backends"][0]["cache"].clone()
}

fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| match mode {
            "outcome" => e["resource"]["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .to_owned(),
            _ => e["resource"]["id"].as_str().unwrap().to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn a_partner_server_is_read_and_searched_through_the_policy() {
    // The partner: its own gateway and store, holding one patient with a lab result.
    let mut partner = Gateway::start();
    let as_partner = client_with(&token("system/*.cruds", "antonius", None));
    let p = post(
        &as_partner,
        &partner.base,
        json!({"resourceType": "Patient",
        "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}],
        "name": [{"family": "Jansen"}]}),
    )
    .await;
    let o = post(&as_partner, &partner.base, lab(&p, "2345-7")).await;

    let issued = Arc::new(AtomicUsize::new(0));
    let token_url = token_endpoint(issued.clone()).await;
    let gw = Gateway::start_with(&adapter_config(&partner.base, &token_url));
    // The gateway's own data: a patient and lab result held by the demo hospital UMCU.
    let as_umcu = client_with(&token("system/*.cruds", "umcu", None));
    let local_p = post(
        &as_umcu,
        &gw.base,
        json!({"resourceType": "Patient", "name": [{"family": "Lokaal"}]}),
    )
    .await;
    let local_o = post(&as_umcu, &gw.base, lab(&local_p, "2345-7")).await;

    // Read: the partner's resource in the gateway's namespace, with where it came from and who
    // holds it. The St. Antonius token sees its own organisation's data.
    let as_antonius = client_with(&token("system/*.rs", "antonius", None));
    let r: Value = get_json(
        &as_antonius,
        format!("{}/Observation/antonius.{o}", gw.base),
    )
    .await;
    assert_eq!(r["id"], format!("antonius.{o}"), "{r}");
    assert_eq!(r["subject"]["reference"], format!("Patient/antonius.{p}"));
    assert_eq!(r["meta"]["source"], partner.base.as_str());
    let holder = r["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["system"] == "https://healthhub-utrecht.nl/fhir/CodeSystem/holder")
        .unwrap();
    assert_eq!(
        holder["code"],
        "http://fhir.nl/fhir/NamingSystem/ura|90000002"
    );
    // The reference can be followed through the gateway.
    let patient = as_antonius
        .get(format!("{}/Patient/antonius.{p}", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(patient.status(), 200);
    let missing = as_antonius
        .get(format!("{}/Patient/antonius.nope", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Search fans out and merges: the local lab result and the partner's, in one bundle.
    let b: Value = get_json(
        &as_antonius,
        format!("{}/Observation?category=laboratory", gw.base),
    )
    .await;
    let matches = ids(&b, "match");
    assert!(matches.contains(&format!("antonius.{o}")), "{b}");
    // Whether the local UMCU result shows to St. Antonius is the consent rules' business; the
    // holder (UMCU) sees its own.
    let b_umcu: Value = get_json(
        &as_umcu,
        format!("{}/Observation?category=laboratory", gw.base),
    )
    .await;
    let umcu_matches = ids(&b_umcu, "match");
    assert!(umcu_matches.contains(&local_o), "{b_umcu}");
    // ... but not St. Antonius' lab result: medical data of another holder, no consent.
    assert!(!umcu_matches.contains(&format!("antonius.{o}")), "{b_umcu}");
    // The same read from the cache (St. Antonius' read put it there): still decided by the
    // policy for the token that asks, so UMCU gets nothing.
    let before = cache_stats(&gw).await["hits"].as_u64().unwrap();
    let denied = as_umcu
        .get(format!("{}/Observation/antonius.{o}", gw.base))
        .send()
        .await
        .unwrap();
    assert!(
        denied.status() == 403 || denied.status() == 404,
        "{}",
        denied.status()
    );
    assert!(!denied.text().await.unwrap().contains("2345-7"));
    assert_eq!(cache_stats(&gw).await["hits"].as_u64().unwrap(), before + 1);
    let again: Value = get_json(
        &as_antonius,
        format!("{}/Observation/antonius.{o}", gw.base),
    )
    .await;
    assert_eq!(again["id"], format!("antonius.{o}"));
    // (The Observation, and the Patient whose BSN the audit record names: both cached.)
    assert_eq!(cache_stats(&gw).await["hits"].as_u64().unwrap(), before + 3);
    // _include follows a partner resource's reference to the partner.
    let b: Value = get_json(
        &as_antonius,
        format!(
            "{}/Observation?patient=Patient/antonius.{p}&_include=Observation:subject",
            gw.base
        ),
    )
    .await;
    assert_eq!(ids(&b, "include"), vec![format!("antonius.{p}")], "{b}");
    // Search by a reference into the partner: rewritten back for it.
    let b: Value = get_json(
        &as_antonius,
        format!("{}/Observation?patient=Patient/antonius.{p}", gw.base),
    )
    .await;
    assert_eq!(ids(&b, "match"), vec![format!("antonius.{o}")], "{b}");
    // A parameter the partner cannot evaluate: it is not asked, and the bundle says so.
    let b: Value = get_json(
        &as_antonius,
        format!("{}/Observation?status=final", gw.base),
    )
    .await;
    let notes = ids(&b, "outcome");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("antonius") && n.contains("status")),
        "{b}"
    );
    // Paging across backends with one cursor: two more results at the partner, two per page.
    let p2 = post(
        &as_partner,
        &partner.base,
        json!({"resourceType": "Patient", "name": [{"family": "Twee"}]}),
    )
    .await;
    let mut expected = vec![format!("antonius.{o}")];
    for code in ["718-7", "2160-0"] {
        expected.push(format!(
            "antonius.{}",
            post(&as_partner, &partner.base, lab(&p2, code)).await
        ));
    }
    let mut seen = Vec::new();
    let mut url = format!("{}/Observation?category=laboratory&_count=2", gw.base);
    let mut pages = 0;
    for _ in 0..5 {
        pages += 1;
        let b = get_json(&as_antonius, &url).await;
        seen.extend(
            ids(&b, "match")
                .into_iter()
                .filter(|i| i.starts_with("antonius.")),
        );
        match b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "every partner result once, over the pages");
    assert_eq!(pages, 2, "two per page");
    // A forged federated cursor is refused, not followed.
    let forged = as_antonius
        .get(format!(
            "{}/Observation?category=laboratory&_cursor=~bm90LWpzb24",
            gw.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);

    // Identity linking by BSN: UMCU holds its own record of the partner's patient (same BSN,
    // another family name), and the patient consents to sharing. A search for the patient's
    // lab results at UMCU's record gathers the partner's too, and reports the disagreement.
    let linked_p = post(
        &as_umcu,
        &gw.base,
        json!({"resourceType": "Patient",
        "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}],
        "name": [{"family": "Pietersen"}]}),
    )
    .await;
    let linked_o = post(&as_umcu, &gw.base, lab(&linked_p, "2345-7")).await;
    let query = format!("{}/Observation?patient=Patient/{linked_p}", gw.base);
    let before = get_json(&as_umcu, &query).await;
    assert_eq!(
        ids(&before, "match"),
        vec![linked_o.clone()],
        "no consent yet: {before}"
    );
    post(&as_umcu, &gw.base, json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/antonius.{p}")},
        "policy": [{"uri": "https://healthhub-utrecht.nl/consent-policy"}],
        "provision": {"type": "permit"}})).await;
    let b = get_json(&as_umcu, &query).await;
    let mut got = ids(&b, "match");
    got.sort();
    let mut want = vec![linked_o.clone(), format!("antonius.{o}")];
    want.sort();
    assert_eq!(got, want, "{b}");
    let notes = ids(&b, "outcome");
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&format!("Patient/antonius.{p}")) && n.contains("family name")),
        "{b}"
    );
    // Each record links to the other (Patient.link, seealso), found with the reader's rights.
    let links = |p: &Value| -> Vec<String> {
        p["link"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| l["other"]["reference"].as_str().unwrap().to_owned())
            .collect()
    };
    let mine: Value = get_json(&as_umcu, format!("{}/Patient/{linked_p}", gw.base)).await;
    assert_eq!(
        links(&mine),
        vec![format!("Patient/antonius.{p}")],
        "{mine}"
    );
    let theirs: Value = get_json(&as_umcu, format!("{}/Patient/antonius.{p}", gw.base)).await;
    assert_eq!(
        links(&theirs),
        vec![format!("Patient/{linked_p}")],
        "{theirs}"
    );

    // A third record of the person, in this store, held by St. Antonius.
    let twin = post(
        &as_partner,
        &gw.base,
        json!({"resourceType": "Patient",
        "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}],
        "name": [{"family": "Jansen"}]}),
    )
    .await;

    // $everything gathers the person's records from the partner and from this store too.
    let all: Value = get_json(
        &as_umcu,
        format!("{}/Patient/{linked_p}/$everything", gw.base),
    )
    .await;
    let mut got: Vec<String> = all["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] != "outcome")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        format!("Patient/{linked_p}"),
        format!("Observation/{linked_o}"),
        format!("Patient/antonius.{p}"),
        format!("Observation/antonius.{o}"),
        format!("Patient/{twin}"),
    ];
    want.sort();
    assert_eq!(got, want, "{all}");
    assert!(
        ids(&all, "outcome")
            .iter()
            .any(|n| n.contains("family name")),
        "{all}"
    );
    // The self link is the search as asked, not as widened.
    let self_link = b["link"][0]["url"].as_str().unwrap();
    assert!(!self_link.contains("antonius"), "{self_link}");

    // The person's own app (UMCU's portal: patient/ scopes, launched for the UMCU record): their
    // records at St. Antonius and St. Antonius' record in this store are theirs too. Nobody
    // else's: not the other local patient's lab result.
    let portal = client_with(
        &gateway::policy::demo::mint(&gateway::policy::demo::TokenRequest {
            org: "umcu",
            scope: "patient/Observation.rs patient/Patient.rs",
            patient: Some(&linked_p),
            fhir_user: Some(&format!("Patient/{linked_p}")),
            purpose_of_use: None,
            subject: None,
            ttl_secs: 3600,
        })
        .unwrap(),
    );
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let b = get_json(&portal, format!("{}/Observation", gw.base)).await;
    assert_eq!(
        sorted(ids(&b, "match")),
        sorted(vec![linked_o.clone(), format!("antonius.{o}")]),
        "{b}"
    );
    // ... also when the search names the launch patient (as a patient app does).
    let b = get_json(
        &portal,
        format!("{}/Observation?patient=Patient/{linked_p}", gw.base),
    )
    .await;
    assert_eq!(
        sorted(ids(&b, "match")),
        sorted(vec![linked_o.clone(), format!("antonius.{o}")]),
        "{b}"
    );
    let b = get_json(&portal, format!("{}/Patient", gw.base)).await;
    assert_eq!(
        sorted(ids(&b, "match")),
        sorted(vec![
            linked_p.clone(),
            twin.clone(),
            format!("antonius.{p}")
        ]),
        "{b}"
    );
    // Reads follow the same rule; writes stay with the launch patient's own record.
    let theirs = portal
        .get(format!("{}/Observation/antonius.{o}", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 200);

    // Consent across organisations: the person's deny, recorded on their UMCU record, governs
    // St. Antonius' data about them too (one person by BSN, one consent, as Mitz keys it). The
    // deny names the type, so it is more specific than the permit recorded on the partner's
    // record. UMCU still sees what it holds itself.
    let partner_read = format!("{}/Observation/antonius.{o}", gw.base);
    let status = |c: reqwest::Client, url: String| async move {
        c.get(url).send().await.unwrap().status().as_u16()
    };
    assert_eq!(status(as_umcu.clone(), partner_read.clone()).await, 200);
    let deny = post(&as_umcu, &gw.base, json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{linked_p}")},
        "policy": [{"uri": "https://healthhub-utrecht.nl/consent-policy"}],
        "provision": {"type": "deny",
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]}}))
    .await;
    let b = get_json(&as_umcu, &query).await;
    assert_eq!(ids(&b, "match"), vec![linked_o.clone()], "{b}");
    assert!(
        [403, 404].contains(&status(as_umcu.clone(), partner_read.clone()).await),
        "the deny on the UMCU record withholds St. Antonius' result"
    );
    let gone = as_umcu
        .delete(format!("{}/Consent/{deny}", gw.base))
        .send()
        .await
        .unwrap();
    assert!(gone.status().is_success());
    assert_eq!(status(as_umcu.clone(), partner_read).await, 200);

    // The conformance suite's federation group against this deployment (one partner up, one
    // down), as a partner would run it.
    let suite = conformance::client::Fhir::new(
        &gw.base,
        &[format!(
            "Authorization: Bearer {}",
            token("system/*.cruds", "antonius", None)
        )],
    )
    .unwrap();
    let results = conformance::run(&suite, Some("federation")).await;
    assert_eq!(results.len(), 5);
    for r in &results {
        assert!(r.outcome.is_ok(), "{}: {:?}", r.name, r.outcome);
    }
    // ... and as another organisation (UMCU sees St. Antonius' result by the patient's consent),
    // for which the consent case must see the deny take effect.
    let suite = conformance::client::Fhir::new(
        &gw.base,
        &[format!(
            "Authorization: Bearer {}",
            token("system/*.cruds", "umcu", None)
        )],
    )
    .unwrap();
    for r in conformance::run(&suite, Some("federation")).await {
        assert!(r.outcome.is_ok(), "as UMCU: {}: {:?}", r.name, r.outcome);
    }

    // One token for all of this: cached until it nears expiry.
    assert_eq!(issued.load(Ordering::SeqCst), 1);

    // The partner goes down: the search still answers, with what the gateway holds and an
    // outcome naming the backend; a read of the partner's resource is a 502 naming it.
    partner.terminate();
    let started = Instant::now();
    // (A search not asked before: an answer still fresh in the cache would be served.)
    let resp = as_umcu
        .get(format!(
            "{}/Observation?category=laboratory&code=2345-7",
            gw.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b: Value = resp.json().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
    assert!(ids(&b, "match").contains(&local_o), "{b}");
    let notes = ids(&b, "outcome");
    assert!(notes.iter().any(|n| n.contains("backend antonius")), "{b}");
    assert!(
        b.get("total").is_none(),
        "a partial result has no total: {b}"
    );
    // A read the cache still holds fresh is served from it; one it does not is a 502.
    let cached = as_antonius
        .get(format!("{}/Patient/antonius.{p}", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 200);
    let resp = as_antonius
        .get(format!("{}/Patient/antonius.never-read", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("OperationOutcome") && text.contains("antonius"),
        "{text}"
    );
    assert!(
        !text.contains(&partner.addr),
        "no backend internals: {text}"
    );
}

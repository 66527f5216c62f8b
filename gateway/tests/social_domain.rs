//! The social domain end to end: municipalities' iWmo/iJw messages into the gateway binary (by
//! `POST /istandaarden` and through the drop directory), their return messages (checked against
//! the published XSDs with Python's `xmlschema`), and what the municipal app, a youth-care
//! provider and a hospital then may and may not see, on every path.

mod common;

use common::{Gateway, client_with, get_json, token};
use serde_json::{Value, json};
use std::path::Path;

const MUNICIPALITY: &str = "urn:healthhub-utrecht:cbs-gemeentecode";

fn sample(path: &str) -> String {
    let p = common::workspace()
        .join("../shared/nl/istandaarden")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn config(drop_dir: &Path) -> String {
    format!(
        r#"
[istandaarden]
drop_dir = "{}"
poll_ms = 100
[istandaarden.municipalities."0344"]
system = "{MUNICIPALITY}"
value = "0344"
type = "municipality"
name = "Gemeente Utrecht (demo)"
[istandaarden.municipalities."0384"]
system = "{MUNICIPALITY}"
value = "0384"
type = "municipality"
name = "Gemeente Kampen"
"#,
        drop_dir.display()
    )
}

async fn post_message(c: &reqwest::Client, gw: &Gateway, xml: &str) -> (u16, String) {
    let r = c
        .post(format!("http://{}/istandaarden", gw.addr))
        .header("Content-Type", "application/xml")
        .body(xml.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn matches(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] != "outcome")
        .map(|e| e["resource"].clone())
        .collect()
}

fn identifiers(resources: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = resources
        .iter()
        .filter(|r| r["resourceType"] == "ServiceRequest")
        .map(|r| r["identifier"][0]["value"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// Validates a return message against its published XSD (JW302, JW316) with `xmlschema`.
fn validate(answer: &str, xsd: &str) {
    let dir = tempfile::tempdir().unwrap();
    let shared = common::workspace().join("../shared/nl/istandaarden/jw/xsd");
    // The message XSDs import "basisschema.xsd" (lower case); the file is Basisschema.xsd.
    std::fs::copy(
        shared.join("Basisschema.xsd"),
        dir.path().join("basisschema.xsd"),
    )
    .unwrap();
    std::fs::copy(shared.join(xsd), dir.path().join(xsd)).unwrap();
    std::fs::write(dir.path().join("answer.xml"), answer).unwrap();
    let out = std::process::Command::new(common::python())
        .arg("-c")
        .arg("import sys, xmlschema; xmlschema.XMLSchema(sys.argv[1]).validate(sys.argv[2]); print('valid')")
        .arg(dir.path().join(xsd))
        .arg(dir.path().join("answer.xml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{xsd}: {}\n{answer}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn municipal_messages_and_who_sees_them() {
    let drop = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(&config(drop.path()));
    let utrecht_system = client_with(&token("system/*.cruds", "utrecht", None));

    // Utrecht allocates Wmo support to a provider and youth care to the demo youth-care provider.
    let wmo = sample("wmo/berichten/WMO301.xml")
        .replace("<wmo301:Afzender>0384<", "<wmo301:Afzender>0344<");
    let (status, answer) = post_message(&utrecht_system, &gw, &wmo).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("<wmo302:BerichtCode>415<"), "{answer}");
    assert!(
        !answer.contains(">0001<") && answer.contains(">0200<"),
        "{answer}"
    );
    let jw = sample("jw/berichten/JW301.xml")
        .replace("<jw301:Afzender>0384<", "<jw301:Afzender>0344<")
        .replace("<jw301:Ontvanger>42420001<", "<jw301:Ontvanger>90000005<");
    let (status, answer) = post_message(&utrecht_system, &gw, &jw).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("<jw302:RetourCode>0200<"), "{answer}");
    validate(&answer, "JW302.xsd");

    // The same message again: answered 9056, written once.
    let (status, again) = post_message(&utrecht_system, &gw, &jw).await;
    assert_eq!(status, 200);
    assert!(again.contains(">9056<"), "{again}");
    validate(&again, "JW302.xsd");
    // A broken one: answered with its codes, nothing written.
    let broken = jw
        .replace(">123456789012<", ">B23456789012<")
        .replace("<jw301:Bsn>999900006<", "<jw301:Bsn>999900007<");
    let (status, rejected) = post_message(&utrecht_system, &gw, &broken).await;
    assert_eq!(status, 200);
    assert!(rejected.contains(">0001<"), "{rejected}");
    validate(&rejected, "JW302.xsd");

    // Refused outright, with an OperationOutcome: another municipality's message, no XML, no
    // token, a GET.
    let kampen = sample("wmo/berichten/WMO301.xml");
    let (status, body) = post_message(&utrecht_system, &gw, &kampen).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post_message(&utrecht_system, &gw, "{\"resourceType\": \"Bundle\"}").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("OperationOutcome"));
    let (status, _) = post_message(&common::anon(), &gw, &wmo).await;
    assert_eq!(status, 401);
    // An organisation whose identifier value happens to be the code, in another register.
    let (status, body) = post_message(
        &client_with(&token("system/*.cruds", "umcu", None)),
        &gw,
        &wmo.replace(">0344<", ">90000001<"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let r = utrecht_system
        .get(format!("http://{}/istandaarden", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Kampen's allocation arrives through the drop directory; its answer appears in out/.
    std::fs::write(drop.path().join("kampen.xml"), &kampen).unwrap();
    let answer_file = drop.path().join("out/kampen.retour.xml");
    let mut waited = 0;
    while !answer_file.exists() && waited < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    let dropped = std::fs::read_to_string(&answer_file).expect("the drop directory answered");
    assert!(dropped.contains("<wmo302:RetourCode>0200<"), "{dropped}");
    assert!(drop.path().join("done/kampen.xml").exists());

    // A provider's request for allocation to Utrecht: JW316, valid against its XSD.
    let request = sample("jw/berichten/JW315.xml")
        .replace("<jw315:Afzender>42420001<", "<jw315:Afzender>90000005<")
        .replace("<jw315:Ontvanger>0384<", "<jw315:Ontvanger>0344<")
        .replace("2027-06-31", "2027-06-30");
    let youth = client_with(&token("system/*.cruds", "youth", None));
    let (status, answer) = post_message(&youth, &gw, &request).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("<jw316:RetourCode>0200<"), "{answer}");
    validate(&answer, "JW316.xsd");

    // A hospital's medical data about the same person (same BSN).
    let umcu = client_with(&token("system/*.cruds", "umcu", None));
    let p = umcu
        .post(format!("{}/Patient", gw.base))
        .header("Content-Type", "application/fhir+json")
        .header("Prefer", "return=representation")
        .json(&json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999900006"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(p.status(), 201);
    let hospital_patient = p.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = umcu
        .post(format!("{}/Observation", gw.base))
        .header("Content-Type", "application/fhir+json")
        .header("Prefer", "return=representation")
        .json(&json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": format!("Patient/{hospital_patient}")}}))
        .send()
        .await
        .unwrap();
    assert_eq!(o.status(), 201);
    let observation = o.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The municipal app: its residents' records and allocations, nothing else.
    let app = client_with(&token("system/*.rs", "utrecht", None));
    let patients = matches(
        &get_json(
            &app,
            format!(
                "{}/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999900006",
                gw.base
            ),
        )
        .await,
    );
    assert_eq!(patients.len(), 1, "its own record only: {patients:?}");
    assert_eq!(patients[0]["name"][0]["family"], "de Wit");
    let own_patient = patients[0]["id"].as_str().unwrap().to_owned();
    let requests = matches(&get_json(&app, format!("{}/ServiceRequest", gw.base)).await);
    assert_eq!(
        identifiers(&requests),
        [
            "0344-101",
            "0344-300201",
            "0344-300202",
            "40A12341234",
            "40A12341235"
        ],
        "Utrecht's allocations and the request addressed to it, not Kampen's: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r["category"][0]["coding"][0]["system"]
                == "https://healthhub-utrecht.nl/fhir/CodeSystem/social-domain")
    );
    // Medical data, on every path: read, search, _include, _revinclude, $everything, batch.
    let r = app
        .get(format!("{}/Observation/{observation}", gw.base))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 403 | 404), "{}", r.status());
    assert!(
        matches(&get_json(&app, format!("{}/Observation", gw.base)).await)
            .iter()
            .all(|r| r["resourceType"] != "Observation")
    );
    let r = app
        .get(format!("{}/Patient/{hospital_patient}", gw.base))
        .send()
        .await
        .unwrap();
    assert!(
        matches!(r.status().as_u16(), 403 | 404),
        "the hospital's record of the person: {}",
        r.status()
    );
    let revinc = matches(
        &get_json(
            &app,
            format!(
                "{}/Patient?_id={own_patient},{hospital_patient}&_revinclude=Observation:subject",
                gw.base
            ),
        )
        .await,
    );
    assert!(
        revinc
            .iter()
            .all(|r| r["resourceType"] == "Patient" && r["id"] == own_patient.as_str()),
        "{revinc:?}"
    );
    let inc = matches(
        &get_json(
            &app,
            format!("{}/ServiceRequest?_include=ServiceRequest:subject", gw.base),
        )
        .await,
    );
    assert!(
        inc.iter()
            .all(|r| r["resourceType"] != "Patient" || r["id"] == own_patient.as_str()),
        "{inc:?}"
    );
    let everything = get_json(
        &app,
        format!("{}/Patient/{own_patient}/$everything", gw.base),
    )
    .await;
    assert!(
        matches(&everything)
            .iter()
            .all(|r| r["resourceType"] != "Observation"),
        "{everything}"
    );
    let batch = app
        .post(gw.base.clone())
        .header("Content-Type", "application/fhir+json")
        .json(
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("Observation/{observation}")}},
            {"request": {"method": "GET", "url": format!("Patient/{hospital_patient}")}},
            {"request": {"method": "GET", "url": format!("Patient/{own_patient}")}}]}),
        )
        .send()
        .await
        .unwrap();
    let batch: Value = batch.json().await.unwrap();
    let statuses: Vec<&str> = batch["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert!(
        !statuses[0].starts_with("200") && !statuses[1].starts_with("200"),
        "{statuses:?}"
    );
    assert!(statuses[2].starts_with("200"), "{statuses:?}");

    // The youth-care provider: the Jeugdwet allocations addressed to it, not the Wmo one
    // (another provider's) nor Kampen's; and its own request.
    let youth_read = client_with(&token("system/*.rs", "youth", None));
    let seen = matches(&get_json(&youth_read, format!("{}/ServiceRequest", gw.base)).await);
    assert_eq!(
        identifiers(&seen),
        ["0344-300201", "0344-300202", "40A12341234", "40A12341235"],
        "{seen:?}"
    );

    // The person objects to youth care seeing their data: the allocations addressed to it are
    // withheld until the objection is withdrawn (consent applies to social-domain data too).
    let objection = utrecht_system
        .post(format!("{}/Consent", gw.base))
        .header("Content-Type", "application/fhir+json")
        .header("Prefer", "return=representation")
        .json(&json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{own_patient}")},
            "policy": [{"uri": "https://healthhub-utrecht.nl/consent-policy"}],
            "provision": {"type": "deny", "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                "reference": {"identifier": {"system": gateway::policy::consent::ORG_TYPE_SYSTEM, "value": "youth-care"}}}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        objection.status(),
        201,
        "{}",
        objection.text().await.unwrap()
    );
    let objection: Value = objection.json().await.unwrap();
    let withheld = matches(&get_json(&youth_read, format!("{}/ServiceRequest", gw.base)).await);
    assert!(
        identifiers(&withheld).is_empty(),
        "under the objection: {withheld:?}"
    );
    let r = utrecht_system
        .delete(format!(
            "{}/Consent/{}",
            gw.base,
            objection["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let again = matches(&get_json(&youth_read, format!("{}/ServiceRequest", gw.base)).await);
    assert_eq!(identifiers(&again).len(), 4, "{again:?}");

    // The hospital: no social-domain data without the person's consent (opt-in region).
    let hospital_sees = matches(&get_json(&umcu, format!("{}/ServiceRequest", gw.base)).await);
    assert!(identifiers(&hospital_sees).is_empty(), "{hospital_sees:?}");

    // Audited: the inbox's writes under the municipality's principal.
    let audit = get_json(
        &client_with(&token("system/*.cruds", "utrecht", None)),
        format!("{}/AuditEvent?_count=200", gw.base),
    )
    .await;
    let text = audit.to_string();
    assert!(
        text.contains("istandaarden"),
        "{}",
        &text[..text.len().min(2000)]
    );
}

//! Custom SearchParameters: posted like any resource, in force after `$reindex` (for resources
//! written before) and for every write after, kept across restarts; `$reindex` is maintenance
//! (a system-level scope) and refuses a definition it cannot use, naming it.

mod common;

use common::*;
use serde_json::{Value, json};

const EXT: &str = "https://healthhub-utrecht.nl/fhir/StructureDefinition/birthplace";

fn patient(family: &str, place: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}],
        "extension": [{"url": EXT, "valueString": place}]})
}

fn birthplace_parameter() -> Value {
    json!({"resourceType": "SearchParameter", "url": "https://healthhub-utrecht.nl/fhir/SearchParameter/birthplace",
        "name": "birthplace", "status": "active", "description": "Where the patient was born",
        "code": "birthplace", "base": ["Patient"], "type": "string",
        "expression": format!("Patient.extension.where(url = '{EXT}').value")})
}

async fn post(c: &reqwest::Client, base: &str, r: &Value) -> String {
    let resp = c
        .post(format!("{base}/{}", r["resourceType"].as_str().unwrap()))
        .header("content-type", FHIR_JSON)
        .body(r.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let body: Value = resp.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn families(c: &reqwest::Client, base: &str, query: &str) -> Result<Vec<String>, u16> {
    let r = c
        .get(format!("{base}/Patient?{query}"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    if !r.status().is_success() {
        return Err(r.status().as_u16());
    }
    let b: Value = r.json().await.unwrap();
    let mut out: Vec<String> = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            e["resource"]["name"][0]["family"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    out.sort();
    Ok(out)
}

async fn reindex(c: &reqwest::Client, base: &str) -> (u16, String) {
    let r = c.post(format!("{base}/$reindex")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn run(gw: Gateway) {
    let c = client();
    let b = gw.base.clone();
    post(&c, &b, &patient("Before", "Utrecht")).await;
    post(&c, &b, &patient("Elsewhere", "Amersfoort")).await;
    assert_eq!(
        families(&c, &b, "birthplace=utr").await,
        Err(400),
        "not defined yet"
    );

    let sp = post(&c, &b, &birthplace_parameter()).await;
    // Only maintenance may reindex: a user's token, even with every scope, may not.
    let user = client_with(&token("user/*.cruds", "umcu", None));
    assert_eq!(reindex(&user, &b).await.0, 403);
    assert_eq!(reindex(&anon(), &b).await.0, 401);
    let (status, text) = reindex(&c, &b).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Patient.birthplace"), "{text}");

    assert_eq!(
        families(&c, &b, "birthplace=utr").await.unwrap(),
        ["Before"]
    );
    post(&c, &b, &patient("After", "Utrecht")).await;
    assert_eq!(
        families(&c, &b, "birthplace=utrecht").await.unwrap(),
        ["After", "Before"],
        "a write after the install is indexed at once"
    );
    assert_eq!(
        families(&c, &b, "birthplace:exact=Amersfoort")
            .await
            .unwrap(),
        ["Elsewhere"]
    );
    // In the CapabilityStatement too.
    let cap: Value = c
        .get(format!("{b}/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patient_cap = cap["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    assert!(
        patient_cap["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "birthplace"),
        "{patient_cap}"
    );

    // A definition that cannot be used is refused by name, and nothing changes.
    let mut bad = birthplace_parameter();
    bad["url"] = json!("https://example.org/SearchParameter/broken");
    bad["code"] = json!("broken");
    bad["expression"] = json!("Patient.extension.where(");
    let broken = post(&c, &b, &bad).await;
    let (status, text) = reindex(&c, &b).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("SearchParameter/broken"), "{text}");
    assert_eq!(families(&c, &b, "birthplace=utr").await.unwrap().len(), 2);
    let r = c
        .delete(format!("{b}/SearchParameter/{broken}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    // After a restart the stored parameter is in force again.
    let config = std::fs::read_to_string(gw.dir.path().join("gateway.toml")).unwrap_or_default();
    let dir = gw.stop_keep_data();
    let gw = Gateway::start_in(dir, &config);
    let b = gw.base.clone();
    assert_eq!(
        families(&c, &b, "birthplace=utr").await.unwrap(),
        ["After", "Before"]
    );
    let r = c
        .delete(format!("{b}/SearchParameter/{sp}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (status, _) = reindex(&c, &b).await;
    assert_eq!(status, 200);
    assert_eq!(
        families(&c, &b, "birthplace=utr").await,
        Err(400),
        "removed"
    );
}

#[tokio::test]
async fn custom_search_parameters_after_reindex_sqlite() {
    run(Gateway::start()).await;
}

#[tokio::test]
async fn custom_search_parameters_after_reindex_postgres() {
    run(Gateway::start_with(&postgres_toml(&fresh_schema(), ""))).await;
}

//! The municipal REST/JSON adapter end to end: the gateway binary with a `kind = "rest"` backend,
//! a real HTTP server process (the adapter tests' stdlib-Python API) holding a municipality's
//! clients and allocations, read and searched through the policy chokepoint.

mod common;

use common::{Gateway, client_with, get_json, token};
use serde_json::{Value, json};
use std::process::{Command, Stdio};

fn matches(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_municipal_api_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let data = json!({
        "clienten": [
            {"id": 1, "bsn": "999911120", "achternaam": "Wit", "geboortedatum": "1967-08-13"},
            {"id": 2, "bsn": "999911132", "achternaam": "Jansen", "geboortedatum": "2014-03-02"}
        ],
        "toewijzingen": [
            {"id": "T-1", "client_id": "1", "nummer": "5001", "product": "01A01", "van": "2026-01-01", "aanbieder": "42420001"},
            {"id": "T-2", "client_id": "2", "nummer": "7001", "product": "45A12", "van": "2026-02-01", "aanbieder": "90000005"}
        ]
    });
    std::fs::write(dir.path().join("data.json"), data.to_string()).unwrap();
    let port = common::free_port();
    let mut api = Command::new("python3")
        .arg(common::workspace().join("adapters/src/rest/testdata/municipal_api.py"))
        .arg(port.to_string())
        .arg(dir.path().join("data.json"))
        .arg("api-geheim")
        .stdout(Stdio::null())
        .spawn()
        .expect("python3");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    // The token reaches the gateway process through its environment (token_env).
    // SAFETY: set before the gateway process is spawned; no other thread reads it.
    unsafe { std::env::set_var("GATEWAY_TEST_MUNICIPAL_API_TOKEN", "api-geheim") };
    let gw = Gateway::start_with(&format!(
        r#"
[[adapters]]
name = "utrecht-api"
kind = "rest"
base_url = "http://127.0.0.1:{port}/api/v1"
auth = {{ kind = "bearer", token_env = "GATEWAY_TEST_MUNICIPAL_API_TOKEN" }}
[adapters.organization]
system = "urn:healthhub-utrecht:cbs-gemeentecode"
value = "0344"
type = "municipality"
name = "Gemeente Utrecht (demo)"

[[adapters.mappings]]
resource = "Patient"
path = "/clienten"
id = "id"
filters = {{ identifier = "bsn", _id = "id" }}
fields = {{ bsn = "bsn", birth_date = "geboortedatum", name = {{ family = "achternaam" }} }}

[[adapters.mappings]]
resource = "ServiceRequest"
path = "/toewijzingen"
id = "id"
filters = {{ patient = "client_id", subject = "client_id", _id = "id" }}
[adapters.mappings.fields]
patient = "client_id"
social_domain = "wmo"
start = "van"
performer_agb = "aanbieder"
identifiers = [{{ column = "nummer", system = "https://healthhub-utrecht.nl/fhir/NamingSystem/wmo-toewijzing/0344" }}]
code = {{ column = "product", map = {{ "01A01" = {{ system = "https://healthhub-utrecht.nl/fhir/CodeSystem/wmo-productcode", code = "01A01" }}, "45A12" = {{ system = "https://healthhub-utrecht.nl/fhir/CodeSystem/jw-productcode", code = "45A12" }} }} }}
"#
    ));

    // The municipal app: its own clients and allocations from its API, tagged as its own.
    let app = client_with(&token("system/*.rs", "utrecht", None));
    let p = get_json(&app, format!("{}/Patient/utrecht-api.1", gw.base)).await;
    assert_eq!(p["name"][0]["family"], "Wit", "{p}");
    assert_eq!(
        matches(
            &get_json(
                &app,
                format!(
                    "{}/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911132",
                    gw.base
                )
            )
            .await
        ),
        ["utrecht-api.2"]
    );
    let all = get_json(&app, format!("{}/ServiceRequest", gw.base)).await;
    assert_eq!(
        matches(&all),
        ["utrecht-api.T-1", "utrecht-api.T-2"],
        "{all}"
    );
    let one = get_json(
        &app,
        format!("{}/ServiceRequest?patient=Patient/utrecht-api.1", gw.base),
    )
    .await;
    assert_eq!(matches(&one), ["utrecht-api.T-1"]);

    // The youth-care provider: the allocation addressed to it only.
    let youth = client_with(&token("system/*.rs", "youth", None));
    assert_eq!(
        matches(&get_json(&youth, format!("{}/ServiceRequest", gw.base)).await),
        ["utrecht-api.T-2"]
    );
    // A hospital: no social-domain data and no municipal records without consent.
    let umcu = client_with(&token("system/*.rs", "umcu", None));
    assert!(matches(&get_json(&umcu, format!("{}/ServiceRequest", gw.base)).await).is_empty());

    // The API gone: a search says so in an outcome entry, a read is 502.
    api.kill().unwrap();
    api.wait().unwrap();
    let partial = get_json(&app, format!("{}/ServiceRequest", gw.base)).await;
    assert!(partial.to_string().contains("utrecht-api"), "{partial}");
    let r = app
        .get(format!("{}/Patient/utrecht-api.1", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
}

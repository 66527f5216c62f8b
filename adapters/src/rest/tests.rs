//! Against a real HTTP server process: `testdata/municipal_api.py` (stdlib Python) with this
//! test's own data: clients and allocations, bearer auth, pages of two, a slow endpoint.

use super::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};

struct Api {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_api(token: &str) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let data = json!({
        "clienten": [
            {"id": 1, "bsn": "999911120", "naam": {"achternaam": "Wit", "voorvoegsel": "de", "voornamen": "Tim"},
             "geboortedatum": "1967-08-13", "geslacht": "M",
             "adres": {"straat": "Oudegracht", "huisnummer": "12", "postcode": "3511AB", "plaats": "Utrecht"}},
            {"id": 2, "bsn": "999911132", "naam": {"achternaam": "Jansen", "voornamen": "Daan"},
             "geboortedatum": "2014-03-02", "geslacht": "M"},
            {"id": 3, "bsn": "999911144", "naam": {"achternaam": "Bakker"}, "geboortedatum": "1940-01-01", "geslacht": "V"}
        ],
        "toewijzingen": [
            {"id": "T-1", "client_id": "1", "nummer": "5001", "wet": "wmo", "categorie": "01", "product": "01A01",
             "van": "2026-01-01", "tot": "2026-12-31", "uren": 3, "aanbieder": "42420001", "status": "actief"},
            {"id": "T-2", "client_id": "2", "nummer": "7001", "wet": "jw", "categorie": "45", "product": "45A12",
             "van": "2026-02-01", "tot": null, "uren": 2, "aanbieder": "90000005", "status": "actief"},
            {"id": "T-3", "client_id": "1", "nummer": "5002", "wet": "wmo", "categorie": "02", "product": "02A03",
             "van": "2025-01-01", "tot": "2025-06-30", "uren": 1, "aanbieder": "42420001", "status": "beeindigd"}
        ],
        "traag": [{"id": 1}]
    });
    let file = dir.path().join("data.json");
    std::fs::write(&file, data.to_string()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rest/testdata/municipal_api.py");
    let child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .arg(&file)
        .arg(token)
        .stdout(Stdio::null())
        .spawn()
        .expect("python3");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    Api {
        child,
        base: format!("http://127.0.0.1:{port}/api/v1"),
        _dir: dir,
    }
}

fn section(base: &str, token_env: &str) -> Value {
    json!({
        "name": "utrecht-wmo",
        "kind": "rest",
        "organization": {"system": "urn:healthhub-utrecht:cbs-gemeentecode", "value": "0344",
                         "type": "municipality", "name": "Gemeente Utrecht"},
        "base_url": base,
        "timeout_ms": 1000,
        "auth": {"kind": "bearer", "token_env": token_env},
        "mappings": [
            {"resource": "Patient", "path": "/clienten", "id": "id",
             "filters": {"identifier": "bsn", "_id": "id", "family": "naam_achternaam"},
             "fields": {"bsn": "bsn", "birth_date": "geboortedatum",
                        "name": {"family": "naam_achternaam", "family_prefix": "naam_voorvoegsel", "given": "naam_voornamen"},
                        "gender": {"column": "geslacht", "map": {"M": "male", "V": "female"}},
                        "address": {"street": "adres_straat", "house_number": "adres_huisnummer",
                                    "postal_code": "adres_postcode", "city": "adres_plaats"}}},
            {"resource": "ServiceRequest", "path": "/toewijzingen", "id": "id",
             "filters": {"patient": "client_id", "subject": "client_id", "_id": "id"},
             "fields": {"patient": "client_id", "social_domain": "wmo",
                        "identifiers": [{"column": "nummer", "system": "https://healthhub-utrecht.nl/fhir/NamingSystem/wmo-toewijzing/0344"}],
                        "status": {"column": "status", "map": {"actief": "active", "beeindigd": "completed"}},
                        "code": {"column": "product", "map": {
                            "01A01": {"system": "https://healthhub-utrecht.nl/fhir/CodeSystem/wmo-productcode", "code": "01A01", "display": "Huishoudelijke hulp"},
                            "02A03": {"system": "https://healthhub-utrecht.nl/fhir/CodeSystem/wmo-productcode", "code": "02A03"},
                            "45A12": {"system": "https://healthhub-utrecht.nl/fhir/CodeSystem/jw-productcode", "code": "45A12"}}},
                        "start": "van", "end": "tot", "performer_agb": "aanbieder",
                        "quantity": {"column": "uren", "unit": "uur per week"}}},
            {"resource": "Practitioner", "path": "/traag", "id": "id", "filters": {"_id": "id"}, "fields": {}}
        ]
    })
}

fn set_token(var: &str, value: &str) {
    // SAFETY: each test sets its own variable once, before the adapter that reads it is built.
    unsafe { std::env::set_var(var, value) };
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_municipal_api_onto_patient_and_service_request() {
    let api = start_api("gemeente-geheim");
    set_token("REST_TEST_TOKEN_A", "gemeente-geheim");
    let a = crate::build_all(&[section(&api.base, "REST_TEST_TOKEN_A")])
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(a.health().await, Health::Up);

    let p = a
        .read("Patient", "utrecht-wmo.1")
        .await
        .unwrap()
        .expect("client 1");
    assert_eq!(p["identifier"][0]["value"], "999911120");
    assert_eq!(p["name"][0]["family"], "de Wit");
    assert_eq!(p["gender"], "male");
    assert_eq!(p["address"][0]["postalCode"], "3511 AB");
    assert_eq!(p["meta"]["source"], api.base.as_str());
    assert_eq!(a.read("Patient", "utrecht-wmo.99").await.unwrap(), None);
    assert_eq!(a.read("Patient", "elsewhere.1").await.unwrap(), None);

    let sr = a
        .read("ServiceRequest", "utrecht-wmo.T-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sr["status"], "active");
    assert_eq!(sr["intent"], "order");
    assert_eq!(sr["subject"]["reference"], "Patient/utrecht-wmo.1");
    assert_eq!(sr["category"][0]["coding"][0]["code"], "wmo");
    assert_eq!(sr["category"][0]["coding"][1]["code"], "social-domain");
    assert_eq!(
        sr["occurrencePeriod"],
        json!({"start": "2026-01-01", "end": "2026-12-31"})
    );
    assert_eq!(sr["quantityQuantity"]["value"], 3.0);
    assert_eq!(sr["performer"][0]["identifier"]["value"], "42420001");
    assert_eq!(sr["requester"]["identifier"]["value"], "0344");
    assert_eq!(sr["code"]["coding"][0]["display"], "Huishoudelijke hulp");

    // Searches become the API's filters; a BSN token's code; a patient reference inward.
    let found = a
        .search(
            "Patient",
            &params(&[(
                "identifier",
                "http://fhir.nl/fhir/NamingSystem/bsn|999911132",
            )]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(found.matches.len(), 1);
    assert_eq!(found.matches[0]["id"], "utrecht-wmo.2");
    let of_one = a
        .search(
            "ServiceRequest",
            &params(&[("patient", "Patient/utrecht-wmo.1")]),
            None,
        )
        .await
        .unwrap();
    let ids: Vec<&str> = of_one
        .matches
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["utrecht-wmo.T-1", "utrecht-wmo.T-3"]);
    assert_eq!(of_one.matches[1]["status"], "completed");
    let elsewhere = a
        .search(
            "ServiceRequest",
            &params(&[("patient", "Patient/antonius.1")]),
            None,
        )
        .await
        .unwrap();
    assert!(elsewhere.matches.is_empty());

    // Pages of two, followed by the link the API gives.
    let first = a.search("Patient", &params(&[]), None).await.unwrap();
    assert_eq!(first.matches.len(), 2);
    let next = first.next.clone().expect("a next page");
    let second = a
        .search("Patient", &params(&[]), Some(&next))
        .await
        .unwrap();
    assert_eq!(second.matches.len(), 1);
    assert_eq!(second.next, None);
    // A next link elsewhere is refused (never fetched).
    let e = a
        .search(
            "Patient",
            &params(&[]),
            Some("http://169.254.169.254/latest/meta-data"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, Failure::Protocol);

    // What the API cannot filter on is refused, never guessed.
    for (k, v) in [
        ("birthdate", "1967"),
        ("identifier:not", "x"),
        ("identifier", "1,2"),
        ("name", "wit"),
    ] {
        let e = a
            .search("Patient", &params(&[(k, v)]), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind, Failure::Unsupported, "{k}={v}");
    }
    // Hostile values are query values, encoded: nothing found, nothing broken.
    for v in [
        "' OR 1=1 --",
        "../../etc/passwd",
        "x&bsn=999911120",
        "Zoë 🙂",
        &"x".repeat(5000),
    ] {
        let r = a
            .search("Patient", &params(&[("family", v)]), None)
            .await
            .unwrap();
        assert!(r.matches.is_empty(), "{v:.30}");
        assert_eq!(
            a.read("Patient", &format!("utrecht-wmo.{}", "1%2F.."))
                .await
                .unwrap(),
            None
        );
    }

    // The slow endpoint: a time-out (504), not a hang.
    let started = std::time::Instant::now();
    let e = a
        .search("Practitioner", &params(&[]), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind, Failure::Timeout);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[tokio::test]
async fn wrong_credentials_and_a_missing_api() {
    let api = start_api("gemeente-geheim");
    set_token("REST_TEST_TOKEN_B", "fout");
    let a = crate::build_all(&[section(&api.base, "REST_TEST_TOKEN_B")])
        .unwrap()
        .pop()
        .unwrap();
    let e = a.search("Patient", &params(&[]), None).await.unwrap_err();
    assert_eq!(e.kind, Failure::Unauthorized);
    drop(api);
    set_token("REST_TEST_TOKEN_C", "gemeente-geheim");
    let gone = crate::build_all(&[section("http://127.0.0.1:9/api", "REST_TEST_TOKEN_C")])
        .unwrap()
        .pop()
        .unwrap();
    assert!(matches!(gone.health().await, Health::Down(_)));
    let e = gone
        .search("Patient", &params(&[]), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind, Failure::Unavailable);
    // A token variable that is not set: refused at start-up.
    assert!(crate::build_all(&[section("http://127.0.0.1:9/api", "REST_TEST_NOT_SET")]).is_err());
    // A SQL mapping (table) is not a REST mapping.
    let mut s = section("http://127.0.0.1:9/api", "REST_TEST_TOKEN_C");
    s["mappings"][0] = json!({"resource": "Patient", "table": "x", "id": "id", "fields": {}});
    assert!(crate::build_all(&[s]).is_err());
}

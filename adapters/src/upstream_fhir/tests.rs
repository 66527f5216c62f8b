use super::*;
use serde_json::json;

fn section(base: &str) -> Value {
    json!({
        "name": "antonius",
        "kind": "fhir",
        "organization": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "90000002",
                          "type": "hospital", "name": "St. Antonius"},
        "base_url": base,
        "resources": [{"type": "Patient", "search_params": ["identifier", "name"]},
                      {"type": "Observation", "search_params": ["patient", "code", "category"]}]
    })
}

#[test]
fn ids_and_references_move_into_the_gateway_namespace() {
    let base = "https://fhir.antonius.example/r4";
    let mut r = json!({
        "resourceType": "Observation", "id": "obs1",
        "subject": {"reference": "Patient/p1"},
        "performer": [{"reference": "https://fhir.antonius.example/r4/Practitioner/d1/_history/2"},
                      {"reference": "https://elsewhere.example/fhir/Practitioner/x"},
                      {"reference": "#c1"}, {"reference": "urn:uuid:1234"}],
        "contained": [{"resourceType": "Specimen", "id": "c1", "subject": {"reference": "Patient/p1"}}]
    });
    assert!(mapping::outward(&mut r, "antonius", base));
    assert_eq!(r["id"], "antonius.obs1");
    assert_eq!(r["subject"]["reference"], "Patient/antonius.p1");
    assert_eq!(
        r["performer"][0]["reference"],
        "Practitioner/antonius.d1/_history/2"
    );
    assert_eq!(
        r["performer"][1]["reference"],
        "https://elsewhere.example/fhir/Practitioner/x"
    );
    assert_eq!(r["performer"][2]["reference"], "#c1");
    assert_eq!(r["performer"][3]["reference"], "urn:uuid:1234");
    assert_eq!(r["contained"][0]["id"], "c1");
    assert_eq!(
        r["contained"][0]["subject"]["reference"],
        "Patient/antonius.p1"
    );
    assert_eq!(r["meta"]["source"], base);
    assert!(!mapping::outward(
        &mut json!({"resourceType": "Patient"}),
        "antonius",
        base
    ));
    assert!(!mapping::outward(&mut json!({"id": "x"}), "antonius", base));
    assert_eq!(
        mapping::reference_inward("Patient/antonius.p1", "antonius").as_deref(),
        Some("Patient/p1")
    );
    assert_eq!(
        mapping::reference_inward("Patient/umcu.p1", "antonius"),
        None
    );
}

#[test]
fn config_is_checked_against_the_schema() {
    let ok = section("https://fhir.antonius.example/r4");
    assert_eq!(
        crate::build_all(std::slice::from_ref(&ok)).unwrap().len(),
        1
    );
    let bad = |mutate: &dyn Fn(&mut Value), expect: &str| {
        let mut s = ok.clone();
        mutate(&mut s);
        let e = crate::build_all(&[s]).err().expect("refused").to_string();
        assert!(e.contains(expect), "{e} should name {expect}");
    };
    bad(&|s| s["name"] = json!("Has Space"), "/name");
    bad(&|s| s["base_url"] = json!("ftp://x"), "/base_url");
    bad(&|s| s["base_url"] = json!("https://x/r4/"), "/base_url");
    bad(&|s| s["timeout_ms"] = json!(0), "/timeout_ms");
    bad(&|s| s["surprise"] = json!(1), "surprise");
    bad(
        &|s| s["auth"] = json!({"kind": "smart-backend", "token_url": "https://t"}),
        "/auth",
    );
    bad(&|s| s["kind"] = json!("gopher"), "/kind");
    // Two adapters may not share a name (it is their id prefix).
    let e = crate::build_all(&[ok.clone(), ok.clone()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("one name"), "{e}");
}

#[test]
fn search_values_pointing_elsewhere_are_not_sent() {
    let a = UpstreamFhir::from_config(&section("https://fhir.antonius.example/r4")).unwrap();
    let p = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
    assert_eq!(
        a.params_inward(&p("patient", "Patient/antonius.p1")),
        Some(p("patient", "Patient/p1"))
    );
    assert_eq!(
        a.params_inward(&p("patient", "antonius.p1")),
        Some(p("patient", "p1"))
    );
    assert_eq!(a.params_inward(&p("patient", "Patient/umcu.p1")), None);
    assert_eq!(
        a.params_inward(&p("patient", "Patient/0c7e3f2a")),
        None,
        "the gateway's own"
    );
    assert_eq!(
        a.params_inward(&p("patient", "Patient/umcu.p1,Patient/antonius.p2")),
        Some(p("patient", "Patient/p2"))
    );
    assert_eq!(
        a.params_inward(&p("code", "http://loinc.org|8480-6")),
        Some(p("code", "http://loinc.org|8480-6"))
    );
    assert_eq!(
        a.params_inward(&p("name", "jansen")),
        Some(p("name", "jansen"))
    );
    assert!(a.is_own_url("https://fhir.antonius.example/r4?_getpages=1"));
    assert!(a.is_own_url("https://fhir.antonius.example/r4/Patient?page=2"));
    assert!(!a.is_own_url("https://fhir.antonius.example/r4.evil.example/x"));
    assert!(!a.is_own_url("https://evil.example/r4"));
}

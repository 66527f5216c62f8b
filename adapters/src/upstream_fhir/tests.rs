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

/// A partner server in the test: answers `Patient/p1` with an ETag and honours If-None-Match;
/// `Patient/flaky` fails with 503 `fail_first` times first; `Patient/slow` answers after 3 s.
/// Counts the requests it got.
async fn partner(fail_first: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use http_body_util::Full;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let flaky = std::sync::Arc::new(AtomicUsize::new(fail_first));
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (count, flaky) = (counted.clone(), flaky.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (count, flaky) = (count.clone(), flaky.clone());
                        async move {
                            count.fetch_add(1, Ordering::SeqCst);
                            let path = req.uri().path().to_owned();
                            let r = hyper::Response::builder()
                                .header("Content-Type", "application/fhir+json");
                            let resp = match path.as_str() {
                            "/fhir/Patient/p1" if req.headers().get("if-none-match").is_some_and(|v| v == "W/\"1\"") => {
                                r.status(304).body(Full::new(bytes::Bytes::new()))
                            }
                            "/fhir/Patient/p1" => r.header("ETag", "W/\"1\"").body(Full::new(bytes::Bytes::from(
                                r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"1"}}"#,
                            ))),
                            "/fhir/Patient/flaky" if flaky.load(Ordering::SeqCst) > 0 => {
                                flaky.fetch_sub(1, Ordering::SeqCst);
                                r.status(503).body(Full::new(bytes::Bytes::from("{\"internal\":\"secret\"}")))
                            }
                            "/fhir/Patient/flaky" => r.body(Full::new(bytes::Bytes::from(
                                r#"{"resourceType":"Patient","id":"flaky"}"#,
                            ))),
                            // A search that also answers another patient's result.
                            "/fhir/Observation" => r.body(Full::new(bytes::Bytes::from(
                                r#"{"resourceType":"Bundle","type":"searchset","entry":[
                                  {"resource":{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}},
                                  {"resource":{"resourceType":"Observation","id":"o2","subject":{"reference":"Patient/p2"}}}]}"#,
                            ))),
                            "/fhir/Patient/slow" => {
                                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                                r.body(Full::new(bytes::Bytes::from(r#"{"resourceType":"Patient","id":"slow"}"#)))
                            }
                            _ => r.status(404).body(Full::new(bytes::Bytes::new())),
                        };
                            Ok::<_, std::convert::Infallible>(resp.unwrap())
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (base, count)
}

fn adapter(base: &str, extra: Value) -> UpstreamFhir {
    let mut s = section(base);
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    UpstreamFhir::from_config(&s).unwrap()
}

#[tokio::test]
async fn stale_answers_are_revalidated_with_if_none_match() {
    use std::sync::atomic::Ordering;
    let (base, count) = partner(0).await;
    let a = adapter(&base, json!({"cache": {"fresh_ms": 0}}));
    for _ in 0..3 {
        let p = a.read("Patient", "antonius.p1").await.unwrap().unwrap();
        assert_eq!(p["id"], "antonius.p1");
    }
    let s = a.cache_stats().unwrap();
    assert_eq!((s.misses, s.revalidated, s.hits), (1, 2, 0), "{s:?}");
    assert_eq!(
        count.load(Ordering::SeqCst),
        3,
        "every read asked, two got 304"
    );
    // Fresh for a while: answered without asking.
    let a = adapter(&base, json!({"cache": {"fresh_ms": 60000}}));
    for _ in 0..3 {
        a.read("Patient", "antonius.p1").await.unwrap().unwrap();
    }
    let s = a.cache_stats().unwrap();
    assert_eq!((s.misses, s.hits), (1, 2), "{s:?}");
    assert_eq!(count.load(Ordering::SeqCst), 4);
    // No cache at all when disabled.
    let a = adapter(&base, json!({"cache": {"enabled": false}}));
    a.read("Patient", "antonius.p1").await.unwrap().unwrap();
    assert!(a.cache_stats().is_none());
    // Not found is None, not an error.
    assert!(
        a.read("Patient", "antonius.nobody")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        a.read("Patient", "umcu.p1").await.unwrap().is_none(),
        "not this backend's id"
    );
}

#[tokio::test]
async fn faults_are_retried_then_break_the_circuit_and_time_out() {
    let (base, _) = partner(1).await;
    // One 503, then fine: a retry hides it.
    let a = adapter(&base, json!({"retries": 1}));
    assert_eq!(
        a.read("Patient", "antonius.flaky").await.unwrap().unwrap()["id"],
        "antonius.flaky"
    );
    // Without retries the 503 is a 502 naming the backend, not carrying its body.
    let (base, _) = partner(5).await;
    let a = adapter(
        &base,
        json!({"retries": 0, "breaker": {"failures": 2, "open_ms": 60000}}),
    );
    let e = a.read("Patient", "antonius.flaky").await.unwrap_err();
    assert_eq!((e.status(), e.kind.clone()), (502, Failure::Status(503)));
    assert!(
        !e.to_string().contains("secret") && e.to_string().contains("antonius"),
        "{e}"
    );
    // A second fault opens the circuit: the next call is refused without asking.
    a.read("Patient", "antonius.flaky").await.unwrap_err();
    let e = a.read("Patient", "antonius.p1").await.unwrap_err();
    assert_eq!(e.kind, Failure::Unavailable);
    assert!(matches!(a.health().await, Health::Down(_)));
    // A slow backend is cut off at the time-out: 504.
    let (base, _) = partner(0).await;
    let a = adapter(&base, json!({"timeout_ms": 300, "retries": 0}));
    let started = std::time::Instant::now();
    let e = a.read("Patient", "antonius.slow").await.unwrap_err();
    assert_eq!((e.status(), e.kind.clone()), (504, Failure::Timeout));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate, all PEM, written to
/// `dir`: (ca, server cert, server key, client cert, client key) paths.
pub(crate) fn certificates(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["gateway.example".into()]);
    let files = [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ]
    .map(|f| dir.join(f));
    for (f, pem) in files.iter().zip([
        ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    ]) {
        std::fs::write(f, pem).unwrap();
    }
    files
}

/// A partner that speaks only TLS and accepts only clients with a certificate of the test CA.
async fn mtls_partner(files: &[std::path::PathBuf; 5]) -> String {
    use http_body_util::Full;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&files[0]).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&files[1]).unwrap()],
            PrivateKeyDer::from_pem_file(&files[2]).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}/fhir", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client without a certificate fails the handshake here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |_req: hyper::Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from(r#"{"resourceType":"Patient","id":"p1"}"#),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    base
}

#[tokio::test]
async fn tls_with_a_client_certificate_reaches_an_mtls_partner_and_nothing_less_does() {
    let dir = tempfile::tempdir().unwrap();
    let files = certificates(dir.path());
    let base = mtls_partner(&files).await;
    let path = |i: usize| files[i].to_str().unwrap().to_owned();
    let mtls = json!({"ca_file": path(0), "client_cert_file": path(3), "client_key_file": path(4)});
    let a = adapter(&base, json!({"tls": mtls, "retries": 0}));
    let p = a.read("Patient", "antonius.p1").await.unwrap().unwrap();
    assert_eq!(p["id"], "antonius.p1");
    // Trusting the CA but without a client certificate: the partner refuses the handshake.
    let a = adapter(&base, json!({"tls": {"ca_file": path(0)}, "retries": 0}));
    let e = a.read("Patient", "antonius.p1").await.unwrap_err();
    assert_eq!(e.kind, Failure::Unavailable, "{e:?}");
    // A client certificate but not trusting the partner's CA: the gateway refuses.
    let a = adapter(
        &base,
        json!({"tls": {"client_cert_file": path(3), "client_key_file": path(4)}, "retries": 0}),
    );
    let e = a.read("Patient", "antonius.p1").await.unwrap_err();
    assert_eq!(e.kind, Failure::Unavailable, "{e:?}");
    assert!(
        !e.to_string().contains("certificate"),
        "no TLS detail for clients: {e}"
    );
}

#[tokio::test]
async fn another_patients_data_in_a_patient_search_is_left_out() {
    let (base, _) = partner(0).await;
    let a = adapter(&base, json!({}));
    let params = vec![("patient".to_owned(), "Patient/antonius.p1".to_owned())];
    let page = a.search("Observation", &params, None).await.unwrap();
    let ids: Vec<&str> = page
        .matches
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["antonius.o1"]);
    assert_eq!(page.warnings.len(), 1, "{:?}", page.warnings);
    // Without a patient parameter both are answers.
    let page = a.search("Observation", &[], None).await.unwrap();
    assert_eq!(page.matches.len(), 2);
    assert!(page.warnings.is_empty());
}

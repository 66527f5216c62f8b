//! Limits, bad input, concurrency and shutdown, against the real binary.

mod common;

use common::{FHIR_JSON, Gateway, auth_line, client};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// 100 concurrent identical conditional creates produce exactly one resource; the rest see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_creates_make_one_resource() {
    let gw = Gateway::start();
    let c = client();
    let body = json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911168"}]}).to_string();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (c, url, body) = (c.clone(), format!("{}/Patient", gw.base), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .header("content-type", FHIR_JSON)
                .header(
                    "if-none-exist",
                    "identifier=http://fhir.nl/fhir/NamingSystem/bsn%7C999911168",
                )
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            (status, v["id"].as_str().unwrap().to_owned())
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, id) = t.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => {}
            s => panic!("unexpected status {s}"),
        }
        ids.insert(id);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    let s: Value = c
        .get(format!("{}/Patient?identifier=999911168", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["total"], 1);
}

/// Sends raw bytes and returns the status line and body (the connection is closed after).
fn raw_request(addr: &str, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or("").to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn post_raw(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{}Content-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        auth_line(),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn get_raw(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{}Connection: close\r\n\r\n",
        auth_line()
    )
    .into_bytes()
}

/// A corpus of malformed bodies, headers and URLs: each answered with an OperationOutcome and a
/// 4xx status, and the server still serves afterwards.
#[tokio::test]
async fn malformed_input_corpus_always_gets_an_operation_outcome() {
    let gw = Gateway::start();
    let deep_array = format!(
        "{{\"resourceType\":\"Patient\",\"x\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let deep_object = format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000));
    let long_id = "a".repeat(65);
    let mut corpus: Vec<(String, Vec<u8>)> = vec![
        ("truncated JSON".into(), post_raw("/fhir/Patient", br#"{"resourceType":"Patient","name":[{"fam"#)),
        ("invalid UTF-8".into(), post_raw("/fhir/Patient", b"{\"resourceType\":\"Patient\",\"id\":\"\xff\xfe\"}")),
        ("10k-deep array".into(), post_raw("/fhir/Patient", deep_array.as_bytes())),
        ("5k-deep object".into(), post_raw("/fhir/Patient", deep_object.as_bytes())),
        ("huge number".into(), post_raw("/fhir/Observation", br#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueInteger":1e999999}"#)),
        ("huge integer".into(), post_raw("/fhir/Observation", format!(r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueInteger":{}}}"#, "9".repeat(400)).as_bytes())),
        ("empty body".into(), post_raw("/fhir/Patient", b"")),
        ("JSON array".into(), post_raw("/fhir/Patient", b"[]")),
        ("JSON string".into(), post_raw("/fhir/Patient", b"\"Patient\"")),
        ("no resourceType".into(), post_raw("/fhir/Patient", b"{}")),
        ("null bytes".into(), post_raw("/fhir/Patient", b"{\"resourceType\":\"Patient\"\x00}")),
        ("BOM".into(), post_raw("/fhir/Patient", b"\xef\xbb\xbf{\"resourceType\":\"Patient\"}")),
        ("duplicate keys".into(), post_raw("/fhir/Patient", br#"{"resourceType":"Patient","resourceType":"Observation"}"#)),
        ("path traversal".into(), get_raw("/fhir/Patient/../../etc/passwd")),
        ("encoded traversal".into(), get_raw("/fhir/Patient/..%2F..%2Fetc%2Fpasswd")),
        ("id over 64".into(), get_raw(&format!("/fhir/Patient/{long_id}"))),
        ("id with quote".into(), get_raw("/fhir/Patient/a'b")),
        ("id with percent-encoded NUL".into(), get_raw("/fhir/Patient/a%00b")),
        ("bad version".into(), get_raw("/fhir/Patient/a/_history/x")),
        ("negative count".into(), get_raw("/fhir/Patient?_count=-1")),
        ("bad _since".into(), get_raw("/fhir/_history?_since=yesterday")),
        ("bad cursor".into(), get_raw("/fhir/_history?_cursor=abc")),
        ("bad _pretty".into(), get_raw("/fhir/metadata?_pretty=maybe")),
        ("unknown type".into(), get_raw("/fhir/NotAType")),
        ("unknown operation".into(), get_raw("/fhir/Patient/$nothing")),
        ("invalid utf-8 in query".into(), get_raw("/fhir/Patient?identifier=%ff%fe")),
        ("bad If-Match".into(), b"PUT /fhir/Patient/a HTTP/1.1\r\nHost: x\r\nIf-Match: nonsense\r\nContent-Type: application/fhir+json\r\nContent-Length: 36\r\nConnection: close\r\n\r\n{\"resourceType\":\"Patient\",\"id\":\"a\"}\n".to_vec()),
        ("bad content type".into(), b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".to_vec()),
        ("transaction with an entry without a request".into(), post_raw("/fhir", br#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient"}}]}"#)),
        ("bundle of the wrong type".into(), post_raw("/fhir", br#"{"resourceType":"Bundle","type":"collection"}"#)),
        ("hostile Host header".into(), format!("GET /fhir/Patient HTTP/1.1\r\nHost: evil\"><script>\r\n{}Connection: close\r\n\r\n", auth_line()).into_bytes()),
    ];
    // Many invalid bodies against many types.
    for ty in [
        "Observation",
        "Encounter",
        "Bundle",
        "Questionnaire",
        "Parameters",
    ] {
        corpus.push((
            format!("{ty} with wrong element type"),
            post_raw(
                &format!("/fhir/{ty}"),
                format!(r#"{{"resourceType":"{ty}","id":5,"meta":"x"}}"#).as_bytes(),
            ),
        ));
    }
    for (name, request) in &corpus {
        let (status, body) = raw_request(&gw.addr, request);
        let code: u16 = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if name == "hostile Host header" {
            // Served, but the hostile host never reaches a link.
            assert_eq!(code, 200, "{name}: {status}");
            assert!(!body.contains("script"), "{name}: {body}");
            continue;
        }
        assert!(
            (400..500).contains(&code) || code == 501,
            "{name}: {status}"
        );
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{name}: body not JSON ({e}): {body}"));
        assert_eq!(v["resourceType"], "OperationOutcome", "{name}");
    }
    // Still alive and correct.
    let r = client()
        .get(format!("{}/metadata", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn body_size_limit_answers_413() {
    let gw = Gateway::start_with("[limits]\nmax_body_bytes = 2048\n");
    let big = json!({"resourceType": "Basic", "code": {"text": "x".repeat(4096)}}).to_string();
    // with Content-Length
    let r = client()
        .post(format!("{}/Basic", gw.base))
        .header("content-type", FHIR_JSON)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    // chunked, no Content-Length: caught while reading
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = b"POST /fhir/Basic HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in big.as_bytes().chunks(500) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // under the limit is fine
    let small = json!({"resourceType": "Basic", "code": {"text": "x"}}).to_string();
    let r = client()
        .post(format!("{}/Basic", gw.base))
        .header("content-type", FHIR_JSON)
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn json_depth_limit_is_configurable() {
    let gw = Gateway::start_with("[limits]\nmax_json_depth = 8\n");
    let c = client();
    // depth 6: fine
    let ok = json!({"resourceType": "Patient", "name": [{"given": ["a"]}]}).to_string();
    let r = c
        .post(format!("{}/Patient", gw.base))
        .header("content-type", FHIR_JSON)
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // depth 9: refused before parsing
    let deep = json!({"resourceType": "Patient", "extension": [{"url": "http://x", "extension": [{"url": "http://y", "extension": [{"url": "http://z", "valueCodeableConcept": {"coding": [{"code": "c"}]}}]}]}]}).to_string();
    let r = c
        .post(format!("{}/Patient", gw.base))
        .header("content-type", FHIR_JSON)
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let oo: Value = r.json().await.unwrap();
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("deeper than 8")
    );
}

#[tokio::test]
async fn id_length_and_url_length_limits() {
    let gw = Gateway::start_with("[limits]\nmax_id_length = 10\nmax_url_bytes = 300\n");
    let c = client();
    let r = c
        .get(format!("{}/Patient/{}", gw.base, "a".repeat(10)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .get(format!("{}/Patient/{}", gw.base, "a".repeat(11)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c
        .get(format!("{}/Patient?_id={}", gw.base, "a".repeat(400)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
}

/// A client that opens a connection and never finishes its request headers is disconnected after
/// the header-read time-out (30 s by default; 1 s here).
#[test]
fn slow_headers_are_disconnected() {
    let gw = Gateway::start_with("[limits]\nheader_read_timeout_ms = 1000\n");
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // Nothing was answered: the request never completed.
    assert!(
        buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
}

/// An idle keep-alive connection is closed after the idle time-out.
#[test]
fn idle_connections_are_closed() {
    let gw =
        Gateway::start_with("[limits]\nidle_timeout_ms = 1000\nheader_read_timeout_ms = 30000\n");
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

/// A request that takes longer than the request time-out (here: a body that trickles in) is
/// answered 503 with an OperationOutcome.
#[test]
fn request_timeout_answers_503() {
    let gw = Gateway::start_with("[limits]\nrequest_timeout_ms = 500\n");
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /fhir/Basic HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{\"resourceType\":").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("OperationOutcome") && text.contains("timeout"),
        "{text}"
    );
}

/// SIGTERM: the server stops accepting, finishes the request in flight, then exits 0.
#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let mut gw = Gateway::start();
    let body = br#"{"resourceType":"Basic","code":{"text":"in flight"}}"#;
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /fhir/Basic HTTP/1.1\r\nHost: x\r\n{}Content-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
        auth_line(),
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The request is in flight; ask the server to stop.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused while the old one is served.
    assert!(
        TcpStream::connect(&gw.addr).is_err(),
        "listener should be closed"
    );
    s.write_all(&body[10..]).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    drop(s);
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = gw.terminate();
}

/// Written data survives a restart (durable before the response).
#[tokio::test]
async fn data_survives_restart() {
    let gw = Gateway::start();
    let r = client()
        .post(format!("{}/Basic", gw.base))
        .header("content-type", FHIR_JSON)
        .body(json!({"resourceType": "Basic", "code": {"text": "durable"}}).to_string())
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let dir = gw.stop_keep_data();
    let gw = Gateway::start_in(dir, "");
    let r = client()
        .get(format!("{}/Basic/{}", gw.base, v["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again, v);
}

/// A bad config is refused at start with the JSON pointer of each error.
#[test]
fn bad_config_is_refused_with_pointers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = 8080\n[limits]\nmax_body_bytes = -1\nno_such_key = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/listen"), "{err}");
    assert!(err.contains("/limits/max_body_bytes"), "{err}");
    assert!(err.contains("no_such_key"), "{err}");
}

/// One structured log line per request, with method, path, status and duration.
#[tokio::test]
async fn one_json_log_line_per_request() {
    let gw = Gateway::start_with("log_format = \"json\"\n");
    let c = client();
    c.get(format!("{}/metadata", gw.base)).send().await.unwrap();
    c.get(format!("{}/Patient/nope", gw.base))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let access: Vec<Value> = gw
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "gateway::access")
        .collect();
    let fhir: Vec<&Value> = access
        .iter()
        .filter(|v| v["path"].as_str().unwrap_or("").starts_with("/fhir"))
        .collect();
    assert_eq!(fhir.len(), 2, "{access:?}");
    assert_eq!(fhir[0]["status"], 200);
    assert_eq!(fhir[0]["method"], "GET");
    assert_eq!(fhir[1]["status"], 404);
    assert!(fhir[1]["duration_ms"].as_f64().unwrap() >= 0.0);
}

//! Authentication (JWT from trusted issuers) and SMART v2 scopes, against the real binary.

mod common;

use common::{FHIR_JSON, Gateway, client, client_with, token};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

const DEMO_AUD: &str = "https://demo.healthhub-utrecht.nl/fhir";
const DEMO_ISS: &str = "https://demo.healthhub-utrecht.nl/issuer/umcu";
const DEMO_KEY: &str = include_str!("../src/policy/demo/demo-issuer.key.pem");

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A token with the demo key and arbitrary claims.
fn signed(claims: Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("healthhub-demo-1".into());
    jsonwebtoken::encode(
        &h,
        &claims,
        &EncodingKey::from_ec_pem(DEMO_KEY.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": DEMO_ISS, "sub": "t", "aud": DEMO_AUD, "exp": now() + 600, "scope": "system/*.cruds"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

async fn status_with(gw: &Gateway, token: &str, path: &str) -> (StatusCode, String) {
    let r = common::anon()
        .get(format!("{}/{path}", gw.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status(), challenge)
}

#[tokio::test]
async fn deny_by_default_and_public_discovery() {
    let gw = Gateway::start();
    let anon = common::anon();
    let r = anon
        .get(format!("{}/Patient", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"fhir\"");
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    for path in ["Patient/x", "_history", "Patient/_history"] {
        let r = anon
            .get(format!("{}/{path}", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let r = anon
        .post(format!("{}/Patient", gw.base))
        .header("content-type", FHIR_JSON)
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let cap: Value = anon
        .get(format!("{}/metadata", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cap["rest"][0]["security"]["service"][0]["coding"][0]["code"],
        "SMART-on-FHIR"
    );
    assert_eq!(
        cap["rest"][0]["security"]["extension"][0]["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    let smart: Value = anon
        .get(format!("{}/.well-known/smart-configuration", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for field in [
        "token_endpoint",
        "grant_types_supported",
        "capabilities",
        "code_challenge_methods_supported",
    ] {
        assert!(!smart[field].is_null(), "{field}");
    }
    assert!(
        smart["code_challenge_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("S256"))
    );
    assert!(
        smart["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("permission-v2"))
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    let gw = Gateway::start();
    let cases = [
        ("expired", signed(claims(json!({"exp": now() - 600})))),
        ("not yet valid", signed(claims(json!({"nbf": now() + 600})))),
        (
            "wrong audience",
            signed(claims(json!({"aud": "https://elsewhere/fhir"}))),
        ),
        (
            "untrusted issuer",
            signed(claims(json!({"iss": "https://evil.example/issuer"}))),
        ),
        (
            "no exp",
            signed(json!({"iss": DEMO_ISS, "aud": DEMO_AUD, "scope": "system/*.cruds"})),
        ),
        ("garbage", "not.a.token".to_owned()),
        ("tampered", {
            let t = signed(claims(json!({"scope": "system/Patient.r"})));
            let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
            let payload = claims(json!({"scope": "system/*.cruds"}));
            parts[1] = base64url(payload.to_string().as_bytes());
            parts.join(".")
        }),
        (
            "alg none",
            format!(
                "{}.{}.",
                base64url(br#"{"alg":"none","typ":"JWT"}"#),
                base64url(claims(json!({})).to_string().as_bytes())
            ),
        ),
        ("HS256 with the public key as secret", {
            let jwks = gateway::policy::demo::jwks();
            let secret = serde_json::to_vec(&jwks.keys[0]).unwrap();
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("healthhub-demo-1".into());
            jsonwebtoken::encode(&h, &claims(json!({})), &EncodingKey::from_secret(&secret))
                .unwrap()
        }),
        ("unknown kid", {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some("rotated-away".into());
            jsonwebtoken::encode(
                &h,
                &claims(json!({})),
                &EncodingKey::from_ec_pem(DEMO_KEY.as_bytes()).unwrap(),
            )
            .unwrap()
        }),
    ];
    for (name, t) in &cases {
        let (status, challenge) = status_with(&gw, t, "Patient").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
        assert!(
            challenge.starts_with("Bearer realm=\"fhir\", error=\"invalid_token\""),
            "{name}: {challenge}"
        );
    }
    let r = common::anon()
        .get(format!("{}/Patient", gw.base))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Within the leeway (30 s) an expired token still counts; a good one works.
    let (status, _) = status_with(&gw, &signed(claims(json!({"exp": now() - 5}))), "Patient").await;
    assert_eq!(status, StatusCode::OK);
}

fn base64url(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn the_demo_config_is_not_trusted_by_a_production_config() {
    // A config with its own issuer and no `demo = true`: the demo tokens are refused.
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let cfg = format!(
        "[auth]\naudience = [\"https://gw.example/fhir\"]\n[[auth.issuers]]\niss = \"https://idp.example\"\njwks_file = \"{}\"\n\
         organization = {{ system = \"http://fhir.nl/fhir/NamingSystem/ura\", value = \"1\", type = \"hospital\", name = \"X\" }}\n",
        jwks.display()
    );
    let gw = Gateway::start_with(&cfg);
    let (status, _) = status_with(&gw, &common::admin_token(), "Patient").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// An issuer with an RS256 key in a JWKS file, rotated while the gateway runs.
#[tokio::test]
async fn jwks_file_issuer_with_rsa_and_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let rsa_key = |name: &str| -> String {
        let path = dir.path().join(name);
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl genpkey");
        std::fs::read_to_string(path).unwrap()
    };
    let jwk_of = |pem: &str, kid: &str| {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
            &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            Algorithm::RS256,
        )
        .unwrap();
        jwk.common.key_id = Some(kid.into());
        jwk
    };
    let first = rsa_key("k1.pem");
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(
        &jwks_path,
        serde_json::to_string(&json!({"keys": [jwk_of(&first, "k1")]})).unwrap(),
    )
    .unwrap();
    let cfg = format!(
        "[auth]\naudience = [\"https://gw.example/fhir\"]\njwks_min_refresh_secs = 1\n[[auth.issuers]]\niss = \"https://idp.antonius.example\"\njwks_file = \"{}\"\n\
         organization = {{ system = \"http://fhir.nl/fhir/NamingSystem/ura\", value = \"12345678\", type = \"hospital\", name = \"Antonius\" }}\n",
        jwks_path.display()
    );
    let gw = Gateway::start_with(&cfg);
    let rs_token = |pem: &str, kid: &str, alg: Algorithm| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        let c = json!({"iss": "https://idp.antonius.example", "aud": "https://gw.example/fhir", "exp": now() + 600, "scope": "system/Patient.rs"});
        jsonwebtoken::encode(&h, &c, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
    };
    assert_eq!(
        status_with(&gw, &rs_token(&first, "k1", Algorithm::RS256), "Patient")
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        status_with(&gw, &rs_token(&first, "k1", Algorithm::RS384), "Patient")
            .await
            .0,
        StatusCode::OK
    );
    // Rotation: a new key appears in the JWKS; its first token triggers a reload.
    let second = rsa_key("k2.pem");
    std::fs::write(
        &jwks_path,
        serde_json::to_string(&json!({"keys": [jwk_of(&second, "k2")]})).unwrap(),
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        status_with(&gw, &rs_token(&second, "k2", Algorithm::RS256), "Patient")
            .await
            .0,
        StatusCode::OK
    );
    // A token signed by the first key but claiming the second's kid fails the signature.
    assert_eq!(
        status_with(&gw, &rs_token(&first, "k2", Algorithm::RS256), "Patient")
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn scopes_decide_types_and_interactions() {
    let gw = Gateway::start();
    let admin = client();
    let b = &gw.base;
    let p: Value = admin
        .post(format!("{b}/Patient"))
        .header("content-type", FHIR_JSON)
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = p["id"].as_str().unwrap();
    let o: Value = admin.post(format!("{b}/Observation")).header("content-type", FHIR_JSON)
        .body(json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":format!("Patient/{pid}")}}).to_string())
        .send().await.unwrap().json().await.unwrap();
    let oid = o["id"].as_str().unwrap();

    let reader = client_with(&token("user/Patient.rs", "gp", None));
    assert_eq!(
        reader
            .get(format!("{b}/Patient/{pid}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        reader
            .get(format!("{b}/Patient"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        reader
            .get(format!("{b}/Observation/{oid}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        reader
            .get(format!("{b}/Observation"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    let r = reader
        .post(format!("{b}/Patient"))
        .header("content-type", FHIR_JSON)
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a write outside scope is 403"
    );
    assert_eq!(
        reader
            .delete(format!("{b}/Patient/{pid}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        reader
            .get(format!("{b}/_history"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );

    // r without s: read yes, search no; v1 aliases.
    let read_only = client_with(&token("system/Patient.r", "gp", None));
    assert_eq!(
        read_only
            .get(format!("{b}/Patient/{pid}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        read_only
            .get(format!("{b}/Patient"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    let v1 = client_with(&token("user/Observation.read", "gp", None));
    assert_eq!(
        v1.get(format!("{b}/Observation"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let writer = client_with(&token("user/Observation.write", "gp", None));
    let r = writer
        .post(format!("{b}/Observation"))
        .header("content-type", FHIR_JSON)
        .body(
            json!({"resourceType":"Observation","status":"final","code":{"text":"y"}}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Created but not readable under this scope: the body is withheld as not found.
    let wildcard = client_with(&token("system/*.rs", "gp", None));
    assert_eq!(
        wildcard
            .get(format!("{b}/_history"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn scope_constraints_filter_searches_and_reads() {
    let gw = Gateway::start();
    let admin = client();
    let b = &gw.base;
    let cat = |code: &str| json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": code}]}]);
    let mut ids = Vec::new();
    for code in ["laboratory", "vital-signs", "laboratory"] {
        let o: Value = admin.post(format!("{b}/Observation")).header("content-type", FHIR_JSON)
            .body(json!({"resourceType":"Observation","status":"final","category":cat(code),"code":{"text":code}}).to_string())
            .send().await.unwrap().json().await.unwrap();
        ids.push(o["id"].as_str().unwrap().to_owned());
    }
    let labs = client_with(&token(
        "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        "gp",
        None,
    ));
    let s: Value = labs
        .get(format!("{b}/Observation"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = s["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["category"][0]["coding"][0]["code"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        got,
        vec!["laboratory", "laboratory"],
        "filtered, not an error"
    );
    assert!(
        s.get("total").is_none(),
        "the total would count what was withheld"
    );
    assert_eq!(
        labs.get(format!("{b}/Observation/{}", ids[0]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        labs.get(format!("{b}/Observation/{}", ids[1]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let h: Value = labs
        .get(format!("{b}/Observation/{}/_history", ids[1]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        h.get("entry").is_none(),
        "history entries pass the same decision"
    );
}

#[tokio::test]
async fn patient_scopes_reach_only_the_patients_own_record() {
    let gw = Gateway::start();
    let admin = client();
    let b = &gw.base;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let p: Value = admin
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
    let me = client_with(&token("patient/Patient.rs", "gp", Some(&ids[0])));
    assert_eq!(
        me.get(format!("{b}/Patient/{}", ids[0]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        me.get(format!("{b}/Patient/{}", ids[1]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let s: Value = me
        .get(format!("{b}/Patient"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = s["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[0].as_str()]);
    // A patient/ scope without the patient launch context grants nothing.
    let no_ctx = client_with(&token("patient/Patient.rs", "gp", None));
    assert_eq!(
        no_ctx
            .get(format!("{b}/Patient/{}", ids[0]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    // Patient scopes do not write (yet).
    let r = me
        .post(format!("{b}/Patient"))
        .header("content-type", FHIR_JSON)
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[test]
fn the_token_command_prints_a_token_the_demo_trusts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "token",
            "--scope",
            "user/Patient.rs",
            "--org",
            "antonius",
            "--patient",
            "p1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let t = String::from_utf8(out.stdout).unwrap();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(t.trim()).unwrap();
    assert_eq!(
        claims["iss"],
        "https://demo.healthhub-utrecht.nl/issuer/antonius"
    );
    assert_eq!(claims["scope"], "user/Patient.rs");
    assert_eq!(claims["patient"], "p1");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["token", "--scope", "x", "--org", "nowhere"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn patient_scopes_reach_the_patients_compartment() {
    let gw = Gateway::start();
    let admin = client();
    let b = &gw.base;
    let mut patients = Vec::new();
    for _ in 0..2 {
        let p: Value = admin
            .post(format!("{b}/Patient"))
            .header("content-type", FHIR_JSON)
            .body(r#"{"resourceType":"Patient"}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        patients.push(p["id"].as_str().unwrap().to_owned());
    }
    let mut obs = Vec::new();
    for (i, p) in [&patients[0], &patients[0], &patients[1]]
        .iter()
        .enumerate()
    {
        let o: Value = admin.post(format!("{b}/Observation")).header("content-type", FHIR_JSON)
            .body(json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("o{i}")}, "subject": {"reference": format!("Patient/{p}")}}).to_string())
            .send().await.unwrap().json().await.unwrap();
        obs.push(o["id"].as_str().unwrap().to_owned());
    }
    // The holding hospital's patient app (consent is not in play: the data is its own).
    let me = client_with(&token(
        "patient/Observation.rs patient/Patient.r",
        "umcu",
        Some(&patients[0]),
    ));
    let s: Value = me
        .get(format!("{b}/Observation"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        s["total"], 2,
        "restricted in the store, so the total is exact: {s}"
    );
    let got: Vec<&str> = s["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(got.contains(&obs[0].as_str()) && got.contains(&obs[1].as_str()));
    assert_eq!(
        me.get(format!("{b}/Observation/{}", obs[2]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        me.get(format!("{b}/Observation/{}", obs[0]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        me.get(format!("{b}/Patient/{}", patients[1]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

/// An issuer whose JWKS is served over HTTP (a test server on loopback), and one whose JWKS URL
/// does not answer: its tokens are refused, others still work.
#[tokio::test]
async fn jwks_url_issuer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let jwks = serde_json::to_string(&gateway::policy::demo::jwks()).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let dead = common::free_port();
    let cfg = format!(
        "[auth]\naudience = [\"https://gw.example/fhir\"]\n\
         [[auth.issuers]]\niss = \"https://idp.served.example\"\njwks_url = \"http://127.0.0.1:{port}/jwks.json\"\n\
         organization = {{ system = \"http://fhir.nl/fhir/NamingSystem/ura\", value = \"2\", type = \"gp\", name = \"Served\" }}\n\
         [[auth.issuers]]\niss = \"https://idp.down.example\"\njwks_url = \"http://127.0.0.1:{dead}/jwks.json\"\n\
         organization = {{ system = \"http://fhir.nl/fhir/NamingSystem/ura\", value = \"3\", type = \"gp\", name = \"Down\" }}\n"
    );
    let gw = Gateway::start_with(&cfg);
    let t = |iss: &str| {
        signed(
            json!({"iss": iss, "aud": "https://gw.example/fhir", "exp": now() + 600, "scope": "system/Patient.rs"}),
        )
    };
    assert_eq!(
        status_with(&gw, &t("https://idp.served.example"), "Patient")
            .await
            .0,
        StatusCode::OK
    );
    let (status, challenge) = status_with(&gw, &t("https://idp.down.example"), "Patient").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert_eq!(
        status_with(&gw, &t("https://idp.served.example"), "Patient")
            .await
            .0,
        StatusCode::OK
    );
}

/// A verified token is cached, but its expiry is checked on every use.
#[tokio::test]
async fn a_cached_token_still_expires() {
    let gw = Gateway::start_with("[auth]\ndemo = true\nleeway_secs = 0\n");
    let t = signed(claims(json!({"exp": now() + 2})));
    assert_eq!(status_with(&gw, &t, "Patient").await.0, StatusCode::OK);
    assert_eq!(
        status_with(&gw, &t, "Patient").await.0,
        StatusCode::OK,
        "served from the cache"
    );
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let (status, challenge) = status_with(&gw, &t, "Patient").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.contains("expired"), "{challenge}");
}

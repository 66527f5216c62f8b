//! `gateway demo`: the whole idea in one minute. One process runs
//! - St. Antonius' own FHIR server (a second gateway instance with its own store) and its SMART
//!   authorization server (client_credentials with a private_key_jwt client assertion, verified
//!   against the demo key's public half);
//! - the regional gateway, with St. Antonius behind the upstream-FHIR adapter, a care home's
//!   client record (SQLite) behind the SQL adapter, an MLLP listener and the iWmo/iJw inbox;
//!
//! then loads St. Antonius' records, replays UMC Utrecht's HL7 v2 feed into the listener over
//! real MLLP, delivers Gemeente Utrecht's allocations (WMO301, JW301) to the inbox, records the
//! patient's consent, and prints demo tokens (hospital clinician, GP,
//! municipal app, the patient) with requests that show what each may and may not see.
//!
//! Everything here is demo data: fictitious organisations, test BSNs that pass the 11-proof,
//! and tokens signed with the published demo key that only the demo config trusts.

use crate::app::App;
use crate::config::Config;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the demo listens.
#[derive(Debug, Clone)]
pub struct Ports {
    pub fhir: u16,
    pub partner: u16,
    pub token: u16,
    pub mllp: u16,
}

const BSN: &str = "999911120";
const CLIENT_ID: &str = "healthhub-gateway-demo";
const DEMO_KEY: &str = include_str!("policy/demo/demo-issuer.key.pem");

/// UMC Utrecht's feed: the patient registered at the outpatient clinic, then a lab result.
const UMCU_FEED: [&str; 2] = [
    "MSH|^~\\&|HIX|UMCU|GATEWAY|HHU|20261120091500||ADT^A04^ADT_A01|DEMO-UMCU-1|P|2.5|||AL|NE||8859/1\r\
     EVN|A04|20261120091500\r\
     PID|1||999911120^^^NLMINBIZA^NNNLD~7012345^^^UMCU^PI||Jansen&&Jansen^Anna^^^^^L||19800517|F|||Heidelberglaan 100^^Utrecht^^3584 CX^NL^H\r\
     PV1|1|O|POLI-INT^^^UMCU||||12345^de Vries^K|||INT||||1|||12345^de Vries^K|OP|UMCU-V-1001\r",
    "MSH|^~\\&|GLIMS|UMCU|GATEWAY|HHU|20261120103000||ORU^R01^ORU_R01|DEMO-UMCU-2|P|2.5|||AL|NE||8859/1\r\
     PID|1||999911120^^^NLMINBIZA^NNNLD~7012345^^^UMCU^PI||Jansen^Anna^^^^^L||19800517|F\r\
     OBR|1|UMCU-ORD-1|UMCU-LAB-1|2345-7^Glucose [Mass/volume] in Serum or Plasma^LN|||20261120093000||||||||||||||||CH|F\r\
     OBX|1|NM|2345-7^Glucose [Mass/volume] in Serum or Plasma^LN||112|mg/dL^mg/dL^UCUM|70-99|H|||F|||20261120093000\r",
];

/// St. Antonius' own records of the same person (its own number, the same BSN), with a result
/// from its cardiology outpatient clinic.
fn antonius_records() -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7b1c2e44-6a3f-4e0e-9d5b-3f2f4c1a0001",
         "resource": {"resourceType": "Patient",
            "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": BSN},
                           {"system": "https://st-antonius.example/patient", "value": "Z445566"}],
            "name": [{"family": "Jansen", "given": ["Anna"]}], "gender": "female", "birthDate": "1980-05-17"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2093-3", "display": "Cholesterol [Mass/volume] in Serum or Plasma"}]},
            "subject": {"reference": "urn:uuid:7b1c2e44-6a3f-4e0e-9d5b-3f2f4c1a0001"},
            "effectiveDateTime": "2026-11-18T08:30:00+01:00",
            "valueQuantity": {"value": 212, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]})
}

/// The person's consent, recorded at UMC Utrecht: hospitals and their GP may see their data
/// (every organisation's, for one person by BSN); nobody else. Municipalities never see
/// medical data (the region's rule), whatever a consent says.
fn consent() -> Value {
    let to = |kind: &str| {
        json!({"reference": {"identifier": {
            "system": crate::policy::consent::ORG_TYPE_SYSTEM, "value": kind}}})
    };
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient?identifier=https://healthhub-utrecht.nl/fhir/NamingSystem/v2/umcu/pi|7012345"},
            "dateTime": "2026-11-20T09:00:00+01:00",
            "policy": [{"uri": "https://healthhub-utrecht.nl/consent-policy"}],
            "provision": {"type": "deny", "provision": [
                {"type": "permit", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}, "reference": to("hospital")["reference"]}]},
                {"type": "permit", "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}, "reference": to("gp")["reference"]}]}
            ]}},
         "request": {"method": "POST", "url": "Consent"}}
    ]})
}

fn adapter(partner: u16, token: u16, key: &Path) -> Value {
    json!({
        "name": "antonius",
        "kind": "fhir",
        "base_url": format!("http://127.0.0.1:{partner}/fhir"),
        "organization": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "90000002",
                         "type": "hospital", "name": "St. Antonius (demo)"},
        "resources": [
            {"type": "Patient", "search_params": ["identifier", "name", "_id"]},
            {"type": "Observation", "search_params": ["patient", "subject", "category", "code"]}
        ],
        "auth": {"kind": "smart-backend", "token_url": format!("http://127.0.0.1:{token}/token"),
                 "client_id": CLIENT_ID, "private_key_file": key.display().to_string(),
                 "algorithm": "ES256", "scope": "system/*.rs"}
    })
}

fn org(short: &str) -> crate::config::Organization {
    crate::policy::demo::organizations()
        .into_iter()
        .find(|(s, _)| *s == short)
        .map(|(_, o)| o)
        .expect("a demo organisation")
}

fn mint(org: &str, scope: &str, patient: Option<&str>, fhir_user: Option<&str>) -> String {
    crate::policy::demo::mint(&crate::policy::demo::TokenRequest {
        org,
        scope,
        patient,
        fhir_user,
        purpose_of_use: None,
        subject: None,
        ttl_secs: 8 * 3600,
    })
    .expect("a demo token")
}

async fn bind(port: u16) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))
}

/// Starts the demo region, prints what to try, and serves until Ctrl-C.
pub async fn run(data: PathBuf, ports: Ports) -> Result<(), String> {
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    }
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let shutdown = Arc::new(tokio::sync::Notify::new());

    // St. Antonius: its own server and authorization server.
    let mut partner_cfg = Config::demo();
    partner_cfg.data_dir = data.join("st-antonius");
    partner_cfg.listen = format!("127.0.0.1:{}", ports.partner);
    let partner = App::build(partner_cfg)
        .await
        .map_err(|e| e.log_detail())?
        .share();
    serve_fhir(partner.clone(), bind(ports.partner).await?, &shutdown);
    let token_url = format!("http://127.0.0.1:{}/token", ports.token);
    tokio::spawn(token_endpoint(
        bind(ports.token).await?,
        token_url,
        CLIENT_ID.into(),
        Default::default(),
    ));
    crate::submit::bundle(
        &partner,
        &crate::policy::local_operator(org("antonius")),
        antonius_records(),
        "demo",
    )
    .await
    .map_err(|e| e.log_detail())?;

    // The regional gateway, St. Antonius behind its adapter, the MLLP listener.
    let key = data.join("gateway-client.key.pem");
    std::fs::write(&key, DEMO_KEY).map_err(|e| e.to_string())?;
    let mut cfg = Config::demo();
    cfg.data_dir = data.join("gateway");
    cfg.listen = format!("127.0.0.1:{}", ports.fhir);
    cfg.adapters = vec![adapter(ports.partner, ports.token, &key)];
    cfg.mllp.listen = Some(format!("127.0.0.1:{}", ports.mllp));
    // Zorggroep Utrecht ouderenzorg's client record behind the SQL adapter, and Gemeente
    // Utrecht's allocations into the iWmo/iJw inbox.
    cfg.adapters
        .push(crate::demo_social::care_home(&data).await?);
    cfg.istandaarden.municipalities.insert(
        crate::demo_social::MUNICIPALITY_CODE.into(),
        crate::demo_social::municipality(),
    );
    let app = App::build(cfg).await.map_err(|e| e.log_detail())?.share();
    crate::feed::start(&app, bind(ports.mllp).await?)?;
    serve_fhir(app.clone(), bind(ports.fhir).await?, &shutdown);

    // UMC Utrecht's feed, over MLLP as its interface engine would send it.
    let mut mllp = tokio::net::TcpStream::connect(("127.0.0.1", ports.mllp))
        .await
        .map_err(|e| e.to_string())?;
    for message in UMCU_FEED {
        let ack = send_mllp(&mut mllp, message.as_bytes()).await?;
        if !ack.contains("MSA|AA|") {
            return Err(format!("the demo feed was not accepted: {ack}"));
        }
    }
    crate::demo_social::deliver(&app).await?;
    crate::submit::bundle(
        &app,
        &crate::policy::local_operator(org("umcu")),
        consent(),
        "demo",
    )
    .await
    .map_err(|e| e.log_detail())?;

    let base = format!("http://127.0.0.1:{}/fhir", ports.fhir);
    let http = reqwest::Client::new();
    let admin = mint("umcu", "system/*.rs", None, None);
    let found: Value = http
        .get(format!(
            "{base}/Patient?identifier=https://healthhub-utrecht.nl/fhir/NamingSystem/v2/umcu/pi|7012345"
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let patient = found["entry"][0]["resource"]["id"]
        .as_str()
        .ok_or("the demo patient was not found")?
        .to_owned();
    print_guide(&http, &base, &patient, &ports).await;
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    shutdown.notify_waiters();
    Ok(())
}

fn serve_fhir(app: Arc<App>, listener: tokio::net::TcpListener, stop: &Arc<tokio::sync::Notify>) {
    let stop = stop.clone();
    tokio::spawn(async move {
        crate::server::serve(app, listener, None, async move { stop.notified().await }).await;
    });
}

/// One framed message out, its framed ACK back.
async fn send_mllp(s: &mut tokio::net::TcpStream, message: &[u8]) -> Result<String, String> {
    let mut frame = vec![adapters::hl7v2::source::START];
    frame.extend_from_slice(message);
    frame.extend_from_slice(&adapters::hl7v2::source::END);
    s.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(&adapters::hl7v2::source::END) {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the MLLP listener closed the connection".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// The tokens, and the same request made with each, with what came back.
async fn print_guide(http: &reqwest::Client, base: &str, patient: &str, ports: &Ports) {
    let roles = [
        (
            "UMC Utrecht clinician",
            mint(
                "umcu",
                "user/*.rs",
                None,
                Some("Practitioner/demo-de-vries"),
            ),
        ),
        (
            "GP (Huisartsenpraktijk Lombok)",
            mint("gp", "user/*.rs", None, Some("Practitioner/demo-gp")),
        ),
        (
            "elderly care (VVT): its own",
            mint("vvt", "user/*.rs", None, None),
        ),
        (
            "municipal app (Utrecht, Wmo)",
            mint("utrecht", "user/*.rs", None, None),
        ),
        (
            "the patient's own app",
            mint(
                "umcu",
                "patient/*.rs",
                Some(patient),
                Some(&format!("Patient/{patient}")),
            ),
        ),
    ];
    let query = format!("Observation?patient=Patient/{patient}");
    println!("\nHealth Hub Utrecht demo region\n");
    println!("  regional gateway     {base}");
    println!(
        "  St. Antonius server  http://127.0.0.1:{}/fhir (behind the gateway as antonius.*)",
        ports.partner
    );
    println!(
        "  MLLP listener        127.0.0.1:{} (UMC Utrecht's feed was replayed into it)",
        ports.mllp
    );
    println!(
        "\nOne person (BSN {BSN}) with a record at UMC Utrecht (Patient/{patient}, from the HL7 v2 feed),"
    );
    println!(
        "one at St. Antonius (its own server) and one at the care home (its own SQL database), results"
    );
    println!(
        "at each, and a consent recorded at UMC Utrecht that lets hospitals and the GP see their data."
    );
    println!("The same request with five tokens:\n");
    println!("  GET {base}/{query}\n");
    for (who, token) in &roles {
        let summary = summarize(http, &format!("{base}/{query}"), token, |r| {
            format!(
                "{} ({})",
                r["code"]["coding"][0]["display"].as_str().unwrap_or("?"),
                match r["id"].as_str().unwrap_or("").split_once('.') {
                    Some(("antonius", _)) => "St. Antonius",
                    Some(("zorggroep", _)) => "care home",
                    _ => "UMC Utrecht",
                }
            )
        })
        .await;
        println!("  {who:<32} {summary}");
    }
    social_domain(http, base).await;
    println!("\nTry it (tokens are valid for 8 hours):\n");
    for (who, token) in &roles {
        println!("  # {who}");
        println!("  curl -s '{base}/{query}' -H 'Authorization: Bearer {token}'\n");
    }
    println!(
        "Every answer above was decided by one policy function (scopes, then consent, then the"
    );
    println!(
        "NEN 7513 audit record): GET {base}/AuditEvent with a system/AuditEvent.rs token lists them."
    );
    println!("Ctrl-C stops the demo.");
}

/// "status, what came back" of a GET with `token`: each match as `describe` says it.
async fn summarize(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    describe: impl Fn(&Value) -> String,
) -> String {
    match http.get(url).bearer_auth(token).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let seen: Vec<String> = body["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| describe(&e["resource"]))
                .collect();
            if seen.is_empty() {
                format!("{status}, nothing")
            } else {
                format!("{status}, {}", seen.join("; "))
            }
        }
        Err(e) => format!("failed: {e}"),
    }
}

/// The social domain: Utrecht's allocations, seen by the municipal app and by the youth-care
/// provider they are addressed to.
async fn social_domain(http: &reqwest::Client, base: &str) {
    println!(
        "\nGemeente Utrecht sent two allocations (iWmo WMO301, iJw JW301; POST /istandaarden takes them,"
    );
    println!("answering WMO302/JW302). The same request with two more tokens:\n");
    println!("  GET {base}/ServiceRequest\n");
    for (who, token) in [
        (
            "municipal app (Utrecht)",
            mint("utrecht", "user/*.rs", None, None),
        ),
        (
            "youth care (Jeugdhulp Utrecht)",
            mint("youth", "user/*.rs", None, None),
        ),
    ] {
        let summary = summarize(http, &format!("{base}/ServiceRequest"), &token, |r| {
            format!(
                "{} allocation {}",
                r["category"][0]["coding"][0]["display"]
                    .as_str()
                    .unwrap_or("?"),
                r["identifier"][0]["value"].as_str().unwrap_or("?")
            )
        })
        .await;
        println!("  {who:<32} {summary}");
    }
}

/// St. Antonius' authorization server for the demo: SMART Backend Services (client_credentials,
/// `private_key_jwt`). The client assertion must be signed with the demo key (ES256), for this
/// token URL, by `client_id`; the access token is a demo token of St. Antonius' issuer. `issued`
/// counts the tokens handed out (tests check the gateway caches its token).
pub async fn token_endpoint(
    listener: tokio::net::TcpListener,
    url: String,
    client_id: String,
    issued: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (url, client_id, issued) = (url.clone(), client_id.clone(), issued.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let (url, client_id, issued) = (url.clone(), client_id.clone(), issued.clone());
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let form: std::collections::HashMap<String, String> =
                            form_urlencoded::parse(&body).into_owned().collect();
                        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
                        let ok = field("grant_type") == "client_credentials"
                            && field("client_assertion_type")
                                == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                            && assertion_holds(field("client_assertion"), &url, &client_id);
                        let (status, body) = if ok {
                            issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            (
                                200,
                                json!({"access_token": mint("antonius", "system/*.rs", None, None),
                                     "token_type": "bearer", "expires_in": 3600, "scope": "system/*.rs"}),
                            )
                        } else {
                            (400, json!({"error": "invalid_client"}))
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("Content-Type", "application/json")
                                .body(Full::new(bytes::Bytes::from(body.to_string())))
                                .expect("a response"),
                        )
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A client assertion signed with the demo key, for `aud`, issued by and about `client_id`.
pub fn assertion_holds(jwt: &str, aud: &str, client_id: &str) -> bool {
    let keys = crate::policy::demo::jwks();
    let Ok(key) = jsonwebtoken::DecodingKey::from_jwk(&keys.keys[0]) else {
        return false;
    };
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[client_id]);
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    match jsonwebtoken::decode::<Value>(jwt, &key, &v) {
        Ok(t) => t.claims["sub"] == client_id && t.claims["jti"].is_string(),
        Err(_) => false,
    }
}

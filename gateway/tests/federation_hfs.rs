//! Optional: the upstream-FHIR adapter against an independent FHIR server, the Rust server HFS
//! (`helios-hfs` on crates.io), instead of a second gateway. It runs when `HFS_BIN` names an
//! `hfs` binary and says that it was skipped otherwise (HFS takes ~30 min to build here, too
//! long for CI). Build it with
//!
//! ```text
//! cargo install helios-hfs --version 0.2.7 --locked --no-default-features \
//!     --features R4,sqlite,skip-r6-download --root /tmp/hfs-install
//! HFS_BIN=/tmp/hfs-install/bin/hfs cargo test -p gateway --test federation_hfs -- --nocapture
//! ```

mod common;

use common::{Gateway, client_with, get_json, token};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start_hfs(bin: &str, dir: &std::path::Path) -> (Child, String) {
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--base-url",
            &base,
            "--database-url",
        ])
        .arg(dir.join("hfs.db"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("hfs.log")).unwrap())
        .spawn()
        .expect("start hfs");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, base)
}

fn adapter(base: &str) -> String {
    format!(
        r#"
[[adapters]]
name = "hfs"
kind = "fhir"
base_url = "{base}"
timeout_ms = 2000
retries = 0
resources = [
  {{ type = "Patient", search_params = ["identifier", "name", "_id"] }},
  {{ type = "Observation", search_params = ["patient", "subject", "category", "code"] }},
]
[adapters.organization]
system = "http://fhir.nl/fhir/NamingSystem/ura"
value = "90000002"
type = "hospital"
name = "St. Antonius (on HFS)"
[adapters.auth]
kind = "none"
"#
    )
}

fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::test]
async fn the_upstream_adapter_against_hfs() {
    let Ok(bin) = std::env::var("HFS_BIN") else {
        eprintln!("skipped: set HFS_BIN to an hfs binary (helios-hfs 0.2.7) to run this test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut hfs, base) = start_hfs(&bin, dir.path());
    let http = common::anon();
    let post = |ty: &str, body: Value| {
        http.post(format!("{base}/{ty}"))
            .header("Content-Type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    let bsn = "999911144";
    let p: Value = post(
        "Patient",
        json!({"resourceType": "Patient",
        "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn}],
        "name": [{"family": "Hendriks", "given": ["Els"]}]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let pid = p["id"]
        .as_str()
        .expect("HFS gave the Patient an id")
        .to_owned();
    let o: Value = post("Observation", json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let oid = o["id"].as_str().unwrap().to_owned();

    let gw = Gateway::start_with(&adapter(&base));
    let holder = client_with(&token("system/*.rs", "antonius", None));

    // Provenance and the namespace: ids prefixed, the subject reference rewritten.
    let labs = get_json(
        &holder,
        format!("{}/Observation?category=laboratory", gw.base),
    )
    .await;
    assert!(
        ids(&labs, "match").contains(&format!("hfs.{oid}")),
        "{labs}"
    );
    let mine = labs["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["id"] == format!("hfs.{oid}").as_str())
        .unwrap();
    assert_eq!(
        mine["resource"]["subject"]["reference"],
        format!("Patient/hfs.{pid}")
    );
    assert_eq!(mine["resource"]["meta"]["source"], base.as_str());
    // Following the reference through the gateway; searching by it (rewritten back inward).
    let patient = get_json(&holder, format!("{}/Patient/hfs.{pid}", gw.base)).await;
    assert_eq!(patient["name"][0]["family"], "Hendriks", "{patient}");
    let by_patient = get_json(
        &holder,
        format!("{}/Observation?patient=Patient/hfs.{pid}", gw.base),
    )
    .await;
    assert_eq!(
        ids(&by_patient, "match"),
        [format!("hfs.{oid}")],
        "{by_patient}"
    );
    // The BSN search the linking runs.
    let by_bsn = get_json(
        &holder,
        format!(
            "{}/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|{bsn}",
            gw.base
        ),
    )
    .await;
    assert!(
        ids(&by_bsn, "match").contains(&format!("hfs.{pid}")),
        "{by_bsn}"
    );
    // An id HFS does not have: 404 with an OperationOutcome.
    let r = holder
        .get(format!("{}/Patient/hfs.no-such-id", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Side by side: a read through the adapter vs the same read at HFS directly (medians of 200,
    // after a warm-up; the adapter's cache is on, so this is mostly a cache hit after the first).
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for i in 0..220 {
        let t = Instant::now();
        let r = http
            .get(format!("{base}/Patient/{pid}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        let d = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let r = holder
            .get(format!("{}/Patient/hfs.{pid}", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        let g = t.elapsed().as_secs_f64() * 1000.0;
        if i >= 20 {
            direct.push(d);
            through.push(g);
        }
    }
    eprintln!(
        "HFS read p50 {:.3} ms direct, {:.3} ms through the gateway (debug build)",
        median(direct),
        median(through)
    );

    // HFS gone: a search answers with what it has and an outcome naming the backend; a read
    // of its resource 502/504.
    hfs.kill().unwrap();
    hfs.wait().unwrap();
    let partial = get_json(
        &holder,
        format!("{}/Observation?code=http://loinc.org|9999-9", gw.base),
    )
    .await;
    let outcome = partial["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["search"]["mode"] == "outcome")
        .unwrap_or_else(|| panic!("no outcome entry: {partial}"));
    assert!(outcome["resource"].to_string().contains("hfs"), "{outcome}");
    let r = holder
        .get(format!("{}/Patient/hfs.{pid}-x", gw.base))
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 502 | 504), "{}", r.status());
}

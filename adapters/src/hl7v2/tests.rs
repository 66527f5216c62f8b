//! The mapping against the Dutch sample messages, and the listener's framing against a real TCP
//! connection with a recording `Apply`. End-to-end tests (the gateway, Python's `hl7` client)
//! are in `gateway/tests/mllp.rs`.

use super::mapping::{self, Refusal, date_time, eleven_proof, map};
use super::source::{END, START, serve};
use super::{Applied, Apply, Config, Failure, Mapped};
use crate::Organization;
use crate::er7::{Charset, Message};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config() -> Config {
    let org = |v: &str, n: &str| Organization {
        system: "http://fhir.nl/fhir/NamingSystem/ura".into(),
        value: v.into(),
        kind: "hospital".into(),
        name: n.into(),
    };
    let mut c = Config::default();
    c.senders
        .insert("UMCU".into(), org("90000001", "UMC Utrecht"));
    c.senders
        .insert("ANTONIUS".into(), org("90000002", "St. Antonius"));
    c.max_message_bytes = 4096;
    c.idle_timeout_secs = 2;
    c.apply_timeout_secs = 1;
    c
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../shared/hl7v2/nl/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn mapped(raw: &[u8]) -> Result<Mapped, Refusal> {
    let m = Message::parse(raw, Charset::Latin1).unwrap();
    map(&m, &config())
}

fn resources(m: &Mapped, ty: &str) -> Vec<Value> {
    m.bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == ty)
        .map(|e| e["resource"].clone())
        .collect()
}

fn request(m: &Mapped, ty: &str) -> Value {
    m.bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == ty)
        .unwrap()["request"]
        .clone()
}

#[test]
fn adt_a04_is_a_patient_and_an_encounter_of_the_sender() {
    let m = mapped(&sample("adt-a04-antonius.hl7")).unwrap();
    assert_eq!(m.holder.value, "90000002");
    assert_eq!(m.control_id, "ANT-A04-1001");
    assert_eq!(m.event, "ADT^A04");
    let p = &resources(&m, "Patient")[0];
    let ids = p["identifier"].as_array().unwrap();
    assert_eq!(ids[0]["system"], mapping::BSN_SYSTEM);
    assert_eq!(ids[0]["value"], "999911156");
    assert_eq!(
        ids[1]["system"],
        format!("{}/antonius/pi", mapping::NAMING_BASE)
    );
    assert_eq!(p["name"][0]["family"], "de Jong");
    assert_eq!(p["name"][0]["given"], serde_json::json!(["Pieter", "J"]));
    assert_eq!(p["name"][0]["use"], "official");
    assert_eq!(p["birthDate"], "1942-02-19");
    assert_eq!(p["gender"], "male");
    assert_eq!(p["address"][0]["city"], "Nieuwegein");
    assert_eq!(p["address"][0]["postalCode"], "3431 AA");
    assert_eq!(p["telecom"][0]["value"], "030 6090000");
    // Found again by the sender's own number, not by the BSN.
    assert_eq!(
        request(&m, "Patient")["url"],
        format!(
            "Patient?identifier={}/antonius/pi|Z445566",
            mapping::NAMING_BASE
        )
    );
    let e = &resources(&m, "Encounter")[0];
    assert_eq!(e["status"], "arrived");
    assert_eq!(e["class"]["code"], "AMB");
    assert_eq!(e["identifier"][0]["value"], "VN20261101-12");
    assert_eq!(e["period"]["start"], "2026-11-01T10:10:00+01:00");
    let p_url = m.bundle["entry"][1]["fullUrl"].as_str().unwrap();
    assert_eq!(e["subject"]["reference"], p_url);
    // The receipt comes first, created only if new.
    assert_eq!(m.bundle["entry"][0]["request"]["ifNoneMatch"], "*");
    assert_eq!(
        m.bundle["entry"][0]["resource"]["id"],
        "v2-ANTONIUS-ANT-A04-1001"
    );
}

#[test]
fn oru_r01_is_a_report_with_typed_results() {
    let m = mapped(&sample("oru-r01-umcu-glucose.hl7")).unwrap();
    let p = &resources(&m, "Patient")[0];
    // Latin-1 (MSH-18 8859/1) read as such.
    assert_eq!(p["name"][0]["family"], "Müller");
    assert_eq!(p["name"][0]["given"][0], "Renée");
    assert_eq!(
        request(&m, "Patient")["method"],
        "POST",
        "a lab result does not overwrite demographics"
    );
    let obs = resources(&m, "Observation");
    assert_eq!(obs.len(), 2);
    let glucose = &obs[0];
    assert_eq!(glucose["category"][0]["coding"][0]["code"], "laboratory");
    assert_eq!(glucose["code"]["coding"][0]["system"], "http://loinc.org");
    assert_eq!(glucose["code"]["coding"][0]["code"], "14749-6");
    assert_eq!(glucose["valueQuantity"]["value"], 6.1);
    assert_eq!(
        glucose["valueQuantity"]["system"],
        "http://unitsofmeasure.org"
    );
    assert_eq!(glucose["valueQuantity"]["code"], "mmol/L");
    assert_eq!(glucose["referenceRange"][0]["low"]["value"], 3.9);
    assert_eq!(glucose["interpretation"][0]["coding"][0]["code"], "H");
    assert_eq!(glucose["status"], "final");
    let urine = &obs[1];
    assert_eq!(
        urine["valueCodeableConcept"]["coding"][0]["system"],
        "http://snomed.info/sct"
    );
    assert_eq!(
        urine["valueCodeableConcept"]["coding"][0]["code"],
        "260385009"
    );
    let dr = &resources(&m, "DiagnosticReport")[0];
    assert_eq!(dr["identifier"][0]["value"], "UMCU-LAB-88");
    assert_eq!(dr["status"], "final");
    assert_eq!(dr["result"].as_array().unwrap().len(), 2);
    assert_eq!(dr["effectiveDateTime"], "2026-11-03T07:00:00+01:00");
}

fn oru(obx2: &str, obx5: &str, obx6: &str, status: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|GLIMS|UMCU|GATEWAY|HHU|20260701081500||ORU^R01^ORU_R01|X-{obx2}|P|2.5|||AL|NE||UNICODE UTF-8\r\
         PID|1||7099887^^^UMCU^PI\r\
         OBR|1||ORD-1|2345-7^Glucose^LN|||20260701070000||||||||||||||||CH|{status}\r\
         OBX|1|{obx2}|2345-7^Glucose^LN|1|{obx5}|{obx6}|||||{status}|||20260701070000\r"
    )
    .into_bytes()
}

#[test]
fn value_types_follow_obx_2() {
    let value = |obx2: &str, obx5: &str, obx6: &str| {
        let m = mapped(&oru(obx2, obx5, obx6, "F")).unwrap();
        resources(&m, "Observation").into_iter().next()
    };
    let sn = value("SN", "<^3.5", "mmol/L^^UCUM").unwrap();
    assert_eq!(sn["valueQuantity"]["comparator"], "<");
    assert_eq!(sn["valueQuantity"]["value"], 3.5);
    let ratio = value("SN", "^1^:^128", "").unwrap();
    assert_eq!(ratio["valueRatio"]["denominator"]["value"], 128.0);
    let range = value("SN", "^2^-^4", "").unwrap();
    assert_eq!(range["valueRange"]["high"]["value"], 4);
    let st = value("ST", "slightly \\T\\ hemolytic", "").unwrap();
    assert_eq!(st["valueString"], "slightly & hemolytic");
    let tx = value("TX", "line one~line two", "").unwrap();
    assert_eq!(tx["valueString"], "line one\nline two");
    let nm = value("NM", "6.10", "mmol/L^mmol/L^UCUM").unwrap();
    assert_eq!(
        nm["valueQuantity"]["value"].to_string(),
        "6.10",
        "precision kept"
    );
    // Not UCUM: the unit as text, no system.
    let local = value("NM", "7", "mmol/l^^L").unwrap();
    assert_eq!(local["valueQuantity"]["unit"], "mmol/l");
    assert!(local["valueQuantity"].get("system").is_none());
    // ED goes to the report as an attachment.
    let m = mapped(&oru("ED", "^application^pdf^Base64^JVBERi0=", "", "F")).unwrap();
    assert!(resources(&m, "Observation").is_empty());
    let dr = &resources(&m, "DiagnosticReport")[0];
    assert_eq!(dr["presentedForm"][0]["contentType"], "application/pdf");
    assert_eq!(dr["presentedForm"][0]["data"], "JVBERi0=");
    // A number that is not one: AE, never a silent string.
    assert!(matches!(
        mapped(&oru("NM", "six", "", "F")),
        Err(Refusal::Invalid(_))
    ));
}

#[test]
fn a_corrected_result_names_the_same_observation() {
    let first = mapped(&oru("NM", "6.1", "", "F")).unwrap();
    let corrected = mapped(&oru("NM", "5.9", "", "C")).unwrap();
    assert_eq!(
        request(&first, "Observation")["url"],
        request(&corrected, "Observation")["url"]
    );
    assert_eq!(
        resources(&corrected, "Observation")[0]["status"],
        "corrected"
    );
}

#[test]
fn refusals_say_why() {
    let unknown_type = String::from_utf8(sample("adt-a04-antonius.hl7"))
        .unwrap()
        .replace("ADT^A04^ADT_A01", "SIU^S12^SIU_S12");
    assert!(
        matches!(mapped(unknown_type.as_bytes()), Err(Refusal::Unsupported(w)) if w.contains("SIU^S12"))
    );
    let old = String::from_utf8(sample("adt-a04-antonius.hl7"))
        .unwrap()
        .replace("|P|2.5|", "|P|2.1|");
    assert!(matches!(mapped(old.as_bytes()), Err(Refusal::Unsupported(w)) if w.contains("2.1")));
    let stranger = String::from_utf8(sample("adt-a04-antonius.hl7"))
        .unwrap()
        .replace("|EPIC|ANTONIUS|", "|EPIC|ELSEWHERE|");
    assert!(
        matches!(mapped(stranger.as_bytes()), Err(Refusal::Unsupported(w)) if w.contains("ELSEWHERE"))
    );
    let bad_bsn = String::from_utf8(sample("adt-a04-antonius.hl7"))
        .unwrap()
        .replace("999911156", "999911157");
    assert!(
        matches!(mapped(bad_bsn.as_bytes()), Err(Refusal::Invalid(w)) if w.contains("11-proof"))
    );
}

#[test]
fn a40_names_the_survivor_by_its_bsn_and_the_retired_record() {
    let m = mapped(&sample("adt-a40-antonius.hl7")).unwrap();
    let merge = m.merge.as_ref().unwrap();
    assert_eq!(merge.retired["system"], mapping::BSN_SYSTEM);
    assert_eq!(merge.retired["value"], "999911156");
    let p = &resources(&m, "Patient")[0];
    let old = p["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["use"] == "old")
        .unwrap();
    assert_eq!(old["value"], "999911156");
    // Found by the new BSN among St. Antonius' own records only.
    let url = request(&m, "Patient")["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!(
            "Patient?identifier={}|999911181&_tag=",
            mapping::BSN_SYSTEM
        )),
        "{url}"
    );
    assert!(
        url.ends_with("|http://fhir.nl/fhir/NamingSystem/ura|90000002"),
        "{url}"
    );
    // Without MRG: AE.
    let no_mrg = String::from_utf8(sample("adt-a40-antonius.hl7"))
        .unwrap()
        .replace("MRG|", "ZZZ|");
    assert!(matches!(
        mapped(no_mrg.as_bytes()),
        Err(Refusal::Invalid(_))
    ));
}

#[test]
fn bsn_eleven_proof_and_dates() {
    for good in ["999911120", "999911156", "999911168", "999911181"] {
        assert!(eleven_proof(good), "{good}");
    }
    for bad in ["999911121", "12345678", "abcdefghi", "000000000"] {
        assert!(!eleven_proof(bad), "{bad}");
    }
    assert_eq!(date_time("1942").as_deref(), Some("1942"));
    assert_eq!(date_time("19420219").as_deref(), Some("1942-02-19"));
    // Local time: CET in winter, CEST in summer (EU rule), an explicit offset as sent.
    assert_eq!(
        date_time("202601151030").as_deref(),
        Some("2026-01-15T10:30:00+01:00")
    );
    assert_eq!(
        date_time("20260715103000").as_deref(),
        Some("2026-07-15T10:30:00+02:00")
    );
    assert_eq!(
        date_time("20260329030000").as_deref(),
        Some("2026-03-29T03:00:00+02:00")
    );
    assert_eq!(
        date_time("20261025010000").as_deref(),
        Some("2026-10-25T01:00:00+02:00")
    );
    assert_eq!(
        date_time("20261025040000").as_deref(),
        Some("2026-10-25T04:00:00+01:00")
    );
    assert_eq!(
        date_time("20260715103000.25-0500").as_deref(),
        Some("2026-07-15T10:30:00.25-05:00")
    );
    assert_eq!(date_time("2026071"), None);
    assert_eq!(date_time(""), None);
}

/// Records what it is asked to apply; answers Duplicate for a control id seen before.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
}

impl Apply for Recorder {
    fn apply<'a>(
        &'a self,
        m: &'a Mapped,
    ) -> futures::future::BoxFuture<'a, Result<Applied, Failure>> {
        Box::pin(async move {
            if m.control_id.contains("SLOW") {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            if m.control_id.contains("FAIL") {
                return Err(Failure::Rejected("refused by the policy".into()));
            }
            let mut seen = self.seen.lock().unwrap();
            if seen.contains(&m.control_id) {
                return Ok(Applied::Duplicate);
            }
            seen.push(m.control_id.clone());
            Ok(Applied::Done)
        })
    }
}

async fn listener(config: Config) -> (String, Arc<Recorder>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let rec = Arc::new(Recorder::default());
    tokio::spawn(serve(l, Arc::new(config), None, rec.clone()));
    (addr, rec)
}

fn frame(m: &[u8]) -> Vec<u8> {
    [&[START][..], m, &END[..]].concat()
}

/// Reads one framed answer; `None` when the connection closed first.
async fn read_ack(s: &mut tokio::net::TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(1)) => got.push(b[0]),
            _ => return None,
        }
        if got.ends_with(&END) {
            assert_eq!(got[0], START);
            return Some(String::from_utf8_lossy(&got[1..got.len() - 2]).into_owned());
        }
    }
}

fn msa(ack: &str) -> (String, String) {
    let line = ack.split('\r').find(|l| l.starts_with("MSA")).unwrap();
    let f: Vec<&str> = line.split('|').collect();
    (f[1].to_owned(), f[2].to_owned())
}

#[tokio::test]
async fn frames_on_one_connection_are_acknowledged_in_order() {
    let (addr, rec) = listener(config()).await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let a04 = sample("adt-a04-antonius.hl7");
    let a08 = sample("adt-a08-antonius.hl7");
    // Garbage before the first frame, two frames in one write, then the first again (resent).
    let mut bytes = b"garbage\r\n".to_vec();
    bytes.extend(frame(&a04));
    bytes.extend(b"\n");
    bytes.extend(frame(&a08));
    s.write_all(&bytes).await.unwrap();
    let first = read_ack(&mut s).await.unwrap();
    assert_eq!(msa(&first), ("AA".into(), "ANT-A04-1001".into()));
    assert!(
        first.starts_with("MSH|^~\\&|GATEWAY|HHU|EPIC|ANTONIUS|"),
        "{first}"
    );
    assert!(first.contains("|ACK^A04^ACK|"), "{first}");
    assert_eq!(
        msa(&read_ack(&mut s).await.unwrap()),
        ("AA".into(), "ANT-A08-1002".into())
    );
    // Split across writes, byte by byte at the end block.
    let f = frame(&a04);
    s.write_all(&f[..f.len() - 1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&f[f.len() - 1..]).await.unwrap();
    let again = read_ack(&mut s).await.unwrap();
    assert_eq!(msa(&again).0, "AA");
    assert!(again.contains("applied before"), "{again}");
    assert_eq!(rec.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_messages_get_ae_or_ar_with_err() {
    let (addr, _) = listener(config()).await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let a04 = String::from_utf8(sample("adt-a04-antonius.hl7")).unwrap();
    // Not applicable content: AE with ERR.
    let bad_bsn = a04.replace("999911156", "999911157");
    s.write_all(&frame(bad_bsn.as_bytes())).await.unwrap();
    let ack = read_ack(&mut s).await.unwrap();
    assert_eq!(msa(&ack).0, "AE");
    assert!(
        ack.contains("\rERR|||102^Data type error^HL70357|E|"),
        "{ack}"
    );
    // Refused by the gateway: AE.
    s.write_all(&frame(a04.replace("ANT-A04-1001", "FAIL-1").as_bytes()))
        .await
        .unwrap();
    let ack = read_ack(&mut s).await.unwrap();
    assert_eq!(msa(&ack), ("AE".into(), "FAIL-1".into()));
    // Not applied in time (the limit is 1 s here, the gateway takes 3): AR, and the connection
    // goes on serving.
    s.write_all(&frame(a04.replace("ANT-A04-1001", "SLOW-1").as_bytes()))
        .await
        .unwrap();
    let ack = read_ack(&mut s).await.unwrap();
    assert_eq!(msa(&ack), ("AR".into(), "SLOW-1".into()));
    assert!(ack.contains("send it again"), "{ack}");
    // An unsupported type: AR.
    s.write_all(&frame(a04.replace("ADT^A04^ADT_A01", "MFN^M02").as_bytes()))
        .await
        .unwrap();
    let ack = read_ack(&mut s).await.unwrap();
    assert_eq!(msa(&ack).0, "AR");
    assert!(ack.contains("200^Unsupported message type"), "{ack}");
    // Not HL7 at all: AR, and the connection still serves.
    s.write_all(&frame(b"hello")).await.unwrap();
    assert_eq!(msa(&read_ack(&mut s).await.unwrap()).0, "AR");
    // Too large: AR naming the limit, then the next frame is served.
    let big = a04.replace("de Jong&de&Jong", &"x".repeat(5000));
    s.write_all(&frame(big.as_bytes())).await.unwrap();
    let ack = read_ack(&mut s).await.unwrap();
    assert_eq!(msa(&ack), ("AR".into(), "ANT-A04-1001".into()));
    assert!(ack.contains("exceeds the limit of 4096"), "{ack}");
    s.write_all(&frame(a04.as_bytes())).await.unwrap();
    assert_eq!(msa(&read_ack(&mut s).await.unwrap()).0, "AA");
    // Too large and never ended: the next frame's start ends it (AR), and that frame is served.
    let mut bytes = vec![START];
    bytes.extend(big.as_bytes());
    bytes.extend(frame(a04.replace("ANT-A04-1001", "AFTER-BIG").as_bytes()));
    s.write_all(&bytes).await.unwrap();
    assert_eq!(msa(&read_ack(&mut s).await.unwrap()).0, "AR");
    assert_eq!(
        msa(&read_ack(&mut s).await.unwrap()),
        ("AA".into(), "AFTER-BIG".into())
    );
}

#[tokio::test]
async fn unterminated_frames_and_idle_peers_never_wedge_it() {
    let (addr, _) = listener(config()).await;
    let a04 = sample("adt-a04-antonius.hl7");
    // A frame without its end block, then a whole one: the first is dropped, the second served.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut bytes = vec![START];
    bytes.extend(b"MSH|^~\\&|half a message");
    bytes.extend(frame(&a04));
    s.write_all(&bytes).await.unwrap();
    assert_eq!(msa(&read_ack(&mut s).await.unwrap()).0, "AA");
    // Half-closed inside a frame: no ACK, the connection ends, the listener keeps serving.
    let mut h = tokio::net::TcpStream::connect(&addr).await.unwrap();
    h.write_all(&[START]).await.unwrap();
    h.write_all(&a04[..20]).await.unwrap();
    h.shutdown().await.unwrap();
    assert_eq!(read_ack(&mut h).await, None);
    // An idle connection is closed after the time-out (2 s here).
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_secs(2));
    // Many connections at once.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = addr.clone();
        let msg = String::from_utf8(a04.clone())
            .unwrap()
            .replace("ANT-A04-1001", &format!("C-{i}"));
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(&frame(msg.as_bytes())).await.unwrap();
            msa(&read_ack(&mut s).await.unwrap())
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), ("AA".into(), format!("C-{i}")));
    }
}

#[tokio::test]
async fn mllp_over_tls() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let files = crate::upstream_fhir::tests::certificates(dir.path());
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&files[1]).unwrap()],
            PrivateKeyDer::from_pem_file(&files[2]).unwrap(),
        )
        .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tokio::spawn(serve(
        l,
        Arc::new(config()),
        Some(acceptor),
        Arc::new(Recorder::default()),
    ));
    // A client that trusts the test CA: framed messages and ACKs inside TLS.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&files[0]).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(&frame(&sample("adt-a04-antonius.hl7")))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    while !got.ends_with(&END) {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the ACK");
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(msa(&String::from_utf8_lossy(&got[1..])).0, "AA");
    // Plain MLLP to the TLS port gets no ACK: the handshake fails and the connection ends.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(&frame(&sample("adt-a04-antonius.hl7")))
        .await
        .unwrap();
    assert_eq!(read_ack(&mut plain).await, None);
}

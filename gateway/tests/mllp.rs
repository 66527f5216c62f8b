//! HL7 v2 feeds end to end: the real binary with its MLLP listener, Python's `hl7` package
//! (`mllp_send`) sending the Dutch sample messages, and the FHIR resources that result read back
//! over REST; a kill -9 in the middle of a stream loses no acknowledged message.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BSN: &str = "http://fhir.nl/fhir/NamingSystem/bsn";

fn samples() -> PathBuf {
    workspace().join("../shared/hl7v2/nl")
}

/// `mllp_send` (Python `hl7`) with one file; its stdout (the ACKs, one per message).
fn mllp_send(port: u16, file: &Path) -> String {
    let py = python();
    let bin = py.parent().unwrap().join("mllp_send");
    let out = Command::new(bin)
        .args(["--loose", "-p", &port.to_string(), "127.0.0.1", "-f"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mllp_send {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The MSA code and message control id of an ACK as `mllp_send` prints it.
fn msa(ack: &str) -> (String, String) {
    let line = ack
        .split(['\r', '\n'])
        .find(|l| l.starts_with("MSA"))
        .unwrap_or_else(|| panic!("no MSA in {ack:?}"));
    let f: Vec<&str> = line.split('|').collect();
    (f[1].to_owned(), f[2].to_owned())
}

async fn search(c: &reqwest::Client, gw: &Gateway, query: &str) -> Vec<Value> {
    let b: Value = get_json(c, format!("{}/{query}", gw.base)).await;
    b["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"].clone())
        .collect()
}

fn mllp_config(port: u16) -> String {
    format!("[mllp]\nlisten = \"127.0.0.1:{port}\"\nidle_timeout_secs = 30\n")
}

#[tokio::test]
async fn hospital_feeds_become_fhir_resources() {
    let port = free_port();
    let gw = Gateway::start_with(&mllp_config(port));
    let dir = tempfile::tempdir().unwrap();

    for (file, control_id) in [
        ("adt-a04-antonius.hl7", "ANT-A04-1001"),
        ("adt-a08-antonius.hl7", "ANT-A08-1002"),
        ("adt-a31-umcu.hl7", "UMCU-A31-3001"),
        ("oru-r01-umcu-glucose.hl7", "UMCU-LAB-2001"),
    ] {
        let ack = mllp_send(port, &samples().join(file));
        assert_eq!(msa(&ack), ("AA".into(), control_id.into()), "{file}: {ack}");
    }

    // St. Antonius' patient: one record for A04 and A08, the address as A08 corrected it, held
    // by St. Antonius, with the BSN and the hospital's own number.
    let antonius = client_with(&token("system/*.rs", "antonius", None));
    let found = search(
        &antonius,
        &gw,
        &format!("Patient?identifier={BSN}|999911156"),
    )
    .await;
    assert_eq!(found.len(), 1, "{found:?}");
    let p = &found[0];
    assert_eq!(p["address"][0]["line"][0], "Koningin Julianaweg 80");
    assert_eq!(p["name"][0]["family"], "de Jong");
    assert_eq!(p["meta"]["versionId"], "2");
    let tags = p["meta"]["tag"].to_string();
    assert!(tags.contains("90000002"), "held by St. Antonius: {tags}");
    let pid = p["id"].as_str().unwrap();
    let encounters = search(&antonius, &gw, &format!("Encounter?subject=Patient/{pid}")).await;
    assert_eq!(
        encounters.len(),
        1,
        "A04 and A08 are one visit: {encounters:?}"
    );
    assert_eq!(encounters[0]["identifier"][0]["value"], "VN20261101-12");
    assert_eq!(encounters[0]["class"]["code"], "AMB");

    // A40: St. Antonius merges the record into one with the corrected BSN. The survivor
    // `replaces` the old record, which is inactive and `replaced-by` it; the old BSN still finds
    // the person (on both records).
    let ack = mllp_send(port, &samples().join("adt-a40-antonius.hl7"));
    assert_eq!(msa(&ack), ("AA".into(), "ANT-A40-1003".into()), "{ack}");
    let survivors = search(
        &antonius,
        &gw,
        &format!("Patient?identifier={BSN}|999911181"),
    )
    .await;
    assert_eq!(survivors.len(), 1, "{survivors:?}");
    let s = &survivors[0];
    let sid = s["id"].as_str().unwrap();
    assert_eq!(s["link"][0]["type"], "replaces");
    assert_eq!(s["link"][0]["other"]["reference"], format!("Patient/{pid}"));
    assert!(s["identifier"].to_string().contains("\"old\""), "{s}");
    let retired: Value = get_json(&antonius, format!("{}/Patient/{pid}", gw.base)).await;
    assert_eq!(retired["active"], false);
    assert_eq!(retired["link"][0]["type"], "replaced-by");
    assert_eq!(
        retired["link"][0]["other"]["reference"],
        format!("Patient/{sid}")
    );
    assert_eq!(
        retired["identifier"].as_array().unwrap().len(),
        1,
        "{retired}"
    );
    let mut by_old: Vec<String> = search(
        &antonius,
        &gw,
        &format!("Patient?identifier={BSN}|999911156"),
    )
    .await
    .iter()
    .map(|p| p["id"].as_str().unwrap().to_owned())
    .collect();
    by_old.sort();
    let mut want = vec![pid.to_owned(), sid.to_owned()];
    want.sort();
    assert_eq!(by_old, want);
    // Later messages with the hospital's number update the survivor only.
    let later: Vec<u8> =
        String::from_utf8_lossy(&std::fs::read(samples().join("adt-a08-antonius.hl7")).unwrap())
            .replace("ANT-A08-1002", "ANT-A08-1004")
            .replace("999911156", "999911181")
            .into_bytes();
    let file = dir.path().join("later.hl7");
    std::fs::write(&file, later).unwrap();
    assert_eq!(msa(&mllp_send(port, &file)).0, "AA");
    let s2: Value = get_json(&antonius, format!("{}/Patient/{sid}", gw.base)).await;
    assert_eq!(s2["meta"]["versionId"], "2", "{s2}");

    // UMCU's patient from A31 (Latin-1) and the lab result (ORU) on the same record.
    let umcu = client_with(&token("system/*.rs", "umcu", None));
    let found = search(&umcu, &gw, &format!("Patient?identifier={BSN}|999911168")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["name"][0]["family"], "Müller");
    assert_eq!(found[0]["name"][0]["given"][0], "Renée");
    let uid = found[0]["id"].as_str().unwrap().to_owned();
    let obs = search(
        &umcu,
        &gw,
        &format!("Observation?patient=Patient/{uid}&_sort=code"),
    )
    .await;
    assert_eq!(obs.len(), 2, "{obs:?}");
    let glucose = obs
        .iter()
        .find(|o| o["code"]["coding"][0]["code"] == "14749-6")
        .unwrap();
    assert_eq!(glucose["valueQuantity"]["value"], 6.1);
    assert_eq!(glucose["valueQuantity"]["code"], "mmol/L");
    assert_eq!(glucose["category"][0]["coding"][0]["code"], "laboratory");
    let reports = search(
        &umcu,
        &gw,
        &format!("DiagnosticReport?patient=Patient/{uid}"),
    )
    .await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["result"].as_array().unwrap().len(), 2);
    let labs = search(
        &umcu,
        &gw,
        &format!(
            "Observation?patient=Patient/{uid}&category=laboratory&code=http://loinc.org|14749-6"
        ),
    )
    .await;
    assert_eq!(labs.len(), 1);

    // The same message again (same MSH-10 from the same sender): AA, applied once.
    let ack = mllp_send(port, &samples().join("oru-r01-umcu-glucose.hl7"));
    assert_eq!(msa(&ack).0, "AA", "{ack}");
    let again = search(&umcu, &gw, &format!("Observation?patient=Patient/{uid}")).await;
    assert_eq!(again.len(), 2);
    assert!(
        again.iter().all(|o| o["meta"]["versionId"] == "1"),
        "{again:?}"
    );

    // A different message that reuses a control id is refused, never taken for a resend.
    let reused: Vec<u8> =
        String::from_utf8_lossy(&std::fs::read(samples().join("adt-a31-umcu.hl7")).unwrap())
            .replace("UMCU-A31-3001", "UMCU-LAB-2001")
            .chars()
            .map(|c| c as u8)
            .collect();
    let file = dir.path().join("reused.hl7");
    std::fs::write(&file, reused).unwrap();
    let ack = mllp_send(port, &file);
    assert_eq!(msa(&ack).0, "AE", "{ack}");
    assert!(ack.contains("used before"), "{ack}");

    // A corrected result (OBX-11 C, a new message) updates the same Observation.
    let oru = std::fs::read(samples().join("oru-r01-umcu-glucose.hl7")).unwrap();
    let corrected: Vec<u8> = String::from_utf8_lossy(&oru)
        .replace("UMCU-LAB-2001", "UMCU-LAB-2002")
        .replace("||6.1|mmol/L", "||5.9|mmol/L")
        .replace("|3.9-6.0|H|||F|", "|3.9-6.0|N|||C|")
        .chars()
        .map(|c| c as u8)
        .collect();
    let file = dir.path().join("corrected.hl7");
    std::fs::write(&file, corrected).unwrap();
    let ack = mllp_send(port, &file);
    assert_eq!(msa(&ack), ("AA".into(), "UMCU-LAB-2002".into()), "{ack}");
    let now: Value = get_json(
        &umcu,
        format!(
            "{}/Observation/{}",
            gw.base,
            glucose["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(now["valueQuantity"]["value"], 5.9);
    assert_eq!(now["status"], "corrected");
    assert_eq!(now["meta"]["versionId"], "2");

    // A message that cannot be applied: AE with an ERR segment, nothing written.
    let bad: Vec<u8> =
        String::from_utf8_lossy(&std::fs::read(samples().join("adt-a04-antonius.hl7")).unwrap())
            .replace("999911156", "999911157")
            .replace("ANT-A04-1001", "ANT-A04-BAD")
            .into_bytes();
    let file = dir.path().join("bad.hl7");
    std::fs::write(&file, bad).unwrap();
    let ack = mllp_send(port, &file);
    assert_eq!(msa(&ack).0, "AE", "{ack}");
    assert!(ack.contains("ERR|"), "{ack}");
    assert!(
        search(
            &antonius,
            &gw,
            &format!("Patient?identifier={BSN}|999911157")
        )
        .await
        .is_empty()
    );

    // Every message was written as its sender's feed, and audited.
    let audit = client_with(&token("system/AuditEvent.rs", "umcu", None));
    let events = search(&audit, &gw, "AuditEvent?_count=100").await;
    assert!(
        events
            .iter()
            .any(|e| e.to_string().contains("hl7v2-feed/UMCU")),
        "no audit record of the UMCU feed"
    );
}

fn a04(n: usize) -> Vec<u8> {
    format!(
        "MSH|^~\\&|HIX|UMCU|GATEWAY|HHU|20261101101000||ADT^A04^ADT_A01|KILL-{n}|P|2.5|||AL|NE||8859/1\r\
         EVN|A04|20261101101000\r\
         PID|1||K{n}^^^UMCU^PI||Stream^Patient {n}||19800101|F\r\
         PV1|1|O|POLI^^^UMCU||||||||||||||||V{n}\r"
    )
    .into_bytes()
}

/// Sends messages one after the other on one connection until it breaks; the control ids of
/// those acknowledged with AA.
async fn stream(port: u16, total: usize) -> Vec<usize> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut acked = Vec::new();
    let mut buf = Vec::new();
    for n in 0..total {
        let mut frame = vec![0x0B];
        frame.extend(a04(n));
        frame.extend([0x1C, 0x0D]);
        if s.write_all(&frame).await.is_err() {
            break;
        }
        buf.clear();
        let mut b = [0u8; 512];
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break false,
                Ok(Ok(k)) => buf.extend_from_slice(&b[..k]),
            }
            if buf.ends_with(&[0x1C, 0x0D]) {
                break true;
            }
        };
        if !ended {
            break;
        }
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains(&format!("MSA|AA|KILL-{n}")), "{text}");
        acked.push(n);
    }
    acked
}

#[tokio::test]
async fn a_killed_gateway_loses_no_acknowledged_message() {
    let port = free_port();
    let config = mllp_config(port);
    let gw = Gateway::start_with(&config);
    // A stream of up to 10,000 messages; the gateway is killed (SIGKILL) a little way in.
    let sender = tokio::spawn(stream(port, 10_000));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dir = gw.kill_keep_data();
    let acked = sender.await.unwrap();
    assert!(
        !acked.is_empty() && acked.len() < 10_000,
        "killed mid-stream: {} acknowledged in {:?}",
        acked.len(),
        started.elapsed()
    );
    // Restarted on the same data: every acknowledged message is there.
    let gw = Gateway::start_in(dir, &config);
    let c = client();
    let system = "https://healthhub-utrecht.nl/fhir/NamingSystem/v2/umcu/pi";
    let mut found = 0;
    for chunk in acked.chunks(50) {
        let ids: Vec<String> = chunk.iter().map(|n| format!("{system}|K{n}")).collect();
        let got = search(
            &c,
            &gw,
            &format!("Patient?identifier={}&_count=100", ids.join(",")),
        )
        .await;
        found += got.len();
    }
    assert_eq!(
        found,
        acked.len(),
        "acknowledged {} but found {found}",
        acked.len()
    );
    // The stream resumes where the sender left off: a resent last message is applied once.
    let resent = stream(port, 1).await;
    assert_eq!(resent, vec![0]);
    let got = search(&c, &gw, &format!("Patient?identifier={system}|K0")).await;
    assert_eq!(got.len(), 1);
    eprintln!(
        "kill -9 after {} acknowledged messages: all {} found after restart",
        acked.len(),
        found
    );
}

/// MSH-4 (first component) and MSH-9 (type^trigger) of a sample file's first message.
fn header(file: &Path) -> (String, String) {
    let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
    let msh = text
        .split(['\r', '\n'])
        .next()
        .unwrap_or_default()
        .to_owned();
    let f: Vec<&str> = msh.split('|').collect();
    let part = |n: usize| f.get(n).copied().unwrap_or_default().to_owned();
    let kind: Vec<String> = part(8).split('^').take(2).map(str::to_owned).collect();
    (
        part(3).split('^').next().unwrap_or_default().to_owned(),
        kind.join("^"),
    )
}

/// Every public sample message (Microsoft FHIR-Converter's, many types and versions) sent with
/// `mllp_send`: each gets an acknowledgement; the types the gateway maps are applied (AA) or
/// refused with a reason (AE and ERR), the others rejected (AR), and nothing hangs.
#[tokio::test]
async fn every_sample_message_is_acknowledged() {
    let dir = workspace().join("../shared/hl7v2/samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    // Every sending facility of the samples is a (fictitious) sender here.
    let mut senders: Vec<String> = files.iter().map(|f| header(f).0).collect();
    senders.sort();
    senders.dedup();
    let mut config = String::new();
    for (n, s) in senders.iter().enumerate() {
        config.push_str(&format!(
            "[mllp.senders.\"{}\"]\nsystem = \"urn:oid:2.16.528.1.1007.3.3\"\nvalue = \"sample-{n}\"\ntype = \"hospital\"\nname = \"{}\"\n",
            s.replace('"', ""),
            if s.is_empty() { "no MSH-4".into() } else { s.replace('"', "") }
        ));
    }
    let port = free_port();
    let gw = Gateway::start_with(&format!("{}{config}", mllp_config(port)));
    let mapped = [
        "ADT^A01", "ADT^A03", "ADT^A04", "ADT^A05", "ADT^A08", "ADT^A28", "ADT^A31", "ADT^A40",
        "ORU^R01",
    ];
    let (mut aa, mut ae, mut ar) = (0, 0, 0);
    // The samples reuse control ids across files (MSG00001 and the like), which a real sender
    // must not: each file's MSH-10s get the file's name in front, so every message is new.
    let unique = tempfile::tempdir().unwrap();
    for f in &files {
        let (_, kind) = header(f);
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let text: String = std::fs::read(f)
            .unwrap()
            .iter()
            .map(|b| *b as char)
            .collect();
        let renamed: Vec<String> = text
            .split_inclusive(['\r', '\n'])
            .map(|line| {
                if !line.starts_with("MSH|") {
                    return line.to_owned();
                }
                let mut fields: Vec<String> = line.split('|').map(str::to_owned).collect();
                if fields.len() > 9 {
                    fields[9] = format!("{stem}-{}", fields[9]);
                }
                fields.join("|")
            })
            .collect();
        let copy = unique.path().join(f.file_name().unwrap());
        std::fs::write(
            &copy,
            renamed
                .concat()
                .chars()
                .map(|c| c as u8)
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        let out = mllp_send(port, &copy);
        let acks: Vec<&str> = out.split("MSH|").filter(|a| a.contains("MSA|")).collect();
        assert!(!acks.is_empty(), "{}: no ACK: {out}", f.display());
        for ack in acks {
            let (code, _) = msa(ack);
            match code.as_str() {
                "AA" => {
                    assert!(
                        mapped.contains(&kind.as_str()),
                        "{}: AA for {kind}",
                        f.display()
                    );
                    aa += 1;
                }
                "AE" => {
                    assert!(
                        ack.contains("ERR|"),
                        "{}: AE without ERR: {ack}",
                        f.display()
                    );
                    let why = ack
                        .split(['\r', '\n'])
                        .find(|l| l.starts_with("MSA"))
                        .unwrap_or_default();
                    eprintln!("AE {}: {why}", f.file_name().unwrap().to_string_lossy());
                    ae += 1;
                }
                "AR" => {
                    assert!(
                        !mapped.contains(&kind.as_str()) || ack.contains("ERR|"),
                        "{}: {kind} rejected: {ack}",
                        f.display()
                    );
                    ar += 1;
                }
                other => panic!("{}: MSA-1 {other}", f.display()),
            }
        }
    }
    eprintln!("{} sample files: {aa} AA, {ae} AE, {ar} AR", files.len());
    assert!(
        aa >= 20,
        "most ADT and ORU samples apply: {aa} AA, {ae} AE, {ar} AR"
    );
    drop(gw);
}

/// `serve --mllp-listen ADDR` starts the listener without any config file (the demo config).
#[tokio::test]
async fn the_command_line_sets_the_listener() {
    let data = tempfile::tempdir().unwrap();
    let (http, mllp) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["serve", "--listen", &format!("127.0.0.1:{http}"), "--data"])
        .arg(data.path())
        .args(["--mllp-listen", &format!("127.0.0.1:{mllp}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", mllp)).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("no MLLP listener: {e}"),
        }
    };
    let mut frame = vec![0x0B];
    frame.extend(a04(1));
    frame.extend([0x1C, 0x0D]);
    conn.write_all(&frame).await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    while !got.ends_with(&[0x1C, 0x0D]) {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        msa(&String::from_utf8_lossy(&got)),
        ("AA".into(), "KILL-1".into())
    );
}

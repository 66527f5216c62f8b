//! `gateway import`: the Synthea population from `../shared/synthea/` loads completely (every
//! line a resource, conditional references to organisations and practitioners resolved), is
//! searchable and audited; an import stopped by a bad line resumes where it stopped, without
//! writing anything twice.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn import(data: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("import")
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn synthea() -> std::path::PathBuf {
    workspace().join("../shared/synthea/10-patients")
}

fn lines(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "log.ndjson")
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum()
}

#[tokio::test]
async fn synthea_imports_completely_and_is_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = import(&data, &[synthea().to_str().unwrap(), "--chunk", "300"]);
    assert!(ok, "{out}");
    let expected = lines(&synthea());
    assert!(
        out.contains(&format!("imported {expected} resources from 14 files")),
        "{out}"
    );
    assert!(
        out.contains("4 lines not FHIR resources"),
        "log.ndjson is not data: {out}"
    );
    // A second run has nothing left to do.
    let (ok, again) = import(&data, &[synthea().to_str().unwrap()]);
    assert!(
        ok && again.contains("imported 0 resources from 14 files"),
        "{again}"
    );
    assert!(
        again.contains(&format!("{} lines already imported", expected + 4)),
        "{again}"
    );

    let gw = Gateway::start_in(dir, "");
    let c = client();
    let total = |q: &str| {
        let (c, url) = (c.clone(), format!("{}/{q}", gw.base));
        async move {
            let b: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            b["total"].as_u64().unwrap()
        }
    };
    assert_eq!(total("Patient").await, 13);
    assert_eq!(total("Condition").await, 555);
    assert_eq!(total("Encounter?_count=0").await, 1215);
    // Ids are kept and conditional references became Type/id.
    let enc: Value = c
        .get(format!("{}/Encounter?_count=1", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let provider = enc["entry"][0]["resource"]["serviceProvider"]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(provider.starts_with("Organization/"), "{provider}");
    let org = c
        .get(format!("{}/{provider}", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(org.status(), 200);
    // Every imported version is 1: nothing was written twice.
    assert_eq!(total("Patient/_history").await, 13);
    // The import is in the access log.
    let audit: Value = c
        .get(format!("{}/AuditEvent?_count=200", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        audit.to_string().contains("gateway import"),
        "the import's transactions are audited"
    );
}

#[tokio::test]
async fn an_interrupted_import_resumes() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("Patient.ndjson");
    let patient = |i: usize| {
        format!(
            "{{\"resourceType\":\"Patient\",\"id\":\"p{i}\",\"name\":[{{\"family\":\"F{i}\"}}]}}"
        )
    };
    let mut good: Vec<String> = (0..25).map(patient).collect();
    let mut broken = good.clone();
    broken[17] = "{\"resourceType\":\"Patient\",\"id\":\"p17\",\"gender\":42}".into();
    std::fs::write(&file, broken.join("\n")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = import(&data, &[file.to_str().unwrap(), "--chunk", "5"]);
    assert!(!ok, "a bad line stops the import: {out}");
    assert!(
        out.contains("run the same command again to resume"),
        "{out}"
    );
    // Fixed, the same command goes on after the 15 lines that were committed.
    good.push(patient(25));
    std::fs::write(&file, good.join("\n")).unwrap();
    let (ok, out) = import(&data, &[file.to_str().unwrap(), "--chunk", "5"]);
    assert!(ok, "{out}");
    // 15 lines committed before the bad chunk, maybe 5 more beside it; together with what this
    // run imports, every line exactly once.
    let number = |before: &str| -> u64 {
        let head = out.split(before).next().unwrap();
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    let (imported, skipped) = (number(" resources from"), number(" lines already imported"));
    assert!(skipped == 15 || skipped == 20, "{out}");
    assert_eq!(imported + skipped, 26, "{out}");
    let gw = Gateway::start_in(dir, "");
    let b: Value = client()
        .get(format!("{}/Patient/_history?_count=100", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["total"], 26, "each patient written once");
}

//! Third-party FHIR clients (Python `fhirpy`, `fhirclient`, validated with `fhir.resources`)
//! drive the real gateway binary. Their pinned versions are in
//! `conformance/clients/requirements.txt`; the virtualenv is made once at `<workspace>/.venv`
//! (or taken from `GATEWAY_PYTHON`).

mod common;

use common::Gateway;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A Python with the pinned client packages, installing them from PyPI the first time.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("GATEWAY_PYTHON") {
        return PathBuf::from(p);
    }
    let ws = workspace();
    let venv = ws.join(".venv");
    let py = venv.join("bin/python");
    let requirements = ws.join("conformance/clients/requirements.txt");
    let stamp = venv.join(".requirements");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "python3 -m venv failed: install python3 and python3-venv"
        );
        let ok = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "pip install -r {} failed", requirements.display());
        std::fs::write(&stamp, wanted).unwrap();
    }
    py
}

#[test]
fn python_fhir_clients_drive_the_gateway() {
    let py = python();
    let gw = Gateway::start();
    let out = Command::new(&py)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(workspace().join("conformance/clients"))
        .env("GATEWAY_BASE", &gw.base)
        .env("GATEWAY_TOKEN", common::admin_token())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the Python clients failed:\n{text}");
    assert!(text.contains("7 passed"), "{text}");
}

//! Third-party FHIR clients (Python `fhirpy`, `fhirclient`, validated with `fhir.resources`)
//! drive the real gateway binary. Their pinned versions are in
//! `conformance/clients/requirements.txt` (see `common::python`).

mod common;

use common::{Gateway, python, workspace};
use std::process::Command;

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

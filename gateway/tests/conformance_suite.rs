//! The conformance suite (the `conformance` crate) against the real gateway binary, and against
//! the bare hyper server, which must fail it: a suite that cannot fail proves nothing.

mod common;

use common::Gateway;
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_passes_the_conformance_suite_on_sqlite() {
    passes(Gateway::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_passes_the_conformance_suite_on_postgres() {
    passes(Gateway::start_with(&common::postgres_toml(
        &common::fresh_schema(),
        "",
    )))
    .await;
}

async fn passes(gw: Gateway) {
    let auth = format!("Authorization: Bearer {}", common::admin_token());
    let municipal = format!(
        "Authorization: Bearer {}",
        common::token("system/*.rs", "utrecht", None)
    );
    let client = conformance::client::Fhir::new(&gw.base, &[auth])
        .unwrap()
        .with_municipal(&[municipal], "0344")
        .unwrap();
    let results = conformance::run(&client, None).await;
    assert!(
        results
            .iter()
            .filter(|r| r.group == "social-domain")
            .count()
            >= 4,
        "the social-domain group ran"
    );
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.outcome
                .as_ref()
                .err()
                .map(|e| format!("{}/{}: {e}", r.group, r.name))
        })
        .collect();
    println!("{}", conformance::report::summary(&gw.base, &results, 0.0));
    assert!(results.len() >= 57, "{}", results.len());
    assert!(failed.is_empty(), "{failed:#?}");
}

#[tokio::test]
async fn a_server_that_is_not_fhir_fails_the_suite() {
    let port = common::free_port();
    let mut bare = Command::new(env!("CARGO_BIN_EXE_bare-hello"))
        .arg(format!("127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let client =
        conformance::client::Fhir::new(&format!("http://127.0.0.1:{port}/fhir"), &[]).unwrap();
    let results = conformance::run(&client, None).await;
    let _ = bare.kill();
    let _ = bare.wait();
    let failed = results.iter().filter(|r| r.outcome.is_err()).count();
    assert!(
        failed >= results.len() - 2,
        "only {failed} of {} failed against a non-FHIR server",
        results.len()
    );
}

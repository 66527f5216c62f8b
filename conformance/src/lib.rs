//! The gateway's conformance suite as a library: the `conformance` binary runs it against any
//! FHIR base, and the gateway's own tests run it against the real binary.

pub mod cases;
pub mod client;
pub mod report;

use report::CaseResult;
use std::time::Instant;

/// Runs every case (of the groups whose name contains `group`, if given), in order.
pub async fn run(client: &client::Fhir, group: Option<&str>) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for g in cases::groups() {
        if group.is_some_and(|want| !g.name.contains(want)) {
            continue;
        }
        // Federation needs backends behind the deployment; one that lists none is told so.
        if g.name == "federation" && cases::federation::backends(client).await.is_empty() {
            eprintln!(
                "conformance: group federation skipped: {} lists no backends at /federation",
                client.base
            );
            continue;
        }
        if g.name == "social-domain" && client.municipal.is_none() {
            eprintln!(
                "conformance: group social-domain skipped: no --municipal-header/--municipality given"
            );
            continue;
        }
        for case in g.cases {
            let t = Instant::now();
            let outcome = (case.run)(client.clone()).await;
            results.push(CaseResult {
                group: g.name,
                name: case.name,
                outcome,
                seconds: t.elapsed().as_secs_f64(),
            });
        }
    }
    results
}

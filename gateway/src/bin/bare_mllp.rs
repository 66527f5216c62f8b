//! The benchmark's baseline for the HL7 v2 feed: the gateway's own MLLP listener (framing,
//! parsing, mapping, acknowledgement) with nothing stored, so that bench/bench.py can report
//! what durable storage through the chokepoint costs on top.
//!
//!   bare-mllp ADDR

use adapters::hl7v2::{Applied, Apply, Config, Failure, Mapped};
use std::sync::Arc;

struct Discard;

impl Apply for Discard {
    fn apply<'a>(
        &'a self,
        _: &'a Mapped,
    ) -> futures::future::BoxFuture<'a, Result<Applied, Failure>> {
        Box::pin(async { Ok(Applied::Done) })
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2575".into());
    let mut config = Config::default();
    for (key, org) in gateway::policy::demo::organizations() {
        if key == "umcu" {
            config.senders.insert("UMCU".into(), org);
        }
    }
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    adapters::hl7v2::source::serve(listener, Arc::new(config), None, Arc::new(Discard)).await;
}

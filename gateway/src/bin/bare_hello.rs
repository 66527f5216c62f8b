//! The benchmark baseline: a bare hyper server that answers every request with a small fixed
//! FHIR-sized JSON body. Same runtime, same hyper builder settings as the gateway, none of its work.
//! Usage: `bare-hello ADDR`.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

const BODY: &[u8] = br#"{"resourceType":"Patient","id":"bench","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00.000Z"},"name":[{"family":"Baseline","given":["Bare"]}],"gender":"unknown","birthDate":"1970-01-01"}"#;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!("bare-hello listening on {addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/fhir+json; charset=utf-8")
                        .body(Full::new(Bytes::from_static(BODY)))
                        .expect("static response"),
                )
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

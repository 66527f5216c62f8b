//! Loads NDJSON files into a running gateway through its REST API, as a client would: one
//! `PUT [base]/[type]/[id]` per line (or with `--create` one `POST [base]/[type]`, the server
//! assigning the id; or with `--bundle N` one transaction Bundle of N such PUTs per request, as a
//! bulk client or an integration engine sends them), `--concurrency` requests in flight. Prints
//! one JSON line with how many resources were written, how many failed and the rate. The search benchmark loads its
//! million resources with it (bench/bench.py); in Rust so that the client costs the 2-core
//! machine little beside the gateway it measures.
//!
//!   bench-load --base URL --token JWT [--concurrency N] [--create | --bundle N] [--limit N] FILE.ndjson...

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::io::AsyncBufReadExt;

#[derive(clap::Parser)]
struct Args {
    #[arg(long)]
    base: String,
    #[arg(long)]
    token: String,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// POST each resource as a create (the server assigns the id) instead of a PUT of its id.
    #[arg(long, conflicts_with = "bundle")]
    create: bool,
    /// Sends the lines N at a time as one transaction Bundle (`POST [base]`), each entry a PUT of
    /// its id; a failed transaction counts all of its resources as failed.
    #[arg(long)]
    bundle: Option<usize>,
    /// At most this many lines over all files.
    #[arg(long)]
    limit: Option<u64>,
    files: Vec<std::path::PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .expect("an HTTP client");
    let (tx, rx) = async_channel::<Request>(args.concurrency * 4);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (rx, client, ok, failed, first_error) = (
            rx.clone(),
            client.clone(),
            ok.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let (base, auth, create) = (
            args.base.clone(),
            format!("Bearer {}", args.token),
            args.create,
        );
        workers.push(tokio::spawn(async move {
            while let Ok(Request { path, body, count }) = rx.recv().await {
                let request = if path.is_empty() {
                    client.post(&base)
                } else if create {
                    let ty = path.split('/').next().unwrap_or_default();
                    client.post(format!("{base}/{ty}"))
                } else {
                    client.put(format!("{base}/{path}"))
                };
                let r = request
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .header("authorization", &auth)
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(count, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(count, Ordering::Relaxed);
                        let why = match other {
                            Ok(r) => format!(
                                "{path}: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            ),
                            Err(e) => format!("{path}: {e}"),
                        };
                        first_error.lock().unwrap().get_or_insert(why);
                    }
                }
            }
        }));
    }
    drop(rx);
    let mut sent = 0u64;
    let mut pending: Vec<(String, String)> = Vec::new();
    'files: for file in &args.files {
        let f = tokio::fs::File::open(file)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut lines = tokio::io::BufReader::new(f).lines();
        while let Some(line) = lines.next_line().await.expect("a readable file") {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let (Some(ty), Some(id)) = (v["resourceType"].as_str(), v["id"].as_str()) else {
                continue;
            };
            if args.limit.is_some_and(|n| sent >= n) {
                break 'files;
            }
            sent += 1;
            let path = format!("{ty}/{id}");
            let request = match args.bundle {
                None => Request {
                    path,
                    body: line,
                    count: 1,
                },
                Some(n) => {
                    pending.push((path, line));
                    if pending.len() < n {
                        continue;
                    }
                    transaction(std::mem::take(&mut pending))
                }
            };
            if tx.send(request).await.is_err() {
                break 'files;
            }
        }
    }
    if !pending.is_empty() {
        let _ = tx.send(transaction(pending)).await;
    }
    drop(tx);
    for w in workers {
        let _ = w.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "written": ok,
            "failed": failed.load(Ordering::Relaxed),
            "seconds": secs,
            "per_second": ok as f64 / secs,
            "first_error": *first_error.lock().unwrap(),
        })
    );
}

/// One request to send: a resource to `PUT [base]/{path}`, or with an empty path a Bundle to
/// `POST [base]` carrying `count` resources.
struct Request {
    path: String,
    body: String,
    count: u64,
}

/// A transaction Bundle of the NDJSON `lines`, each entry a PUT of its `Type/id`. The lines are
/// spliced in as they are (each is one JSON object), not parsed and printed again.
fn transaction(lines: Vec<(String, String)>) -> Request {
    let count = lines.len() as u64;
    let mut body = String::from(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
    for (i, (path, line)) in lines.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"resource":"#);
        body.push_str(line);
        body.push_str(r#","request":{"method":"PUT","url":"#);
        body.push_str(&serde_json::Value::String(path.clone()).to_string());
        body.push_str("}}");
    }
    body.push_str("]}");
    Request {
        path: String::new(),
        body,
        count,
    }
}

/// A bounded multi-consumer channel from tokio's primitives: the reader fills it, the workers
/// share the receiving end.
fn async_channel<T: Send + 'static>(
    size: usize,
) -> (tokio::sync::mpsc::Sender<T>, SharedReceiver<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(size);
    (tx, SharedReceiver(Arc::new(tokio::sync::Mutex::new(rx))))
}

struct SharedReceiver<T>(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>);

impl<T> Clone for SharedReceiver<T> {
    fn clone(&self) -> Self {
        SharedReceiver(self.0.clone())
    }
}

impl<T> SharedReceiver<T> {
    async fn recv(&self) -> Result<T, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

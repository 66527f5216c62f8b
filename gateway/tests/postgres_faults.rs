//! PostgreSQL faults: a statement time-out answers 504 and leaves the instance ready; a database
//! restarted under load fails in-flight requests with 503, the pool reconnects, and nothing
//! acknowledged is lost.

mod common;

use common::{FHIR_JSON, Gateway, client, fresh_schema, postgres_url};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn body(i: usize) -> String {
    json!({"resourceType": "Basic", "code": {"text": format!("fault-{i}")}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_answers_504_and_the_instance_stays_ready() {
    let schema = fresh_schema();
    let cfg = format!(
        "store = \"{}\"\n[postgres]\nschema = \"{schema}\"\nstatement_timeout_ms = 300\n",
        postgres_url()
    );
    let gw = Gateway::start_with(&cfg);
    let c = client();
    let created: Value = c
        .post(format!("{}/Basic", gw.base))
        .header("content-type", FHIR_JSON)
        .body(body(0))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{}/Basic/{}", gw.base, created["id"].as_str().unwrap());

    // Another client holds a lock the gateway's read must wait for.
    let mut blocker = sqlx::PgConnection::connect(&postgres_url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE \"{schema}\".resource_current IN ACCESS EXCLUSIVE MODE"
    )))
    .execute(&mut blocker)
    .await
    .unwrap();

    let started = std::time::Instant::now();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(
        !oo.to_string().contains("canceling statement"),
        "no database detail reaches the client: {oo}"
    );
    let ready = c
        .get(format!("http://{}/readyz", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "a slow statement does not make the instance unready"
    );
    let health = c
        .get(format!("http://{}/healthz", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A PostgreSQL server of the test's own, so restarting it disturbs no other test.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        // The server refuses to run as root: it runs as the postgres user.
        assert!(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success()
        );
        let data = dir.path().join("data");
        let ok = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(ok, "initdb failed");
        let pg = PrivatePostgres {
            bin,
            port: common::free_port(),
            dir,
        };
        pg.ctl("start");
        pg
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log");
        let ok = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                action,
            ],
        );
        assert!(ok, "pg_ctl {action} failed");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Best effort: the server may already be stopped.
        let data = self.dir.path().join("data");
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

/// When the PostgreSQL server last started.
async fn postmaster_start(url: &str) -> String {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let (t,): (String,) = sqlx::query_as("SELECT pg_postmaster_start_time()::text")
        .fetch_one(&mut c)
        .await
        .unwrap();
    t
}

fn as_postgres(program: &Path, args: &[&str]) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load_loses_nothing_acknowledged() {
    let pg = PrivatePostgres::start();
    let cfg = format!(
        "store = \"{}\"\n[postgres]\nconnect_timeout_ms = 1000\n",
        pg.url()
    );
    let gw = Gateway::start_with(&cfg);
    let c = client();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (c, base, stop) = (c.clone(), gw.base.clone(), stop.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = c
                        .post(format!("{base}/Basic"))
                        .header("content-type", FHIR_JSON)
                        .body(body(w * 100_000 + i))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    outcomes.push((status, v["id"].as_str().map(str::to_owned), v));
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started_before = postmaster_start(&pg.url()).await;
    let restart = tokio::task::spawn_blocking(move || {
        pg.ctl("restart");
        pg
    });
    let pg = restart.await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    // The server really restarted while the workers were writing. (Whether any request then
    // got a 503 depends on timing: a quick restart can fall between queries, and the pool
    // replaces dead connections before handing them out.)
    assert_ne!(
        postmaster_start(&pg.url()).await,
        started_before,
        "PostgreSQL restarted during the load"
    );

    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for w in workers {
        for (status, id, v) in w.await.unwrap() {
            match status {
                StatusCode::CREATED => acknowledged.push(id.unwrap()),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(v["resourceType"], "OperationOutcome");
                    failed += 1;
                }
                s => panic!("during a restart a request must get 201 or 503, got {s}: {v}"),
            }
        }
    }
    println!(
        "restart under load: {} acknowledged, {failed} answered 503",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 100);
    // The pool reconnected: writes work again.
    let r = c
        .post(format!("{}/Basic", gw.base))
        .header("content-type", FHIR_JSON)
        .body(body(0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Nothing acknowledged was lost.
    for id in &acknowledged {
        let r = c
            .get(format!("{}/Basic/{id}", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "acknowledged Basic/{id} is gone"
        );
    }

    // Store down: not ready (a load balancer stops sending), but alive (no restart); back: ready.
    let pg = tokio::task::spawn_blocking(move || {
        pg.ctl("stop");
        pg
    })
    .await
    .unwrap();
    let ready = c
        .get(format!("http://{}/readyz", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health = c
        .get(format!("http://{}/healthz", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let r = c
        .get(format!("{}/Basic/{}", gw.base, acknowledged[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let pg = tokio::task::spawn_blocking(move || {
        pg.ctl("start");
        pg
    })
    .await
    .unwrap();
    let ready = c
        .get(format!("http://{}/readyz", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    drop(gw);
    drop(pg);
}

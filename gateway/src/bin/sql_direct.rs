//! Benchmark baseline: one SQL query run directly against a database (the same MariaDB the SQL
//! adapter reads), the way a program that bypassed the gateway would: a pool, a bound id per
//! call, the rows fetched. Prints one JSON line: calls/s and latency percentiles (ms).
//!
//!     sql-direct URL "SELECT * FROM t WHERE id = ?" IDS_FILE SECONDS CONCURRENCY

use sqlx::Row;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, query, ids, seconds, concurrency] = &args[..] else {
        eprintln!("usage: sql-direct URL QUERY IDS_FILE SECONDS CONCURRENCY");
        std::process::exit(2);
    };
    let ids: Arc<Vec<i64>> = Arc::new(
        std::fs::read_to_string(ids)
            .expect("ids file")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
    );
    let concurrency: usize = concurrency.parse().expect("concurrency");
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(concurrency as u32)
        .connect(url)
        .await
        .expect("database");
    let until = Instant::now() + Duration::from_secs(seconds.parse().expect("seconds"));
    let next = Arc::new(AtomicUsize::new(0));
    let query: &'static str = Box::leak(query.clone().into_boxed_str());
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (pool, ids, next) = (pool.clone(), ids.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < until {
                    let id = ids[next.fetch_add(1, Ordering::Relaxed) % ids.len()];
                    let t = Instant::now();
                    let rows = sqlx::query(query)
                        .bind(id)
                        .fetch_all(&pool)
                        .await
                        .expect("query");
                    assert_eq!(rows.len(), 1);
                    let _ = rows[0].len();
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
    let p = |q: f64| all[((all.len() as f64 - 1.0) * q) as usize];
    println!(
        "{{\"rps\": {:.1}, \"p50\": {:.3}, \"p90\": {:.3}, \"p99\": {:.3}, \"calls\": {}}}",
        all.len() as f64 / elapsed,
        p(0.5),
        p(0.9),
        p(0.99),
        all.len()
    );
}

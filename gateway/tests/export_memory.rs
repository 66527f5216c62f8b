//! A bulk export streams: the gateway's memory while it exports 120 MB of resources grows by far
//! less than what it writes (one page is held at a time, files are written as they go).

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::Write;

const RESOURCES: usize = 20_000;
/// Characters of filler per resource (one token, so the full-text index stays small).
const FILLER: usize = 6_000;

/// Anonymous resident memory (the heap and stacks). Not `VmRSS`: the SQLite store maps its file,
/// and mapped pages it reads count as resident though the kernel can drop them at any time.
fn anon_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_memory_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ndjson = dir.path().join("Observation.ndjson");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&ndjson).unwrap());
        let filler = "x".repeat(FILLER);
        for i in 0..RESOURCES {
            let o = json!({"resourceType": "Observation", "id": format!("m{i}"), "status": "final",
                "code": {"text": "memory"}, "subject": {"reference": format!("Patient/p{}", i % 50)},
                "note": [{"text": filler}]});
            writeln!(f, "{o}").unwrap();
        }
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["import", "--data"])
        .arg(&data)
        .arg(&ndjson)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gw = Gateway::start_in(dir, "[export]\nmax_resources_per_file = 5000\n");
    let c = client();
    // Warm up: one search page, so that what every request needs is allocated before measuring.
    let r = c
        .get(format!("{}/Observation?_count=500", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = anon_rss_kib(gw.pid());
    let mut peak = before;
    let mut peak_first_half = before;

    let r = c
        .get(format!("{}/$export?_type=Observation", gw.base))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status = r.headers()["content-location"].to_str().unwrap().to_owned();
    let manifest: Value = loop {
        let r = c.get(&status).send().await.unwrap();
        if r.status() == 200 {
            break r.json().await.unwrap();
        }
        assert_eq!(r.status(), 202);
        let progress: usize = r.headers()["x-progress"]
            .to_str()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // Sampled while the job runs: the highest anonymous memory seen, and the highest by the
        // time half was written.
        for _ in 0..10 {
            peak = peak.max(anon_rss_kib(gw.pid()));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if progress < RESOURCES / 2 {
            peak_first_half = peak;
        }
    };
    let after = peak;
    let outputs = manifest["output"].as_array().unwrap();
    let total: u64 = outputs.iter().map(|o| o["count"].as_u64().unwrap()).sum();
    assert_eq!(total, RESOURCES as u64);
    assert_eq!(
        outputs.len(),
        RESOURCES / 5000,
        "split at max_resources_per_file"
    );
    let written_kib = (RESOURCES * FILLER / 1024) as u64;
    let growth = after.saturating_sub(before);
    println!(
        "export of {RESOURCES} resources (~{} MiB): anonymous memory {before} KiB, at most {after} KiB while exporting (+{growth} KiB; {peak_first_half} KiB by half way)",
        written_kib / 1024
    );
    // Flat: the second half of the export needs no more memory than the first did, give or take
    // a page: a page of 500 resources of ~6 KB is in memory (as text and as parsed JSON) while it
    // is decided on and written, and a sample every 20 ms may catch it at its highest in one
    // half and not in the other. Measured on 2026-11-24, 14 runs before and after that day's store
    // changes: second half +2 to +18 MiB over the first, peaks 109-128 MiB with no trend (with
    // 8 MiB here the test failed one run in five). An export that held what it wrote would add
    // ~57 MiB in the second half.
    // (Skipped only if the export finished before a sample at half way could be taken.)
    assert!(
        peak_first_half == before || after.saturating_sub(peak_first_half) < 24 * 1024,
        "memory kept growing: {peak_first_half} KiB at half way, {after} KiB at the end"
    );
    // In all, the same runs grew by 16-45 MiB (depending as much on what the warm-up left
    // allocated as on the export); one that held what it wrote would grow by 114 MiB or more.
    assert!(
        growth < written_kib / 2,
        "peak memory grew by {growth} KiB while writing {written_kib} KiB"
    );
}

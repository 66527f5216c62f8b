//! Sends HL7 v2 ADT^A04 messages over MLLP as a hospital's interface engine does: each connection
//! sends one message, waits for its ACK, sends the next. Prints one JSON line: messages
//! acknowledged with AA, other answers, the rate, and the ACK latency median and 99th percentile.
//! bench/bench.py runs it against the gateway and against `bare-mllp` (the same listener, nothing
//! stored) side by side.
//!
//!   mllp-load --addr HOST:PORT [--connections N] [--seconds S] [--run NAME]

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Parser)]
struct Args {
    #[arg(long)]
    addr: String,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Distinguishes this run's control ids and patient numbers from other runs'.
    #[arg(long, default_value = "run")]
    run: String,
}

fn a04(run: &str, conn: usize, n: usize) -> Vec<u8> {
    let id = format!("{run}-{conn}-{n}");
    let mut m = vec![0x0B];
    m.extend(
        format!(
            "MSH|^~\\&|HIX|UMCU|GATEWAY|HHU|20261101101000||ADT^A04^ADT_A01|{id}|P|2.5|||AL|NE||8859/1\r\
             EVN|A04|20261101101000\r\
             PID|1||999911120^^^NLMINBIZA^NNNLD~L{id}^^^UMCU^PI||Belasting^Test^^^^^L||19800101|F|||Heidelberglaan 100^^Utrecht^^3584 CX^NL^H\r\
             PV1|1|O|POLI^^^UMCU||||12345^Arts^A|||INT||||1|||12345^Arts^A|OP|V{id}\r"
        )
        .into_bytes(),
    );
    m.extend([0x1C, 0x0D]);
    m
}

async fn connection(args: &Args, conn: usize, until: Instant) -> (u64, u64, Vec<Duration>) {
    let mut s = tokio::net::TcpStream::connect(&args.addr)
        .await
        .expect("connect");
    s.set_nodelay(true).ok();
    let (mut ok, mut other, mut lat) = (0, 0, Vec::new());
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut n = 0;
    while Instant::now() < until {
        let sent = Instant::now();
        if s.write_all(&a04(&args.run, conn, n)).await.is_err() {
            break;
        }
        n += 1;
        buf.clear();
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return (ok, other, lat),
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
            if buf.ends_with(&[0x1C, 0x0D]) {
                break;
            }
        }
        lat.push(sent.elapsed());
        if buf.windows(7).any(|w| w == b"MSA|AA|") {
            ok += 1;
        } else {
            other += 1;
        }
    }
    (ok, other, lat)
}

#[tokio::main]
async fn main() {
    let args = <Args as clap::Parser>::parse();
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let runs = (0..args.connections).map(|c| connection(&args, c, until));
    let results = futures::future::join_all(runs).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (mut ok, mut other, mut lat) = (0, 0, Vec::new());
    for (o, x, l) in results {
        ok += o;
        other += x;
        lat.extend(l);
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "acknowledged": ok,
            "other": other,
            "seconds": elapsed,
            "per_second": ok as f64 / elapsed,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        })
    );
}

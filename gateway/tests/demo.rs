//! `gateway demo`, the README's first command, as a newcomer runs it: the real binary starts the
//! demo region (St. Antonius' server behind the adapter, UMC Utrecht's feed over MLLP, a
//! consent) and prints what five tokens see of one person's lab results.

mod common;

use common::free_port;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often the demo is started again when a port that `free_port` found free was taken by
/// another process before the demo bound it (ports are picked, then bound: a race no test can
/// close); any other failure fails at once.
const PORT_RACE_ATTEMPTS: usize = 3;

/// Runs `gateway demo` on free ports until it prints its table (then stops it): its stdout lines,
/// or what it printed on both streams when it did not come up.
fn run_demo() -> Result<Vec<String>, String> {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("demo")
        .arg("--data")
        .arg(data.path().join("demo"))
        .args(["--port", &free_port().to_string()])
        .args(["--partner-port", &free_port().to_string()])
        .args(["--token-port", &free_port().to_string()])
        .args(["--mllp-port", &free_port().to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops the demo"))
    {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let errors = errors.join().unwrap_or_default();
    if lines.iter().any(|l| l.contains("Ctrl-C stops the demo")) {
        Ok(lines)
    } else {
        Err(format!("{}\n--- stderr ---\n{errors}", lines.join("\n")))
    }
}

#[test]
fn the_demo_region_shows_who_sees_what() {
    let started = Instant::now();
    let mut lines = Err(String::new());
    for _ in 0..PORT_RACE_ATTEMPTS {
        lines = run_demo();
        match &lines {
            Err(e) if e.contains("Address already in use") => continue,
            _ => break,
        }
    }
    let lines = lines.unwrap_or_else(|e| panic!("the demo did not come up:\n{e}"));
    let text = lines.join("\n");
    let row = |who: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(who))
            .unwrap_or_else(|| panic!("no row for {who}:\n{text}"))
            .clone()
    };
    let both = |l: &str| l.contains("(UMC Utrecht)") && l.contains("(St. Antonius)");
    assert!(both(&row("UMC Utrecht clinician")), "{text}");
    assert!(both(&row("GP")), "{text}");
    assert!(both(&row("the patient's own app")), "{text}");
    // The care home sees its own client record (behind the SQL adapter), not the hospitals'.
    let care = row("elderly care");
    assert!(
        care.contains("(care home)") && !care.contains("(UMC Utrecht)"),
        "{text}"
    );
    // The social domain: the municipal app sees both of Utrecht's allocations, the youth-care
    // provider only the Jeugdwet one addressed to it.
    let municipal = row("municipal app (Utrecht)");
    assert!(
        municipal.contains("Wmo 2015 allocation 0344-5001")
            && municipal.contains("Jeugdwet allocation 0344-7001"),
        "{text}"
    );
    let youth = row("youth care");
    assert!(
        youth.contains("Jeugdwet allocation 0344-7001") && !youth.contains("Wmo"),
        "{text}"
    );
    assert!(row("municipal app").ends_with("200, nothing"), "{text}");
    assert_eq!(text.matches("curl -s").count(), 5, "{text}");
    eprintln!("demo up in {:?}", started.elapsed());
}

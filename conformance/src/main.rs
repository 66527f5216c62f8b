//! `conformance --base URL`: runs the gateway's conformance suite against any FHIR R4 base (the
//! gateway, or a partner's deployment) and writes a JUnit XML report and a readable summary.
//! Exit code 0 when every case passed, 1 otherwise, 2 when the suite could not run.

use clap::Parser;
use conformance::{client, report};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "conformance",
    version,
    about = "Conformance suite for the regional FHIR gateway"
)]
struct Args {
    /// The FHIR base URL, e.g. http://127.0.0.1:8080/fhir
    #[arg(long)]
    base: String,
    /// Where to write the JUnit XML report.
    #[arg(long, default_value = "conformance-report.xml")]
    junit: PathBuf,
    /// Only run groups whose name contains this.
    #[arg(long)]
    group: Option<String>,
    /// Extra request header, `Name: value` (repeatable), e.g. an Authorization header.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// A municipal app's request header (repeatable), for the social-domain group; without it
    /// the group is skipped.
    #[arg(long = "municipal-header", requires = "municipality")]
    municipal_headers: Vec<String>,
    /// The municipal app's municipality (CBS code, e.g. 0344), the Afzender of the iWmo
    /// messages the group sends.
    #[arg(long)]
    municipality: Option<String>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let client =
        match client::Fhir::new(&args.base, &args.headers).and_then(|c| match &args.municipality {
            Some(code) => c.with_municipal(&args.municipal_headers, code),
            None => Ok(c),
        }) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("conformance: {e}");
                std::process::exit(2);
            }
        };
    let started = Instant::now();
    let results = conformance::run(&client, args.group.as_deref()).await;
    let summary = report::summary(&args.base, &results, started.elapsed().as_secs_f64());
    print!("{summary}");
    if let Err(e) = std::fs::write(&args.junit, report::junit(&results)) {
        eprintln!("conformance: cannot write {}: {e}", args.junit.display());
        std::process::exit(2);
    }
    let failed = results.iter().filter(|r| r.outcome.is_err()).count();
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

//! `gateway`: the regional FHIR gateway's command line.

use clap::{Parser, Subcommand};
use gateway::app::App;
use gateway::config::Config;
use std::path::PathBuf;

/// mimalloc: glibc malloc was ~15 % of a read's CPU under load (see the workspace Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Health Hub Utrecht regional FHIR R4 gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve FHIR R4 at /fhir (embedded SQLite store in the data directory).
    Serve {
        /// TOML config file (schema: schemas/config.schema.json).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the config).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (overrides the config).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Store: "sqlite" or a postgres:// URL (overrides the config; from a secret in Kubernetes).
        #[arg(long, env = "GATEWAY_STORE", hide_env_values = true)]
        store: Option<String>,
        /// Address of the HL7 v2 (MLLP) listener (overrides the config's [mllp] listen).
        #[arg(long)]
        mllp_listen: Option<String>,
    },
    /// The demo region in one process: St. Antonius' FHIR server behind the adapter, UMC
    /// Utrecht's HL7 v2 feed replayed over MLLP, a consent, and tokens to try (data in --data,
    /// recreated at every start).
    Demo {
        #[arg(long, default_value = "demo-data")]
        data: PathBuf,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value_t = 8081)]
        partner_port: u16,
        #[arg(long, default_value_t = 8082)]
        token_port: u16,
        #[arg(long, default_value_t = 2575)]
        mllp_port: u16,
    },
    /// Print a demo token (signed with the demo key that only the demo config trusts).
    Token {
        /// SMART scopes, space-separated, e.g. "user/*.rs" or "patient/Observation.rs".
        #[arg(long)]
        scope: String,
        /// The patient launch context (for patient/ scopes).
        #[arg(long)]
        patient: Option<String>,
        /// The demo organisation the token speaks for: umcu, antonius, gp, vvt, youth, utrecht, ggd.
        #[arg(long, default_value = "umcu")]
        org: String,
        /// fhirUser claim, e.g. Practitioner/123.
        #[arg(long)]
        fhir_user: Option<String>,
        /// Purpose of use, e.g. ETREAT for emergency access.
        #[arg(long)]
        purpose: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// The access log: `gateway audit verify` recomputes the hash chain (exit 1 if broken).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Rebuild the search index of every stored resource (after search parameters changed).
    Reindex {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, env = "GATEWAY_STORE", hide_env_values = true)]
        store: Option<String>,
    },
    /// Load NDJSON files (Bulk Data, Synthea) or transaction/batch Bundles (.json) into the store,
    /// with a progress bar and a summary; a second run resumes where an interrupted one stopped.
    Import {
        /// Files or directories (their .ndjson and .json files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, env = "GATEWAY_STORE", hide_env_values = true)]
        store: Option<String>,
        /// NDJSON lines per transaction.
        #[arg(long, default_value_t = 500)]
        chunk: usize,
        /// The organisation the data is held by: a demo key (umcu, antonius, ...) or the
        /// identifier value of a configured issuer's organisation; default the first issuer's.
        #[arg(long)]
        org: Option<String>,
    },
    /// Check a config file against schemas/config.schema.json and exit (0 when valid).
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify that no audit record was edited, inserted or removed.
    Verify {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, env = "GATEWAY_STORE", hide_env_values = true)]
        store: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Token {
            scope,
            patient,
            org,
            fhir_user,
            purpose,
            ttl,
        } => {
            let request = gateway::policy::demo::TokenRequest {
                org: &org,
                scope: &scope,
                patient: patient.as_deref(),
                fhir_user: fhir_user.as_deref(),
                purpose_of_use: purpose.as_deref(),
                subject: None,
                ttl_secs: ttl,
            };
            println!(
                "{}",
                gateway::policy::demo::mint(&request).unwrap_or_else(|e| fail(&e))
            );
        }
        Command::Reindex {
            config,
            data,
            store,
        } => {
            let (cfg, runtime) = offline(config, data, store);
            let (n, installed) = runtime
                .block_on(async {
                    let store = gateway::app::open_store(&cfg).await?;
                    // Custom SearchParameters first, so that the rebuilt index includes them.
                    let policy = gateway::policy::Policy::new(store.clone(), &cfg)?;
                    let resources = policy.search_parameter_resources().await?;
                    let installed = gateway::fhir::search_params::install(&resources)
                        .map_err(gateway::error::Error::invalid)?;
                    Ok::<_, gateway::error::Error>((store.reindex().await?, installed))
                })
                .unwrap_or_else(|e| fail(&e.log_detail()));
            println!("reindexed {n} resources");
            if !installed.is_empty() {
                println!("custom search parameters: {}", installed.join(", "));
            }
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    config,
                    data,
                    store,
                },
        } => {
            let (cfg, runtime) = offline(config, data, store);
            let result = runtime.block_on(async {
                let store = gateway::app::open_store(&cfg).await?;
                gateway::audit::verify(store.as_ref()).await
            });
            match result {
                Ok(v) if v.broken.is_empty() => {
                    println!("audit log: {} records, chain intact", v.records)
                }
                Ok(v) => {
                    println!(
                        "audit log: {} records, chain BROKEN at sequence numbers {:?}",
                        v.records, v.broken
                    );
                    std::process::exit(1);
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Import {
            paths,
            config,
            data,
            store,
            chunk,
            org,
        } => import(paths, config, data, store, chunk.max(1), org),
        Command::Demo {
            data,
            port,
            partner_port,
            token_port,
            mllp_port,
        } => {
            init_logging("text");
            let ports = gateway::demo_region::Ports {
                fhir: port,
                partner: partner_port,
                token: token_port,
                mllp: mllp_port,
            };
            runtime()
                .block_on(gateway::demo_region::run(data, ports))
                .unwrap_or_else(|e| fail(&e));
        }
        Command::CheckConfig { file } => {
            Config::load(&file).unwrap_or_else(|e| fail(&e));
            println!("{}: valid", file.display());
        }
        Command::Serve {
            config,
            listen,
            data,
            store,
            mllp_listen,
        } => {
            let mut cfg = match config {
                Some(p) => Config::load(&p),
                // No config file: the demo region, which trusts the demo issuers.
                None => Ok(Config::demo()),
            }
            .unwrap_or_else(|e| fail(&e));
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data {
                cfg.data_dir = d;
            }
            if let Some(m) = mllp_listen {
                cfg.mllp.listen = Some(m);
            }
            if let Some(s) = store {
                if s != "sqlite" && !s.starts_with("postgres://") && !s.starts_with("postgresql://")
                {
                    fail("--store / GATEWAY_STORE must be \"sqlite\" or a postgres:// URL");
                }
                cfg.store = s;
            }
            init_logging(&cfg.log_format);
            runtime().block_on(serve(cfg));
        }
    }
}

async fn serve(cfg: Config) {
    let tls = cfg
        .tls
        .as_ref()
        .map(|t| gateway::server::tls_acceptor(t).unwrap_or_else(|e| fail(&e)));
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .unwrap_or_else(|e| fail(&format!("cannot listen on {}: {e}", cfg.listen)));
    let mllp = match &cfg.mllp.listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .unwrap_or_else(|e| fail(&format!("cannot listen for MLLP on {a}: {e}"))),
        ),
        None => None,
    };
    let app = App::build(cfg)
        .await
        .unwrap_or_else(|e| fail(&e.to_string()))
        .share();
    if let Some(l) = mllp {
        gateway::feed::start(&app, l).unwrap_or_else(|e| fail(&e));
    }
    gateway::inbox::start(&app);
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(data = %app.config.data_dir.display(), "FHIR R4 base at {scheme}://{addr}/fhir");
    app.exports.clear_leftovers();
    gateway::server::serve(app, listener, tls, shutdown_signal()).await;
}

fn import(
    paths: Vec<PathBuf>,
    config: Option<PathBuf>,
    data: Option<PathBuf>,
    store: Option<String>,
    chunk: usize,
    org: Option<String>,
) {
    let (cfg, runtime) = offline(config, data, store);
    let organization = {
        let configured: Vec<_> = cfg
            .auth
            .issuers
            .iter()
            .map(|i| i.organization.clone())
            .collect();
        let demo = gateway::policy::demo::organizations();
        match org.as_deref() {
            None => configured
                .first()
                .cloned()
                .unwrap_or_else(|| demo[0].1.clone()),
            Some(o) => configured
                .iter()
                .find(|c| c.value == o)
                .cloned()
                .or_else(|| demo.iter().find(|(k, _)| *k == o).map(|(_, c)| c.clone()))
                .unwrap_or_else(|| fail(&format!("--org {o}: no such organisation"))),
        }
    };
    let files = gateway::import::files(&paths).unwrap_or_else(|e| fail(&e.log_detail()));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} lines ({per_sec}, {eta} left)",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    let summary = runtime.block_on(async {
        let app = App::build(cfg).await?.share();
        let principal = gateway::policy::local_operator(organization);
        gateway::import::run(&app, &principal, &files, chunk, &bar).await
    });
    bar.finish_and_clear();
    match summary {
        Ok(s) => println!(
            "imported {} resources from {} files in {:.1} s ({:.0} resources/s); {} lines already imported before, {} lines not FHIR resources",
            s.resources,
            s.files,
            s.seconds,
            s.rate(),
            s.skipped,
            s.ignored
        ),
        Err(e) => {
            eprintln!("gateway import: {}", e.log_detail());
            eprintln!(
                "what was imported before the failure stays; run the same command again to resume"
            );
            std::process::exit(1);
        }
    }
}

/// SIGTERM (Kubernetes, systemd) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .unwrap_or_else(|e| fail(&format!("cannot install SIGTERM handler: {e}")));
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

fn init_logging(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// The config and a runtime for a command that works on the store without serving
/// (`reindex`, `audit verify`): `--config`, then `--data` and `--store` over it.
fn offline(
    config: Option<PathBuf>,
    data: Option<PathBuf>,
    store: Option<String>,
) -> (Config, tokio::runtime::Runtime) {
    let mut cfg = match config {
        Some(p) => Config::load(&p).unwrap_or_else(|e| fail(&e)),
        None => Config::default(),
    };
    if let Some(d) = data {
        cfg.data_dir = d;
    }
    if let Some(s) = store {
        cfg.store = s;
    }
    (cfg, runtime())
}

/// The runtime. Worker stacks of 8 MiB (tokio's default is 2): a request's future nests the
/// handler, a bundle's entries and the policy's lookups, and unoptimised builds lay them out far
/// larger than release ones. Only touched pages cost memory.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()))
}

fn fail(msg: &str) -> ! {
    eprintln!("gateway: {msg}");
    std::process::exit(2);
}

//! Starts the real `gateway` binary for end-to-end tests: free port, own data directory, optional
//! config; stopped with SIGTERM when dropped.
#![allow(dead_code)]

pub mod oracle;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Gateway {
    pub child: Child,
    pub addr: String,
    pub base: String,
    pub dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with("")
    }

    /// Starts with `config` (TOML) written to a file in the data directory.
    pub fn start_with(config: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        Gateway::start_in(dir, config)
    }

    pub fn start_in(mut dir: tempfile::TempDir, config: &str) -> Gateway {
        // Tests authenticate with demo tokens: trust the demo issuers unless the test configures auth.
        let config = if config.contains("[auth]") {
            config.to_owned()
        } else {
            format!("{config}\n[auth]\ndemo = true\n")
        };
        let cfg_path: PathBuf = dir.path().join("gateway.toml");
        std::fs::File::create(&cfg_path)
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        // A port found free may be taken before the gateway binds it (tests start gateways in
        // parallel): that gateway exits, and another answers on the port. Readiness is therefore
        // taken from this gateway's own log, and a lost port is tried again with another.
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
                .args(["serve", "--config"])
                .arg(&cfg_path)
                .args(["--listen", &addr, "--data"])
                .arg(dir.path().join("data"))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("gateway.log")).unwrap())
                .spawn()
                .expect("start gateway");
            let mut gw = Gateway {
                child,
                base: format!("http://{addr}/fhir"),
                addr,
                dir,
            };
            if gw.wait_ready() {
                return gw;
            }
            let log = gw.log();
            if !log.contains("Address already in use") {
                panic!("gateway exited at start:\n{log}");
            }
            dir = gw.take_dir();
        }
        panic!("no free port for the gateway after 5 tries");
    }

    /// Whether this gateway came up (false: it exited, its port taken); panics after 30 s.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        let listening = format!("FHIR R4 base at http://{}/fhir", self.addr);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if self.log().contains(&listening)
                && let Ok(mut s) = std::net::TcpStream::connect(&self.addr)
            {
                let _ =
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut buf = String::new();
                use std::io::Read;
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.1 200") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway did not become ready at {}", self.addr);
    }

    /// The data directory of a gateway that has exited (a start that lost its port).
    fn take_dir(mut self) -> tempfile::TempDir {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        std::mem::forget(self);
        dir
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.child.wait().unwrap()
    }

    /// Stops the process and keeps the data directory (for restart tests).
    pub fn stop_keep_data(mut self) -> tempfile::TempDir {
        self.terminate();
        let dir = tempfile::tempdir().unwrap();
        let old = std::mem::replace(&mut self.dir, dir);
        std::mem::forget(self);
        old
    }

    /// Kills the process (SIGKILL: no shutdown at all) and keeps the data directory.
    pub fn kill_keep_data(mut self) -> tempfile::TempDir {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let old = std::mem::replace(&mut self.dir, dir);
        std::mem::forget(self);
        old
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // A failing test shows the end of the gateway's log: a crash there is the likely cause.
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.dir.path().join("gateway.log"))
        {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- gateway log (last 30 lines) ---");
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{l}");
            }
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A demo token (see `gateway token`).
pub fn token(scope: &str, org: &str, patient: Option<&str>) -> String {
    gateway::policy::demo::mint(&gateway::policy::demo::TokenRequest {
        org,
        scope,
        patient,
        fhir_user: None,
        purpose_of_use: None,
        subject: None,
        ttl_secs: 3600,
    })
    .unwrap()
}

/// The token most tests use: the demo hospital's back-end service with every permission.
pub fn admin_token() -> String {
    token("system/*.cruds", "umcu", None)
}

/// A client that sends `admin_token()` on every request.
pub fn client() -> reqwest::Client {
    client_with(&admin_token())
}

/// A client without credentials.
pub fn anon() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// GET `url` with `c`; the body as JSON (the test fails when it is not).
pub async fn get_json(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

pub fn client_with(token: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .default_headers(headers)
        .build()
        .unwrap()
}

/// An `Authorization` header line for raw HTTP requests.
pub fn auth_line() -> String {
    format!("Authorization: Bearer {}\r\n", admin_token())
}

pub const FHIR_JSON: &str = "application/fhir+json";

/// The PostgreSQL the tests use (CI: 127.0.0.1:5432, database `test`, trust auth).
pub fn postgres_url() -> String {
    std::env::var("GATEWAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema no other test uses.
pub fn fresh_schema() -> String {
    format!("gwtest_{}", uuid::Uuid::new_v4().simple())
}

pub fn postgres_config(schema: &str) -> gateway::config::Postgres {
    gateway::config::Postgres {
        schema: schema.to_owned(),
        ..Default::default()
    }
}

/// Gateway config (TOML) for a PostgreSQL store in `schema`, plus extra lines.
pub fn postgres_toml(schema: &str, extra: &str) -> String {
    format!(
        "store = \"{}\"\n{extra}\n[postgres]\nschema = \"{schema}\"\n",
        postgres_url()
    )
}

pub fn workspace() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A Python with the pinned packages of `conformance/clients/requirements.txt` (third-party
/// FHIR clients, the `carebundle` generator), installed from PyPI into `<workspace>/.venv` the
/// first time (or `GATEWAY_PYTHON`).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("GATEWAY_PYTHON") {
        return PathBuf::from(p);
    }
    let ws = workspace();
    let venv = ws.join(".venv");
    let py = venv.join("bin/python");
    let requirements = ws.join("conformance/clients/requirements.txt");
    let stamp = venv.join(".requirements");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    // Test binaries run in parallel: one of them builds the virtualenv, the others wait.
    let lock = std::fs::File::create(ws.join(".venv.lock")).unwrap();
    lock.lock().unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "python3 -m venv failed: install python3 and python3-venv"
        );
        let ok = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "pip install -r {} failed", requirements.display());
        std::fs::write(&stamp, wanted).unwrap();
    }
    py
}

//! The gateway's configuration: one TOML file, checked against `schemas/config.schema.json`
//! before it is read, so a bad file is refused with the JSON pointer of every error.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The config schema, compiled into the binary: the product needs nothing from disk to check it.
pub const SCHEMA: &str = include_str!("../../schemas/config.schema.json");

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub base_url: Option<String>,
    pub store: String,
    pub postgres: Postgres,
    pub auth: Auth,
    pub log_format: String,
    pub rest: Rest,
    pub limits: Limits,
    pub tls: Option<Tls>,
    pub consent: ConsentPolicy,
    pub export: Export,
    /// Backends behind adapters (`[[adapters]]`), each section checked against
    /// `schemas/adapter.schema.json` when the adapters are built.
    pub adapters: Vec<serde_json::Value>,
    /// The HL7 v2 (MLLP) listener and the senders it accepts (`[mllp]`).
    pub mllp: adapters::hl7v2::Config,
    /// iWmo/iJw messages: the municipalities that send them, the drop directory (`[istandaarden]`).
    pub istandaarden: adapters::istandaarden::Config,
}

/// Bulk data `$export` (see `export.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Export {
    /// Resources per output file; a type with more gets several files (so a download is
    /// bounded, and so is the memory that serves it: a file is sent from memory whole).
    pub max_resources_per_file: u64,
    /// Resources read, disclosed and written per step (the memory an export holds at once).
    pub page_size: u32,
    /// Export jobs running at once; a kick-off beyond this is answered 429.
    pub max_running_jobs: u32,
    /// How long a finished job's files are kept.
    pub retention_secs: u64,
}

impl Default for Export {
    fn default() -> Self {
        Export {
            max_resources_per_file: 10_000,
            page_size: 500,
            max_running_jobs: 2,
            retention_secs: 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rest {
    pub update_create: bool,
    pub default_page_size: u32,
    pub max_page_size: u32,
    pub default_handling: String,
    /// A sorted search keeps the order of at most this many matches for its pages.
    pub max_sorted_results: u32,
    /// How long the pages of a sorted search stay available.
    pub search_snapshot_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    pub audience: Vec<String>,
    pub leeway_secs: u64,
    pub demo: bool,
    pub jwks_min_refresh_secs: u64,
    pub issuers: Vec<Issuer>,
    pub token_endpoint: Option<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            audience: Vec::new(),
            leeway_secs: 30,
            demo: false,
            jwks_min_refresh_secs: 60,
            issuers: Vec::new(),
            token_endpoint: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub iss: String,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub organization: Organization,
}

/// An organisation of the region, as its issuer speaks for it (one type with the adapters').
pub use adapters::Organization;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Postgres {
    pub schema: String,
    pub pool_size: u32,
    pub statement_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Default for Postgres {
    fn default() -> Self {
        Postgres {
            schema: "public".into(),
            pool_size: 16,
            statement_timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_json_depth: u32,
    pub max_id_length: u32,
    pub max_url_bytes: u32,
    pub header_read_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    pub max_connections: u32,
    pub max_validation_errors: u32,
    /// Entries a batch or transaction Bundle may have (its size is bounded by `max_body_bytes`).
    pub max_bundle_entries: u32,
}

/// The region's consent policy (see `policy::regional`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsentPolicy {
    /// Medical and social-domain data held by another organisation needs an explicit permit.
    pub opt_in: bool,
    /// Resource types shared by scope alone (no consent needed).
    pub administrative_types: Vec<String>,
    /// Organisation types that never see medical data, whatever the consent says.
    pub medical_barred: Vec<String>,
    /// How long a patient's consent rules and decisions are cached (they are also dropped on
    /// every Consent write through this process).
    pub cache_ttl_secs: u64,
    pub cache_capacity: u64,
    pub decision_point: Option<DecisionPoint>,
}

impl Default for ConsentPolicy {
    fn default() -> Self {
        ConsentPolicy {
            opt_in: true,
            administrative_types: [
                "Patient",
                "Practitioner",
                "PractitionerRole",
                "Organization",
                "Location",
                "Endpoint",
                "HealthcareService",
                "RelatedPerson",
                "AuditEvent",
            ]
            .map(String::from)
            .to_vec(),
            medical_barred: vec!["municipality".into()],
            cache_ttl_secs: 30,
            cache_capacity: 100_000,
            decision_point: None,
        }
    }
}

/// An external consent decision point (Mitz-style closed question over HTTP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionPoint {
    pub url: String,
    #[serde(default = "default_pdp_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_pdp_ttl")]
    pub cache_ttl_secs: u64,
}

fn default_pdp_timeout() -> u64 {
    500
}
fn default_pdp_ttl() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("data"),
            base_url: None,
            store: "sqlite".into(),
            postgres: Postgres::default(),
            auth: Auth::default(),
            log_format: "text".into(),
            rest: Rest::default(),
            limits: Limits::default(),
            tls: None,
            consent: ConsentPolicy::default(),
            export: Export::default(),
            adapters: Vec::new(),
            mllp: adapters::hl7v2::Config::default(),
            istandaarden: adapters::istandaarden::Config::default(),
        }
    }
}

impl Default for Rest {
    fn default() -> Self {
        Rest {
            update_create: true,
            default_page_size: 20,
            max_page_size: 1000,
            default_handling: "lenient".into(),
            max_sorted_results: 100_000,
            search_snapshot_ttl_secs: 3600,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 32 * 1024 * 1024,
            max_json_depth: 64,
            max_id_length: 64,
            max_url_bytes: 8192,
            header_read_timeout_ms: 30_000,
            request_timeout_ms: 60_000,
            idle_timeout_ms: 120_000,
            shutdown_grace_ms: 30_000,
            max_connections: 4096,
            max_validation_errors: 50,
            max_bundle_entries: 1000,
        }
    }
}

impl Limits {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

impl Config {
    /// Parses and checks a TOML config. Errors name each offending place as a JSON pointer.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let value: toml::Value =
            toml::from_str(text).map_err(|e| format!("config is not valid TOML: {e}"))?;
        let json = serde_json::to_value(&value).map_err(|e| format!("config: {e}"))?;
        let schema: serde_json::Value =
            serde_json::from_str(SCHEMA).map_err(|e| format!("config schema: {e}"))?;
        let validator =
            jsonschema::validator_for(&schema).map_err(|e| format!("config schema: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| {
                let pointer = e.instance_path().to_string();
                format!(
                    "{}: {e}",
                    if pointer.is_empty() {
                        "/".to_owned()
                    } else {
                        pointer
                    }
                )
            })
            .collect();
        if !errors.is_empty() {
            return Err(format!("config refused:\n  {}", errors.join("\n  ")));
        }
        let config: Config = serde_json::from_value(json).map_err(|e| format!("config: {e}"))?;
        if !config.auth.issuers.is_empty() && config.auth.audience.is_empty() {
            return Err(
                "config refused:\n  /auth/audience: required when issuers are configured".into(),
            );
        }
        Ok(config)
    }

    /// The demo region's config: what `gateway serve` runs without a config file. It trusts the
    /// built-in demo issuers, whose private key is in the repository: never for production.
    pub fn demo() -> Config {
        let mut c = Config::default();
        c.auth.demo = true;
        c
    }

    pub fn load(path: &std::path::Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::from_toml(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.limits.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(c.limits.max_json_depth, 64);
        assert!(c.rest.update_create);
    }

    #[test]
    fn bad_config_names_each_error_by_pointer() {
        let err = Config::from_toml("listen = 5\n[limits]\nmax_json_depth = 1\nbogus = true\n")
            .unwrap_err();
        assert!(err.contains("/listen"), "{err}");
        assert!(err.contains("/limits/max_json_depth"), "{err}");
        assert!(err.contains("/limits"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn postgres_store_is_configured_by_url() {
        let c = Config::from_toml(
            "store = \"postgres://postgres@127.0.0.1:5432/test\"\n[postgres]\nschema = \"gw\"\nstatement_timeout_ms = 100\n",
        )
        .unwrap();
        assert_eq!(c.store, "postgres://postgres@127.0.0.1:5432/test");
        assert_eq!(c.postgres.schema, "gw");
        assert_eq!(c.postgres.statement_timeout_ms, 100);
        assert!(
            Config::from_toml("store = \"mysql://x\"\n")
                .unwrap_err()
                .contains("/store")
        );
        assert!(
            Config::from_toml("[postgres]\nschema = \"Robert'); DROP\"\n")
                .unwrap_err()
                .contains("/postgres/schema")
        );
    }

    #[test]
    fn issuers_need_an_audience_and_a_key_source() {
        let issuer = "[[auth.issuers]]\niss = \"https://idp.umcu.nl\"\njwks_file = \"k.json\"\n\
                      organization = { system = \"http://fhir.nl/fhir/NamingSystem/ura\", value = \"1\", type = \"hospital\", name = \"UMCU\" }\n";
        let err = Config::from_toml(&format!("[auth]\n{issuer}")).unwrap_err();
        assert!(err.contains("/auth/audience"), "{err}");
        let ok = Config::from_toml(&format!(
            "[auth]\naudience = [\"https://gw/fhir\"]\n{issuer}"
        ))
        .unwrap();
        assert_eq!(ok.auth.issuers[0].organization.kind, "hospital");
        assert!(!ok.auth.demo);
        let no_keys = issuer.replace("jwks_file = \"k.json\"\n", "");
        assert!(Config::from_toml(&format!("[auth]\naudience = [\"a\"]\n{no_keys}")).is_err());
        assert!(
            !Config::default().auth.demo,
            "only the built-in demo config trusts the demo issuers"
        );
        assert!(Config::demo().auth.demo);
    }

    #[test]
    fn a_full_config_is_read() {
        let c = Config::from_toml(
            "listen = \"0.0.0.0:9090\"\ndata_dir = \"/tmp/x\"\nbase_url = \"https://fhir.example.nl/fhir\"\n\
             [rest]\nupdate_create = false\nmax_page_size = 50\n[limits]\nmax_body_bytes = 2048\n",
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9090");
        assert!(!c.rest.update_create);
        assert_eq!(c.rest.max_page_size, 50);
        assert_eq!(c.limits.max_body_bytes, 2048);
        assert_eq!(c.base_url.as_deref(), Some("https://fhir.example.nl/fhir"));
    }
}

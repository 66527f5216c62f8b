//! The `kind = "fhir"` config section (checked against `schemas/adapter.schema.json` before it
//! is read here, so the defaults below are the schema's).

use crate::Organization;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub name: String,
    pub organization: Organization,
    pub base_url: String,
    pub resources: Vec<Resource>,
    #[serde(default = "timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "retries")]
    pub retries: u32,
    #[serde(default = "max_response_bytes")]
    pub max_response_bytes: usize,
    #[serde(default)]
    pub breaker: Breaker,
    #[serde(default)]
    pub cache: Cache,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub auth: Auth,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Resource {
    #[serde(rename = "type")]
    pub resource_type: String,
    #[serde(default = "read_and_search")]
    pub interactions: Vec<String>,
    #[serde(default)]
    pub search_params: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Breaker {
    #[serde(default = "failures")]
    pub failures: u32,
    #[serde(default = "open_ms")]
    pub open_ms: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failures: failures(),
            open_ms: open_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Cache {
    #[serde(default = "enabled")]
    pub enabled: bool,
    #[serde(default = "max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "fresh_ms")]
    pub fresh_ms: u64,
    #[serde(default = "keep_ms")]
    pub keep_ms: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            enabled: enabled(),
            max_bytes: max_bytes(),
            fresh_ms: fresh_ms(),
            keep_ms: keep_ms(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Tls {
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Auth {
    #[default]
    None,
    SmartBackend(SmartBackend),
}

#[derive(Debug, Clone, Deserialize)]
pub struct SmartBackend {
    pub token_url: String,
    pub client_id: String,
    pub private_key_file: String,
    #[serde(default = "algorithm")]
    pub algorithm: String,
    pub key_id: Option<String>,
    pub scope: String,
}

fn timeout_ms() -> u64 {
    5_000
}
fn connect_timeout_ms() -> u64 {
    2_000
}
fn retries() -> u32 {
    1
}
fn max_response_bytes() -> usize {
    16 * 1024 * 1024
}
fn failures() -> u32 {
    5
}
fn open_ms() -> u64 {
    30_000
}
fn enabled() -> bool {
    true
}
fn max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn fresh_ms() -> u64 {
    5_000
}
fn keep_ms() -> u64 {
    300_000
}
fn algorithm() -> String {
    "RS384".into()
}
fn read_and_search() -> Vec<String> {
    vec!["read".into(), "search".into()]
}

//! The `kind = "rest"` config section (checked against `schemas/adapter.schema.json`, its
//! `mappings` against `schemas/mapping.schema.json`, before it is read here).

use crate::Organization;
use crate::sql::config::Mapping;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub name: String,
    pub organization: Organization,
    /// The API's base, without a trailing slash; every call and every next-page URL is under it.
    pub base_url: String,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default = "timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "max_response_bytes")]
    pub max_response_bytes: usize,
    pub mappings: Vec<Mapping>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Auth {
    #[default]
    None,
    /// `Authorization: Bearer <token>`, the token from the environment.
    Bearer { token_env: String },
    /// An API key in a header of the API's choosing, from the environment.
    ApiKey { header: String, value_env: String },
}

fn timeout_ms() -> u64 {
    5000
}
fn max_response_bytes() -> usize {
    8 << 20
}

//! The `[istandaarden]` section of the gateway's config: which municipalities may send
//! allocations (their CBS code and organisation), where the drop directory is, and the limits.
//! Checked against `schemas/config.schema.json` with the rest of the config.

use crate::Organization;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// CBS municipality code (`0344`) → the municipality as an organisation. A message from a
    /// code not listed is answered with return code S300.
    #[serde(default)]
    pub municipalities: BTreeMap<String, Organization>,
    /// A directory the gateway polls for `*.xml` messages; answers go to `out/`, handled
    /// messages to `done/`, unreadable ones to `failed/` with the reason beside them.
    #[serde(default)]
    pub drop_dir: Option<PathBuf>,
    #[serde(default = "poll_ms")]
    pub poll_ms: u64,
    /// Largest message accepted (bytes).
    #[serde(default = "max_bytes")]
    pub max_bytes: usize,
    /// Deepest element nesting accepted.
    #[serde(default = "max_depth")]
    pub max_depth: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            municipalities: BTreeMap::new(),
            drop_dir: None,
            poll_ms: poll_ms(),
            max_bytes: max_bytes(),
            max_depth: max_depth(),
        }
    }
}

fn poll_ms() -> u64 {
    1000
}
fn max_bytes() -> usize {
    1 << 20
}
fn max_depth() -> usize {
    32
}

//! The `[mllp]` section of the gateway's config: where the listener listens, its limits, and the
//! sending facilities (MSH-4) it accepts, each with the organisation that holds its data.

use crate::Organization;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `host:port`; no listener without one (`serve --mllp-listen` sets it too).
    pub listen: Option<String>,
    /// TLS (MLLP over TLS): the server certificate chain and key, PEM.
    pub tls: Option<Tls>,
    /// A frame larger than this is refused (AR) and skipped.
    pub max_message_bytes: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_secs: u64,
    /// A message the gateway has not applied within this long is answered AR (send it again);
    /// should it commit after all, the resend is recognised and acknowledged without a second
    /// write.
    pub apply_timeout_secs: u64,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// The character set of a message whose MSH-18 is empty (`8859/1`, `UNICODE UTF-8`, `ASCII`).
    pub default_charset: String,
    /// Sending facility (MSH-4, first component) -> the organisation that holds its data.
    pub senders: BTreeMap<String, Organization>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert_file: String,
    pub key_file: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: None,
            tls: None,
            max_message_bytes: 1024 * 1024,
            idle_timeout_secs: 300,
            apply_timeout_secs: 30,
            max_connections: 256,
            default_charset: "8859/1".into(),
            senders: BTreeMap::new(),
        }
    }
}

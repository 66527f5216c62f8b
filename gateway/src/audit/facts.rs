//! What an audit record stores and its hash chain seals: the values of one access (who, from
//! where, what, which patients, the outcome), not the `AuditEvent` JSON around them. The JSON is
//! rendered from these when the log is read (AuditEvent search, `$export`), which is rare; every
//! request writes a record.
//!
//! Why: rendering the ~2 KB event, compressing it and hashing it on every request was ~15 % of
//! the gateway's CPU under point reads (perf, `wrk -c32`: the compression 8.4 %, the
//! serialization 3.5 %). These facts are ~500 bytes of JSON (a read by a token), written as they are.
//!
//! Frozen: records written with this layout must read back for as long as the log is kept. A
//! field may be added only with `#[serde(default)]`; a change of meaning needs a new tag in
//! `store::audit_codec`.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// One access, as stored.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The AuditEvent's id.
    pub id: Cow<'a, str>,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub recorded: i64,
    /// The FHIR interaction (BALP subtype).
    pub interaction: Cow<'a, str>,
    /// C, R, U, D or E.
    pub action: Cow<'a, str>,
    /// HTTP status of the answer.
    pub status: u16,
    /// The client's network address (or the feed and its connection).
    pub peer: Cow<'a, str>,
    /// Who asked; `None` for a request without a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<Who<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<Cow<'a, str>>,
    /// (`Patient/[id]`, BSN) for the patients whose BSN was known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bsns: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<Cow<'a, str>>,
    /// A search's query, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Cow<'a, str>>,
    /// Break-the-glass: the reason stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency: Option<Cow<'a, str>>,
    /// How many resources only break-the-glass released.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub released: usize,
}

/// The authenticated principal, as the token and the issuer's configuration named it then.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Who<'a> {
    pub issuer: Cow<'a, str>,
    pub subject: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Cow<'a, str>>,
    /// The organisation the issuer speaks for: identifier system, value and name.
    pub org: (Cow<'a, str>, Cow<'a, str>, Cow<'a, str>),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Cow<'a, str>>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

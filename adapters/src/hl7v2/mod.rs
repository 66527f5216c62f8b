//! HL7 v2 over MLLP: a push adapter. Hospitals' ADT and lab (ORU) feeds arrive over MLLP, are
//! parsed ([`crate::er7`]), mapped onto a FHIR transaction ([`mapping`]) and handed to the
//! gateway ([`Apply`]), which writes them through its policy chokepoint as the sending
//! organisation's feed and returns only once they are durable; only then is `AA` sent.
//!
//! Files as in every adapter: `config` (the `[mllp]` section), `mapping` (v2 -> FHIR), `source`
//! (the listener and acknowledgements), `tests`.

pub mod config;
pub mod mapping;
pub mod source;
#[cfg(test)]
mod tests;

pub use config::Config;
pub use mapping::Mapped;

/// What became of a message the gateway was asked to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written and durable.
    Done,
    /// The same message (sender and MSH-10) was applied before; nothing was written again.
    Duplicate,
}

/// Why a message was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Its content cannot be applied (refused by validation or policy): AE, do not resend as is.
    Rejected(String),
    /// The gateway cannot write now (its store is down): AR, resend later.
    Unavailable(String),
}

/// The gateway side of the feed: applies a mapped message, atomically, before it returns.
pub trait Apply: Send + Sync + 'static {
    fn apply<'a>(
        &'a self,
        message: &'a Mapped,
    ) -> futures::future::BoxFuture<'a, Result<Applied, Failure>>;
}

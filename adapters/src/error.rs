//! What can go wrong with a backend, said so that the gateway can answer 502/504 naming the
//! backend without passing on anything the backend said (its bodies, URLs, stack traces).

/// A failed call to one backend.
#[derive(Debug, Clone, thiserror::Error)]
#[error("backend {backend}: {kind}")]
pub struct AdapterError {
    /// The adapter's configured name (safe to show clients).
    pub backend: String,
    pub kind: Failure,
    /// For the operator's log only: never sent to a client.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No answer within the adapter's time-out (504).
    #[error("timed out")]
    Timeout,
    /// Not reachable, or refused by the circuit breaker after repeated failures (502).
    #[error("unavailable")]
    Unavailable,
    /// The backend answered with an error status (502).
    #[error("answered with status {0}")]
    Status(u16),
    /// The backend answered something that is not what FHIR says it should be (502).
    #[error("answered with an invalid response")]
    Protocol,
    /// The backend refused the gateway's credentials, or the token endpoint did (502).
    #[error("refused the gateway's credentials")]
    Unauthorized,
    /// The request cannot be sent to this backend (a parameter or type it does not serve).
    #[error("cannot serve this request")]
    Unsupported,
}

impl AdapterError {
    pub fn new(backend: &str, kind: Failure, detail: impl Into<String>) -> AdapterError {
        AdapterError {
            backend: backend.to_owned(),
            kind,
            detail: detail.into(),
        }
    }

    /// The HTTP status the gateway answers with when this backend was the whole answer.
    pub fn status(&self) -> u16 {
        match self.kind {
            Failure::Timeout => 504,
            Failure::Unsupported => 400,
            _ => 502,
        }
    }

    /// Whether the failure says something about the backend's health (counts for the breaker).
    pub fn is_backend_fault(&self) -> bool {
        matches!(
            self.kind,
            Failure::Timeout | Failure::Unavailable | Failure::Protocol
        ) || matches!(self.kind, Failure::Status(s) if s >= 500)
    }
}

/// A config section that is not valid for its adapter kind.
#[derive(Debug, Clone, thiserror::Error)]
#[error("adapter config{}: {message}", .name.as_deref().map(|n| format!(" '{n}'")).unwrap_or_default())]
pub struct ConfigError {
    pub name: Option<String>,
    pub message: String,
}

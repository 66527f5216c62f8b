//! The HL7 v2 feeds: what the MLLP listener (`adapters::hl7v2`) maps is written here, as one
//! transaction, through the policy chokepoint as the sending organisation's feed principal, and
//! audited. The listener acknowledges only after this returns, i.e. once the store has
//! committed (SQLite `synchronous=FULL`, PostgreSQL commit).

use crate::app::App;
use crate::error::Error;
use crate::fhir::operation::Read;
use adapters::hl7v2::{Applied, Apply, Failure, Mapped};
use std::sync::Arc;

pub struct Feed {
    app: Arc<App>,
}

impl Feed {
    pub fn new(app: Arc<App>) -> Feed {
        Feed { app }
    }

    /// The senders the listener accepts: as configured, or in the demo region its two hospitals.
    pub fn senders(config: &crate::config::Config) -> adapters::hl7v2::Config {
        let mut c = config.mllp.clone();
        if c.senders.is_empty() && config.auth.demo {
            for (key, org) in crate::policy::demo::organizations() {
                match key {
                    "umcu" => c.senders.insert("UMCU".into(), org),
                    "antonius" => c.senders.insert("ANTONIUS".into(), org),
                    _ => None,
                };
            }
        }
        c
    }

    /// Whether the message's receipt is stored (it was applied before).
    async fn applied_before(&self, m: &Mapped) -> Result<bool, Error> {
        let principal = crate::policy::feed_principal(m.holder.clone(), &m.facility);
        let permit = self.app.policy.authorize(
            &principal,
            Read {
                ty: "Basic".into(),
                id: m.receipt.clone(),
            },
        )?;
        Ok(self
            .app
            .store
            .read(&permit)
            .await?
            .is_some_and(|s| !s.is_deleted()))
    }

    async fn write(&self, m: &Mapped) -> Result<Applied, Failure> {
        let principal = crate::policy::feed_principal(m.holder.clone(), &m.facility);
        let peer = format!("hl7v2 {} {}", m.facility, m.control_id);
        match crate::submit::bundle(&self.app, &principal, m.bundle.clone(), &peer).await {
            Ok(()) => Ok(Applied::Done),
            Err(e) => {
                // A resent message: its receipt exists, so the transaction failed as a whole.
                if e.status == http::StatusCode::PRECONDITION_FAILED
                    && self.applied_before(m).await.unwrap_or(false)
                {
                    return Ok(Applied::Duplicate);
                }
                tracing::info!(control_id = m.control_id, error = %e.log_detail(), "hl7v2 message not applied");
                let why = diagnostics(&e);
                if e.status.is_server_error() {
                    Err(Failure::Unavailable(why))
                } else {
                    Err(Failure::Rejected(why))
                }
            }
        }
    }
}

/// What the client-facing OperationOutcome says (never internals).
fn diagnostics(e: &Error) -> String {
    let (_, outcome) = e.outcome();
    let texts: Vec<&str> = outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["diagnostics"].as_str())
        .collect();
    if texts.is_empty() {
        e.status.to_string()
    } else {
        texts.join("; ")
    }
}

impl Apply for Feed {
    fn apply<'a>(
        &'a self,
        message: &'a Mapped,
    ) -> futures::future::BoxFuture<'a, Result<Applied, Failure>> {
        Box::pin(self.write(message))
    }
}

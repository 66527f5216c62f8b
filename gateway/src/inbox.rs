//! The iWmo/iJw inbox: municipalities' allocations and providers' requests
//! (`adapters::istandaarden`) arrive by `POST /istandaarden` or through the drop directory, and
//! what an approved message carries is written as one transaction through the policy
//! chokepoint as the municipality's principal, and audited. The answer is the message's return
//! message (302/316), given only once the transaction is committed.

use crate::app::App;
use crate::error::Error;
use crate::fhir::operation::Read;
use crate::policy::Principal;
use adapters::Organization;
use adapters::istandaarden::{self, Apply, Failure};
use serde_json::Value;
use std::sync::Arc;

pub struct Inbox {
    app: Arc<App>,
    /// Who handed the message in (for the audit's network access point).
    peer: String,
}

impl Inbox {
    pub fn new(app: Arc<App>, peer: impl Into<String>) -> Inbox {
        Inbox {
            app,
            peer: peer.into(),
        }
    }
}

#[async_trait::async_trait]
impl Apply for Inbox {
    async fn seen(&self, municipality: &Organization, receipt: &str) -> Result<bool, String> {
        let principal = crate::policy::inbox_principal(municipality.clone(), &municipality.value);
        let permit = self
            .app
            .policy
            .authorize(
                &principal,
                Read {
                    ty: "Basic".into(),
                    id: receipt.to_owned(),
                },
            )
            .map_err(|e| e.to_string())?;
        match self.app.store.read(&permit).await {
            Ok(found) => Ok(found.is_some_and(|s| !s.is_deleted())),
            Err(e) => Err(e.log_detail()),
        }
    }

    async fn apply(&self, municipality: &Organization, bundle: Value) -> Result<(), Failure> {
        let principal = crate::policy::inbox_principal(municipality.clone(), &municipality.value);
        match crate::submit::bundle(&self.app, &principal, bundle, &self.peer).await {
            Ok(()) => Ok(()),
            // The receipt exists (If-None-Match: *): the same message, written meanwhile.
            Err(e) if e.status == http::StatusCode::PRECONDITION_FAILED => Err(Failure::Duplicate),
            Err(e) if e.status.is_server_error() => Err(Failure::Unavailable(e.log_detail())),
            Err(e) => {
                tracing::info!(error = %e.log_detail(), "istandaarden message not applied");
                Err(Failure::Refused(diagnostics(&e)))
            }
        }
    }
}

fn diagnostics(e: &Error) -> String {
    e.outcome().1["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("refused")
        .to_owned()
}

/// The inbox's settings: as configured, or, in a deployment that trusts the demo issuers and
/// names no municipality, the demo municipality (as the HL7 v2 feed takes the demo hospitals).
pub fn settings(config: &crate::config::Config) -> istandaarden::Config {
    let mut c = config.istandaarden.clone();
    if c.municipalities.is_empty() && config.auth.demo {
        c.municipalities = crate::policy::demo::organizations()
            .into_iter()
            .filter(|(_, o)| o.kind == "municipality")
            .map(|(_, o)| (o.value.clone(), o))
            .collect();
    }
    c
}

/// `POST /istandaarden` by `principal`: the message's sender must be the caller's own
/// organisation (a municipality's CBS code for an allocation, a provider's AGB code for a
/// request). Answers the return message (200, `application/xml`).
pub async fn post(
    app: &Arc<App>,
    principal: &Principal,
    body: &[u8],
    peer: &str,
) -> Result<(String, String), Error> {
    let Principal::Token(token) = principal else {
        return Err(Error::unauthenticated());
    };
    let config = &settings(&app.config);
    let message = istandaarden::mapping::Message::parse(body, config).map_err(|e| {
        Error::invalid(format!(
            "not an iWmo/iJw message this gateway takes: {}",
            e.0
        ))
    })?;
    // The sender is the caller's own organisation, by identifier system and value: a
    // municipality as configured (CBS code) for an allocation, a provider by its AGB code for a
    // request. A value alone could be another register's number.
    let me = &token.organization;
    let sender_is_me = match message.kind {
        istandaarden::mapping::Kind::Allocation => config
            .municipalities
            .get(message.sender())
            .is_some_and(|m| m.system == me.system && m.value == me.value),
        istandaarden::mapping::Kind::Request => {
            me.system == istandaarden::mapping::AGB_SYSTEM && me.value == message.sender()
        }
    };
    if !sender_is_me {
        return Err(Error::forbidden(format!(
            "the message's Afzender {} is not the caller's organisation",
            message.sender()
        )));
    }
    let inbox = Inbox::new(app.clone(), format!("istandaarden {peer}"));
    match istandaarden::handle(body, config, &inbox).await {
        Ok(h) => {
            tracing::info!(message = h.message_type, applied = h.applied, findings = ?h.findings, "istandaarden message");
            Ok((h.message_type, h.answer))
        }
        Err(istandaarden::Error::Unreadable(why)) => Err(Error::invalid(why)),
        Err(istandaarden::Error::Unavailable(why)) => Err(Error::store(why, true)),
    }
}

/// Starts polling the drop directory, if the config names one.
pub fn start(app: &Arc<App>) {
    let Some(dir) = app.config.istandaarden.drop_dir.clone() else {
        return;
    };
    let config = Arc::new(settings(&app.config));
    let inbox: Arc<dyn Apply> = Arc::new(Inbox::new(
        app.clone(),
        format!("drop directory {}", dir.display()),
    ));
    tracing::info!(dir = %dir.display(), "istandaarden drop directory");
    tokio::spawn(istandaarden::watch(dir, config, inbox));
}

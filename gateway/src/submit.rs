//! A Bundle from inside the gateway (an import, a feed) through the same interaction path as a
//! client's request: parsed, permitted entry by entry, executed, audited. It returns once the
//! writes and their audit record are both on disk.

use crate::app::App;
use crate::audit::Access;
use crate::error::Result;
use crate::fhir::operation::{Operation, Request, Return};
use crate::policy::Principal;
use serde_json::Value;

/// One Bundle through the interaction path, audited like a client's.
pub async fn bundle(app: &App, principal: &Principal, bundle: Value, peer: &str) -> Result<()> {
    let base = app
        .config
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/fhir", app.config.listen));
    let op = crate::fhir::bundle_request::parse(bundle, &base, &app.config, &app.structure)?;
    let request = Request {
        op: Operation::Bundle(op),
        ret: Return::Minimal,
        pretty: false,
        base,
        method: http::Method::POST,
        path: "/".into(),
        purpose: None,
        break_glass_reason: None,
        if_none_match: None,
        if_modified_since: None,
    };
    let mut access = Access {
        interaction: crate::policy::Policy::interaction(&request.op).into(),
        action: "C",
        peer: peer.into(),
        ..Default::default()
    };
    // The audit record is appended while the write syncs (see `store::deferred_sync`); this
    // returns once both are on disk.
    let (result, owed) =
        crate::store::deferred_sync::deferring(crate::rest::execute(app, principal, request)).await;
    match &result {
        Ok(reply) => {
            access.status = reply.status.as_u16();
            access.entities = reply.entities.clone();
            access.patients = reply.patients.clone();
        }
        Err(e) => access.status = e.status.as_u16(),
    }
    let (audited, synced) = tokio::join!(app.auditor.record(principal, &access), owed.paid());
    audited?;
    synced?;
    result.map(|_| ())
}

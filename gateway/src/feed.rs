//! The HL7 v2 feeds: what the MLLP listener (`adapters::hl7v2`) maps is written here, as one
//! transaction, through the policy chokepoint as the sending organisation's feed principal, and
//! audited. The listener acknowledges only after this returns, i.e. once what the message carried
//! is committed and on disk (SQLite: the WAL synced after the commit, see `store::sqlite_syncer`,
//! while the message's audit record is appended, see `store::deferred_sync`; PostgreSQL: the
//! commit), and so is its audit record.

use crate::app::App;
use crate::error::Error;
use crate::fhir::operation::Read;
use crate::fhir::operation::Search;
use crate::fhir::search::{Criteria, Token};
use crate::policy::regional;
use adapters::hl7v2::mapping::Merge;
use adapters::hl7v2::{Applied, Apply, Failure, Mapped};
use serde_json::{Value, json};
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

    /// Whether the message's receipt is stored: `Some(true)` for this very message applied
    /// before, `Some(false)` for a different message that used the same control id.
    async fn applied_before(&self, m: &Mapped) -> Result<Option<bool>, Error> {
        let principal = crate::policy::feed_principal(m.holder.clone(), &m.facility);
        let permit = self.app.policy.authorize(
            &principal,
            Read {
                ty: "Basic".into(),
                id: m.receipt.clone(),
            },
        )?;
        let Some(receipt) = self
            .app
            .store
            .read(&permit)
            .await?
            .filter(|s| !s.is_deleted())
        else {
            return Ok(None);
        };
        let receipt = receipt.json()?;
        let digest = receipt["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == adapters::hl7v2::mapping::DIGEST_EXTENSION)
            .and_then(|e| e["valueString"].as_str());
        Ok(Some(digest == Some(m.digest.as_str())))
    }

    /// A resend is acknowledged without writing; a reused control id is refused.
    fn resend(m: &Mapped, same: bool) -> Result<Applied, Failure> {
        if same {
            Ok(Applied::Duplicate)
        } else {
            Err(Failure::Rejected(format!(
                "MSH-10 {} was used before by {} for a different message; not applied",
                m.control_id, m.facility
            )))
        }
    }

    /// A40: the retired record (MRG-1, among the sender's own Patients) joins the transaction,
    /// made inactive, its identifiers that the survivor now holds removed, and linked
    /// `replaced-by` the survivor, which is linked `replaces` it. The record's version is
    /// checked (`ifMatch`), so a concurrent change fails the merge rather than being lost.
    async fn with_merge(&self, m: &Mapped, merge: &Merge) -> Result<Value, Failure> {
        let principal = crate::policy::feed_principal(m.holder.clone(), &m.facility);
        let search = Search {
            ty: "Patient".into(),
            criteria: Criteria {
                identifiers: vec![vec![Token {
                    system: merge.retired["system"].as_str().map(str::to_owned),
                    value: merge.retired["value"].as_str().map(str::to_owned),
                }]],
                ..Default::default()
            },
            count: 50,
            ..Default::default()
        };
        let unavailable = |e: Error| Failure::Unavailable(diagnostics(&e));
        let permit = self
            .app
            .policy
            .authorize(&principal, search)
            .map_err(|e| Failure::Rejected(diagnostics(&e)))?;
        let page = self.app.store.search(&permit).await.map_err(unavailable)?;
        let mut mine = Vec::new();
        for s in page.entries.into_iter().filter(|s| !s.is_deleted()) {
            let r = s.json().map_err(unavailable)?;
            if regional::holder_of(&r)
                .is_some_and(|(sys, v)| sys == m.holder.system && v == m.holder.value)
            {
                mine.push((s.id.clone(), s.version, r));
            }
        }
        let (id, version, mut retired) = match mine.len() {
            1 => mine.remove(0),
            0 => {
                return Err(Failure::Rejected(format!(
                    "MRG-1 {} names no patient of {}",
                    merge.retired["value"], m.facility
                )));
            }
            _ => {
                return Err(Failure::Rejected(format!(
                    "MRG-1 {} names {} patients of {}",
                    merge.retired["value"],
                    mine.len(),
                    m.facility
                )));
            }
        };
        let mut bundle = m.bundle.clone();
        let entries = bundle["entry"]
            .as_array_mut()
            .expect("a transaction has entries");
        let survivor = entries
            .iter_mut()
            .find(|e| e["fullUrl"] == merge.survivor.as_str())
            .expect("the survivor is in the bundle");
        let moved: Vec<(Value, Value)> = survivor["resource"]["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| {
                i["system"] != merge.retired["system"] || i["value"] != merge.retired["value"]
            })
            .map(|i| (i["system"].clone(), i["value"].clone()))
            .collect();
        survivor["resource"]["link"] =
            json!([{"other": {"reference": format!("Patient/{id}")}, "type": "replaces"}]);
        if let Some(ids) = retired["identifier"].as_array_mut() {
            ids.retain(|i| !moved.contains(&(i["system"].clone(), i["value"].clone())));
        }
        retired["active"] = json!(false);
        let mut links = retired["link"].as_array().cloned().unwrap_or_default();
        links.push(json!({"other": {"reference": merge.survivor}, "type": "replaced-by"}));
        retired["link"] = Value::Array(links);
        if let Some(meta) = retired.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
        }
        entries.push(json!({
            "resource": retired,
            "request": {"method": "PUT", "url": format!("Patient/{id}"), "ifMatch": format!("W/\"{version}\"")}
        }));
        Ok(bundle)
    }

    async fn write(&self, m: &Mapped) -> Result<Applied, Failure> {
        let principal = crate::policy::feed_principal(m.holder.clone(), &m.facility);
        let peer = format!("hl7v2 {} {}", m.facility, m.control_id);
        let bundle = match &m.merge {
            Some(merge) => {
                if let Ok(Some(same)) = self.applied_before(m).await {
                    return Self::resend(m, same);
                }
                self.with_merge(m, merge).await?
            }
            None => m.bundle.clone(),
        };
        match crate::submit::bundle(&self.app, &principal, bundle, &peer).await {
            Ok(()) => Ok(Applied::Done),
            Err(e) => {
                // A resent message: its receipt exists, so the transaction failed as a whole.
                if e.status == http::StatusCode::PRECONDITION_FAILED
                    && let Ok(Some(same)) = self.applied_before(m).await
                {
                    return Self::resend(m, same);
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

/// Starts the HL7 v2 listener on `listener`, writing through `app`.
pub fn start(app: &Arc<App>, listener: tokio::net::TcpListener) -> Result<(), String> {
    let config = Feed::senders(&app.config);
    let tls = match &config.tls {
        Some(t) => Some(
            crate::server::tls_acceptor(&crate::config::Tls {
                cert: t.cert_file.clone().into(),
                key: t.key_file.clone().into(),
            })
            .map_err(|e| format!("[mllp] tls: {e}"))?,
        ),
        None => None,
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let senders: Vec<&String> = config.senders.keys().collect();
    tracing::info!(
        ?senders,
        tls = tls.is_some(),
        "HL7 v2 (MLLP) listener at {addr}"
    );
    let feed = Arc::new(Feed::new(app.clone()));
    tokio::spawn(adapters::hl7v2::source::serve(
        listener,
        Arc::new(config),
        tls,
        feed,
    ));
    Ok(())
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

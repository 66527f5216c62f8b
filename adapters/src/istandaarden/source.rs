//! Where iWmo/iJw messages come from: an HTTP POST (the gateway's route calls [`handle`]) or a
//! drop directory ([`watch`]). Either way a message is read, assessed, written when approved,
//! and answered with its return message; a message that cannot be answered (not XML, another
//! type) is refused with the reason, and one that could not be written for want of the store is
//! left to be tried again. None is dropped silently.

use super::config::Config;
use super::mapping::{self, Message, Unreadable};
use crate::Organization;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the gateway does for an approved message.
#[async_trait::async_trait]
pub trait Apply: Send + Sync {
    /// Whether the sender used this Identificatie for this message type before (its receipt
    /// exists).
    async fn seen(&self, municipality: &Organization, receipt: &str) -> Result<bool, String>;
    /// Writes the transaction (its first entry the receipt) as the municipality's principal.
    /// `Err` when it could not be written now (the store): the message is not answered.
    async fn apply(&self, municipality: &Organization, bundle: Value) -> Result<(), Failure>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The receipt exists: the same message again, written before.
    Duplicate,
    /// The write was refused (policy, validation): answered as a technical rejection.
    Refused(String),
    /// Not written now; the sender (or the drop directory) tries again.
    Unavailable(String),
}

/// A message handled: its return message and whether what it carried was written.
#[derive(Debug, Clone)]
pub struct Handled {
    pub message_type: String,
    /// The return message (302/316), XML.
    pub answer: String,
    pub applied: bool,
    pub findings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not a message this gateway answers (400).
    Unreadable(String),
    /// Could not be written now (503); nothing was.
    Unavailable(String),
}

/// The receipt id of a message: one per sender, type and Identificatie.
pub fn receipt_id(m: &Message) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!(
        "{}|{}|{}",
        m.type_name(),
        m.sender(),
        m.identification()
    ));
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("istandaarden-{hex}")
}

fn today() -> String {
    let now = crate::local_time::to_local(time::OffsetDateTime::now_utc());
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    )
}

/// Reads, assesses, writes and answers one message.
pub async fn handle(bytes: &[u8], config: &Config, apply: &dyn Apply) -> Result<Handled, Error> {
    let m = Message::parse(bytes, config).map_err(|Unreadable(why)| Error::Unreadable(why))?;
    let receipt = receipt_id(&m);
    // Receipts are the municipality's records; a municipality not configured has none here
    // (and the message is answered S300).
    let seen = match config.municipalities.get(m.municipality_code()) {
        Some(municipality) => apply
            .seen(municipality, &receipt)
            .await
            .map_err(Error::Unavailable)?,
        None => false,
    };
    let today = today();
    let mut assessment = mapping::assess(&m, config, &today, seen);
    let return_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut applied = false;
    if assessment.approved() {
        let municipality = config
            .municipalities
            .get(m.municipality_code())
            .cloned()
            .expect("an approved message's municipality is configured");
        let mut bundle = mapping::to_fhir(&m, &municipality);
        let receipt_entry = serde_json::json!({
            "resource": {
                "resourceType": "Basic",
                "id": receipt,
                "code": {"coding": [{"system": format!("{}/CodeSystem/istandaarden-message", mapping::BASE),
                                     "code": m.type_name()}]},
                "identifier": [{"system": format!("{}/NamingSystem/istandaarden-bericht/{}", mapping::BASE, m.sender()),
                                "value": m.identification()}]
            },
            "request": {"method": "PUT", "url": format!("Basic/{receipt}"), "ifNoneMatch": "*"}
        });
        if let Some(entries) = bundle["entry"].as_array_mut() {
            entries.insert(0, receipt_entry);
        }
        match apply.apply(&municipality, bundle).await {
            Ok(()) => applied = true,
            Err(Failure::Duplicate) => {
                // Sent twice at once: the other copy was written; this one is not unique.
                assessment = mapping::assess(&m, config, &today, true);
            }
            Err(Failure::Refused(why)) => {
                assessment.client.push(mapping::code::TECHNICAL);
                assessment
                    .findings
                    .push(format!("0001: not accepted by the gateway: {why}"));
            }
            Err(Failure::Unavailable(why)) => return Err(Error::Unavailable(why)),
        }
    }
    Ok(Handled {
        message_type: m.type_name(),
        answer: mapping::answer(&m, &assessment, &return_id, &today),
        applied,
        findings: assessment.findings,
    })
}

/// Polls `dir` for `*.xml` messages until the process ends: each handled message's return
/// message is written to `out/{name}.retour.xml` and the message moved to `done/`; one that
/// cannot be answered goes to `failed/` with `{name}.error.txt`; one that could not be written
/// now stays for the next round.
pub async fn watch(dir: PathBuf, config: Arc<Config>, apply: Arc<dyn Apply>) {
    let interval = std::time::Duration::from_millis(config.poll_ms.max(10));
    loop {
        if let Err(e) = sweep(&dir, &config, apply.as_ref()).await {
            tracing::warn!(dir = %dir.display(), error = %e, "istandaarden drop directory");
        }
        tokio::time::sleep(interval).await;
    }
}

/// One pass over the drop directory; returns how many messages were handled.
pub async fn sweep(dir: &Path, config: &Config, apply: &dyn Apply) -> std::io::Result<usize> {
    for sub in ["out", "done", "failed"] {
        tokio::fs::create_dir_all(dir.join(sub)).await?;
    }
    let mut names = Vec::new();
    let mut read = tokio::fs::read_dir(dir).await?;
    while let Some(e) = read.next_entry().await? {
        let name = e.file_name().to_string_lossy().into_owned();
        // A file still being written is named otherwise (.part, .tmp) until it is complete.
        if name.to_ascii_lowercase().ends_with(".xml") && e.file_type().await?.is_file() {
            names.push(name);
        }
    }
    names.sort();
    let mut handled = 0;
    for name in names {
        let path = dir.join(&name);
        let bytes = match tokio::fs::metadata(&path).await {
            Ok(m) if m.len() as usize > config.max_bytes => {
                fail(
                    dir,
                    &name,
                    &format!(
                        "{} bytes; at most {} are accepted",
                        m.len(),
                        config.max_bytes
                    ),
                )
                .await?;
                continue;
            }
            Ok(_) => tokio::fs::read(&path).await?,
            Err(_) => continue,
        };
        match handle(&bytes, config, apply).await {
            Ok(h) => {
                let stem = name.trim_end_matches(".xml").trim_end_matches(".XML");
                write_then_rename(
                    &dir.join("out").join(format!("{stem}.retour.xml")),
                    h.answer.as_bytes(),
                )
                .await?;
                tokio::fs::rename(&path, dir.join("done").join(&name)).await?;
                tracing::info!(file = name, message = h.message_type, applied = h.applied, findings = ?h.findings, "istandaarden message");
                handled += 1;
            }
            Err(Error::Unreadable(why)) => {
                fail(dir, &name, &why).await?;
                handled += 1;
            }
            Err(Error::Unavailable(why)) => {
                tracing::warn!(
                    file = name,
                    error = why,
                    "istandaarden message not written now; kept for the next round"
                );
            }
        }
    }
    Ok(handled)
}

async fn fail(dir: &Path, name: &str, why: &str) -> std::io::Result<()> {
    tracing::warn!(file = name, error = why, "istandaarden message refused");
    write_then_rename(
        &dir.join("failed").join(format!("{name}.error.txt")),
        why.as_bytes(),
    )
    .await?;
    tokio::fs::rename(dir.join(name), dir.join("failed").join(name)).await
}

/// A file appears whole or not at all (the sender's system may be polling `out/`).
async fn write_then_rename(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("part");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

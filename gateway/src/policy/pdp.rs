//! The external consent decision point: a Mitz-style closed question over HTTP.
//!
//! Request (`POST {url}`, JSON):
//! ```json
//! {"patient": {"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"},
//!  "requester": {"system": "...ura", "value": "90000003", "type": "gp"},
//!  "holder": {"system": "...ura", "value": "90000001", "type": "hospital"},
//!  "purpose": "TREAT"}
//! ```
//! Answer: `{"decision": "Permit" | "Deny" | "NotApplicable" | "Indeterminate"}`. Only `Permit`
//! lets data through; any other answer, a non-2xx status, an unreadable body, a transport error
//! or the time-out denies (fail closed).

use crate::config::{DecisionPoint as Config, Organization};
use serde_json::{Value, json};
use std::time::Duration;

use super::consent::Verdict;

pub struct DecisionPoint {
    url: String,
    http: reqwest::Client,
}

impl DecisionPoint {
    pub fn new(config: &Config) -> Result<DecisionPoint, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| format!("consent decision point client: {e}"))?;
        Ok(DecisionPoint {
            url: config.url.clone(),
            http,
        })
    }

    /// Asks the closed question; every failure is a deny.
    pub async fn ask(
        &self,
        bsn: &str,
        requester: &Organization,
        holder: &Organization,
        purpose: &str,
    ) -> Verdict {
        let org = |o: &Organization| json!({"system": o.system, "value": o.value, "type": o.kind});
        let question = json!({
            "patient": {"system": super::privacy::BSN_SYSTEM, "value": bsn},
            "requester": org(requester),
            "holder": org(holder),
            "purpose": purpose,
        });
        let answer = async {
            let resp = self
                .http
                .post(&self.url)
                .json(&question)
                .send()
                .await
                .ok()?;
            if !resp.status().is_success() {
                return None;
            }
            resp.json::<Value>().await.ok()
        }
        .await;
        match answer.as_ref().and_then(|a| a["decision"].as_str()) {
            Some("Permit") => Verdict::Permit,
            other => {
                if other.is_none() {
                    tracing::warn!(url = %self.url, "consent decision point gave no answer; denied");
                }
                Verdict::Deny
            }
        }
    }
}

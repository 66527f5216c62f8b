//! The municipal API over HTTP(S): GETs with the configured credentials and time-out, the answer
//! read up to `max_response_bytes`, and only URLs under the base (a next-page link elsewhere is
//! refused, so a compromised API cannot point the gateway at another host).

use super::config::{Auth, Config};
use crate::{AdapterError, ConfigError, Failure};
use serde_json::Value;
use std::time::Duration;

pub struct Source {
    name: String,
    base: String,
    http: reqwest::Client,
    auth: Option<(String, String)>,
    max_response_bytes: usize,
}

impl Source {
    pub fn new(c: &Config) -> Result<Source, ConfigError> {
        let error = |m: String| ConfigError {
            name: Some(c.name.clone()),
            message: m,
        };
        let env = |var: &str| {
            std::env::var(var).map_err(|_| error(format!("environment variable {var} is not set")))
        };
        let auth = match &c.auth {
            Auth::None => None,
            Auth::Bearer { token_env } => Some((
                "authorization".to_owned(),
                format!("Bearer {}", env(token_env)?),
            )),
            Auth::ApiKey { header, value_env } => Some((header.clone(), env(value_env)?)),
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.timeout_ms))
            .connect_timeout(Duration::from_millis(c.timeout_ms.min(2000)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| error(e.to_string()))?;
        Ok(Source {
            name: c.name.clone(),
            base: c.base_url.trim_end_matches('/').to_owned(),
            http,
            auth,
            max_response_bytes: c.max_response_bytes,
        })
    }

    fn fail(&self, kind: Failure, detail: impl Into<String>) -> AdapterError {
        AdapterError::new(&self.name, kind, detail)
    }

    /// `path` under the base with `query`.
    pub fn url(&self, path: &str, query: &[(String, String)]) -> String {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(query)
                    .finish(),
            );
        }
        url
    }

    /// GET `url` (under the base): `Ok(None)` for 404.
    pub async fn get(&self, url: &str) -> Result<Option<Value>, AdapterError> {
        let under_base = url
            .strip_prefix(&self.base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'));
        if !under_base {
            return Err(self.fail(
                Failure::Protocol,
                format!("{url} is not under the API's base"),
            ));
        }
        let mut req = self.http.get(url).header("accept", "application/json");
        if let Some((k, v)) = &self.auth {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut resp = req.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                Failure::Timeout
            } else {
                Failure::Unavailable
            };
            self.fail(kind, e.to_string())
        })?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if status == 401 || status == 403 {
            return Err(self.fail(Failure::Unauthorized, format!("status {status}")));
        }
        if !(200..300).contains(&status) {
            return Err(self.fail(Failure::Status(status), format!("status {status}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            let kind = if e.is_timeout() {
                Failure::Timeout
            } else {
                Failure::Unavailable
            };
            self.fail(kind, e.to_string())
        })? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(self.fail(Failure::Protocol, "response over max_response_bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| self.fail(Failure::Protocol, format!("not JSON: {e}")))
    }

    /// A health probe: the base answers at all.
    pub async fn ping(&self) -> Result<(), AdapterError> {
        let mut req = self.http.get(&self.base);
        if let Some((k, v)) = &self.auth {
            req = req.header(k.as_str(), v.as_str());
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| self.fail(Failure::Unavailable, e.to_string()))
    }
}

//! The connection to a partner's FHIR server: one pooled HTTP client (hyper underneath, rustls
//! for TLS and the optional mTLS client certificate), a time-out per attempt, retries for the
//! idempotent calls the gateway makes (GET only), a circuit breaker, and SMART Backend Services
//! authentication with the access token cached until shortly before it expires.

use super::config::{Config, SmartBackend};
use crate::CacheStats;
use crate::breaker::Breaker;
use crate::error::{AdapterError, Failure};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

pub struct Source {
    name: String,
    http: reqwest::Client,
    retries: u32,
    max_response_bytes: usize,
    breaker: Breaker,
    auth: Option<Auth>,
    cache: Option<Cache>,
}

/// One GET at the backend.
enum Fetched {
    Found {
        body: Value,
        etag: Option<String>,
        size: usize,
        /// `Cache-Control: no-store` was not said.
        store: bool,
    },
    NotModified,
    Gone,
}

/// An answer kept in the cache.
struct Cached {
    etag: Option<String>,
    body: Arc<Value>,
    size: usize,
    fetched: Instant,
}

/// The response cache: keyed by URL. Every call the adapter makes carries the gateway's one
/// service identity, so an answer does not depend on who asked the gateway; who may see it is
/// decided on every response, cached or not, by the gateway's policy after the adapter returns.
struct Cache {
    entries: moka::future::Cache<String, Arc<Cached>>,
    fresh: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    revalidated: AtomicU64,
}

/// What a GET answered.
pub enum Answer {
    Found(Value),
    /// 404 or 410: the backend has no such resource.
    Gone,
}

impl Source {
    pub fn new(c: &Config) -> Result<Source, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.timeout_ms))
            .connect_timeout(Duration::from_millis(c.connect_timeout_ms))
            // A partner's redirect could lead anywhere; a FHIR base does not redirect.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("healthhub-utrecht-gateway");
        if let Some(ca) = &c.tls.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("tls.ca_file {ca}: {e}"))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("tls.ca_file {ca}: {e}"))?;
            b = b.tls_certs_merge(certs);
        }
        if let (Some(cert), Some(key)) = (&c.tls.client_cert_file, &c.tls.client_key_file) {
            let mut pem =
                std::fs::read(cert).map_err(|e| format!("tls.client_cert_file {cert}: {e}"))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| format!("tls.client_key_file {key}: {e}"))?);
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("tls client certificate: {e}"))?;
            b = b.identity(id);
        }
        let http = b.build().map_err(|e| format!("HTTP client: {e}"))?;
        let auth = match &c.auth {
            super::config::Auth::None => None,
            super::config::Auth::SmartBackend(s) => Some(Auth::new(s)?),
        };
        Ok(Source {
            name: c.name.clone(),
            http,
            retries: c.retries,
            max_response_bytes: c.max_response_bytes,
            breaker: Breaker::new(c.breaker.failures, Duration::from_millis(c.breaker.open_ms)),
            auth,
            cache: (c.cache.enabled && c.cache.max_bytes > 0).then(|| Cache {
                entries: moka::future::Cache::builder()
                    .max_capacity(c.cache.max_bytes)
                    .weigher(|_: &String, v: &Arc<Cached>| {
                        u32::try_from(v.size).unwrap_or(u32::MAX)
                    })
                    .time_to_live(Duration::from_millis(c.cache.keep_ms))
                    .build(),
                fresh: Duration::from_millis(c.cache.fresh_ms),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                revalidated: AtomicU64::new(0),
            }),
        })
    }

    fn fail(&self, kind: Failure, detail: impl Into<String>) -> AdapterError {
        AdapterError::new(&self.name, kind, detail)
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// GET `url` (a FHIR read or search): from the cache while fresh, revalidated with
    /// `If-None-Match` after that, otherwise from the backend, with retries and the breaker.
    pub async fn get(&self, url: &str) -> Result<Answer, AdapterError> {
        let cached = match &self.cache {
            Some(c) => c.entries.get(url).await,
            None => None,
        };
        if let (Some(c), Some(hit)) = (&self.cache, &cached)
            && hit.fetched.elapsed() < c.fresh
        {
            tracing::debug!(url, "cache hit");
            c.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Answer::Found(hit.body.as_ref().clone()));
        }
        let etag = cached.as_ref().and_then(|c| c.etag.clone());
        let fetched = self.get_retrying(url, etag.as_deref()).await?;
        let Some(cache) = &self.cache else {
            return Ok(match fetched {
                Fetched::Found { body, .. } => Answer::Found(body),
                Fetched::Gone | Fetched::NotModified => Answer::Gone,
            });
        };
        match fetched {
            Fetched::NotModified => match cached {
                Some(old) => {
                    cache.revalidated.fetch_add(1, Ordering::Relaxed);
                    let body = old.body.as_ref().clone();
                    let renewed = Cached {
                        etag: old.etag.clone(),
                        body: old.body.clone(),
                        size: old.size,
                        fetched: Instant::now(),
                    };
                    cache
                        .entries
                        .insert(url.to_owned(), Arc::new(renewed))
                        .await;
                    Ok(Answer::Found(body))
                }
                // A 304 to a request without a validator is the backend's error.
                None => Err(self.fail(Failure::Protocol, "304 without a validator")),
            },
            Fetched::Gone => {
                cache.entries.invalidate(url).await;
                Ok(Answer::Gone)
            }
            Fetched::Found {
                body,
                etag,
                size,
                store,
            } => {
                cache.misses.fetch_add(1, Ordering::Relaxed);
                if store {
                    let entry = Cached {
                        etag,
                        body: Arc::new(body.clone()),
                        size,
                        fetched: Instant::now(),
                    };
                    cache.entries.insert(url.to_owned(), Arc::new(entry)).await;
                } else {
                    cache.entries.invalidate(url).await;
                }
                Ok(Answer::Found(body))
            }
        }
    }

    /// The cache's counters, when there is a cache.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            revalidated: c.revalidated.load(Ordering::Relaxed),
            entries: c.entries.entry_count(),
        })
    }

    async fn get_retrying(&self, url: &str, etag: Option<&str>) -> Result<Fetched, AdapterError> {
        let mut attempt = 0;
        loop {
            if !self.breaker.allow() {
                return Err(self.fail(Failure::Unavailable, "circuit open"));
            }
            let r = self.get_once(url, etag).await;
            let fault = r.as_ref().err().is_some_and(AdapterError::is_backend_fault);
            self.breaker.record(!fault);
            match r {
                Err(e) if fault && attempt < self.retries => {
                    tracing::debug!(backend = %self.name, error = %e.detail, attempt, "retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
                r => return r,
            }
        }
    }

    async fn get_once(&self, url: &str, etag: Option<&str>) -> Result<Fetched, AdapterError> {
        let mut req = self.http.get(url).header("Accept", "application/fhir+json");
        if let Some(etag) = etag {
            req = req.header("If-None-Match", etag);
        }
        if let Some(auth) = &self.auth {
            let token = auth.token(&self.http, &self.name).await?;
            req = req.bearer_auth(token);
        }
        let mut resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        match status {
            304 => return Ok(Fetched::NotModified),
            404 | 410 => return Ok(Fetched::Gone),
            401 | 403 => {
                if let Some(auth) = &self.auth {
                    // The token may have been revoked early: the next call fetches a new one.
                    auth.forget().await;
                }
                return Err(self.fail(Failure::Unauthorized, format!("status {status}")));
            }
            200..=299 => {}
            s => return Err(self.fail(Failure::Status(s), format!("status {s}"))),
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let store = !header("cache-control").is_some_and(|c| c.contains("no-store"));
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(self.fail(Failure::Protocol, "response over max_response_bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let size = body.len();
        serde_json::from_slice(&body)
            .map(|body| Fetched::Found {
                body,
                etag,
                size,
                store,
            })
            .map_err(|e| self.fail(Failure::Protocol, format!("not JSON: {e}")))
    }

    fn transport(&self, e: reqwest::Error) -> AdapterError {
        let kind = if e.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Unavailable
        };
        self.fail(kind, e.to_string())
    }

    /// Whether the backend answers its CapabilityStatement (the health check; never cached).
    pub async fn metadata(&self, base: &str) -> Result<(), AdapterError> {
        match self.get_once(&format!("{base}/metadata"), None).await? {
            Fetched::Found { body, .. } if body["resourceType"] == "CapabilityStatement" => Ok(()),
            _ => Err(self.fail(Failure::Protocol, "no CapabilityStatement at /metadata")),
        }
    }
}

/// SMART Backend Services client: a signed client assertion exchanged for an access token,
/// which is reused until a minute before it expires.
struct Auth {
    config: SmartBackend,
    key: jsonwebtoken::EncodingKey,
    algorithm: jsonwebtoken::Algorithm,
    cached: Mutex<Option<(String, Instant)>>,
}

impl Auth {
    fn new(c: &SmartBackend) -> Result<Auth, String> {
        let pem = std::fs::read(&c.private_key_file)
            .map_err(|e| format!("auth.private_key_file {}: {e}", c.private_key_file))?;
        let (algorithm, key) = match c.algorithm.as_str() {
            "RS384" => (
                jsonwebtoken::Algorithm::RS384,
                jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
            ),
            "RS256" => (
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
            ),
            "ES384" => (
                jsonwebtoken::Algorithm::ES384,
                jsonwebtoken::EncodingKey::from_ec_pem(&pem),
            ),
            "ES256" => (
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::EncodingKey::from_ec_pem(&pem),
            ),
            other => return Err(format!("auth.algorithm {other} is not supported")),
        };
        let key = key.map_err(|e| format!("auth.private_key_file: {e}"))?;
        Ok(Auth {
            config: c.clone(),
            key,
            algorithm,
            cached: Mutex::new(None),
        })
    }

    async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    /// The cached token, or a new one. The lock is held while fetching, so that a burst of
    /// requests after expiry asks the token endpoint once.
    async fn token(&self, http: &reqwest::Client, name: &str) -> Result<String, AdapterError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let fail = |kind, d: String| AdapterError::new(name, kind, d);
        let assertion = self
            .assertion()
            .map_err(|e| fail(Failure::Unauthorized, e))?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("scope", &self.config.scope)
            .append_pair(
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            )
            .append_pair("client_assertion", &assertion)
            .finish();
        let resp = http
            .post(&self.config.token_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                let kind = if e.is_timeout() {
                    Failure::Timeout
                } else {
                    Failure::Unavailable
                };
                fail(kind, format!("token endpoint: {e}"))
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(fail(
                Failure::Unauthorized,
                format!("token endpoint status {status}"),
            ));
        }
        let body: Value = resp
            .json()
            .await
            .map_err(|e| fail(Failure::Unauthorized, format!("token endpoint body: {e}")))?;
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail(Failure::Unauthorized, "no access_token".into()))?
            .to_owned();
        // SMART says expires_in is required; five minutes is what it recommends at most.
        let lifetime = body["expires_in"].as_u64().unwrap_or(300);
        let until = Instant::now() + Duration::from_secs(lifetime.saturating_sub(60).max(1));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    /// The client assertion: iss = sub = client_id, aud = the token URL, five minutes, a
    /// unique jti (SMART Backend Services §"Authenticating to the token endpoint").
    fn assertion(&self) -> Result<String, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let claims = serde_json::json!({
            "iss": self.config.client_id,
            "sub": self.config.client_id,
            "aud": self.config.token_url,
            "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let mut header = jsonwebtoken::Header::new(self.algorithm);
        header.kid = self.config.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())
    }
}

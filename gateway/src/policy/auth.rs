//! Authentication: a bearer JWT from one of the trusted issuers (one per organisation).
//!
//! Only RS256, RS384, ES256 and ES384 are accepted, each only with a key of its own kind: never
//! `none`, never an HMAC algorithm (which would let a public key be used as a shared secret).
//! Keys come from each issuer's JWKS (a file, or a URL) and are cached in moka; an unknown `kid`
//! refreshes the issuer's JWKS, at most once per `jwks_min_refresh_secs`.

use super::demo;
use super::scopes;
use super::{Principal, TokenPrincipal};
use crate::config::{Auth, Organization};
use crate::error::{Error, Result};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Debug, Clone)]
enum Source {
    File(std::path::PathBuf),
    Url(String),
    /// The built-in demo issuers' public key.
    Demo,
}

struct Issuer {
    organization: Arc<Organization>,
    source: Source,
}

/// An issuer's usable keys by kid, and when they were loaded (for the refresh rate limit).
struct Keys {
    by_kid: HashMap<String, Key>,
    loaded_at: Instant,
}

pub struct Authenticator {
    issuers: HashMap<String, Issuer>,
    audience: Vec<String>,
    leeway: u64,
    min_refresh: Duration,
    /// issuer -> its keys. Concurrent first uses share one load (moka's `try_get_with`).
    keys: moka::future::Cache<String, Arc<Keys>>,
    /// token -> (principal, exp): a token is verified once, not on every request. The key is the
    /// whole token, so only those exact bytes hit; `exp` is checked again on every use; entries
    /// live at most `VERIFIED_TTL` and are dropped when an issuer's keys are reloaded.
    verified: moka::future::Cache<String, (Principal, u64)>,
    http: Option<reqwest::Client>,
}

/// The claims the gateway reads. `exp` is required; `nbf` is checked when present.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    exp: u64,
    sub: Option<String>,
    #[serde(default)]
    scope: String,
    patient: Option<String>,
    #[serde(rename = "fhirUser")]
    fhir_user: Option<String>,
    client_id: Option<String>,
    purpose_of_use: Option<String>,
    jti: Option<String>,
}

/// How long a verified token is trusted without verifying its signature again.
const VERIFIED_TTL: Duration = Duration::from_secs(300);

fn unauthorized(description: &str) -> Error {
    Error::unauthorized("invalid_token", description)
}

impl Authenticator {
    pub fn new(cfg: &Auth) -> Result<Authenticator> {
        let mut issuers = HashMap::new();
        let mut audience = cfg.audience.clone();
        for i in &cfg.issuers {
            let source = match (&i.jwks_file, &i.jwks_url) {
                (Some(f), _) => Source::File(f.clone()),
                (None, Some(u)) => Source::Url(u.clone()),
                (None, None) => {
                    return Err(Error::internal(format!(
                        "issuer {} has no key source",
                        i.iss
                    )));
                }
            };
            issuers.insert(
                i.iss.clone(),
                Issuer {
                    organization: Arc::new(i.organization.clone()),
                    source,
                },
            );
        }
        if cfg.demo {
            for (iss, org) in demo::issuers() {
                issuers.insert(
                    iss,
                    Issuer {
                        organization: Arc::new(org),
                        source: Source::Demo,
                    },
                );
            }
            audience.push(demo::AUDIENCE.to_owned());
        }
        let needs_http = issuers.values().any(|i| matches!(i.source, Source::Url(_)));
        let http = if needs_http {
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some(
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .map_err(Error::internal)?,
            )
        } else {
            None
        };
        Ok(Authenticator {
            issuers,
            audience,
            leeway: cfg.leeway_secs,
            min_refresh: Duration::from_secs(cfg.jwks_min_refresh_secs),
            keys: moka::future::Cache::builder()
                .max_capacity(1_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            http,
            verified: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
        })
    }

    /// The principal of a request: `Anonymous` without an Authorization header, an error (401)
    /// for a header that does not carry a valid token from a trusted issuer.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let Some(value) = authorization else {
            return Ok(Principal::Anonymous);
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::unauthorized(
                    "invalid_request",
                    "the Authorization header must be 'Bearer <token>'",
                )
            })?;
        if let Some((principal, exp)) = self.verified.get(token).await {
            if exp + self.leeway >= jsonwebtoken::get_current_timestamp() {
                return Ok(principal);
            }
            self.verified.invalidate(token).await;
            return Err(unauthorized("the token has expired"));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthorized("malformed token"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::ES256 | Algorithm::ES384
        ) {
            return Err(unauthorized("unsupported signing algorithm"));
        }
        // The issuer picks the keys; it is read before verification, then verified with them.
        let unverified: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| unauthorized("malformed token"))?;
        let issuer = self
            .issuers
            .get(&unverified.iss)
            .ok_or_else(|| unauthorized("untrusted issuer"))?;
        let kid = header.kid.clone().unwrap_or_default();
        let key = self.key(&unverified.iss, issuer, &kid).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(unauthorized("the signing algorithm does not match the key"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&unverified.iss]);
        validation.set_audience(&self.audience);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind::*;
                match e.kind() {
                    ExpiredSignature => unauthorized("the token has expired"),
                    ImmatureSignature => unauthorized("the token is not valid yet"),
                    InvalidAudience => unauthorized("the token is not meant for this server"),
                    InvalidSignature => unauthorized("invalid signature"),
                    _ => unauthorized("invalid token"),
                }
            })?;
        let c = data.claims;
        let exp = c.exp;
        let principal = Principal::Token(Arc::new(TokenPrincipal {
            issuer: c.iss,
            subject: c.sub.unwrap_or_default(),
            organization: issuer.organization.clone(),
            scopes: scopes::parse(&c.scope),
            patient: c.patient,
            fhir_user: c.fhir_user,
            client_id: c.client_id,
            purpose_of_use: c.purpose_of_use,
            token_id: c.jti,
            linked: Vec::new(),
        }));
        self.verified
            .insert(token.to_owned(), (principal.clone(), exp))
            .await;
        Ok(principal)
    }

    async fn key(&self, iss: &str, issuer: &Issuer, kid: &str) -> Result<Key> {
        let keys = self.keys_of(iss, issuer).await?;
        if let Some(k) = pick(&keys, kid) {
            return Ok(k);
        }
        // Unknown kid: the issuer may have rotated its keys. Reload, at most once per interval.
        if keys.loaded_at.elapsed() >= self.min_refresh {
            self.keys.invalidate(iss).await;
            // Keys may have been withdrawn: tokens verified with them are verified again.
            self.verified.invalidate_all();
            let keys = self.keys_of(iss, issuer).await?;
            if let Some(k) = pick(&keys, kid) {
                return Ok(k);
            }
        }
        Err(unauthorized("unknown signing key"))
    }

    async fn keys_of(&self, iss: &str, issuer: &Issuer) -> Result<Arc<Keys>> {
        let load = async {
            let set = self.load(&issuer.source).await?;
            Ok::<_, Error>(Arc::new(Keys {
                by_kid: keys_of(&set).into_iter().collect(),
                loaded_at: Instant::now(),
            }))
        };
        self.keys
            .try_get_with(iss.to_owned(), load)
            .await
            .map_err(|e| {
                tracing::warn!(issuer = iss, error = %e, "cannot load the issuer's keys");
                unauthorized("the issuer's keys are unavailable")
            })
    }

    async fn load(&self, source: &Source) -> Result<JwkSet> {
        let text = match source {
            Source::Demo => return Ok(demo::jwks()),
            Source::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| Error::internal(format!("JWKS {}: {e}", path.display())))?,
            Source::Url(url) => {
                let http = self
                    .http
                    .as_ref()
                    .ok_or_else(|| Error::internal("no HTTP client"))?;
                let resp = http
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| Error::internal(format!("JWKS {url}: {e}")))?;
                resp.text()
                    .await
                    .map_err(|e| Error::internal(format!("JWKS {url}: {e}")))?
            }
        };
        serde_json::from_str(&text)
            .map_err(|e| Error::internal(format!("JWKS is not a JWK set: {e}")))
    }
}

/// The key named by `kid`; a token without a kid may use an issuer's only key.
fn pick(keys: &Keys, kid: &str) -> Option<Key> {
    match keys.by_kid.get(kid) {
        Some(k) => Some(k.clone()),
        None if kid.is_empty() && keys.by_kid.len() == 1 => keys.by_kid.values().next().cloned(),
        None => None,
    }
}

/// Usable keys of a JWK set, by kid: RSA (RS256/RS384) and EC P-256/P-384 (ES256/ES384) only.
fn keys_of(set: &JwkSet) -> Vec<(String, Key)> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let algorithms = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => vec![Algorithm::RS256, Algorithm::RS384],
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => return None,
                },
                _ => return None,
            };
            let decoding = DecodingKey::from_jwk(jwk).ok()?;
            Some((
                jwk.common.key_id.clone().unwrap_or_default(),
                Key {
                    decoding,
                    algorithms,
                },
            ))
        })
        .collect()
}

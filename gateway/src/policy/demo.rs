//! The demo region's issuers: one per demo organisation, all signing with one ES256 key whose
//! private half is in this repository (`policy/demo/demo-issuer.key.pem`). Only a config with
//! `auth.demo = true` (the built-in demo config that `gateway serve` uses without a config file)
//! trusts them; no production config does. `gateway token` mints their tokens.

use crate::config::Organization;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const PRIVATE_KEY: &str = include_str!("demo/demo-issuer.key.pem");
const KEY_ID: &str = "healthhub-demo-1";
pub const AUDIENCE: &str = "https://demo.healthhub-utrecht.nl/fhir";
const ISSUER_BASE: &str = "https://demo.healthhub-utrecht.nl/issuer/";
const URA: &str = "http://fhir.nl/fhir/NamingSystem/ura";
const AGB: &str = "http://fhir.nl/fhir/NamingSystem/agb-z";
pub const MUNICIPALITY: &str = "urn:healthhub-utrecht:cbs-gemeentecode";

/// (short name, organisation) of the demo region. The identifiers are fictitious.
pub fn organizations() -> Vec<(&'static str, Organization)> {
    let org = |system: &str, value: &str, kind: &str, name: &str| Organization {
        system: system.into(),
        value: value.into(),
        kind: kind.into(),
        name: name.into(),
    };
    vec![
        (
            "umcu",
            org(URA, "90000001", "hospital", "UMC Utrecht (demo)"),
        ),
        (
            "antonius",
            org(
                URA,
                "90000002",
                "hospital",
                "St. Antonius Ziekenhuis (demo)",
            ),
        ),
        (
            "gp",
            org(URA, "90000003", "gp", "Huisartsenpraktijk Lombok (demo)"),
        ),
        (
            "vvt",
            org(
                URA,
                "90000004",
                "vvt",
                "Zorggroep Utrecht ouderenzorg (demo)",
            ),
        ),
        (
            "youth",
            org(AGB, "90000005", "youth-care", "Jeugdhulp Utrecht (demo)"),
        ),
        (
            "utrecht",
            org(
                MUNICIPALITY,
                "0344",
                "municipality",
                "Gemeente Utrecht (demo)",
            ),
        ),
        (
            "ggd",
            org(URA, "90000006", "ggd", "GGD regio Utrecht (demo)"),
        ),
    ]
}

/// (iss, organisation) of every demo issuer.
pub fn issuers() -> Vec<(String, Organization)> {
    organizations()
        .into_iter()
        .map(|(short, org)| (format!("{ISSUER_BASE}{short}"), org))
        .collect()
}

fn encoding_key() -> EncodingKey {
    EncodingKey::from_ec_pem(PRIVATE_KEY.as_bytes()).expect("the demo key is a valid EC PEM")
}

/// The demo issuers' public key as a JWK set.
pub fn jwks() -> JwkSet {
    let mut jwk =
        Jwk::from_encoding_key(&encoding_key(), Algorithm::ES256).expect("demo key to JWK");
    jwk.common.key_id = Some(KEY_ID.into());
    JwkSet { keys: vec![jwk] }
}

/// What a demo token says.
pub struct TokenRequest<'a> {
    pub org: &'a str,
    pub scope: &'a str,
    pub patient: Option<&'a str>,
    pub fhir_user: Option<&'a str>,
    pub purpose_of_use: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub ttl_secs: u64,
}

/// A signed demo token, or why not.
pub fn mint(r: &TokenRequest<'_>) -> Result<String, String> {
    if !organizations().iter().any(|(short, _)| *short == r.org) {
        let known: Vec<&str> = organizations().iter().map(|(s, _)| *s).collect();
        return Err(format!(
            "unknown demo organisation '{}'; one of {}",
            r.org,
            known.join(", ")
        ));
    }
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({
        "iss": format!("{ISSUER_BASE}{}", r.org),
        "sub": r.subject.map(str::to_owned).unwrap_or_else(|| format!("demo-user@{}", r.org)),
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + r.ttl_secs,
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": r.scope,
    });
    if let Some(p) = r.patient {
        claims["patient"] = json!(p);
    }
    if let Some(u) = r.fhir_user {
        claims["fhirUser"] = json!(u);
    }
    if let Some(p) = r.purpose_of_use {
        claims["purpose_of_use"] = json!(p);
    }
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KEY_ID.into());
    jsonwebtoken::encode(&header, &claims, &encoding_key()).map_err(|e| e.to_string())
}

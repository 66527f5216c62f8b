//! A batch or transaction Bundle POSTed to the base, parsed into one request per entry by the
//! same parser as any HTTP request (`operation::parse`): an entry is a request with its method,
//! URL, headers (`ifNoneExist`, `ifMatch`, `ifNoneMatch`, `ifModifiedSince`) and body.

use super::operation::{Raw, Request, clip, parse as parse_request};
use super::validate::Structure;
use crate::config::Config;
use crate::error::{Error, Result};
use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Each entry on its own.
    Batch,
    /// All entries or none, in one store transaction.
    Transaction,
}

#[derive(Debug, Clone)]
pub struct BundleRequest {
    pub kind: Kind,
    pub entries: Vec<EntryRequest>,
}

#[derive(Debug, Clone)]
pub struct EntryRequest {
    pub full_url: Option<String>,
    pub method: Method,
    /// `request.url` as sent.
    pub url: String,
    /// The entry as a request, or why it is not one (a batch answers that entry alone with it;
    /// a transaction fails as a whole).
    pub request: std::result::Result<Box<Request>, Error>,
}

/// Parses a Bundle of type batch or transaction; entries beyond `limits.max_bundle_entries`
/// refuse the whole bundle (413).
pub fn parse(
    mut bundle: Value,
    base: &str,
    config: &Config,
    structure: &Structure,
) -> Result<BundleRequest> {
    let kind = match bundle.get("type").and_then(Value::as_str) {
        Some("batch") => Kind::Batch,
        Some("transaction") => Kind::Transaction,
        Some(other) => {
            return Err(Error::invalid(format!(
                "a Bundle POSTed to the base must be a batch or a transaction, not '{}'",
                clip(other)
            )));
        }
        None => return Err(Error::invalid("the Bundle has no type")),
    };
    let entries = match bundle.get_mut("entry").map(Value::take) {
        None => Vec::new(),
        Some(Value::Array(e)) => e,
        Some(_) => return Err(Error::invalid("Bundle.entry must be a list")),
    };
    let max = config.limits.max_bundle_entries as usize;
    if entries.len() > max {
        return Err(Error::too_large(format!(
            "the Bundle has {} entries; this server takes at most {max} (limits.max_bundle_entries)",
            entries.len()
        )));
    }
    let entries = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| entry(e, base, config, structure, i))
        .collect();
    Ok(BundleRequest { kind, entries })
}

/// Where an entry is, for messages.
pub fn place(i: usize) -> String {
    format!("Bundle.entry[{i}]")
}

/// One entry; whatever is wrong with it stays with it (a batch answers that entry alone).
fn entry(
    mut e: Value,
    base: &str,
    config: &Config,
    structure: &Structure,
    i: usize,
) -> EntryRequest {
    let full_url = e.get("fullUrl").and_then(Value::as_str).map(str::to_owned);
    // The resource is moved out of the entry, not copied, nor written out and parsed again.
    let resource = e.get_mut("resource").map(Value::take);
    let (method, url, request) = match method_and_url(&e) {
        Ok((method, url, request)) => {
            let parsed = sub_request(resource, request, &method, &url, base, config, structure);
            (method, url, parsed)
        }
        Err(err) => (Method::GET, String::new(), Err(err)),
    };
    EntryRequest {
        full_url,
        method,
        url,
        request: request.map(Box::new).map_err(|err| err.at(&place(i))),
    }
}

fn method_and_url(e: &Value) -> Result<(Method, String, &Value)> {
    let request = e
        .get("request")
        .ok_or_else(|| Error::invalid("the entry has no request"))?;
    let method = match request.get("method").and_then(Value::as_str) {
        Some(m @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH")) => {
            Method::from_bytes(m.as_bytes()).expect("a known method")
        }
        Some("HEAD") => Method::GET,
        Some(m) => {
            return Err(Error::invalid(format!(
                "request.method '{}' is not supported",
                clip(m)
            )));
        }
        None => return Err(Error::invalid("the entry's request has no method")),
    };
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid("the entry's request has no url"))?
        .to_owned();
    Ok((method, url, request))
}

fn sub_request(
    resource: Option<Value>,
    request: &Value,
    method: &Method,
    url: &str,
    base: &str,
    config: &Config,
    structure: &Structure,
) -> Result<Request> {
    let relative = match url.strip_prefix(base) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') => rest,
        _ if url.split('?').next().unwrap_or("").contains("://") => {
            return Err(Error::invalid(format!(
                "request.url '{}' is not on this server (base {base})",
                clip(url)
            )));
        }
        _ => url,
    };
    let (path, query) = match relative.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (relative, None),
    };
    let path = path.trim_start_matches('/');
    if path.is_empty() && *method == Method::POST {
        return Err(Error::invalid(
            "a batch or transaction inside a Bundle entry is not supported",
        ));
    }
    let mut headers = HeaderMap::new();
    for (field, name) in [
        ("ifNoneExist", "if-none-exist"),
        ("ifMatch", "if-match"),
        ("ifNoneMatch", "if-none-match"),
        ("ifModifiedSince", "if-modified-since"),
    ] {
        if let Some(v) = request.get(field).and_then(Value::as_str) {
            let v = HeaderValue::from_str(v)
                .map_err(|_| Error::invalid(format!("request.{field} is not a valid value")))?;
            headers.insert(name, v);
        }
    }
    let mut parsed = None;
    let body = match (method.as_str(), resource) {
        ("POST" | "PUT", Some(r)) => {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/fhir+json"),
            );
            parsed = Some(r);
            Vec::new()
        }
        ("POST" | "PUT", None) => {
            return Err(Error::invalid("a POST or PUT entry needs a resource"));
        }
        ("PATCH", Some(r)) => patch_body(&r, &mut headers)?,
        ("PATCH", None) => {
            return Err(Error::invalid(
                "a PATCH entry needs a Binary (JSON Patch) or Parameters (FHIRPath Patch) resource",
            ));
        }
        _ => Vec::new(),
    };
    let raw = Raw {
        method,
        path,
        query,
        headers: &headers,
        body: &body,
        parsed: std::cell::RefCell::new(parsed),
    };
    let req = parse_request(&raw, base.to_owned(), config, structure)?;
    if matches!(req.op, super::operation::Operation::Bundle(_)) {
        return Err(Error::invalid(
            "a batch or transaction inside a Bundle entry is not supported",
        ));
    }
    Ok(req)
}

/// A PATCH entry carries its patch as a Binary (JSON Patch, base64 in `data`) or as Parameters
/// (FHIRPath Patch).
fn patch_body(r: &Value, headers: &mut HeaderMap) -> Result<Vec<u8>> {
    match r.get("resourceType").and_then(Value::as_str) {
        Some("Binary") => {
            let ct = r
                .get("contentType")
                .and_then(Value::as_str)
                .unwrap_or("application/json-patch+json");
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(ct)
                    .map_err(|_| Error::invalid("Binary.contentType is not valid"))?,
            );
            let data = r.get("data").and_then(Value::as_str).unwrap_or("");
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| Error::invalid("Binary.data is not base64"))
        }
        Some("Parameters") => {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/fhir+json"),
            );
            serde_json::to_vec(r).map_err(Error::internal)
        }
        _ => Err(Error::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "a PATCH entry's resource is a Binary (JSON Patch) or Parameters (FHIRPath Patch)",
        )),
    }
}

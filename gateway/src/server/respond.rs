//! Turning a [`Reply`] or an [`Error`] into an HTTP response: content type, ETag, Last-Modified,
//! Location, `_pretty`, gzip. The one place where an error becomes an OperationOutcome on the wire.

use crate::error::Error;
use crate::fhir::bundle::etag;
use crate::rest::{Payload, Reply};
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, ETAG, LAST_MODIFIED, LOCATION, VARY};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use std::io::Write;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Bodies smaller than this are not worth compressing.
const GZIP_MIN_BYTES: usize = 1024;

/// How the client wants the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    pub pretty: bool,
    pub gzip: bool,
}

pub fn reply(r: Reply, shape: Shape) -> Response<Full<Bytes>> {
    let body = match r.body {
        None => None,
        Some(Payload::Stored(bytes)) if !shape.pretty => Some(bytes),
        Some(Payload::Stored(bytes)) => {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Some(render(&v, true))
        }
        Some(Payload::Json(v)) => Some(render(&v, shape.pretty)),
        Some(Payload::Bundle(b)) if !shape.pretty => Some(Bytes::from(b.to_bytes())),
        Some(Payload::Bundle(b)) => Some(render(&b.into_value(), true)),
        Some(Payload::Raw {
            content_type,
            bytes,
        }) => {
            let mut resp = build(r.status, Some(bytes), shape);
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            add_headers(&mut resp, r.headers);
            return resp;
        }
    };
    let mut resp = build(r.status, body, shape);
    add_headers(&mut resp, r.headers);
    let h = resp.headers_mut();
    if let Some(v) = r.version {
        h.insert(ETAG, header(&etag(v)));
    }
    if let Some(t) = r.last_modified {
        h.insert(LAST_MODIFIED, header(&httpdate::fmt_http_date(t.into())));
    }
    if let Some(l) = r.location {
        h.insert(LOCATION, header(&l));
    }
    resp
}

fn add_headers(resp: &mut Response<Full<Bytes>>, headers: Vec<(http::header::HeaderName, String)>) {
    for (name, value) in headers {
        resp.headers_mut().insert(name, header(&value));
    }
}

pub fn error(e: &Error, shape: Shape) -> Response<Full<Bytes>> {
    let (status, outcome) = e.outcome();
    let mut resp = build(status, Some(render(&outcome, shape.pretty)), shape);
    if let Some(c) = &e.challenge {
        resp.headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, header(c));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut().insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, POST, PUT, DELETE"),
        );
    }
    resp
}

pub fn json(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    build(status, Some(render(v, false)), Shape::default())
}

fn render(v: &Value, pretty: bool) -> Bytes {
    let out = if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    };
    Bytes::from(out.unwrap_or_default())
}

fn build(status: StatusCode, body: Option<Bytes>, shape: Shape) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    let body = match body {
        None => Bytes::new(),
        Some(b) => {
            builder = builder
                .header(CONTENT_TYPE, FHIR_JSON)
                .header(VARY, "Accept, Accept-Encoding");
            if shape.gzip && b.len() >= GZIP_MIN_BYTES {
                builder = builder.header(CONTENT_ENCODING, "gzip");
                gzip(&b)
            } else {
                b
            }
        }
    };
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn gzip(b: &[u8]) -> Bytes {
    let mut enc =
        flate2::write::GzEncoder::new(Vec::with_capacity(b.len() / 4), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(b);
    Bytes::from(enc.finish().unwrap_or_default())
}

fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Whether `Accept-Encoding` admits gzip (q=0 excludes it).
pub fn accepts_gzip(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        v.split(',').any(|part| {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(Some("gzip, deflate")));
        assert!(accepts_gzip(Some("br;q=1.0, gzip;q=0.8")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("deflate")));
        assert!(!accepts_gzip(None));
    }
}

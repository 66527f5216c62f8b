//! A small FHIR client over reqwest for the cases: every call returns status, headers and JSON.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

#[derive(Clone)]
pub struct Fhir {
    pub base: String,
    pub http: reqwest::Client,
    /// The same base without the configured headers (no credentials).
    pub anonymous: reqwest::Client,
    /// A municipal app's credentials and its municipality's CBS code (`--municipal-header`,
    /// `--municipality`), for the social-domain group.
    pub municipal: Option<(reqwest::Client, String)>,
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Fhir {
    pub fn new(base: &str, extra: &[String]) -> Result<Fhir, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut headers = HeaderMap::new();
        for h in extra {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| format!("--header '{h}' is not 'Name: value'"))?;
            headers.insert(
                HeaderName::from_bytes(k.trim().as_bytes()).map_err(|e| e.to_string())?,
                HeaderValue::from_str(v.trim()).map_err(|e| e.to_string())?,
            );
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let anonymous = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Fhir {
            base: base.trim_end_matches('/').to_owned(),
            http,
            anonymous,
            municipal: None,
        })
    }

    /// Adds a municipal app's credentials (`Name: value` headers) and its municipality code.
    pub fn with_municipal(mut self, headers: &[String], code: &str) -> Result<Fhir, String> {
        let other = Fhir::new(&self.base, headers)?;
        self.municipal = Some((other.http, code.to_owned()));
        Ok(self)
    }

    /// This client as the municipal app, if one was given.
    pub fn as_municipality(&self) -> Option<(Fhir, String)> {
        let (http, code) = self.municipal.clone()?;
        Some((
            Fhir {
                http,
                municipal: None,
                ..self.clone()
            },
            code,
        ))
    }

    /// The deployment's root (the base without `/fhir`), where `/istandaarden` is.
    pub fn root(&self) -> &str {
        self.base.trim_end_matches("/fhir")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Answer, String> {
        let r = req
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.map_err(|e| format!("reading body: {e}"))?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        Ok(Answer {
            status,
            headers,
            body,
            text,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Answer, String> {
        self.send(
            self.http
                .get(self.url(path))
                .header("accept", "application/fhir+json"),
        )
        .await
    }

    /// A GET of an absolute URL the server gave out (a `next` link).
    pub async fn get_url(&self, url: &str) -> Result<Answer, String> {
        self.send(self.http.get(url).header("accept", "application/fhir+json"))
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        self.raw("POST", path, body.to_string().into_bytes(), headers)
            .await
    }

    pub async fn put(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        self.raw("PUT", path, body.to_string().into_bytes(), headers)
            .await
    }

    pub async fn delete(&self, path: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
        let mut req = self.http.delete(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    /// Any method and body, with `application/fhir+json` unless a header says otherwise.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = self.http.request(method, self.url(path)).body(body);
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "application/fhir+json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }
}

//! The `$` operations a client invokes by URL: what each one asks, parsed from its query and
//! its `Parameters` body. `operation::parse` routes to these; `rest::operations` and
//! `rest::export` carry them out.

use super::operation::{Raw, header};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fhir::validate::Structure;
use serde_json::Value;
use time::OffsetDateTime;

/// `$validate` (type or instance level).
#[derive(Debug, Clone)]
pub struct Validate {
    pub ty: String,
    /// Instance level: the resource the update or delete would change.
    pub id: Option<String>,
    pub mode: Mode,
    /// The resource to validate (absent for `mode=delete`).
    pub resource: Option<Value>,
    /// Canonical URL of a StructureDefinition loaded into the gateway.
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No mode: is the resource valid at all.
    Plain,
    Create,
    Update,
    Delete,
}

/// Bulk data kick-off: `$export` at system, `Patient` or `Group/[id]` level.
#[derive(Debug, Clone)]
pub struct Export {
    pub level: ExportLevel,
    /// `_type`: only these types (empty: every type the token may read).
    pub types: Vec<String>,
    /// `_since`: only resources changed after this instant.
    pub since: Option<OffsetDateTime>,
    /// The request URL as sent (the manifest's `request`).
    pub request_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportLevel {
    System,
    Patient,
    Group(String),
}

/// Polling (`GET`) or cancelling (`DELETE`) an export job, or fetching one of its files.
#[derive(Debug, Clone)]
pub enum ExportJob {
    Status(String),
    Cancel(String),
    File(String, String),
}

/// Query parameters and the parameters of a `Parameters` body, as (name, value) pairs: a
/// `POST` may carry either (FHIR operations: "parameters in the body, or the URL").
pub fn operation_params(
    raw: &Raw<'_>,
    query: &[(String, String)],
    config: &Config,
) -> Result<Vec<(String, String)>> {
    let mut out = query.to_vec();
    if !raw.has_body() {
        return Ok(out);
    }
    let body = crate::fhir::operation::body_resource_any(raw, config)?;
    if body["resourceType"] != "Parameters" {
        return Err(Error::invalid(
            "an operation's body must be a Parameters resource",
        ));
    }
    for p in body["parameter"].as_array().into_iter().flatten() {
        let Some(name) = p["name"].as_str() else {
            return Err(Error::invalid("a parameter without a name"));
        };
        let value = p
            .as_object()
            .into_iter()
            .flatten()
            .find(|(k, _)| k.starts_with("value"))
            .map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .ok_or_else(|| Error::invalid(format!("parameter '{name}' has no value")))?;
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

/// `POST [type]/$validate` or `POST [type]/[id]/$validate`.
pub fn validate(
    raw: &Raw<'_>,
    ty: String,
    id: Option<String>,
    query: &[(String, String)],
    config: &Config,
) -> Result<Validate> {
    let mut mode = None;
    let mut profile = None;
    let mut resource = None;
    let mode_of = |v: &str| match v {
        "create" => Ok(Mode::Create),
        "update" => Ok(Mode::Update),
        "delete" => Ok(Mode::Delete),
        _ => Err(Error::invalid("mode must be create, update or delete")),
    };
    for (k, v) in query {
        match k.as_str() {
            "mode" => mode = Some(mode_of(v)?),
            "profile" => profile = Some(v.clone()),
            "_format" | "_pretty" => {}
            other => return Err(Error::invalid(format!("$validate does not take '{other}'"))),
        }
    }
    if raw.has_body() {
        let body = crate::fhir::operation::body_resource_any(raw, config)?;
        if body["resourceType"] == "Parameters" && ty != "Parameters" {
            for p in body["parameter"].as_array().into_iter().flatten() {
                match p["name"].as_str() {
                    Some("resource") => resource = p.get("resource").cloned(),
                    Some("mode") => {
                        mode = Some(mode_of(p["valueCode"].as_str().unwrap_or_default())?)
                    }
                    Some("profile") => {
                        profile = p["valueUri"]
                            .as_str()
                            .or(p["valueCanonical"].as_str())
                            .map(str::to_owned)
                    }
                    _ => return Err(Error::invalid("$validate takes resource, mode and profile")),
                }
            }
        } else {
            resource = Some(body);
        }
    }
    let mode = mode.unwrap_or(if id.is_some() {
        Mode::Update
    } else {
        Mode::Plain
    });
    match (mode, &id, &resource) {
        (Mode::Delete, None, _) => {
            return Err(Error::invalid(
                "mode=delete is invoked on an instance: [type]/[id]/$validate",
            ));
        }
        (Mode::Create, Some(_), _) => {
            return Err(Error::invalid(
                "mode=create is invoked on the type: [type]/$validate",
            ));
        }
        (Mode::Delete, Some(_), _) => {}
        (_, _, None) => return Err(Error::invalid("$validate needs the resource to validate")),
        _ => {}
    }
    if let Some(r) = &resource
        && r["resourceType"].as_str() != Some(ty.as_str())
    {
        return Err(Error::invalid(format!(
            "the resource to validate is not a {ty}"
        )));
    }
    Ok(Validate {
        ty,
        id,
        mode,
        resource,
        profile,
    })
}

/// `$export` kick-off parameters (Bulk Data Access IG 2.0).
pub fn export(
    raw: &Raw<'_>,
    level: ExportLevel,
    params: &[(String, String)],
    structure: &Structure,
) -> Result<Export> {
    let prefer = header(raw.headers, "prefer").unwrap_or_default();
    if !prefer
        .split([',', ';'])
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
    {
        return Err(Error::invalid(
            "$export runs asynchronously: send Prefer: respond-async",
        ));
    }
    let mut types = Vec::new();
    let mut since = None;
    for (k, v) in params {
        match k.as_str() {
            "_outputFormat" => {
                if !matches!(
                    v.as_str(),
                    "application/fhir+ndjson" | "application/ndjson" | "ndjson"
                ) {
                    return Err(Error::invalid(
                        "_outputFormat: only application/fhir+ndjson is produced",
                    ));
                }
            }
            "_since" => {
                since = Some(
                    crate::fhir::operation::parse_instant(v)
                        .map_err(|_| Error::invalid("_since must be an instant"))?,
                )
            }
            "_type" => {
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !structure.is_resource_type(t) {
                        return Err(Error::invalid(format!(
                            "_type: unknown resource type '{t}'"
                        )));
                    }
                    if !types.iter().any(|x| x == t) {
                        types.push(t.to_owned());
                    }
                }
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(Error::invalid(format!(
                    "$export does not support the parameter '{other}'"
                )));
            }
        }
    }
    Ok(Export {
        level,
        types,
        since,
        request_url: match raw.query {
            Some(q) if !q.is_empty() => format!("{}?{q}", raw.path),
            _ => raw.path.to_owned(),
        },
    })
}

/// A job id as the gateway makes them (hex), so a path segment cannot name a file elsewhere.
pub fn job_id(s: &str) -> Result<String> {
    if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        Ok(s.to_owned())
    } else {
        Err(Error::not_found("no such export job"))
    }
}

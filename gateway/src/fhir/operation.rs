//! One HTTP request -> one FHIR operation value, parsed once. Policy, handler and audit all read
//! this value; nothing downstream looks at the raw request again.

use super::json::{parse_resource, valid_id};
use super::named_operations as named;
use super::search::{Criteria, parse_criteria};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fhir::validate::Structure;
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use time::OffsetDateTime;

/// What the client asked for.
#[derive(Debug, Clone)]
pub enum Operation {
    Capabilities,
    Read(Read),
    VRead(VRead),
    Create(Create),
    Update(Update),
    Delete(Delete),
    History(History),
    Search(Search),
    /// `POST [base]/$reindex`: install the stored SearchParameters and rebuild the index.
    Reindex(Reindex),
    /// `POST [base]` with a batch or transaction Bundle.
    Bundle(crate::fhir::bundle_request::BundleRequest),
    /// `PATCH [type]/[id]` or `PATCH [type]?criteria`; also `$meta-add` and `$meta-delete`,
    /// which change a resource the same way.
    Patch(crate::fhir::patch::Patch),
    /// `[type]/[id]/$meta`: the resource's profiles, tags and security labels.
    Meta(Read),
    /// `Patient/[id]/$everything`: a search over every type in the patient's compartment.
    Everything(Search),
    /// `$validate`.
    Validate(crate::fhir::named_operations::Validate),
    /// Bulk data `$export` kick-off.
    Export(crate::fhir::named_operations::Export),
    /// A bulk export job: status, cancel, output file.
    ExportJob(crate::fhir::named_operations::ExportJob),
}

/// The `$reindex` operation (system level, maintenance).
#[derive(Debug, Clone, Default)]
pub struct Reindex;

#[derive(Debug, Clone)]
pub struct Read {
    pub ty: String,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct VRead {
    pub ty: String,
    pub id: String,
    pub version: u64,
}

#[derive(Debug, Clone)]
pub struct Create {
    pub ty: String,
    /// The resource as sent, already parsed and checked to be of `ty`; any `id` was removed.
    pub resource: Value,
    /// `If-None-Exist`: create only when nothing matches.
    pub if_none_exist: Option<Criteria>,
    /// The id the resource will get, when it had to be known before the write (a transaction
    /// resolves references to it); otherwise the store assigns one.
    pub id: Option<String>,
}

/// Which resource an update or delete is about.
#[derive(Debug, Clone)]
pub enum Target {
    Id(String),
    /// Conditional update/delete: the one resource the criteria match.
    Criteria(Criteria),
}

#[derive(Debug, Clone)]
pub struct Update {
    pub ty: String,
    pub target: Target,
    pub resource: Value,
    /// `If-Match`: the version the client last saw.
    pub if_match: Option<u64>,
    /// Whether a PUT to an unknown id may create it (config `rest.update_create`).
    pub allow_create: bool,
    /// `If-None-Match: *` (RFC 9110 13.1.2): only create, never replace; 412 when it exists.
    pub only_if_absent: bool,
}

#[derive(Debug, Clone)]
pub struct Delete {
    pub ty: String,
    pub target: Target,
    pub if_match: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

#[derive(Debug, Clone)]
pub struct History {
    pub scope: HistoryScope,
    pub since: Option<OffsetDateTime>,
    pub count: u32,
    /// Opaque position from a previous page's `next` link.
    pub cursor: Option<i64>,
}

/// The type of a search over every type (`Patient/[id]/*`): only the parameters every resource
/// has apply, paging runs over (type, id), and the policy asks for a scope on every type.
pub const ALL_TYPES: &str = "*";

#[derive(Debug, Clone, Default)]
pub struct Search {
    pub ty: String,
    pub criteria: Criteria,
    pub count: u32,
    pub cursor: Option<String>,
    /// The parameters that were applied, for the bundle's `self` link.
    pub applied: Vec<(String, String)>,
    /// AuditEvent searches go to the audit log, with its own parameters.
    pub audit: Option<crate::store::AuditQuery>,
    /// `_include` and `_revinclude`, in the order given.
    pub includes: Vec<Include>,
    /// Whether the bundle carries `total` (`_total=none` spares the count).
    pub total: bool,
    /// `_summary` or `_elements`: what of each resource is returned.
    pub subset: Option<crate::fhir::subset::Subset>,
    /// `_sort` keys, in order; empty: in the order the resources were first stored (`sql::search`).
    pub sort: Vec<crate::fhir::search::SortKey>,
    /// How many matches a sorted search keeps in its snapshot, and for how long (config `rest`).
    pub snapshot: SnapshotLimits,
}

/// A sorted search with more than one page keeps its order in a snapshot (see `store::sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotLimits {
    pub max_results: u32,
    pub ttl_ms: i64,
}

/// `_include=Source:param[:Target]` (resources the matches reference) or
/// `_revinclude=Source:param[:Target]` (resources that reference the matches); `param` `*` is
/// every reference parameter of Source; `:iterate` applies it to included resources too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub reverse: bool,
    pub source: String,
    pub param: String,
    pub target: Option<String>,
    pub iterate: bool,
}

fn include(key: &str, value: &str, s: &Structure) -> Result<Include> {
    let reverse = key.starts_with("_revinclude");
    let iterate = key.ends_with(":iterate") || key.ends_with(":recurse");
    let bad = |why: &str| Error::invalid(format!("{key}={value}: {why}"));
    let mut parts = value.split(':');
    let source = parts.next().unwrap_or_default().to_owned();
    let param = parts
        .next()
        .ok_or_else(|| bad("expected Type:parameter[:Target]"))?
        .to_owned();
    let target = parts.next().map(str::to_owned);
    if parts.next().is_some() {
        return Err(bad("expected Type:parameter[:Target]"));
    }
    if !s.is_resource_type(&source) {
        return Err(bad("unknown resource type"));
    }
    if param != "*" {
        let def = crate::fhir::search_params::definition(&source, &param)
            .filter(|d| d.kind == crate::fhir::search_params::Kind::Reference)
            .ok_or_else(|| bad("not a reference search parameter of that type"))?;
        if let Some(t) = &target
            && !def.targets.iter().any(|x| x == t)
        {
            return Err(bad("not a target of that parameter"));
        }
    }
    Ok(Include {
        reverse,
        source,
        param,
        target,
        iterate,
    })
}

/// `Prefer: return=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

/// The parsed request: the operation plus how to answer it.
#[derive(Debug, Clone)]
pub struct Request {
    pub op: Operation,
    pub ret: Return,
    pub pretty: bool,
    /// The FHIR base URL as the client sees it (for Location, fullUrl and links).
    pub base: String,
    /// Method and path as received, for the log and audit.
    pub method: Method,
    pub path: String,
    /// `X-Purpose-Of-Use` (a v3 ActReason code; overrides the token's claim).
    pub purpose: Option<String>,
    /// `X-Break-Glass-Reason`: the stated reason for emergency access.
    pub break_glass_reason: Option<String>,
    /// Conditional read: `If-None-Match` (the version the client has) and `If-Modified-Since`;
    /// a match answers 304 Not Modified, after the same decision as the read itself.
    pub if_none_match: Option<u64>,
    pub if_modified_since: Option<OffsetDateTime>,
}

/// The raw pieces of an HTTP request that parsing needs.
pub struct Raw<'a> {
    pub method: &'a Method,
    /// Path below the FHIR base, without the leading `/fhir`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The body already parsed: a Bundle entry's resource, taken from the parsed Bundle instead
    /// of being written out and read again (`body` is then empty).
    pub parsed: std::cell::RefCell<Option<Value>>,
}

impl Raw<'_> {
    /// Whether the request carries a body (bytes or an already parsed resource).
    pub fn has_body(&self) -> bool {
        !self.body.is_empty() || self.parsed.borrow().is_some()
    }
}

/// Parses a request. `structure` says which resource types exist.
pub fn parse(
    raw: &Raw<'_>,
    base: String,
    config: &Config,
    structure: &Structure,
) -> Result<Request> {
    let params = decode_query(raw.query.unwrap_or("").as_bytes())?;
    let pretty = negotiate_format(raw.headers, &params)?;
    let prefer = header(raw.headers, "prefer").unwrap_or_default();
    let ret = prefer_return(prefer);
    let strict = match prefer_handling(prefer) {
        Some(h) => h == "strict",
        None => config.rest.default_handling == "strict",
    };
    let max_id = config.limits.max_id_length;

    let segments: Vec<&str> = raw
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let m = raw.method;
    let type_of = |s: &str| -> Result<String> {
        if structure.is_resource_type(s) {
            Ok(s.to_owned())
        } else if s.starts_with('$') {
            Err(Error::not_supported(
                StatusCode::NOT_IMPLEMENTED,
                format!("operation {s} is not supported"),
            ))
        } else {
            Err(Error::not_found(format!(
                "unknown resource type '{}'",
                clip(s)
            )))
        }
    };
    let id_of = |s: &str| -> Result<String> {
        if valid_id(s, max_id) {
            Ok(s.to_owned())
        } else {
            Err(Error::invalid(format!(
                "'{}' is not a valid resource id ([A-Za-z0-9-.], 1 to {max_id} characters)",
                clip(s)
            )))
        }
    };

    let op = match (m, segments.as_slice()) {
        (&Method::GET, ["metadata"]) => Operation::Capabilities,
        (&Method::POST, ["$reindex"]) => Operation::Reindex(Reindex),
        (&Method::GET | &Method::POST, ["Patient", id, "$everything"]) => {
            let id = id_of(id)?;
            everything(
                id,
                &named::operation_params(raw, &params, config)?,
                strict,
                config,
                structure,
            )?
        }
        (&Method::GET | &Method::POST, [ty, id, "$meta"]) => {
            if raw.has_body() && m == Method::POST {
                named::operation_params(raw, &[], config)?;
            }
            Operation::Meta(Read {
                ty: type_of(ty)?,
                id: id_of(id)?,
            })
        }
        (&Method::POST, [ty, id, op @ ("$meta-add" | "$meta-delete")]) => {
            let ty = type_of(ty)?;
            let id = id_of(id)?;
            let body = body_resource_any(raw, config)?;
            Operation::Patch(crate::fhir::patch::Patch {
                body: crate::fhir::patch::PatchBody::Meta {
                    add: *op == "$meta-add",
                    meta: crate::fhir::meta::meta_parameter(&body)?,
                },
                ty,
                target: Target::Id(id),
                if_match: if_match(raw.headers)?,
            })
        }
        (&Method::POST, [ty, "$validate"]) => {
            let ty = type_of(ty)?;
            Operation::Validate(named::validate(raw, ty, None, &params, config)?)
        }
        (&Method::POST, [ty, id, "$validate"]) => {
            let ty = type_of(ty)?;
            let id = id_of(id)?;
            Operation::Validate(named::validate(raw, ty, Some(id), &params, config)?)
        }
        (&Method::GET | &Method::POST, ["$export"]) => Operation::Export(named::export(
            raw,
            named::ExportLevel::System,
            &named::operation_params(raw, &params, config)?,
            structure,
        )?),
        (&Method::GET | &Method::POST, ["Patient", "$export"]) => Operation::Export(named::export(
            raw,
            named::ExportLevel::Patient,
            &named::operation_params(raw, &params, config)?,
            structure,
        )?),
        (&Method::GET | &Method::POST, ["Group", id, "$export"]) => {
            let id = id_of(id)?;
            Operation::Export(named::export(
                raw,
                named::ExportLevel::Group(id),
                &named::operation_params(raw, &params, config)?,
                structure,
            )?)
        }
        (&Method::GET, ["$export-status", job]) => {
            Operation::ExportJob(named::ExportJob::Status(named::job_id(job)?))
        }
        (&Method::DELETE, ["$export-status", job]) => {
            Operation::ExportJob(named::ExportJob::Cancel(named::job_id(job)?))
        }
        (&Method::GET, ["$export-file", job, file]) => Operation::ExportJob(
            named::ExportJob::File(named::job_id(job)?, (*file).to_owned()),
        ),
        (&Method::GET, ["_history"]) => {
            Operation::History(history(HistoryScope::System, &params, config)?)
        }
        (&Method::GET, [ty]) => {
            let ty = type_of(ty)?;
            Operation::Search(search(ty, &params, strict, config, structure)?)
        }
        // Every resource in one patient's compartment, of any type (`ty` is `*`).
        (&Method::GET, ["Patient", id, "*"]) if !id.starts_with(['_', '$']) => {
            let mut op = search(ALL_TYPES.into(), &params, strict, config, structure)?;
            op.criteria.within = Some((*id).to_owned());
            Operation::Search(op)
        }
        // Compartment search: the resources of a type in one patient's compartment.
        (&Method::GET, ["Patient", id, ty])
            if !id.starts_with(['_', '$']) && !ty.starts_with(['_', '$']) =>
        {
            let ty = type_of(ty)?;
            let mut op = search(ty, &params, strict, config, structure)?;
            op.criteria.within = Some((*id).to_owned());
            Operation::Search(op)
        }
        (&Method::POST, [ty, "_search"]) => {
            let ty = type_of(ty)?;
            let mut all = params.clone();
            if !raw.body.is_empty() {
                let ct = header(raw.headers, "content-type").unwrap_or_default();
                if !ct.starts_with("application/x-www-form-urlencoded") {
                    return Err(Error::not_supported(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "POST _search takes application/x-www-form-urlencoded parameters",
                    ));
                }
                all.extend(decode_query(raw.body)?);
            }
            Operation::Search(search(ty, &all, strict, config, structure)?)
        }
        (&Method::POST, [ty]) => {
            let ty = type_of(ty)?;
            let mut resource = body_resource(raw, &ty, config)?;
            // The server assigns the id of a created resource (FHIR RESTful API, create).
            if let Some(obj) = resource.as_object_mut() {
                obj.remove("id");
            }
            let if_none_exist = match header(raw.headers, "if-none-exist") {
                Some(q) => Some(conditional_criteria(
                    &ty,
                    q.trim_start_matches('?'),
                    structure,
                )?),
                None => None,
            };
            Operation::Create(Create {
                ty,
                resource,
                if_none_exist,
                id: None,
            })
        }
        (&Method::PUT, [ty]) => {
            let ty = type_of(ty)?;
            let criteria = conditional_from_params(&ty, &params, structure)?;
            let resource = body_resource(raw, &ty, config)?;
            Operation::Update(Update {
                ty,
                target: Target::Criteria(criteria),
                resource,
                if_match: if_match(raw.headers)?,
                allow_create: true,
                only_if_absent: header(raw.headers, "if-none-match") == Some("*"),
            })
        }
        (&Method::DELETE, [ty]) => {
            let ty = type_of(ty)?;
            let criteria = conditional_from_params(&ty, &params, structure)?;
            Operation::Delete(Delete {
                ty,
                target: Target::Criteria(criteria),
                if_match: if_match(raw.headers)?,
            })
        }
        (&Method::GET, [ty, "_history"]) => {
            Operation::History(history(HistoryScope::Type(type_of(ty)?), &params, config)?)
        }
        (&Method::GET, [ty, id]) => Operation::Read(Read {
            ty: type_of(ty)?,
            id: id_of(id)?,
        }),
        (&Method::PUT, [ty, id]) => {
            let ty = type_of(ty)?;
            let id = id_of(id)?;
            let resource = body_resource(raw, &ty, config)?;
            match resource.get("id").and_then(Value::as_str) {
                Some(body_id) if body_id == id => {}
                Some(_) => {
                    return Err(Error::invalid(
                        "the resource's id differs from the id in the URL",
                    ));
                }
                None => {
                    return Err(Error::invalid(
                        "an update must carry the resource's id, equal to the URL's",
                    ));
                }
            }
            Operation::Update(Update {
                ty,
                target: Target::Id(id),
                resource,
                if_match: if_match(raw.headers)?,
                allow_create: config.rest.update_create,
                only_if_absent: header(raw.headers, "if-none-match") == Some("*"),
            })
        }
        (&Method::DELETE, [ty, id]) => Operation::Delete(Delete {
            ty: type_of(ty)?,
            target: Target::Id(id_of(id)?),
            if_match: if_match(raw.headers)?,
        }),
        (&Method::GET, [ty, id, "_history"]) => {
            let scope = HistoryScope::Instance(type_of(ty)?, id_of(id)?);
            Operation::History(history(scope, &params, config)?)
        }
        (&Method::GET, [ty, id, "_history", vid]) => {
            let version =
                vid.parse::<u64>().ok().filter(|v| *v > 0).ok_or_else(|| {
                    Error::invalid(format!("'{}' is not a version id", clip(vid)))
                })?;
            Operation::VRead(VRead {
                ty: type_of(ty)?,
                id: id_of(id)?,
                version,
            })
        }
        (&Method::POST, []) => {
            let bundle = body_resource(raw, "Bundle", config)?;
            Operation::Bundle(crate::fhir::bundle_request::parse(
                bundle, &base, config, structure,
            )?)
        }
        (&Method::PATCH, [ty, id]) => {
            let ty = type_of(ty)?;
            let id = id_of(id)?;
            Operation::Patch(crate::fhir::patch::Patch {
                body: crate::fhir::patch::body(
                    header(raw.headers, "content-type"),
                    raw.body,
                    config,
                )?,
                ty,
                target: Target::Id(id),
                if_match: if_match(raw.headers)?,
            })
        }
        (&Method::PATCH, [ty]) => {
            let ty = type_of(ty)?;
            let criteria = conditional_from_params(&ty, &params, structure)?;
            Operation::Patch(crate::fhir::patch::Patch {
                body: crate::fhir::patch::body(
                    header(raw.headers, "content-type"),
                    raw.body,
                    config,
                )?,
                ty,
                target: Target::Criteria(criteria),
                if_match: if_match(raw.headers)?,
            })
        }
        (_, [seg, ..]) if seg.starts_with('$') => {
            return Err(Error::not_supported(
                StatusCode::NOT_IMPLEMENTED,
                format!("operation {} is not supported", clip(seg)),
            ));
        }
        (_, [_, _, seg, ..]) if seg.starts_with('$') => {
            return Err(Error::not_supported(
                StatusCode::NOT_IMPLEMENTED,
                format!("operation {} is not supported", clip(seg)),
            ));
        }
        (_, [ty, ..]) if ["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&m.as_str()) => {
            // Known shapes with an unknown type answer as unknown types; the rest as unknown paths.
            type_of(ty)?;
            return Err(Error::not_found("no such FHIR endpoint"));
        }
        _ => {
            return Err(Error::client(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                format!("{} is not allowed here", m.as_str()),
            ));
        }
    };
    Ok(Request {
        op,
        ret,
        pretty,
        base,
        method: m.clone(),
        path: raw.path.to_owned(),
        purpose: header(raw.headers, "x-purpose-of-use").map(str::to_owned),
        break_glass_reason: header(raw.headers, "x-break-glass-reason").map(str::to_owned),
        if_none_match: match header(raw.headers, "if-none-match") {
            // `*` on a PUT is the update's own precondition (`Update::only_if_absent`).
            Some("*") if m == Method::PUT => None,
            Some(v) => {
                Some(parse_etag(v).ok_or_else(|| Error::invalid("If-None-Match must be an ETag"))?)
            }
            None => None,
        },
        if_modified_since: match header(raw.headers, "if-modified-since") {
            Some(v) => Some(
                httpdate::parse_http_date(v)
                    .map(OffsetDateTime::from)
                    .or_else(|_| parse_instant(v))
                    .map_err(|_| Error::invalid("If-Modified-Since must be an HTTP date"))?,
            ),
            None => None,
        },
    })
}

/// JSON only (for now). Returns whether `_pretty` output was asked for.
fn negotiate_format(headers: &HeaderMap, params: &[(String, String)]) -> Result<bool> {
    let xml = || {
        Error::not_supported(
            StatusCode::NOT_ACCEPTABLE,
            "this server speaks FHIR JSON only (application/fhir+json); XML is not supported",
        )
    };
    if let Some((_, f)) = params.iter().find(|(k, _)| k == "_format") {
        match f.as_str() {
            "json" | "application/json" | "application/fhir+json" | "application/json+fhir" => {}
            f if f.contains("xml") => return Err(xml()),
            _ => {
                return Err(Error::not_supported(
                    StatusCode::NOT_ACCEPTABLE,
                    "unsupported _format",
                ));
            }
        }
    } else if let Some(accept) = header(headers, "accept") {
        let acceptable = accept.split(',').any(|a| {
            let t = a.split(';').next().unwrap_or("").trim();
            t.is_empty() || t == "*/*" || t == "application/*" || t.contains("json")
        });
        if !acceptable {
            return Err(xml());
        }
    }
    let pretty = match params
        .iter()
        .find(|(k, _)| k == "_pretty")
        .map(|(_, v)| v.as_str())
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid("_pretty is true or false")),
    };
    Ok(pretty)
}

pub(crate) fn body_resource(raw: &Raw<'_>, ty: &str, config: &Config) -> Result<Value> {
    let resource = body_resource_any(raw, config)?;
    match resource.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == ty => Ok(resource),
        Some(t) => Err(Error::invalid(format!(
            "resourceType '{}' does not match the URL's type '{ty}'",
            clip(t)
        ))),
        None => Err(Error::invalid("the resource has no resourceType")),
    }
}

/// The body as a FHIR JSON resource of any type (content type checked).
pub(crate) fn body_resource_any(raw: &Raw<'_>, config: &Config) -> Result<Value> {
    if let Some(ct) = header(raw.headers, "content-type") {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime.contains("xml") {
            return Err(Error::not_supported(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "this server reads FHIR JSON only; XML is not supported",
            ));
        }
        if !matches!(
            mime.as_str(),
            "application/fhir+json" | "application/json" | "application/json+fhir"
        ) {
            return Err(Error::not_supported(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported content type '{}'; send application/fhir+json",
                    clip(&mime)
                ),
            ));
        }
    }
    let parsed = raw.parsed.borrow_mut().take();
    let resource = match parsed {
        Some(v) => v,
        None => parse_resource(raw.body, config.limits.max_json_depth)?,
    };
    if resource
        .get("resourceType")
        .and_then(Value::as_str)
        .is_none()
    {
        return Err(Error::invalid("the resource has no resourceType"));
    }
    Ok(resource)
}

fn history(scope: HistoryScope, params: &[(String, String)], config: &Config) -> Result<History> {
    let mut h = History {
        scope,
        since: None,
        count: config.rest.default_page_size,
        cursor: None,
    };
    for (k, v) in params {
        match k.as_str() {
            "_since" => h.since = Some(parse_instant(v)?),
            "_count" => h.count = page_size(v, config)?,
            "_cursor" => {
                h.cursor = Some(v.parse().map_err(|_| Error::invalid("malformed _cursor"))?)
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(Error::invalid(format!(
                    "history does not take the parameter '{}'",
                    clip(other)
                )));
            }
        }
    }
    Ok(h)
}

/// `Patient/[id]/$everything`: the patient's compartment over every type, with `_since` (changed
/// since), `_type` and `_count`; `start`/`end` (care dates) are not supported.
fn everything(
    id: String,
    params: &[(String, String)],
    strict: bool,
    config: &Config,
    s: &Structure,
) -> Result<Operation> {
    let mut pairs = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "_since" => {
                parse_instant(v).map_err(|_| Error::invalid("_since must be an instant"))?;
                pairs.push(("_lastUpdated".to_owned(), format!("ge{v}")));
            }
            "_type" | "_count" | "_cursor" | "_format" | "_pretty" | "_lastUpdated" => {
                pairs.push((k.clone(), v.clone()))
            }
            other => {
                return Err(Error::invalid(format!(
                    "$everything does not support the parameter '{}'",
                    clip(other)
                )));
            }
        }
    }
    let mut op = search(ALL_TYPES.into(), &pairs, strict, config, s)?;
    op.criteria.within = Some(id);
    Ok(Operation::Everything(op))
}

fn search(
    ty: String,
    params: &[(String, String)],
    strict: bool,
    config: &Config,
    s: &Structure,
) -> Result<Search> {
    let mut count = config.rest.default_page_size;
    let mut cursor = None;
    let mut includes = Vec::new();
    let mut total = true;
    let mut subset = None;
    let mut sort = Vec::new();
    let mut unknown_sort = Vec::new();
    let mut rest = Vec::new();
    let mut applied = Vec::new();
    let mut types: Vec<String> = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            // Only a search over every type narrows by type; `Patient/[id]/*?_type=...`.
            "_type" if ty == ALL_TYPES => {
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !s.is_resource_type(t) {
                        return Err(Error::invalid(format!(
                            "_type: unknown resource type '{}'",
                            clip(t)
                        )));
                    }
                    types.push(t.to_owned());
                }
                applied.push((k.clone(), v.clone()));
            }
            "_count" => {
                count = page_size(v, config)?;
                applied.push((k.clone(), count.to_string()));
            }
            "_cursor" => cursor = Some(v.clone()),
            "_sort" => {
                let (keys, unknown) = crate::fhir::search::parse_sort(&ty, v);
                sort.extend(keys);
                unknown_sort.extend(unknown);
                applied.push((k.clone(), v.clone()));
            }
            "_format" | "_pretty" => {}
            "_include"
            | "_revinclude"
            | "_include:iterate"
            | "_revinclude:iterate"
            | "_include:recurse"
            | "_revinclude:recurse" => {
                includes.push(include(k, v, s)?);
                applied.push((k.clone(), v.clone()));
            }
            // `estimate` is answered accurately: the count runs on the same indexes.
            "_total" => {
                total = match v.as_str() {
                    "none" => false,
                    "estimate" | "accurate" => true,
                    _ => return Err(Error::invalid("_total must be none, estimate or accurate")),
                };
                applied.push((k.clone(), v.clone()));
            }
            "_summary" => {
                use crate::fhir::subset::Subset;
                subset = match v.as_str() {
                    "true" => Some(Subset::Summary),
                    "text" => Some(Subset::Text),
                    "data" => Some(Subset::Data),
                    "false" => None,
                    "count" => {
                        count = 0;
                        None
                    }
                    _ => {
                        return Err(Error::invalid(
                            "_summary must be true, text, data, count or false",
                        ));
                    }
                };
                applied.push((k.clone(), v.clone()));
            }
            "_elements" => {
                let names: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect();
                if names
                    .iter()
                    .any(|n| !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                {
                    return Err(Error::invalid("_elements takes top-level element names"));
                }
                subset = Some(crate::fhir::subset::Subset::Elements(names));
                applied.push((k.clone(), v.clone()));
            }
            _ => rest.push((k.clone(), v.clone())),
        }
    }
    if ty == "AuditEvent" {
        let (query, unknown) = audit_query(&rest, count, cursor.as_deref())?;
        if strict && !unknown.is_empty() {
            return Err(Error::invalid(format!(
                "unknown or unsupported search parameter(s): {}",
                unknown.join(", ")
            )));
        }
        applied.extend(rest.into_iter().filter(|(k, _)| !unknown.contains(k)));
        return Ok(Search {
            ty,
            criteria: Criteria::default(),
            count,
            cursor,
            applied,
            audit: Some(query),
            includes: Vec::new(),
            total,
            subset,
            sort: Vec::new(),
            snapshot: SnapshotLimits::default(),
        });
    }
    let (mut criteria, mut unknown) = parse_criteria(&ty, &rest, s)?;
    criteria.types = types;
    unknown.extend(unknown_sort);
    if strict && !unknown.is_empty() {
        return Err(Error::invalid(format!(
            "unknown or unsupported search parameter(s): {}",
            unknown
                .iter()
                .map(|u| clip(u))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    applied.extend(rest.into_iter().filter(|(k, _)| !unknown.contains(k)));
    Ok(Search {
        ty,
        criteria,
        count,
        cursor,
        applied,
        audit: None,
        includes,
        total,
        subset,
        sort,
        snapshot: SnapshotLimits {
            max_results: config.rest.max_sorted_results,
            ttl_ms: config.rest.search_snapshot_ttl_secs as i64 * 1000,
        },
    })
}

/// Criteria of a conditional create/update/delete: an ignored parameter would widen the match, so
/// every parameter must be understood, and there must be at least one.
pub(crate) fn conditional_criteria(ty: &str, query: &str, s: &Structure) -> Result<Criteria> {
    conditional_from_params(ty, &decode_query(query.as_bytes())?, s)
}

fn conditional_from_params(
    ty: &str,
    params: &[(String, String)],
    s: &Structure,
) -> Result<Criteria> {
    let params: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "_format" && k != "_pretty")
        .cloned()
        .collect();
    let (criteria, unknown) = parse_criteria(ty, &params, s)?;
    if !unknown.is_empty() {
        return Err(Error::invalid(format!(
            "conditional operations take only parameters the server indexes; not: {}",
            unknown
                .iter()
                .map(|u| clip(u))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if criteria.is_empty() {
        return Err(Error::invalid(
            "a conditional operation needs search criteria",
        ));
    }
    Ok(criteria)
}

/// `application/x-www-form-urlencoded` pairs, refusing text that is not UTF-8 once decoded
/// (a lossy decode would silently search for U+FFFD).
pub fn decode_query(q: &[u8]) -> Result<Vec<(String, String)>> {
    let decode = |part: &[u8]| -> Result<String> {
        let plus: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&plus)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| Error::invalid("query parameters must be UTF-8"))
    };
    q.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.iter().position(|&b| b == b'=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (p, &b""[..]),
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// AuditEvent search: `patient`, `agent` (`system|value` of the user), `outcome`, `date` with
/// `ge gt le lt eq` prefixes (a plain date is its whole day), `_id`.
fn audit_query(
    params: &[(String, String)],
    count: u32,
    cursor: Option<&str>,
) -> Result<(crate::store::AuditQuery, Vec<String>)> {
    let mut q = crate::store::AuditQuery {
        count,
        ..Default::default()
    };
    q.before_seq = match cursor {
        Some(c) => Some(c.parse().map_err(|_| Error::invalid("malformed _cursor"))?),
        None => None,
    };
    let mut unknown = Vec::new();
    for (k, v) in params {
        let values = || v.split(',').map(str::to_owned).collect::<Vec<_>>();
        match k.as_str() {
            "patient" => q.patients.extend(values().into_iter().map(|p| {
                if p.contains('/') {
                    p
                } else {
                    format!("Patient/{p}")
                }
            })),
            "agent" => q.agents.extend(values()),
            "outcome" => q.outcomes.extend(values()),
            "_id" => q.ids.extend(values()),
            "date" => {
                let (prefix, value) =
                    if v.len() > 2 && v.as_bytes()[..2].iter().all(u8::is_ascii_alphabetic) {
                        (&v[..2], &v[2..])
                    } else {
                        ("eq", v.as_str())
                    };
                let at = crate::store::to_millis(parse_instant(value)?);
                let day = value.len() == 10;
                let end = if day { at + 86_400_000 } else { at + 1 };
                match prefix {
                    "ge" => q.from_ms = Some(at),
                    "gt" => q.from_ms = Some(end),
                    "lt" => q.until_ms = Some(at),
                    "le" => q.until_ms = Some(end),
                    "eq" => {
                        q.from_ms = Some(at);
                        q.until_ms = Some(end);
                    }
                    _ => {
                        return Err(Error::invalid(format!(
                            "date prefix '{prefix}' is not supported here"
                        )));
                    }
                }
            }
            _ => unknown.push(k.clone()),
        }
    }
    Ok((q, unknown))
}

fn page_size(v: &str, config: &Config) -> Result<u32> {
    let n: u32 = v
        .parse()
        .map_err(|_| Error::invalid(format!("_count must be a whole number, not '{}'", clip(v))))?;
    Ok(n.min(config.rest.max_page_size))
}

/// FHIR instant (or a date, taken as its start in UTC).
pub fn parse_instant(v: &str) -> Result<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(t);
    }
    let d = time::Date::parse(v, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| Error::invalid(format!("'{}' is not a FHIR instant", clip(v))))?;
    Ok(d.midnight().assume_utc())
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>> {
    match header(headers, "if-match") {
        None => Ok(None),
        Some(v) => parse_etag(v)
            .map(Some)
            .ok_or_else(|| Error::invalid("If-Match must be an ETag such as W/\"3\"")),
    }
}

/// `W/"3"` or `"3"` -> 3.
pub fn parse_etag(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

fn prefer_return(prefer: &str) -> Return {
    for part in prefer.split([',', ';']) {
        match part.trim() {
            "return=minimal" => return Return::Minimal,
            "return=OperationOutcome" => return Return::OperationOutcome,
            "return=representation" => return Return::Representation,
            _ => {}
        }
    }
    Return::Representation
}

fn prefer_handling(prefer: &str) -> Option<&str> {
    prefer
        .split([',', ';'])
        .find_map(|p| p.trim().strip_prefix("handling="))
}

pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Client text echoed in an error is cut short: an error must never amplify what was sent.
pub(crate) fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(70).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_parse_weak_and_strong() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("3"), None);
        assert_eq!(parse_etag("W/\"x\""), None);
    }

    #[test]
    fn prefer_header_forms() {
        assert_eq!(prefer_return("return=minimal"), Return::Minimal);
        assert_eq!(
            prefer_return("handling=strict, return=OperationOutcome"),
            Return::OperationOutcome
        );
        assert_eq!(prefer_return(""), Return::Representation);
        assert_eq!(
            prefer_handling("return=minimal; handling=strict"),
            Some("strict")
        );
    }

    #[test]
    fn queries_decode_strictly() {
        assert_eq!(
            decode_query(b"a=1&b=x%7Cy+z&c").unwrap(),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x|y z".to_owned()),
                ("c".to_owned(), String::new())
            ]
        );
        assert!(decode_query(b"identifier=%ff%fe").is_err());
    }

    #[test]
    fn instants_and_dates() {
        assert!(parse_instant("2024-01-02T03:04:05Z").is_ok());
        assert!(parse_instant("2024-01-02T03:04:05.123+01:00").is_ok());
        assert_eq!(
            parse_instant("2024-01-02").unwrap().unix_timestamp(),
            1704153600
        );
        assert!(parse_instant("yesterday").is_err());
    }
}

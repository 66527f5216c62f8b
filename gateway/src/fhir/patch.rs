//! PATCH: JSON Patch (RFC 6902, by the `json-patch` crate) and FHIRPath Patch (a `Parameters`
//! body, FHIR R4 fhirpatch.html). A patch is applied to the current version and the result is
//! then written like any update (validated, permitted for the patched content, `If-Match` on the
//! version it was applied to), so two patches of one resource never lose each other's change.

use super::fhirpath::{Expr, FhirPath, Item};
use super::json::parse_resource;
use super::operation::{Target, clip};
use super::validate::Structure;
use crate::config::Config;
use crate::error::{Error, Result};
use http::StatusCode;
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct Patch {
    pub ty: String,
    pub target: Target,
    pub body: PatchBody,
    /// `If-Match`: the version the client patched.
    pub if_match: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum PatchBody {
    Json(json_patch::Patch),
    FhirPath(Vec<Op>),
    /// `$meta-add` (`add`) or `$meta-delete`: profiles, security labels and tags.
    Meta {
        add: bool,
        meta: Value,
    },
}

/// One FHIRPath Patch operation.
#[derive(Debug, Clone)]
pub struct Op {
    kind: Kind,
    path: String,
    expr: Expr,
    name: Option<String>,
    value: Option<Value>,
    index: Option<usize>,
    source: Option<usize>,
    destination: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Insert,
    Delete,
    Replace,
    Move,
}

/// The patch in a PATCH body, by its content type.
pub fn body(content_type: Option<&str>, bytes: &[u8], config: &Config) -> Result<PatchBody> {
    let mime = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json-patch+json" => {
            let v = parse_resource_or_array(bytes, config)?;
            serde_json::from_value(v)
                .map(PatchBody::Json)
                .map_err(|e| Error::invalid(format!("not a JSON Patch document: {e}")))
        }
        "application/fhir+json" | "application/json" | "application/json+fhir" => {
            let v = parse_resource(bytes, config.limits.max_json_depth)?;
            if v.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
                return Err(Error::invalid(
                    "a FHIRPath Patch is a Parameters resource (or send application/json-patch+json)",
                ));
            }
            fhirpath_ops(&v).map(PatchBody::FhirPath)
        }
        _ => Err(Error::not_supported(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PATCH takes application/json-patch+json (JSON Patch) or application/fhir+json (FHIRPath Patch Parameters)",
        )),
    }
}

/// A JSON Patch is an array, which `parse_resource` (objects only) refuses: the same depth
/// limit, checked here.
fn parse_resource_or_array(bytes: &[u8], config: &Config) -> Result<Value> {
    if super::json::depth_exceeds(bytes, config.limits.max_json_depth) {
        return Err(Error::invalid(format!(
            "JSON nested deeper than {} levels",
            config.limits.max_json_depth
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("malformed JSON: {e}")))
}

fn fhirpath_ops(params: &Value) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for (i, p) in params
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let bad = |why: String| Error::invalid(format!("Parameters.parameter[{i}]: {why}"));
        if p.get("name").and_then(Value::as_str) != Some("operation") {
            return Err(bad(
                "every parameter of a FHIRPath Patch is named 'operation'".into(),
            ));
        }
        let parts: Vec<&Value> = p
            .get("part")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let part = |n: &str| {
            parts
                .iter()
                .find(|x| x.get("name").and_then(Value::as_str) == Some(n))
        };
        let text = |n: &str| {
            part(n)
                .and_then(|x| primitive(x))
                .and_then(|v| v.as_str().map(str::to_owned))
        };
        let number = |n: &str| -> Result<Option<usize>> {
            match part(n).and_then(|x| primitive(x)) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|u| Some(u as usize))
                    .ok_or_else(|| bad(format!("{n} must be a non-negative integer"))),
            }
        };
        let kind = match text("type").as_deref() {
            Some("add") => Kind::Add,
            Some("insert") => Kind::Insert,
            Some("delete") => Kind::Delete,
            Some("replace") => Kind::Replace,
            Some("move") => Kind::Move,
            Some(t) => return Err(bad(format!("unknown operation type '{}'", clip(t)))),
            None => return Err(bad("the operation has no type".into())),
        };
        let path = text("path").ok_or_else(|| bad("the operation has no path".into()))?;
        let expr = super::fhirpath::Expr::clone(
            FhirPath::parse(&path)
                .map_err(|e| bad(format!("path '{}': {e}", clip(&path))))?
                .expr(),
        );
        let value = part("value").map(|v| value_of(v));
        let op = Op {
            kind,
            name: text("name"),
            value,
            index: number("index")?,
            source: number("source")?,
            destination: number("destination")?,
            path,
            expr,
        };
        let missing = match kind {
            Kind::Add => op.name.is_none() || op.value.is_none(),
            Kind::Insert => op.index.is_none() || op.value.is_none(),
            Kind::Replace => op.value.is_none(),
            Kind::Move => op.source.is_none() || op.destination.is_none(),
            Kind::Delete => false,
        };
        if missing {
            return Err(bad("the operation lacks a part its type needs".into()));
        }
        ops.push(op);
    }
    Ok(ops)
}

/// A part's `value[x]`.
fn primitive(part: &Value) -> Option<&Value> {
    part.as_object()?
        .iter()
        .find(|(k, _)| k.starts_with("value"))
        .map(|(_, v)| v)
}

/// A `value` part: its `value[x]`, or, for an anonymous (backbone) type, the object its
/// sub-parts make.
fn value_of(part: &Value) -> Value {
    if let Some(v) = primitive(part) {
        return v.clone();
    }
    let mut obj = Map::new();
    for sub in part
        .get("part")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = sub.get("name").and_then(Value::as_str) {
            let v = value_of(sub);
            match obj.get_mut(name) {
                Some(Value::Array(items)) => items.push(v),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, v]);
                }
                None => {
                    obj.insert(name.to_owned(), v);
                }
            }
        }
    }
    Value::Object(obj)
}

/// The patched resource.
pub fn apply(patch: &PatchBody, resource: &Value, structure: &Structure) -> Result<Value> {
    let mut out = resource.clone();
    match patch {
        PatchBody::Json(p) => {
            json_patch::patch(&mut out, p).map_err(|e| unprocessable(e.to_string()))?
        }
        PatchBody::Meta { add, meta } => return Ok(crate::fhir::meta::apply(resource, meta, *add)),
        PatchBody::FhirPath(ops) => {
            for op in ops {
                apply_op(op, &mut out, structure).map_err(|e| {
                    unprocessable(format!("{} at {}: {e}", kind_name(op.kind), op.path))
                })?;
            }
        }
    }
    Ok(out)
}

fn unprocessable(message: String) -> Error {
    Error::client(
        StatusCode::UNPROCESSABLE_ENTITY,
        "processing",
        format!("the patch cannot be applied: {message}"),
    )
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Add => "add",
        Kind::Insert => "insert",
        Kind::Delete => "delete",
        Kind::Replace => "replace",
        Kind::Move => "move",
    }
}

/// A place in the resource: object keys and list positions from the root.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    At(usize),
}
type Loc = Vec<Step>;

fn get<'v>(root: &'v Value, loc: &[Step]) -> Option<&'v Value> {
    loc.iter().try_fold(root, |v, s| match s {
        Step::Key(k) => v.get(k),
        Step::At(i) => v.get(*i),
    })
}

fn get_mut<'v>(root: &'v mut Value, loc: &[Step]) -> Option<&'v mut Value> {
    loc.iter().try_fold(root, |v, s| match s {
        Step::Key(k) => v.get_mut(k),
        Step::At(i) => v.get_mut(*i),
    })
}

/// The places a path selects. Patch paths navigate (`Patient.contact[0].name`), filter
/// (`where(...)`, `first()`, `last()`, `extension('url')`) and index; anything else is refused.
fn locate(e: &Expr, root: &Value) -> std::result::Result<Vec<Loc>, String> {
    Ok(match e {
        Expr::Ident(name) => {
            if root.get("resourceType").and_then(Value::as_str) == Some(name.as_str()) {
                vec![Vec::new()]
            } else {
                children(root, &[], name)
            }
        }
        Expr::Member(focus, name) => locate(focus, root)?
            .iter()
            .flat_map(|l| children(root, l, name))
            .collect(),
        Expr::Index(focus, index) => {
            let Expr::Number(n) = index.as_ref() else {
                return Err("an index must be a number".into());
            };
            let i: usize = n.parse().map_err(|_| "an index must be a whole number")?;
            locate(focus, root)?
                .into_iter()
                .nth(i)
                .into_iter()
                .collect()
        }
        Expr::Call(Some(focus), f, args) => {
            let found = locate(focus, root)?;
            match (f.as_str(), args.as_slice()) {
                ("first", []) => found.into_iter().take(1).collect(),
                ("last", []) => found.into_iter().last().into_iter().collect(),
                ("where", [criteria]) => {
                    let mut out = Vec::new();
                    for l in found {
                        let node = get(root, &l).cloned().unwrap_or(Value::Null);
                        let r = super::fhirpath::evaluate_expr(criteria, &node)?;
                        if matches!(r.as_slice(), [Item::Bool(true)]) {
                            out.push(l);
                        }
                    }
                    out
                }
                ("extension", [Expr::Str(url)]) => found
                    .iter()
                    .flat_map(|l| children(root, l, "extension"))
                    .filter(|l| {
                        get(root, l)
                            .and_then(|x| x.get("url"))
                            .and_then(Value::as_str)
                            == Some(url.as_str())
                    })
                    .collect(),
                _ => return Err(format!("{f}() is not supported in a patch path")),
            }
        }
        _ => return Err("the path is not one a patch can follow".into()),
    })
}

/// The places of element `name` under `at`: one per list item, or the single value.
fn children(root: &Value, at: &[Step], name: &str) -> Vec<Loc> {
    let with = |s: Step| {
        let mut l = at.to_vec();
        l.push(Step::Key(name.to_owned()));
        if let Step::At(_) = s {
            l.push(s);
        }
        l
    };
    match get(root, at).and_then(|v| v.get(name)) {
        Some(Value::Array(items)) => (0..items.len()).map(|i| with(Step::At(i))).collect(),
        Some(_) => vec![with(Step::Key(String::new()))],
        None => Vec::new(),
    }
}

/// The schema definition of the element at `loc` (`Patient`, `Patient_Contact`, `HumanName`).
fn definition_at(root: &Value, loc: &[Step], structure: &Structure) -> Option<String> {
    let mut def = root.get("resourceType")?.as_str()?.to_owned();
    for s in loc {
        if let Step::Key(k) = s {
            def = structure.element(&def, k)?.1?;
        }
    }
    Some(def)
}

fn single(locs: Vec<Loc>, what: &str) -> std::result::Result<Loc, String> {
    match locs.len() {
        1 => Ok(locs.into_iter().next().expect("one")),
        0 => Err(format!("no content found at the path when {what}")),
        n => Err(format!("the path matches {n} elements; it must match one")),
    }
}

fn apply_op(op: &Op, root: &mut Value, structure: &Structure) -> std::result::Result<(), String> {
    match op.kind {
        Kind::Replace => {
            let loc = single(locate(&op.expr, root)?, "replacing")?;
            let slot = get_mut(root, &loc).ok_or("the element vanished")?;
            *slot = op.value.clone().unwrap_or(Value::Null);
        }
        Kind::Delete => {
            let locs = locate(&op.expr, root)?;
            if locs.len() > 1 {
                return Err(format!(
                    "the path matches {} elements; it must match one",
                    locs.len()
                ));
            }
            if let Some(loc) = locs.into_iter().next() {
                remove(root, &loc);
            }
        }
        Kind::Add => {
            let loc = single(locate(&op.expr, root)?, "adding")?;
            let name = op.name.clone().unwrap_or_default();
            let def = definition_at(root, &loc, structure);
            let repeats = def
                .as_deref()
                .and_then(|d| structure.element(d, &name))
                .map(|(r, _)| r);
            let value = op.value.clone().unwrap_or(Value::Null);
            let container = get_mut(root, &loc)
                .and_then(Value::as_object_mut)
                .ok_or("the path does not select an element that can have children")?;
            match (container.get_mut(&name), repeats) {
                (Some(Value::Array(items)), _) => items.push(value),
                (Some(_), _) => {
                    return Err(format!("{name} is already present and does not repeat"));
                }
                (None, Some(true)) => {
                    container.insert(name, Value::Array(vec![value]));
                }
                (None, _) => {
                    container.insert(name, value);
                }
            }
        }
        Kind::Insert | Kind::Move => {
            let Expr::Member(focus, name) = &op.expr else {
                return Err("the path must name a list element (Type.element)".into());
            };
            let loc = single(locate(focus, root)?, "inserting")?;
            let container = get_mut(root, &loc)
                .and_then(Value::as_object_mut)
                .ok_or("the path does not select a list")?;
            let list = container
                .entry(name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(items) = list else {
                return Err(format!("{name} is not a list"));
            };
            if op.kind == Kind::Insert {
                let i = op.index.unwrap_or(0);
                if i > items.len() {
                    return Err(format!(
                        "index {i} is beyond the list's {} items",
                        items.len()
                    ));
                }
                items.insert(i, op.value.clone().unwrap_or(Value::Null));
            } else {
                let (from, to) = (op.source.unwrap_or(0), op.destination.unwrap_or(0));
                if from >= items.len() || to >= items.len() {
                    return Err(format!(
                        "source or destination beyond the list's {} items",
                        items.len()
                    ));
                }
                let item = items.remove(from);
                items.insert(to, item);
            }
        }
    }
    Ok(())
}

/// Removes the element at `loc`; a list or element left empty is removed too (FHIR JSON has
/// neither empty lists nor empty objects).
fn remove(root: &mut Value, loc: &[Step]) {
    let Some((last, parent)) = loc.split_last() else {
        return;
    };
    let Some(p) = get_mut(root, parent) else {
        return;
    };
    match (last, &mut *p) {
        (Step::Key(k), Value::Object(o)) => {
            o.remove(k);
        }
        (Step::At(i), Value::Array(items)) if *i < items.len() => {
            items.remove(*i);
        }
        _ => {}
    }
    let empty = match p {
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if empty && !parent.is_empty() {
        remove(root, parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn structure() -> Structure {
        Structure::load(10).unwrap()
    }

    fn op(v: Value) -> PatchBody {
        PatchBody::FhirPath(fhirpath_ops(&v).unwrap())
    }

    #[test]
    fn fhirpath_patch_operations() {
        let s = structure();
        let p = json!({"resourceType": "Patient", "identifier": [{"use": "official", "value": "1"}, {"value": "2"}],
            "contact": [{"gender": "male"}]});
        let params = |parts: Value| json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]});
        let add = params(
            json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "name"}, {"name": "value", "valueHumanName": {"family": "X"}}]),
        );
        let out = apply(&op(add), &p, &s).unwrap();
        assert_eq!(
            out["name"],
            json!([{"family": "X"}]),
            "name repeats, so it is added as a list"
        );
        let replace = params(json!([{"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.identifier.where(use = 'official').value"}, {"name": "value", "valueString": "9"}]));
        assert_eq!(
            apply(&op(replace), &p, &s).unwrap()["identifier"][0]["value"],
            "9"
        );
        let mv = params(
            json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Patient.identifier"},
            {"name": "source", "valueInteger": 1}, {"name": "destination", "valueInteger": 0}]),
        );
        assert_eq!(
            apply(&op(mv), &p, &s).unwrap()["identifier"][0]["value"],
            "2"
        );
        let del = params(
            json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.contact[0].gender"}]),
        );
        assert_eq!(
            apply(&op(del), &p, &s).unwrap().get("contact"),
            None,
            "a contact left empty is removed with its list"
        );
        let bad = params(
            json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.identifier"},
            {"name": "value", "valueString": "x"}]),
        );
        assert_eq!(
            apply(&op(bad), &p, &s).unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}

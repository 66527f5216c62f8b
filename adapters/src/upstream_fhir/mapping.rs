//! A partner's FHIR resources into the gateway's namespace and back: ids get the adapter's
//! prefix ([`crate::namespace`]), every reference to the partner's own resources (relative, or
//! absolute under its base) is rewritten to the gateway's relative form, and `meta.source` says
//! where the resource came from. Contained (`#...`) and `urn:` references and references to other
//! servers stay as they are. The holder tag is not set here: the gateway stamps it, so that a
//! backend cannot claim to be someone else.

use crate::namespace;
use serde_json::Value;

/// Rewrites `resource` (from the backend at `base`) into the namespace of `adapter`. `false` when
/// it is not a resource or its id cannot be carried (the caller drops it and says so).
pub fn outward(resource: &mut Value, adapter: &str, base: &str) -> bool {
    let Some(obj) = resource.as_object_mut() else {
        return false;
    };
    if !obj.get("resourceType").is_some_and(Value::is_string) {
        return false;
    }
    let Some(id) = obj.get("id").and_then(Value::as_str) else {
        return false;
    };
    let Some(id) = namespace::outward(adapter, id) else {
        return false;
    };
    obj.insert("id".into(), Value::String(id));
    // Contained resources keep their local ids; references inside them are rewritten below.
    rewrite_references(resource, &|r| reference_outward(r, adapter, base));
    let meta = resource
        .as_object_mut()
        .expect("checked above")
        .entry("meta")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("source".into(), Value::String(base.to_owned()));
    }
    true
}

/// A reference as the backend wrote it, as the gateway shows it.
pub fn reference_outward(reference: &str, adapter: &str, base: &str) -> Option<String> {
    let relative = match reference.strip_prefix(base) {
        Some(rest) => rest.strip_prefix('/')?,
        None if reference.contains("://") || reference.starts_with("urn:") => return None,
        None if reference.starts_with('#') => return None,
        None => reference,
    };
    let mut parts = relative.splitn(3, '/');
    let (ty, id) = (parts.next()?, parts.next()?);
    if !ty.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    let id = namespace::outward(adapter, id)?;
    Some(match parts.next() {
        Some(rest) => format!("{ty}/{id}/{rest}"),
        None => format!("{ty}/{id}"),
    })
}

/// A reference at the gateway (in a search value) as the backend knows it: `None` when it does
/// not point into this backend (so the backend cannot have matches for it).
pub fn reference_inward(reference: &str, adapter: &str) -> Option<String> {
    match reference.split_once('/') {
        Some((ty, id)) => Some(format!("{ty}/{}", namespace::inward(adapter, id)?)),
        None => namespace::inward(adapter, reference).map(str::to_owned),
    }
}

/// Applies `f` to every `reference` string in `v` (Reference.reference, at any depth).
fn rewrite_references(v: &mut Value, f: &dyn Fn(&str) -> Option<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if k == "reference" => {
                        if let Some(new) = f(s) {
                            *s = new;
                        }
                    }
                    _ => rewrite_references(x, f),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_references(x, f)),
        _ => {}
    }
}

//! Search criteria the store understands. The foundation indexes `_id` and `identifier`, which is
//! what conditional create/update/delete rely on; the search issue adds every other parameter.

use crate::error::{Error, Result};
use crate::fhir::search_index::{fold, precision_range};
use crate::fhir::search_params::{self, Definition, Kind};
use crate::fhir::validate::Structure;
use serde_json::Value;

/// A token search value: `system|code`, `|code` (no system), `code` (any system), `system|`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// `None`: any system; `Some("")`: the identifier must have no system.
    pub system: Option<String>,
    /// `None`: any value (the `system|` form).
    pub value: Option<String>,
}

/// AND of ORs: each inner list is one parameter occurrence with comma-separated alternatives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Criteria {
    pub ids: Vec<Vec<String>>,
    pub identifiers: Vec<Vec<Token>>,
    /// Only resources in this patient's compartment (set by the policy for patient-context
    /// scopes, never from client input).
    pub compartment: Option<String>,
    /// The same person's other records in this store (Patients with the compartment patient's
    /// BSN, held for other organisations): their compartments are searched too. Set by the
    /// policy's linking only, with `compartment`.
    pub compartment_linked: Vec<String>,
    /// Parameters answered from `search_index` (see `search_index.rs`), ANDed.
    pub clauses: Vec<Clause>,
    /// A compartment search (`Patient/123/Observation`): the patient the client asked for,
    /// ANDed with any compartment the policy imposes.
    pub within: Option<String>,
    /// `_text` and `_content`, ANDed.
    pub fulltext: Vec<FullText>,
    /// `_type` of a search over every type (`$everything`, `Patient/[id]/*`): only these types.
    pub types: Vec<String>,
}

/// `_text` (the narrative) or `_content` (every text of the resource): one of the alternatives
/// (comma-separated) has all its words. Words are folded (lower case, no accents) and are
/// letters and digits only, as the stores' full-text indexes split them.
#[derive(Debug, Clone, PartialEq)]
pub struct FullText {
    pub content: bool,
    pub any_of: Vec<Vec<String>>,
}

/// The words of a text as the full-text indexes see them.
pub fn words(text: &str) -> Vec<String> {
    fold(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The [`words`] of `text`, each appended to `out` after a space (no list of words on the way).
pub fn push_words(text: &str, out: &mut String) {
    for w in fold(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        out.push(' ');
        out.push_str(w);
    }
}

/// One occurrence of an indexed parameter: its alternatives (comma-separated) ORed.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub param: String,
    pub how: ClauseKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClauseKind {
    /// Some index row of the parameter matches one of these.
    Any(Vec<Pred>),
    /// No index row of the parameter matches any of these (`:not`).
    None(Vec<Pred>),
    /// `:missing=true|false`.
    Missing(bool),
    /// `param[:Type].rest=value`: the parameter references a resource of one of `targets` that
    /// matches `inner`.
    Chain {
        targets: Vec<String>,
        inner: Box<Clause>,
    },
    /// `_has:Type:param:rest=value`: some `Type` whose `param` references this resource matches
    /// `inner`.
    Has { ty: String, inner: Box<Clause> },
}

/// A condition on one index row.
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    /// Folded string starts with (the default string match).
    StartsWith(String),
    /// The string exactly as written (`:exact`).
    Exact(String),
    /// Folded string contains (`:contains`).
    Contains(String),
    /// `system|code`, `code`, `|code`, `system|`.
    Token(Token),
    /// Folded display or text contains (`:text`).
    Text(String),
    /// A reference as stored (`Type/id` or an absolute URL), any of these forms.
    Reference(Vec<String>),
    /// A reference's identifier (`:identifier`).
    RefIdentifier(Token),
    /// A date or number range comparison.
    Range(Prefix, f64, f64),
    /// A quantity: range on the value, optionally the unit's system and code.
    Quantity(Prefix, f64, f64, Option<String>, Option<String>),
    Uri(String),
    /// `:below`: the uri starts with this.
    UriBelow(String),
    /// `:above`: this starts with the uri.
    UriAbove(String),
    /// A composite (`code-value-quantity=loinc|718-7$gt10`): its first part as a token or a
    /// reference on `system`/`value`, its second on `raw`/`low`/`high` (see `search_index`).
    Composite(Box<Pred>, Second),
    /// `identifier:of-type=type-system|type-code|value`.
    OfType(Token),
}

/// The second part of a composite search value.
#[derive(Debug, Clone, PartialEq)]
pub enum Second {
    Token(Token),
    Range(Prefix, f64, f64),
    Quantity(Prefix, f64, f64, Option<String>, Option<String>),
    String(String),
}

/// Search prefixes for ordered values (R4 §3.1.1.4.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// The prefix of an ordered search value and the rest.
fn prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

/// The range a number search compares with: its implicit precision range for `eq`, `ne` and `ap`
/// (R4: `100` means [99.5, 100.5)), the exact value for the ordered prefixes (`gt100`: greater
/// than 100).
fn number_search(p: Prefix, text: &str) -> Option<(f64, f64)> {
    match p {
        Prefix::Eq | Prefix::Ne | Prefix::Ap => number_range(text),
        _ => {
            let v: f64 = text.parse().ok().filter(|v: &f64| v.is_finite())?;
            Some((v, v))
        }
    }
}

/// The range a number as written stands for: `100` is [99.5, 100.5), `1.50` is [1.495, 1.505).
fn number_range(text: &str) -> Option<(f64, f64)> {
    let v: f64 = text.parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    let exp: i32 = text
        .split_once(['e', 'E'])
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let half = 0.5 * 10f64.powi(exp - decimals);
    Some((v - half, v + half))
}

/// One search value of an indexed parameter as a row condition.
fn pred(def: &Definition, modifier: Option<&str>, v: &str) -> Result<Pred> {
    let name = &def.code;
    let bad = |why: &str| Error::invalid(format!("search parameter '{name}': {why} ('{v}')"));
    Ok(match def.kind {
        Kind::String => match modifier {
            None => Pred::StartsWith(fold(&unescape(v))),
            Some("exact") => Pred::Exact(unescape(v)),
            Some("contains") => Pred::Contains(fold(&unescape(v))),
            Some(m) => return Err(bad(&format!("modifier :{m} does not apply to a string"))),
        },
        Kind::Token => match modifier {
            None | Some("not") => Pred::Token(token(v)?),
            Some("of-type") => {
                let parts = split_unescaped(v, '|');
                let [system, code, value] = parts.as_slice() else {
                    return Err(bad(":of-type takes type-system|type-code|value"));
                };
                if code.is_empty() || value.is_empty() {
                    return Err(bad(":of-type needs a type code and a value"));
                }
                Pred::OfType(Token {
                    system: Some(unescape(system)),
                    value: Some(format!("{}|{}", unescape(code), unescape(value))),
                })
            }
            Some("text") => Pred::Text(fold(&unescape(v))),
            Some(m) => return Err(bad(&format!("modifier :{m} is not supported on a token"))),
        },
        Kind::Reference => match modifier {
            Some("identifier") => Pred::RefIdentifier(token(v)?),
            Some(m) if m.starts_with(|c: char| c.is_ascii_uppercase()) => {
                if !def.targets.is_empty() && !def.targets.iter().any(|t| t == m) {
                    return Err(bad(&format!("{m} is not a target of this reference")));
                }
                Pred::Reference(vec![format!("{m}/{}", unescape(v))])
            }
            None => {
                let v = unescape(v);
                let forms = if v.contains('/') {
                    // `Type/id` or an absolute URL ending in it: both as stored.
                    let relative = v
                        .rsplitn(3, '/')
                        .collect::<Vec<_>>()
                        .get(..2)
                        .map(|p| format!("{}/{}", p[1], p[0]))
                        .unwrap_or_else(|| v.clone());
                    vec![v.clone(), relative]
                } else {
                    // A bare id: any target type.
                    def.targets.iter().map(|t| format!("{t}/{v}")).collect()
                };
                Pred::Reference(forms)
            }
            Some(m) => {
                return Err(bad(&format!(
                    "modifier :{m} is not supported on a reference"
                )));
            }
        },
        Kind::Date => {
            if modifier.is_some() {
                return Err(bad("a date takes no modifier but :missing"));
            }
            let (p, rest) = prefix(v);
            let (lo, hi) = precision_range(rest).ok_or_else(|| bad("not a date"))?;
            Pred::Range(p, lo, hi)
        }
        Kind::Number => {
            let (p, rest) = prefix(v);
            let (lo, hi) = number_search(p, rest).ok_or_else(|| bad("not a number"))?;
            Pred::Range(p, lo, hi)
        }
        Kind::Quantity => {
            let (p, rest) = prefix(v);
            let (lo, hi, system, code) = quantity(p, rest).ok_or_else(|| bad("not a number"))?;
            Pred::Quantity(p, lo, hi, system, code)
        }
        Kind::Uri => match modifier {
            None => Pred::Uri(unescape(v)),
            Some("below") => Pred::UriBelow(unescape(v)),
            Some("above") => Pred::UriAbove(unescape(v)),
            Some(m) => return Err(bad(&format!("modifier :{m} does not apply to a uri"))),
        },
        Kind::Composite => {
            if modifier.is_some() {
                return Err(bad("a composite takes no modifier but :missing"));
            }
            let Some([(first, _), (second, _)]) = search_params::composite_pair(def) else {
                return Err(bad("this composite is not searchable"));
            };
            let parts = split_unescaped(v, '$');
            let [a, b] = parts.as_slice() else {
                return Err(bad("a composite value is two parts joined by '$'"));
            };
            let a = match first {
                Kind::Reference => Pred::Reference(vec![unescape(a)]),
                _ => Pred::Token(token(a)?),
            };
            let (p, rest) = prefix(b);
            let b = match second {
                Kind::Token => Second::Token(token(b)?),
                Kind::String => Second::String(fold(&unescape(b))),
                Kind::Date => {
                    let (lo, hi) = precision_range(rest).ok_or_else(|| bad("not a date"))?;
                    Second::Range(p, lo, hi)
                }
                Kind::Number => {
                    let (lo, hi) = number_search(p, rest).ok_or_else(|| bad("not a number"))?;
                    Second::Range(p, lo, hi)
                }
                _ => {
                    let (lo, hi, system, code) =
                        quantity(p, rest).ok_or_else(|| bad("not a quantity"))?;
                    Second::Quantity(p, lo, hi, system, code)
                }
            };
            Pred::Composite(Box::new(a), b)
        }
        Kind::Special => {
            return Err(bad("this parameter type is not searchable"));
        }
    })
}

/// `number[|system[|code]]` of a quantity search.
fn quantity(p: Prefix, rest: &str) -> Option<(f64, f64, Option<String>, Option<String>)> {
    let mut parts = rest.splitn(3, '|');
    let (lo, hi) = number_search(p, parts.next().unwrap_or_default())?;
    let system = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let code = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    Some((lo, hi, system, code))
}

/// Splits at each `sep` that is not escaped with a backslash (escapes kept for the parts).
fn split_unescaped(v: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in v.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == sep && !escaped => {
                out.push(&v[start..i]);
                start = i + c.len_utf8();
            }
            _ => escaped = false,
        }
    }
    out.push(&v[start..]);
    out
}

fn unescape(s: &str) -> String {
    s.replace("\\,", ",")
        .replace("\\|", "|")
        .replace("\\$", "$")
        .replace("\\\\", "\\")
}

/// How deep chains and `_has` may nest (each level is a subquery).
const MAX_CHAIN: usize = 3;

/// A clause for `name[:modifier]=value` when `name` is an indexed parameter of `ty`, a chain
/// (`subject:Patient.name=...`) or a reverse chain (`_has:Observation:patient:code=...`).
fn clause(ty: &str, name: &str, value: &str) -> Result<Option<Clause>> {
    chained(ty, name, value, 0)
}

fn chained(ty: &str, name: &str, value: &str, depth: usize) -> Result<Option<Clause>> {
    if depth > MAX_CHAIN {
        return Err(Error::invalid(format!(
            "'{name}': chains and _has nest at most {MAX_CHAIN} deep"
        )));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(param), Some(inner)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::invalid(format!(
                "'{name}': _has needs _has:Type:parameter:parameter"
            )));
        };
        let def = search_params::definition(source, param)
            .filter(|d| d.kind == Kind::Reference)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "'{name}': {source}.{param} is not a reference parameter"
                ))
            })?;
        let inner = chained(source, inner, value, depth + 1)?.ok_or_else(|| {
            Error::invalid(format!(
                "'{name}': {source} has no search parameter '{inner}'"
            ))
        })?;
        return Ok(Some(Clause {
            param: def.code.clone(),
            how: ClauseKind::Has {
                ty: source.to_owned(),
                inner: Box::new(inner),
            },
        }));
    }
    if let Some((link, rest)) = name.split_once('.') {
        let (code, target) = match link.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (link, None),
        };
        let Some(def) = search_params::definition(ty, code).filter(|d| d.kind == Kind::Reference)
        else {
            return Ok(None);
        };
        // The link's targets on which the rest of the chain is a parameter (or a `_has`).
        let mut targets = Vec::new();
        let mut inner = None;
        for t in def
            .targets
            .iter()
            .filter(|t| target.is_none_or(|want| want == t.as_str()))
        {
            if let Ok(Some(c)) = chained(t, rest, value, depth + 1) {
                targets.push(t.clone());
                inner.get_or_insert(c);
            }
        }
        let Some(inner) = inner else {
            // Re-run on the first target for the reason (a bad value, a depth limit), if any.
            if let Some(t) = def
                .targets
                .iter()
                .find(|t| target.is_none_or(|w| w == t.as_str()))
            {
                chained(t, rest, value, depth + 1)?;
            }
            let first = rest.split(['.', ':']).next().unwrap_or(rest);
            return Err(Error::invalid(format!(
                "'{name}': no target of {code} has a search parameter '{first}'"
            )));
        };
        return Ok(Some(Clause {
            param: def.code.clone(),
            how: ClauseKind::Chain {
                targets,
                inner: Box::new(inner),
            },
        }));
    }
    simple(ty, name, value)
}

/// `name[:modifier]=value` on an indexed parameter of `ty`.
fn simple(ty: &str, name: &str, value: &str) -> Result<Option<Clause>> {
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    let Some(def) = search_params::definition(ty, code) else {
        return Ok(None);
    };
    // Only what is indexed for this type can be searched (the same list the CapabilityStatement shows).
    if !search_params::indexed(ty).any(|d| std::ptr::eq(d, def)) {
        return Ok(None);
    }
    let how = if modifier == Some("missing") {
        match value {
            "true" => ClauseKind::Missing(true),
            "false" => ClauseKind::Missing(false),
            _ => return Err(Error::invalid(format!("{name} must be true or false"))),
        }
    } else {
        let preds = split_or(value)
            .iter()
            .map(|v| pred(def, modifier, v))
            .collect::<Result<Vec<_>>>()?;
        if modifier == Some("not") {
            ClauseKind::None(preds)
        } else {
            ClauseKind::Any(preds)
        }
    };
    // `:of-type` rows are kept under their own name (see `search_index`).
    let param = if modifier == Some("of-type") {
        format!("{code}:of-type")
    } else {
        code.to_owned()
    };
    Ok(Some(Clause { param, how }))
}

impl Criteria {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.identifiers.is_empty()
            && self.compartment.is_none()
            && self.clauses.is_empty()
            && self.within.is_none()
            && self.fulltext.is_empty()
            && self.types.is_empty()
    }
}

/// The search parameters the store can evaluate for a type (for the CapabilityStatement too).
pub fn supported_parameters(ty: &str, s: &Structure) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![("_id", "token")];
    if s.has_identifier(ty) {
        out.push(("identifier", "token"));
    }
    for d in search_params::indexed(ty) {
        if d.code != "identifier" {
            out.push((d.code.as_str(), kind_name(d.kind)));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Number => "number",
        Kind::Date => "date",
        Kind::String => "string",
        Kind::Token => "token",
        Kind::Reference => "reference",
        Kind::Composite => "composite",
        Kind::Quantity => "quantity",
        Kind::Uri => "uri",
        Kind::Special => "special",
    }
}

/// One `_sort` key: what to order by and in which direction (`-` is descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub by: SortBy,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    Id,
    LastUpdated,
    /// An indexed parameter: strings, tokens, references and uris order by their (folded)
    /// value, dates, numbers and quantities by their range (low ascending, high descending).
    Param {
        code: String,
        ordered: bool,
    },
}

/// `_sort=a,-b`: the keys in order. A name that is not a sortable parameter of `ty` is returned
/// in the error position so that `Prefer: handling` decides (strict: 400, lenient: ignored).
pub fn parse_sort(ty: &str, value: &str) -> (Vec<SortKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut unknown = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (descending, name) = match part.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, part),
        };
        let by = match name {
            "_id" => Some(SortBy::Id),
            "_lastUpdated" => Some(SortBy::LastUpdated),
            _ => search_params::indexed(ty)
                .find(|d| d.code == name)
                .map(|d| SortBy::Param {
                    code: d.code.clone(),
                    ordered: matches!(d.kind, Kind::Date | Kind::Number | Kind::Quantity),
                }),
        };
        match by {
            Some(by) if !keys.iter().any(|k: &SortKey| k.by == by) => {
                keys.push(SortKey { by, descending })
            }
            Some(_) => {}
            None => unknown.push(format!("_sort={name}")),
        }
    }
    (keys, unknown)
}

/// Splits parameters into criteria and the names that are not understood.
pub fn parse_criteria(
    ty: &str,
    params: &[(String, String)],
    s: &Structure,
) -> Result<(Criteria, Vec<String>)> {
    let mut c = Criteria::default();
    let mut unknown = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "_id" => {
                let ids: Vec<String> = split_or(value)
                    .into_iter()
                    .filter(|v| !v.is_empty())
                    .collect();
                if ids.is_empty() {
                    return Err(Error::invalid("_id needs a value"));
                }
                c.ids.push(ids);
            }
            "_text" | "_content" => {
                let any_of: Vec<Vec<String>> = split_or(value)
                    .iter()
                    .map(|v| words(&unescape(v)))
                    .collect();
                if any_of.iter().any(Vec::is_empty) {
                    return Err(Error::invalid(format!("{name} needs a word")));
                }
                c.fulltext.push(FullText {
                    content: name == "_content",
                    any_of,
                });
            }
            "identifier" if s.has_identifier(ty) => {
                let tokens = split_or(value)
                    .iter()
                    .map(|v| token(v))
                    .collect::<Result<Vec<_>>>()?;
                c.identifiers.push(tokens);
            }
            _ => match clause(ty, name, value)? {
                Some(cl) => c.clauses.push(cl),
                None => unknown.push(name.clone()),
            },
        }
    }
    Ok((c, unknown))
}

/// Commas separate alternatives; `\,` is a literal comma (FHIR search escaping).
fn split_or(v: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ (',' | '|' | '$' | '\\')) => {
                    out.last_mut().unwrap().push_str(&format!("\\{n}"))
                }
                Some(n) => {
                    let last = out.last_mut().unwrap();
                    last.push('\\');
                    last.push(n);
                }
                None => out.last_mut().unwrap().push('\\'),
            },
            ',' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

fn token(v: &str) -> Result<Token> {
    // Find the first unescaped '|'.
    let bytes = v.as_bytes();
    let mut split = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == b'|' {
            split = Some(i);
            break;
        }
        i += 1;
    }
    let unescape = |s: &str| {
        s.replace("\\,", ",")
            .replace("\\|", "|")
            .replace("\\$", "$")
            .replace("\\\\", "\\")
    };
    let t = match split {
        None => Token {
            system: None,
            value: Some(unescape(v)),
        },
        Some(i) => {
            let (sys, val) = (&v[..i], &v[i + 1..]);
            Token {
                system: Some(unescape(sys)),
                value: (!val.is_empty()).then(|| unescape(val)),
            }
        }
    };
    if t.value.is_none() && t.system.as_deref().unwrap_or("").is_empty() {
        return Err(Error::invalid(
            "an identifier search needs a system or a value",
        ));
    }
    Ok(t)
}

/// The `identifier` tokens of a resource, as `(system, value)`; shared by every store backend.
pub fn identifier_tokens(resource: &Value) -> Vec<(String, String)> {
    let items: Vec<&Value> = match resource.get("identifier") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|i| {
            let value = i.get("value")?.as_str()?;
            Some((
                i.get("system")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                value.to_owned(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_forms() {
        assert_eq!(
            token("a|b").unwrap(),
            Token {
                system: Some("a".into()),
                value: Some("b".into())
            }
        );
        assert_eq!(
            token("|b").unwrap(),
            Token {
                system: Some("".into()),
                value: Some("b".into())
            }
        );
        assert_eq!(
            token("b").unwrap(),
            Token {
                system: None,
                value: Some("b".into())
            }
        );
        assert_eq!(
            token("a|").unwrap(),
            Token {
                system: Some("a".into()),
                value: None
            }
        );
        assert_eq!(
            token(r"a\|b").unwrap(),
            Token {
                system: None,
                value: Some("a|b".into())
            }
        );
        assert!(token("|").is_err());
    }

    #[test]
    fn commas_are_alternatives_unless_escaped() {
        assert_eq!(split_or("a,b"), vec!["a", "b"]);
        assert_eq!(split_or(r"a\,b"), vec![r"a\,b"]);
    }

    #[test]
    fn identifiers_single_and_list() {
        let p =
            json!({"identifier": [{"system": "s", "value": "1"}, {"value": "2"}, {"system": "x"}]});
        assert_eq!(
            identifier_tokens(&p),
            vec![("s".into(), "1".into()), ("".into(), "2".into())]
        );
        let b = json!({"identifier": {"system": "s", "value": "9"}});
        assert_eq!(identifier_tokens(&b), vec![("s".into(), "9".into())]);
    }
}

//! FHIRPath evaluation over a resource as JSON.
//!
//! There is no StructureDefinition model here: types come from what the JSON says (`resourceType`,
//! the suffix of a choice element such as `valueQuantity`, an `as`/`ofType` cast) and from the
//! JSON kind of a primitive. That is what search parameter expressions need (paths, `where`,
//! `as`/`ofType`, `resolve() is T`, `extension(url)`, unions); the official test suite measures
//! how far the rest of the language goes (see `tests/fhirpath_suite.rs`).

use super::parse::Expr;
use serde_json::Value;
use std::borrow::Cow;
use std::cmp::Ordering;

/// One value of a FHIRPath collection.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// An element or resource (JSON object), with its FHIR type when known. Borrowed from the
    /// evaluated resource (indexing evaluates dozens of expressions per write: copying the
    /// resource for each was a fifth of the import's CPU); owned when built during evaluation.
    Node(Cow<'a, Value>, Option<String>),
    Bool(bool),
    Int(i64),
    /// Decimal, with its text (`1.50` stays `1.50`).
    Dec(f64, String),
    Str(String),
    Date(String),
    DateTime(String),
    Time(String),
    Quantity(f64, String),
}

pub type Collection<'a> = Vec<Item<'a>>;
type R<'a> = Result<Collection<'a>, String>;

impl Item<'_> {
    /// The item without a borrow of the evaluated resource.
    pub fn into_owned(self) -> Item<'static> {
        match self {
            Item::Node(v, ty) => Item::Node(Cow::Owned(v.into_owned()), ty),
            Item::Bool(b) => Item::Bool(b),
            Item::Int(i) => Item::Int(i),
            Item::Dec(d, t) => Item::Dec(d, t),
            Item::Str(s) => Item::Str(s),
            Item::Date(s) => Item::Date(s),
            Item::DateTime(s) => Item::DateTime(s),
            Item::Time(s) => Item::Time(s),
            Item::Quantity(v, u) => Item::Quantity(v, u),
        }
    }

    /// The item as JSON (for search indexing and results).
    pub fn to_json(&self) -> Value {
        match self {
            Item::Node(v, _) => v.as_ref().clone(),
            Item::Bool(b) => Value::Bool(*b),
            Item::Int(i) => Value::from(*i),
            Item::Dec(_, t) => serde_json::from_str(t).unwrap_or(Value::Null),
            Item::Str(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => {
                Value::String(s.clone())
            }
            Item::Quantity(v, u) => serde_json::json!({ "value": v, "unit": u }),
        }
    }

    /// The item as JSON, without a copy when it is an element.
    pub fn json(&self) -> Cow<'_, Value> {
        match self {
            Item::Node(v, _) => Cow::Borrowed(v.as_ref()),
            other => Cow::Owned(other.to_json()),
        }
    }

    /// The FHIR or System type name, as far as it is known.
    pub fn type_name(&self) -> Option<String> {
        Some(match self {
            Item::Node(v, ty) => {
                return ty
                    .clone()
                    .or_else(|| v.get("resourceType")?.as_str().map(str::to_owned));
            }
            Item::Bool(_) => "boolean".into(),
            Item::Int(_) => "integer".into(),
            Item::Dec(..) => "decimal".into(),
            Item::Str(_) => "string".into(),
            Item::Date(_) => "date".into(),
            Item::DateTime(_) => "dateTime".into(),
            Item::Time(_) => "time".into(),
            Item::Quantity(..) => "Quantity".into(),
        })
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Item::Str(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => Some(s),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Item::Int(i) => Some(*i as f64),
            Item::Dec(d, _) => Some(*d),
            _ => None,
        }
    }
}

/// A JSON value found in a resource as an item; `ty` from a choice suffix or the element.
fn from_json(v: &Value, ty: Option<String>) -> Item<'_> {
    match v {
        Value::Bool(b) => Item::Bool(*b),
        Value::Number(n) => {
            let text = n.to_string();
            match n.as_i64() {
                Some(i) if !text.contains(['.', 'e', 'E']) => Item::Int(i),
                _ => Item::Dec(text.parse().unwrap_or(f64::NAN), text),
            }
        }
        Value::String(s) => match ty.as_deref() {
            Some("date") => Item::Date(s.clone()),
            Some("dateTime" | "instant") => Item::DateTime(s.clone()),
            Some("time") => Item::Time(s.clone()),
            _ => Item::Str(s.clone()),
        },
        _ => {
            let ty = ty.or_else(|| v.get("resourceType")?.as_str().map(str::to_owned));
            Item::Node(Cow::Borrowed(v), ty)
        }
    }
}

/// What `%resource`, `%context` and `$this` refer to.
pub struct Env<'a> {
    pub resource: &'a Value,
    /// `as` over several items keeps those of the type instead of failing: R4's search parameter
    /// expressions are written so (`Observation.component.value as Quantity`), and every server
    /// evaluates them so; the FHIRPath suite runs strict.
    pub lenient_casts: bool,
}

struct Frame<'a> {
    this: Option<Item<'a>>,
    index: usize,
    total: Option<Collection<'a>>,
}

/// Evaluates `e` on the resource.
pub fn evaluate<'a>(e: &Expr, resource: &'a Value, lenient_casts: bool) -> R<'a> {
    let env = Env {
        resource,
        lenient_casts,
    };
    let root = vec![from_json(resource, None)];
    let frame = Frame {
        this: None,
        index: 0,
        total: None,
    };
    eval(e, &root, &env, &frame)
}

fn eval<'a>(e: &Expr, input: &Collection<'a>, env: &Env<'a>, f: &Frame<'a>) -> R<'a> {
    Ok(match e {
        Expr::Empty => vec![],
        Expr::Bool(b) => vec![Item::Bool(*b)],
        Expr::Str(s) => vec![Item::Str(s.clone())],
        Expr::Number(n) => vec![if n.contains('.') {
            Item::Dec(n.parse().map_err(|_| "bad number")?, n.clone())
        } else {
            Item::Int(n.parse().map_err(|_| "integer out of range")?)
        }],
        Expr::Date(d) => vec![Item::Date(d.clone())],
        Expr::DateTime(d) => vec![Item::DateTime(d.clone())],
        Expr::Time(t) => vec![Item::Time(t.clone())],
        Expr::Quantity(n, u) => vec![Item::Quantity(
            n.parse().map_err(|_| "bad number")?,
            u.clone(),
        )],
        Expr::Special(s) => match s.as_str() {
            "this" => f.this.clone().into_iter().collect(),
            "index" => vec![Item::Int(f.index as i64)],
            "total" => f.total.clone().unwrap_or_default(),
            other => return Err(format!("unknown ${other}")),
        },
        Expr::Env(name) => match name.as_str() {
            "resource" | "context" | "rootResource" => vec![from_json(env.resource, None)],
            "ucum" => vec![Item::Str("http://unitsofmeasure.org".into())],
            "sct" => vec![Item::Str("http://snomed.info/sct".into())],
            "loinc" => vec![Item::Str("http://loinc.org".into())],
            n if n.starts_with("vs-") => vec![Item::Str(format!(
                "http://hl7.org/fhir/ValueSet/{}",
                &n[3..]
            ))],
            n if n.starts_with("ext-") => vec![Item::Str(format!(
                "http://hl7.org/fhir/StructureDefinition/{}",
                &n[4..]
            ))],
            other => return Err(format!("unknown environment variable %{other}")),
        },
        Expr::Ident(name) => navigate(input, name, true),
        Expr::Member(focus, name) => {
            let base = eval(focus, input, env, f)?;
            navigate(&base, name, false)
        }
        Expr::Index(focus, index) => {
            let base = eval(focus, input, env, f)?;
            let i = eval(index, input, env, f)?;
            match i.first() {
                Some(Item::Int(i)) if *i >= 0 => {
                    base.get(*i as usize).cloned().into_iter().collect()
                }
                Some(_) => vec![],
                None => vec![],
            }
        }
        Expr::Unary(op, e) => {
            let v = eval(e, input, env, f)?;
            match (op, v.first()) {
                ('-', Some(Item::Int(i))) => vec![Item::Int(-i)],
                ('-', Some(Item::Dec(d, t))) => vec![Item::Dec(-d, format!("-{t}"))],
                ('-', Some(Item::Quantity(d, u))) => vec![Item::Quantity(-d, u.clone())],
                (_, _) => v,
            }
        }
        Expr::TypeOp(op, e, ty) => {
            let v = eval(e, input, env, f)?;
            if v.len() > 1 {
                if env.lenient_casts && op == "as" {
                    return Ok(v.into_iter().filter(|i| is_type(i, ty)).collect());
                }
                return Err(format!("'{op}' needs a single item"));
            }
            type_op(op, v, ty)
        }
        Expr::Binary(op, l, r) => binary(op, l, r, input, env, f)?,
        Expr::Call(focus, name, args) => {
            let base = match focus {
                Some(fe) => eval(fe, input, env, f)?,
                None => input.clone(),
            };
            call(name, &base, args, input, env, f)?
        }
    })
}

/// `is`, `as` and `ofType` on one item: true when its type is `ty` (or a kind of it).
fn is_type(item: &Item, ty: &str) -> bool {
    let ty = ty
        .strip_prefix("FHIR.")
        .or_else(|| ty.strip_prefix("System."))
        .unwrap_or(ty);
    let Some(actual) = item.type_name() else {
        return false;
    };
    if actual.eq_ignore_ascii_case(ty) {
        return true;
    }
    match ty {
        "Resource" | "DomainResource" => {
            matches!(item, Item::Node(v, _) if v.get("resourceType").is_some())
        }
        "String" | "string" => matches!(item, Item::Str(_)),
        "Integer" => matches!(item, Item::Int(_)),
        "Decimal" => matches!(item, Item::Dec(..)),
        "Boolean" => matches!(item, Item::Bool(_)),
        "DateTime" => matches!(item, Item::DateTime(_)),
        "Date" => matches!(item, Item::Date(_)),
        "Time" => matches!(item, Item::Time(_)),
        "code" | "uri" | "id" | "markdown" | "url" | "canonical" | "oid" | "uuid" => {
            matches!(item, Item::Str(_))
        }
        "dateTime" | "instant" => {
            matches!(item, Item::DateTime(_)) || matches!(item, Item::Str(s) if s.len() > 10)
        }
        "date" => matches!(item, Item::Date(_)),
        // The profiles of Quantity are Quantities.
        "Quantity" => matches!(
            actual.as_str(),
            "Age" | "Duration" | "Count" | "Distance" | "SimpleQuantity" | "MoneyQuantity"
        ),
        _ => false,
    }
}

fn type_op<'a>(op: &str, v: Collection<'a>, ty: &str) -> Collection<'a> {
    let Some(item) = v.into_iter().next() else {
        return vec![];
    };
    let ok = is_type(&item, ty);
    match op {
        "is" => vec![Item::Bool(ok)],
        _ => {
            if ok {
                vec![item]
            } else {
                vec![]
            }
        }
    }
}

/// `name` on each item: the element, a choice element (`value` → `valueQuantity`), or at the root
/// a type name that filters (`Patient` on a Patient is the Patient).
fn navigate<'a>(base: &Collection<'a>, name: &str, root: bool) -> Collection<'a> {
    let mut out = Vec::new();
    for item in base {
        let Item::Node(v, ty) = item else { continue };
        if root && name.starts_with(|c: char| c.is_ascii_uppercase()) {
            let resource_type = v.get("resourceType").and_then(Value::as_str);
            let matches = ty.as_deref() == Some(name)
                || resource_type == Some(name)
                || (resource_type.is_some() && matches!(name, "Resource" | "DomainResource"));
            if matches {
                out.push(item.clone());
                continue;
            }
        }
        match v {
            Cow::Borrowed(v) => members(&mut out, v, name),
            Cow::Owned(v) => {
                let mut found = Vec::new();
                members(&mut found, v, name);
                out.extend(found.into_iter().map(|i| -> Item<'a> { i.into_owned() }));
            }
        }
    }
    out
}

/// The element `name` of `v`, or its choice elements (`value` finds `valueQuantity`, typed
/// Quantity).
fn members<'a>(out: &mut Collection<'a>, v: &'a Value, name: &str) {
    let Some(obj) = v.as_object() else { return };
    if let Some(found) = obj.get(name) {
        push_json(out, found, element_type(name));
        return;
    }
    for (k, val) in obj {
        if let Some(suffix) = k.strip_prefix(name)
            && suffix.starts_with(|c: char| c.is_ascii_uppercase())
        {
            push_json(out, val, Some(choice_type(suffix)));
        }
    }
}

/// Types that an element's name alone tells (enough for the date-typed search elements).
fn element_type(name: &str) -> Option<String> {
    match name {
        "birthDate" => Some("date".into()),
        "lastUpdated" | "issued" | "recorded" | "authoredOn" => Some("dateTime".into()),
        _ => None,
    }
}

/// `Quantity` from `valueQuantity`; primitives keep FHIR's lower-case name (`dateTime`).
fn choice_type(suffix: &str) -> String {
    const PRIMITIVES: &[&str] = &[
        "Boolean",
        "Integer",
        "Decimal",
        "String",
        "Uri",
        "Url",
        "Canonical",
        "Code",
        "Id",
        "Markdown",
        "Date",
        "DateTime",
        "Instant",
        "Time",
        "Oid",
        "Uuid",
        "Base64Binary",
        "PositiveInt",
        "UnsignedInt",
    ];
    if PRIMITIVES.contains(&suffix) {
        let mut c = suffix.chars();
        c.next()
            .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
            .unwrap_or_default()
    } else {
        suffix.to_owned()
    }
}

fn push_json<'a>(out: &mut Collection<'a>, v: &'a Value, ty: Option<String>) {
    match v {
        Value::Array(items) => out.extend(items.iter().map(|i| from_json(i, ty.clone()))),
        Value::Null => {}
        other => out.push(from_json(other, ty)),
    }
}

fn singleton_bool(c: &Collection) -> Result<Option<bool>, String> {
    match c.as_slice() {
        [] => Ok(None),
        [Item::Bool(b)] => Ok(Some(*b)),
        // A single non-boolean item counts as true (FHIRPath §4.5 singleton evaluation).
        [_] => Ok(Some(true)),
        _ => Err("expected a single boolean".into()),
    }
}

fn bools(b: Option<bool>) -> Collection<'static> {
    b.map(Item::Bool).into_iter().collect()
}

fn binary<'a>(
    op: &str,
    l: &Expr,
    r: &Expr,
    input: &Collection<'a>,
    env: &Env<'a>,
    f: &Frame<'a>,
) -> R<'a> {
    let lv = eval(l, input, env, f)?;
    match op {
        "and" | "or" | "xor" | "implies" => {
            let a = singleton_bool(&lv)?;
            let rv = eval(r, input, env, f)?;
            let b = singleton_bool(&rv)?;
            return Ok(bools(match op {
                "and" => match (a, b) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
                "or" => match (a, b) {
                    (Some(true), _) | (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
                "xor" => match (a, b) {
                    (Some(x), Some(y)) => Some(x != y),
                    _ => None,
                },
                _ => match (a, b) {
                    (Some(false), _) => Some(true),
                    (Some(true), b) => b,
                    (None, Some(true)) => Some(true),
                    _ => None,
                },
            }));
        }
        _ => {}
    }
    let rv = eval(r, input, env, f)?;
    Ok(match op {
        "|" => union(lv, rv),
        "=" | "!=" => {
            if lv.is_empty() || rv.is_empty() {
                return Ok(vec![]);
            }
            let eq =
                lv.len() == rv.len() && lv.iter().zip(&rv).all(|(a, b)| equal(a, b) == Some(true));
            let undetermined =
                lv.len() == rv.len() && lv.iter().zip(&rv).any(|(a, b)| equal(a, b).is_none());
            if undetermined && !eq {
                return Ok(vec![]);
            }
            vec![Item::Bool(if op == "=" { eq } else { !eq })]
        }
        "~" | "!~" => {
            let eq = lv.len() == rv.len() && lv.iter().zip(&rv).all(|(a, b)| equivalent(a, b));
            vec![Item::Bool(if op == "~" { eq } else { !eq })]
        }
        "<" | ">" | "<=" | ">=" => {
            if lv.is_empty() || rv.is_empty() {
                return Ok(vec![]);
            }
            if lv.len() > 1 || rv.len() > 1 {
                return Err(format!("'{op}' needs single items"));
            }
            match compare(&lv[0], &rv[0])? {
                None => vec![],
                Some(o) => vec![Item::Bool(match op {
                    "<" => o == Ordering::Less,
                    ">" => o == Ordering::Greater,
                    "<=" => o != Ordering::Greater,
                    _ => o != Ordering::Less,
                })],
            }
        }
        "in" | "contains" => {
            let (item, coll) = if op == "in" { (&lv, &rv) } else { (&rv, &lv) };
            match item.as_slice() {
                [] => vec![],
                [one] => vec![Item::Bool(coll.iter().any(|c| equal(one, c) == Some(true)))],
                _ => return Err(format!("'{op}' needs a single item")),
            }
        }
        "&" => {
            let s = |c: &Collection| c.first().map(text).unwrap_or_default();
            vec![Item::Str(s(&lv) + &s(&rv))]
        }
        "+" | "-" | "*" | "/" | "div" | "mod" => arithmetic(op, &lv, &rv)?,
        other => return Err(format!("unknown operator {other}")),
    })
}

fn arithmetic(op: &str, lv: &Collection, rv: &Collection) -> R<'static> {
    let (Some(a), Some(b)) = (lv.first(), rv.first()) else {
        return Ok(vec![]);
    };
    if lv.len() > 1 || rv.len() > 1 {
        return Err(format!("'{op}' needs single items"));
    }
    if let (Item::Str(x), Item::Str(y), "+") = (a, b, op) {
        return Ok(vec![Item::Str(format!("{x}{y}"))]);
    }
    if let (Item::Int(x), Item::Int(y)) = (a, b) {
        return Ok(match op {
            "+" => x.checked_add(*y).map(Item::Int).into_iter().collect(),
            "-" => x.checked_sub(*y).map(Item::Int).into_iter().collect(),
            "*" => x.checked_mul(*y).map(Item::Int).into_iter().collect(),
            "div" => x.checked_div(*y).map(Item::Int).into_iter().collect(),
            "mod" => x.checked_rem(*y).map(Item::Int).into_iter().collect(),
            _ => {
                if *y == 0 {
                    vec![]
                } else {
                    vec![dec(*x as f64 / *y as f64)]
                }
            }
        });
    }
    if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
        return Ok(match op {
            "+" => vec![dec(x + y)],
            "-" => vec![dec(x - y)],
            "*" => vec![dec(x * y)],
            "/" if y != 0.0 => vec![dec(x / y)],
            "div" if y != 0.0 => vec![Item::Int((x / y).trunc() as i64)],
            "mod" if y != 0.0 => vec![dec(x % y)],
            _ => vec![],
        });
    }
    if let (Item::Quantity(x, u), Item::Quantity(y, w)) = (a, b)
        && u == w
        && (op == "+" || op == "-")
    {
        return Ok(vec![Item::Quantity(
            if op == "+" { x + y } else { x - y },
            u.clone(),
        )]);
    }
    Ok(vec![])
}

fn dec(x: f64) -> Item<'static> {
    let mut t = format!("{x}");
    if !t.contains('.') && !t.contains('e') {
        t.push_str(".0");
    }
    Item::Dec(x, t)
}

fn union<'a>(a: Collection<'a>, b: Collection<'a>) -> Collection<'a> {
    let mut out: Collection = Vec::new();
    for i in a.into_iter().chain(b) {
        if !out.iter().any(|o| equal(o, &i) == Some(true)) {
            out.push(i);
        }
    }
    out
}

/// FHIRPath `=` on two items: `None` when it cannot be decided (dates of different precision).
pub fn equal(a: &Item, b: &Item) -> Option<bool> {
    match (a, b) {
        (Item::Node(x, _), Item::Node(y, _)) => Some(x == y),
        (Item::Bool(x), Item::Bool(y)) => Some(x == y),
        (Item::Quantity(x, u), Item::Quantity(y, w)) => Some(x == y && u == w),
        _ => {
            if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
                return Some(x == y);
            }
            if is_temporal(a) || is_temporal(b) {
                // A date against something that is not a date or a string is simply unequal.
                if a.as_str().is_none() || b.as_str().is_none() {
                    return Some(false);
                }
                return compare(a, b).ok().flatten().map(|o| o == Ordering::Equal);
            }
            match (a.as_str(), b.as_str()) {
                (Some(x), Some(y)) => Some(x == y),
                _ => Some(false),
            }
        }
    }
}

fn is_temporal(i: &Item) -> bool {
    matches!(i, Item::Date(_) | Item::DateTime(_) | Item::Time(_))
}

fn equivalent(a: &Item, b: &Item) -> bool {
    match (a.as_str(), b.as_str()) {
        (Some(x), Some(y)) if !is_temporal(a) && !is_temporal(b) => {
            let norm = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            norm(x) == norm(y)
        }
        _ => {
            if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
                let p = |i: &Item| match i {
                    Item::Dec(_, t) => t.split('.').nth(1).map_or(0, str::len),
                    _ => 0,
                };
                let digits = p(a).min(p(b)) as i32;
                let scale = 10f64.powi(digits);
                return (x * scale).round() == (y * scale).round();
            }
            equal(a, b).unwrap_or(false)
        }
    }
}

/// Ordering of two items: numbers, strings, dates/times (`None` when precisions differ so the
/// answer is unknown).
pub fn compare(a: &Item, b: &Item) -> Result<Option<Ordering>, String> {
    if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
        return Ok(x.partial_cmp(&y));
    }
    if let (Item::Quantity(x, u), Item::Quantity(y, w)) = (a, b) {
        return Ok(if u == w { x.partial_cmp(y) } else { None });
    }
    if is_temporal(a) || is_temporal(b) {
        let (Some(x), Some(y)) = (a.as_str(), b.as_str()) else {
            return Err("cannot compare".into());
        };
        return Ok(compare_temporal(x, y));
    }
    match (a.as_str(), b.as_str()) {
        (Some(x), Some(y)) => Ok(Some(x.cmp(y))),
        _ => Err("cannot compare these types".into()),
    }
}

/// Dates, date-times and times compared component by component to the precision both have
/// (FHIRPath §5.2.5: equal to the shorter precision but one goes further is unknown); seconds
/// and milliseconds are one precision; values with an offset are compared in UTC.
fn compare_temporal(x: &str, y: &str) -> Option<Ordering> {
    let (x, y) = (temporal_parts(x)?, temporal_parts(y)?);
    let common = x.len().min(y.len());
    match x[..common].cmp(&y[..common]) {
        Ordering::Equal if x.len() == y.len() => Some(Ordering::Equal),
        Ordering::Equal => None,
        o => Some(o),
    }
}

/// `[year, month, day, hour, minute, millisecond-of-minute]` as far as the value goes (a time
/// alone: `[hour, minute, ms]`), shifted to UTC when it carries an offset.
pub fn temporal_parts(s: &str) -> Option<Vec<i64>> {
    let s = s.trim_start_matches('@');
    if let Some(t) = s.strip_prefix('T') {
        return time_parts(t).map(|(p, _)| p);
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<Vec<_>>>()?;
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let Some(t) = time.filter(|t| !t.is_empty()) else {
        return Some(parts);
    };
    if parts.len() != 3 {
        return None;
    }
    let (tp, offset) = time_parts(t)?;
    parts.extend(tp);
    if let (Some(off), true) = (offset, parts.len() >= 5) {
        let date = time::Date::from_calendar_date(
            parts[0] as i32,
            time::Month::try_from(parts[1] as u8).ok()?,
            parts[2] as u8,
        )
        .ok()?;
        let at = date.with_hms(parts[3] as u8, parts[4] as u8, 0).ok()?;
        let utc = at.assume_utc() - time::Duration::minutes(off);
        parts[0] = i64::from(utc.year());
        parts[1] = i64::from(u8::from(utc.month()));
        parts[2] = i64::from(utc.day());
        parts[3] = i64::from(utc.hour());
        parts[4] = i64::from(utc.minute());
    }
    Some(parts)
}

/// `[hour, minute, ms-of-minute]` and the offset in minutes (`Z` is 0).
fn time_parts(t: &str) -> Option<(Vec<i64>, Option<i64>)> {
    let (clock, offset) = if let Some(c) = t.strip_suffix('Z') {
        (c, Some(0))
    } else if let Some(i) = t.rfind(['+', '-']) {
        let (c, o) = t.split_at(i);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (h, m) = o[1..].split_once(':')?;
        (
            c,
            Some(sign * (h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?)),
        )
    } else {
        (t, None)
    };
    let fields: Vec<&str> = clock.split(':').collect();
    let mut parts = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        match i {
            0 | 1 => parts.push(f.parse().ok()?),
            2 => parts.push((f.parse::<f64>().ok()? * 1000.0).round() as i64),
            _ => return None,
        }
    }
    Some((parts, offset))
}

fn text(i: &Item) -> String {
    match i {
        Item::Str(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => s.clone(),
        Item::Bool(b) => b.to_string(),
        Item::Int(n) => n.to_string(),
        Item::Dec(_, t) => t.clone(),
        Item::Quantity(v, u) => format!("{v} '{u}'"),
        Item::Node(v, _) => v.to_string(),
    }
}

fn arg<'a>(args: &[Expr], i: usize, input: &Collection<'a>, env: &Env<'a>, f: &Frame<'a>) -> R<'a> {
    match args.get(i) {
        Some(e) => eval(e, input, env, f),
        None => Err(format!("missing argument {}", i + 1)),
    }
}

/// An argument evaluated against the original input (not the focus), as a single string.
fn str_arg(
    args: &[Expr],
    i: usize,
    input: &Collection,
    env: &Env,
    f: &Frame,
) -> Result<Option<String>, String> {
    let root = f
        .this
        .clone()
        .map(|t| vec![t])
        .unwrap_or_else(|| input.clone());
    Ok(arg(args, i, &root, env, f)?.first().map(text))
}

fn int_arg(
    args: &[Expr],
    i: usize,
    input: &Collection,
    env: &Env,
    f: &Frame,
) -> Result<Option<i64>, String> {
    let root = f
        .this
        .clone()
        .map(|t| vec![t])
        .unwrap_or_else(|| input.clone());
    Ok(match arg(args, i, &root, env, f)?.first() {
        Some(Item::Int(n)) => Some(*n),
        Some(_) => return Err("expected an integer argument".into()),
        None => None,
    })
}

/// Evaluates `e` with each item of `base` as `$this`.
fn per_item<'b, 'a: 'b>(
    base: &'b Collection<'a>,
    e: &'b Expr,
    env: &'b Env<'a>,
    total: Option<&'b Collection<'a>>,
) -> impl Iterator<Item = (usize, &'b Item<'a>, R<'a>)> + 'b {
    base.iter().enumerate().map(move |(i, item)| {
        let frame = Frame {
            this: Some(item.clone()),
            index: i,
            total: total.cloned(),
        };
        (i, item, eval(e, &vec![item.clone()], env, &frame))
    })
}

fn single_string(base: &Collection) -> Result<Option<String>, String> {
    match base.as_slice() {
        [] => Ok(None),
        [i] => Ok(i.as_str().map(str::to_owned)),
        _ => Err("expected a single string".into()),
    }
}

fn call<'a>(
    name: &str,
    base: &Collection<'a>,
    args: &[Expr],
    input: &Collection<'a>,
    env: &Env<'a>,
    f: &Frame<'a>,
) -> R<'a> {
    let one_bool = |b: bool| Ok(vec![Item::Bool(b)]);
    match name {
        "empty" => one_bool(base.is_empty()),
        "exists" => match args.first() {
            None => one_bool(!base.is_empty()),
            Some(e) => {
                for (_, _, r) in per_item(base, e, env, None) {
                    if singleton_bool(&r?)? == Some(true) {
                        return one_bool(true);
                    }
                }
                one_bool(false)
            }
        },
        "all" => {
            let Some(e) = args.first() else {
                return Err("all() needs a criterion".into());
            };
            for (_, _, r) in per_item(base, e, env, None) {
                if singleton_bool(&r?)? != Some(true) {
                    return one_bool(false);
                }
            }
            one_bool(true)
        }
        "allTrue" => one_bool(base.iter().all(|i| matches!(i, Item::Bool(true)))),
        "anyTrue" => one_bool(base.iter().any(|i| matches!(i, Item::Bool(true)))),
        "allFalse" => one_bool(base.iter().all(|i| matches!(i, Item::Bool(false)))),
        "anyFalse" => one_bool(base.iter().any(|i| matches!(i, Item::Bool(false)))),
        "not" => Ok(bools(singleton_bool(base)?.map(|b| !b))),
        "count" => Ok(vec![Item::Int(base.len() as i64)]),
        "first" => Ok(base.first().cloned().into_iter().collect()),
        "last" => Ok(base.last().cloned().into_iter().collect()),
        "tail" => Ok(base.iter().skip(1).cloned().collect()),
        "single" => match base.len() {
            0 | 1 => Ok(base.clone()),
            _ => Err("single() on more than one item".into()),
        },
        "skip" => {
            let n = int_arg(args, 0, input, env, f)?.unwrap_or(0).max(0) as usize;
            Ok(base.iter().skip(n).cloned().collect())
        }
        "take" => {
            let n = int_arg(args, 0, input, env, f)?.unwrap_or(0).max(0) as usize;
            Ok(base.iter().take(n).cloned().collect())
        }
        "where" => {
            let Some(e) = args.first() else {
                return Err("where() needs a criterion".into());
            };
            let mut out = Vec::new();
            for (_, item, r) in per_item(base, e, env, None) {
                if singleton_bool(&r?)? == Some(true) {
                    out.push(item.clone());
                }
            }
            Ok(out)
        }
        "select" => {
            let Some(e) = args.first() else {
                return Err("select() needs a projection".into());
            };
            let mut out = Vec::new();
            for (_, _, r) in per_item(base, e, env, None) {
                out.extend(r?);
            }
            Ok(out)
        }
        "repeat" => {
            let Some(e) = args.first() else {
                return Err("repeat() needs a projection".into());
            };
            let mut out: Collection = Vec::new();
            let mut frontier = base.clone();
            while !frontier.is_empty() {
                let mut next = Vec::new();
                for (_, _, r) in per_item(&frontier, e, env, None) {
                    for i in r? {
                        if !out.iter().any(|o| equal(o, &i) == Some(true)) {
                            out.push(i.clone());
                            next.push(i);
                        }
                    }
                }
                frontier = next;
            }
            Ok(out)
        }
        "aggregate" => {
            let Some(e) = args.first() else {
                return Err("aggregate() needs an aggregator".into());
            };
            let mut total = match args.get(1) {
                Some(init) => eval(init, input, env, f)?,
                None => vec![],
            };
            for (i, item) in base.iter().enumerate() {
                let frame = Frame {
                    this: Some(item.clone()),
                    index: i,
                    total: Some(total.clone()),
                };
                total = eval(e, &vec![item.clone()], env, &frame)?;
            }
            Ok(total)
        }
        "iif" => {
            let c = arg(args, 0, input, env, f)?;
            if singleton_bool(&c)? == Some(true) {
                arg(args, 1, input, env, f)
            } else if args.len() > 2 {
                arg(args, 2, input, env, f)
            } else {
                Ok(vec![])
            }
        }
        "distinct" => Ok(union(base.clone(), vec![])),
        "isDistinct" => one_bool(union(base.clone(), vec![]).len() == base.len()),
        "union" => Ok(union(base.clone(), arg(args, 0, input, env, f)?)),
        "combine" => {
            let mut out = base.clone();
            out.extend(arg(args, 0, input, env, f)?);
            Ok(out)
        }
        "intersect" => {
            let other = arg(args, 0, input, env, f)?;
            Ok(union(
                base.iter()
                    .filter(|i| other.iter().any(|o| equal(o, i) == Some(true)))
                    .cloned()
                    .collect(),
                vec![],
            ))
        }
        "exclude" => {
            let other = arg(args, 0, input, env, f)?;
            Ok(base
                .iter()
                .filter(|i| !other.iter().any(|o| equal(o, i) == Some(true)))
                .cloned()
                .collect())
        }
        "subsetOf" | "supersetOf" => {
            let other = arg(args, 0, input, env, f)?;
            let (small, big) = if name == "subsetOf" {
                (base, &other)
            } else {
                (&other, base)
            };
            one_bool(
                small
                    .iter()
                    .all(|i| big.iter().any(|o| equal(o, i) == Some(true))),
            )
        }
        "ofType" | "as" | "is" => {
            let Some(Expr::Ident(ty)) = args.first() else {
                return Err(format!("{name}() needs a type name"));
            };
            if name == "ofType" {
                return Ok(base.iter().filter(|i| is_type(i, ty)).cloned().collect());
            }
            if base.len() > 1 {
                if env.lenient_casts && name == "as" {
                    return Ok(base.iter().filter(|i| is_type(i, ty)).cloned().collect());
                }
                return Err(format!("{name}() needs a single item"));
            }
            Ok(type_op(name, base.clone(), ty))
        }
        "children" => Ok(base.iter().flat_map(children).collect()),
        "descendants" => {
            let mut out = Vec::new();
            let mut frontier: Collection = base.iter().flat_map(children).collect();
            while !frontier.is_empty() {
                let next: Collection = frontier.iter().flat_map(children).collect();
                out.extend(frontier);
                frontier = next;
            }
            Ok(out)
        }
        "extension" => {
            let url = str_arg(args, 0, input, env, f)?;
            let exts = navigate(base, "extension", false);
            Ok(exts
                .into_iter()
                .filter(|e| matches!(e, Item::Node(v, _) if v.get("url").and_then(Value::as_str) == url.as_deref()))
                .collect())
        }
        "hasValue" => one_bool(matches!(base.as_slice(), [i] if !matches!(i, Item::Node(..)))),
        "getValue" => Ok(base
            .iter()
            .filter(|i| !matches!(i, Item::Node(..)))
            .cloned()
            .collect()),
        "resolve" => Ok(base.iter().filter_map(|i| resolve(i, env)).collect()),
        "trace" => Ok(base.clone()),
        "toString" => Ok(base
            .first()
            .map(|i| Item::Str(text(i)))
            .into_iter()
            .collect()),
        "toInteger" => Ok(base
            .first()
            .and_then(|i| match i {
                Item::Int(n) => Some(Item::Int(*n)),
                Item::Bool(b) => Some(Item::Int(*b as i64)),
                Item::Str(s) => s.parse().ok().map(Item::Int),
                _ => None,
            })
            .into_iter()
            .collect()),
        "toDecimal" => Ok(base
            .first()
            .and_then(|i| match i {
                Item::Int(n) => Some(dec(*n as f64)),
                Item::Dec(..) => Some(i.clone()),
                Item::Bool(b) => Some(dec(*b as i64 as f64)),
                Item::Str(s) => s.parse::<f64>().ok().map(|v| Item::Dec(v, s.clone())),
                _ => None,
            })
            .into_iter()
            .collect()),
        "toBoolean" => Ok(base
            .first()
            .and_then(|i| match i {
                Item::Bool(b) => Some(*b),
                Item::Int(1) => Some(true),
                Item::Int(0) => Some(false),
                Item::Str(s) => match s.to_lowercase().as_str() {
                    "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
                    "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
                    _ => None,
                },
                _ => None,
            })
            .map(Item::Bool)
            .into_iter()
            .collect()),
        "toDate" | "toDateTime" | "toTime" => Ok(base
            .first()
            .and_then(|i| {
                let s = i.as_str()?;
                temporal_parts(if name == "toTime" {
                    s
                } else {
                    s.trim_start_matches('T')
                })?;
                let has_time = s.contains('T');
                match (name, i) {
                    ("toDate", Item::Str(_) | Item::Date(_)) if !has_time => {
                        Some(Item::Date(s.to_owned()))
                    }
                    ("toDate", Item::DateTime(_)) => {
                        Some(Item::Date(s.split('T').next()?.to_owned()))
                    }
                    ("toDateTime", Item::Str(_) | Item::Date(_) | Item::DateTime(_)) => {
                        Some(Item::DateTime(s.to_owned()))
                    }
                    ("toTime", Item::Str(_) | Item::Time(_))
                        if !s.contains('-') || s.starts_with('T') =>
                    {
                        time_parts(s.trim_start_matches('T'))?;
                        Some(Item::Time(s.trim_start_matches('T').to_owned()))
                    }
                    _ => None,
                }
            })
            .into_iter()
            .collect()),
        "toQuantity" => Ok(base
            .first()
            .and_then(|i| match i {
                Item::Int(n) => Some(Item::Quantity(*n as f64, "1".into())),
                Item::Dec(d, _) => Some(Item::Quantity(*d, "1".into())),
                Item::Quantity(..) => Some(i.clone()),
                Item::Str(s) => {
                    let (n, unit) = s.split_once(' ').unwrap_or((s, ""));
                    let v: f64 = n.parse().ok()?;
                    let unit = unit.trim();
                    let unit = if unit.is_empty() {
                        "1".to_owned()
                    } else if let Some(u) =
                        unit.strip_prefix('\'').and_then(|u| u.strip_suffix('\''))
                    {
                        u.to_owned()
                    } else if super::parse::UNITS.contains(&unit) {
                        unit.to_owned()
                    } else {
                        return None;
                    };
                    Some(Item::Quantity(v, unit))
                }
                Item::Bool(b) => Some(Item::Quantity(f64::from(u8::from(*b)), "1".into())),
                _ => None,
            })
            .into_iter()
            .collect()),
        "convertsToDate" | "convertsToDateTime" | "convertsToTime" | "convertsToQuantity"
        | "convertsToInteger" | "convertsToDecimal" | "convertsToBoolean" | "convertsToString" => {
            let target = name.trim_start_matches("convertsTo");
            let converted = call(&format!("to{target}"), base, args, input, env, f)?;
            Ok(if base.is_empty() {
                vec![]
            } else {
                vec![Item::Bool(!converted.is_empty())]
            })
        }
        "length" => Ok(single_string(base)?
            .map(|s| Item::Int(s.chars().count() as i64))
            .into_iter()
            .collect()),
        "upper" => Ok(single_string(base)?
            .map(|s| Item::Str(s.to_uppercase()))
            .into_iter()
            .collect()),
        "lower" => Ok(single_string(base)?
            .map(|s| Item::Str(s.to_lowercase()))
            .into_iter()
            .collect()),
        "trim" => Ok(single_string(base)?
            .map(|s| Item::Str(s.trim().to_owned()))
            .into_iter()
            .collect()),
        "toChars" => Ok(single_string(base)?
            .map(|s| s.chars().map(|c| Item::Str(c.to_string())).collect())
            .unwrap_or_default()),
        "startsWith" | "endsWith" | "contains" | "indexOf" | "matches" | "split" => {
            let Some(s) = single_string(base)? else {
                return Ok(vec![]);
            };
            let Some(a) = str_arg(args, 0, input, env, f)? else {
                return Ok(vec![]);
            };
            Ok(match name {
                "startsWith" => vec![Item::Bool(s.starts_with(&a))],
                "endsWith" => vec![Item::Bool(s.ends_with(&a))],
                "contains" => vec![Item::Bool(s.contains(&a))],
                "indexOf" => vec![Item::Int(
                    s.find(&a).map_or(-1, |b| s[..b].chars().count() as i64),
                )],
                "split" => s
                    .split(a.as_str())
                    .map(|p| Item::Str(p.to_owned()))
                    .collect(),
                _ => {
                    let re = regex::Regex::new(&a).map_err(|e| format!("bad regex: {e}"))?;
                    vec![Item::Bool(re.is_match(&s))]
                }
            })
        }
        "replace" | "replaceMatches" => {
            let Some(s) = single_string(base)? else {
                return Ok(vec![]);
            };
            let (Some(a), Some(b)) = (
                str_arg(args, 0, input, env, f)?,
                str_arg(args, 1, input, env, f)?,
            ) else {
                return Ok(vec![]);
            };
            Ok(vec![Item::Str(if name == "replace" {
                s.replace(&a, &b)
            } else {
                let re = regex::Regex::new(&a).map_err(|e| format!("bad regex: {e}"))?;
                re.replace_all(&s, b.replace("$", "$$").as_str())
                    .into_owned()
            })])
        }
        "substring" => {
            let Some(s) = single_string(base)? else {
                return Ok(vec![]);
            };
            let start = int_arg(args, 0, input, env, f)?.unwrap_or(0);
            let chars: Vec<char> = s.chars().collect();
            if start < 0 || start as usize >= chars.len() {
                return Ok(vec![]);
            }
            let len = int_arg(args, 1, input, env, f)
                .ok()
                .flatten()
                .unwrap_or(chars.len() as i64);
            Ok(vec![Item::Str(
                chars
                    .iter()
                    .skip(start as usize)
                    .take(len.max(0) as usize)
                    .collect(),
            )])
        }
        "join" => {
            let sep = if args.is_empty() {
                Some(String::new())
            } else {
                str_arg(args, 0, input, env, f)?
            };
            Ok(vec![Item::Str(
                base.iter()
                    .map(text)
                    .collect::<Vec<_>>()
                    .join(&sep.unwrap_or_default()),
            )])
        }
        "abs" | "ceiling" | "floor" | "round" | "sqrt" | "ln" | "exp" | "truncate" => {
            let Some(i) = base.first() else {
                return Ok(vec![]);
            };
            if let (Item::Int(n), "abs") = (i, name) {
                return Ok(vec![Item::Int(n.abs())]);
            }
            if let Item::Quantity(v, u) = i {
                return Ok(vec![Item::Quantity(v.abs(), u.clone())]);
            }
            let x = i.as_f64().ok_or("a number is needed")?;
            Ok(match name {
                "abs" => vec![dec(x.abs())],
                "ceiling" => vec![Item::Int(x.ceil() as i64)],
                "floor" => vec![Item::Int(x.floor() as i64)],
                "truncate" => vec![Item::Int(x.trunc() as i64)],
                "round" => {
                    let p = int_arg(args, 0, input, env, f)?.unwrap_or(0) as i32;
                    let s = 10f64.powi(p);
                    let v = (x * s).round() / s;
                    vec![Item::Dec(v, format!("{v:.*}", p.max(0) as usize))]
                }
                "sqrt" if x >= 0.0 => vec![dec(x.sqrt())],
                "ln" if x > 0.0 => vec![dec(x.ln())],
                "exp" => vec![dec(x.exp())],
                _ => vec![],
            })
        }
        "power" => {
            let Some(x) = base.first().and_then(Item::as_f64) else {
                return Ok(vec![]);
            };
            let e = arg(args, 0, input, env, f)?;
            let Some(y) = e.first().and_then(Item::as_f64) else {
                return Ok(vec![]);
            };
            let v = x.powf(y);
            Ok(if v.is_nan() {
                vec![]
            } else if matches!(
                (base.first(), e.first()),
                (Some(Item::Int(_)), Some(Item::Int(_)))
            ) {
                vec![Item::Int(v as i64)]
            } else {
                vec![dec(v)]
            })
        }
        "today" => Ok(vec![Item::Date(
            crate::store::format_instant(time::OffsetDateTime::now_utc())[..10].to_owned(),
        )]),
        "now" => Ok(vec![Item::DateTime(crate::store::format_instant(
            time::OffsetDateTime::now_utc(),
        ))]),
        "htmlChecks" | "htmlchecks" => one_bool(true),
        other => Err(format!("function {other}() is not supported")),
    }
}

fn children<'a>(i: &Item<'a>) -> Collection<'a> {
    fn of<'b>(out: &mut Collection<'b>, v: &'b Value) {
        if let Value::Object(m) = v {
            for (k, v) in m {
                if k != "resourceType" {
                    push_json(out, v, None);
                }
            }
        }
    }
    let mut out = Vec::new();
    match i {
        Item::Node(Cow::Borrowed(v), _) => of(&mut out, v),
        Item::Node(Cow::Owned(v), _) => {
            let mut found = Vec::new();
            of(&mut found, v);
            out.extend(found.into_iter().map(|i| -> Item<'a> { i.into_owned() }));
        }
        _ => {}
    }
    out
}

/// `resolve()`: a contained resource for `#id`, otherwise a stand-in of the referenced type (the
/// gateway does not fetch here; search expressions only ask `resolve() is Type`).
fn resolve<'a>(i: &Item, env: &Env<'a>) -> Option<Item<'a>> {
    let reference = match i {
        Item::Node(v, _) => v.get("reference")?.as_str()?.to_owned(),
        Item::Str(s) => s.clone(),
        _ => return None,
    };
    if let Some(id) = reference.strip_prefix('#') {
        let contained = env.resource.get("contained")?.as_array()?;
        return contained
            .iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
            .map(|c| from_json(c, None));
    }
    let parts: Vec<&str> = reference.split('/').collect();
    let at = parts
        .iter()
        .rposition(|p| p.starts_with(|c: char| c.is_ascii_uppercase()))?;
    let ty = parts[at];
    let id = parts.get(at + 1)?;
    Some(Item::Node(
        Cow::Owned(serde_json::json!({ "resourceType": ty, "id": id })),
        Some(ty.to_owned()),
    ))
}

//! What a resource is found by: each indexed search parameter's FHIRPath expression evaluated on
//! the resource, and the values it yields turned into index rows by the parameter's type.
//!
//! One row shape serves every type (`search_index` in the stores):
//!
//! | type | system | value | raw | low..high |
//! |---|---|---|---|---|
//! | string | | folded (lower case, no accents) | as written | |
//! | token | system | code / identifier value | folded display or text (`:text`) | |
//! | token `:of-type` (param `identifier:of-type`) | type system | `type-code|value` | | |
//! | composite | first part's system | first part's code or reference | second part's `system|code` or folded string | second part's range |
//! | reference | | `Type/id` or absolute URL | | |
//! | reference (`:identifier`) | identifier system | | identifier value | |
//! | date | | | | instants in ms, the whole precision of the value |
//! | number | | | | the value |
//! | quantity | system | code | unit | the value |
//! | uri | | the uri | | |

use crate::fhir::fhirpath::Item;
use crate::fhir::search_params::{self, Kind};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub param: String,
    pub system: String,
    pub value: String,
    pub raw: String,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

impl Entry {
    fn new(param: &str) -> Entry {
        Entry {
            param: param.to_owned(),
            system: String::new(),
            value: String::new(),
            raw: String::new(),
            low: None,
            high: None,
        }
    }
}

/// The index rows of a resource of type `ty`.
pub fn entries(ty: &str, resource: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    for def in search_params::indexed(ty) {
        let Some(expr) = &def.expression else {
            continue;
        };
        // An expression that fails on this resource indexes nothing for it, never fails the write.
        let Ok(items) = expr.evaluate_for_search(resource) else {
            continue;
        };
        for item in items {
            if def.kind == Kind::Composite {
                composite(def, &item, &mut out);
            } else {
                rows(&def.code, def.kind, &item, &mut out);
            }
        }
    }
    out.dedup();
    out
}

/// `entries` as the store keeps them: a row of a parameter that another's row repeats exactly
/// (a `name` row that is the `family` row, say) is left out, since a search on the wider
/// parameter reads the narrower one's rows too (`search_params::aliases`).
pub fn stored_once(ty: &str, entries: &mut Vec<Entry>) {
    let repeated: Vec<bool> = entries
        .iter()
        .map(|e| {
            let narrower = search_params::aliases(ty, &e.param);
            !narrower.is_empty()
                && entries.iter().any(|o| {
                    narrower.contains(&o.param)
                        && o.system == e.system
                        && o.value == e.value
                        && o.raw == e.raw
                        && o.low == e.low
                        && o.high == e.high
                })
        })
        .collect();
    let mut keep = repeated.into_iter().map(|r| !r);
    entries.retain(|_| keep.next().unwrap_or(true));
}

fn rows(param: &str, kind: Kind, item: &Item, out: &mut Vec<Entry>) {
    let v = item.json();
    match kind {
        Kind::String => strings(&v, &mut |s| {
            out.push(Entry {
                value: fold(s),
                raw: s.to_owned(),
                ..Entry::new(param)
            })
        }),
        Kind::Token => tokens(param, &v, out),
        Kind::Reference => {
            if let Some(r) = v.as_str().or_else(|| v.get("reference")?.as_str()) {
                out.push(Entry {
                    value: r.to_owned(),
                    ..Entry::new(param)
                });
            }
            if let Some(id) = v.get("identifier") {
                out.push(Entry {
                    system: text(&id["system"]),
                    raw: text(&id["value"]),
                    ..Entry::new(param)
                });
            }
        }
        Kind::Date => {
            if let Some((low, high)) = date_range(&v) {
                out.push(Entry {
                    low: Some(low),
                    high: Some(high),
                    ..Entry::new(param)
                });
            }
        }
        Kind::Number => {
            if let Some(n) = number(&v) {
                out.push(Entry {
                    low: Some(n),
                    high: Some(n),
                    ..Entry::new(param)
                });
            }
        }
        Kind::Quantity => {
            if let Some(n) = number(&v["value"]) {
                out.push(Entry {
                    system: text(&v["system"]),
                    value: text(&v["code"]),
                    raw: text(&v["unit"]),
                    low: Some(n),
                    high: Some(n),
                    ..Entry::new(param)
                });
            }
        }
        Kind::Uri => {
            if let Some(s) = v.as_str() {
                out.push(Entry {
                    value: s.to_owned(),
                    ..Entry::new(param)
                });
            }
        }
        Kind::Composite | Kind::Special => {}
    }
}

/// A composite's rows: every pair of its two components' values within one item (the same
/// Observation, or the same component of it). The first component fills `system`/`value` as a
/// token (or `value` as a reference) would; the second `raw` (`system|code` of a token or a
/// quantity's unit, a folded string) and `low`/`high` (a date, number or quantity).
fn composite(def: &search_params::Definition, item: &Item, out: &mut Vec<Entry>) {
    let Some([(ka, ea), (kb, eb)]) = search_params::composite_pair(def) else {
        return;
    };
    let within = item.json();
    let part = |kind: Kind, e: &crate::fhir::fhirpath::FhirPath| {
        let mut rows_of = Vec::new();
        for v in e.evaluate_for_search(&within).unwrap_or_default() {
            rows("", kind, &v, &mut rows_of);
        }
        rows_of
    };
    let (firsts, seconds) = (part(*ka, ea), part(*kb, eb));
    for a in &firsts {
        for b in &seconds {
            let raw = match kb {
                Kind::Token => format!("{}|{}", b.system, b.value),
                Kind::Quantity => {
                    let code = if b.value.is_empty() { &b.raw } else { &b.value };
                    format!("{}|{code}", b.system)
                }
                Kind::String => b.value.clone(),
                _ => String::new(),
            };
            out.push(Entry {
                system: a.system.clone(),
                value: a.value.clone(),
                raw,
                low: b.low,
                high: b.high,
                ..Entry::new(&def.code)
            });
        }
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str()?.parse().ok())
}

/// The strings a string parameter matches in a value: the string itself, or the parts of a
/// HumanName or Address.
fn strings(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, f)),
        Value::Object(m) => {
            for k in search_params::STRING_PARTS {
                if let Some(x) = m.get(k) {
                    strings(x, f);
                }
            }
        }
        _ => {}
    }
}

fn tokens(param: &str, v: &Value, out: &mut Vec<Entry>) {
    let row = |system: &Value, code: &Value, display: &str| Entry {
        system: text(system),
        value: match code {
            Value::Bool(b) => b.to_string(),
            other => text(other),
        },
        raw: fold(display),
        ..Entry::new(param)
    };
    match v {
        Value::String(_) | Value::Bool(_) => out.push(row(&Value::Null, v, "")),
        Value::Object(m) => {
            if let Some(codings) = m.get("coding").and_then(Value::as_array) {
                // CodeableConcept: each coding, with the concept's text for `:text`.
                let concept_text = m.get("text").and_then(Value::as_str).unwrap_or_default();
                for c in codings {
                    let display = c["display"].as_str().unwrap_or(concept_text);
                    out.push(row(&c["system"], &c["code"], display));
                }
                if codings.is_empty() && !concept_text.is_empty() {
                    out.push(row(&Value::Null, &Value::Null, concept_text));
                }
            } else if m.contains_key("code")
                || (m.contains_key("system") && !m.contains_key("value"))
            {
                // Coding
                out.push(row(
                    &v["system"],
                    &v["code"],
                    v["display"].as_str().unwrap_or_default(),
                ));
            } else if m.contains_key("value") {
                // Identifier or ContactPoint
                let label = m
                    .get("type")
                    .and_then(|t| t.get("text"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                out.push(row(&v["system"], &v["value"], label));
                // `:of-type`: the identifier's type codings with its value, under their own name.
                for t in m
                    .get("type")
                    .and_then(|t| t.get("coding"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let (Some(code), Some(value)) = (t["code"].as_str(), v["value"].as_str()) {
                        out.push(Entry {
                            system: text(&t["system"]),
                            value: format!("{code}|{value}"),
                            ..Entry::new(&format!("{param}:of-type"))
                        });
                    }
                }
            } else if let Some(t) = m.get("text").and_then(Value::as_str) {
                out.push(row(&Value::Null, &Value::Null, t));
            }
        }
        _ => {}
    }
}

/// The words of a resource for full-text search: its narrative's (`text.div` without markup),
/// and those of every text in it (`_content`: the narrative's too, not binary data), folded;
/// at most [`MAX_TEXT`] bytes each.
pub fn texts(resource: &Value) -> (String, String) {
    let div = resource["text"]["div"].as_str().unwrap_or_default();
    let narrative = crate::fhir::search::words(&strip_markup(div)).join(" ");
    let mut content = narrative.clone();
    collect_text(resource, &mut content);
    (clip(narrative), clip(content))
}

/// How much text one resource adds to a full-text index.
pub const MAX_TEXT: usize = 64 * 1024;

fn clip(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn strip_markup(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// Elements whose strings `_content` does not search (see [`collect_text`]).
pub const NOT_CONTENT: &[&str] = &[
    "div",
    "data",
    "resourceType",
    "id",
    "system",
    "reference",
    "url",
    "profile",
];

fn collect_text(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                // The narrative is in already; attachments' data is base64, not text; code
                // systems, references, canonical URLs and profiles are machine identifiers
                // (`http://loinc.org`, `urn:uuid:...`) whose pieces would be a third of the
                // words and find nothing a reader looks for.
                if !NOT_CONTENT.contains(&k.as_str()) {
                    collect_text(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_text(x, out)),
        Value::String(s) if out.len() < MAX_TEXT => crate::fhir::search::push_words(s, out),
        _ => {}
    }
}

/// Lower case without diacritics: what string search compares (`Müller` is found by `muller`).
pub fn fold(s: &str) -> String {
    // Most indexed text is ASCII, where folding is lower-casing (a fifth of the text indexing
    // time of an import went to the general path, char by char).
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => 'a',
            'ç' | 'ć' | 'č' => 'c',
            'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => 'e',
            'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' | 'ı' => 'i',
            'ñ' | 'ń' | 'ň' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => 'o',
            'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' | 'ų' => 'u',
            'ý' | 'ÿ' => 'y',
            'ś' | 'š' | 'ş' => 's',
            'ź' | 'ż' | 'ž' => 'z',
            'ł' => 'l',
            'ř' => 'r',
            'ť' => 't',
            'ď' => 'd',
            other => other,
        })
        .collect()
}

/// The instants (ms since the epoch, UTC) a date value covers, to its precision: `2020` is the
/// whole year, a Period from its start to its end (open ends unbounded). A value without a zone
/// is taken as UTC.
pub fn date_range(v: &Value) -> Option<(f64, f64)> {
    match v {
        Value::String(s) => precision_range(s),
        Value::Object(m) if m.contains_key("start") || m.contains_key("end") => {
            let low = m
                .get("start")
                .and_then(Value::as_str)
                .and_then(precision_range)
                .map_or(f64::MIN, |r| r.0);
            let high = m
                .get("end")
                .and_then(Value::as_str)
                .and_then(precision_range)
                .map_or(f64::MAX, |r| r.1);
            Some((low, high))
        }
        // Timing: its events.
        Value::Object(m) => {
            let events: Vec<(f64, f64)> = m
                .get("event")?
                .as_array()?
                .iter()
                .filter_map(|e| precision_range(e.as_str()?))
                .collect();
            Some((
                events.iter().map(|e| e.0).reduce(f64::min)?,
                events.iter().map(|e| e.1).reduce(f64::max)?,
            ))
        }
        _ => None,
    }
}

/// `[start, end]` in ms of a FHIR date, dateTime or instant at its precision.
pub fn precision_range(s: &str) -> Option<(f64, f64)> {
    use time::{Date, Duration, Month, PrimitiveDateTime, Time, UtcOffset};
    let (date, rest) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let year: i32 = parts.first()?.parse().ok()?;
    let month: u8 = parts.get(1).map_or(Some(1), |m| m.parse().ok())?;
    let day: u8 = parts.get(2).map_or(Some(1), |d| d.parse().ok())?;
    let start_date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    let ms = |t: PrimitiveDateTime, off: UtcOffset| {
        (t.assume_offset(off).unix_timestamp_nanos() / 1_000_000) as f64
    };
    let Some(rest) = rest else {
        let start = start_date.with_time(Time::MIDNIGHT);
        let end = match parts.len() {
            1 => Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
            2 => {
                let next = Month::try_from(month).ok()?.next();
                let y = if month == 12 { year + 1 } else { year };
                Date::from_calendar_date(y, next, 1).ok()?
            }
            _ => start_date.next_day()?,
        }
        .with_time(Time::MIDNIGHT);
        return Some((ms(start, UtcOffset::UTC), ms(end, UtcOffset::UTC) - 1.0));
    };
    let (clock, offset) = if let Some(c) = rest.strip_suffix('Z') {
        (c, UtcOffset::UTC)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (c, o) = rest.split_at(i);
        let sign: i8 = if o.starts_with('-') { -1 } else { 1 };
        let (h, m) = o[1..].split_once(':')?;
        let off = UtcOffset::from_hms(
            sign * h.parse::<i8>().ok()?,
            sign * m.parse::<i8>().ok()?,
            0,
        )
        .ok()?;
        (c, off)
    } else {
        (rest, UtcOffset::UTC)
    };
    let fields: Vec<&str> = clock.split(':').collect();
    let hour: u8 = fields.first()?.parse().ok()?;
    let minute: u8 = fields.get(1).map_or(Some(0), |m| m.parse().ok())?;
    let (second, frac, unit) = match fields.get(2) {
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            let digits = frac.len().min(9) as u32;
            let nanos: u32 = if digits == 0 {
                0
            } else {
                frac[..digits as usize].parse::<u32>().ok()? * 10u32.pow(9 - digits)
            };
            let unit = if digits == 0 {
                Duration::seconds(1)
            } else {
                Duration::nanoseconds(10i64.pow(9 - digits))
            };
            (whole.parse::<u8>().ok()?, nanos, unit)
        }
        None if fields.len() == 2 => (0, 0, Duration::minutes(1)),
        None => (0, 0, Duration::hours(1)),
    };
    let start = start_date.with_time(Time::from_hms_nano(hour, minute, second, frac).ok()?);
    let end = start + unit;
    Some((
        ms(start, offset),
        (ms(end, offset) - 1.0).max(ms(start, offset)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A Patient's `name` rows that are its `family` and `given` rows, its `address` rows that
    /// are its `address-city` rows, are left out; the name's text, a row of `name` alone, stays.
    #[test]
    fn rows_another_parameter_holds_are_stored_once() {
        let patient = json!({"resourceType": "Patient",
            "name": [{"family": "Jansen", "given": ["Piet"], "text": "Piet Jansen"}],
            "address": [{"city": "Utrecht", "line": ["Heidelberglaan 100"]}]});
        let all = entries("Patient", &patient);
        let mut once = all.clone();
        stored_once("Patient", &mut once);
        let of = |rows: &[Entry], param: &str| -> Vec<String> {
            rows.iter()
                .filter(|e| e.param == param)
                .map(|e| e.value.clone())
                .collect()
        };
        assert_eq!(of(&all, "name"), ["jansen", "piet", "piet jansen"]);
        assert_eq!(of(&once, "name"), ["piet jansen"]);
        assert_eq!(of(&once, "family"), ["jansen"]);
        assert_eq!(of(&once, "address"), ["heidelberglaan 100"]);
        assert_eq!(of(&once, "address-city"), ["utrecht"]);
        assert_eq!(all.len() - once.len(), 3);
        // An Organization's `name` has no narrower parameter: every row stays.
        let org = json!({"resourceType": "Organization", "name": "Jansen Zorg"});
        let mut rows = entries("Organization", &org);
        let n = rows.len();
        stored_once("Organization", &mut rows);
        assert_eq!(rows.len(), n);
        // An Observation's `combo-*` rows are all its `code`, `component-code`, `value-quantity`,
        // ... rows.
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
            "valueQuantity": {"value": 7.2, "system": "http://unitsofmeasure.org", "code": "mmol/L"}});
        let mut rows = entries("Observation", &obs);
        stored_once("Observation", &mut rows);
        assert!(
            rows.iter().all(|e| !e.param.starts_with("combo-")),
            "{rows:?}"
        );
        assert!(rows.iter().any(|e| e.param == "code-value-quantity"));
    }

    #[test]
    fn content_leaves_out_machine_identifiers() {
        let (_, content) = texts(&json!({
            "resourceType": "Observation",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6",
                                 "display": "Systolic blood pressure"}]},
            "subject": {"reference": "urn:uuid:5c1e", "display": "Jan Jansen"},
            "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bp"]}
        }));
        let words: Vec<&str> = content.split_whitespace().collect();
        for w in ["systolic", "blood", "pressure", "8480", "jan", "jansen"] {
            assert!(words.contains(&w), "{w} in {content}");
        }
        for w in [
            "loinc",
            "http",
            "urn",
            "uuid",
            "5c1e",
            "structuredefinition",
        ] {
            assert!(!words.contains(&w), "{w} in {content}");
        }
    }

    #[test]
    fn fold_lowercases_and_drops_diacritics_on_both_paths() {
        assert_eq!(fold("Jansen-DE Vries 12"), "jansen-de vries 12");
        assert_eq!(fold("Müller ÅSTRÖM Łódź"), "muller astrom lodz");
        // The ASCII shortcut gives what the general path gives.
        let ascii: String = (0u8..128).map(char::from).collect();
        let general: String = ascii.chars().flat_map(char::to_lowercase).collect();
        assert_eq!(fold(&ascii), general);
    }

    fn of<'a>(e: &'a [Entry], p: &str) -> Vec<&'a Entry> {
        e.iter().filter(|x| x.param == p).collect()
    }

    #[test]
    fn a_patient_is_indexed_by_its_parameters() {
        let p = json!({
            "resourceType": "Patient", "id": "p1",
            "identifier": [{ "system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120" }],
            "name": [{ "family": "Müller", "given": ["Anna", "Ëlse"] }],
            "gender": "female", "birthDate": "1974-12",
            "active": true,
            "generalPractitioner": [{ "reference": "Practitioner/d1" }],
            "address": [{ "city": "Utrecht", "postalCode": "3511 AA" }]
        });
        let e = entries("Patient", &p);
        assert_eq!(of(&e, "family")[0].value, "muller");
        assert_eq!(of(&e, "family")[0].raw, "Müller");
        assert!(of(&e, "name").iter().any(|x| x.value == "else"));
        assert_eq!(
            of(&e, "identifier")[0].system,
            "http://fhir.nl/fhir/NamingSystem/bsn"
        );
        assert_eq!(of(&e, "gender")[0].value, "female");
        assert_eq!(of(&e, "active")[0].value, "true");
        assert_eq!(of(&e, "general-practitioner")[0].value, "Practitioner/d1");
        assert_eq!(of(&e, "address-city")[0].value, "utrecht");
        let b = of(&e, "birthdate")[0];
        assert_eq!(
            (b.low, b.high),
            (
                precision_range("1974-12-01T00:00:00Z").map(|r| r.0),
                precision_range("1974-12-31").map(|r| r.1)
            )
        );
    }

    #[test]
    fn an_observation_is_indexed_by_code_value_date_and_subject() {
        let o = json!({
            "resourceType": "Observation", "status": "final",
            "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory" }] }],
            "code": { "coding": [{ "system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin" }] },
            "subject": { "reference": "Patient/p1" },
            "effectiveDateTime": "2024-03-01T10:00:00+01:00",
            "valueQuantity": { "value": 8.5, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L" }
        });
        let e = entries("Observation", &o);
        assert_eq!(of(&e, "code")[0].raw, "hemoglobin");
        assert_eq!(of(&e, "category")[0].value, "laboratory");
        assert_eq!(of(&e, "patient")[0].value, "Patient/p1");
        assert_eq!(of(&e, "subject")[0].value, "Patient/p1");
        let q = of(&e, "value-quantity")[0];
        assert_eq!((q.low, q.value.as_str()), (Some(8.5), "mmol/L"));
        let d = of(&e, "date")[0];
        assert_eq!(d.low, precision_range("2024-03-01T09:00:00Z").map(|r| r.0));
        assert_eq!(d.high, Some(d.low.unwrap() + 999.0), "to the second");
    }

    /// Composites pair their components within one item: the Observation's own code and value,
    /// and each component's code with that component's value (never across components).
    #[test]
    fn composites_pair_components_within_one_item() {
        let o = json!({
            "resourceType": "Observation", "status": "final",
            "code": { "coding": [{ "system": "http://loinc.org", "code": "85354-9" }] },
            "component": [
                { "code": { "coding": [{ "system": "http://loinc.org", "code": "8480-6" }] },
                  "valueQuantity": { "value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]" } },
                { "code": { "coding": [{ "system": "http://loinc.org", "code": "8462-4" }] },
                  "valueQuantity": { "value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]" } }
            ]
        });
        let e = entries("Observation", &o);
        let pairs: Vec<(&str, Option<f64>, &str)> = of(&e, "component-code-value-quantity")
            .iter()
            .map(|r| (r.value.as_str(), r.low, r.raw.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("8480-6", Some(120.0), "http://unitsofmeasure.org|mm[Hg]"),
                ("8462-4", Some(80.0), "http://unitsofmeasure.org|mm[Hg]")
            ]
        );
        let combo = of(&e, "combo-code-value-quantity");
        assert_eq!(
            combo.len(),
            2,
            "the Observation has no value of its own: {combo:?}"
        );
        let c = json!({
            "resourceType": "Observation", "status": "final",
            "code": { "coding": [{ "system": "http://loinc.org", "code": "883-9" }] },
            "valueCodeableConcept": { "coding": [{ "system": "http://snomed.info/sct", "code": "112144000" }] }
        });
        let e = entries("Observation", &c);
        let v = of(&e, "code-value-concept");
        assert_eq!(
            (v[0].value.as_str(), v[0].raw.as_str()),
            ("883-9", "http://snomed.info/sct|112144000")
        );
    }

    /// Codings and identifiers with parts missing index what they have (this once panicked).
    #[test]
    fn partial_codings_and_identifiers() {
        let p = json!({
            "resourceType": "Patient",
            "meta": { "tag": [{ "code": "kept" }], "security": [{ "system": "urn:s" }] },
            "identifier": [{ "value": "1" }, { "system": "urn:only-system" }],
            "telecom": [{ "value": "0612345678" }]
        });
        let e = entries("Patient", &p);
        assert_eq!(of(&e, "_tag")[0].value, "kept");
        assert_eq!(of(&e, "_security")[0].system, "urn:s");
        assert!(
            of(&e, "identifier")
                .iter()
                .any(|x| x.value == "1" && x.system.is_empty())
        );
        assert_eq!(of(&e, "telecom")[0].value, "0612345678");
    }

    #[test]
    fn date_precision() {
        let (lo, hi) = precision_range("2020").unwrap();
        assert_eq!(lo, precision_range("2020-01-01T00:00:00Z").unwrap().0);
        assert_eq!(hi, precision_range("2020-12-31T23:59:59.999Z").unwrap().0);
        let (lo, hi) = precision_range("2020-02").unwrap();
        assert_eq!(hi - lo + 1.0, 29.0 * 86_400_000.0, "a leap February");
        assert!(precision_range("2020-13").is_none());
        assert!(precision_range("not a date").is_none());
    }
}

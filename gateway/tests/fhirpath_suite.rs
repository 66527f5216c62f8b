//! The gateway's FHIRPath evaluator against the official FHIRPath test suite for R4
//! (`../shared/fhir/test-cases/tests-fhir-r4.xml`, 937 tests), with the JSON forms of its input
//! resources from the R4 package. Prints how many pass, by group, and fails if fewer pass than
//! the floor below (raise it as the evaluator grows; never lower it silently).

use gateway::fhir::fhirpath::{FhirPath, Item};
use quick_xml::events::Event;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;

/// Tests that passed when this floor was last raised.
const FLOOR: usize = 687;

fn shared(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fhir")
        .join(p)
}

#[derive(Debug, Default)]
struct Case {
    group: String,
    name: String,
    input: Option<String>,
    predicate: bool,
    expression: String,
    invalid: bool,
    outputs: Vec<(String, String)>,
}

fn cases() -> Vec<Case> {
    let xml = std::fs::read_to_string(shared("test-cases/tests-fhir-r4.xml")).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut out = Vec::new();
    let mut group = String::new();
    let mut case: Option<Case> = None;
    let mut text = String::new();
    let mut output_type = String::new();
    let attr = |e: &quick_xml::events::BytesStart, k: &str| -> Option<String> {
        e.attributes()
            .flatten()
            .find(|a| a.key.as_ref() == k.as_bytes())
            .map(|a| a.unescape_value().unwrap().into_owned())
    };
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => match e.name().as_ref() {
                b"group" => group = attr(&e, "name").unwrap_or_default(),
                b"test" => {
                    case = Some(Case {
                        group: group.clone(),
                        name: attr(&e, "name").unwrap_or_default(),
                        input: attr(&e, "inputfile"),
                        predicate: attr(&e, "predicate").as_deref() == Some("true"),
                        ..Default::default()
                    })
                }
                b"expression" => {
                    text.clear();
                    if let Some(c) = case.as_mut() {
                        c.invalid = attr(&e, "invalid").is_some();
                    }
                }
                b"output" => {
                    text.clear();
                    output_type = attr(&e, "type").unwrap_or_default();
                }
                _ => {}
            },
            Event::Empty(e) if e.name().as_ref() == b"output" => {
                if let Some(c) = case.as_mut() {
                    c.outputs
                        .push((attr(&e, "type").unwrap_or_default(), String::new()));
                }
            }
            Event::Text(t) => text.push_str(&t.decode().unwrap()),
            Event::GeneralRef(r) => {
                let name = r.decode().unwrap();
                text.push_str(match name.as_ref() {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                });
            }
            Event::CData(t) => text.push_str(&String::from_utf8_lossy(&t)),
            Event::End(e) => match e.name().as_ref() {
                b"expression" => {
                    if let Some(c) = case.as_mut() {
                        c.expression = text.clone();
                    }
                }
                b"output" => {
                    if let Some(c) = case.as_mut() {
                        c.outputs.push((output_type.clone(), text.clone()));
                    }
                }
                b"test" => out.extend(case.take()),
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

/// The JSON resources of the R4 package, by lower-case `type-id`.
fn package() -> HashMap<String, Value> {
    let f = std::fs::File::open(shared("hl7.fhir.r4.examples-4.0.1.tgz")).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = HashMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let Some(name) = path
            .strip_prefix("package/")
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            out.insert(name.to_lowercase(), v);
        }
    }
    out
}

/// The package file for a test's input name (the suite names the spec's XML example files).
fn input<'a>(name: &str, pkg: &'a HashMap<String, Value>) -> Option<&'a Value> {
    let stem = name
        .rsplit_once('.')
        .map_or(name, |(s, _)| s)
        .to_lowercase();
    let stem = match stem.as_str() {
        "questionnaire-example" => "questionnaire-3141".to_owned(),
        "explanationofbenefit-example" => "explanationofbenefit-eb3500".to_owned(),
        _ => stem,
    };
    pkg.get(&stem)
}

fn matches(item: &Item, ty: &str, expected: &str) -> bool {
    let expected = expected.trim().trim_start_matches('@');
    match (ty, item) {
        ("boolean", Item::Bool(b)) => b.to_string() == expected,
        ("integer", Item::Int(i)) => i.to_string() == expected,
        ("decimal", _) | ("", Item::Dec(..)) => item
            .to_json()
            .as_f64()
            .zip(expected.parse::<f64>().ok())
            .is_some_and(|(a, b)| (a - b).abs() < 1e-9),
        ("Quantity", Item::Quantity(v, u)) => {
            let (n, unit) = expected.split_once(' ').unwrap_or((expected, ""));
            n.parse::<f64>().ok() == Some(*v) && unit.trim_matches('\'') == u
        }
        (_, Item::Str(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s)) => {
            s.trim_start_matches('T') == expected.trim_start_matches('T')
        }
        (_, Item::Int(i)) => i.to_string() == expected,
        _ => false,
    }
}

fn passes(c: &Case, pkg: &HashMap<String, Value>) -> Option<bool> {
    let resource = match &c.input {
        Some(name) => input(name, pkg)?.clone(),
        None => Value::Object(Default::default()),
    };
    let result = FhirPath::parse(&c.expression).and_then(|p| p.evaluate(&resource));
    if c.invalid {
        return Some(result.is_err());
    }
    let Ok(mut items) = result else {
        return Some(false);
    };
    if c.predicate {
        items = vec![Item::Bool(!items.is_empty())];
    }
    Some(
        items.len() == c.outputs.len()
            && items
                .iter()
                .zip(&c.outputs)
                .all(|(i, (ty, v))| matches(i, ty, v)),
    )
}

#[test]
fn official_fhirpath_suite() {
    let pkg = package();
    let cases = cases();
    assert!(
        cases.len() > 900,
        "the suite has 937 tests, read {}",
        cases.len()
    );
    let (mut pass, mut fail, mut no_input) = (0, 0, 0);
    let mut by_group: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for c in &cases {
        let g = by_group.entry(c.group.clone()).or_default();
        g.1 += 1;
        match passes(c, &pkg) {
            Some(true) => {
                pass += 1;
                g.0 += 1;
            }
            Some(false) => {
                fail += 1;
                if std::env::var("FHIRPATH_SHOW").is_ok_and(|g| g == c.group || g == "all") {
                    println!("FAIL {}: {}", c.name, c.expression.trim());
                }
            }
            None => no_input += 1,
        }
    }
    for (g, (p, n)) in &by_group {
        println!("{g:40} {p:4} / {n}");
    }
    println!(
        "FHIRPath suite: {pass} of {} passed ({fail} failed, {no_input} without an input resource in the R4 package)",
        cases.len()
    );
    assert!(pass >= FLOOR, "{pass} passed, below the floor of {FLOOR}");
}

//! Search over lab data against an independent oracle: patients from the PyPI generator
//! `carebundle` (pinned; deterministic per seed) with their lab panels, blood pressures (as
//! components), diagnostic reports, conditions, medication and encounters, loaded through the
//! REST API. Each query's result is compared with what the test computes from the same JSON.
//! Composites, quantities with units, chains through reports, `_has`, `_security` and the
//! benchmark's own queries. Both stores.

mod common;

use common::oracle::*;
use common::*;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

/// `carebundle` patients as resources by type (bench/carebundle_ndjson.py).
fn generate(patients: u32, seed: u32) -> HashMap<String, Vec<Value>> {
    let dir = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new(python())
        .arg(workspace().join("bench/carebundle_ndjson.py"))
        .arg(dir.path())
        .args([patients.to_string(), seed.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "carebundle failed");
    let mut out = HashMap::new();
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let path = f.unwrap().path();
        let ty = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let list = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        out.insert(ty, list);
    }
    out
}

/// `(code, value, unit code)` of an Observation's own value and of each component's.
fn measured(o: &Value, combo: bool) -> Vec<(String, f64, String)> {
    let mut items: Vec<&Value> = Vec::new();
    if combo {
        items.push(o);
    }
    items.extend(o["component"].as_array().into_iter().flatten());
    items
        .into_iter()
        .filter_map(|i| {
            let q = &i["valueQuantity"];
            Some((
                codes(i, "code").first()?.1.to_owned(),
                q["value"].as_f64()?,
                q["code"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn own_value(o: &Value) -> Option<(String, f64, String)> {
    let q = &o["valueQuantity"];
    Some((
        codes(o, "code").first()?.1.to_owned(),
        q["value"].as_f64()?,
        q["code"].as_str()?.to_owned(),
    ))
}

fn refs(r: &Value, field: &str) -> Vec<String> {
    match &r[field] {
        Value::Array(a) => a.iter().collect::<Vec<_>>(),
        Value::Null => vec![],
        v => vec![v],
    }
    .into_iter()
    .filter_map(|x| x["reference"].as_str().map(str::to_owned))
    .collect()
}

fn has_code(r: &Value, field: &str, system: &str, code: &str) -> bool {
    codes(r, field).contains(&(system, code))
}

/// Words as a full-text index sees them: lower case, split at anything but letters and digits.
fn words_of(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The narrative's words (markup removed).
fn narrative_words(r: &Value) -> Vec<String> {
    let div = r["text"]["div"].as_str().unwrap_or_default();
    let plain = regex_lite_strip(div);
    words_of(&plain)
}

fn regex_lite_strip(html: &str) -> String {
    let mut out = String::new();
    let mut tag = false;
    for c in html.chars() {
        match c {
            '<' => tag = true,
            '>' => {
                tag = false;
                out.push(' ')
            }
            c if !tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every word of the resource's texts (not its type, id or binary data), the narrative's too.
fn content_words(r: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m
                .iter()
                // What the gateway documents: machine identifiers (code systems, references,
                // canonical URLs, profiles) are not content.
                .filter(|(k, _)| {
                    ![
                        "div",
                        "data",
                        "resourceType",
                        "id",
                        "system",
                        "reference",
                        "url",
                        "profile",
                    ]
                    .contains(&k.as_str())
                })
                .for_each(|(_, x)| walk(x, out)),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::String(s) => out.extend(words_of(s)),
            _ => {}
        }
    }
    let mut out = narrative_words(r);
    walk(r, &mut out);
    out
}

fn queries(d: &HashMap<String, Vec<Value>>) -> Vec<(&'static str, String, Oracle)> {
    let p0 = d["Patient"][0]["id"].as_str().unwrap().to_owned();
    let p0_ref = format!("Patient/{p0}");
    let lab = |o: &Value| {
        has_code(
            o,
            "category",
            "http://terminology.hl7.org/CodeSystem/observation-category",
            "laboratory",
        )
    };
    let by_id = |ty: &str| -> HashMap<String, Value> {
        d[ty]
            .iter()
            .map(|r| (format!("{ty}/{}", r["id"].as_str().unwrap()), r.clone()))
            .collect()
    };
    let observations = by_id("Observation");
    let patients = by_id("Patient");
    let mut q: Vec<(&'static str, String, Oracle)> = Vec::new();

    // The benchmark's query: one patient's labs.
    let p = p0_ref.clone();
    q.push((
        "Observation",
        format!("patient={p0}&category=laboratory"),
        Box::new(move |o| lab(o) && o["subject"]["reference"] == p.as_str()),
    ));
    q.push((
        "Observation",
        format!("category=laboratory&code={LOINC}|2951-2"),
        Box::new(move |o| lab(o) && has_code(o, "code", LOINC, "2951-2")),
    ));
    // Composites: the code and the value of the same Observation or component.
    q.push((
        "Observation",
        format!("code-value-quantity={LOINC}|2951-2$gt142"),
        Box::new(|o| own_value(o).is_some_and(|(c, v, _)| c == "2951-2" && v > 142.0)),
    ));
    q.push((
        "Observation",
        format!("code-value-quantity=2345-7$ge100|{UCUM}|mg/dL,4548-4$ge6.5"),
        Box::new(|o| {
            own_value(o).is_some_and(|(c, v, u)| {
                (c == "2345-7" && v >= 100.0 && u == "mg/dL") || (c == "4548-4" && v >= 6.5)
            })
        }),
    ));
    q.push((
        "Observation",
        format!("code-value-quantity=2345-7$ge100|{UCUM}|mmol/L"),
        Box::new(|_| false),
    ));
    q.push((
        "Observation",
        format!("component-code-value-quantity={LOINC}|8480-6$ge130"),
        Box::new(|o| {
            measured(o, false)
                .iter()
                .any(|(c, v, _)| c == "8480-6" && *v >= 130.0)
        }),
    ));
    q.push((
        "Observation",
        "combo-code-value-quantity=8462-4$lt80,2951-2$lt138".into(),
        Box::new(|o| {
            measured(o, true)
                .iter()
                .any(|(c, v, _)| (c == "8462-4" && *v < 80.0) || (c == "2951-2" && *v < 138.0))
        }),
    ));
    // Systolic and diastolic in different components never pair up.
    q.push((
        "Observation",
        "component-code-value-quantity=8480-6$lt120".into(),
        Box::new(|o| {
            measured(o, false)
                .iter()
                .any(|(c, v, _)| c == "8480-6" && *v < 120.0)
        }),
    ));
    q.push((
        "Observation",
        format!("value-quantity=le3.5|{UCUM}|mmol/L"),
        Box::new(|o| own_value(o).is_some_and(|(_, v, u)| v <= 3.5 && u == "mmol/L")),
    ));
    q.push((
        "Observation",
        format!("component-value-quantity=ap80|{UCUM}|mm[Hg]"),
        Box::new(|o| {
            // ap: within 10 % of 80.
            measured(o, false)
                .iter()
                .any(|(_, v, u)| (72.0..=88.0).contains(v) && u == "mm[Hg]")
        }),
    ));
    q.push((
        "Observation",
        "category=vital-signs&code:not=85354-9".into(),
        Box::new(move |o| {
            has_code(
                o,
                "category",
                "http://terminology.hl7.org/CodeSystem/observation-category",
                "vital-signs",
            ) && !codes(o, "code").iter().any(|(_, c)| *c == "85354-9")
        }),
    ));
    q.push((
        "Observation",
        "_security=http://terminology.hl7.org/CodeSystem/v3-ActReason|HTEST&_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab".into(),
        Box::new(|o| {
            strs(o, &["meta", "profile"])
                .contains(&"http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab")
                && strs(o, &["meta", "security", "code"]).contains(&"HTEST")
        }),
    ));
    // Reports: by code and date, chained into their results, and their patients by `_has`.
    q.push((
        "DiagnosticReport",
        format!("code={LOINC}|24323-8&date=ge2020-01-01"),
        Box::new(|r| {
            has_code(r, "code", LOINC, "24323-8")
                && r["effectiveDateTime"].as_str().unwrap_or("") >= "2020-01-01"
        }),
    ));
    let obs = observations.clone();
    q.push((
        "DiagnosticReport",
        "result:Observation.code-value-quantity=2345-7$gt125".into(),
        Box::new(move |r| {
            refs(r, "result").iter().any(|x| {
                obs.get(x)
                    .and_then(own_value)
                    .is_some_and(|(c, v, _)| c == "2345-7" && v > 125.0)
            })
        }),
    ));
    let diabetic: BTreeSet<String> = d["Observation"]
        .iter()
        .filter(|o| own_value(o).is_some_and(|(c, v, _)| c == "4548-4" && v >= 6.5))
        .map(|o| o["subject"]["reference"].as_str().unwrap().to_owned())
        .collect();
    q.push((
        "Patient",
        "_has:Observation:patient:code-value-quantity=4548-4$ge6.5".into(),
        Box::new(move |p| diabetic.contains(&format!("Patient/{}", p["id"].as_str().unwrap()))),
    ));
    // Conditions, medication, allergies, encounters.
    q.push((
        "Condition",
        "clinical-status=active&code:text=hyperlipid".into(),
        Box::new(|c| {
            codes(c, "clinicalStatus")
                .iter()
                .any(|(_, x)| *x == "active")
                && (strs(c, &["code", "coding", "display"])
                    .iter()
                    .any(|t| lower_plain(t).contains("hyperlipid"))
                    || strs(c, &["code", "text"])
                        .iter()
                        .any(|t| lower_plain(t).contains("hyperlipid")))
        }),
    ));
    q.push((
        "MedicationRequest",
        "code=http://www.nlm.nih.gov/research/umls/rxnorm|314076&status=active".into(),
        Box::new(|m| {
            has_code(
                m,
                "medicationCodeableConcept",
                "http://www.nlm.nih.gov/research/umls/rxnorm",
                "314076",
            ) && m["status"] == "active"
        }),
    ));
    let pats = patients.clone();
    q.push((
        "AllergyIntolerance",
        "patient.gender=female".into(),
        Box::new(move |a| {
            refs(a, "patient")
                .iter()
                .any(|p| pats.get(p).is_some_and(|p| p["gender"] == "female"))
        }),
    ));
    q.push((
        "Encounter",
        "class=AMB&date=ge2026-01-01T09:15:00Z".into(),
        Box::new(|e| {
            e["class"]["code"] == "AMB"
                && e["period"]["end"]
                    .as_str()
                    .is_none_or(|end| instant(end) >= instant("2026-01-01T09:15:00Z"))
        }),
    ));
    // Full text: the narrative (`_text`), every text (`_content`); words ANDed, commas ORed.
    q.push((
        "Observation",
        "_text=sodium".into(),
        Box::new(|o| narrative_words(o).contains(&"sodium".to_owned())),
    ));
    q.push((
        "Observation",
        "_text=SODIUM serum,potassium".into(),
        Box::new(|o| {
            let w = narrative_words(o);
            (w.contains(&"sodium".into()) && w.contains(&"serum".into()))
                || w.contains(&"potassium".into())
        }),
    ));
    q.push((
        "Observation",
        "_content=systolic mmhg&category=vital-signs".into(),
        Box::new(|o| {
            let w = content_words(o);
            w.contains(&"systolic".into())
                && w.contains(&"mmhg".into())
                && codes(o, "category")
                    .iter()
                    .any(|(_, c)| *c == "vital-signs")
        }),
    ));
    q.push((
        "Condition",
        "_content=hyperlipidemia".into(),
        Box::new(|c| content_words(c).contains(&"hyperlipidemia".into())),
    ));
    let with_condition = d["Condition"][0]["subject"]["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    q.push((
        "Condition",
        format!("subject={with_condition}&_lastUpdated=gt2020-01-01"),
        Box::new(move |c| c["subject"]["reference"] == with_condition.as_str()),
    ));
    q
}

async fn run(gw: &Gateway) {
    let data = generate(12, 42);
    put_all(gw, &data).await;
    let mut checked = 0;
    let mut nonempty = 0;
    for (ty, query, oracle) in queries(&data) {
        let expected: BTreeSet<String> = data[ty]
            .iter()
            .filter(|r| oracle(r))
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let got = search_ids(gw, ty, &query)
            .await
            .unwrap_or_else(|e| panic!("{ty}?{query}: {e}"));
        assert_eq!(got, expected, "{ty}?{query}");
        checked += 1;
        if expected.is_empty() {
            println!("no matches: {ty}?{query}");
        } else {
            nonempty += 1;
        }
    }
    println!("lab search oracle: {checked} queries agree ({nonempty} with matches)");
    assert!(
        nonempty + 2 >= checked,
        "the queries must match something to prove anything"
    );
}

#[tokio::test]
async fn lab_search_agrees_with_the_oracle_on_sqlite() {
    run(&Gateway::start()).await;
}

#[tokio::test]
async fn lab_search_agrees_with_the_oracle_on_postgres() {
    run(&Gateway::start_with(&postgres_toml(&fresh_schema(), ""))).await;
}

//! Search on the gateway's index against an independent oracle: the Synthea population in
//! `../shared/synthea/10-patients` (Patients, Conditions, Immunizations) plus lab Observations
//! made here, loaded through the REST API; each query's result set is compared with the set the
//! test computes itself from the same JSON (plain Rust over the resources, not the gateway's
//! FHIRPath or index). Both stores.

mod common;

use common::oracle::*;
use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

fn shared(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared")
        .join(p)
}

fn ndjson(ty: &str) -> Vec<Value> {
    std::fs::read_to_string(shared(&format!("synthea/10-patients/{ty}.000.ndjson")))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Lab results made here: numbers with and without units, codes, dates with offsets.
const LOINC: [&str; 4] = ["718-7", "2345-7", "4548-4", "8867-4"];
const DISPLAY: [&str; 4] = ["Hemoglobin", "Glucose", "Hemoglobin A1c", "Heart rate"];

fn observations(patients: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, p) in patients.iter().enumerate() {
        for j in 0..4 {
            let n = i * 4 + j;
            out.push(json!({
                "resourceType": "Observation",
                "id": format!("lab-{n}"),
                "status": if n % 5 == 0 { "amended" } else { "final" },
                "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": if j == 3 { "vital-signs" } else { "laboratory" } }] }],
                "code": { "coding": [{ "system": "http://loinc.org", "code": LOINC[j], "display": DISPLAY[j] }] },
                "subject": { "reference": format!("Patient/{}", p["id"].as_str().unwrap()) },
                "effectiveDateTime": format!("20{:02}-0{}-1{}T1{}:30:00+0{}:00", 10 + n % 12, 1 + n % 9, n % 10, n % 10, n % 3),
                "valueQuantity": { "value": 3.0 + (n as f64) * 0.25, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L" }
            }));
        }
    }
    out
}

struct Data {
    by_type: HashMap<String, Vec<Value>>,
}

async fn load(gw: &Gateway) -> Data {
    let patients = ndjson("Patient");
    let mut by_type: HashMap<String, Vec<Value>> = HashMap::new();
    by_type.insert("Observation".into(), observations(&patients));
    by_type.insert("Patient".into(), patients);
    by_type.insert("Condition".into(), ndjson("Condition"));
    by_type.insert("Immunization".into(), ndjson("Immunization"));
    put_all(gw, &by_type).await;
    Data { by_type }
}

fn queries(d: &Data) -> Vec<(&'static str, String, Oracle)> {
    let patients = &d.by_type["Patient"];
    let p0 = patients[0]["id"].as_str().unwrap().to_owned();
    let family0 = strs(&patients[0], &["name", "family"])[0].to_owned();
    let prefix0 = family0[..3].to_lowercase();
    let city0 = strs(&patients[0], &["address", "city"])[0].to_owned();
    let cond_code = codes(&d.by_type["Condition"][0], "code")[0].1.to_owned();
    let mut q: Vec<(&'static str, String, Oracle)> = Vec::new();
    // string: default starts-with, case- and accent-insensitive; :exact; :contains
    let pre = prefix0.clone();
    q.push((
        "Patient",
        format!("family={}", prefix0.to_uppercase()),
        Box::new(move |r| {
            strs(r, &["name", "family"])
                .iter()
                .any(|f| lower_plain(f).starts_with(&pre))
        }),
    ));
    let fam = family0.clone();
    q.push((
        "Patient",
        format!("family:exact={family0}"),
        Box::new(move |r| strs(r, &["name", "family"]).contains(&fam.as_str())),
    ));
    q.push((
        "Patient",
        format!("family:exact={}", family0.to_lowercase()),
        Box::new(|_| false),
    ));
    let mid = family0[1..4].to_lowercase();
    let mid2 = mid.clone();
    q.push((
        "Patient",
        format!("name:contains={mid}"),
        Box::new(move |r| {
            ["family", "given", "prefix", "suffix", "text"]
                .iter()
                .any(|k| {
                    strs(r, &["name", k])
                        .iter()
                        .any(|s| lower_plain(s).contains(&mid2))
                })
        }),
    ));
    let city = city0.clone();
    q.push((
        "Patient",
        format!("address-city={city0}"),
        Box::new(move |r| {
            strs(r, &["address", "city"])
                .iter()
                .any(|c| lower_plain(c).starts_with(&lower_plain(&city)))
        }),
    ));
    // identifier:of-type: the identifier's type and value together (SS of patient 0; its value
    // as an MR matches nobody).
    let ssn = patients[0]["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"]["coding"][0]["code"] == "SS")
        .map(|i| i["value"].as_str().unwrap().to_owned())
        .unwrap();
    let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
    let of_type = |code: &'static str, value: String| -> Oracle {
        Box::new(move |r: &Value| {
            r["identifier"].as_array().into_iter().flatten().any(|i| {
                i["value"] == value.as_str()
                    && i["type"]["coding"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["system"] == v2 && c["code"] == code)
            })
        })
    };
    q.push((
        "Patient",
        format!("identifier:of-type={v2}|SS|{ssn}"),
        of_type("SS", ssn.clone()),
    ));
    q.push((
        "Patient",
        format!("identifier:of-type={v2}|MR|{ssn}"),
        of_type("MR", ssn.clone()),
    ));
    // token on code, with OR and :not
    q.push((
        "Patient",
        "gender=female".into(),
        Box::new(|r| r["gender"] == "female"),
    ));
    q.push((
        "Patient",
        "gender=female,male".into(),
        Box::new(|r| r["gender"] == "female" || r["gender"] == "male"),
    ));
    q.push((
        "Patient",
        "gender:not=female".into(),
        Box::new(|r| r["gender"] != "female"),
    ));
    // date: birthDate (date), prefixes and AND
    q.push((
        "Patient",
        "birthdate=ge1970-01-01".into(),
        Box::new(|r| r["birthDate"].as_str().unwrap() >= "1970-01-01"),
    ));
    q.push((
        "Patient",
        "birthdate=lt1960".into(),
        Box::new(|r| r["birthDate"].as_str().unwrap() < "1960"),
    ));
    q.push((
        "Patient",
        "birthdate=ge1950&birthdate=lt1990-06".into(),
        Box::new(|r| {
            let b = r["birthDate"].as_str().unwrap();
            ("1950".."1990-06").contains(&b)
        }),
    ));
    let by0 = patients[0]["birthDate"].as_str().unwrap()[..4].to_owned();
    let by = by0.clone();
    q.push((
        "Patient",
        format!("birthdate={by0}"),
        Box::new(move |r| r["birthDate"].as_str().unwrap().starts_with(&by)),
    ));
    q.push((
        "Patient",
        "_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient".into(),
        Box::new(|r| {
            strs(r, &["meta", "profile"])
                .contains(&"http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient")
        }),
    ));
    q.push((
        "Patient",
        "_profile:below=http://hl7.org/fhir/us/core/".into(),
        Box::new(|r| {
            strs(r, &["meta", "profile"])
                .iter()
                .any(|p| p.starts_with("http://hl7.org/fhir/us/core/"))
        }),
    ));
    q.push((
        "Patient",
        "deceased=true".into(),
        Box::new(|r| r.get("deceasedDateTime").is_some() || r["deceasedBoolean"] == true),
    ));
    q.push((
        "Patient",
        "address-postalcode:missing=true".into(),
        Box::new(|r| strs(r, &["address", "postalCode"]).is_empty()),
    ));
    q.push((
        "Patient",
        "address-postalcode:missing=false".into(),
        Box::new(|r| !strs(r, &["address", "postalCode"]).is_empty()),
    ));
    // token with system, :text
    let cc = cond_code.clone();
    q.push((
        "Condition",
        format!("code=http://snomed.info/sct|{cond_code}"),
        Box::new(move |r| codes(r, "code").contains(&("http://snomed.info/sct", cc.as_str()))),
    ));
    let cc = cond_code.clone();
    q.push((
        "Condition",
        format!("code={cond_code}"),
        Box::new(move |r| codes(r, "code").iter().any(|(_, c)| *c == cc)),
    ));
    q.push((
        "Condition",
        "code=http://loinc.org|".into(),
        Box::new(|r| {
            codes(r, "code")
                .iter()
                .any(|(s, _)| *s == "http://loinc.org")
        }),
    ));
    q.push((
        "Condition",
        "code:text=sepsis".into(),
        Box::new(|r| {
            let c = &r["code"];
            c["coding"].as_array().into_iter().flatten().any(|x| {
                x["display"]
                    .as_str()
                    .or(c["text"].as_str())
                    .is_some_and(|d| d.to_lowercase().contains("sepsis"))
            })
        }),
    ));
    q.push((
        "Condition",
        "clinical-status=active,resolved".into(),
        Box::new(|r| {
            codes(r, "clinicalStatus")
                .iter()
                .any(|(_, c)| *c == "active" || *c == "resolved")
        }),
    ));
    // reference: Type/id, bare id, type modifier
    let pr = format!("Patient/{p0}");
    let pr2 = pr.clone();
    q.push((
        "Condition",
        format!("subject={pr}"),
        Box::new(move |r| r["subject"]["reference"] == pr2.as_str()),
    ));
    let pr2 = pr.clone();
    q.push((
        "Condition",
        format!("patient={p0}"),
        Box::new(move |r| r["subject"]["reference"] == pr2.as_str()),
    ));
    let pr2 = pr.clone();
    q.push((
        "Condition",
        format!("subject:Patient={p0}"),
        Box::new(move |r| r["subject"]["reference"] == pr2.as_str()),
    ));
    // dateTime with offsets against date ranges
    q.push((
        "Condition",
        "onset-date=ge2000-01-01T00:00:00Z&onset-date=lt2010-01-01T00:00:00Z".into(),
        Box::new(|r| {
            r["onsetDateTime"].as_str().is_some_and(|s| {
                let t = instant(s);
                t >= instant("2000-01-01T00:00:00Z") && t < instant("2010-01-01T00:00:00Z")
            })
        }),
    ));
    q.push((
        "Condition",
        "abatement-date:missing=true".into(),
        Box::new(|r| {
            r.get("abatementDateTime").is_none()
                && r.get("abatementPeriod").is_none()
                && r.get("abatementAge").is_none()
                && r.get("abatementRange").is_none()
                && r.get("abatementString").is_none()
        }),
    ));
    q.push((
        "Immunization",
        "date=sa2015-12-31".into(),
        Box::new(|r| {
            r["occurrenceDateTime"].as_str().is_some_and(|s| {
                instant(s) > instant("2016-01-01T00:00:00Z") - time::Duration::milliseconds(1)
            })
        }),
    ));
    q.push((
        "Immunization",
        "vaccine-code=http://hl7.org/fhir/sid/cvx|140".into(),
        Box::new(|r| codes(r, "vaccineCode").contains(&("http://hl7.org/fhir/sid/cvx", "140"))),
    ));
    // quantity and number-like comparisons on values, with and without units
    let value = |r: &Value| r["valueQuantity"]["value"].as_f64().unwrap();
    q.push((
        "Observation",
        "value-quantity=gt10".into(),
        Box::new(move |r| value(r) > 10.0),
    ));
    q.push((
        "Observation",
        "value-quantity=le5.5|http://unitsofmeasure.org|mmol/L".into(),
        Box::new(move |r| value(r) <= 5.5),
    ));
    q.push((
        "Observation",
        "value-quantity=5.5".into(),
        Box::new(move |r| (5.45..5.55).contains(&value(r))),
    ));
    q.push((
        "Observation",
        "value-quantity=5.5||mg".into(),
        Box::new(|_| false),
    ));
    q.push((
        "Observation",
        "category=laboratory&code=http://loinc.org|718-7,http://loinc.org|2345-7".into(),
        Box::new(|r| {
            codes(r, "category").iter().any(|(_, c)| *c == "laboratory")
                && codes(r, "code")
                    .iter()
                    .any(|(_, c)| *c == "718-7" || *c == "2345-7")
        }),
    ));
    let pr2 = pr.clone();
    q.push((
        "Observation",
        format!("patient={p0}&category=laboratory"),
        Box::new(move |r| {
            r["subject"]["reference"] == pr2.as_str()
                && codes(r, "category").iter().any(|(_, c)| *c == "laboratory")
        }),
    ));
    q.push((
        "Observation",
        "date=2015".into(),
        Box::new(|r| {
            let t = instant(r["effectiveDateTime"].as_str().unwrap());
            t >= instant("2015-01-01T00:00:00Z") && t < instant("2016-01-01T00:00:00Z")
        }),
    ));
    q.push((
        "Observation",
        "status=amended".into(),
        Box::new(|r| r["status"] == "amended"),
    ));
    // chains (one and two links, with a type qualifier) and reverse chains
    let by_ref: HashMap<String, Value> = patients
        .iter()
        .map(|p| (format!("Patient/{}", p["id"].as_str().unwrap()), p.clone()))
        .collect();
    let subject_of = {
        let by_ref = by_ref.clone();
        move |r: &Value| {
            r["subject"]["reference"]
                .as_str()
                .and_then(|s| by_ref.get(s))
                .cloned()
        }
    };
    let (pre, sub) = (prefix0.clone(), subject_of.clone());
    q.push((
        "Condition",
        format!("subject:Patient.family={prefix0}"),
        Box::new(move |r| {
            sub(r).is_some_and(|p| {
                strs(&p, &["name", "family"])
                    .iter()
                    .any(|f| lower_plain(f).starts_with(&pre))
            })
        }),
    ));
    let sub = subject_of.clone();
    q.push((
        "Condition",
        "patient.birthdate=lt1960".into(),
        Box::new(move |r| sub(r).is_some_and(|p| p["birthDate"].as_str().unwrap() < "1960")),
    ));
    let (city, sub) = (city0.clone(), subject_of.clone());
    q.push((
        "Observation",
        format!("subject:Patient.address-city={city0}"),
        Box::new(move |r| {
            sub(r).is_some_and(|p| {
                strs(&p, &["address", "city"])
                    .iter()
                    .any(|c| lower_plain(c).starts_with(&lower_plain(&city)))
            })
        }),
    ));
    let with_code: BTreeSet<String> = d.by_type["Condition"]
        .iter()
        .filter(|c| codes(c, "code").iter().any(|(_, x)| *x == cond_code))
        .filter_map(|c| c["subject"]["reference"].as_str().map(str::to_owned))
        .collect();
    q.push((
        "Patient",
        format!("_has:Condition:patient:code={cond_code}"),
        Box::new(move |r| with_code.contains(&format!("Patient/{}", r["id"].as_str().unwrap()))),
    ));
    let high: BTreeSet<String> = d.by_type["Observation"]
        .iter()
        .filter(|o| o["valueQuantity"]["value"].as_f64().unwrap() > 12.0)
        .map(|o| o["subject"]["reference"].as_str().unwrap().to_owned())
        .collect();
    q.push((
        "Patient",
        "_has:Observation:subject:value-quantity=gt12".into(),
        Box::new(move |r| high.contains(&format!("Patient/{}", r["id"].as_str().unwrap()))),
    ));
    let vaccinated: BTreeSet<String> = d.by_type["Immunization"]
        .iter()
        .filter(|i| codes(i, "vaccineCode").contains(&("http://hl7.org/fhir/sid/cvx", "140")))
        .filter_map(|i| i["patient"]["reference"].as_str().map(str::to_owned))
        .collect();
    q.push((
        "Observation",
        "patient._has:Immunization:patient:vaccine-code=http://hl7.org/fhir/sid/cvx|140".into(),
        Box::new(move |r| vaccinated.contains(r["subject"]["reference"].as_str().unwrap())),
    ));
    q
}

/// A sort key as the oracle computes it: resources without one last, then by the key.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Key {
    Text(String),
    Num(f64),
}

/// Per `_sort` key: the value (if any) and whether descending.
type Keys = Vec<(Option<Key>, bool)>;
type SortOracle = Box<dyn Fn(&Value) -> Keys>;

/// Sorted searches and the order the oracle expects (key, descending) per `_sort` key; the id
/// breaks ties, ascending.
fn sorted_queries() -> Vec<(&'static str, &'static str, SortOracle)> {
    let birth = |r: &Value| r["birthDate"].as_str().map(|b| Key::Text(b.to_owned()));
    let family = |r: &Value, desc: bool| {
        let all = strs(r, &["name", "family"]).into_iter().map(lower_plain);
        if desc { all.max() } else { all.min() }.map(Key::Text)
    };
    let effective = |r: &Value| {
        r["effectiveDateTime"]
            .as_str()
            .map(|d| Key::Num(instant(d).unix_timestamp() as f64))
    };
    let code = |r: &Value| {
        codes(r, "code")
            .into_iter()
            .map(|(_, c)| c.to_owned())
            .min()
            .map(Key::Text)
    };
    let value = |r: &Value| r["valueQuantity"]["value"].as_f64().map(Key::Num);
    vec![
        (
            "Patient",
            "_sort=birthdate",
            Box::new(move |r| vec![(birth(r), false)]),
        ),
        (
            "Patient",
            "_sort=-birthdate",
            Box::new(move |r| vec![(birth(r), true)]),
        ),
        (
            "Patient",
            "_sort=family",
            Box::new(move |r| vec![(family(r, false), false)]),
        ),
        (
            "Patient",
            "_sort=-family",
            Box::new(move |r| vec![(family(r, true), true)]),
        ),
        (
            "Patient",
            "_sort=gender,-birthdate",
            Box::new(move |r| {
                vec![
                    (r["gender"].as_str().map(|g| Key::Text(g.to_owned())), false),
                    (birth(r), true),
                ]
            }),
        ),
        (
            "Observation",
            "_sort=-date",
            Box::new(move |r| vec![(effective(r), true)]),
        ),
        (
            "Observation",
            "_sort=code,-value-quantity",
            Box::new(move |r| vec![(code(r), false), (value(r), true)]),
        ),
        (
            "Observation",
            "code=718-7,2345-7&_sort=value-quantity",
            Box::new(move |r| vec![(value(r), false)]),
        ),
        (
            "Observation",
            "_sort=-_id",
            Box::new(|r| vec![(r["id"].as_str().map(|i| Key::Text(i.to_owned())), true)]),
        ),
    ]
}

/// The oracle's order: per key, present values first, ascending or descending; then the id.
fn oracle_order(list: &[&Value], keys: &SortOracle) -> Vec<String> {
    let mut rows: Vec<(Keys, String)> = list
        .iter()
        .map(|r| (keys(r), r["id"].as_str().unwrap().to_owned()))
        .collect();
    rows.sort_by(|(a, ia), (b, ib)| {
        for ((ka, desc), (kb, _)) in a.iter().zip(b) {
            let o = match (ka, kb) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (Some(x), Some(y)) => {
                    let o = x.partial_cmp(y).unwrap();
                    if *desc { o.reverse() } else { o }
                }
            };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        ia.cmp(ib)
    });
    rows.into_iter().map(|(_, id)| id).collect()
}

async fn run(gw: &Gateway) {
    let data = load(gw).await;
    for (ty, query, keys) in sorted_queries() {
        let matching: Vec<&Value> = data.by_type[ty]
            .iter()
            .filter(|r| {
                // The one filtered sort query: the codes it names.
                !query.starts_with("code=")
                    || codes(r, "code")
                        .iter()
                        .any(|(_, c)| *c == "718-7" || *c == "2345-7")
            })
            .collect();
        let expected = oracle_order(&matching, &keys);
        assert!(expected.len() > 4, "{ty}?{query} must page");
        for count in [3, 200] {
            let got = search_ordered(gw, ty, query, count).await;
            assert_eq!(got, expected, "{ty}?{query}&_count={count}");
        }
    }
    let mut checked = 0;
    let mut nonempty = 0;
    for (ty, query, oracle) in queries(&data) {
        let expected: BTreeSet<String> = data.by_type[ty]
            .iter()
            .filter(|r| oracle(r))
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let started = std::time::Instant::now();
        let got = search_ids(gw, ty, &query)
            .await
            .unwrap_or_else(|e| panic!("{ty}?{query}: {e}"));
        assert_eq!(got, expected, "{ty}?{query}");
        if started.elapsed() > std::time::Duration::from_millis(500) {
            println!("slow: {ty}?{query} took {:?}", started.elapsed());
        }
        checked += 1;
        if !expected.is_empty() {
            nonempty += 1;
        }
    }
    println!("search oracle: {checked} queries agree ({nonempty} with matches)");
    assert!(
        nonempty * 4 >= checked * 3,
        "most queries must match something to prove anything"
    );
}

#[tokio::test]
async fn search_agrees_with_the_oracle_on_sqlite() {
    let gw = Gateway::start();
    run(&gw).await;
}

#[tokio::test]
async fn search_agrees_with_the_oracle_on_postgres() {
    let gw = Gateway::start_with(&postgres_toml(&fresh_schema(), ""));
    run(&gw).await;
}

#[tokio::test]
async fn malformed_and_unknown_parameters() {
    let gw = Gateway::start();
    let c = client();
    for (q, why) in [
        ("birthdate=ge19x0", "not a date"),
        ("gender:exact=female", "modifier"),
        ("address-postalcode:missing=maybe", "true or false"),
        ("_has:Condition:code:code=x", "not a reference parameter"),
        ("general-practitioner.nonsense=x", "no target"),
        ("identifier:of-type=MR|123", ":of-type takes"),
        ("identifier:of-type=sys||123", "needs a type code"),
        (
            "_has:Observation:patient:code-value-quantity=718-7",
            "two parts joined by '$'",
        ),
        (
            "_has:Observation:patient:code-value-quantity=718-7$gtx",
            "not a quantity",
        ),
    ] {
        let r = c
            .get(format!("{}/Patient?{q}", gw.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("OperationOutcome") && body.contains(why),
            "{q}: {body}"
        );
    }
    let strict = c
        .get(format!("{}/Patient?nonsense=1", gw.base))
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(strict.status(), 400);
    assert!(strict.text().await.unwrap().contains("nonsense"));
    let lenient = c
        .get(format!("{}/Patient?nonsense=1", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(lenient.status(), 200);
}

/// (matches, included) ids of a search, by `search.mode`.
async fn modes(c: &reqwest::Client, url: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    let b: Value = r.json().await.unwrap();
    let mut out = (BTreeSet::new(), BTreeSet::new());
    for e in b["entry"].as_array().into_iter().flatten() {
        let id = format!(
            "{}/{}",
            e["resource"]["resourceType"].as_str().unwrap(),
            e["resource"]["id"].as_str().unwrap()
        );
        match e["search"]["mode"].as_str() {
            Some("match") => out.0.insert(id),
            Some("include") => out.1.insert(id),
            other => panic!("search mode {other:?}"),
        };
    }
    out
}

#[tokio::test]
async fn include_and_revinclude_pass_the_chokepoint() {
    let gw = Gateway::start();
    let data = load(&gw).await;
    let patients = &data.by_type["Patient"];
    let (p0, p1) = (
        patients[0]["id"].as_str().unwrap(),
        patients[1]["id"].as_str().unwrap(),
    );
    let conditions_of = |p: &str| -> BTreeSet<String> {
        data.by_type["Condition"]
            .iter()
            .filter(|c| c["subject"]["reference"] == format!("Patient/{p}").as_str())
            .map(|c| format!("Condition/{}", c["id"].as_str().unwrap()))
            .collect()
    };
    let obs_of = |p: &str| -> BTreeSet<String> {
        data.by_type["Observation"]
            .iter()
            .filter(|o| o["subject"]["reference"] == format!("Patient/{p}").as_str())
            .map(|o| format!("Observation/{}", o["id"].as_str().unwrap()))
            .collect()
    };
    assert!(!conditions_of(p0).is_empty() && !conditions_of(p1).is_empty());
    let b = &gw.base;
    let c = client();
    let one = |s: &str| BTreeSet::from([s.to_owned()]);

    // Forward, with a target type, and `*`.
    let (m, i) = modes(
        &c,
        &format!("{b}/Condition?patient={p0}&_include=Condition:subject:Patient&_count=1000"),
    )
    .await;
    assert_eq!(m, conditions_of(p0));
    assert_eq!(i, one(&format!("Patient/{p0}")));
    let (_, i) = modes(
        &c,
        &format!("{b}/Condition?patient={p0}&_include=Condition:*&_count=1000"),
    )
    .await;
    assert!(i.contains(&format!("Patient/{p0}")), "{i:?}");
    let (_, i) = modes(
        &c,
        &format!("{b}/Condition?patient={p0}&_include=Condition:subject:Group"),
    )
    .await;
    assert!(i.is_empty(), "target type Group: nothing");

    // Reverse, and iterate: Observation -> its Patient -> that Patient's Conditions.
    let (m, i) = modes(
        &c,
        &format!("{b}/Patient?_id={p0}&_revinclude=Condition:patient"),
    )
    .await;
    assert_eq!(m, one(&format!("Patient/{p0}")));
    assert_eq!(i, conditions_of(p0));
    let (m, i) = modes(
        &c,
        &format!("{b}/Observation?patient={p0}&_include=Observation:subject&_revinclude:iterate=Condition:subject"),
    )
    .await;
    assert_eq!(m, obs_of(p0));
    let mut expected = conditions_of(p0);
    expected.insert(format!("Patient/{p0}"));
    assert_eq!(i, expected);

    // The chokepoint: no Patient scope, no included Patients; a patient-context token sees
    // its own compartment only, matches and inclusions alike.
    let conditions_only = client_with(&token("system/Condition.rs", "umcu", None));
    let (m, i) = modes(
        &conditions_only,
        &format!("{b}/Condition?patient={p0}&_include=Condition:subject&_count=1000"),
    )
    .await;
    assert_eq!(m, conditions_of(p0));
    assert!(i.is_empty(), "no read scope on Patient: {i:?}");
    let own = client_with(&token("patient/*.rs", "umcu", Some(p1)));
    let (m, i) = modes(
        &own,
        &format!("{b}/Patient?_id={p0}&_revinclude=Condition:patient"),
    )
    .await;
    assert!(
        m.is_empty() && i.is_empty(),
        "another patient's record: {m:?} {i:?}"
    );
    let (m, i) = modes(
        &own,
        &format!("{b}/Condition?_include=Condition:subject&_count=1000"),
    )
    .await;
    assert_eq!(m, conditions_of(p1));
    assert_eq!(i, one(&format!("Patient/{p1}")));
    let (m, i) = modes(
        &own,
        &format!("{b}/Patient?_revinclude=Observation:subject&_count=1000"),
    )
    .await;
    assert_eq!(m, one(&format!("Patient/{p1}")));
    assert_eq!(i, obs_of(p1));

    // Compartment search, alone and with parameters, and under a patient-context token.
    let (m, _) = modes(&c, &format!("{b}/Patient/{p0}/Condition?_count=1000")).await;
    assert_eq!(m, conditions_of(p0));
    let (m, _) = modes(
        &c,
        &format!("{b}/Patient/{p0}/Observation?category=vital-signs"),
    )
    .await;
    assert_eq!(m.len(), 1, "{m:?}");
    let (m, _) = modes(&own, &format!("{b}/Patient/{p0}/Condition")).await;
    assert!(m.is_empty(), "another patient's compartment: {m:?}");
    let (m, _) = modes(&own, &format!("{b}/Patient/{p1}/Condition?_count=1000")).await;
    assert_eq!(m, conditions_of(p1));

    // `Patient/[id]/*`: every type in the compartment, the patient too, paged over (type, id).
    let mut everything: BTreeSet<String> = conditions_of(p0);
    everything.extend(obs_of(p0));
    everything.insert(format!("Patient/{p0}"));
    everything.extend(
        data.by_type["Immunization"]
            .iter()
            .filter(|i| i["patient"]["reference"] == format!("Patient/{p0}").as_str())
            .map(|i| format!("Immunization/{}", i["id"].as_str().unwrap())),
    );
    let mut url = format!("{b}/Patient/{p0}/*?_count=7");
    let mut paged = Vec::new();
    loop {
        let page: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
        for e in page["entry"].as_array().into_iter().flatten() {
            let r = &e["resource"];
            paged.push(format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            ));
        }
        match page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(n) => url = n["url"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(paged.len(), everything.len(), "no duplicates: {paged:?}");
    assert_eq!(paged.into_iter().collect::<BTreeSet<_>>(), everything);
    let (m, _) = modes(
        &c,
        &format!("{b}/Patient/{p0}/*?_lastUpdated=gt2000-01-01&_count=1000"),
    )
    .await;
    assert_eq!(m, everything, "parameters every resource has apply");
    let (m, _) = modes(&own, &format!("{b}/Patient/{p0}/*")).await;
    assert!(m.is_empty(), "another patient's compartment: {m:?}");
    let (m, _) = modes(&own, &format!("{b}/Patient/{p1}/*?_count=1000")).await;
    assert!(m.contains(&format!("Patient/{p1}")) && m.is_superset(&conditions_of(p1)));
    // `*` needs a scope on every type.
    let r = conditions_only
        .get(format!("{b}/Patient/{p0}/*"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Malformed includes are refused, naming the parameter.
    for bad in [
        "_include=Condition",
        "_include=Nope:subject",
        "_include=Condition:code",
        "_revinclude=Condition:subject:Device",
    ] {
        let r = c.get(format!("{b}/Condition?{bad}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn total_summary_and_elements() {
    let gw = Gateway::start();
    let c = client();
    let b = &gw.base;
    for i in 0..5 {
        let p = json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "name": [{"family": format!("Sum{i}")}], "gender": "female", "photo": [{"contentType": "image/png", "data": "AAAA"}]});
        let r = c
            .post(format!("{b}/Patient"))
            .header("content-type", FHIR_JSON)
            .body(p.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let get = |q: &str| {
        let c = c.clone();
        let url = format!("{b}/Patient?family=sum&{q}");
        async move {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            r.json::<Value>().await.unwrap()
        }
    };
    let subsetted = |r: &Value| {
        r["meta"]["tag"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["code"] == "SUBSETTED")
    };
    let all = get("").await;
    assert_eq!(all["total"], 5);
    assert!(!subsetted(&all["entry"][0]["resource"]));
    assert!(
        get("_total=none").await.get("total").is_none(),
        "no count asked, none given"
    );
    assert_eq!(get("_total=accurate").await["total"], 5);
    let count = get("_summary=count").await;
    assert_eq!(count["total"], 5);
    assert!(
        count
            .get("entry")
            .is_none_or(|e| e.as_array().unwrap().is_empty())
    );
    let summary = get("_summary=true").await;
    let r = &summary["entry"][0]["resource"];
    assert!(
        subsetted(r)
            && r.get("name").is_some()
            && r.get("photo").is_none()
            && r.get("text").is_none(),
        "{r}"
    );
    let text = get("_summary=text").await;
    let r = &text["entry"][0]["resource"];
    assert!(
        subsetted(r) && r.get("text").is_some() && r.get("name").is_none(),
        "{r}"
    );
    let data = get("_summary=data").await;
    let r = &data["entry"][0]["resource"];
    assert!(
        subsetted(r) && r.get("text").is_none() && r.get("photo").is_some(),
        "{r}"
    );
    let elements = get("_elements=gender").await;
    let r = &elements["entry"][0]["resource"];
    assert!(
        subsetted(r)
            && r.get("gender").is_some()
            && r.get("name").is_none()
            && r.get("id").is_some(),
        "{r}"
    );
    for bad in ["_summary=maybe", "_total=some", "_elements=name.family"] {
        let r = c.get(format!("{b}/Patient?{bad}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}

/// Data without index rows (written before the index existed, or an index lost) is indexed
/// again: automatically at start when the index is empty, and by `gateway reindex`.
#[tokio::test]
async fn a_missing_index_is_rebuilt() {
    use sqlx::Connection;
    let gw = Gateway::start();
    let c = client();
    for family in ["Reindexa", "Reindexb"] {
        let p = json!({"resourceType": "Patient", "name": [{"family": family}]});
        let r = c
            .post(format!("{}/Patient", gw.base))
            .header("content-type", FHIR_JSON)
            .body(p.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let dir = gw.stop_keep_data();
    let data = dir.path().join("data");
    let wipe = || async {
        let url = format!("sqlite://{}", data.join("gateway.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM search_index")
            .execute(&mut db)
            .await
            .unwrap();
    };
    wipe().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["reindex", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reindexed 2 resources"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wipe().await;
    // The next start finds resources without an index and rebuilds it before serving.
    let gw = Gateway::start_in(dir, "");
    let ids = search_ids(&gw, "Patient", "family=reindex").await.unwrap();
    assert_eq!(ids.len(), 2);
}

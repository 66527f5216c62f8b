//! Search: parameter types, modifiers and prefixes, chains, `_has`, includes and subsetting.
//! Every case tags what it creates with its own `_tag` code, so it finds only its own data on a
//! shared server.

use super::{Case, Outcome, is_outcome};
use crate::client::Fhir;
use crate::{case, ensure};
use serde_json::{Value, json};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "string search: prefix, case- and accent-insensitive; :exact and :contains",
            strings
        ),
        case!(
            "token OR, date prefixes and AND of repeats",
            tokens_and_dates
        ),
        case!("chained parameter and _has", chains),
        case!("_include and _revinclude mark included entries", includes),
        case!("_summary=count, _elements and SUBSETTED", subsetting),
        case!(
            "unknown parameters: 400 naming them under handling=strict, ignored when lenient",
            strictness
        ),
        case!(
            "_sort on two keys, descending, paged with next links without repeats",
            sorting
        ),
        case!(
            "composite code-value-quantity pairs a code with its own value",
            composites
        ),
        case!("_text and _content find words, ANDed and ORed", full_text),
    ]
}

const TAG_SYSTEM: &str = "urn:healthhub-utrecht:conformance";

/// A fresh tag for one case's data, and the `_tag` query that finds it.
fn run_tag() -> (Value, String) {
    let code = uuid::Uuid::new_v4().simple().to_string();
    (
        json!([{ "system": TAG_SYSTEM, "code": code }]),
        format!("_tag={TAG_SYSTEM}|{code}"),
    )
}

async fn create(c: &Fhir, mut r: Value, tag: &Value) -> Result<String, String> {
    r["meta"] = json!({ "tag": tag });
    let ty = r["resourceType"].as_str().unwrap_or_default().to_owned();
    let a = c.post(&ty, &r, &[]).await?;
    ensure!(
        a.status == 201,
        "create {ty}: status {} {}",
        a.status,
        a.text
    );
    a.body["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "created without an id".to_owned())
}

/// (match ids, include ids as Type/id) of a search.
async fn search(c: &Fhir, path: &str) -> Result<(Vec<String>, Vec<String>, Value), String> {
    let a = c.get(path).await?;
    ensure!(a.status == 200, "{path}: status {} {}", a.status, a.text);
    let mut matches = Vec::new();
    let mut included = Vec::new();
    for e in a.body["entry"].as_array().into_iter().flatten() {
        let r = &e["resource"];
        let id = r["id"].as_str().unwrap_or_default().to_owned();
        match e["search"]["mode"].as_str() {
            Some("include") => included.push(format!(
                "{}/{id}",
                r["resourceType"].as_str().unwrap_or_default()
            )),
            _ => matches.push(id),
        }
    }
    Ok((matches, included, a.body))
}

async fn strings(c: Fhir) -> Outcome {
    let (tag, q) = run_tag();
    let family = format!(
        "Conf{}Müller",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let id = create(
        &c,
        json!({ "resourceType": "Patient", "name": [{ "family": family }] }),
        &tag,
    )
    .await?;
    let lower_plain = family.to_lowercase().replace('ü', "u");
    for (query, hits) in [
        (format!("family={}", &lower_plain[..10]), 1),
        (format!("family={}", lower_plain.to_uppercase()), 1),
        (format!("family:exact={family}"), 1),
        (format!("family:exact={}", family.to_lowercase()), 0),
        (format!("name:contains={}", &lower_plain[6..12]), 1),
        ("family=nomatch".to_owned(), 0),
    ] {
        let (m, _, _) = search(&c, &format!("Patient?{q}&{query}")).await?;
        ensure!(
            m.len() == hits,
            "Patient?{query}: {} matches, expected {hits}",
            m.len()
        );
        ensure!(hits == 0 || m[0] == id, "Patient?{query}: wrong patient");
    }
    Ok(())
}

async fn tokens_and_dates(c: Fhir) -> Outcome {
    let (tag, q) = run_tag();
    create(
        &c,
        json!({ "resourceType": "Patient", "gender": "female", "birthDate": "1980-05-17" }),
        &tag,
    )
    .await?;
    create(
        &c,
        json!({ "resourceType": "Patient", "gender": "male", "birthDate": "1990-01-01" }),
        &tag,
    )
    .await?;
    for (query, hits) in [
        ("gender=female", 1),
        ("gender=female,male", 2),
        ("gender:not=female", 1),
        ("birthdate=1980", 1),
        ("birthdate=1980-05", 1),
        ("birthdate=ge1985-01-01", 1),
        ("birthdate=lt1980-05-17", 0),
        ("birthdate=le1980-05-17", 1),
        ("birthdate=ge1980&birthdate=lt1991", 2),
        ("birthdate=sa1980-12-31", 1),
        ("birthdate=eb1980-12-31", 1),
        ("gender=female&birthdate=1990", 0),
    ] {
        let (m, _, _) = search(&c, &format!("Patient?{q}&{query}")).await?;
        ensure!(
            m.len() == hits,
            "Patient?{query}: {} matches, expected {hits}",
            m.len()
        );
    }
    Ok(())
}

async fn chains(c: Fhir) -> Outcome {
    let (tag, q) = run_tag();
    let family = format!("Chain{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let p = create(
        &c,
        json!({ "resourceType": "Patient", "name": [{ "family": family }] }),
        &tag,
    )
    .await?;
    let o = create(
        &c,
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
        "subject": { "reference": format!("Patient/{p}") } }),
        &tag,
    )
    .await?;
    let (m, _, _) = search(
        &c,
        &format!("Observation?{q}&subject:Patient.family={family}"),
    )
    .await?;
    ensure!(m == vec![o.clone()], "chained: {m:?}");
    let (m, _, _) = search(
        &c,
        &format!("Observation?{q}&subject:Patient.family=nomatch"),
    )
    .await?;
    ensure!(m.is_empty(), "chained, no match: {m:?}");
    let (m, _, _) = search(
        &c,
        &format!("Patient?{q}&_has:Observation:subject:status=final"),
    )
    .await?;
    ensure!(m == vec![p.clone()], "_has: {m:?}");
    let (m, _, _) = search(
        &c,
        &format!("Patient?{q}&_has:Observation:subject:status=amended"),
    )
    .await?;
    ensure!(m.is_empty(), "_has, no match: {m:?}");
    Ok(())
}

async fn includes(c: Fhir) -> Outcome {
    let (tag, q) = run_tag();
    let p = create(
        &c,
        json!({ "resourceType": "Patient", "gender": "other" }),
        &tag,
    )
    .await?;
    let o = create(
        &c,
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
        "subject": { "reference": format!("Patient/{p}") } }),
        &tag,
    )
    .await?;
    let (m, i, _) = search(&c, &format!("Observation?{q}&_include=Observation:subject")).await?;
    ensure!(m == vec![o.clone()], "matches {m:?}");
    ensure!(i == vec![format!("Patient/{p}")], "included {i:?}");
    let (m, i, _) = search(&c, &format!("Patient?{q}&_revinclude=Observation:subject")).await?;
    ensure!(m == vec![p.clone()], "matches {m:?}");
    ensure!(i == vec![format!("Observation/{o}")], "revincluded {i:?}");
    Ok(())
}

async fn subsetting(c: Fhir) -> Outcome {
    let (tag, q) = run_tag();
    for g in ["female", "male", "other"] {
        create(
            &c,
            json!({ "resourceType": "Patient", "gender": g, "name": [{ "family": "Subset" }] }),
            &tag,
        )
        .await?;
    }
    let (m, _, b) = search(&c, &format!("Patient?{q}&_summary=count")).await?;
    ensure!(
        m.is_empty() && b["total"] == 3,
        "_summary=count: {} entries, total {}",
        m.len(),
        b["total"]
    );
    let (_, _, b) = search(&c, &format!("Patient?{q}&_elements=gender")).await?;
    let r = &b["entry"][0]["resource"];
    ensure!(
        r.get("gender").is_some() && r.get("name").is_none(),
        "_elements=gender: {r}"
    );
    let tagged = r["meta"]["tag"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["code"] == "SUBSETTED");
    ensure!(tagged, "not marked SUBSETTED: {}", r["meta"]);
    Ok(())
}

async fn strictness(c: Fhir) -> Outcome {
    let a = c
        .send(
            c.http
                .get(c.url("Patient?no-such-parameter=1"))
                .header("prefer", "handling=strict"),
        )
        .await?;
    ensure!(a.status == 400, "strict: status {}", a.status);
    ensure!(
        is_outcome(&a.body) && a.text.contains("no-such-parameter"),
        "strict: {}",
        a.text
    );
    let a = c.get("Patient?no-such-parameter=1&_count=1").await?;
    ensure!(a.status == 200, "lenient: status {}", a.status);
    let a = c.get("Patient?birthdate=notadate").await?;
    ensure!(
        a.status == 400 && is_outcome(&a.body),
        "malformed date: status {}",
        a.status
    );
    Ok(())
}

/// Every match of a search in order, following `next` links.
async fn all_pages(c: &Fhir, path: &str) -> Result<Vec<String>, String> {
    let (mut ids, _, mut body) = search(c, path).await?;
    for _ in 0..100 {
        let Some(next) = body["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned)
        else {
            return Ok(ids);
        };
        let a = c.get_url(&next).await?;
        ensure!(a.status == 200, "{next}: status {} {}", a.status, a.text);
        for e in a.body["entry"].as_array().into_iter().flatten() {
            ids.push(e["resource"]["id"].as_str().unwrap_or_default().to_owned());
        }
        body = a.body;
    }
    Err(format!("{path}: more than 100 pages"))
}

async fn sorting(c: Fhir) -> Outcome {
    let (tag, q) = run_tag();
    let mut made = Vec::new();
    for (gender, birth) in [
        ("male", "1970-01-01"),
        ("female", "1980-01-01"),
        ("male", "1990-01-01"),
        ("female", "1960-01-01"),
        ("male", "1950-01-01"),
    ] {
        let r = json!({ "resourceType": "Patient", "gender": gender, "birthDate": birth });
        made.push((gender, birth, create(&c, r, &tag).await?));
    }
    let mut expected = made.clone();
    // gender ascending, then birth date descending
    expected.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(a.1)));
    let expected: Vec<String> = expected.into_iter().map(|(_, _, id)| id).collect();
    let got = all_pages(&c, &format!("Patient?{q}&_sort=gender,-birthdate&_count=2")).await?;
    ensure!(got == expected, "order {got:?}, expected {expected:?}");
    Ok(())
}

async fn composites(c: Fhir) -> Outcome {
    let (tag, q) = run_tag();
    let lab = |code: &str, value: f64| {
        json!({ "resourceType": "Observation", "status": "final",
            "code": { "coding": [{ "system": "http://loinc.org", "code": code }] },
            "valueQuantity": { "value": value, "system": "http://unitsofmeasure.org", "code": "mmol/L", "unit": "mmol/L" } })
    };
    let high = create(&c, lab("2345-7", 11.0), &tag).await?;
    create(&c, lab("2345-7", 5.0), &tag).await?;
    create(&c, lab("718-7", 11.0), &tag).await?;
    for (query, expected) in [
        (
            "code-value-quantity=http://loinc.org|2345-7$gt10",
            vec![high.clone()],
        ),
        (
            "code-value-quantity=2345-7$gt10|http://unitsofmeasure.org|mmol/L",
            vec![high.clone()],
        ),
        (
            "code-value-quantity=2345-7$gt10|http://unitsofmeasure.org|mg/dL",
            vec![],
        ),
        ("code-value-quantity=2345-7$gt20", vec![]),
    ] {
        let (m, _, _) = search(&c, &format!("Observation?{q}&{query}")).await?;
        ensure!(
            m == expected,
            "Observation?{query}: {m:?}, expected {expected:?}"
        );
    }
    Ok(())
}

async fn full_text(c: Fhir) -> Outcome {
    let (tag, q) = run_tag();
    let word = format!("zebra{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let narrative = |text: &str| {
        json!({ "status": "generated",
            "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{text}</p></div>") })
    };
    let a = create(
        &c,
        json!({ "resourceType": "Patient", "text": narrative(&format!("Lives with a {word} in Utrecht")),
            "name": [{ "family": "Textual" }] }),
        &tag,
    )
    .await?;
    let b = create(
        &c,
        json!({ "resourceType": "Patient", "name": [{ "family": word.clone(), "given": ["Amersfoort"] }] }),
        &tag,
    )
    .await?;
    for (query, expected) in [
        (format!("_text={word}"), vec![a.clone()]),
        (
            format!("_text={} utrecht", word.to_uppercase()),
            vec![a.clone()],
        ),
        (format!("_text={word} amersfoort"), vec![]),
        (format!("_content={word}"), vec![a.clone(), b.clone()]),
        (format!("_content={word} amersfoort"), vec![b.clone()]),
        (
            format!("_content=utrecht {word},amersfoort {word}"),
            vec![a.clone(), b.clone()],
        ),
    ] {
        let (mut m, _, _) = search(&c, &format!("Patient?{q}&{query}")).await?;
        m.sort();
        let mut expected = expected;
        expected.sort();
        ensure!(
            m == expected,
            "Patient?{query}: {m:?}, expected {expected:?}"
        );
    }
    Ok(())
}

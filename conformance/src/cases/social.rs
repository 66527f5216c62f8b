//! Social domain: a municipal app (`--municipal-header`, `--municipality`) and the
//! municipality's iWmo allocations (`POST {root}/istandaarden`). Without a municipal app's
//! credentials the group is skipped (the summary says so).

use super::{Case, Outcome, is_outcome, test_patient};
use crate::client::Fhir;
use crate::{case, ensure};
use serde_json::{Value, json};

const BSN: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
const SOCIAL: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/social-domain";
const ALLOCATION: &str = "https://healthhub-utrecht.nl/fhir/NamingSystem/wmo-toewijzing";

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "the municipal app sees no medical data and no other organisation's patient records, on any path",
            no_medical_data
        ),
        case!(
            "an iWmo allocation is answered with WMO302 and becomes the municipality's Patient and ServiceRequest",
            allocation
        ),
        case!(
            "a repeated or a broken allocation is answered with its return codes and writes nothing",
            repeated_and_broken
        ),
        case!(
            "another organisation does not see an allocation without the person's consent",
            others_do_not_see
        ),
    ]
}

fn municipal(c: &Fhir) -> Result<(Fhir, String), String> {
    c.as_municipality()
        .ok_or_else(|| "no municipal app given (--municipal-header, --municipality)".into())
}

/// A random BSN that passes the 11-proof (so that it is a BSN, and nobody's in the deployment).
fn bsn() -> String {
    loop {
        let n = uuid::Uuid::new_v4().as_u128();
        let digits: Vec<u32> = (0..8).map(|i| ((n >> (i * 8)) % 10) as u32).collect();
        let sum: u32 = digits
            .iter()
            .enumerate()
            .map(|(i, d)| d * (9 - i as u32))
            .sum();
        let check = sum % 11;
        if check < 10 && sum != check {
            let mut s: String = digits
                .iter()
                .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
                .collect();
            s.push(char::from_digit(check, 10).unwrap_or('0'));
            return s;
        }
    }
}

fn unique_digits(n: usize) -> String {
    uuid::Uuid::new_v4()
        .as_u128()
        .to_string()
        .chars()
        .take(n)
        .collect()
}

/// A WMO301 from `municipality` for the person `bsn`: one allocation, `number`.
fn wmo301(municipality: &str, id: &str, bsn: &str, number: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<wmo301:Bericht xmlns:wmo301="http://www.istandaarden.nl/iwmo/3_2/wmo301/schema" xmlns:iwmo="http://www.istandaarden.nl/iwmo/3_2/basisschema/schema">
<wmo301:Header><wmo301:BerichtCode>414</wmo301:BerichtCode><wmo301:BerichtVersie>3</wmo301:BerichtVersie><wmo301:BerichtSubversie>2</wmo301:BerichtSubversie>
<wmo301:Afzender>{municipality}</wmo301:Afzender><wmo301:Ontvanger>42420001</wmo301:Ontvanger>
<wmo301:BerichtIdentificatie><iwmo:Identificatie>{id}</iwmo:Identificatie><iwmo:Dagtekening>2026-01-05</iwmo:Dagtekening></wmo301:BerichtIdentificatie>
<wmo301:XsdVersie><iwmo:BasisschemaXsdVersie>1.0.0</iwmo:BasisschemaXsdVersie><iwmo:BerichtXsdVersie>1.0.0</iwmo:BerichtXsdVersie></wmo301:XsdVersie></wmo301:Header>
<wmo301:Client><wmo301:Bsn>{bsn}</wmo301:Bsn><wmo301:Geboortedatum><iwmo:Datum>1950-02-03</iwmo:Datum></wmo301:Geboortedatum><wmo301:Geslacht>2</wmo301:Geslacht>
<wmo301:Naam><iwmo:Geslachtsnaam><iwmo:Achternaam>Conformance</iwmo:Achternaam><iwmo:Voorvoegsel>van</iwmo:Voorvoegsel></iwmo:Geslachtsnaam><iwmo:Voornamen>Wilma</iwmo:Voornamen><iwmo:NaamGebruik>1</iwmo:NaamGebruik></wmo301:Naam>
<wmo301:Contactgegevens><wmo301:Contact><wmo301:Soort>01</wmo301:Soort><wmo301:Adres><iwmo:Huis><iwmo:Huisnummer>1</iwmo:Huisnummer></iwmo:Huis><iwmo:Postcode>3511AA</iwmo:Postcode><iwmo:Straatnaam>Teststraat</iwmo:Straatnaam><iwmo:Plaatsnaam>Utrecht</iwmo:Plaatsnaam></wmo301:Adres></wmo301:Contact></wmo301:Contactgegevens>
<wmo301:ToegewezenProducten><wmo301:ToegewezenProduct><wmo301:ToewijzingNummer>{number}</wmo301:ToewijzingNummer>
<wmo301:Product><iwmo:Categorie>01</iwmo:Categorie><iwmo:Code>01A01</iwmo:Code></wmo301:Product>
<wmo301:Toewijzingsdatum>2026-01-05</wmo301:Toewijzingsdatum><wmo301:Ingangsdatum>2026-02-01</wmo301:Ingangsdatum><wmo301:Einddatum>2026-12-31</wmo301:Einddatum>
<wmo301:Omvang><iwmo:Volume>3</iwmo:Volume><iwmo:Eenheid>04</iwmo:Eenheid><iwmo:Frequentie>2</iwmo:Frequentie></wmo301:Omvang>
</wmo301:ToegewezenProduct></wmo301:ToegewezenProducten></wmo301:Client></wmo301:Bericht>"#
    )
}

async fn post_xml(c: &Fhir, xml: &str) -> Result<(u16, String), String> {
    let r = c
        .http
        .post(format!("{}/istandaarden", c.root()))
        .header("content-type", "application/xml")
        .body(xml.to_owned())
        .send()
        .await
        .map_err(|e| format!("POST /istandaarden: {e}"))?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.unwrap_or_default()))
}

fn return_codes(xml: &str) -> Vec<String> {
    xml.split("RetourCode>")
        .filter_map(|s| s.strip_suffix("</wmo302:"))
        .map(str::to_owned)
        .collect()
}

fn matches(bundle: &Value) -> Vec<&Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] != "outcome")
        .map(|e| &e["resource"])
        .collect()
}

/// Posts a fresh allocation as the municipality; its person's BSN and allocation number.
async fn allocate(c: &Fhir) -> Result<(String, String), String> {
    let (m, code) = municipal(c)?;
    let (b, number) = (bsn(), unique_digits(8));
    let (status, answer) = post_xml(&m, &wmo301(&code, &unique_digits(12), &b, &number)).await?;
    ensure!(status == 200, "POST /istandaarden: {status} {answer}");
    ensure!(
        answer.contains("<wmo302:BerichtCode>415<"),
        "not a WMO302: {answer}"
    );
    let codes = return_codes(&answer);
    ensure!(
        !codes.is_empty() && codes.iter().all(|c| c == "0200"),
        "return codes {codes:?}: {answer}"
    );
    Ok((b, format!("{code}-{number}")))
}

async fn no_medical_data(c: Fhir) -> Outcome {
    let (m, _) = municipal(&c)?;
    let p = c
        .post("Patient", &test_patient("social-domain"), &[])
        .await?;
    ensure!(p.status == 201, "Patient create: {} {}", p.status, p.text);
    let pid = p.body["id"].as_str().unwrap_or_default().to_owned();
    let o = c
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                "subject": {"reference": format!("Patient/{pid}")}}),
            &[],
        )
        .await?;
    ensure!(
        o.status == 201,
        "Observation create: {} {}",
        o.status,
        o.text
    );
    let oid = o.body["id"].as_str().unwrap_or_default().to_owned();
    let mut verdict: Outcome = Ok(());
    for path in [format!("Observation/{oid}"), format!("Patient/{pid}")] {
        let a = m.get(&path).await?;
        if a.status == 200 || !is_outcome(&a.body) {
            verdict = Err(format!(
                "{path} to the municipal app: {} {}",
                a.status, a.text
            ));
        }
    }
    for path in [
        format!("Observation?_id={oid}"),
        format!("Observation?subject=Patient/{pid}"),
        format!("Patient?_id={pid}&_revinclude=Observation:subject"),
        format!("Observation?_id={oid}&_include=Observation:subject"),
    ] {
        let a = m.get(&path).await?;
        if a.status == 200 && !matches(&a.body).is_empty() {
            verdict = Err(format!("{path} disclosed {} to the municipal app", a.text));
        }
    }
    let everything = m.get(&format!("Patient/{pid}/$everything")).await?;
    if everything.status == 200 && !matches(&everything.body).is_empty() {
        verdict = Err(format!("$everything disclosed {}", everything.text));
    }
    let batch = m
        .post(
            "",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": format!("Observation/{oid}")}},
                {"request": {"method": "GET", "url": format!("Patient/{pid}")}}]}),
            &[],
        )
        .await?;
    for e in batch.body["entry"].as_array().into_iter().flatten() {
        if e["response"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("200"))
        {
            verdict = Err(format!("a batch entry disclosed {}", e["resource"]));
        }
    }
    c.delete(&format!("Observation/{oid}"), &[]).await?;
    c.delete(&format!("Patient/{pid}"), &[]).await?;
    verdict
}

async fn allocation(c: Fhir) -> Outcome {
    let (m, _) = municipal(&c)?;
    let (b, identifier) = allocate(&c).await?;
    let found = m
        .get(&format!(
            "ServiceRequest?identifier={ALLOCATION}|{identifier}"
        ))
        .await?;
    ensure!(
        found.status == 200,
        "ServiceRequest search: {} {}",
        found.status,
        found.text
    );
    let srs = matches(&found.body);
    ensure!(
        srs.len() == 1,
        "{} ServiceRequests for {identifier}: {}",
        srs.len(),
        found.text
    );
    let sr = srs[0];
    ensure!(
        sr["category"].to_string().contains(SOCIAL)
            && sr["category"].to_string().contains("\"wmo\""),
        "no Wmo social-domain category: {sr}"
    );
    ensure!(
        sr["occurrencePeriod"]["start"] == "2026-02-01",
        "occurrencePeriod: {sr}"
    );
    ensure!(
        sr["performer"][0]["identifier"]["value"] == "42420001",
        "performer: {sr}"
    );
    let patients = m.get(&format!("Patient?identifier={BSN}|{b}")).await?;
    let ps = matches(&patients.body);
    ensure!(
        ps.len() == 1,
        "{} Patients with the BSN: {}",
        ps.len(),
        patients.text
    );
    ensure!(
        ps[0]["name"][0]["family"] == "van Conformance",
        "name: {}",
        ps[0]
    );
    let subject = sr["subject"]["reference"].as_str().unwrap_or_default();
    ensure!(
        subject == format!("Patient/{}", ps[0]["id"].as_str().unwrap_or_default()),
        "the allocation's subject {subject} is not the client's record"
    );
    Ok(())
}

async fn repeated_and_broken(c: Fhir) -> Outcome {
    let (m, code) = municipal(&c)?;
    let (b, number, id) = (bsn(), unique_digits(8), unique_digits(12));
    let message = wmo301(&code, &id, &b, &number);
    let (status, first) = post_xml(&m, &message).await?;
    ensure!(
        status == 200 && return_codes(&first).iter().all(|c| c == "0200"),
        "{status} {first}"
    );
    let (status, again) = post_xml(&m, &message).await?;
    ensure!(status == 200, "repeat: {status} {again}");
    ensure!(
        return_codes(&again).contains(&"9056".to_owned()),
        "repeat without 9056: {again}"
    );
    // A BSN that fails the 11-proof: 0001 on the client, nothing written.
    let bad = wmo301(&code, &unique_digits(12), "123456789", &unique_digits(8));
    let (status, rejected) = post_xml(&m, &bad).await?;
    ensure!(status == 200, "broken: {status} {rejected}");
    ensure!(
        return_codes(&rejected).contains(&"0001".to_owned()),
        "broken without 0001: {rejected}"
    );
    let none = m
        .get(&format!("Patient?identifier={BSN}|123456789"))
        .await?;
    ensure!(
        matches(&none.body).is_empty(),
        "the broken message wrote {}",
        none.text
    );
    let srs = m
        .get(&format!(
            "ServiceRequest?identifier={ALLOCATION}|{code}-{number}"
        ))
        .await?;
    ensure!(
        matches(&srs.body).len() == 1,
        "the repeat wrote again: {}",
        srs.text
    );
    // Not a message at all: an OperationOutcome.
    let (status, body) = post_xml(&m, "<not-istandaarden/>").await?;
    ensure!(
        status == 400 && body.contains("OperationOutcome"),
        "{status} {body}"
    );
    Ok(())
}

async fn others_do_not_see(c: Fhir) -> Outcome {
    let (_, identifier) = allocate(&c).await?;
    let found = c
        .get(&format!(
            "ServiceRequest?identifier={ALLOCATION}|{identifier}"
        ))
        .await?;
    ensure!(found.status == 200, "{} {}", found.status, found.text);
    ensure!(
        matches(&found.body).is_empty(),
        "the main token (another organisation) sees the municipality's allocation: {}",
        found.text
    );
    Ok(())
}

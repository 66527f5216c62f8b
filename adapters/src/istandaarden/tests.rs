//! The sample messages of `../shared/nl/istandaarden/` (reference only: read, never copied),
//! variants of them that break one rule each, and the drop directory. The gateway's store is
//! stood in for by [`Receipts`], which records what would be written; the end-to-end test
//! (`gateway/tests/social_domain.rs`) writes through the real one.

use super::mapping::{Message, code};
use super::*;
use crate::Organization;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Mutex;

fn sample(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/nl/istandaarden")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn municipality(code: &str) -> Organization {
    Organization {
        system: "urn:healthhub-utrecht:cbs-gemeentecode".into(),
        value: code.into(),
        kind: "municipality".into(),
        name: format!("Gemeente {code}"),
    }
}

fn config() -> Config {
    Config {
        municipalities: BTreeMap::from([("0384".to_owned(), municipality("0384"))]),
        ..Config::default()
    }
}

/// Receipts and written transactions, as the gateway's store would keep them.
#[derive(Default)]
struct Receipts {
    seen: Mutex<Vec<String>>,
    written: Mutex<Vec<Value>>,
    down: bool,
}

#[async_trait::async_trait]
impl Apply for Receipts {
    async fn seen(&self, _m: &Organization, receipt: &str) -> Result<bool, String> {
        Ok(self.seen.lock().unwrap().iter().any(|r| r == receipt))
    }
    async fn apply(&self, _m: &Organization, bundle: Value) -> Result<(), Failure> {
        if self.down {
            return Err(Failure::Unavailable("store down".into()));
        }
        let id = bundle["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut seen = self.seen.lock().unwrap();
        if seen.contains(&id) {
            return Err(Failure::Duplicate);
        }
        seen.push(id);
        self.written.lock().unwrap().push(bundle);
        Ok(())
    }
}

fn codes_of(answer: &str) -> Vec<String> {
    answer
        .split("RetourCode>")
        .filter_map(|s| {
            s.strip_suffix("</wmo302:")
                .or_else(|| s.strip_suffix("</jw302:"))
                .or_else(|| s.strip_suffix("</wmo316:"))
                .or_else(|| s.strip_suffix("</jw316:"))
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_allocation_is_written_and_approved() {
    let r = Receipts::default();
    let h = handle(sample("wmo/berichten/WMO301.xml").as_bytes(), &config(), &r)
        .await
        .unwrap();
    assert!(h.applied, "{:?}", h.findings);
    assert_eq!(h.message_type, "WMO301");
    // The return message: WMO302, every class without remarks, the allocation echoed.
    assert!(
        h.answer
            .contains("<wmo302:BerichtCode>415</wmo302:BerichtCode>"),
        "{}",
        h.answer
    );
    assert!(
        h.answer
            .contains("<wmo302:ToewijzingNummer>101</wmo302:ToewijzingNummer>")
    );
    assert!(
        h.answer
            .contains("<iwmo:Identificatie>123456789012</iwmo:Identificatie>")
    );
    let codes = codes_of(&h.answer);
    assert!(codes.len() >= 4, "{codes:?}");
    assert!(codes.iter().all(|c| c == "0200"), "{codes:?}");
    // The answer is well-formed XML of the return type.
    let parsed = Message::parse(h.answer.as_bytes(), &config());
    assert!(
        matches!(parsed, Err(mapping::Unreadable(ref w)) if w.contains("wmo302")),
        "{parsed:?}"
    );

    let bundle = r.written.lock().unwrap()[0].clone();
    let bundle = &bundle;
    assert_eq!(
        bundle["entry"][0]["resource"]["resourceType"], "Basic",
        "the receipt first"
    );
    let patient = &bundle["entry"][1]["resource"];
    assert_eq!(patient["identifier"][0]["value"], "999900006");
    assert_eq!(patient["name"][0]["family"], "de Wit");
    assert_eq!(patient["name"][0]["given"][0], "Tim");
    assert_eq!(patient["gender"], "male");
    assert_eq!(patient["birthDate"], "1967-08-13");
    assert_eq!(patient["address"][0]["line"][0], "Straatweg 100C BAL");
    assert_eq!(patient["address"][0]["postalCode"], "9999 XX");
    assert!(
        bundle["entry"][1]["request"]["url"]
            .as_str()
            .unwrap()
            .contains("_tag=https://healthhub-utrecht.nl/fhir/CodeSystem/holder|urn:healthhub-utrecht:cbs-gemeentecode|0384")
    );
    let sr = &bundle["entry"][2]["resource"];
    assert_eq!(sr["resourceType"], "ServiceRequest");
    assert_eq!(sr["identifier"][0]["value"], "0384-101");
    assert_eq!(sr["intent"], "order");
    assert_eq!(sr["category"][0]["coding"][0]["code"], "wmo");
    assert_eq!(sr["code"]["coding"][0]["code"], "01");
    assert_eq!(sr["code"]["coding"][1]["code"], "01A01");
    assert_eq!(sr["occurrencePeriod"]["start"], "2023-01-01");
    assert_eq!(sr["occurrencePeriod"]["end"], "2023-12-31");
    assert_eq!(sr["quantityQuantity"]["value"], 10);
    assert_eq!(sr["quantityQuantity"]["unit"], "minuut per dag");
    assert_eq!(sr["requester"]["identifier"]["value"], "0384");
    assert_eq!(sr["performer"][0]["identifier"]["value"], "42420001");
    assert_eq!(sr["authoredOn"], "2023-08-13T12:34:56+02:00");
    assert_eq!(sr["subject"]["reference"], bundle["entry"][1]["fullUrl"]);

    // The same message again: 9056 in the header, nothing written twice.
    let again = handle(sample("wmo/berichten/WMO301.xml").as_bytes(), &config(), &r)
        .await
        .unwrap();
    assert!(!again.applied);
    assert!(
        codes_of(&again.answer).contains(&"9056".to_owned()),
        "{}",
        again.answer
    );
    assert_eq!(r.written.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn every_sample_type_is_answered() {
    for (file, kind, answer_code, intent) in [
        ("jw/berichten/JW301.xml", "JW301", "437", "order"),
        ("wmo/berichten/WMO315.xml", "WMO315", "445", "proposal"),
        ("jw/berichten/JW315.xml", "JW315", "447", "proposal"),
    ] {
        let mut c = config();
        // The samples' municipalities (as sender or receiver).
        let m = Message::parse(sample(file).as_bytes(), &c).unwrap();
        c.municipalities.insert(
            m.municipality_code().to_owned(),
            municipality(m.municipality_code()),
        );
        let r = Receipts::default();
        let mut text = sample(file);
        if kind == "JW315" {
            // The published JW315 sample ends its allocation on 2027-06-31, a day that does not
            // exist: it is rejected (0001) as such, and applied once the date is one.
            let h = handle(text.as_bytes(), &c, &r).await.unwrap();
            assert!(!h.applied);
            assert!(
                h.findings
                    .iter()
                    .any(|f| f.contains("ToewijzingEinddatum not a date")),
                "{:?}",
                h.findings
            );
            text = text.replace("2027-06-31", "2027-06-30");
        }
        let h = handle(text.as_bytes(), &c, &r).await.unwrap();
        assert_eq!(h.message_type, kind);
        assert!(h.applied, "{kind}: {:?}", h.findings);
        assert!(
            h.answer.contains(&format!(">{answer_code}</")),
            "{kind}: {}",
            h.answer
        );
        let bundle = &r.written.lock().unwrap()[0];
        let sr = &bundle["entry"][2]["resource"];
        assert_eq!(sr["intent"], intent, "{kind}");
        let domain = if kind.starts_with("JW") {
            "jeugdwet"
        } else {
            "wmo"
        };
        assert_eq!(sr["category"][0]["coding"][0]["code"], domain);
    }
}

/// One rule broken at a time: the right class gets the right code and nothing is written.
#[tokio::test]
async fn broken_rules_get_their_return_codes() {
    let base = sample("wmo/berichten/WMO301.xml");
    let product_end = "<wmo301:Einddatum>2023-12-31</wmo301:Einddatum>";
    let second_product = {
        let start = base.find("<wmo301:ToegewezenProduct>").unwrap();
        let end =
            base.find("</wmo301:ToegewezenProduct>").unwrap() + "</wmo301:ToegewezenProduct>".len();
        base[start..end].to_owned()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "BSN fails the 11-proof",
            base.replace("<wmo301:Bsn>999900006<", "<wmo301:Bsn>123456789<"),
            code::TECHNICAL,
        ),
        (
            "end before start",
            base.replace(
                product_end,
                "<wmo301:Einddatum>2022-12-31</wmo301:Einddatum>",
            ),
            code::TECHNICAL,
        ),
        (
            "unknown municipality",
            base.replace("<wmo301:Afzender>0384<", "<wmo301:Afzender>0999<"),
            code::UNKNOWN_MUNICIPALITY,
        ),
        (
            "Dagtekening in the future",
            base.replace(
                "<iwmo:Dagtekening>2023-08-13<",
                "<iwmo:Dagtekening>2999-01-01<",
            ),
            code::FUTURE_DATE,
        ),
        (
            "category not in the Wmo list",
            base.replace("<iwmo:Categorie>01<", "<iwmo:Categorie>45<"),
            code::TECHNICAL,
        ),
        (
            "unit not in its list",
            base.replace("<iwmo:Eenheid>01<", "<iwmo:Eenheid>99<"),
            code::TECHNICAL,
        ),
        (
            "gender not in its list",
            base.replacen(
                "<wmo301:Geslacht>1</wmo301:Geslacht>",
                "<wmo301:Geslacht>7</wmo301:Geslacht>",
                1,
            ),
            code::TECHNICAL,
        ),
        (
            "family name missing",
            base.replacen("<iwmo:Achternaam>Wit</iwmo:Achternaam>", "", 1),
            code::TECHNICAL,
        ),
        (
            "allocation number twice",
            base.replace(
                &second_product,
                &format!(
                    "{second_product}{}",
                    second_product
                        .replace("2023-01-01", "2024-01-01")
                        .replace("2023-12-31", "2024-12-31")
                ),
            ),
            code::ALLOCATION_NOT_UNIQUE,
        ),
        (
            "overlapping periods",
            base.replace(
                &second_product,
                &format!(
                    "{second_product}{}",
                    second_product.replace(">101<", ">102<")
                ),
            ),
            code::OVERLAP,
        ),
        (
            "volume missing for a coded product",
            {
                let s = base.find("<wmo301:Omvang>").unwrap();
                let e = base.find("</wmo301:Omvang>").unwrap() + "</wmo301:Omvang>".len();
                format!("{}{}", &base[..s], &base[e..])
            },
            code::VOLUME_MISSING,
        ),
        (
            "wrong message code",
            base.replace("<wmo301:BerichtCode>414<", "<wmo301:BerichtCode>999<"),
            code::TECHNICAL,
        ),
    ];
    for (why, message, expected) in cases {
        let r = Receipts::default();
        let h = handle(message.as_bytes(), &config(), &r)
            .await
            .unwrap_or_else(|e| panic!("{why}: {e:?}"));
        assert!(!h.applied, "{why}: applied");
        assert!(r.written.lock().unwrap().is_empty(), "{why}: written");
        let codes = codes_of(&h.answer);
        assert!(
            codes.contains(&expected.to_owned()),
            "{why}: {codes:?} {:?}",
            h.findings
        );
        assert!(!h.findings.is_empty(), "{why}");
    }
    // Not the sample's shape at all, but still a WMO301: every class said.
    let bare = r#"<?xml version="1.0"?><wmo301:Bericht xmlns:wmo301="http://www.istandaarden.nl/iwmo/3_2/wmo301/schema"/>"#;
    let h = handle(bare.as_bytes(), &config(), &Receipts::default())
        .await
        .unwrap();
    assert!(!h.applied);
    assert!(
        codes_of(&h.answer).contains(&"0001".to_owned()),
        "{}",
        h.answer
    );
}

#[tokio::test]
async fn what_is_no_message_is_refused_with_a_reason() {
    let small = Config {
        max_bytes: 4096,
        max_depth: 8,
        ..config()
    };
    let deep = format!(
        r#"<wmo301:Bericht xmlns:wmo301="http://www.istandaarden.nl/iwmo/3_2/wmo301/schema">{}{}</wmo301:Bericht>"#,
        "<wmo301:a>".repeat(20),
        "</wmo301:a>".repeat(20)
    );
    for (why, body) in [
        ("not XML", "{\"resourceType\": \"Patient\"}".to_owned()),
        ("unbalanced", "<a><b></a>".to_owned()),
        (
            "truncated",
            sample("wmo/berichten/WMO301.xml")[..500].to_owned(),
        ),
        (
            "a DOCTYPE (entity expansion)",
            "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaa\">]><x>&a;</x>".to_owned(),
        ),
        ("too large", sample("wmo/berichten/WMO301.xml")),
        ("too deep", deep),
        ("another message type", sample("wmo/berichten/WMO305.xml")),
        ("a return message", sample("jw/berichten/JW302.xml")),
        ("empty", String::new()),
    ] {
        let r = Receipts::default();
        match handle(body.as_bytes(), &small, &r).await {
            Err(Error::Unreadable(reason)) => assert!(!reason.is_empty(), "{why}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    // The store down: not answered, so the sender tries again.
    let down = Receipts {
        down: true,
        ..Receipts::default()
    };
    let e = handle(
        sample("wmo/berichten/WMO301.xml").as_bytes(),
        &config(),
        &down,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)));
}

#[tokio::test]
async fn the_drop_directory_answers_every_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a-toewijzing.xml"),
        sample("wmo/berichten/WMO301.xml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("b-kapot.xml"), "<niet-af").unwrap();
    std::fs::write(dir.path().join("c-nog-bezig.xml.part"), "half").unwrap();
    let r = Receipts::default();
    let handled = sweep(dir.path(), &config(), &r).await.unwrap();
    assert_eq!(handled, 2);
    let answer = std::fs::read_to_string(dir.path().join("out/a-toewijzing.retour.xml")).unwrap();
    assert!(answer.contains("<wmo302:RetourCode>0200</wmo302:RetourCode>"));
    assert!(dir.path().join("done/a-toewijzing.xml").exists());
    assert!(dir.path().join("failed/b-kapot.xml").exists());
    assert!(
        std::fs::read_to_string(dir.path().join("failed/b-kapot.xml.error.txt"))
            .unwrap()
            .contains("XML")
    );
    assert!(
        dir.path().join("c-nog-bezig.xml.part").exists(),
        "not yet complete: left alone"
    );
    assert_eq!(r.written.lock().unwrap().len(), 1);
    // The store down: the file stays for the next round.
    std::fs::write(dir.path().join("d.xml"), sample("jw/berichten/JW301.xml")).unwrap();
    let down = Receipts {
        down: true,
        ..Receipts::default()
    };
    assert_eq!(sweep(dir.path(), &config(), &down).await.unwrap(), 0);
    assert!(dir.path().join("d.xml").exists());
}

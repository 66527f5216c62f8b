//! Against the real databases of the machine: MariaDB (127.0.0.1:3306, `test`) and PostgreSQL
//! (127.0.0.1:5432, `test`). Each test creates its own tables (a random prefix), seeds them and
//! drops them again.
//!
//! Two schemas: an elderly-care client record (Dutch names, integer keys, one table per kind of
//! record) and a disability-care system shaped differently (text keys, a person's address in a
//! second table, measurement kinds as integer codes in a lookup table, care plans). The same
//! mapping language carries both; only the config differs.

use super::*;
use crate::Adapter;
use serde_json::{Value, json};

const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

fn prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// The elderly-care schema and its rows; `{p}` is the table prefix.
fn elderly_care(p: &str, postgres: bool) -> Vec<String> {
    let datetime = if postgres { "TIMESTAMP" } else { "DATETIME" };
    let sql = format!(
        "CREATE TABLE {p}_clienten (client_id INT PRIMARY KEY, bsn CHAR(9), clientnummer VARCHAR(20),
            voorvoegsel VARCHAR(20), achternaam VARCHAR(80), voornamen VARCHAR(80),
            geboortedatum DATE, geslacht CHAR(1), straat VARCHAR(80), huisnummer VARCHAR(10),
            toevoeging VARCHAR(10), postcode VARCHAR(7), woonplaats VARCHAR(40), telefoon VARCHAR(20));
        CREATE TABLE {p}_medewerkers (medewerker_id INT PRIMARY KEY, agb CHAR(8), achternaam VARCHAR(80),
            voornaam VARCHAR(40));
        CREATE TABLE {p}_metingen (meting_id INT PRIMARY KEY, client_id INT, soort VARCHAR(20),
            waarde DECIMAL(7,2), eenheid VARCHAR(20), gemeten_op {datetime}, medewerker_id INT,
            opmerking VARCHAR(200));
        CREATE TABLE {p}_zorgtrajecten (traject_id INT PRIMARY KEY, client_id INT, status VARCHAR(20),
            begindatum DATE, einddatum DATE, zorgprofiel VARCHAR(10), regiebehandelaar_id INT);
        CREATE TABLE {p}_rapportages (rapportage_id INT PRIMARY KEY, client_id INT, datum {datetime},
            tekst TEXT, medewerker_id INT, soort VARCHAR(20));
        INSERT INTO {p}_clienten VALUES
            (1, '999990007', 'C-001', 'van der', 'Berg', 'Johanna Maria', '1936-04-12', 'V',
             'Oudegracht', '12', 'bis', '3511AB', 'Utrecht', '030-1234567'),
            (2, '999990019', 'C-002', NULL, 'Jansen', 'Pieter', '1941-11-30', 'M',
             'Biltstraat', '100', NULL, '3572 BJ', 'Utrecht', NULL),
            (3, '123456789', 'C-003', 'de', 'Vries', 'Zoë', '1950-01-01', 'X', NULL, NULL, NULL, NULL, NULL, NULL);
        INSERT INTO {p}_medewerkers VALUES (10, '12345678', 'Bakker', 'Anouk'), (11, '87654321', 'Smit', 'Daan');
        INSERT INTO {p}_metingen VALUES
            (100, 1, 'RR_SYS', 142.00, 'mm[Hg]', '2024-03-01 08:30:00', 10, NULL),
            (101, 1, 'RR_DIA', 85.00, 'mm[Hg]', '2024-03-01 08:30:00', 10, NULL),
            (102, 1, 'GEWICHT', 61.50, 'kg', '2024-07-15 09:00:00', 11, 'na ontbijt'),
            (103, 2, 'GEWICHT', 80.20, 'kg', '2024-03-02 10:00:00', 10, NULL),
            (104, 2, 'ONBEKEND', 1.00, '1', '2024-03-03 10:00:00', 10, NULL),
            (105, 1, 'TEMP', 37.80, 'Cel', '2024-12-31 23:30:00', 11, NULL);
        INSERT INTO {p}_zorgtrajecten VALUES
            (200, 1, 'actief', '2023-05-01', NULL, 'VV5', 10),
            (201, 2, 'afgesloten', '2022-01-01', '2023-12-31', 'VV4', 11);
        INSERT INTO {p}_rapportages VALUES
            (300, 1, '2024-03-01 21:00:00', 'Mevrouw sliep onrustig; ''s nachts twee keer gebeld.', 10, 'ADL'),
            (301, 2, '2024-03-02 14:00:00', 'Dhr. at goed.', 11, 'ADL')"
    );
    sql.split(";\n").map(str::to_owned).collect()
}

fn elderly_care_mappings(p: &str) -> Value {
    json!([
        {"resource": "Patient", "table": format!("{p}_clienten"), "id": "client_id",
         "fields": {
            "bsn": "bsn",
            "identifiers": [{"column": "clientnummer", "system": "urn:oid:2.16.528.1.1007.3.3.1234.1"}],
            "name": {"family": "achternaam", "family_prefix": "voorvoegsel", "given": "voornamen"},
            "birth_date": "geboortedatum",
            "gender": {"column": "geslacht", "map": {"M": "male", "V": "female", "X": "other"}},
            "phone": "telefoon",
            "address": {"street": "straat", "house_number": "huisnummer",
                        "house_number_suffix": "toevoeging", "postal_code": "postcode", "city": "woonplaats"}
         }},
        {"resource": "Practitioner", "table": format!("{p}_medewerkers"), "id": "medewerker_id",
         "fields": {
            "identifiers": [{"column": "agb", "system": "http://fhir.nl/fhir/NamingSystem/agb-z"}],
            "name": {"family": "achternaam", "given": "voornaam"}
         }},
        {"resource": "Observation", "table": format!("{p}_metingen"), "id": "meting_id",
         "fields": {
            "patient": "client_id",
            "category": {"fixed": {"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                   "code": "vital-signs", "display": "Vital Signs"}},
            "code": {"column": "soort", "local_system": "urn:oid:2.16.528.1.1007.3.3.1234.9",
                     "map": {
                        "RR_SYS": {"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"},
                        "RR_DIA": {"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"},
                        "GEWICHT": {"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"},
                        "TEMP": {"system": "http://snomed.info/sct", "code": "386725007", "display": "Body temperature"}
                     }},
            "effective": "gemeten_op",
            "value": {"column": "waarde", "unit_column": "eenheid"},
            "performer": "medewerker_id",
            "note": "opmerking"
         }},
        {"resource": "EpisodeOfCare", "table": format!("{p}_zorgtrajecten"), "id": "traject_id",
         "fields": {
            "patient": "client_id",
            "status": {"column": "status", "map": {"actief": "active", "afgesloten": "finished", "gepland": "planned"}},
            "start": "begindatum", "end": "einddatum",
            "type": {"column": "zorgprofiel", "map": {
                "VV4": {"system": "urn:oid:2.16.840.1.113883.2.4.3.11.60.40.4.19.1", "code": "VV4", "display": "Beschut wonen met intensieve begeleiding en verzorging"},
                "VV5": {"system": "urn:oid:2.16.840.1.113883.2.4.3.11.60.40.4.19.1", "code": "VV5", "display": "Beschermd wonen met intensieve dementiezorg"}}},
            "manager": "regiebehandelaar_id"
         }},
        {"resource": "DocumentReference", "table": format!("{p}_rapportages"), "id": "rapportage_id",
         "fields": {
            "patient": "client_id", "text": "tekst", "date": "datum", "author": "medewerker_id",
            "type": {"fixed": {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}},
            "category": {"column": "soort", "map": {"ADL": {"system": "urn:oid:2.16.528.1.1007.3.3.1234.10", "code": "ADL", "display": "ADL-rapportage"}}}
         }}
    ])
}

fn section(url: &str, mappings: Value) -> Value {
    json!({
        "name": "zonnehuis",
        "kind": "sql",
        "organization": {"system": "http://fhir.nl/fhir/NamingSystem/agb-z", "value": "73730001",
                         "type": "vvt", "name": "Zorggroep Zonnehuis"},
        "url": url,
        "pool_size": 2,
        "statement_timeout_ms": 3000,
        "mappings": mappings
    })
}

/// Runs `sql` statements on the database at `url` (setup and teardown; root, not the adapter).
async fn run(url: &str, statements: &[String]) {
    if url.starts_with("mysql") {
        let pool = sqlx::MySqlPool::connect(url)
            .await
            .expect("MariaDB at 127.0.0.1:3306");
        for s in statements {
            sqlx::query(sqlx::AssertSqlSafe(s.clone()))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    } else if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
            .await
            .expect("SQLite file");
        for s in statements {
            sqlx::query(sqlx::AssertSqlSafe(s.clone()))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    } else {
        let pool = sqlx::PgPool::connect(url)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432");
        for s in statements {
            sqlx::query(sqlx::AssertSqlSafe(s.clone()))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }
}

fn drop_tables(p: &str, tables: &[&str]) -> Vec<String> {
    tables
        .iter()
        .map(|t| format!("DROP TABLE IF EXISTS {p}_{t}"))
        .collect()
}

const ELDERLY_TABLES: [&str; 5] = [
    "clienten",
    "medewerkers",
    "metingen",
    "zorgtrajecten",
    "rapportages",
];

fn adapter(section: &Value) -> Box<dyn Adapter> {
    crate::build_all(std::slice::from_ref(section))
        .expect("the section is valid")
        .pop()
        .map(|a| Box::new(ArcAdapter(a)) as Box<dyn Adapter>)
        .expect("one adapter")
}

/// `build_all` gives `Arc`s; the tests hold one as a plain `Adapter`.
struct ArcAdapter(std::sync::Arc<dyn Adapter>);

#[async_trait::async_trait]
impl Adapter for ArcAdapter {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn organization(&self) -> &Organization {
        self.0.organization()
    }
    fn source(&self) -> &str {
        self.0.source()
    }
    fn capabilities(&self) -> &Capabilities {
        self.0.capabilities()
    }
    async fn health(&self) -> Health {
        self.0.health().await
    }
    async fn read(&self, t: &str, id: &str) -> Result<Option<Value>, AdapterError> {
        self.0.read(t, id).await
    }
    async fn search(
        &self,
        t: &str,
        params: &[(String, String)],
        page: Option<&str>,
    ) -> Result<SearchPage, AdapterError> {
        self.0.search(t, params, page).await
    }
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn ids(a: &dyn Adapter, ty: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    let page = a
        .search(ty, &params(pairs), None)
        .await
        .unwrap_or_else(|e| panic!("{ty}?{pairs:?}: {e} ({})", e.detail));
    let mut out: Vec<String> = page
        .matches
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// The elderly-care checks, the same for MariaDB and PostgreSQL.
async fn elderly_care_checks(a: &dyn Adapter) {
    assert_eq!(a.health().await, Health::Up);
    // Patient: BSN, own identifier, nl-core name and address, gender through the table.
    let p = a
        .read("Patient", "zonnehuis.1")
        .await
        .unwrap()
        .expect("client 1");
    assert_eq!(p["resourceType"], "Patient");
    assert_eq!(p["id"], "zonnehuis.1");
    assert_eq!(p["meta"]["source"], "urn:healthhub-utrecht:sql:zonnehuis");
    assert_eq!(
        p["identifier"][0],
        json!({"system": mapping::BSN_SYSTEM, "value": "999990007"})
    );
    assert_eq!(p["identifier"][1]["value"], "C-001");
    assert_eq!(p["name"][0]["family"], "van der Berg");
    assert_eq!(p["name"][0]["given"], json!(["Johanna", "Maria"]));
    assert_eq!(
        p["name"][0]["_family"]["extension"][0]["valueString"],
        "van der"
    );
    assert_eq!(p["gender"], "female");
    assert_eq!(p["birthDate"], "1936-04-12");
    assert_eq!(p["address"][0]["line"], json!(["Oudegracht 12bis"]));
    assert_eq!(p["address"][0]["postalCode"], "3511 AB");
    assert_eq!(
        p["telecom"][0],
        json!({"system": "phone", "value": "030-1234567"})
    );
    // A BSN that fails the 11-proof is not passed on as one.
    let p3 = a.read("Patient", "zonnehuis.3").await.unwrap().unwrap();
    assert_eq!(p3["identifier"].as_array().unwrap().len(), 1, "{p3}");
    assert_eq!(p3["gender"], "other");
    assert_eq!(p3["name"][0]["given"], json!(["Zoë"]));
    // Ids that are not this backend's, or cannot be a row's, are simply not found.
    assert_eq!(a.read("Patient", "zonnehuis.99").await.unwrap(), None);
    assert_eq!(a.read("Patient", "zonnehuis.abc").await.unwrap(), None);
    assert_eq!(a.read("Patient", "other.1").await.unwrap(), None);

    // Observation: LOINC through the code table, local code kept, UCUM quantity, local time.
    let o = a
        .read("Observation", "zonnehuis.100")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o["status"], "final");
    assert_eq!(o["category"][0]["coding"][0]["code"], "vital-signs");
    assert_eq!(
        o["code"]["coding"][0],
        json!({"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"})
    );
    assert_eq!(o["code"]["coding"][1]["code"], "RR_SYS");
    assert_eq!(
        o["valueQuantity"],
        json!({"value": 142.0, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"})
    );
    assert_eq!(o["subject"]["reference"], "Patient/zonnehuis.1");
    assert_eq!(o["performer"][0]["reference"], "Practitioner/zonnehuis.10");
    assert_eq!(o["effectiveDateTime"], "2024-03-01T08:30:00+01:00");
    let o2 = a
        .read("Observation", "zonnehuis.102")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        o2["effectiveDateTime"], "2024-07-15T09:00:00+02:00",
        "summer time"
    );
    assert_eq!(o2["note"][0]["text"], "na ontbijt");

    // Searches: patient, code (mapped and local), category, date with prefixes.
    let obs = |pairs: &'static [(&'static str, &'static str)]| ids(a, "Observation", pairs);
    assert_eq!(
        obs(&[("patient", "Patient/zonnehuis.1")]).await,
        [
            "zonnehuis.100",
            "zonnehuis.101",
            "zonnehuis.102",
            "zonnehuis.105"
        ]
    );
    assert_eq!(
        obs(&[("subject", "zonnehuis.2")]).await,
        ["zonnehuis.103", "zonnehuis.104"]
    );
    assert!(
        obs(&[("patient", "Patient/antonius.1")]).await.is_empty(),
        "another backend's patient"
    );
    assert_eq!(
        obs(&[("code", "http://loinc.org|29463-7")]).await,
        ["zonnehuis.102", "zonnehuis.103"]
    );
    assert_eq!(
        obs(&[("code", "8480-6,8462-4")]).await,
        ["zonnehuis.100", "zonnehuis.101"]
    );
    assert_eq!(
        obs(&[("code", "urn:oid:2.16.528.1.1007.3.3.1234.9|ONBEKEND")]).await,
        ["zonnehuis.104"]
    );
    assert!(
        obs(&[("code", "http://snomed.info/sct|8480-6")])
            .await
            .is_empty()
    );
    assert_eq!(obs(&[("category", "vital-signs")]).await.len(), 6);
    assert!(obs(&[("category", "laboratory")]).await.is_empty());
    assert_eq!(
        obs(&[("date", "2024-03-01")]).await,
        ["zonnehuis.100", "zonnehuis.101"]
    );
    assert_eq!(obs(&[("date", "2024-03")]).await.len(), 4);
    assert_eq!(
        obs(&[("date", "gt2024-03-02")]).await,
        ["zonnehuis.102", "zonnehuis.104", "zonnehuis.105"]
    );
    assert_eq!(obs(&[("date", "ge2024-03-02")]).await.len(), 4);
    assert_eq!(
        obs(&[("date", "lt2024-03-02")]).await,
        ["zonnehuis.100", "zonnehuis.101"]
    );
    assert_eq!(obs(&[("date", "le2024-03-02")]).await.len(), 3);
    assert_eq!(
        obs(&[("date", "sa2024-07"), ("date", "eb2025")]).await,
        ["zonnehuis.105"]
    );
    assert_eq!(
        obs(&[("date", "ne2024-03")]).await,
        ["zonnehuis.102", "zonnehuis.105"]
    );
    // 23:30 on New Year's Eve, Dutch time, is 22:30 UTC: still 2024 in UTC, 2024 here.
    assert_eq!(
        obs(&[
            ("date", "ge2024-12-31T22:00:00Z"),
            ("date", "le2024-12-31T23:00:00Z")
        ])
        .await,
        ["zonnehuis.105"]
    );
    assert_eq!(obs(&[("date", "ap2024-03-02")]).await.len(), 4);
    assert_eq!(
        obs(&[
            ("patient", "zonnehuis.1"),
            ("code", "29463-7,8480-6"),
            ("date", "ge2024-03-01")
        ])
        .await,
        ["zonnehuis.100", "zonnehuis.102"]
    );

    // Patient searches: BSN, own identifier, names, birthdate, gender.
    let pat = |pairs: &'static [(&'static str, &'static str)]| ids(a, "Patient", pairs);
    assert_eq!(
        pat(&[(
            "identifier",
            "http://fhir.nl/fhir/NamingSystem/bsn|999990019"
        )])
        .await,
        ["zonnehuis.2"]
    );
    assert_eq!(pat(&[("identifier", "C-001")]).await, ["zonnehuis.1"]);
    assert!(
        pat(&[("identifier", "http://fhir.nl/fhir/NamingSystem/bsn|C-001")])
            .await
            .is_empty()
    );
    assert_eq!(pat(&[("family", "ber")]).await, ["zonnehuis.1"]);
    assert_eq!(pat(&[("name", "van")]).await, ["zonnehuis.1"]);
    assert_eq!(pat(&[("name:contains", "ans")]).await, ["zonnehuis.2"]);
    assert!(pat(&[("family:exact", "berg")]).await.is_empty());
    assert_eq!(
        pat(&[("given", "zo")]).await,
        ["zonnehuis.3"],
        "unicode, case-insensitive"
    );
    assert_eq!(pat(&[("birthdate", "lt1940")]).await, ["zonnehuis.1"]);
    assert_eq!(pat(&[("gender", "male")]).await, ["zonnehuis.2"]);
    assert_eq!(
        pat(&[("_id", "zonnehuis.2,zonnehuis.3")]).await,
        ["zonnehuis.2", "zonnehuis.3"]
    );

    // EpisodeOfCare: status through its table, the period, a still-open episode.
    let e = a
        .read("EpisodeOfCare", "zonnehuis.200")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e["status"], "active");
    assert_eq!(e["period"], json!({"start": "2023-05-01"}));
    assert_eq!(e["type"][0]["coding"][0]["code"], "VV5");
    assert_eq!(e["careManager"]["reference"], "Practitioner/zonnehuis.10");
    assert_eq!(
        ids(a, "EpisodeOfCare", &[("status", "finished")]).await,
        ["zonnehuis.201"]
    );
    assert_eq!(
        ids(
            a,
            "EpisodeOfCare",
            &[("date", "ge2024-06-01"), ("date", "le2024-06-30")]
        )
        .await,
        ["zonnehuis.200"],
        "open-ended, so during June 2024"
    );
    assert!(
        ids(a, "EpisodeOfCare", &[("date", "2024-06")])
            .await
            .is_empty(),
        "not contained in it"
    );
    assert_eq!(
        ids(a, "EpisodeOfCare", &[("date", "lt2023-01-01")]).await,
        ["zonnehuis.201"]
    );

    // DocumentReference: the report's text as a text/plain attachment.
    let d = a
        .read("DocumentReference", "zonnehuis.300")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d["status"], "current");
    let data = d["content"][0]["attachment"]["data"].as_str().unwrap();
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    assert_eq!(
        String::from_utf8(text).unwrap(),
        "Mevrouw sliep onrustig; 's nachts twee keer gebeld."
    );
    assert_eq!(
        d["content"][0]["attachment"]["contentType"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(d["date"], "2024-03-01T21:00:00+01:00");
    assert_eq!(
        ids(
            a,
            "DocumentReference",
            &[("category", "ADL"), ("patient", "zonnehuis.2")]
        )
        .await,
        ["zonnehuis.301"]
    );

    let pr = a
        .read("Practitioner", "zonnehuis.11")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pr["identifier"][0]["system"],
        "http://fhir.nl/fhir/NamingSystem/agb-z"
    );
    assert_eq!(pr["name"][0]["family"], "Smit");

    // Paging: keyset on the id, no duplicates and no gaps, the total on the first page.
    let mut seen = Vec::new();
    let mut page = None;
    loop {
        let p = a
            .search("Observation", &params(&[("_count", "4")]), page.as_deref())
            .await
            .unwrap();
        if page.is_none() {
            assert_eq!(p.total, Some(6));
        }
        seen.extend(
            p.matches
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned()),
        );
        match p.next {
            Some(n) => page = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    seen.dedup();
    assert_eq!(seen.len(), 6);

    // A code the table does not know: kept as the local coding, and said.
    let unknown = a
        .search("Observation", &params(&[("_id", "zonnehuis.104")]), None)
        .await
        .unwrap();
    assert_eq!(unknown.matches[0]["code"]["coding"][0]["code"], "ONBEKEND");
    assert!(
        unknown.warnings.iter().any(|w| w.contains("ONBEKEND")),
        "{:?}",
        unknown.warnings
    );

    // What the mapping cannot evaluate is refused, never guessed.
    for (k, v) in [
        ("code:text", "weight"),
        ("value-quantity", "gt10"),
        ("date", "yesterday"),
        ("_has:X", "y"),
    ] {
        let e = a
            .search("Observation", &params(&[(k, v)]), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind, Failure::Unsupported, "{k}={v}");
    }
}

#[tokio::test]
async fn elderly_care_record_on_mariadb() {
    let p = prefix();
    run(MARIADB, &elderly_care(&p, false)).await;
    let a = adapter(&section(MARIADB, elderly_care_mappings(&p)));
    elderly_care_checks(a.as_ref()).await;
    run(MARIADB, &drop_tables(&p, &ELDERLY_TABLES)).await;
}

#[tokio::test]
async fn elderly_care_record_on_postgres() {
    let p = prefix();
    run(POSTGRES, &elderly_care(&p, true)).await;
    let a = adapter(&section(POSTGRES, elderly_care_mappings(&p)));
    elderly_care_checks(a.as_ref()).await;
    run(POSTGRES, &drop_tables(&p, &ELDERLY_TABLES)).await;
}

/// The same mapping on an embedded SQLite file (the demo region's care home; a small
/// institution's export), read-only.
#[tokio::test]
async fn elderly_care_record_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ecd.db").display());
    let p = prefix();
    run(&url, &elderly_care(&p, false)).await;
    let a = adapter(&section(&url, elderly_care_mappings(&p)));
    elderly_care_checks(a.as_ref()).await;
    let config: config::Config =
        serde_json::from_value(section(&url, elderly_care_mappings(&p))).unwrap();
    let e = source::Source::new(&config)
        .unwrap()
        .rows(&format!("DELETE FROM {p}_clienten"), &[])
        .await
        .unwrap_err();
    assert!(e.detail.contains("readonly"), "{}", e.detail);
}

/// Search values an attacker would try, on every kind of parameter: each is a bound value,
/// so none changes the statement; the tables and their rows are untouched afterwards.
#[tokio::test]
async fn hostile_search_values_stay_values() {
    let p = prefix();
    run(MARIADB, &elderly_care(&p, false)).await;
    let a = adapter(&section(MARIADB, elderly_care_mappings(&p)));
    let long = "x".repeat(10_000);
    let hostile = [
        "' OR '1'='1",
        "1 OR 1=1",
        "1; DROP TABLE clienten;--",
        "x') UNION SELECT bsn FROM clienten --",
        "\\' OR 1=1 #",
        "%",
        "_",
        "Zoë 🙂 ﷽ \u{202e}",
        "\0",
        long.as_str(),
    ];
    for v in hostile {
        for (ty, key) in [
            ("Patient", "identifier"),
            ("Patient", "family"),
            ("Patient", "name:contains"),
            ("Patient", "_id"),
            ("Observation", "patient"),
            ("Observation", "code"),
            ("Observation", "category"),
            ("EpisodeOfCare", "status"),
        ] {
            let found = a.search(ty, &params(&[(key, v)]), None).await;
            match found {
                Ok(page) => assert!(
                    page.matches.is_empty(),
                    "{ty}?{key}={v:.40}: {:?}",
                    page.matches
                ),
                Err(e) => panic!("{ty}?{key}={v:.40}: {e} ({})", e.detail),
            }
        }
        // Not a date: refused as such, not run.
        let e = a
            .search("Observation", &params(&[("date", v)]), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind, Failure::Unsupported);
        // Not a paging token of this backend: nothing after it.
        let page = a
            .search("Observation", &params(&[]), Some(v))
            .await
            .unwrap();
        assert!(page.matches.is_empty(), "page token {v:.40}");
    }
    // `%` and `_` are LIKE wildcards only when the mapping says so: as values they match
    // nothing here (no name holds them).
    assert_eq!(
        ids(a.as_ref(), "Patient", &[]).await.len(),
        3,
        "rows untouched"
    );
    assert_eq!(ids(a.as_ref(), "Observation", &[]).await.len(), 6);
    run(MARIADB, &drop_tables(&p, &ELDERLY_TABLES)).await;
}

/// The second schema: text keys, an address in a joined table (a query mapping), measurement
/// kinds as integer codes, care plans; another database shape, the same code.
#[tokio::test]
async fn a_differently_shaped_schema_needs_only_another_mapping() {
    let p = prefix();
    let setup: Vec<String> = format!(
        "CREATE TABLE {p}_persons (person_key VARCHAR(20) PRIMARY KEY, citizen_no VARCHAR(9),
            last_name VARCHAR(80), infix VARCHAR(20), first_names VARCHAR(80), initials VARCHAR(10),
            dob DATE, sex VARCHAR(6));
        CREATE TABLE {p}_person_addresses (person_key VARCHAR(20), street_line VARCHAR(80),
            number_ VARCHAR(8), zip VARCHAR(7), town VARCHAR(40), kind VARCHAR(10));
        CREATE TABLE {p}_vital_kinds (kind_code INT PRIMARY KEY, label VARCHAR(40));
        CREATE TABLE {p}_vitals (vital_key VARCHAR(20) PRIMARY KEY, person_key VARCHAR(20),
            measured_at DATETIME, kind_code INT, amount DOUBLE, state VARCHAR(10));
        CREATE TABLE {p}_care_plans (plan_key VARCHAR(20) PRIMARY KEY, person_key VARCHAR(20),
            state VARCHAR(10), title VARCHAR(80), goal_text TEXT, started_on DATE, ended_on DATE);
        INSERT INTO {p}_persons VALUES
            ('P-A1', '999990020', 'Dijk', 'van', NULL, 'K.', '1990-02-03', 'male'),
            ('P-B2', '999990032', 'Yilmaz', NULL, 'Elif', NULL, '2001-06-07', 'female');
        INSERT INTO {p}_person_addresses VALUES
            ('P-A1', 'Kanaalweg', '4', '3526KL', 'Utrecht', 'home'),
            ('P-A1', 'Postbus', '99', '3500AA', 'Utrecht', 'postal');
        INSERT INTO {p}_vital_kinds VALUES (1, 'heart rate'), (2, 'SpO2');
        INSERT INTO {p}_vitals VALUES
            ('V-1', 'P-A1', '2024-05-05 12:00:00', 1, 72, 'ok'),
            ('V-2', 'P-A1', '2024-05-05 12:00:00', 2, 97, 'ok'),
            ('V-3', 'P-B2', '2024-05-06 08:00:00', 1, 88, 'fixed');
        INSERT INTO {p}_care_plans VALUES
            ('CP-1', 'P-A1', 'active', 'Ondersteuningsplan', 'Zelfstandig koken', '2024-01-01', NULL),
            ('CP-2', 'P-B2', 'done', 'Begeleiding werk', NULL, '2023-01-01', '2023-06-30')"
    )
    .split(";\n")
    .map(str::to_owned)
    .collect();
    run(MARIADB, &setup).await;
    let mappings = json!([
        {"resource": "Patient", "id": "person_key",
         "query": format!("SELECT p.*, a.street_line, a.number_, a.zip, a.town FROM {p}_persons p LEFT JOIN {p}_person_addresses a ON a.person_key = p.person_key AND a.kind = 'home'"),
         "fields": {"bsn": "citizen_no",
                    "name": {"family": "last_name", "family_prefix": "infix", "given": "first_names", "initials": "initials"},
                    "birth_date": "dob",
                    "gender": {"column": "sex", "map": {"male": "male", "female": "female"}},
                    "address": {"street": "street_line", "house_number": "number_", "postal_code": "zip", "city": "town"}}},
        {"resource": "Observation", "id": "vital_key",
         "query": format!("SELECT v.vital_key, v.person_key, v.measured_at, v.kind_code, v.amount, v.state, k.label FROM {p}_vitals v JOIN {p}_vital_kinds k ON k.kind_code = v.kind_code"),
         "fields": {"patient": "person_key", "effective": "measured_at",
                    "status": {"column": "state", "map": {"ok": "final", "fixed": "corrected"}},
                    "code": {"column": "kind_code", "map": {
                        "1": {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"},
                        "2": {"system": "http://loinc.org", "code": "59408-5", "display": "Oxygen saturation"}}},
                    "category": {"fixed": {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}},
                    "value": {"column": "amount", "unit": "/min"}}},
        {"resource": "CarePlan", "table": format!("{p}_care_plans"), "id": "plan_key",
         "fields": {"patient": "person_key", "status": {"column": "state", "map": {"active": "active", "done": "completed"}},
                    "title": "title", "description": "goal_text", "start": "started_on", "end": "ended_on"}}
    ]);
    let mut s = section(MARIADB, mappings);
    s["name"] = json!("dichtbij");
    let a = adapter(&s);
    let p1 = a.read("Patient", "dichtbij.P-A1").await.unwrap().unwrap();
    assert_eq!(p1["identifier"][0]["value"], "999990020");
    assert_eq!(p1["name"][0]["family"], "van Dijk");
    assert_eq!(
        p1["name"][0]["given"],
        json!(["K."]),
        "initials when no given names"
    );
    assert_eq!(
        p1["address"].as_array().unwrap().len(),
        1,
        "the home address only"
    );
    assert_eq!(p1["address"][0]["line"], json!(["Kanaalweg 4"]));
    assert_eq!(
        ids(a.as_ref(), "Patient", &[("identifier", "999990032")]).await,
        ["dichtbij.P-B2"]
    );
    assert_eq!(
        ids(a.as_ref(), "Patient", &[("family", "dij")]).await,
        ["dichtbij.P-A1"]
    );
    let v = a
        .read("Observation", "dichtbij.V-3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v["status"], "corrected");
    assert_eq!(v["code"]["coding"][0]["code"], "8867-4");
    assert_eq!(v["valueQuantity"]["value"], 88.0);
    assert_eq!(v["subject"]["reference"], "Patient/dichtbij.P-B2");
    assert_eq!(
        ids(
            a.as_ref(),
            "Observation",
            &[("code", "http://loinc.org|59408-5")]
        )
        .await,
        ["dichtbij.V-2"],
        "a LOINC code back to the integer kind code"
    );
    assert_eq!(
        ids(
            a.as_ref(),
            "Observation",
            &[("status", "final"), ("patient", "dichtbij.P-A1")]
        )
        .await,
        ["dichtbij.V-1", "dichtbij.V-2"]
    );
    let cp = a.read("CarePlan", "dichtbij.CP-2").await.unwrap().unwrap();
    assert_eq!(cp["status"], "completed");
    assert_eq!(cp["intent"], "plan");
    assert_eq!(
        cp["period"],
        json!({"start": "2023-01-01", "end": "2023-06-30"})
    );
    assert_eq!(
        ids(a.as_ref(), "CarePlan", &[("date", "ge2024")]).await,
        ["dichtbij.CP-1"]
    );
    // Text keys page too.
    let first = a
        .search("Observation", &params(&[("_count", "2")]), None)
        .await
        .unwrap();
    assert_eq!(first.next.as_deref(), Some("V-2"));
    let second = a
        .search(
            "Observation",
            &params(&[("_count", "2")]),
            first.next.as_deref(),
        )
        .await
        .unwrap();
    assert_eq!(second.matches[0]["id"], "dichtbij.V-3");
    assert_eq!(second.next, None);
    run(
        MARIADB,
        &drop_tables(
            &p,
            &[
                "persons",
                "person_addresses",
                "vital_kinds",
                "vitals",
                "care_plans",
            ],
        ),
    )
    .await;
}

/// The database enforces the statement time-out; the session is read-only even for an account
/// that could write; a read-only account with its password from the environment works.
#[tokio::test]
async fn time_out_read_only_sessions_and_credentials() {
    let p = prefix();
    run(MARIADB, &elderly_care(&p, false)).await;
    // A query that takes many seconds (a cube of a system table), under a 300 ms limit.
    let slow = json!([{"resource": "Patient", "id": "client_id",
        "query": format!("SELECT c.* FROM {p}_clienten c WHERE (SELECT COUNT(*) FROM information_schema.collations a, information_schema.collations b, information_schema.collations x) > 0"),
        "fields": {"bsn": "bsn"}}]);
    let mut s = section(MARIADB, slow);
    s["statement_timeout_ms"] = json!(300);
    let a = adapter(&s);
    let started = std::time::Instant::now();
    let e = a.search("Patient", &params(&[]), None).await.unwrap_err();
    assert_eq!(e.kind, Failure::Timeout, "{}", e.detail);
    assert_eq!(e.status(), 504);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !e.to_string().contains("collations"),
        "nothing of the SQL in what a client sees"
    );

    // read_only (the default): even root's session refuses a write.
    let config: config::Config =
        serde_json::from_value(section(MARIADB, elderly_care_mappings(&p))).unwrap();
    let src = source::Source::new(&config).unwrap();
    let e = src
        .rows(&format!("DELETE FROM {p}_clienten"), &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind, Failure::Protocol, "{}", e.detail);
    assert!(
        e.detail.to_lowercase().contains("read only"),
        "{}",
        e.detail
    );

    // A SELECT-only account, its password from the environment.
    let user = format!("ro_{p}");
    run(
        MARIADB,
        &[
            format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'geheim-{p}'"),
            format!("CREATE USER '{user}'@'localhost' IDENTIFIED BY 'geheim-{p}'"),
            format!("GRANT SELECT ON test.* TO '{user}'@'%'"),
            format!("GRANT SELECT ON test.* TO '{user}'@'localhost'"),
        ],
    )
    .await;
    let var = format!("ZONNEHUIS_PW_{}", p.to_uppercase());
    // SAFETY: set once, before the adapter that reads it is built; no other thread reads it.
    unsafe { std::env::set_var(&var, format!("geheim-{p}")) };
    let mut s = section(
        &format!("mysql://{user}@127.0.0.1:3306/test"),
        elderly_care_mappings(&p),
    );
    s["password_env"] = json!(var);
    s["read_only"] = json!(false);
    let a = adapter(&s);
    assert_eq!(ids(a.as_ref(), "Patient", &[]).await.len(), 3);
    let config: config::Config = serde_json::from_value(s.clone()).unwrap();
    let e = source::Source::new(&config)
        .unwrap()
        .rows(&format!("DELETE FROM {p}_clienten"), &[])
        .await
        .unwrap_err();
    assert!(e.detail.contains("denied"), "{}", e.detail);
    // A missing variable is a config error, said at start-up.
    s["password_env"] = json!("NO_SUCH_VARIABLE_SET");
    assert!(crate::build_all(&[s]).is_err());

    // A database that is not there: health says so, a search fails as unavailable.
    let mut gone = section("mysql://root@127.0.0.1:1/test", elderly_care_mappings(&p));
    gone["acquire_timeout_ms"] = json!(300);
    let a = adapter(&gone);
    assert!(matches!(a.health().await, Health::Down(_)));
    let e = a.search("Patient", &params(&[]), None).await.unwrap_err();
    assert!(
        matches!(e.kind, Failure::Unavailable | Failure::Timeout),
        "{e:?}"
    );

    run(
        MARIADB,
        &[
            format!("DROP USER '{user}'@'%'"),
            format!("DROP USER '{user}'@'localhost'"),
        ],
    )
    .await;
    run(MARIADB, &drop_tables(&p, &ELDERLY_TABLES)).await;
}

/// A mapping that names a column the table lacks fails its resource type, said in the log,
/// not the gateway; a mapping the schema forbids is refused at start-up.
#[tokio::test]
async fn bad_mappings_are_caught() {
    let p = prefix();
    run(MARIADB, &elderly_care(&p, false)).await;
    let wrong = json!([{"resource": "Patient", "table": format!("{p}_clienten"), "id": "client_id",
                        "fields": {"bsn": "burgerservicenummer"}}]);
    let a = adapter(&section(MARIADB, wrong));
    let e = a.search("Patient", &params(&[]), None).await.unwrap_err();
    assert_eq!(e.kind, Failure::Protocol);
    assert!(e.detail.contains("burgerservicenummer"), "{}", e.detail);
    run(MARIADB, &drop_tables(&p, &ELDERLY_TABLES)).await;

    for (bad, why) in [
        (
            json!([{"resource": "Patient", "table": "x; DROP TABLE y", "id": "id", "fields": {}}]),
            "table name",
        ),
        (
            json!([{"resource": "Patient", "table": "x", "id": "id`; --", "fields": {}}]),
            "column name",
        ),
        (
            json!([{"resource": "Patient", "query": "DELETE FROM x", "id": "id", "fields": {}}]),
            "not a SELECT",
        ),
        (
            json!([{"resource": "Patient", "query": "SELECT 1; DROP TABLE x", "id": "id", "fields": {}}]),
            "two statements",
        ),
        (
            json!([{"resource": "Patient", "table": "x", "id": "id", "fields": {"effective": "t"}}]),
            "a field Patient does not have",
        ),
        (
            json!([{"resource": "Observation", "table": "x", "id": "id", "fields": {"patient": "p"}}]),
            "no code",
        ),
        (
            json!([{"resource": "Medication", "table": "x", "id": "id", "fields": {}}]),
            "type not mapped",
        ),
        (
            json!([{"resource": "Patient", "table": "x", "query": "SELECT 1", "id": "id", "fields": {}}]),
            "table and query",
        ),
        (json!([]), "no mappings"),
    ] {
        let e = crate::build_all(&[section(MARIADB, bad)]).err();
        assert!(e.is_some(), "accepted: {why}");
    }
    let two = json!([{"resource": "Patient", "table": "x", "id": "id", "fields": {}},
                     {"resource": "Patient", "table": "y", "id": "id", "fields": {}}]);
    assert!(
        crate::build_all(&[section(MARIADB, two)]).is_err(),
        "two mappings of one type"
    );
}

#[tokio::test]
async fn capabilities_follow_the_mapping() {
    let a = SqlAdapter::from_config(&section(MARIADB, elderly_care_mappings("x"))).unwrap();
    let obs = a
        .capabilities()
        .resources
        .iter()
        .find(|r| r.resource_type == "Observation")
        .unwrap();
    for p in ["_id", "patient", "subject", "date", "code", "category"] {
        assert!(obs.search_params.iter().any(|s| s == p), "{p}");
    }
    let pat = a
        .capabilities()
        .resources
        .iter()
        .find(|r| r.resource_type == "Patient")
        .unwrap();
    for p in ["identifier", "family", "birthdate", "gender"] {
        assert!(pat.search_params.iter().any(|s| s == p), "{p}");
    }
    assert!(!pat.search_params.iter().any(|s| s == "code"));
}

//! The SQL adapter end to end: the gateway binary with a `kind = "sql"` backend on the machine's
//! MariaDB (an elderly-care client record this test creates), read and searched over FHIR REST
//! through the policy chokepoint, and linked by BSN to a Patient the gateway holds itself.

mod common;

use common::{Gateway, client_with, get_json, token};
use serde_json::{Value, json};

const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

async fn run(statements: &[String]) {
    let pool = sqlx::MySqlPool::connect(MARIADB)
        .await
        .expect("MariaDB at 127.0.0.1:3306");
    for s in statements {
        sqlx::query(sqlx::AssertSqlSafe(s.clone()))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

fn config(p: &str) -> String {
    format!(
        r#"
[[adapters]]
name = "zonnehuis"
kind = "sql"
url = "{MARIADB}"
pool_size = 2
[adapters.organization]
system = "http://fhir.nl/fhir/NamingSystem/ura"
value = "90000004"
type = "vvt"
name = "Zorggroep Utrecht ouderenzorg (demo)"

[[adapters.mappings]]
resource = "Patient"
table = "{p}_clienten"
id = "client_id"
fields = {{ bsn = "bsn", name = {{ family = "achternaam", family_prefix = "voorvoegsel", given = "voornamen" }}, birth_date = "geboortedatum" }}

[[adapters.mappings]]
resource = "Observation"
table = "{p}_metingen"
id = "meting_id"
[adapters.mappings.fields]
patient = "client_id"
effective = "gemeten_op"
value = {{ column = "waarde", unit_column = "eenheid" }}
category = {{ fixed = {{ system = "http://terminology.hl7.org/CodeSystem/observation-category", code = "vital-signs" }} }}
code = {{ column = "soort", map = {{ RR_SYS = {{ system = "http://loinc.org", code = "8480-6" }}, GEWICHT = {{ system = "http://loinc.org", code = "29463-7" }} }} }}
"#
    )
}

#[tokio::test]
async fn a_care_home_database_through_the_gateway() {
    let p = format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    run(&[
        format!(
            "CREATE TABLE {p}_clienten (client_id INT PRIMARY KEY, bsn CHAR(9), voorvoegsel VARCHAR(20),
             achternaam VARCHAR(80), voornamen VARCHAR(80), geboortedatum DATE)"
        ),
        format!(
            "CREATE TABLE {p}_metingen (meting_id INT PRIMARY KEY, client_id INT, soort VARCHAR(20),
             waarde DECIMAL(7,2), eenheid VARCHAR(20), gemeten_op DATETIME)"
        ),
        format!(
            "INSERT INTO {p}_clienten VALUES (1, '999990044', 'van der', 'Berg', 'Johanna', '1936-04-12'),
             (2, '999990056', NULL, 'Jansen', 'Pieter', '1941-11-30')"
        ),
        format!(
            "INSERT INTO {p}_metingen VALUES (100, 1, 'RR_SYS', 142, 'mm[Hg]', '2024-03-01 08:30:00'),
             (101, 1, 'GEWICHT', 61.5, 'kg', '2024-07-15 09:00:00'),
             (102, 2, 'GEWICHT', 80.2, 'kg', '2024-03-02 10:00:00')"
        ),
    ])
    .await;
    let gw = Gateway::start_with(&config(&p));
    let vvt = client_with(&token("system/*.rs", "vvt", None));

    // Read and search, tagged with the holder and the source.
    let patient = get_json(&vvt, format!("{}/Patient/zonnehuis.1", gw.base)).await;
    assert_eq!(patient["name"][0]["family"], "van der Berg", "{patient}");
    assert_eq!(
        patient["meta"]["source"],
        "urn:healthhub-utrecht:sql:zonnehuis"
    );
    assert!(
        patient["meta"]["tag"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["code"] == "http://fhir.nl/fhir/NamingSystem/ura|90000004"),
        "{patient}"
    );
    let bundle = get_json(
        &vvt,
        format!(
            "{}/Observation?patient=Patient/zonnehuis.1&code=http://loinc.org|8480-6",
            gw.base
        ),
    )
    .await;
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let matches: Vec<&Value> = entries
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .collect();
    assert_eq!(matches.len(), 1, "{bundle}");
    assert_eq!(matches[0]["resource"]["id"], "zonnehuis.100");
    assert_eq!(
        matches[0]["resource"]["valueQuantity"]["value"],
        json!(142.0)
    );
    let missing = vvt
        .get(format!("{}/Patient/zonnehuis.99", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // A hostile value over HTTP: a search like any other, nothing found, nothing broken.
    let hostile = vvt
        .get(format!(
            "{}/Patient?family={}",
            gw.base,
            percent_encoding::utf8_percent_encode(
                "' OR '1'='1' --",
                percent_encoding::NON_ALPHANUMERIC
            )
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(hostile.status(), 200);
    let hostile: Value = hostile.json().await.unwrap();
    assert_eq!(
        hostile["entry"]
            .as_array()
            .map(|e| e.iter().filter(|e| e["search"]["mode"] == "match").count())
            .unwrap_or(0),
        0,
        "{hostile}"
    );

    // The same person at the gateway (same BSN): a search for their Observations there
    // gathers the care home's measurements too, through the same chokepoint.
    let vvt_w = client_with(&token("system/*.cruds", "vvt", None));
    let local = vvt_w
        .post(format!("{}/Patient", gw.base))
        .header("Content-Type", "application/fhir+json")
        .header("Prefer", "return=representation")
        .json(&json!({"resourceType": "Patient",
            "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999990044"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 201);
    let local: Value = local.json().await.unwrap();
    let id = local["id"].as_str().unwrap();
    let linked = get_json(
        &vvt,
        format!("{}/Observation?patient=Patient/{id}", gw.base),
    )
    .await;
    let ids: Vec<&str> = linked["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"zonnehuis.100") && ids.contains(&"zonnehuis.101"),
        "{linked}"
    );
    assert!(
        !ids.contains(&"zonnehuis.102"),
        "another client's: {linked}"
    );

    // A municipality's token: no medical data, from this backend as from any other.
    let municipal = client_with(&token("system/*.rs", "utrecht", None));
    let r = municipal
        .get(format!("{}/Observation/zonnehuis.100", gw.base))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 403 || r.status() == 404, "{}", r.status());

    drop(gw);
    run(&[
        format!("DROP TABLE {p}_clienten"),
        format!("DROP TABLE {p}_metingen"),
    ])
    .await;
}

//! The demo region's care home and municipality: Zorggroep Utrecht ouderenzorg's client record
//! (an SQLite file this code writes, read through the SQL adapter) and Gemeente Utrecht's
//! allocations (iWmo/iJw messages this code writes, delivered to the gateway's inbox). All of it
//! fictitious; the BSNs are test numbers that pass the 11-proof.

use crate::app::App;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// The demo person (also at UMC Utrecht and St. Antonius) and a child in youth care.
const ANNA: &str = "999911120";
const DAAN: &str = "999911132";
pub const MUNICIPALITY_CODE: &str = "0344";

/// Writes the care home's client-record database and returns its adapter section.
pub async fn care_home(dir: &Path) -> Result<Value, String> {
    let path = dir.join("zorggroep-ecd.sqlite");
    let url = format!("sqlite://{}", path.display());
    let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
        .await
        .map_err(|e| e.to_string())?;
    let statements = [
        "CREATE TABLE clienten (client_id INTEGER PRIMARY KEY, bsn TEXT, voorvoegsel TEXT,
            achternaam TEXT, voornamen TEXT, geboortedatum DATE, geslacht TEXT, straat TEXT,
            huisnummer TEXT, postcode TEXT, woonplaats TEXT)",
        "CREATE TABLE metingen (meting_id INTEGER PRIMARY KEY, client_id INTEGER, soort TEXT,
            waarde REAL, eenheid TEXT, gemeten_op DATETIME)",
        "CREATE TABLE zorgtrajecten (traject_id INTEGER PRIMARY KEY, client_id INTEGER,
            status TEXT, begindatum DATE, einddatum DATE, zorgprofiel TEXT)",
        "CREATE TABLE rapportages (rapportage_id INTEGER PRIMARY KEY, client_id INTEGER,
            datum DATETIME, tekst TEXT)",
        "INSERT INTO clienten VALUES (1, '999911120', NULL, 'Jansen', 'Anna', '1980-05-17', 'V',
            'Heidelberglaan', '100', '3584CX', 'Utrecht')",
        "INSERT INTO metingen VALUES (10, 1, 'RR_SYS', 128, 'mm[Hg]', '2026-11-19 08:00:00'),
            (11, 1, 'GEWICHT', 64.5, 'kg', '2026-11-19 08:05:00')",
        "INSERT INTO zorgtrajecten VALUES (20, 1, 'actief', '2026-10-01', NULL, 'VV4')",
        "INSERT INTO rapportages VALUES (30, 1, '2026-11-19 21:00:00', 'Mevrouw is goed gestart in de nieuwe week.')",
    ];
    for s in statements {
        sqlx::query(s)
            .execute(&pool)
            .await
            .map_err(|e| e.to_string())?;
    }
    pool.close().await;
    let vvt = crate::policy::demo::organizations()
        .into_iter()
        .find(|(k, _)| *k == "vvt")
        .map(|(_, o)| o)
        .ok_or("no demo care home")?;
    Ok(json!({
        "name": "zorggroep",
        "kind": "sql",
        "url": url,
        "organization": vvt,
        "mappings": [
            {"resource": "Patient", "table": "clienten", "id": "client_id",
             "fields": {"bsn": "bsn", "birth_date": "geboortedatum",
                        "name": {"family": "achternaam", "family_prefix": "voorvoegsel", "given": "voornamen"},
                        "gender": {"column": "geslacht", "map": {"M": "male", "V": "female"}},
                        "address": {"street": "straat", "house_number": "huisnummer", "postal_code": "postcode", "city": "woonplaats"}}},
            {"resource": "Observation", "table": "metingen", "id": "meting_id",
             "fields": {"patient": "client_id", "effective": "gemeten_op",
                        "category": {"fixed": {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}},
                        "code": {"column": "soort", "map": {
                            "RR_SYS": {"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"},
                            "GEWICHT": {"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}}},
                        "value": {"column": "waarde", "unit_column": "eenheid"}}},
            {"resource": "EpisodeOfCare", "table": "zorgtrajecten", "id": "traject_id",
             "fields": {"patient": "client_id", "start": "begindatum", "end": "einddatum",
                        "status": {"column": "status", "map": {"actief": "active", "afgesloten": "finished"}}}},
            {"resource": "DocumentReference", "table": "rapportages", "id": "rapportage_id",
             "fields": {"patient": "client_id", "date": "datum", "text": "tekst",
                        "type": {"fixed": {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}}}}
        ]
    }))
}

/// Gemeente Utrecht as the inbox knows it.
pub fn municipality() -> crate::config::Organization {
    crate::policy::demo::organizations()
        .into_iter()
        .find(|(k, _)| *k == "utrecht")
        .map(|(_, o)| o)
        .expect("the demo municipality")
}

/// A WMO301 (household help for Anna, to a home-care provider) and a JW301 (youth care for
/// Daan, to the demo youth-care provider), as Utrecht's case-management system would send them.
fn messages() -> Vec<String> {
    let header = |domain: &str, basis: &str, code: &str, to: &str, id: &str| {
        format!(
            "<{domain}:Header><{domain}:BerichtCode>{code}</{domain}:BerichtCode><{domain}:BerichtVersie>3</{domain}:BerichtVersie>\
             <{domain}:BerichtSubversie>2</{domain}:BerichtSubversie><{domain}:Afzender>{MUNICIPALITY_CODE}</{domain}:Afzender>\
             <{domain}:Ontvanger>{to}</{domain}:Ontvanger><{domain}:BerichtIdentificatie><{basis}:Identificatie>{id}</{basis}:Identificatie>\
             <{basis}:Dagtekening>2026-11-20</{basis}:Dagtekening></{domain}:BerichtIdentificatie><{domain}:XsdVersie>\
             <{basis}:BasisschemaXsdVersie>1.0.0</{basis}:BasisschemaXsdVersie><{basis}:BerichtXsdVersie>1.0.0</{basis}:BerichtXsdVersie>\
             </{domain}:XsdVersie></{domain}:Header>"
        )
    };
    let client = |domain: &str,
                  basis: &str,
                  bsn: &str,
                  born: &str,
                  sex: &str,
                  family: &str,
                  given: &str,
                  product: &str| {
        format!(
            "<{domain}:Client><{domain}:Bsn>{bsn}</{domain}:Bsn><{domain}:Geboortedatum><{basis}:Datum>{born}</{basis}:Datum></{domain}:Geboortedatum>\
             <{domain}:Geslacht>{sex}</{domain}:Geslacht><{domain}:Naam><{basis}:Geslachtsnaam><{basis}:Achternaam>{family}</{basis}:Achternaam>\
             </{basis}:Geslachtsnaam><{basis}:Voornamen>{given}</{basis}:Voornamen><{basis}:NaamGebruik>1</{basis}:NaamGebruik></{domain}:Naam>\
             <{domain}:Contactgegevens><{domain}:Contact><{domain}:Soort>01</{domain}:Soort><{domain}:Adres><{basis}:Huis><{basis}:Huisnummer>100</{basis}:Huisnummer></{basis}:Huis>\
             <{basis}:Postcode>3584CX</{basis}:Postcode><{basis}:Straatnaam>Heidelberglaan</{basis}:Straatnaam><{basis}:Plaatsnaam>Utrecht</{basis}:Plaatsnaam></{domain}:Adres></{domain}:Contact></{domain}:Contactgegevens>\
             <{domain}:ToegewezenProducten>{product}</{domain}:ToegewezenProducten></{domain}:Client>"
        )
    };
    let product = |domain: &str,
                   basis: &str,
                   number: &str,
                   category: &str,
                   code: &str,
                   volume: &str,
                   unit: &str| {
        format!(
            "<{domain}:ToegewezenProduct><{domain}:ToewijzingNummer>{number}</{domain}:ToewijzingNummer><{domain}:Product>\
             <{basis}:Categorie>{category}</{basis}:Categorie><{basis}:Code>{code}</{basis}:Code></{domain}:Product>\
             <{domain}:Toewijzingsdatum>2026-11-20</{domain}:Toewijzingsdatum><{domain}:Toewijzingstijd>10:00:00</{domain}:Toewijzingstijd>\
             <{domain}:Ingangsdatum>2026-12-01</{domain}:Ingangsdatum><{domain}:Einddatum>2027-11-30</{domain}:Einddatum>\
             <{domain}:Omvang><{basis}:Volume>{volume}</{basis}:Volume><{basis}:Eenheid>{unit}</{basis}:Eenheid><{basis}:Frequentie>2</{basis}:Frequentie></{domain}:Omvang>\
             </{domain}:ToegewezenProduct>"
        )
    };
    let message = |domain: &str, basis: &str, ns: &str, body: String| {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><{domain}:Bericht xmlns:{domain}=\"http://www.istandaarden.nl/{ns}/3_2/{domain}/schema\" \
             xmlns:{basis}=\"http://www.istandaarden.nl/{ns}/3_2/basisschema/schema\">{body}</{domain}:Bericht>"
        )
    };
    vec![
        message(
            "wmo301",
            "iwmo",
            "iwmo",
            header("wmo301", "iwmo", "414", "42420001", "DEMO-WMO-1")
                + &client(
                    "wmo301",
                    "iwmo",
                    ANNA,
                    "1980-05-17",
                    "2",
                    "Jansen",
                    "Anna",
                    &product("wmo301", "iwmo", "5001", "01", "01A01", "3", "04"),
                ),
        ),
        message(
            "jw301",
            "ijw",
            "ijw",
            header("jw301", "ijw", "436", "90000005", "DEMO-JW-1")
                + &client(
                    "jw301",
                    "ijw",
                    DAAN,
                    "2014-03-02",
                    "1",
                    "Jansen",
                    "Daan",
                    &product("jw301", "ijw", "7001", "45", "45A12", "2", "04"),
                ),
        ),
    ]
}

/// Delivers Utrecht's messages to the inbox; every one must be approved.
pub async fn deliver(app: &Arc<App>) -> Result<(), String> {
    let inbox = crate::inbox::Inbox::new(app.clone(), "demo");
    for m in messages() {
        let settings = crate::inbox::settings(&app.config);
        let h = adapters::istandaarden::handle(m.as_bytes(), &settings, &inbox)
            .await
            .map_err(|e| format!("{e:?}"))?;
        if !h.applied {
            return Err(format!(
                "the demo's {} was not accepted: {:?}",
                h.message_type, h.findings
            ));
        }
    }
    Ok(())
}

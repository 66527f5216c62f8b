//! The FHIR RESTful API interactions against the real binary.

mod common;

use common::{FHIR_JSON, Gateway, client};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn patient(bsn: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn }],
        "name": [{ "family": family }],
        "birthDate": "1970-01-01"
    })
}

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    c.post(url)
        .header("content-type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn put(c: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    c.put(url)
        .header("content-type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn create_read_vread_update_delete_history() {
    let gw = Gateway::start();
    let c = client();
    let b = &gw.base;

    // create
    let r = post(&c, &format!("{b}/Patient"), &patient("999911120", "Berg")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "etag"), "W/\"1\"");
    assert!(!header(&r, "last-modified").is_empty());
    let location = header(&r, "location").to_owned();
    assert!(
        location.starts_with(&format!("{b}/Patient/")) && location.ends_with("/_history/1"),
        "{location}"
    );
    assert!(header(&r, "content-type").starts_with("application/fhir+json"));
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["meta"]["versionId"], "1");
    assert!(
        created["meta"]["lastUpdated"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // read
    let r = c.get(format!("{b}/Patient/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "etag"), "W/\"1\"");
    let read: Value = r.json().await.unwrap();
    assert_eq!(read, created);

    // update: the server owns versionId/lastUpdated whatever the client sends
    let mut changed = read.clone();
    changed["name"][0]["family"] = json!("van den Berg");
    changed["meta"]["versionId"] = json!("77");
    let r = put(&c, &format!("{b}/Patient/{id}"), &changed).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "etag"), "W/\"2\"");
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["name"][0]["family"], "van den Berg");

    // vread both versions
    let v1: Value = c
        .get(format!("{b}/Patient/{id}/_history/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v1["name"][0]["family"], "Berg");
    let v2: Value = c
        .get(format!("{b}/Patient/{id}/_history/2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v2["name"][0]["family"], "van den Berg");
    let r = c
        .get(format!("{b}/Patient/{id}/_history/9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // delete, then read -> 410, history keeps the deletion
    let r = c.delete(format!("{b}/Patient/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "etag"), "W/\"3\"");
    let r = c.get(format!("{b}/Patient/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let r = c.delete(format!("{b}/Patient/{id}")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "deleting a deleted resource is a no-op"
    );
    let r = c
        .get(format!("{b}/Patient/{id}/_history/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);

    let h: Value = c
        .get(format!("{b}/Patient/{id}/_history"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["type"], "history");
    assert_eq!(h["total"], 3);
    let methods: Vec<&str> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, vec!["DELETE", "PUT", "POST"], "newest first");
    assert!(h["entry"][0].get("resource").is_none());
    assert_eq!(h["entry"][0]["response"]["etag"], "W/\"3\"");
    assert_eq!(h["entry"][1]["resource"]["meta"]["versionId"], "2");

    // a deleted resource can be brought back by update
    let r = put(&c, &format!("{b}/Patient/{id}"), &changed).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "etag"), "W/\"4\"");
}

#[tokio::test]
async fn history_at_type_and_system_level_with_since_count_and_paging() {
    let gw = Gateway::start();
    let c = client();
    let b = &gw.base;
    for i in 0..5 {
        post(
            &c,
            &format!("{b}/Patient"),
            &patient("999911120", &format!("P{i}")),
        )
        .await;
    }
    // The store keeps milliseconds and _since is inclusive: keep clear of the boundary.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mid = time::OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for i in 0..3 {
        let r = post(
            &c,
            &format!("{b}/Organization"),
            &json!({"resourceType": "Organization", "name": format!("O{i}")}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    let h: Value = c
        .get(format!("{b}/Patient/_history"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["total"], 5);
    let h: Value = c
        .get(format!("{b}/_history"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["total"], 8);
    assert_eq!(h["entry"][0]["resource"]["resourceType"], "Organization");

    let since = mid
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let h: Value = c
        .get(format!("{b}/_history?_since={}", since.replace('+', "%2B")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["total"], 3, "only what changed since");

    // walk the pages: every version once, no duplicates, even with writes between pages
    let mut url = format!("{b}/_history?_count=3");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
        pages += 1;
        for e in page["entry"].as_array().into_iter().flatten() {
            seen.push(e["fullUrl"].as_str().unwrap().to_owned());
        }
        if pages == 1 {
            post(&c, &format!("{b}/Patient"), &patient("999911132", "Late")).await;
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
    assert_eq!(pages, 3);
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(seen.len(), 8);
    assert_eq!(dedup.len(), 8);
}

#[tokio::test]
async fn if_match_and_prefer() {
    let gw = Gateway::start();
    let c = client();
    let b = &gw.base;
    let created: Value = post(&c, &format!("{b}/Patient"), &patient("999911120", "A"))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let url = format!("{b}/Patient/{id}");

    let r = c
        .put(&url)
        .header("content-type", FHIR_JSON)
        .header("if-match", "W/\"1\"")
        .body(created.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .put(&url)
        .header("content-type", FHIR_JSON)
        .header("if-match", "W/\"1\"")
        .body(created.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED, "stale version");
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let r = c
        .delete(&url)
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);

    let r = c
        .put(&url)
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=minimal")
        .body(created.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "etag"), "W/\"3\"");
    assert!(r.bytes().await.unwrap().is_empty());

    let r = c
        .post(format!("{b}/Patient"))
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=OperationOutcome")
        .body(patient("999911132", "B").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(!header(&r, "location").is_empty());
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["severity"], "information");

    let r = c
        .post(format!("{b}/Patient"))
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=representation")
        .body(patient("999911144", "C").to_string())
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["resourceType"], "Patient");
}

#[tokio::test]
async fn update_as_create_follows_config() {
    let gw = Gateway::start();
    let c = client();
    let mut p = patient("999911120", "A");
    p["id"] = json!("client-chosen-1");
    let r = put(&c, &format!("{}/Patient/client-chosen-1", gw.base), &p).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(header(&r, "location").ends_with("/Patient/client-chosen-1/_history/1"));

    let gw2 = Gateway::start_with("[rest]\nupdate_create = false\n");
    let r = put(&c, &format!("{}/Patient/client-chosen-1", gw2.base), &p).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let cap: Value = c
        .get(format!("{}/metadata", gw2.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pat = cap["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    assert_eq!(pat["updateCreate"], false);
}

#[tokio::test]
async fn conditional_create_update_delete() {
    let gw = Gateway::start();
    let c = client();
    let b = &gw.base;
    let bsn = "http://fhir.nl/fhir/NamingSystem/bsn|999911120";
    let cond = format!("identifier={}", bsn.replace('|', "%7C"));

    let r = c
        .post(format!("{b}/Patient"))
        .header("content-type", FHIR_JSON)
        .header("if-none-exist", &cond)
        .body(patient("999911120", "A").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let first: Value = r.json().await.unwrap();
    let r = c
        .post(format!("{b}/Patient"))
        .header("content-type", FHIR_JSON)
        .header("if-none-exist", &cond)
        .body(patient("999911120", "B").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "existing match: nothing created"
    );
    let second: Value = r.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);

    // _id as the condition
    let cond_id = format!("_id={}", first["id"].as_str().unwrap());
    let r = c
        .post(format!("{b}/Patient"))
        .header("content-type", FHIR_JSON)
        .header("if-none-exist", &cond_id)
        .body(patient("999911132", "C").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // conditional update: one match -> update it
    let r = put(
        &c,
        &format!("{b}/Patient?{cond}"),
        &patient("999911120", "Updated"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], first["id"]);
    assert_eq!(v["meta"]["versionId"], "2");
    // no match -> create
    let r = put(
        &c,
        &format!("{b}/Patient?identifier=urn:x%7C1"),
        &patient("999911156", "New"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // two matches -> 412 for create, update and delete
    let r = post(
        &c,
        &format!("{b}/Patient"),
        &patient("999911120", "Duplicate"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .post(format!("{b}/Patient"))
        .header("content-type", FHIR_JSON)
        .header("if-none-exist", &cond)
        .body(patient("999911120", "X").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = put(
        &c,
        &format!("{b}/Patient?{cond}"),
        &patient("999911120", "X"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = c
        .delete(format!("{b}/Patient?{cond}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);

    // conditional delete of a single match
    let r = c
        .delete(format!("{b}/Patient?identifier=urn:x%7C1"))
        .send()
        .await
        .unwrap();
    assert!(r.status() == StatusCode::NO_CONTENT || r.status() == StatusCode::OK);
    let r = c
        .delete(format!("{b}/Patient?_id={}", first["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{b}/Patient/{}", first["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);

    // a condition the server does not understand is refused, never ignored
    let r = c
        .post(format!("{b}/Patient"))
        .header("content-type", FHIR_JSON)
        .header("if-none-exist", "nonsense=Berg")
        .body(patient("999911120", "X").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c.delete(format!("{b}/Patient")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "a conditional delete without criteria"
    );
}

#[tokio::test]
async fn search_by_id_and_identifier_with_paging_and_handling() {
    let gw = Gateway::start();
    let c = client();
    let b = &gw.base;
    let mut ids = Vec::new();
    for i in 0..7 {
        let v: Value = post(
            &c,
            &format!("{b}/Patient"),
            &patient(if i % 2 == 0 { "999911120" } else { "999911132" }, "X"),
        )
        .await
        .json()
        .await
        .unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let s: Value = c
        .get(format!("{b}/Patient?_id={},{}", ids[0], ids[1]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["type"], "searchset");
    assert_eq!(s["total"], 2);
    let s: Value = c
        .get(format!("{b}/Patient?identifier=999911120"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["total"], 4);
    let s: Value = c
        .get(format!(
            "{b}/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn%7C"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["total"], 7);
    let s: Value = c
        .get(format!("{b}/Patient?identifier=%7C999911120"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["total"], 0, "|value means no system");

    // POST _search
    let r = c
        .post(format!("{b}/Patient/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("_id={}", ids[2]))
        .send()
        .await
        .unwrap();
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["total"], 1);

    // paging: 7 results, 3 a page
    let mut url = format!("{b}/Patient?_count=3");
    let mut got = Vec::new();
    loop {
        let page: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(page["total"], 7);
        for e in page["entry"].as_array().into_iter().flatten() {
            got.push(e["resource"]["id"].as_str().unwrap().to_owned());
            assert_eq!(e["search"]["mode"], "match");
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
    got.sort();
    ids.sort();
    assert_eq!(got, ids);

    // _count=0: the total only
    let s: Value = c
        .get(format!("{b}/Patient?_count=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["total"], 7);
    assert!(s.get("entry").is_none());

    // unknown parameter: lenient ignores it (and the self link says what was applied), strict refuses
    let s: Value = c
        .get(format!("{b}/Patient?bogus=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["total"], 7);
    assert!(!s["link"][0]["url"].as_str().unwrap().contains("bogus"));
    let r = c
        .get(format!("{b}/Patient?bogus=1"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let oo: Value = r.json().await.unwrap();
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("bogus")
    );
}

#[tokio::test]
async fn page_size_is_capped_by_config() {
    let gw = Gateway::start_with("[rest]\nmax_page_size = 2\ndefault_page_size = 2\n");
    let c = client();
    for _ in 0..5 {
        post(
            &c,
            &format!("{}/Basic", gw.base),
            &json!({"resourceType": "Basic", "code": {"text": "x"}}),
        )
        .await;
    }
    let s: Value = c
        .get(format!("{}/Basic?_count=500", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["entry"].as_array().unwrap().len(), 2);
    assert_eq!(s["total"], 5);
}

#[tokio::test]
async fn formats_pretty_gzip_and_xml() {
    let gw = Gateway::start();
    let c = client();
    let b = &gw.base;
    let r = c
        .get(format!("{b}/metadata"))
        .header("accept", "application/fhir+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{b}/metadata?_format=json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{b}/metadata"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = c
        .get(format!("{b}/metadata"))
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    assert!(header(&r, "content-type").starts_with("application/fhir+json"));
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let r = c
        .get(format!("{b}/metadata?_format=xml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    let r = c
        .post(format!("{b}/Patient"))
        .header("content-type", "application/fhir+xml")
        .body("<Patient xmlns=\"http://hl7.org/fhir\"/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");

    let plain = c
        .get(format!("{b}/metadata"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pretty = c
        .get(format!("{b}/metadata?_pretty=true"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!plain.contains("\n  "));
    assert!(pretty.contains("\n  \"resourceType\""));

    // gzip when accepted (this client does not decompress: the raw bytes are checked)
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = raw
        .get(format!("{b}/metadata"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-encoding"), "gzip");
    let bytes = r.bytes().await.unwrap();
    let mut text = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    let cap: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(cap["resourceType"], "CapabilityStatement");
    let r = raw.get(format!("{b}/metadata")).send().await.unwrap();
    assert_eq!(header(&r, "content-encoding"), "");
}

#[tokio::test]
async fn capability_statement_lists_what_is_implemented() {
    let gw = Gateway::start();
    let cap: Value = client()
        .get(format!("{}/metadata", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cap["resourceType"], "CapabilityStatement");
    assert_eq!(cap["fhirVersion"], "4.0.1");
    assert_eq!(cap["kind"], "instance");
    let rest = &cap["rest"][0];
    assert_eq!(rest["mode"], "server");
    let resources = rest["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146, "every R4 resource type");
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let interactions: Vec<&str> = patient["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    for i in [
        "read",
        "vread",
        "update",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    ] {
        assert!(interactions.contains(&i), "{i}");
    }
    assert!(interactions.contains(&"patch"), "PATCH is implemented");
    assert_eq!(patient["conditionalCreate"], true);
    assert_eq!(patient["conditionalDelete"], "single");
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in [
        "_id",
        "identifier",
        "family",
        "birthdate",
        "_lastUpdated",
        "general-practitioner",
    ] {
        assert!(params.contains(&expected), "{expected} in {params:?}");
    }
    assert!(
        !params.contains(&"phonetic"),
        "phonetic matching is not implemented, so not listed"
    );
    let binary = resources.iter().find(|r| r["type"] == "Binary").unwrap();
    assert!(
        !binary["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "identifier"),
        "Binary has no identifier"
    );
    assert!(
        cap["format"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| !f.as_str().unwrap().contains("xml"))
    );
}

#[tokio::test]
async fn wrong_type_id_mismatch_and_unknown_type() {
    let gw = Gateway::start();
    let c = client();
    let b = &gw.base;
    let r = post(&c, &format!("{b}/Observation"), &patient("999911120", "A")).await;
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "resourceType differs from the URL"
    );
    let mut p = patient("999911120", "A");
    p["id"] = json!("abc");
    let r = put(&c, &format!("{b}/Patient/xyz"), &p).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "id mismatch");
    let r = put(&c, &format!("{b}/Patient/xyz"), &patient("999911120", "A")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "PUT without id");
    let r = c.get(format!("{b}/Foo/1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let r = post(&c, &format!("{b}/Foo"), &json!({"resourceType": "Foo"})).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .get(format!("{b}/Patient/does-not-exist"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // PATCH without a patch document's media type.
    let r = c.patch(format!("{b}/Patient/x")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // invalid resource: each error with its location
    let r = post(
        &c,
        &format!("{b}/Patient"),
        &json!({"resourceType": "Patient", "gender": 1, "birthDate": "1970-13-45", "x": 1}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let oo: Value = r.json().await.unwrap();
    let exprs: Vec<&str> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    assert!(
        exprs.contains(&"Patient.gender") && exprs.contains(&"Patient.birthDate"),
        "{exprs:?}"
    );
    assert_eq!(oo["issue"].as_array().unwrap().len(), 3);

    // a create ignores a client id (the server assigns it)
    let mut p = patient("999911120", "A");
    p["id"] = json!("mine");
    let v: Value = post(&c, &format!("{b}/Patient"), &p)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(v["id"], "mine");
}

#[tokio::test]
async fn health_and_unknown_paths() {
    let gw = Gateway::start();
    let c = client();
    let r = c
        .get(format!("http://{}/healthz", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("http://{}/readyz", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("http://{}/nothing", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn decimals_and_client_meta_survive() {
    let gw = Gateway::start();
    let c = client();
    let body = r#"{"resourceType":"Observation","status":"final","code":{"text":"Hb"},"valueQuantity":{"value":8.50,"unit":"mmol/L"},"meta":{"tag":[{"system":"urn:t","code":"x"}],"source":"urn:src"}}"#;
    let r = c
        .post(format!("{}/Observation", gw.base))
        .header("content-type", FHIR_JSON)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"value\":8.50"), "{text}");
    assert!(
        text.contains("\"source\":\"urn:src\"") && text.contains("urn:t"),
        "{text}"
    );
}

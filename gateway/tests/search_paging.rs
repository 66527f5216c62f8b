//! Paging while writes happen: the pages of a search, sorted or not, hold every resource that
//! matched when the search began exactly once, even when resources change their sort value,
//! are created or are deleted between pages. Sorted pages expire and are capped as configured.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;

async fn put(c: &reqwest::Client, base: &str, id: &str, birth: &str) {
    let p = json!({"resourceType": "Patient", "id": id, "name": [{"family": "Pager"}], "birthDate": birth});
    let r = c
        .put(format!("{base}/Patient/{id}"))
        .header("content-type", FHIR_JSON)
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn page(
    c: &reqwest::Client,
    url: &str,
) -> (reqwest::StatusCode, Vec<String>, Option<String>) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status();
    let b: Value = r.json().await.unwrap();
    let ids = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    let next = b["link"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_owned());
    (status, ids, next)
}

/// Pages through `query`, and after the first page moves one unseen resource before the start
/// of the order, one seen resource to its end, and creates one.
async fn page_through_writes(gw: &Gateway, query: &str) -> Vec<String> {
    let c = client();
    let b = &gw.base;
    let (status, mut seen, mut next) =
        page(&c, &format!("{b}/Patient?family=pager&{query}&_count=3")).await;
    assert_eq!(status, 200);
    assert_eq!(seen.len(), 3);
    // p9 is last in either order (ids and birth dates grow together); p0 or p9 was seen.
    let unseen = (0..10)
        .map(|i| format!("p{i}"))
        .rfind(|id| !seen.contains(id))
        .unwrap();
    put(&c, b, &unseen, "1900-01-01").await;
    put(&c, b, &seen[0], "2099-01-01").await;
    put(&c, b, "p5b", "1985-01-01").await;
    while let Some(url) = next {
        let (status, ids, n) = page(&c, &url).await;
        assert_eq!(status, 200, "{url}");
        seen.extend(ids);
        next = n;
    }
    seen
}

async fn stable(gw: &Gateway) {
    let c = client();
    for i in 0..10 {
        put(
            &c,
            &gw.base,
            &format!("p{i}"),
            &format!("19{}0-06-15", 1 + i % 9),
        )
        .await;
    }
    let before: BTreeSet<String> = (0..10).map(|i| format!("p{i}")).collect();
    for query in [
        "_sort=birthdate",
        "_sort=-birthdate",
        "_sort=family,birthdate",
        "",
    ] {
        // Reset the sort values, then page while they change.
        for i in 0..10 {
            put(
                &c,
                &gw.base,
                &format!("p{i}"),
                &format!("19{}0-06-15", 1 + i % 9),
            )
            .await;
        }
        let r = c
            .delete(format!("{}/Patient/p5b", gw.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let seen = page_through_writes(gw, query).await;
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "{query}: a duplicate in {seen:?}");
        for id in &before {
            assert!(unique.contains(id), "{query}: {id} missing from {seen:?}");
        }
    }
}

#[tokio::test]
async fn pages_are_stable_while_writes_happen_sqlite() {
    stable(&Gateway::start()).await;
}

#[tokio::test]
async fn pages_are_stable_while_writes_happen_postgres() {
    stable(&Gateway::start_with(&postgres_toml(&fresh_schema(), ""))).await;
}

/// `rest.max_sorted_results` caps what a sorted search pages to; `search_snapshot_ttl_secs`
/// expires its next links with 410 Gone; a forged cursor is a 400.
#[tokio::test]
async fn sorted_pages_are_capped_and_expire() {
    let gw = Gateway::start_with("[rest]\nmax_sorted_results = 4\nsearch_snapshot_ttl_secs = 2\n");
    let c = client();
    let b = &gw.base;
    for i in 0..7 {
        put(&c, b, &format!("q{i}"), &format!("19{i}0-01-01")).await;
    }
    let url = format!("{b}/Patient?family=pager&_sort=-birthdate&_count=3");
    let (_, first, next) = page(&c, &url).await;
    assert_eq!(first, ["q6", "q5", "q4"]);
    let (_, second, after) = page(&c, &next.unwrap()).await;
    assert_eq!(second, ["q3"], "the fourth and last kept match");
    assert!(after.is_none());
    let body: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["total"], 7, "the total still counts every match");

    let (_, _, next) = page(&c, &url).await;
    let next = next.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let r = c.get(&next).send().await.unwrap();
    assert_eq!(r.status(), 410);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");

    let forged = format!("{b}/Patient?family=pager&_sort=-birthdate&_count=3&_cursor=nonsense");
    assert_eq!(c.get(&forged).send().await.unwrap().status(), 400);
    let unknown = format!("{b}/Patient?family=pager&_sort=-birthdate&_count=3&_cursor=abc.3");
    assert_eq!(c.get(&unknown).send().await.unwrap().status(), 410);
    // An unknown sort key: ignored when lenient, named when strict.
    let r = c
        .get(format!("{b}/Patient?_sort=nonsense"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{b}/Patient?_sort=nonsense"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("_sort=nonsense"));
}

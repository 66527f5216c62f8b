//! Several gateway processes on one PostgreSQL database: correctness comes from the database
//! (transactions, advisory locks, unique constraints), not from any process's memory.

mod common;

use common::{FHIR_JSON, Gateway, client, fresh_schema, postgres_toml};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn replicas(n: usize) -> Vec<Gateway> {
    let schema = fresh_schema();
    let cfg = postgres_toml(&schema, "");
    // Start them together: they race to migrate the fresh schema, which must happen once.
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let cfg = cfg.clone();
            std::thread::spawn(move || Gateway::start_with(&cfg))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn patient(bsn: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn}], "name": [{"family": "Replica"}]})
}

async fn if_match_has_one_winner(n: usize) {
    let gws = replicas(n);
    let c = client();
    let created: Value = c
        .post(format!("{}/Patient", gws[0].base))
        .header("content-type", FHIR_JSON)
        .body(patient("999911120").to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (c, url) = (c.clone(), format!("{}/Patient/{id}", gws[i % n].base));
            let mut body = created.clone();
            body["gender"] = json!(if i % 2 == 0 { "male" } else { "female" });
            tokio::spawn(async move {
                c.put(url)
                    .header("content-type", FHIR_JSON)
                    .header("if-match", "W/\"1\"")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut ok = 0;
    let mut precondition = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::PRECONDITION_FAILED => precondition += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((ok, precondition), (1, 39), "{n} replicas");
    let h: Value = c
        .get(format!("{}/Patient/{id}/_history", gws[n - 1].base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_match_updates_have_one_winner_on_two_replicas() {
    if_match_has_one_winner(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_match_updates_have_one_winner_on_four_replicas() {
    if_match_has_one_winner(4).await;
}

async fn conditional_creates_make_one(n: usize) {
    let gws = replicas(n);
    let c = client();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (c, url) = (c.clone(), format!("{}/Patient", gws[i % n].base));
            tokio::spawn(async move {
                let r = c
                    .post(url)
                    .header("content-type", FHIR_JSON)
                    .header(
                        "if-none-exist",
                        "identifier=http://fhir.nl/fhir/NamingSystem/bsn%7C999911132",
                    )
                    .body(patient("999911132").to_string())
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let v: Value = r.json().await.unwrap();
                (status, v["id"].as_str().unwrap_or_default().to_owned())
            })
        })
        .collect();
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, id) = t.await.unwrap();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status}"
        );
        created += (status == StatusCode::CREATED) as usize;
        ids.insert(id);
    }
    assert_eq!((created, ids.len()), (1, 1), "{n} replicas");
    for gw in &gws {
        let s: Value = c
            .get(format!("{}/Patient?identifier=999911132", gw.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(s["total"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_creates_make_one_resource_on_two_replicas() {
    conditional_creates_make_one(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_creates_make_one_resource_on_four_replicas() {
    conditional_creates_make_one(4).await;
}

/// Unconditional updates of one resource from four replicas: every acknowledged write is a
/// version, none is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_write_is_lost_across_replicas() {
    let gws = replicas(4);
    let c = client();
    let created: Value = c
        .post(format!("{}/Patient", gws[0].base))
        .header("content-type", FHIR_JSON)
        .body(patient("999911144").to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (c, url) = (c.clone(), format!("{}/Patient/{id}", gws[i % 4].base));
            let mut body = created.clone();
            body["name"][0]["given"] = json!([format!("write-{i}")]);
            tokio::spawn(async move {
                let r = c
                    .put(url)
                    .header("content-type", FHIR_JSON)
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                let v: Value = r.json().await.unwrap();
                v["meta"]["versionId"]
                    .as_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(
        versions,
        (2..=61).collect::<Vec<u64>>(),
        "each acknowledged write got its own version"
    );
    let h: Value = c
        .get(format!("{}/Patient/{id}/_history?_count=1000", gws[2].base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["total"], 61);
    let mut givens: Vec<String> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            e["resource"]["name"][0]["given"][0]
                .as_str()
                .map(str::to_owned)
        })
        .filter(|g| g.starts_with("write-"))
        .collect();
    givens.sort();
    givens.dedup();
    assert_eq!(givens.len(), 60, "every write's content is in the history");
}

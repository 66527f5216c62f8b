//! PostgreSQL upkeep the gateway does itself, since it cannot count on the database's autovacuum
//! (off on some installations, minutes late on others): after enough writes it vacuums and
//! analyzes its tables in the background, so that the planner has statistics and index-only
//! scans (the `_total` counts) find the pages marked all-visible.

mod common;

use common::{FHIR_JSON, Gateway, client, fresh_schema, postgres_toml, postgres_url};
use serde_json::json;
use sqlx::Connection;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enough_writes_vacuum_and_analyze_the_index_tables() {
    let schema = fresh_schema();
    let gw = Gateway::start_with(&postgres_toml(&schema, ""));
    let mut db = sqlx::PgConnection::connect(&postgres_url()).await.unwrap();
    let vacuumed = format!(
        "SELECT last_vacuum IS NOT NULL AND last_analyze IS NOT NULL FROM pg_stat_user_tables \
         WHERE schemaname = '{schema}' AND relname = 'search_index'"
    );
    let check = || sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(vacuumed.clone()));
    assert!(
        !check().fetch_one(&mut db).await.unwrap(),
        "a fresh schema has not been vacuumed"
    );

    // 250 resources in one transaction: past the first refresh's threshold (200 writes).
    let entries: Vec<_> = (0..250)
        .map(|i| {
            json!({
                "resource": {"resourceType": "Basic", "code": {"text": format!("upkeep-{i}")}},
                "request": {"method": "POST", "url": "Basic"}
            })
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = client()
        .post(&gw.base)
        .header("content-type", FHIR_JSON)
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let started = Instant::now();
    while !check().fetch_one(&mut db).await.unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "search_index was not vacuumed and analyzed after 250 writes; log: {}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The visibility map now marks the index table's pages all-visible: a count over its index
    // need not read the heap.
    let all_visible: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT relallvisible FROM pg_class WHERE oid = '\"{schema}\".search_index'::regclass"
    )))
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(
        all_visible > 0,
        "no page of search_index is marked all-visible"
    );
}

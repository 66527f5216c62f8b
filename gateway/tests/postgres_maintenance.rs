//! PostgreSQL upkeep the gateway does itself, since it cannot count on the database's autovacuum
//! (off on some installations, minutes late on others): after enough writes it vacuums and
//! analyzes its tables in the background, so that the planner has statistics and index-only
//! scans (the `_total` counts) find the pages marked all-visible.

mod common;

use common::{FHIR_JSON, Gateway, client, fresh_schema, postgres_toml, postgres_url};
use serde_json::json;
use sqlx::{Connection, Row};
use std::time::{Duration, Instant};

/// Posts `entries` as one transaction Bundle; it must succeed.
async fn transaction(gw: &Gateway, entries: Vec<serde_json::Value>) {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = client()
        .post(&gw.base)
        .header("content-type", FHIR_JSON)
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// The tests of this file run one at a time. VACUUM marks a page all-visible only when every
/// transaction running in the database can see all its rows: the other test's loading
/// transaction, begun before this one's writes committed, kept the vacuum from marking any page
/// (two fresh-clone CI runs failed so).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enough_writes_vacuum_and_analyze_the_index_tables() {
    let _alone = ONE_AT_A_TIME.lock().await;
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
    transaction(&gw, entries).await;

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

/// The statements PostgreSQL plans once per connection (`Sql::generic`) must not depend on their
/// values for a good plan. A patient's lab page is one: planned without values, it still starts
/// from the patient's index rows and probes each resource for the category. Written as a join,
/// a plan made without values could start from the category instead, and read every laboratory
/// Observation of every patient (session 11 saw such a plan take 20 s on a million resources).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_page_planned_once_starts_from_the_patient() {
    let _alone = ONE_AT_A_TIME.lock().await;
    use gateway::fhir::operation::Search;
    use gateway::fhir::search::{Clause, ClauseKind, Criteria, Pred, Token};
    use gateway::store::sql::{self, Bind, Dialect};

    let schema = fresh_schema();
    let gw = Gateway::start_with(&postgres_toml(&schema, ""));
    // Patient "busy" has 600 laboratory Observations, "quiet" 3.
    let mut entries = Vec::new();
    for (patient, n) in [("busy", 600), ("quiet", 3)] {
        entries.push(json!({
            "resource": {"resourceType": "Patient", "id": patient},
            "request": {"method": "PUT", "url": format!("Patient/{patient}")}
        }));
        for i in 0..n {
            entries.push(json!({
                "resource": {
                    "resourceType": "Observation", "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
                    "code": {"text": format!("lab {i}")},
                    "subject": {"reference": format!("Patient/{patient}")}
                },
                "request": {"method": "POST", "url": "Observation"}
            }));
        }
    }
    transaction(&gw, entries).await;

    let op = Search {
        ty: "Observation".into(),
        criteria: Criteria {
            clauses: vec![
                Clause {
                    param: "category".into(),
                    how: ClauseKind::Any(vec![Pred::Token(Token {
                        system: None,
                        value: Some("laboratory".into()),
                    })]),
                },
                Clause {
                    param: "patient".into(),
                    how: ClauseKind::Any(vec![Pred::Reference(vec!["Patient/quiet".into()])]),
                },
            ],
            ..Default::default()
        },
        count: 20,
        total: true,
        ..Default::default()
    };
    let (count, page) = sql::search(Dialect::Postgres, &op).unwrap();
    let mut db = sqlx::PgConnection::connect(&postgres_url()).await.unwrap();
    for statement in [
        format!("SET search_path TO \"{schema}\""),
        "ANALYZE".into(),
        "SET plan_cache_mode = force_generic_plan".into(),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut db)
            .await
            .unwrap();
    }
    for (name, q) in [("page", &page), ("count", &count)] {
        assert!(q.generic, "{name} is planned once: {}", q.text);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE {name} AS {}", q.text)))
            .execute(&mut db)
            .await
            .unwrap();
        let values: Vec<String> = q
            .binds
            .iter()
            .map(|b| match b {
                Bind::Text(s) => format!("'{}'", s.replace('\'', "''")),
                Bind::Int(i) => i.to_string(),
                other => panic!("unexpected bind {other:?}"),
            })
            .collect();
        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}({})",
            values.join(", ")
        )))
        .fetch_one(&mut db)
        .await
        .unwrap();
        let plan: serde_json::Value =
            serde_json::from_str(&row.try_get_unchecked::<String, _>(0).unwrap()).unwrap();
        // The most rows any step of the plan produced, over all its loops.
        fn most_rows(node: &serde_json::Value) -> f64 {
            let own = node["Actual Rows"].as_f64().unwrap_or(0.0)
                * node["Actual Loops"].as_f64().unwrap_or(1.0);
            node["Plans"]
                .as_array()
                .into_iter()
                .flatten()
                .map(most_rows)
                .fold(own, f64::max)
        }
        let most = most_rows(&plan[0]["Plan"]);
        assert!(
            most <= 10.0,
            "the {name} statement read {most} rows for a patient with 3 Observations: {plan:#}"
        );
    }
    // And the gateway answers the search from the patient's 3 Observations.
    let r = client()
        .get(format!(
            "{}/Observation?patient=quiet&category=laboratory",
            gw.base
        ))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["total"], 3, "{body}");
}

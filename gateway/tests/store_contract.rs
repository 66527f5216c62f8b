//! The store contract: one suite, run against every `Store` backend through the trait only.
//! A backend joins by adding itself to `backends()`. PostgreSQL is the one at
//! `GATEWAY_TEST_POSTGRES` (default postgres://postgres@127.0.0.1:5432/test), each test in a fresh
//! schema.

mod common;

use gateway::fhir::operation::{
    Create, Delete, History, HistoryScope, Read, Search, Target, Update, VRead,
};
use gateway::fhir::search::{Clause, ClauseKind, Criteria, Pred, Prefix, Token};
use gateway::policy::{Authorizable, Permit, Policy, Principal, TokenPrincipal};
use gateway::store::postgres::PostgresStore;
use gateway::store::sqlite::SqliteStore;
use gateway::store::{Created, Store};
use serde_json::{Value, json};
use std::sync::Arc;

struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path()).await.unwrap();
    let sqlite: Arc<dyn Store> = Arc::new(sqlite);
    // The policy wants a store for its consent reads; making permits never touches it.
    POLICY
        .get_or_init(|| Policy::new(sqlite.clone(), &gateway::config::Config::default()).unwrap());
    let pg_config = common::postgres_config(&common::fresh_schema());
    let postgres = PostgresStore::open(&common::postgres_url(), &pg_config)
        .await
        .unwrap();
    vec![
        Backend {
            name: "sqlite",
            store: sqlite,
            _dir: dir,
        },
        Backend {
            name: "postgres",
            store: Arc::new(postgres),
            _dir: tempfile::tempdir().unwrap(),
        },
    ]
}

/// Store calls need a permit: the test's principal is a back-end service with every permission.
fn permit<T: Authorizable>(op: T) -> Permit<T> {
    let org = gateway::policy::demo::organizations().remove(0).1;
    let principal = Principal::Token(Arc::new(TokenPrincipal {
        issuer: "store-contract".into(),
        subject: "store-contract".into(),
        organization: Arc::new(org),
        scopes: gateway::policy::scopes::parse("system/*.cruds"),
        patient: None,
        fhir_user: None,
        client_id: None,
        purpose_of_use: None,
        token_id: None,
        linked: Vec::new(),
    }));
    POLICY
        .get()
        .expect("backends() made the policy")
        .authorize(&principal, op)
        .unwrap()
}

static POLICY: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();

fn patient(bsn: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn}]})
}

fn by_bsn(bsn: &str) -> Criteria {
    Criteria {
        compartment: None,
        ids: vec![],
        identifiers: vec![vec![Token {
            system: Some("http://fhir.nl/fhir/NamingSystem/bsn".into()),
            value: Some(bsn.into()),
        }]],
        ..Default::default()
    }
}

/// Patients whose family name starts with `prefix` (folded, as the string index keeps it).
fn by_family(prefix: &str) -> Criteria {
    Criteria {
        clauses: vec![Clause {
            param: "family".into(),
            how: ClauseKind::Any(vec![Pred::StartsWith(prefix.into())]),
        }],
        ..Default::default()
    }
}

fn body(s: &gateway::store::Stored) -> Value {
    serde_json::from_slice(s.body.as_ref().unwrap()).unwrap()
}

async fn create(store: &dyn Store, r: Value) -> gateway::store::Stored {
    match store
        .create(&permit(Create {
            ty: "Patient".into(),
            resource: r,
            if_none_exist: None,
            id: None,
        }))
        .await
        .unwrap()
    {
        Created::New(s) => s,
        Created::Existing(_) => panic!("unconditional create found an existing resource"),
    }
}

fn update(id: &str, r: Value, if_match: Option<u64>) -> Permit<Update> {
    permit(Update {
        ty: "Patient".into(),
        target: Target::Id(id.into()),
        resource: r,
        if_match,
        allow_create: true,
        only_if_absent: false,
    })
}

#[tokio::test]
async fn create_read_vread_update_delete() {
    for b in backends().await {
        let s = b.store.as_ref();
        let created = create(s, patient("999911120")).await;
        assert_eq!(created.version, 1, "{}", b.name);
        let stored = body(&created);
        assert_eq!(stored["id"], created.id.as_str());
        assert_eq!(stored["meta"]["versionId"], "1");

        let read = s
            .read(&permit(Read {
                ty: "Patient".into(),
                id: created.id.clone(),
            }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body(&read), stored, "{}", b.name);

        let mut changed = stored.clone();
        changed["gender"] = json!("female");
        let up = s.update(&update(&created.id, changed, None)).await.unwrap();
        assert!(!up.created);
        assert_eq!(up.stored.version, 2);

        let v1 = s
            .vread(&permit(VRead {
                ty: "Patient".into(),
                id: created.id.clone(),
                version: 1,
            }))
            .await
            .unwrap()
            .unwrap();
        assert!(
            body(&v1).get("gender").is_none(),
            "{}: old versions are kept as they were",
            b.name
        );

        let del = s
            .delete(&permit(Delete {
                ty: "Patient".into(),
                target: Target::Id(created.id.clone()),
                if_match: None,
            }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(del.version, 3);
        assert!(del.is_deleted());
        let read = s
            .read(&permit(Read {
                ty: "Patient".into(),
                id: created.id.clone(),
            }))
            .await
            .unwrap()
            .unwrap();
        assert!(
            read.is_deleted(),
            "{}: read after delete sees the deletion",
            b.name
        );
        let again = s
            .delete(&permit(Delete {
                ty: "Patient".into(),
                target: Target::Id(created.id.clone()),
                if_match: None,
            }))
            .await
            .unwrap();
        assert!(again.is_none(), "{}: deleting twice writes nothing", b.name);
        let missing = s
            .read(&permit(Read {
                ty: "Patient".into(),
                id: "nope".into(),
            }))
            .await
            .unwrap();
        assert!(missing.is_none());
    }
}

#[tokio::test]
async fn version_conflicts() {
    for b in backends().await {
        let s = b.store.as_ref();
        let c = create(s, patient("999911132")).await;
        s.update(&update(&c.id, patient("999911132"), Some(1)))
            .await
            .unwrap();
        let err = s
            .update(&update(&c.id, patient("999911132"), Some(1)))
            .await
            .unwrap_err();
        assert_eq!(err.status, 412, "{}", b.name);
        let err = s
            .delete(&permit(Delete {
                ty: "Patient".into(),
                target: Target::Id(c.id.clone()),
                if_match: Some(1),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.status, 412, "{}", b.name);
        let err = s
            .update(&update("never-existed", patient("999911132"), Some(1)))
            .await
            .unwrap_err();
        assert_eq!(err.status, 412, "{}", b.name);
    }
}

#[tokio::test]
async fn conditional_create_is_atomic() {
    for b in backends().await {
        let store = b.store.clone();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .create(&permit(Create {
                            ty: "Patient".into(),
                            resource: patient("999911144"),
                            if_none_exist: Some(by_bsn("999911144")),
                            id: None,
                        }))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut new = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Created::New(_)) {
                new += 1;
            }
        }
        assert_eq!(new, 1, "{}", b.name);
        let page = store
            .search(&permit(Search {
                ty: "Patient".into(),
                criteria: by_bsn("999911144"),
                count: 10,
                cursor: None,
                applied: vec![],
                audit: None,
                includes: vec![],
                total: true,
                subset: None,
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(page.total, Some(1), "{}", b.name);
    }
}

/// `_total` is the number of matches whatever the page: a first page that holds them all is
/// counted from its rows (no count query), any other page by the count query. Both for a search
/// planned for its values (a family name) and for one that PostgreSQL plans once and whose first
/// page counts the matches itself (an identifier, with the family probed per resource).
#[tokio::test]
async fn total_counts_every_match_on_every_page() {
    let tagged = |family: &str| {
        json!({"resourceType": "Patient", "name": [{"family": family}],
               "identifier": [{"system": "urn:test:totals", "value": "t"}]})
    };
    let keyed = |family: &str| Criteria {
        identifiers: vec![vec![Token {
            system: Some("urn:test:totals".into()),
            value: Some("t".into()),
        }]],
        ..by_family(family)
    };
    for b in backends().await {
        let s = b.store.as_ref();
        for _ in 0..5 {
            create(s, tagged("Totalled")).await;
        }
        create(s, tagged("Other")).await;
        // Nothing matches: no rows, and a total of 0.
        let none_match = s
            .search(&permit(Search {
                ty: "Patient".into(),
                criteria: keyed("nobody"),
                count: 10,
                total: true,
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(
            (none_match.total, none_match.entries.len()),
            (Some(0), 0),
            "{}",
            b.name
        );
        for criteria in [by_family("totalled"), keyed("totalled")] {
            total_on_every_page(&b, criteria).await;
        }
    }
}

async fn total_on_every_page(b: &Backend, criteria: Criteria) {
    {
        let s = b.store.as_ref();
        let op = |count: u32, cursor: Option<String>| {
            permit(Search {
                ty: "Patient".into(),
                criteria: criteria.clone(),
                count,
                cursor,
                total: true,
                ..Default::default()
            })
        };
        for (count, shown) in [(10, 5), (6, 5), (5, 5), (4, 4), (1, 1), (0, 0)] {
            let page = s.search(&op(count, None)).await.unwrap();
            assert_eq!(page.total, Some(5), "{}: _count={count}", b.name);
            assert_eq!(page.entries.len(), shown, "{}: _count={count}", b.name);
            assert_eq!(
                page.next.is_some(),
                count > 0 && count < 5,
                "{}: _count={count}",
                b.name
            );
        }
        // The last page is short, but not the first: its total is still every match.
        let first = s.search(&op(3, None)).await.unwrap();
        let last = s.search(&op(3, first.next.clone())).await.unwrap();
        assert_eq!(last.entries.len(), 2, "{}", b.name);
        assert_eq!(last.total, Some(5), "{}", b.name);
        assert!(last.next.is_none(), "{}", b.name);
        // `_total=none`: no total at all.
        let none = permit(Search {
            total: false,
            ..op(10, None).op().clone()
        });
        assert_eq!(s.search(&none).await.unwrap().total, None, "{}", b.name);
    }
}

#[tokio::test]
async fn history_is_newest_first_and_pages_stably() {
    for b in backends().await {
        let s = b.store.as_ref();
        let c = create(s, patient("999911156")).await;
        for _ in 0..4 {
            s.update(&update(&c.id, patient("999911156"), None))
                .await
                .unwrap();
        }
        let scope = HistoryScope::Instance("Patient".into(), c.id.clone());
        let first = s
            .history(&permit(History {
                scope: scope.clone(),
                since: None,
                count: 2,
                cursor: None,
            }))
            .await
            .unwrap();
        assert_eq!(first.total, Some(5));
        let versions: Vec<u64> = first.entries.iter().map(|e| e.version).collect();
        assert_eq!(versions, vec![5, 4], "{}", b.name);
        // A write between pages does not shift the next page.
        s.update(&update(&c.id, patient("999911156"), None))
            .await
            .unwrap();
        let cursor = first.next.unwrap().parse().unwrap();
        let second = s
            .history(&permit(History {
                scope,
                since: None,
                count: 2,
                cursor: Some(cursor),
            }))
            .await
            .unwrap();
        let versions: Vec<u64> = second.entries.iter().map(|e| e.version).collect();
        assert_eq!(versions, vec![3, 2], "{}", b.name);
    }
}

/// `gateway import`'s bulk-load mode changes how the store writes, not what it keeps.
#[tokio::test]
async fn bulk_load_mode_writes_normally_and_ends_clean() {
    for b in backends().await {
        let s = b.store.as_ref();
        s.bulk_load(true).await.unwrap();
        let mut ids = Vec::new();
        for bsn in ["999911120", "999911132", "999911144"] {
            ids.push(create(s, patient(bsn)).await.id);
        }
        s.bulk_load(false).await.unwrap();
        for id in &ids {
            let read = s
                .read(&permit(Read {
                    ty: "Patient".into(),
                    id: id.clone(),
                }))
                .await
                .unwrap();
            assert!(read.is_some(), "{}: {id}", b.name);
        }
        if b.name == "sqlite" {
            // The end of a bulk load checkpoints and truncates the WAL while the store is open
            // (readers would otherwise load what it holds into their heaps).
            let wal = b._dir.path().join("gateway.db-wal");
            let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            assert_eq!(len, 0, "{} bytes left in {}", len, wal.display());
            // Still writable after the mode ends.
            create(s, patient("999911156")).await;
            assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        }
    }
}

/// What a store acknowledged is there after it is closed and opened again.
#[tokio::test]
async fn durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    drop(backends().await); // makes the policy the permits come from
    let schema = common::fresh_schema();
    let pg = || async {
        PostgresStore::open(&common::postgres_url(), &common::postgres_config(&schema))
            .await
            .unwrap()
    };
    for (name, first, reopen) in [
        (
            "sqlite",
            Arc::new(SqliteStore::open(dir.path()).await.unwrap()) as Arc<dyn Store>,
            0,
        ),
        ("postgres", Arc::new(pg().await) as Arc<dyn Store>, 1),
    ] {
        let c = create(first.as_ref(), patient("999911107")).await;
        drop(first);
        let again: Arc<dyn Store> = if reopen == 0 {
            Arc::new(SqliteStore::open(dir.path()).await.unwrap())
        } else {
            Arc::new(pg().await)
        };
        let read = again
            .read(&permit(Read {
                ty: "Patient".into(),
                id: c.id.clone(),
            }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.version, 1, "{name}");
        assert_eq!(read.body, c.body, "{name}");
        again.ping().await.unwrap();
    }
}

#[tokio::test]
async fn search_by_identifier_and_id() {
    for b in backends().await {
        let s = b.store.as_ref();
        let a = create(s, patient("999911168")).await;
        create(s, patient("999911181")).await;
        let search = |criteria| {
            permit(Search {
                ty: "Patient".into(),
                criteria,
                count: 10,
                cursor: None,
                applied: vec![],
                audit: None,
                includes: vec![],
                total: true,
                subset: None,
                ..Default::default()
            })
        };
        let page = s.search(&search(by_bsn("999911168"))).await.unwrap();
        assert_eq!(page.entries.len(), 1, "{}", b.name);
        assert_eq!(page.entries[0].id, a.id);
        let page = s
            .search(&search(Criteria {
                compartment: None,
                ids: vec![vec![a.id.clone()]],
                identifiers: vec![],
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(page.total, Some(1));
        // An update re-indexes: the old identifier no longer matches.
        s.update(&update(&a.id, patient("999911193"), None))
            .await
            .unwrap();
        assert_eq!(
            s.search(&search(by_bsn("999911168"))).await.unwrap().total,
            Some(0),
            "{}",
            b.name
        );
        assert_eq!(
            s.search(&search(by_bsn("999911193"))).await.unwrap().total,
            Some(1),
            "{}",
            b.name
        );
        // A deleted resource is not found.
        s.delete(&permit(Delete {
            ty: "Patient".into(),
            target: Target::Id(a.id.clone()),
            if_match: None,
        }))
        .await
        .unwrap();
        assert_eq!(
            s.search(&search(by_bsn("999911193"))).await.unwrap().total,
            Some(0),
            "{}",
            b.name
        );
    }
}

/// A compartment search covers the person's linked records too (`compartment_linked`), and
/// nobody else's.
#[tokio::test]
async fn compartment_search_covers_linked_records() {
    for b in backends().await {
        let s = b.store.as_ref();
        let mut ids = Vec::new();
        for bsn in ["999911120", "999911120", "999911168"] {
            ids.push(create(s, patient(bsn)).await.id);
        }
        let mut obs = Vec::new();
        for p in &ids {
            let created = s
                .create(&permit(Create {
                    ty: "Observation".into(),
                    resource: json!({"resourceType": "Observation", "status": "final",
                        "code": {"text": "x"}, "subject": {"reference": format!("Patient/{p}")}}),
                    if_none_exist: None,
                    id: None,
                }))
                .await
                .unwrap();
            let Created::New(o) = created else {
                panic!("new")
            };
            obs.push(o.id);
        }
        let search = |linked: Vec<String>| {
            permit(Search {
                ty: "Observation".into(),
                criteria: Criteria {
                    compartment: Some(ids[0].clone()),
                    compartment_linked: linked,
                    ..Default::default()
                },
                count: 10,
                ..Default::default()
            })
        };
        let found = |page: gateway::store::Page| {
            let mut v: Vec<String> = page.entries.into_iter().map(|e| e.id).collect();
            v.sort();
            v
        };
        let alone = found(s.search(&search(vec![])).await.unwrap());
        assert_eq!(alone, vec![obs[0].clone()], "{}", b.name);
        let both = found(s.search(&search(vec![ids[1].clone()])).await.unwrap());
        let mut want = vec![obs[0].clone(), obs[1].clone()];
        want.sort();
        assert_eq!(both, want, "{}", b.name);
    }
}

/// The search index follows every write: created, re-indexed on update, gone on delete; string
/// folding and date ranges behave alike on every backend.
#[tokio::test]
async fn search_index_follows_writes() {
    for b in backends().await {
        let s = b.store.as_ref();
        let named = |family: &str, birth: &str| json!({"resourceType": "Patient", "name": [{"family": family}], "birthDate": birth});
        let a = create(s, named("Jänsen", "1980-05-17")).await;
        create(s, named("Pietersen", "1990-01-01")).await;
        let count = |param: &str, pred: Pred| {
            let criteria = Criteria {
                clauses: vec![Clause {
                    param: param.into(),
                    how: ClauseKind::Any(vec![pred]),
                }],
                ..Default::default()
            };
            let op = permit(Search {
                ty: "Patient".into(),
                criteria,
                count: 10,
                cursor: None,
                applied: vec![],
                audit: None,
                includes: vec![],
                total: true,
                subset: None,
                ..Default::default()
            });
            async move { s.search(&op).await.unwrap().total }
        };
        let year_1980 = gateway::fhir::search_index::precision_range("1980").unwrap();
        assert_eq!(
            count("family", Pred::StartsWith("jans".into())).await,
            Some(1),
            "{}",
            b.name
        );
        assert_eq!(
            count(
                "birthdate",
                Pred::Range(Prefix::Eq, year_1980.0, year_1980.1)
            )
            .await,
            Some(1),
            "{}",
            b.name
        );
        assert_eq!(
            count(
                "birthdate",
                Pred::Range(Prefix::Gt, year_1980.0, year_1980.1)
            )
            .await,
            Some(1),
            "{}",
            b.name
        );
        s.update(&update(&a.id, named("Pietersma", "1980-05-17"), None))
            .await
            .unwrap();
        assert_eq!(
            count("family", Pred::StartsWith("jans".into())).await,
            Some(0),
            "{}",
            b.name
        );
        assert_eq!(
            count("family", Pred::StartsWith("piet".into())).await,
            Some(2),
            "{}",
            b.name
        );
        s.delete(&permit(Delete {
            ty: "Patient".into(),
            target: Target::Id(a.id.clone()),
            if_match: None,
        }))
        .await
        .unwrap();
        assert_eq!(
            count("family", Pred::StartsWith("piet".into())).await,
            Some(1),
            "{}",
            b.name
        );
        // A reindex rebuilds the same rows: every current resource, same answers.
        assert!(s.reindex().await.unwrap() >= 1, "{}", b.name);
        assert_eq!(
            count("family", Pred::StartsWith("piet".into())).await,
            Some(1),
            "{}",
            b.name
        );
    }
}

/// A row that two parameters share is stored once, under the narrower one (a Patient's family
/// name is a `family` row, not also a `name` row; an Observation's code a `code` row, not also a
/// `combo-code` row): searches, `:missing` and sorting on the wider one answer as before, on
/// one type and across types, and the narrower one does not pick up the wider one's own rows.
#[tokio::test]
async fn rows_shared_by_parameters_are_stored_once() {
    use gateway::fhir::search::{SortBy, SortKey};
    for b in backends().await {
        let s = b.store.as_ref();
        let make = |ty: &str, r: Value| {
            permit(Create {
                ty: ty.into(),
                resource: r,
                if_none_exist: None,
                id: None,
            })
        };
        let id = |c: Created| match c {
            Created::New(s) | Created::Existing(s) => s.id,
        };
        let jansen = id(s
            .create(&make(
                "Patient",
                json!({"resourceType": "Patient", "name": [{"family": "Jansen", "given": ["Piet"], "text": "Piet Jansen"}],
                       "address": [{"city": "Utrecht", "line": ["Heidelberglaan 100"]}]}),
            ))
            .await
            .unwrap());
        let vaak = id(s
            .create(&make(
                "Patient",
                json!({"resourceType": "Patient", "name": [{"text": "Klaas Vaak"}]}),
            ))
            .await
            .unwrap());
        s.create(&make(
            "Patient",
            json!({"resourceType": "Patient", "gender": "male"}),
        ))
        .await
        .unwrap();
        s.create(&make(
            "Organization",
            json!({"resourceType": "Organization", "name": "Jansen Zorg"}),
        ))
        .await
        .unwrap();
        s.create(&make(
            "Observation",
            json!({"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                   "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                                  "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}),
        ))
        .await
        .unwrap();
        let search =
            |ty: &str, types: &[&str], param: &str, how: ClauseKind, sort: Vec<SortKey>| {
                let op = permit(Search {
                    ty: ty.into(),
                    criteria: Criteria {
                        clauses: vec![Clause {
                            param: param.into(),
                            how,
                        }],
                        types: types.iter().map(|t| t.to_string()).collect(),
                        ..Default::default()
                    },
                    count: 10,
                    total: true,
                    sort,
                    ..Default::default()
                });
                async move {
                    let page = s.search(&op).await.unwrap();
                    page.entries
                        .iter()
                        .map(|e| format!("{}/{}", e.ty, e.id))
                        .collect::<Vec<_>>()
                }
            };
        let starts = |v: &str| ClauseKind::Any(vec![Pred::StartsWith(v.into())]);
        let n = |ty: &'static str, param: &'static str, how: ClauseKind| {
            let f = search(ty, &[], param, how, vec![]);
            async move { f.await.len() }
        };
        let name = b.name;
        let code = |c: &str| {
            ClauseKind::Any(vec![Pred::Token(Token {
                system: Some("http://loinc.org".into()),
                value: Some(c.into()),
            })])
        };
        let not_jansen = ClauseKind::None(vec![Pred::StartsWith("jansen".into())]);
        let high = ClauseKind::Any(vec![Pred::Quantity(Prefix::Gt, 100.0, 100.0, None, None)]);
        // (type, parameter, condition, matches)
        let cases = [
            ("Patient", "name", starts("jansen"), 1),
            ("Patient", "name", starts("piet"), 1),
            ("Patient", "name", starts("klaas"), 1),
            ("Patient", "family", starts("jansen"), 1),
            ("Patient", "family", starts("klaas"), 0),
            ("Patient", "given", starts("piet j"), 0),
            ("Patient", "address", starts("utrecht"), 1),
            ("Patient", "address", starts("heidelberg"), 1),
            ("Patient", "address-city", starts("utrecht"), 1),
            ("Patient", "name", ClauseKind::Missing(true), 1),
            ("Patient", "name", ClauseKind::Missing(false), 2),
            ("Patient", "name", not_jansen, 2),
            ("Observation", "combo-code", code("85354-9"), 1),
            ("Observation", "combo-code", code("8480-6"), 1),
            ("Observation", "code", code("8480-6"), 0),
            ("Observation", "component-code", code("8480-6"), 1),
            ("Observation", "combo-value-quantity", high, 1),
        ];
        for (ty, param, how, matches) in cases {
            let what = format!("{name}: {ty}?{param} {how:?}");
            assert_eq!(n(ty, param, how).await, matches, "{what}");
        }
        // Sorted by name, a patient sorts by the first of all its name strings: "jansen" (a
        // `family` row) before "klaas vaak" (a `name` row of its own).
        let by_name = vec![SortKey {
            by: SortBy::Param {
                code: "name".into(),
                ordered: false,
            },
            descending: false,
        }];
        let sorted = search("Patient", &[], "name", ClauseKind::Missing(false), by_name).await;
        assert_eq!(
            sorted,
            [format!("Patient/{jansen}"), format!("Patient/{vaak}")],
            "{name}"
        );
        // Across types: Patient's `name` reads `family` rows, Organization's only its own.
        let across = search(
            gateway::fhir::operation::ALL_TYPES,
            &["Patient", "Organization"],
            "name",
            starts("jansen"),
            vec![],
        )
        .await;
        assert_eq!(across.len(), 2, "{name}: {across:?}");
        let everywhere = search(
            gateway::fhir::operation::ALL_TYPES,
            &[],
            "name",
            starts("piet"),
            vec![],
        )
        .await;
        assert_eq!(everywhere, [format!("Patient/{jansen}")], "{name}");
    }
}

/// A database migrated by a newer binary is refused: an older binary must not write to a schema
/// it does not understand.
/// A sorted search pages from its snapshot: the order holds when a sort value changes between
/// pages, and the cursor names the kept search.
#[tokio::test]
async fn sorted_search_pages_from_its_snapshot() {
    use gateway::fhir::operation::SnapshotLimits;
    use gateway::fhir::search::{SortBy, SortKey};
    for b in backends().await {
        let s = b.store.as_ref();
        let mut ids = Vec::new();
        for year in [1950, 1960, 1970, 1980, 1990] {
            let r = json!({"resourceType": "Patient", "name": [{"family": "Sorted"}], "birthDate": format!("{year}-01-01")});
            ids.push(create(s, r).await.id);
        }
        let op = |cursor: Option<String>| {
            permit(Search {
                ty: "Patient".into(),
                criteria: by_family("sorted"),
                count: 2,
                cursor,
                total: true,
                sort: vec![SortKey {
                    by: SortBy::Param {
                        code: "birthdate".into(),
                        ordered: true,
                    },
                    descending: true,
                }],
                snapshot: SnapshotLimits {
                    max_results: 100,
                    ttl_ms: 60_000,
                },
                ..Default::default()
            })
        };
        let first = s.search(&op(None)).await.unwrap();
        let got: Vec<&str> = first.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(got, [ids[4].as_str(), ids[3].as_str()], "{}", b.name);
        assert_eq!(first.total, Some(5), "{}", b.name);
        // The oldest becomes the youngest: it stays where it was in this search's order.
        let moved = json!({"resourceType": "Patient", "name": [{"family": "Sorted"}], "birthDate": "2000-01-01"});
        s.update(&update(&ids[0], moved, None)).await.unwrap();
        let second = s.search(&op(first.next.clone())).await.unwrap();
        let third = s.search(&op(second.next.clone())).await.unwrap();
        let rest: Vec<&str> = second
            .entries
            .iter()
            .chain(&third.entries)
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(
            rest,
            [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()],
            "{}",
            b.name
        );
        assert!(third.next.is_none(), "{}", b.name);
        assert_eq!(
            third.entries[0].version, 2,
            "{}: shown as it is now",
            b.name
        );
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).await.unwrap());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        dir.path().join("gateway.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("INSERT INTO gateway_schema (version) VALUES (999)")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = SqliteStore::open(dir.path())
        .await
        .err()
        .expect("sqlite: newer schema refused");
    assert!(
        err.log_detail().contains("newer than this binary"),
        "{}",
        err.log_detail()
    );

    let schema = common::fresh_schema();
    drop(
        PostgresStore::open(&common::postgres_url(), &common::postgres_config(&schema))
            .await
            .unwrap(),
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&common::postgres_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".gateway_schema (version) VALUES (999)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let err = PostgresStore::open(&common::postgres_url(), &common::postgres_config(&schema))
        .await
        .err()
        .expect("postgres: newer schema refused");
    assert!(
        err.log_detail().contains("newer than this binary"),
        "{}",
        err.log_detail()
    );
}

#[tokio::test]
async fn the_suite_covers_both_backends() {
    let names: Vec<&str> = backends().await.iter().map(|b| b.name).collect();
    assert_eq!(names, vec!["sqlite", "postgres"]);
}

/// An audit record in each of the forms a log holds (see `store::audit_codec`): `i % 3` 0 an
/// event as plain JSON, 1 an event compressed, 2 an access's facts.
fn audit_record(name: &str, i: usize) -> gateway::store::AuditRecord {
    use gateway::store::audit_codec;
    use std::borrow::Cow;
    let id = format!("{name}-{i}");
    let recorded = 1_700_000_000_000 + i as i64;
    let json = format!("{{\"n\":{i}}}");
    let packed = match i % 3 {
        0 => bytes::Bytes::from(json),
        1 => audit_codec::pack(json.as_bytes()),
        _ => audit_codec::pack_facts(&gateway::audit::Facts {
            id: Cow::Borrowed(&id),
            recorded,
            interaction: "read".into(),
            action: "R".into(),
            status: 200,
            peer: "10.0.0.1".into(),
            who: None,
            patients: vec![],
            bsns: vec![],
            entities: vec![format!("Observation/{i}/_history/1").into()],
            query: None,
            emergency: None,
            released: 0,
        }),
    };
    gateway::store::AuditRecord::new(
        id.clone(),
        recorded,
        i.is_multiple_of(2).then(|| "Patient/p1".to_owned()),
        "iss|sub".into(),
        "0".into(),
        packed,
    )
}

/// Audit appends keep one unbroken chain, in order, on every backend, whatever form each
/// record is stored in.
#[tokio::test]
async fn audit_appends_form_one_chain() {
    for b in backends().await {
        let s = b.store.as_ref();
        let record = |i: usize| audit_record(b.name, i);
        for batch in [0..1, 1..4, 4..9] {
            let records: Vec<_> = batch.map(record).collect();
            s.append_audit(&records).await.unwrap();
        }
        let rows = s.scan_audit(0, 100).await.unwrap();
        let ids: Vec<String> = rows.iter().map(|r| r.record.id.clone()).collect();
        assert_eq!(
            ids,
            (0..9)
                .map(|i| format!("{}-{i}", b.name))
                .collect::<Vec<_>>(),
            "{}: chain order",
            b.name
        );
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(
                r.record.packed,
                record(i).packed,
                "{}: stored as written",
                b.name
            );
            let json = r.record.json();
            if i % 3 == 2 {
                let event: serde_json::Value = serde_json::from_slice(&json).unwrap();
                assert_eq!(event["resourceType"], "AuditEvent");
                assert_eq!(event["id"], r.record.id.as_str());
                let what = &event["entity"][0]["what"]["reference"];
                assert_eq!(what, &format!("Observation/{i}/_history/1"), "{}", b.name);
            } else {
                assert_eq!(
                    &json[..],
                    format!("{{\"n\":{i}}}").as_bytes(),
                    "{}: the event reads back as written",
                    b.name
                );
            }
        }
        let v = gateway::audit::verify(s).await.unwrap();
        assert_eq!((v.records, v.broken.len()), (9, 0), "{}", b.name);
        let q = gateway::store::AuditQuery {
            patients: vec!["Patient/p1".into()],
            count: 100,
            ..Default::default()
        };
        assert_eq!(s.search_audit(&q).await.unwrap().len(), 5, "{}", b.name);
    }
}

/// A transaction Bundle's entry number `place` (its `fullUrl`, if any), indexed by the store.
fn write(
    place: usize,
    full_url: Option<&str>,
    permit: gateway::store::TxPermit,
) -> gateway::store::TxWrite {
    gateway::store::TxWrite {
        place: format!("Bundle.entry[{place}]"),
        full_url: full_url.map(str::to_owned),
        permit,
        indexing: None,
        unresolved: true,
    }
}

/// A transaction's writes: one store transaction, references to other entries and conditional
/// references resolved inside it, all or nothing.
#[tokio::test]
async fn transactions_resolve_references_and_are_all_or_nothing() {
    use gateway::store::{Transaction, TxOutcome, TxPermit};
    fn cond(text: &str, bsn: &str) -> (String, Permit<Search>) {
        (
            text.to_owned(),
            permit(Search {
                ty: "Patient".into(),
                criteria: by_bsn(bsn),
                count: 2,
                ..Default::default()
            }),
        )
    }
    let obs = |subject: &str, performer: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": subject}, "performer": [{"reference": performer}]})
    };
    for b in backends().await {
        let s = b.store.as_ref();
        let existing = create(s, patient("999911120")).await;
        let by_ref = "Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911120";
        let tx = Transaction {
            writes: vec![
                write(
                    0,
                    Some("urn:uuid:obs"),
                    TxPermit::Create(permit(Create {
                        ty: "Observation".into(),
                        resource: obs("urn:uuid:new-patient", by_ref),
                        if_none_exist: None,
                        id: None,
                    })),
                ),
                write(
                    1,
                    Some("urn:uuid:new-patient"),
                    TxPermit::Create(permit(Create {
                        ty: "Patient".into(),
                        resource: patient("999911132"),
                        if_none_exist: Some(by_bsn("999911132")),
                        id: None,
                    })),
                ),
            ],
            conditional_refs: vec![cond(by_ref, "999911120")],
            expected: Default::default(),
        };
        let out = s.transaction(tx).await.unwrap();
        let (TxOutcome::Created(Created::New(o)), TxOutcome::Created(Created::New(p))) =
            (&out[0], &out[1])
        else {
            panic!("{}: {out:?}", b.name)
        };
        let o = body(o);
        assert_eq!(
            o["subject"]["reference"],
            format!("Patient/{}", p.id),
            "{}",
            b.name
        );
        assert_eq!(
            o["performer"][0]["reference"],
            format!("Patient/{}", existing.id)
        );

        // The same conditional create again matches; a later failing entry undoes everything.
        let count = |bsn: &'static str| async move {
            s.search(&permit(Search {
                ty: "Patient".into(),
                criteria: by_bsn(bsn),
                count: 10,
                total: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .total
        };
        let failing = Transaction {
            writes: vec![
                write(
                    0,
                    None,
                    TxPermit::Create(permit(Create {
                        ty: "Patient".into(),
                        resource: patient("999911144"),
                        if_none_exist: None,
                        id: None,
                    })),
                ),
                write(
                    1,
                    None,
                    TxPermit::Update(update(&p.id, patient("999911132"), Some(7))),
                ),
            ],
            conditional_refs: vec![],
            expected: Default::default(),
        };
        let err = s.transaction(failing).await.unwrap_err();
        assert_eq!(err.status, 412, "{}", b.name);
        assert!(
            err.log_detail().contains("Bundle.entry[1]"),
            "{}",
            err.log_detail()
        );
        assert_eq!(
            count("999911144").await,
            Some(0),
            "{}: nothing of a failed transaction stays",
            b.name
        );

        // Conditional references: none or several matches fail the transaction.
        create(s, patient("999911156")).await;
        create(s, patient("999911156")).await;
        for (bsn, status) in [("999911168", 404), ("999911156", 412)] {
            let text = format!("Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|{bsn}");
            let t = Transaction {
                writes: vec![write(
                    0,
                    None,
                    TxPermit::Create(permit(Create {
                        ty: "Observation".into(),
                        resource: obs(&text, &text),
                        if_none_exist: None,
                        id: None,
                    })),
                )],
                conditional_refs: vec![cond(&text, bsn)],
                expected: Default::default(),
            };
            assert_eq!(
                s.transaction(t).await.unwrap_err().status,
                status,
                "{}",
                b.name
            );
        }
        // A reference to a urn no entry defines.
        let dangling = Transaction {
            writes: vec![write(
                0,
                None,
                TxPermit::Create(permit(Create {
                    ty: "Observation".into(),
                    resource: obs("urn:uuid:nobody", "urn:uuid:nobody"),
                    if_none_exist: None,
                    id: None,
                })),
            )],
            conditional_refs: vec![],
            expected: Default::default(),
        };
        assert_eq!(s.transaction(dangling).await.unwrap_err().status, 400);
    }
}

/// Transactions written side by side (the SQLite writer commits them in groups, and runs a group
/// again with savepoints when one of its writes fails): each succeeds or fails on its own, a
/// failed one leaves nothing, and a successful one's references point at what it created.
#[tokio::test]
async fn concurrent_transactions_fail_alone() {
    use gateway::store::{Transaction, TxOutcome, TxPermit};
    for b in backends().await {
        let target = create(b.store.as_ref(), patient("999811111")).await;
        let tasks: Vec<_> = (0..40)
            .map(|n| {
                let store = b.store.clone();
                let target = target.id.clone();
                tokio::spawn(async move {
                    let bsn = format!("9999{n:05}");
                    let mut writes = vec![
                        write(
                            0,
                            Some("urn:uuid:obs"),
                            TxPermit::Create(permit(Create {
                                ty: "Observation".into(),
                                resource: json!({"resourceType": "Observation", "status": "final",
                                    "code": {"text": "x"}, "subject": {"reference": "urn:uuid:p"}}),
                                if_none_exist: None,
                                id: None,
                            })),
                        ),
                        write(
                            1,
                            Some("urn:uuid:p"),
                            TxPermit::Create(permit(Create {
                                ty: "Patient".into(),
                                resource: patient(&bsn),
                                if_none_exist: None,
                                id: None,
                            })),
                        ),
                    ];
                    // Every third fails on its last entry, after its creates were written.
                    if n % 3 == 0 {
                        writes.push(write(
                            2,
                            None,
                            TxPermit::Update(update(&target, patient("999811111"), Some(9))),
                        ));
                    }
                    let t = Transaction {
                        writes,
                        conditional_refs: vec![],
                        expected: Default::default(),
                    };
                    (n, bsn, store.transaction(t).await)
                })
            })
            .collect();
        let s = b.store.as_ref();
        for task in tasks {
            let (n, bsn, out) = task.await.unwrap();
            let found = s
                .search(&permit(Search {
                    ty: "Patient".into(),
                    criteria: by_bsn(&bsn),
                    count: 10,
                    total: true,
                    ..Default::default()
                }))
                .await
                .unwrap();
            if n % 3 == 0 {
                assert_eq!(out.unwrap_err().status, 412, "{}: {n}", b.name);
                assert_eq!(found.total, Some(0), "{}: {n} left a Patient", b.name);
                continue;
            }
            let out = out.unwrap();
            let (TxOutcome::Created(Created::New(o)), TxOutcome::Created(Created::New(p))) =
                (&out[0], &out[1])
            else {
                panic!("{}: {out:?}", b.name)
            };
            assert_eq!(found.total, Some(1), "{}: {n}", b.name);
            assert_eq!(
                body(o)["subject"]["reference"],
                format!("Patient/{}", p.id),
                "{}: {n}",
                b.name
            );
        }
        let unchanged = s
            .read(&permit(Read {
                ty: "Patient".into(),
                id: target.id.clone(),
            }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(unchanged.version, 1, "{}", b.name);
    }
}

//! The advisory locks a PostgreSQL write takes before it reads, so that "read, then write" is
//! atomic across replicas.
//!
//! - A write to a known resource (by id) locks that resource.
//! - A conditional write (`If-None-Exist`, conditional update or delete) searches, then writes
//!   when nothing (or one) matched. Another conditional write must not create or change a
//!   matching resource in between.
//!
//! Why not one lock per type: every conditional write of a type waited for the one before to
//! commit. An HL7 v2 feed writes each message's Patient and Encounter conditionally (by the
//! hospital's own numbers), so at 8 connections the messages went through one at a time:
//! 165 acknowledged/s, most connections waiting on this lock.
//!
//! So a conditional write whose criteria require an identifier value (`identifier=x` or
//! `identifier=s|x`, any of a comma list) locks those values:
//! - **criteria values: exclusive.** Two writes with the same criteria wait for each other.
//! - **the identifier values of the resource it writes: shared.** A write whose criteria that
//!   resource would match waits for it: a resource matches such criteria only if it holds one of
//!   their values, and that write holds those exclusively.
//! - **the type: shared.** A conditional write whose criteria name no identifier value locks the
//!   type exclusively, as before, and so still waits for every other conditional write of the
//!   type, and they for it.
//!
//! Keys are the value alone (any system) in lower case: equal whenever the search would find a
//! match, never finer. A transaction takes all its entries' locks at once, in one order (the
//! key, exclusive before shared), before it reads anything, so two transactions never each hold
//! a lock the other waits for. Writes that are not conditional (a plain create, an update by id)
//! take no conditional lock, as before.

use super::sql::Indexing;
use crate::fhir::operation::Target;
use crate::fhir::search::Criteria;
use serde_json::Value;

/// One advisory lock, by its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lock {
    pub key: String,
    /// Sorts after the exclusive lock on the same key, which is the one kept.
    pub shared: bool,
}

impl Lock {
    fn exclusive(key: String) -> Lock {
        Lock { key, shared: false }
    }
    fn shared(key: String) -> Lock {
        Lock { key, shared: true }
    }
}

/// What one write is about, for its locks.
pub enum Write<'a> {
    /// A conditional create: its criteria and the resource.
    Create(&'a str, &'a Criteria, &'a Value, Option<&'a Indexing>),
    /// An update: the target and the resource.
    Update(&'a str, &'a Target, &'a Value, Option<&'a Indexing>),
    Delete(&'a str, &'a Target),
}

impl Write<'_> {
    /// The criteria the write searches with, if it is conditional.
    pub fn criteria(&self) -> Option<&Criteria> {
        match self {
            Write::Create(_, c, ..) => Some(c),
            Write::Update(_, Target::Criteria(c), ..) | Write::Delete(_, Target::Criteria(c)) => {
                Some(c)
            }
            Write::Update(_, Target::Id(_), ..) | Write::Delete(_, Target::Id(_)) => None,
        }
    }
}

/// Every lock of `writes`, each key once (exclusive when some write needs it so), in the order
/// they are to be taken.
pub fn locks(writes: &[Write<'_>]) -> Vec<Lock> {
    let mut all: Vec<Lock> = writes.iter().flat_map(of).collect();
    all.sort();
    // Exclusive sorts first: the shared lock on the same key is dropped.
    all.dedup_by(|later, first| later.key == first.key);
    all
}

fn of(write: &Write<'_>) -> Vec<Lock> {
    match write {
        Write::Create(ty, criteria, resource, indexing) => {
            conditional(ty, criteria, Some((resource, *indexing)))
        }
        Write::Update(ty, Target::Criteria(c), resource, indexing) => {
            conditional(ty, c, Some((resource, *indexing)))
        }
        Write::Update(ty, Target::Id(id), ..) | Write::Delete(ty, Target::Id(id)) => {
            vec![Lock::exclusive(format!("resource/{ty}/{id}"))]
        }
        Write::Delete(ty, Target::Criteria(c)) => conditional(ty, c, None),
    }
}

fn conditional(
    ty: &str,
    criteria: &Criteria,
    written: Option<(&Value, Option<&Indexing>)>,
) -> Vec<Lock> {
    let whole_type = format!("conditional/{ty}");
    // An occurrence of `identifier` whose alternatives all have a value: a match holds one of
    // them. (`identifier=s|` matches any value of a system.)
    let required: Vec<&str> = criteria
        .identifiers
        .iter()
        .filter(|ors| !ors.is_empty() && ors.iter().all(|t| t.value.is_some()))
        .flatten()
        .filter_map(|t| t.value.as_deref())
        .collect();
    if required.is_empty() {
        return vec![Lock::exclusive(whole_type)];
    }
    let mut locks = vec![Lock::shared(whole_type)];
    locks.extend(required.iter().map(|v| Lock::exclusive(value_key(ty, v))));
    if let Some((resource, indexing)) = written {
        let computed;
        let indexing = match indexing {
            Some(ix) => ix,
            None => {
                computed = Indexing::of(ty, resource);
                &computed
            }
        };
        locks.extend(
            indexing
                .identifier_values()
                .map(|v| Lock::shared(value_key(ty, v))),
        );
    }
    locks
}

fn value_key(ty: &str, value: &str) -> String {
    format!("conditional/{ty}/identifier/{}", value.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::search::Token;
    use serde_json::json;

    fn by_identifier(values: &[&str]) -> Criteria {
        Criteria {
            identifiers: vec![
                values
                    .iter()
                    .map(|v| Token {
                        system: Some("http://hospital/pid".into()),
                        value: Some((*v).into()),
                    })
                    .collect(),
            ],
            ..Default::default()
        }
    }

    fn patient(ids: &[&str]) -> Value {
        json!({"resourceType": "Patient", "identifier": ids.iter().map(|v| json!({"system": "http://hospital/pid", "value": v})).collect::<Vec<_>>()})
    }

    /// Whether two writes' locks conflict (one of them exclusive on a key both lock).
    fn conflict(a: &Write<'_>, b: &Write<'_>) -> bool {
        let (a, b) = (
            locks(std::slice::from_ref(a)),
            locks(std::slice::from_ref(b)),
        );
        a.iter()
            .any(|x| b.iter().any(|y| x.key == y.key && !(x.shared && y.shared)))
    }

    #[test]
    fn conditional_writes_on_other_patients_do_not_wait_for_each_other() {
        let (c1, c2) = (by_identifier(&["L1"]), by_identifier(&["L2"]));
        // The two records share a BSN: a resource identifier is locked shared only.
        let (r1, r2) = (patient(&["L1", "999911120"]), patient(&["L2", "999911120"]));
        let a = Write::Update("Patient", &Target::Criteria(c1), &r1, None);
        let b = Write::Update("Patient", &Target::Criteria(c2), &r2, None);
        assert!(!conflict(&a, &b));
    }

    #[test]
    fn conditional_writes_that_could_match_each_other_wait() {
        let c1 = by_identifier(&["L1"]);
        let r1 = patient(&["L1"]);
        let a = Write::Create("Patient", &c1, &r1, None);
        // The same criteria.
        let same = by_identifier(&["l1"]);
        assert!(conflict(&a, &Write::Create("Patient", &same, &r1, None)));
        // Other criteria, but it writes a resource that `a`'s criteria match.
        let c2 = by_identifier(&["L2"]);
        let r2 = patient(&["L2", "L1"]);
        assert!(conflict(&a, &Write::Create("Patient", &c2, &r2, None)));
        // Criteria without an identifier value wait for every conditional write of the type.
        let any = Criteria {
            identifiers: vec![vec![Token {
                system: Some("http://hospital/pid".into()),
                value: None,
            }]],
            ..Default::default()
        };
        assert!(conflict(
            &a,
            &Write::Delete("Patient", &Target::Criteria(any.clone()))
        ));
        assert!(conflict(
            &Write::Delete("Patient", &Target::Criteria(any.clone())),
            &Write::Delete("Patient", &Target::Criteria(any))
        ));
        // Another type does not.
        assert!(!conflict(&a, &Write::Create("Encounter", &c1, &r1, None)));
    }

    #[test]
    fn a_transaction_takes_each_key_once_in_one_order() {
        let c1 = by_identifier(&["L1"]);
        let r1 = patient(&["L1", "B"]);
        let c2 = by_identifier(&["B"]);
        let r2 = patient(&["B"]);
        let all = locks(&[
            Write::Update("Patient", &Target::Criteria(c1), &r1, None),
            Write::Create("Patient", &c2, &r2, None),
            Write::Update("Basic", &Target::Id("r1".into()), &r2, None),
        ]);
        let shown: Vec<(&str, bool)> = all.iter().map(|l| (l.key.as_str(), l.shared)).collect();
        assert_eq!(
            shown,
            vec![
                ("conditional/Patient", true),
                ("conditional/Patient/identifier/b", false),
                ("conditional/Patient/identifier/l1", false),
                ("resource/Basic/r1", false),
            ]
        );
    }
}

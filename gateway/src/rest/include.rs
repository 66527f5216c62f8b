//! `_include` and `_revinclude` (with `:iterate` and `*`).
//!
//! Included resources are fetched like any other: each read or search is an operation the policy
//! must authorize for this principal (a type the token may not read is skipped, never an error
//! that would reveal it exists), and what comes back passes the same disclosure as the matches.
//! Only disclosed matches are followed, so a withheld match cannot leak through what it references.

use crate::app::App;
use crate::error::Result;
use crate::fhir::operation::{Include, Read, Search};
use crate::fhir::search::{Clause, ClauseKind, Criteria, Pred};
use crate::fhir::search_index;
use crate::fhir::search_params::{self, Kind};
use crate::policy::scopes::Permission;
use crate::policy::{Asked, Disclosed, Principal};
use crate::store::Stored;
use serde_json::Value;
use std::collections::HashSet;

/// How many rounds `:iterate` follows beyond the first.
const MAX_ITERATIONS: usize = 3;

/// The resources the includes add to a page of disclosed matches, at most `limit`.
pub async fn gather(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    matches: &[Disclosed<Stored>],
    includes: &[Include],
    limit: usize,
) -> Result<Vec<Disclosed<Stored>>> {
    let mut seen: HashSet<(String, String)> = matches
        .iter()
        .map(|d| (d.get().ty.clone(), d.get().id.clone()))
        .collect();
    let mut out: Vec<Disclosed<Stored>> = Vec::new();
    let mut frontier: Vec<Stored> = matches.iter().map(|d| d.get().clone()).collect();
    for round in 0..=MAX_ITERATIONS {
        let active: Vec<&Include> = includes
            .iter()
            .filter(|i| round == 0 || i.iterate)
            .collect();
        if active.is_empty() || frontier.is_empty() || out.len() >= limit {
            break;
        }
        let mut found: Vec<Stored> = Vec::new();
        for inc in active {
            let batch = if inc.reverse {
                referencing(app, principal, inc, &frontier, limit).await?
            } else {
                referenced(app, principal, inc, &frontier).await?
            };
            for s in batch {
                if seen.insert((s.ty.clone(), s.id.clone())) {
                    found.push(s);
                }
            }
        }
        let how = Permission::Read;
        let disclosed = app
            .policy
            .disclose_each(principal, asked, found, how)
            .await?;
        frontier = disclosed.entries.iter().map(|d| d.get().clone()).collect();
        out.extend(disclosed.entries);
    }
    out.truncate(limit);
    Ok(out)
}

/// Reference parameters of `source` that the include names (`*`: all of them).
fn params(inc: &Include) -> Vec<&str> {
    if inc.param != "*" {
        return vec![inc.param.as_str()];
    }
    search_params::indexed(&inc.source)
        .filter(|d| d.kind == Kind::Reference)
        .map(|d| d.code.as_str())
        .collect()
}

/// `Type/id` references of `s` through the include's parameters, restricted to its target type.
fn references(inc: &Include, s: &Stored) -> Vec<(String, String)> {
    let Some(body) = s.body.as_ref() else {
        return Vec::new();
    };
    let Ok(resource) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let wanted = params(inc);
    search_index::entries(&s.ty, &resource)
        .into_iter()
        .filter(|e| wanted.contains(&e.param.as_str()) && !e.value.is_empty())
        .filter_map(|e| {
            // Relative references only: an absolute URL names another server.
            let (ty, id) = e.value.split_once('/')?;
            let relative = !id.contains('/') && ty.starts_with(|c: char| c.is_ascii_uppercase());
            let target_ok = inc.target.as_deref().is_none_or(|t| t == ty);
            (relative && target_ok).then(|| (ty.to_owned(), id.to_owned()))
        })
        .collect()
}

async fn referenced(
    app: &App,
    principal: &Principal,
    inc: &Include,
    frontier: &[Stored],
) -> Result<Vec<Stored>> {
    let mut out = Vec::new();
    let mut asked_for = HashSet::new();
    for s in frontier.iter().filter(|s| s.ty == inc.source) {
        for (ty, id) in references(inc, s) {
            if !asked_for.insert((ty.clone(), id.clone())) {
                continue;
            }
            // Not allowed to read that type: it is simply not included.
            let Ok(permit) = app.policy.authorize(principal, Read { ty, id }) else {
                continue;
            };
            let found = if app.federation.holds(&permit.op().id) {
                // A backend that fails leaves its resource out of the includes; the matches
                // are still answered.
                app.federation.read(&permit).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e.log_detail(), "include from a backend failed");
                    None
                })
            } else {
                app.store.read(&permit).await?
            };
            if let Some(found) = found
                && !found.is_deleted()
            {
                out.push(found);
            }
        }
    }
    Ok(out)
}

async fn referencing(
    app: &App,
    principal: &Principal,
    inc: &Include,
    frontier: &[Stored],
    limit: usize,
) -> Result<Vec<Stored>> {
    let targets: Vec<String> = frontier
        .iter()
        .filter(|s| inc.target.as_deref().is_none_or(|t| t == s.ty))
        .map(|s| format!("{}/{}", s.ty, s.id))
        .collect();
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for param in params(inc) {
        let op = Search {
            ty: inc.source.clone(),
            criteria: Criteria {
                clauses: vec![Clause {
                    param: param.to_owned(),
                    how: ClauseKind::Any(vec![Pred::Reference(targets.clone())]),
                }],
                compartment: app.policy.search_compartment(principal, &inc.source),
                ..Default::default()
            },
            count: limit as u32,
            cursor: None,
            applied: Vec::new(),
            audit: None,
            includes: Vec::new(),
            total: false,
            subset: None,
            ..Default::default()
        };
        let Ok(permit) = app.policy.authorize(principal, op) else {
            return Ok(Vec::new());
        };
        out.extend(app.store.search(&permit).await?.entries);
    }
    Ok(out)
}

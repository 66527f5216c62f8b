//! Randomized access matrix: random principals (SMART scope sets, with and without patient
//! context and constraints) send random requests over every path that exists (read, vread,
//! search, instance/type/system history, create, AuditEvent search). Each answer is compared with
//! an oracle written here from the SMART App Launch v2 rules, independent of the gateway's code.
//! A leak is a resource in an answer that the oracle says the principal may not see.

mod common;

use common::{FHIR_JSON, Gateway, client, client_with, token};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// A small deterministic generator, so a failure can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// The oracle's model of a scope.
#[derive(Debug, Clone)]
struct OScope {
    patient_ctx: bool,
    ty: Option<String>,
    perms: String,
    /// (param, system, code)
    constraints: Vec<(String, Option<String>, String)>,
}

fn oscope(s: &str) -> OScope {
    let (ctx, rest) = s.split_once('/').unwrap();
    let (head, q) = rest
        .split_once('?')
        .map(|(h, q)| (h, Some(q)))
        .unwrap_or((rest, None));
    let (ty, perms) = head.rsplit_once('.').unwrap();
    let perms = match perms {
        "read" => "rs",
        "write" => "cud",
        "*" => "cruds",
        p => p,
    };
    let constraints = q
        .map(|q| {
            q.split('&')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    match v.split_once('|') {
                        Some((s, c)) => (k.to_owned(), Some(s.to_owned()), c.to_owned()),
                        None => (k.to_owned(), None, v.to_owned()),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    OScope {
        patient_ctx: ctx == "patient",
        ty: (ty != "*").then(|| ty.to_owned()),
        perms: perms.to_owned(),
        constraints,
    }
}

struct Who {
    token: String,
    scopes: Vec<OScope>,
    patient: Option<String>,
}

impl Who {
    fn scope_usable(&self, s: &OScope, perm: char) -> bool {
        !s.patient_ctx || (self.patient.is_some() && (perm == 'r' || perm == 's'))
    }
    /// May the principal perform `perm` on type `ty` at all?
    fn authorized(&self, ty: &str, perm: char) -> bool {
        self.scopes.iter().any(|s| {
            s.ty.as_deref().is_none_or(|t| t == ty)
                && s.perms.contains(perm)
                && self.scope_usable(s, perm)
        })
    }
    fn authorized_all_types(&self, perm: char) -> bool {
        self.scopes
            .iter()
            .any(|s| s.ty.is_none() && s.perms.contains(perm) && self.scope_usable(s, perm))
    }
    /// May this resource leave the server for this principal?
    fn visible(&self, r: &Res, perm: char) -> bool {
        self.scopes.iter().any(|s| {
            s.ty.as_deref().is_none_or(|t| t == r.ty)
                && s.perms.contains(perm)
                && self.scope_usable(s, perm)
                && (!s.patient_ctx || (r.patient.is_some() && r.patient == self.patient))
                && s.constraints.iter().all(|(param, system, code)| {
                    param == "category"
                        && r.category
                            .iter()
                            .any(|(sys, c)| c == code && system.as_ref().is_none_or(|s| s == sys))
                })
        })
    }
}

#[derive(Debug, Clone)]
struct Res {
    ty: String,
    id: String,
    category: Vec<(String, String)>,
    /// The patient whose compartment holds it (its subject, or itself for a Patient).
    patient: Option<String>,
}

const SCOPES: &[&str] = &[
    "system/*.cruds",
    "system/*.rs",
    "user/*.r",
    "user/Patient.rs",
    "user/Patient.r",
    "user/Observation.rs",
    "user/Observation.read",
    "user/Observation.s",
    "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
    "user/Observation.rs?category=vital-signs",
    "user/Condition.r",
    "system/Encounter.s",
    "system/Encounter.rs",
    "user/Basic.c",
    "user/Basic.write",
    "system/Basic.cruds",
    "patient/Patient.rs",
    "patient/Patient.r",
    "patient/*.rs",
    "patient/Observation.rs",
    "patient/Basic.c",
    "system/AuditEvent.rs",
    "patient/AuditEvent.rs",
    "user/Organization.rs",
];

const TYPES: &[&str] = &[
    "Patient",
    "Observation",
    "Condition",
    "Encounter",
    "Organization",
    "Basic",
];

fn entries(b: &Value) -> Vec<(String, String)> {
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["resource"]["resourceType"].as_str()?.to_owned(),
                e["resource"]["id"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_access_matrix_has_no_leaks() {
    let seed = std::env::var("ACCESS_MATRIX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026_u64);
    let mut rng = Rng(seed);
    let gw = Gateway::start();
    let admin = client();
    let b = gw.base.clone();
    let post = |ty: &'static str, body: Value| {
        let (admin, b) = (admin.clone(), b.clone());
        async move {
            let v: Value = admin
                .post(format!("{b}/{ty}"))
                .header("content-type", FHIR_JSON)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["id"].as_str().unwrap().to_owned()
        }
    };

    // The data set, known to the oracle.
    let mut all: Vec<Res> = Vec::new();
    let mut patients = Vec::new();
    for i in 0..4 {
        let id = post(
            "Patient",
            json!({"resourceType": "Patient", "name": [{"family": format!("P{i}")}]}),
        )
        .await;
        all.push(Res {
            ty: "Patient".into(),
            id: id.clone(),
            category: vec![],
            patient: Some(id.clone()),
        });
        patients.push(id);
    }
    for p in &patients {
        for (sys, code) in [
            (CATEGORY, "laboratory"),
            (CATEGORY, "vital-signs"),
            ("urn:other", "laboratory"),
        ] {
            let id = post(
                "Observation",
                json!({"resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": sys, "code": code}]}], "code": {"text": code},
                "subject": {"reference": format!("Patient/{p}")}}),
            )
            .await;
            all.push(Res {
                ty: "Observation".into(),
                id,
                category: vec![(sys.into(), code.into())],
                patient: Some(p.clone()),
            });
        }
        let id = post(
            "Condition",
            json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{p}")}}),
        )
        .await;
        all.push(Res {
            ty: "Condition".into(),
            id,
            category: vec![],
            patient: Some(p.clone()),
        });
        let id = post(
            "Encounter",
            json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": format!("Patient/{p}")}}),
        )
        .await;
        all.push(Res {
            ty: "Encounter".into(),
            id,
            category: vec![],
            patient: Some(p.clone()),
        });
    }
    let id = post(
        "Organization",
        json!({"resourceType": "Organization", "name": "X"}),
    )
    .await;
    all.push(Res {
        ty: "Organization".into(),
        id,
        category: vec![],
        patient: None,
    });

    // Random principals.
    let orgs = ["umcu", "antonius", "gp", "vvt", "youth", "utrecht", "ggd"];
    let mut principals = Vec::new();
    for _ in 0..40 {
        let n = 1 + rng.below(3);
        let scopes: Vec<&str> = (0..n).map(|_| *rng.pick(SCOPES)).collect();
        let patient = if rng.below(4) == 0 {
            None
        } else {
            Some(rng.pick(&patients).clone())
        };
        let scope_claim = scopes.join(" ");
        principals.push(Who {
            token: token(
                &scope_claim,
                orgs[rng.below(orgs.len())],
                patient.as_deref(),
            ),
            scopes: scopes.iter().map(|s| oscope(s)).collect(),
            patient,
        });
    }

    let mut requests = 0;
    let mut leaks = Vec::new();
    let mut mismatches = Vec::new();
    for who in &principals {
        let c = client_with(&who.token);
        for _ in 0..30 {
            requests += 1;
            let ty = *rng.pick(TYPES);
            let of_type: Vec<&Res> = all.iter().filter(|r| r.ty == ty).collect();
            match rng.below(7) {
                // read (existing or unknown id)
                0 | 1 => {
                    let target = if of_type.is_empty() || rng.below(5) == 0 {
                        None
                    } else {
                        Some(*rng.pick(&of_type))
                    };
                    let id = target
                        .map(|r| r.id.clone())
                        .unwrap_or_else(|| "no-such-id".into());
                    let vread = rng.below(2) == 0;
                    let url = if vread {
                        format!("{b}/{ty}/{id}/_history/1")
                    } else {
                        format!("{b}/{ty}/{id}")
                    };
                    let r = c.get(&url).send().await.unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let expected = if !who.authorized(ty, 'r') {
                        403
                    } else if target.is_some_and(|t| who.visible(t, 'r')) {
                        200
                    } else {
                        404
                    };
                    if status == 200 && !target.is_some_and(|t| who.visible(t, 'r')) {
                        leaks.push(format!("read {url}: {body}"));
                    }
                    if status != expected {
                        mismatches.push(format!("read {url} scopes {:?} patient {:?}: got {status}, expected {expected}", who.scopes, who.patient));
                    }
                }
                // search / type history
                2 | 3 => {
                    let history = rng.below(2) == 0;
                    let url = if history {
                        format!("{b}/{ty}/_history?_count=1000")
                    } else {
                        format!("{b}/{ty}?_count=1000")
                    };
                    let r = c.get(&url).send().await.unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    if !who.authorized(ty, 's') {
                        if status != 403 {
                            mismatches.push(format!("{url}: got {status}, expected 403"));
                        }
                        if !entries(&body).is_empty() {
                            leaks.push(format!("{url}: entries in a refused answer"));
                        }
                        continue;
                    }
                    let expected: BTreeSet<(String, String)> = all
                        .iter()
                        .filter(|r| r.ty == ty && who.visible(r, 's'))
                        .map(|r| (r.ty.clone(), r.id.clone()))
                        .collect();
                    let got: BTreeSet<(String, String)> = entries(&body).into_iter().collect();
                    for x in got.difference(&expected) {
                        leaks.push(format!("{url} scopes {:?}: {x:?}", who.scopes));
                    }
                    if got != expected || status != 200 {
                        mismatches.push(format!(
                            "{url} scopes {:?}: got {status} {} entries, expected {}",
                            who.scopes,
                            got.len(),
                            expected.len()
                        ));
                    }
                }
                // instance history
                4 => {
                    let Some(target) = (!of_type.is_empty()).then(|| *rng.pick(&of_type)) else {
                        continue;
                    };
                    let url = format!("{b}/{ty}/{}/_history", target.id);
                    let r = c.get(&url).send().await.unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let got = entries(&body);
                    let visible = who.authorized(ty, 'r') && who.visible(target, 'r');
                    if !got.is_empty() && !visible {
                        leaks.push(format!("{url}: {got:?}"));
                    }
                    let expected_status = if who.authorized(ty, 'r') { 200 } else { 403 };
                    if status != expected_status || (visible && got.is_empty()) {
                        mismatches.push(format!("{url}: got {status} with {} entries", got.len()));
                    }
                }
                // system history
                5 => {
                    let url = format!("{b}/_history?_count=1000");
                    let r = c.get(&url).send().await.unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let got: BTreeSet<(String, String)> = entries(&body).into_iter().collect();
                    if !who.authorized_all_types('s') {
                        if status != 403 || !got.is_empty() {
                            mismatches.push(format!("{url}: got {status}"));
                        }
                        continue;
                    }
                    let expected: BTreeSet<(String, String)> = all
                        .iter()
                        .filter(|r| who.visible(r, 's'))
                        .map(|r| (r.ty.clone(), r.id.clone()))
                        .collect();
                    for x in got.difference(&expected) {
                        leaks.push(format!("{url} scopes {:?}: {x:?}", who.scopes));
                    }
                    if got != expected {
                        mismatches.push(format!(
                            "{url} scopes {:?}: {} entries, expected {}",
                            who.scopes,
                            got.len(),
                            expected.len()
                        ));
                    }
                }
                // create (a Basic, so the clinical data set stays as the oracle knows it)
                _ => {
                    let r = c
                        .post(format!("{b}/Basic"))
                        .header("content-type", FHIR_JSON)
                        .body(
                            json!({"resourceType": "Basic", "code": {"text": "matrix"}})
                                .to_string(),
                        )
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let location = r
                        .headers()
                        .get("location")
                        .map(|l| l.to_str().unwrap().to_owned());
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let expected = if who.authorized("Basic", 'c') {
                        201
                    } else {
                        403
                    };
                    if status != expected {
                        mismatches.push(format!(
                            "create Basic scopes {:?}: got {status}, expected {expected}",
                            who.scopes
                        ));
                    }
                    if status == 201 {
                        let id = location
                            .unwrap()
                            .split('/')
                            .rev()
                            .nth(2)
                            .unwrap()
                            .to_owned();
                        let res = Res {
                            ty: "Basic".into(),
                            id,
                            category: vec![],
                            patient: None,
                        };
                        if body["resourceType"] == "Basic" && !who.visible(&res, 'r') {
                            leaks.push(format!(
                                "create Basic returned the body to {:?}",
                                who.scopes
                            ));
                        }
                        all.push(res);
                    }
                }
            }
        }
        // The audit log, as this principal sees it.
        requests += 1;
        let r = c
            .get(format!("{b}/AuditEvent?_count=1000"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let audit_scope = |s: &OScope| {
            s.ty.as_deref().is_none_or(|t| t == "AuditEvent")
                && s.perms.contains('s')
                && who.scope_usable(s, 's')
        };
        let full = who
            .scopes
            .iter()
            .any(|s| audit_scope(s) && !s.patient_ctx && s.constraints.is_empty());
        let own = who.scopes.iter().any(|s| audit_scope(s) && s.patient_ctx);
        if !full && !own {
            if status != 403 {
                mismatches.push(format!(
                    "AuditEvent search {:?}: got {status}, expected 403",
                    who.scopes
                ));
            }
        } else if !full {
            let me = format!("Patient/{}", who.patient.as_ref().unwrap());
            for e in body["entry"].as_array().into_iter().flatten() {
                let concerns = e["resource"]["entity"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x["what"]["reference"] == me.as_str());
                if !concerns {
                    leaks.push(format!(
                        "AuditEvent not about {me} shown to {:?}",
                        who.scopes
                    ));
                }
            }
        }
    }
    let by_kind: BTreeMap<&str, usize> = mismatches.iter().fold(BTreeMap::new(), |mut m, x| {
        *m.entry(x.split(' ').next().unwrap_or("")).or_default() += 1;
        m
    });
    println!(
        "access matrix (seed {seed:#x}): {requests} requests by {} principals; leaks = {}; mismatches = {} {by_kind:?}",
        principals.len(),
        leaks.len(),
        mismatches.len()
    );
    for l in leaks.iter().take(10) {
        println!("  LEAK {l}");
    }
    for m in mismatches.iter().take(10) {
        println!("  MISMATCH {m}");
    }
    assert!(requests >= 1000);
    assert!(leaks.is_empty(), "{} leaks", leaks.len());
    assert!(mismatches.is_empty(), "{} mismatches", mismatches.len());
}

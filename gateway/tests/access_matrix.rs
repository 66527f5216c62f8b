//! Randomized access matrix: seven organisations hold data (each resource is written by one of
//! them), patients carry random FHIR Consents (nested permit/deny provisions naming organisations
//! or organisation types, data categories and resource types), and random principals (SMART
//! scope sets, with and without patient context, constraints and fhirUser, from any organisation,
//! sometimes invoking break-the-glass) send random requests over every path that exists (read,
//! vread, search, instance/type/system history, create, AuditEvent search). Each answer is
//! compared with an oracle written here from the SMART App Launch v2 rules, the region's consent
//! rules and the Mitz decision rule, independent of the gateway's code. A leak is a resource in
//! an answer that the oracle says the principal may not see.

mod common;

use common::{FHIR_JSON, Gateway, client_with, token};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How often the oracle's verdict came from a consent permit, a consent deny, or no consent.
static CONSENT_PERMITS: AtomicUsize = AtomicUsize::new(0);
static CONSENT_DENIES: AtomicUsize = AtomicUsize::new(0);
static NO_CONSENT: AtomicUsize = AtomicUsize::new(0);

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

/// The demo organisations as the oracle knows them: (short name, identifier system, value, type).
const ORGS: &[(&str, &str, &str, &str)] = &[
    ("umcu", URA, "90000001", "hospital"),
    ("antonius", URA, "90000002", "hospital"),
    ("gp", URA, "90000003", "gp"),
    ("vvt", URA, "90000004", "vvt"),
    (
        "youth",
        "http://fhir.nl/fhir/NamingSystem/agb-z",
        "90000005",
        "youth-care",
    ),
    (
        "utrecht",
        "urn:healthhub-utrecht:cbs-gemeentecode",
        "0344",
        "municipality",
    ),
    ("ggd", URA, "90000006", "ggd"),
];
const BSNS: [&str; 6] = [
    "999911107",
    "999911119",
    "999911120",
    "999911132",
    "999911144",
    "999911156",
];
const URA: &str = "http://fhir.nl/fhir/NamingSystem/ura";
const ORG_TYPE: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/organization-type";
const DATA_CATEGORY: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/data-category";
/// Types shared by scope alone (the region's default `consent.administrative_types`).
const ADMINISTRATIVE: &[&str] = &[
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Endpoint",
    "HealthcareService",
    "RelatedPerson",
    "AuditEvent",
];

/// The oracle's model of a consent provision.
#[derive(Debug, Clone)]
enum Actor {
    Org(usize),
    Kind(&'static str),
}

#[derive(Debug, Clone)]
struct Prov {
    permit: bool,
    actor: Option<Actor>,
    lab: bool,
    class: Option<&'static str>,
    children: Vec<Prov>,
}

impl Prov {
    fn random(rng: &mut Rng, depth: u32) -> Prov {
        let actor = match rng.below(4) {
            0 => Some(Actor::Org(rng.below(ORGS.len()))),
            1 => Some(Actor::Kind(ORGS[rng.below(ORGS.len())].3)),
            _ => None,
        };
        let n = if depth >= 2 {
            0
        } else {
            rng.below(3 - depth as usize)
        };
        Prov {
            permit: rng.below(2) == 0,
            actor,
            lab: rng.below(4) == 0,
            class: (rng.below(5) == 0)
                .then(|| *rng.pick(&["Observation", "Condition", "Encounter"])),
            children: (0..n).map(|_| Prov::random(rng, depth + 1)).collect(),
        }
    }

    fn json(&self) -> Value {
        let mut p = json!({"type": if self.permit { "permit" } else { "deny" }});
        match &self.actor {
            Some(Actor::Org(i)) => {
                p["actor"] = json!([{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                    "reference": {"identifier": {"system": ORGS[*i].1, "value": ORGS[*i].2}}}])
            }
            Some(Actor::Kind(k)) => {
                p["actor"] = json!([{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                    "reference": {"identifier": {"system": ORG_TYPE, "value": k}}}])
            }
            None => {}
        }
        if self.lab {
            p["securityLabel"] = json!([{"system": DATA_CATEGORY, "code": "lab"}]);
        }
        if let Some(c) = self.class {
            p["class"] = json!([{"system": "http://hl7.org/fhir/resource-types", "code": c}]);
        }
        if !self.children.is_empty() {
            p["provision"] = Value::Array(self.children.iter().map(Prov::json).collect());
        }
        p
    }

    /// Every provision that applies to (org, resource), as (permit, weight, depth); a nested
    /// provision carries its ancestors' conditions.
    fn applying(
        &self,
        org: usize,
        r: &Res,
        inherited: (bool, u32, bool, bool),
        depth: u32,
        out: &mut Vec<(bool, u32, u32)>,
    ) {
        let (mut ok, mut actor_w, mut has_lab, mut has_class) = inherited;
        if let Some(a) = &self.actor {
            let (matches, w) = match a {
                Actor::Org(i) => (*i == org, 2),
                Actor::Kind(k) => (ORGS[org].3 == *k, 1),
            };
            ok &= matches;
            actor_w = actor_w.max(w);
        }
        if self.lab {
            ok &= r.lab();
            has_lab = true;
        }
        if let Some(c) = self.class {
            ok &= r.ty == c;
            has_class = true;
        }
        if ok {
            out.push((
                self.permit,
                actor_w + u32::from(has_lab) + u32::from(has_class),
                depth,
            ));
        }
        for c in &self.children {
            c.applying(org, r, (ok, actor_w, has_lab, has_class), depth + 1, out);
        }
    }
}

/// The Mitz rule over all of a patient's consents: the most specific applying provision wins
/// (weight, then depth), a deny wins a tie; nothing applying is `None`.
fn consent_permits(consents: &[Prov], org: usize, r: &Res) -> Option<bool> {
    let mut all = Vec::new();
    for c in consents {
        c.applying(org, r, (true, 0, false, false), 0, &mut all);
    }
    let best = all.iter().map(|(_, w, d)| (*w, *d)).max()?;
    Some(
        all.iter()
            .filter(|(_, w, d)| (*w, *d) == best)
            .all(|(permit, _, _)| *permit),
    )
}

struct Who {
    token: String,
    scopes: Vec<OScope>,
    patient: Option<String>,
    org: usize,
    /// fhirUser names the patient in context: the patient themselves.
    is_patient: bool,
}

impl Who {
    fn scope_usable(&self, s: &OScope) -> bool {
        !s.patient_ctx || self.patient.is_some()
    }
    /// May the principal perform `perm` on type `ty` at all?
    fn authorized(&self, ty: &str, perm: char) -> bool {
        self.scopes.iter().any(|s| {
            s.ty.as_deref().is_none_or(|t| t == ty)
                && s.perms.contains(perm)
                && self.scope_usable(s)
        })
    }
    /// May it write a resource of `ty` outside any patient's compartment?
    fn may_write_unattached(&self, ty: &str, perm: char) -> bool {
        self.scopes.iter().any(|s| {
            !s.patient_ctx && s.ty.as_deref().is_none_or(|t| t == ty) && s.perms.contains(perm)
        })
    }
    fn authorized_all_types(&self, perm: char) -> bool {
        self.scopes
            .iter()
            .any(|s| s.ty.is_none() && s.perms.contains(perm) && self.scope_usable(s))
    }
    /// May this resource leave the server for this principal? Scopes first, then the region's
    /// rules and the patient's consent (which break-the-glass may override).
    fn visible(
        &self,
        r: &Res,
        perm: char,
        consents: &BTreeMap<String, Vec<Prov>>,
        emergency: bool,
    ) -> bool {
        let by_scope = self.scopes.iter().any(|s| {
            s.ty.as_deref().is_none_or(|t| t == r.ty)
                && s.perms.contains(perm)
                && self.scope_usable(s)
                && (!s.patient_ctx || (r.patient.is_some() && r.patient == self.patient))
                && s.constraints.iter().all(|(param, system, code)| {
                    param == "category"
                        && r.category
                            .iter()
                            .any(|(sys, c)| c == code && system.as_ref().is_none_or(|s| s == sys))
                })
        });
        by_scope && self.consented(r, consents, emergency)
    }
    fn consented(&self, r: &Res, consents: &BTreeMap<String, Vec<Prov>>, emergency: bool) -> bool {
        if r.holder == self.org {
            return true;
        }
        let medical = !ADMINISTRATIVE.contains(&r.ty.as_str());
        let municipality = ORGS[self.org].3 == "municipality";
        if medical && municipality {
            return false;
        }
        // A municipality sees another organisation's patient records only with consent.
        let Some(p) = r.patient.as_ref().filter(|_| medical || municipality) else {
            return true;
        };
        if self.is_patient && self.patient.as_ref() == Some(p) {
            return true;
        }
        let none = Vec::new();
        let decided = consent_permits(consents.get(p).unwrap_or(&none), self.org, r);
        let counter = match decided {
            Some(true) => &CONSENT_PERMITS,
            Some(false) => &CONSENT_DENIES,
            None => &NO_CONSENT,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        decided == Some(true) || emergency
    }
}

#[derive(Debug, Clone)]
struct Res {
    ty: String,
    id: String,
    category: Vec<(String, String)>,
    /// The patient whose compartment holds it (its subject, or itself for a Patient).
    patient: Option<String>,
    /// The organisation that wrote it (index into ORGS).
    holder: usize,
}

impl Res {
    fn lab(&self) -> bool {
        self.category
            .iter()
            .any(|(s, c)| s == CATEGORY && c == "laboratory")
    }
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
    "Consent",
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
    let b = gw.base.clone();
    // One writer per organisation: what it writes, it holds.
    let writers: Vec<reqwest::Client> = ORGS
        .iter()
        .map(|(short, ..)| client_with(&token("system/*.cruds", short, None)))
        .collect();
    let post = |org: usize, ty: &'static str, body: Value| {
        let (w, b) = (writers[org].clone(), b.clone());
        async move {
            let v: Value = w
                .post(format!("{b}/{ty}"))
                .header("content-type", FHIR_JSON)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{ty} not created: {v}"))
                .to_owned()
        }
    };

    // The data set, known to the oracle.
    let mut all: Vec<Res> = Vec::new();
    let mut patients = Vec::new();
    for (i, bsn) in BSNS.iter().enumerate() {
        let holder = rng.below(ORGS.len());
        let id = post(
            holder,
            "Patient",
            json!({"resourceType": "Patient", "name": [{"family": format!("P{i}")}],
                "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn}]}),
        )
        .await;
        all.push(Res {
            ty: "Patient".into(),
            id: id.clone(),
            category: vec![],
            patient: Some(id.clone()),
            holder,
        });
        patients.push(id);
    }
    for p in &patients {
        for (sys, code) in [
            (CATEGORY, "laboratory"),
            (CATEGORY, "vital-signs"),
            ("urn:other", "laboratory"),
        ] {
            let holder = rng.below(ORGS.len());
            let id = post(
                holder,
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
                holder,
            });
        }
        let holder = rng.below(ORGS.len());
        let id = post(
            holder,
            "Condition",
            json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{p}")}}),
        )
        .await;
        all.push(Res {
            ty: "Condition".into(),
            id,
            category: vec![],
            patient: Some(p.clone()),
            holder,
        });
        let holder = rng.below(ORGS.len());
        let id = post(
            holder,
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
            holder,
        });
    }
    let holder = rng.below(ORGS.len());
    let id = post(
        holder,
        "Organization",
        json!({"resourceType": "Organization", "name": "X"}),
    )
    .await;
    all.push(Res {
        ty: "Organization".into(),
        id,
        category: vec![],
        patient: None,
        holder,
    });

    // Random consents: none, one or two per patient, recorded by the patient's GP or hospital.
    let mut consents: BTreeMap<String, Vec<Prov>> = BTreeMap::new();
    let mut consent_count = 0;
    for p in &patients {
        for _ in 0..rng.below(4) {
            let prov = Prov::random(&mut rng, 0);
            let holder = rng.below(3);
            let id = post(
                holder,
                "Consent",
                json!({"resourceType": "Consent", "status": "active",
                    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                    "patient": {"reference": format!("Patient/{p}")},
                    "policy": [{"uri": "https://healthhub-utrecht.nl/consent-policy"}],
                    "provision": prov.json()}),
            )
            .await;
            consent_count += 1;
            all.push(Res {
                ty: "Consent".into(),
                id,
                category: vec![("http://loinc.org".into(), "59284-0".into())],
                patient: Some(p.clone()),
                holder,
            });
            consents.entry(p.clone()).or_default().push(prov);
        }
    }

    // Random principals.
    let mut principals = Vec::new();
    for _ in 0..40 {
        let n = 1 + rng.below(3);
        let scopes: Vec<&str> = (0..n).map(|_| *rng.pick(SCOPES)).collect();
        let patient = if rng.below(4) == 0 {
            None
        } else {
            Some(rng.pick(&patients).clone())
        };
        let is_patient = patient.is_some() && rng.below(3) == 0;
        let org = rng.below(ORGS.len());
        let scope_claim = scopes.join(" ");
        let fhir_user = is_patient.then(|| format!("Patient/{}", patient.as_ref().unwrap()));
        principals.push(Who {
            token: gateway::policy::demo::mint(&gateway::policy::demo::TokenRequest {
                org: ORGS[org].0,
                scope: &scope_claim,
                patient: patient.as_deref(),
                fhir_user: fhir_user.as_deref(),
                purpose_of_use: None,
                subject: None,
                ttl_secs: 3600,
            })
            .unwrap(),
            scopes: scopes.iter().map(|s| oscope(s)).collect(),
            patient,
            org,
            is_patient,
        });
    }

    let mut requests = 0;
    let mut leaks = Vec::new();
    let mut mismatches = Vec::new();
    let mut emergencies = 0;
    for who in &principals {
        let c = client_with(&who.token);
        for _ in 0..30 {
            requests += 1;
            let ty = *rng.pick(TYPES);
            // Now and then the request invokes break-the-glass.
            let emergency = rng.below(6) == 0;
            emergencies += usize::from(emergency);
            let get = |url: &str| {
                let r = c.get(url);
                if emergency {
                    r.header("x-purpose-of-use", "ETREAT")
                        .header("x-break-glass-reason", "matrix: patient unconscious")
                } else {
                    r
                }
            };
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
                    let r = get(&url).send().await.unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let expected = if !who.authorized(ty, 'r') {
                        403
                    } else if target.is_some_and(|t| who.visible(t, 'r', &consents, emergency)) {
                        200
                    } else {
                        404
                    };
                    if status == 200
                        && !target.is_some_and(|t| who.visible(t, 'r', &consents, emergency))
                    {
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
                    let r = get(&url).send().await.unwrap();
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
                        .filter(|r| r.ty == ty && who.visible(r, 's', &consents, emergency))
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
                    let r = get(&url).send().await.unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let got = entries(&body);
                    let visible =
                        who.authorized(ty, 'r') && who.visible(target, 'r', &consents, emergency);
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
                    let r = get(&url).send().await.unwrap();
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
                        .filter(|r| who.visible(r, 's', &consents, emergency))
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
                    let expected = if who.may_write_unattached("Basic", 'c') {
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
                            holder: who.org,
                        };
                        if body["resourceType"] == "Basic"
                            && !who.visible(&res, 'r', &consents, false)
                        {
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
                && who.scope_usable(s)
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
        "access matrix (seed {seed:#x}): {requests} requests ({emergencies} break-the-glass) by {} principals of {} organisations, {consent_count} consents; leaks = {}; mismatches = {} {by_kind:?}",
        principals.len(),
        ORGS.len(),
        leaks.len(),
        mismatches.len()
    );
    println!(
        "  oracle consent verdicts: {} permit, {} deny, {} no provision (opt-in default)",
        CONSENT_PERMITS.load(Ordering::Relaxed),
        CONSENT_DENIES.load(Ordering::Relaxed),
        NO_CONSENT.load(Ordering::Relaxed)
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

//! The operations, against the real binary: `Patient/[id]/$everything` (paging, `_type`, `_since`,
//! referenced practitioners, consent), `$meta`/`$meta-add`/`$meta-delete`, `$validate` (modes,
//! a profile loaded as a StructureDefinition), and bulk `$export` at system, Patient and Group
//! level (kick-off, polling, NDJSON files split by size, `_type`, `_since`, another principal's
//! job, cancel, the kicking-off token's rights, the audit).

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;

async fn post(c: &reqwest::Client, base: &str, body: Value) -> Value {
    let ty = body["resourceType"].as_str().unwrap().to_owned();
    let r = c
        .post(format!("{base}/{ty}"))
        .header("content-type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create {ty}: {}", r.status());
    r.json().await.unwrap()
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn post_json(c: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = c
        .post(url)
        .header("content-type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn as_org(org: &str) -> reqwest::Client {
    client_with(&token("system/*.cruds", org, None))
}

/// A patient with a GP, an encounter, two observations (one by the GP), a condition; and another
/// patient with an observation. Returns (patient, practitioner, ids of the patient's resources).
async fn record(c: &reqwest::Client, base: &str) -> (String, String, Vec<String>) {
    let pr = post(
        c,
        base,
        json!({"resourceType": "Practitioner", "name": [{"family": "Huisarts"}]}),
    )
    .await;
    let prid = pr["id"].as_str().unwrap().to_owned();
    let p = post(
        c,
        base,
        json!({"resourceType": "Patient", "name": [{"family": "Everything"}],
        "generalPractitioner": [{"reference": format!("Practitioner/{prid}")}]}),
    )
    .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let subject = json!({"reference": format!("Patient/{pid}")});
    let enc = post(c, base, json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": subject})).await;
    let mut ids = vec![
        format!("Patient/{pid}"),
        format!("Encounter/{}", enc["id"].as_str().unwrap()),
    ];
    for n in 0..2 {
        let mut o = json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("obs {n}")},
            "subject": subject});
        if n == 0 {
            o["performer"] = json!([{"reference": format!("Practitioner/{prid}")}]);
        }
        let o = post(c, base, o).await;
        ids.push(format!("Observation/{}", o["id"].as_str().unwrap()));
    }
    let cond = post(
        c,
        base,
        json!({"resourceType": "Condition", "subject": subject}),
    )
    .await;
    ids.push(format!("Condition/{}", cond["id"].as_str().unwrap()));
    let q = post(
        c,
        base,
        json!({"resourceType": "Patient", "name": [{"family": "Other"}]}),
    )
    .await;
    post(
        c,
        base,
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "other"},
        "subject": {"reference": format!("Patient/{}", q["id"].as_str().unwrap())}}),
    )
    .await;
    ids.sort();
    (pid, prid, ids)
}

/// Every page of a bundle: (matches, included), as `Type/id`.
async fn all_pages(c: &reqwest::Client, url: &str) -> (Vec<String>, Vec<String>) {
    let (mut matches, mut included) = (Vec::new(), Vec::new());
    let mut next = Some(url.to_owned());
    while let Some(u) = next.take() {
        let (s, b) = get(c, &u).await;
        assert_eq!(s, 200, "{u}: {b}");
        assert_eq!(b["type"], "searchset");
        for e in b["entry"].as_array().into_iter().flatten() {
            let r = &e["resource"];
            let key = format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            );
            if e["search"]["mode"] == "include" {
                included.push(key);
            } else {
                matches.push(key);
            }
        }
        next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
    }
    matches.sort();
    (matches, included)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_pages_filters_and_passes_the_chokepoint() {
    for config in [String::new(), postgres_toml(&fresh_schema(), "")] {
        let gw = Gateway::start_with(&config);
        let base = &gw.base;
        let umcu = as_org("umcu");
        let (pid, prid, ids) = record(&umcu, base).await;
        let url = format!("{base}/Patient/{pid}/$everything");

        // Paging two at a time: every resource of the patient once, nobody else's; the GP is
        // included as a referenced resource.
        let (matches, included) = all_pages(&umcu, &format!("{url}?_count=2")).await;
        assert_eq!(matches, ids);
        assert!(
            included.contains(&format!("Practitioner/{prid}")),
            "{included:?}"
        );

        // `_type`.
        let (typed, _) = all_pages(&umcu, &format!("{url}?_type=Observation,Condition")).await;
        assert_eq!(typed.len(), 3, "{typed:?}");
        assert!(
            typed
                .iter()
                .all(|k| k.starts_with("Observation/") || k.starts_with("Condition/"))
        );
        let (s, _) = get(&umcu, &format!("{url}?_type=Nonsense")).await;
        assert_eq!(s, 400);

        // `_since`: only what changed since then.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let since = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let cond = ids.iter().find(|k| k.starts_with("Condition/")).unwrap();
        let r = umcu
            .put(format!("{base}/{cond}"))
            .header("content-type", FHIR_JSON)
            .body(
                json!({"resourceType": "Condition", "id": cond.split('/').nth(1).unwrap(),
                "subject": {"reference": format!("Patient/{pid}")}, "note": [{"text": "changed"}]})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let q = since.replace('+', "%2B");
        let (changed, _) = all_pages(&umcu, &format!("{url}?_since={q}")).await;
        assert_eq!(changed, vec![cond.clone()]);

        // The chokepoint: a GP may see the patient (administrative) but not the hospital's
        // medical data without a consent; no principal, no answer.
        let (gp_sees, _) = all_pages(&as_org("gp"), &url).await;
        assert_eq!(gp_sees, vec![format!("Patient/{pid}")]);
        let (s, _) = get(&anon(), &url).await;
        assert_eq!(s, 401);
        let (s, _) = get(
            &client_with(&token("system/Patient.rs", "umcu", None)),
            &url,
        )
        .await;
        assert_eq!(s, 403, "$everything needs a scope on every type");
        // An unknown parameter is refused.
        let (s, _) = get(&umcu, &format!("{url}?start=2020-01-01")).await;
        assert_eq!(s, 400);
    }
}

/// The tags of system `s` (the test's own).
fn own_tags(meta: &Value) -> Value {
    Value::Array(
        meta["tag"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["system"] == "s")
            .cloned()
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_add_delete_and_read() {
    let gw = Gateway::start();
    let base = &gw.base;
    let c = client();
    let p = post(
        &c,
        base,
        json!({"resourceType": "Patient", "meta": {"tag": [{"system": "s", "code": "a"}]}}),
    )
    .await;
    let id = p["id"].as_str().unwrap();
    let url = format!("{base}/Patient/{id}");
    let (s, m) = get(&c, &format!("{url}/$meta")).await;
    assert_eq!(s, 200);
    assert_eq!(m["resourceType"], "Parameters");
    assert_eq!(m["parameter"][0]["name"], "return");
    // Beside the holder tag the gateway stamps on every write.
    assert_eq!(
        own_tags(&m["parameter"][0]["valueMeta"]),
        json!([{"system": "s", "code": "a"}])
    );

    let add = json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {
        "tag": [{"system": "s", "code": "a"}, {"system": "s", "code": "b"}],
        "profile": ["http://example.org/StructureDefinition/p"],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}}]});
    let (s, m) = post_json(&c, &format!("{url}/$meta-add"), &add).await;
    assert_eq!(s, 200, "{m}");
    let meta = &m["parameter"][0]["valueMeta"];
    assert_eq!(own_tags(meta).as_array().unwrap().len(), 2, "{m}");
    assert_eq!(
        meta["profile"],
        json!(["http://example.org/StructureDefinition/p"])
    );
    assert_eq!(meta["versionId"], "2");
    let (_, read) = get(&c, &url).await;
    assert_eq!(own_tags(&read["meta"]).as_array().unwrap().len(), 2);
    // Tags are searchable as soon as they are added.
    let (_, found) = get(&c, &format!("{base}/Patient?_tag=s|b")).await;
    assert_eq!(found["total"], 1);

    let del = json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {
        "tag": [{"system": "s", "code": "a"}], "profile": ["http://example.org/StructureDefinition/p"]}}]});
    let (s, m) = post_json(&c, &format!("{url}/$meta-delete"), &del).await;
    assert_eq!(s, 200, "{m}");
    let meta = &m["parameter"][0]["valueMeta"];
    assert_eq!(own_tags(meta), json!([{"system": "s", "code": "b"}]));
    assert!(meta.get("profile").is_none());
    assert_eq!(meta["security"][0]["code"], "R");

    // Bad bodies, unknown resources, and the policy.
    let (s, _) = post_json(
        &c,
        &format!("{url}/$meta-add"),
        &json!({"resourceType": "Parameters"}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = post_json(&c, &format!("{base}/Patient/nobody/$meta-add"), &add).await;
    assert_eq!(s, 404);
    let (s, _) = get(&c, &format!("{base}/Patient/nobody/$meta")).await;
    assert_eq!(s, 404);
    let reader = client_with(&token("system/Patient.rs", "umcu", None));
    let (s, _) = post_json(&reader, &format!("{url}/$meta-add"), &add).await;
    assert_eq!(s, 403);
    let (s, _) = get(&reader, &format!("{url}/$meta")).await;
    assert_eq!(s, 200);
    let (s, _) = get(&anon(), &format!("{url}/$meta")).await;
    assert_eq!(s, 401);
}

fn errors(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .map(|i| {
            format!(
                "{} {}",
                i["expression"][0].as_str().unwrap_or(""),
                i["diagnostics"]
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_modes_and_loaded_profiles() {
    let gw = Gateway::start();
    let base = &gw.base;
    let c = client();
    let url = format!("{base}/Patient/$validate");

    let (s, o) = post_json(
        &c,
        &url,
        &json!({"resourceType": "Patient", "birthDate": "1970-01-01"}),
    )
    .await;
    assert_eq!(
        (s, o["resourceType"].as_str()),
        (200, Some("OperationOutcome"))
    );
    assert!(errors(&o).is_empty(), "{o}");
    let (s, o) = post_json(
        &c,
        &url,
        &json!({"resourceType": "Patient", "birthDate": "yesterday"}),
    )
    .await;
    assert_eq!(
        s, 200,
        "an invalid resource is the operation's answer, not its failure"
    );
    assert_eq!(errors(&o).len(), 1, "{o}");
    // Nothing was written.
    let (_, all) = get(&c, &format!("{base}/Patient")).await;
    assert_eq!(all["total"], 0);

    // A profile loaded as a StructureDefinition.
    let profile = "https://healthhub-utrecht.nl/fhir/StructureDefinition/nl-patient";
    let sd = json!({"resourceType": "StructureDefinition", "url": profile, "name": "NlPatient",
        "status": "active", "kind": "resource", "abstract": false, "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient", "derivation": "constraint",
        "differential": {"element": [
            {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1},
            {"id": "Patient.identifier.system", "path": "Patient.identifier.system", "min": 1,
             "fixedUri": "http://fhir.nl/fhir/NamingSystem/bsn"},
            {"id": "Patient.name", "path": "Patient.name", "max": "1"}]}});
    post(&c, base, sd).await;
    let plain = json!({"resourceType": "Patient", "name": [{"family": "a"}, {"family": "b"}]});
    let (s, o) = post_json(&c, &format!("{url}?profile={profile}"), &plain).await;
    assert_eq!(s, 200);
    let e = errors(&o);
    assert_eq!(e.len(), 2, "{o}");
    assert!(
        e.iter().any(|x| x.starts_with("Patient.identifier ")),
        "{e:?}"
    );
    assert!(e.iter().any(|x| x.starts_with("Patient.name ")), "{e:?}");
    let good = json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}]});
    let (_, o) = post_json(&c, &format!("{url}?profile={profile}"), &good).await;
    assert!(errors(&o).is_empty(), "{o}");
    // The profile named in a Parameters body; and claimed in meta.profile.
    let wrong_system =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1", "value": "1"}]});
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": wrong_system}, {"name": "mode", "valueCode": "create"},
        {"name": "profile", "valueUri": profile}]});
    let (_, o) = post_json(&c, &url, &params).await;
    assert_eq!(errors(&o).len(), 1, "{o}");
    let mut claims = wrong_system.clone();
    claims["meta"] = json!({"profile": [profile]});
    let (_, o) = post_json(&c, &url, &claims).await;
    assert_eq!(errors(&o).len(), 1, "{o}");
    let (s, _) = post_json(&c, &format!("{url}?profile=http://unknown/p"), &good).await;
    assert_eq!(s, 400, "a profile the server does not hold");

    // Instance level: update (ids must agree) and delete (the target must exist).
    let p = post(&c, base, good.clone()).await;
    let id = p["id"].as_str().unwrap();
    let inst = format!("{base}/Patient/{id}/$validate");
    let mut same = good.clone();
    same["id"] = json!(id);
    let (s, o) = post_json(&c, &format!("{inst}?mode=update"), &same).await;
    assert_eq!(s, 200);
    assert!(errors(&o).is_empty(), "{o}");
    let mut other = good.clone();
    other["id"] = json!("other");
    let (_, o) = post_json(&c, &format!("{inst}?mode=update"), &other).await;
    assert_eq!(errors(&o).len(), 1, "{o}");
    let r = c.post(format!("{inst}?mode=delete")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{base}/Patient/nobody/$validate?mode=delete"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (s, _) = post_json(&c, &format!("{url}?mode=delete"), &good).await;
    assert_eq!(s, 400, "delete is validated on an instance");
    let (s, _) = post_json(&c, &format!("{url}?mode=sideways"), &good).await;
    assert_eq!(s, 400);
    let (s, _) = post_json(&c, &url, &json!({"resourceType": "Observation"})).await;
    assert_eq!(s, 400, "the resource must be of the URL's type");
    let (s, _) = post_json(&anon(), &url, &good).await;
    assert_eq!(s, 401);
    // The instance must be visible to the caller.
    let gp = as_org("gp");
    let obs = post(
        &c,
        base,
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": format!("Patient/{id}")}}),
    )
    .await;
    let r = gp
        .post(format!(
            "{base}/Observation/{}/$validate?mode=delete",
            obs["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "another holder's medical data is not revealed"
    );
}

/// Kicks off an export and waits for its manifest.
async fn export(c: &reqwest::Client, url: &str) -> Value {
    let r = c
        .get(url)
        .header("prefer", "respond-async")
        .header("accept", "application/fhir+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{url}: {}", r.text().await.unwrap());
    let status = r.headers()["content-location"].to_str().unwrap().to_owned();
    for _ in 0..600 {
        let r = c.get(&status).send().await.unwrap();
        match r.status().as_u16() {
            202 => {
                assert!(r.headers().contains_key("x-progress"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            200 => {
                assert!(
                    r.headers()["content-type"]
                        .to_str()
                        .unwrap()
                        .starts_with("application/json")
                );
                let mut m: Value = r.json().await.unwrap();
                m["status_url"] = json!(status);
                return m;
            }
            s => panic!("status {s}: {}", r.text().await.unwrap()),
        }
    }
    panic!("the export did not finish");
}

/// The lines of every output file, as `Type/id`, and the count of files per type.
async fn outputs(c: &reqwest::Client, manifest: &Value) -> (BTreeSet<String>, Vec<(String, u64)>) {
    let mut keys = BTreeSet::new();
    let mut files = Vec::new();
    for o in manifest["output"].as_array().unwrap() {
        let r = c.get(o["url"].as_str().unwrap()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/fhir+ndjson");
        let text = r.text().await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, o["count"].as_u64().unwrap());
        for l in lines {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["resourceType"], o["type"]);
            assert!(
                keys.insert(format!(
                    "{}/{}",
                    v["resourceType"].as_str().unwrap(),
                    v["id"].as_str().unwrap()
                )),
                "written twice: {l}"
            );
        }
        files.push((
            o["type"].as_str().unwrap().to_owned(),
            o["count"].as_u64().unwrap(),
        ));
    }
    (keys, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_export_levels_filters_jobs_and_rights() {
    let export = "[export]\nmax_resources_per_file = 2\npage_size = 2\n";
    for config in [export.to_owned(), postgres_toml(&fresh_schema(), export)] {
        bulk_export_on(&config).await;
    }
}

async fn bulk_export_on(config: &str) {
    let gw = Gateway::start_with(config);
    let base = &gw.base;
    let umcu = as_org("umcu");
    let (pid, prid, ids) = record(&umcu, base).await;

    // Kick-off needs `Prefer: respond-async`; unknown parameters are refused.
    let r = umcu.get(format!("{base}/$export")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = umcu
        .get(format!("{base}/$export?_typeFilter=Observation%3Fcode%3Dx"))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // System level: everything, files split at two resources.
    let m = export(&umcu, &format!("{base}/$export")).await;
    assert_eq!(m["requiresAccessToken"], true);
    assert!(m["request"].as_str().unwrap().ends_with("/$export"));
    let (keys, files) = outputs(&umcu, &m).await;
    for k in &ids {
        assert!(keys.contains(k), "{k} missing");
    }
    assert!(keys.contains(&format!("Practitioner/{prid}")));
    assert_eq!(keys.len(), ids.len() + 3, "{keys:?}"); // + practitioner, other patient and obs
    let obs_files: Vec<u64> = files
        .iter()
        .filter(|(t, _)| t == "Observation")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(obs_files, vec![2, 1], "three observations, two per file");

    // `_type` and `_since`.
    let m = export(&umcu, &format!("{base}/$export?_type=Condition,Encounter")).await;
    let (keys, _) = outputs(&umcu, &m).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    let since = m["transactionTime"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let later = post(
        &umcu,
        base,
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "later"},
        "subject": {"reference": format!("Patient/{pid}")}}),
    )
    .await;
    let q = since.replace('+', "%2B");
    let m = export(&umcu, &format!("{base}/$export?_since={q}")).await;
    let (keys, _) = outputs(&umcu, &m).await;
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        vec![format!("Observation/{}", later["id"].as_str().unwrap())]
    );

    // Patient level: every patient's compartment, no practitioner.
    let m = export(&umcu, &format!("{base}/Patient/$export")).await;
    let (keys, _) = outputs(&umcu, &m).await;
    assert_eq!(keys.len(), ids.len() + 3, "{keys:?}"); // + later obs, other patient and obs
    assert!(!keys.iter().any(|k| k.starts_with("Practitioner/")));

    // Group level: only the members.
    let g = post(
        &umcu,
        base,
        json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{pid}")}}]}),
    )
    .await;
    let gid = g["id"].as_str().unwrap();
    let m = export(&umcu, &format!("{base}/Group/{gid}/$export")).await;
    let (keys, _) = outputs(&umcu, &m).await;
    // The member's resources (with the later observation), and the Group itself, which is in
    // its members' compartments; not the other patient's.
    assert_eq!(keys.len(), ids.len() + 2, "{keys:?}");
    assert!(keys.contains(&format!("Group/{gid}")));
    let r = umcu
        .get(format!("{base}/Group/nothing/$export"))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The job is the kicking-off principal's: another one cannot see it or its files.
    let status = m["status_url"].as_str().unwrap();
    let file = m["output"][0]["url"].as_str().unwrap();
    let other = as_org("gp");
    assert_eq!(other.get(status).send().await.unwrap().status(), 404);
    assert_eq!(other.get(file).send().await.unwrap().status(), 404);
    assert_eq!(anon().get(status).send().await.unwrap().status(), 401);
    // Delete: the job and its files are gone.
    assert_eq!(umcu.delete(status).send().await.unwrap().status(), 202);
    assert_eq!(umcu.get(status).send().await.unwrap().status(), 404);
    assert_eq!(umcu.get(file).send().await.unwrap().status(), 404);

    // The kicking-off token's rights: the GP gets the patients, not the hospital's medical data.
    let m = export(&other, &format!("{base}/$export?_type=Patient,Observation")).await;
    let (keys, _) = outputs(&other, &m).await;
    assert!(keys.iter().all(|k| k.starts_with("Patient/")), "{keys:?}");
    assert_eq!(keys.len(), 2);
    // A type the token may not read at all, asked for explicitly: 403.
    let patients_only = client_with(&token("system/Patient.rs", "umcu", None));
    let r = patients_only
        .get(format!("{base}/$export?_type=Observation"))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let m = export(&patients_only, &format!("{base}/$export")).await;
    let (keys, _) = outputs(&patients_only, &m).await;
    assert!(
        keys.iter().all(|k| k.starts_with("Patient/")) && keys.len() == 2,
        "{keys:?}"
    );

    // Audited: each exported page names what left and for whom.
    let (_, audit) = get(&umcu, &format!("{base}/AuditEvent?_count=1000")).await;
    let exported: Vec<&Value> = audit["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|a| {
            a["subtype"]
                .as_array()
                .is_some_and(|s| s.iter().any(|c| c["code"] == "export"))
        })
        .collect();
    assert!(!exported.is_empty(), "no export audit records");
    let text = serde_json::to_string(&exported).unwrap();
    assert!(
        text.contains(&format!("Patient/{pid}")),
        "the audit names the patient"
    );
}

use super::{Case, Outcome, test_patient};
use crate::client::Fhir;
use crate::{case, ensure};

pub fn cases() -> Vec<Case> {
    vec![
        case!("If-None-Exist with a match creates nothing", if_none_exist),
        case!(
            "100 concurrent conditional creates make exactly one resource",
            race
        ),
        case!(
            "conditional update by identifier updates the match",
            conditional_update
        ),
        case!(
            "conditional create with two matches answers 412",
            multiple_matches
        ),
    ]
}

fn condition(p: &serde_json::Value) -> String {
    let v = p["identifier"][0]["value"].as_str().unwrap_or_default();
    format!("identifier=urn:conformance:test%7C{v}")
}

async fn if_none_exist(c: Fhir) -> Outcome {
    let p = test_patient("ine");
    let cond = condition(&p);
    let a = c.post("Patient", &p, &[("if-none-exist", &cond)]).await?;
    ensure!(a.status == 201, "first: status {}", a.status);
    let b = c.post("Patient", &p, &[("if-none-exist", &cond)]).await?;
    ensure!(b.status == 200, "second: status {}", b.status);
    ensure!(a.body["id"] == b.body["id"], "different resources");
    Ok(())
}

async fn race(c: Fhir) -> Outcome {
    let p = test_patient("race");
    let cond = condition(&p);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (c, p, cond) = (c.clone(), p.clone(), cond.clone());
            tokio::spawn(async move { c.post("Patient", &p, &[("if-none-exist", &cond)]).await })
        })
        .collect();
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let a = t.await.map_err(|e| e.to_string())??;
        ensure!(
            a.status == 201 || a.status == 200,
            "status {} {}",
            a.status,
            a.text
        );
        if a.status == 201 {
            created += 1;
        }
        ids.insert(a.body["id"].as_str().unwrap_or_default().to_owned());
    }
    ensure!(
        created == 1 && ids.len() == 1,
        "{created} created, {} distinct ids",
        ids.len()
    );
    let s = c.get(&format!("Patient?{cond}")).await?;
    ensure!(s.body["total"] == 1, "search finds {}", s.body["total"]);
    Ok(())
}

async fn conditional_update(c: Fhir) -> Outcome {
    let mut p = test_patient("cu");
    let cond = condition(&p);
    let a = c.post("Patient", &p, &[]).await?;
    p["gender"] = serde_json::json!("other");
    let b = c.put(&format!("Patient?{cond}"), &p, &[]).await?;
    ensure!(b.status == 200, "status {} {}", b.status, b.text);
    ensure!(
        a.body["id"] == b.body["id"] && b.body["meta"]["versionId"] == "2",
        "not an update of the match"
    );
    Ok(())
}

async fn multiple_matches(c: Fhir) -> Outcome {
    let p = test_patient("mm");
    let cond = condition(&p);
    c.post("Patient", &p, &[]).await?;
    c.post("Patient", &p, &[]).await?;
    let a = c.post("Patient", &p, &[("if-none-exist", &cond)]).await?;
    ensure!(a.status == 412, "status {}", a.status);
    Ok(())
}

use super::{Case, Outcome};
use crate::client::Fhir;
use crate::{case, ensure};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "metadata returns a CapabilityStatement for FHIR 4.0.1",
            metadata
        ),
        case!("CapabilityStatement declares JSON", json_format),
        case!("every declared type declares read", declared_types),
    ]
}

async fn metadata(c: Fhir) -> Outcome {
    let a = c.get("metadata").await?;
    ensure!(a.status == 200, "status {}", a.status);
    ensure!(
        a.body["resourceType"] == "CapabilityStatement",
        "got {}",
        a.body["resourceType"]
    );
    ensure!(
        a.body["fhirVersion"] == "4.0.1",
        "fhirVersion {}",
        a.body["fhirVersion"]
    );
    ensure!(
        a.header("content-type")
            .starts_with("application/fhir+json"),
        "content-type {}",
        a.header("content-type")
    );
    Ok(())
}

async fn json_format(c: Fhir) -> Outcome {
    let a = c.get("metadata").await?;
    let formats: Vec<String> = a.body["format"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    ensure!(
        formats.iter().any(|f| f.contains("json")),
        "formats {formats:?}"
    );
    Ok(())
}

async fn declared_types(c: Fhir) -> Outcome {
    let a = c.get("metadata").await?;
    let resources = a.body["rest"][0]["resource"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        resources.iter().any(|r| r["type"] == "Patient"),
        "Patient not declared"
    );
    for r in &resources {
        let has_read = r["interaction"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["code"] == "read");
        ensure!(has_read, "{} declares no read", r["type"]);
    }
    Ok(())
}

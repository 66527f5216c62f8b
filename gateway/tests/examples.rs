//! Data fidelity: every resource of the official R4 package (`../shared/fhir`, 5,306 resources of
//! 146 types) is created through the real server and read back semantically equal: the same JSON
//! apart from `id` (server-assigned on create) and the server's `meta.versionId`/`lastUpdated`.

mod common;

use common::{FHIR_JSON, Gateway, client};
use futures::StreamExt;
use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// The official examples, read from the package tarball (tests may use ../shared; the product not).
pub fn r4_examples() -> Vec<(String, Value)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fhir/hl7.fhir.r4.examples-4.0.1.tgz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json")
            || name.ends_with("package.json")
            || name.ends_with(".index.json")
        {
            continue;
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        if v.get("resourceType").is_some() {
            out.push((name, v));
        }
    }
    out
}

/// The resource without what the server owns: id, versionId, lastUpdated, and the tag naming
/// the organisation that holds it (which must be there, once, naming the writer).
fn comparable(mut v: Value, stored: bool) -> Value {
    let obj = v.as_object_mut().unwrap();
    obj.remove("id");
    if let Some(Value::Object(meta)) = obj.get_mut("meta") {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if stored {
            let tags = meta
                .get_mut("tag")
                .and_then(Value::as_array_mut)
                .expect("every stored resource carries its holder tag");
            let before = tags.len();
            tags.retain(|t| {
                !(t["system"] == "https://healthhub-utrecht.nl/fhir/CodeSystem/holder"
                    && t["code"] == "http://fhir.nl/fhir/NamingSystem/ura|90000001")
            });
            assert_eq!(
                tags.len() + 1,
                before,
                "exactly one holder tag, the writer's"
            );
            if tags.is_empty() {
                meta.remove("tag");
            }
        }
        if meta.is_empty() {
            obj.remove("meta");
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_official_example_round_trips_on_sqlite() {
    round_trip(Gateway::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_official_example_round_trips_on_postgres() {
    round_trip(Gateway::start_with(&common::postgres_toml(
        &common::fresh_schema(),
        "",
    )))
    .await;
}

async fn round_trip(gw: Gateway) {
    let examples = r4_examples();
    assert!(examples.len() > 5000, "{}", examples.len());
    let types: std::collections::BTreeSet<&str> = examples
        .iter()
        .map(|(_, v)| v["resourceType"].as_str().unwrap())
        .collect();
    let c = client();
    let base = gw.base.clone();
    let results: Vec<Result<(), String>> = futures::stream::iter(examples.iter())
        .map(|(name, v)| {
            let (c, base) = (c.clone(), base.clone());
            async move {
                let ty = v["resourceType"].as_str().unwrap();
                let r = c
                    .post(format!("{base}/{ty}"))
                    .header("content-type", FHIR_JSON)
                    .body(v.to_string())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status();
                let created: Value = r.json().await.map_err(|e| format!("{name}: {e}"))?;
                // AuditEvents are written by the gateway only (its hash-chained access log).
                if ty == "AuditEvent" {
                    return if status == 405 {
                        Ok(())
                    } else {
                        Err(format!("{name}: AuditEvent create {status}"))
                    };
                }
                if status != 201 {
                    return Err(format!("{name}: create {status}: {}", created["issue"]));
                }
                let id = created["id"].as_str().ok_or(format!("{name}: no id"))?;
                let read: Value = c
                    .get(format!("{base}/{ty}/{id}"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                if read["meta"]["versionId"] != "1" {
                    return Err(format!("{name}: versionId {}", read["meta"]["versionId"]));
                }
                if comparable(read, true) != comparable(v.clone(), false) {
                    return Err(format!("{name}: read back differs"));
                }
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    println!(
        "R4 examples round-tripped: {} of {} ({} resource types); failures: {}",
        results.len() - failures.len(),
        results.len(),
        types.len(),
        failures.len()
    );
    for f in failures.iter().take(30) {
        println!("  {f}");
    }
    assert!(failures.is_empty(), "{} examples failed", failures.len());
    assert!(types.len() >= 140, "{}", types.len());
}

/// A minimal instance of an official-schema definition: an extension (every element may carry
/// one) plus each required element, recursively.
type Choices = std::collections::BTreeMap<String, Vec<(String, Value)>>;

fn minimal(defs: &Value, def: &str, filler: &Value, choices: &Choices, depth: usize) -> Value {
    let mut out = filler.clone();
    for (prop, value) in choices.get(def).into_iter().flatten() {
        out[prop] = value.clone();
    }
    assert!(depth < 8, "{def}: required elements nest too deep");
    for req in defs[def]["required"].as_array().into_iter().flatten() {
        let name = req.as_str().unwrap();
        if name == "resourceType" {
            continue;
        }
        let prop = &defs[def]["properties"][name];
        let is_array = prop["type"] == "array";
        let target = if is_array {
            &prop["items"]["$ref"]
        } else {
            &prop["$ref"]
        };
        let target = target
            .as_str()
            .unwrap()
            .trim_start_matches("#/definitions/");
        let v = if defs[target].get("properties").is_none() {
            // A primitive the oracle requires (MeasureReport.measure is a canonical).
            serde_json::json!(if matches!(target, "canonical" | "uri" | "url") {
                "http://example.org/x"
            } else {
                "x"
            })
        } else {
            minimal(defs, target, filler, choices, depth + 1)
        };
        out[name] = if is_array { Value::Array(vec![v]) } else { v };
    }
    out
}

/// Every one of the 146 R4 resource types is accepted, including the six the package has no
/// example of: a minimal instance of each, its required elements taken from HL7's official
/// schema (the oracle), is created and read back.
#[tokio::test]
async fn every_resource_type_is_accepted() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fhir/fhir.schema.json");
    let official: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let defs = &official["definitions"];
    let types: Vec<String> = official["discriminator"]["mapping"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(types.len(), 146);
    let filler = serde_json::json!({"extension": [{"url": "http://example.org/fhir/StructureDefinition/test", "valueString": "x"}]});
    // Required choice elements (`DeviceRequest.code[x]` 1..1) are not in HL7's schema: take them
    // from the StructureDefinitions, choosing the first complex type offered.
    let mut required_choices = Choices::default();
    for (name, sd) in r4_examples() {
        if !name.starts_with("package/StructureDefinition-") || sd["kind"] != "resource" {
            continue;
        }
        let ty = sd["type"].as_str().unwrap().to_owned();
        for e in sd["snapshot"]["element"].as_array().unwrap() {
            let path = e["path"].as_str().unwrap();
            let Some(choice) = path.strip_suffix("[x]") else {
                continue;
            };
            if e["min"].as_u64().unwrap_or(0) == 0 {
                continue;
            }
            // HL7's schema names a backbone element Type_LastSegment.
            let (parent, base) = choice.rsplit_once('.').unwrap();
            let def = match parent.rsplit_once('.') {
                None => parent.to_owned(),
                Some((_, last)) => format!("{ty}_{}{}", last[..1].to_uppercase(), &last[1..]),
            };
            let codes: Vec<&str> = e["type"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["code"].as_str().unwrap())
                .collect();
            let (prop, value) = match codes.iter().find(|c| c.starts_with(char::is_uppercase)) {
                Some(code) => (format!("{base}{code}"), filler.clone()),
                None => {
                    let code = codes[0];
                    let value = match code {
                        "boolean" => serde_json::json!(true),
                        "integer" | "positiveInt" | "unsignedInt" | "decimal" => {
                            serde_json::json!(1)
                        }
                        "date" | "dateTime" => serde_json::json!("2020-01-01"),
                        _ => serde_json::json!("x"),
                    };
                    (
                        format!("{base}{}{}", code[..1].to_uppercase(), &code[1..]),
                        value,
                    )
                }
            };
            required_choices.entry(def).or_default().push((prop, value));
        }
    }
    let gw = Gateway::start();
    let c = client();
    let mut accepted = 0;
    for ty in &types {
        let mut r = minimal(defs, ty, &filler, &required_choices, 0);
        r["resourceType"] = serde_json::json!(ty);
        r.as_object_mut().unwrap().remove("extension");
        if r.as_object().unwrap().len() == 1 && !defs[ty]["properties"]["extension"].is_null() {
            r["extension"] = filler["extension"].clone();
        }
        let resp = c
            .post(format!("{}/{ty}", gw.base))
            .header("content-type", FHIR_JSON)
            .body(r.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let created: Value = resp.json().await.unwrap();
        if ty == "AuditEvent" {
            assert_eq!(status, 405, "AuditEvents are written by the gateway only");
            accepted += 1;
            continue;
        }
        assert_eq!(status, 201, "{ty}: {}", created["issue"]);
        let id = created["id"].as_str().unwrap();
        let read: Value = c
            .get(format!("{}/{ty}/{id}", gw.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(comparable(read, true), r, "{ty}");
        accepted += 1;
    }
    assert_eq!(accepted, 146);
}

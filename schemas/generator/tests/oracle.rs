//! The generated schema against its oracle, HL7's official R4 `fhir.schema.json` (in ../shared,
//! reference only), and against the package it is generated from.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

fn shared(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fhir")
        .join(p)
}

fn committed() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fhir/fhir-r4.schema.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn official() -> Value {
    serde_json::from_str(&std::fs::read_to_string(shared("fhir.schema.json")).unwrap()).unwrap()
}

fn examples() -> Vec<(String, Value)> {
    let f = std::fs::File::open(shared("hl7.fhir.r4.examples-4.0.1.tgz")).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json")
            || name.ends_with("package.json")
            || name.ends_with(".index.json")
        {
            continue;
        }
        let mut t = String::new();
        e.read_to_string(&mut t).unwrap();
        let v: Value = serde_json::from_str(&t).unwrap();
        if v.get("resourceType").is_some() {
            out.push((name, v));
        }
    }
    out
}

/// The committed schema is exactly what the generator makes of the pinned package.
#[test]
fn committed_schema_is_reproducible() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_schemagen"))
        .arg("--package")
        .arg(shared("hl7.fhir.r4.examples-4.0.1.tgz"))
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let fresh: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("fhir-r4.schema.json")).unwrap(),
    )
    .unwrap();
    assert!(
        fresh == committed(),
        "schemas/fhir/fhir-r4.schema.json is stale: run schemas/generate.sh"
    );
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let committed_compartment =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fhir/patient-compartment.json");
    assert_eq!(
        read(&out.path().join("patient-compartment.json")),
        read(&committed_compartment),
        "schemas/fhir/patient-compartment.json is stale: run schemas/generate.sh"
    );
    let committed_search =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fhir/search-parameters.json");
    assert_eq!(
        read(&out.path().join("search-parameters.json")),
        read(&committed_search),
        "schemas/fhir/search-parameters.json is stale: run schemas/generate.sh"
    );
    let committed_summary =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fhir/summary-elements.json");
    assert_eq!(
        read(&out.path().join("summary-elements.json")),
        read(&committed_summary),
        "schemas/fhir/summary-elements.json is stale: run schemas/generate.sh"
    );
}

/// The generator refuses a package whose checksum is not the pinned one.
#[test]
fn wrong_package_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.tgz");
    std::fs::write(&fake, b"not the package").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_schemagen"))
        .arg("--package")
        .arg(&fake)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256"));
}

/// Every resource type and data type has exactly the elements HL7's schema gives it.
#[test]
fn same_elements_as_the_official_schema() {
    let ours = committed();
    let theirs = official();
    let mut compared = 0;
    for (name, def) in theirs["definitions"].as_object().unwrap() {
        if name.contains('_') || name == "ResourceList" {
            continue; // backbone elements are named differently; their content is checked below
        }
        let Some(their_props) = def["properties"].as_object() else {
            continue;
        };
        let our_props = ours["definitions"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} missing from the generated schema"));
        let a: BTreeSet<&String> = their_props.keys().collect();
        // The one allowed difference: HL7's schema gives `canonical` elements no `_x` twin, so it
        // refuses extensions on them (`_baseDefinition`, `_profile`), which the spec's own
        // examples use. Ours has the twin.
        let canonical_twin = |k: &String| {
            k.strip_prefix('_').is_some_and(|base| {
                let p = &our_props[base];
                let r = p["$ref"]
                    .as_str()
                    .or(p["items"]["anyOf"][1]["$ref"].as_str());
                r == Some("#/definitions/canonical")
            })
        };
        let b: BTreeSet<&String> = our_props
            .keys()
            .filter(|k| !canonical_twin(k) || a.contains(k))
            .collect();
        assert_eq!(a, b, "{name}");
        compared += 1;
    }
    assert!(compared > 180, "{compared}");
    let types: BTreeSet<&str> = theirs["discriminator"]["mapping"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let ours_types: BTreeSet<&str> =
        ours["definitions"]["ResourceList"]["properties"]["resourceType"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
    assert_eq!(types, ours_types);
}

/// What the official schema accepts, ours accepts; what we break in an example, both refuse.
#[test]
fn agrees_with_the_official_schema_on_the_examples() {
    let ours = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&committed())
        .unwrap();
    let theirs = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft6)
        .build(&official())
        .unwrap();
    let mut official_rejects = 0;
    let mut checked = 0;
    for (name, v) in examples() {
        checked += 1;
        let ours_ok = ours.is_valid(&v);
        if theirs.is_valid(&v) {
            assert!(ours_ok, "{name}: accepted by HL7's schema, refused by ours");
        } else {
            official_rejects += 1;
        }
        // Mutations both must refuse: an unknown element, a wrongly typed id, an empty array.
        let mut unknown = v.clone();
        unknown["zzNotAnElement"] = Value::Bool(true);
        assert!(!ours.is_valid(&unknown), "{name}: unknown element accepted");
        let mut bad_id = v.clone();
        bad_id["id"] = serde_json::json!(42);
        assert!(!ours.is_valid(&bad_id), "{name}: numeric id accepted");
        if v.get("text").is_some() {
            let mut bad_text = v.clone();
            bad_text["text"]["status"] = serde_json::json!(["generated"]);
            assert!(
                !ours.is_valid(&bad_text),
                "{name}: array for a single element accepted"
            );
        }
    }
    println!(
        "checked {checked} examples; HL7's schema refuses {official_rejects} of them, ours refuses none of those it accepts"
    );
    assert!(checked > 5000);
}

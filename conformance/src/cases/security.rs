//! What must be refused, and what must be recorded. Needs only the one token the suite runs with
//! (which must be allowed to read Patient and AuditEvent).

use super::crud::create_patient;
use super::{Case, Outcome, is_outcome};
use crate::client::Fhir;
use crate::{case, ensure};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "no credentials: 401 with a Bearer challenge and an OperationOutcome",
            no_credentials
        ),
        case!("a malformed token: 401 invalid_token", bad_token),
        case!("a token with a forged signature: 401", forged),
        case!("no credentials cannot write", anonymous_write),
        case!("the CapabilityStatement is public", public_metadata),
        case!(
            "SMART configuration has the required fields",
            smart_configuration
        ),
        case!("every read is in the access log", audited),
        case!("clients cannot write AuditEvents", audit_read_only),
    ]
}

async fn no_credentials(c: Fhir) -> Outcome {
    for path in ["Patient", "Patient/x", "_history", "AuditEvent"] {
        let a = c.send(c.anonymous.get(c.url(path))).await?;
        ensure!(a.status == 401, "{path}: status {}", a.status);
        ensure!(
            a.header("www-authenticate").starts_with("Bearer"),
            "{path}: no Bearer challenge"
        );
        ensure!(is_outcome(&a.body), "{path}: no OperationOutcome");
    }
    Ok(())
}

async fn bad_token(c: Fhir) -> Outcome {
    let a = c
        .send(c.anonymous.get(c.url("Patient")).bearer_auth("not-a-token"))
        .await?;
    ensure!(a.status == 401, "status {}", a.status);
    ensure!(
        a.header("www-authenticate").contains("invalid_token"),
        "challenge {}",
        a.header("www-authenticate")
    );
    Ok(())
}

async fn forged(c: Fhir) -> Outcome {
    // A well-formed ES256 token for a made-up issuer, with a signature that proves nothing.
    let header = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9";
    let claims = "eyJpc3MiOiJodHRwczovL2ZvcmdlZC5leGFtcGxlIiwiYXVkIjoieCIsImV4cCI6NDEwMjQ0NDgwMCwic2NvcGUiOiJzeXN0ZW0vKi5jcnVkcyJ9";
    let token = format!(
        "{header}.{claims}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    );
    let a = c
        .send(c.anonymous.get(c.url("Patient")).bearer_auth(token))
        .await?;
    ensure!(a.status == 401, "status {}", a.status);
    Ok(())
}

async fn anonymous_write(c: Fhir) -> Outcome {
    let req = c
        .anonymous
        .post(c.url("Patient"))
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType":"Patient"}"#);
    let a = c.send(req).await?;
    ensure!(a.status == 401, "status {}", a.status);
    Ok(())
}

async fn public_metadata(c: Fhir) -> Outcome {
    let a = c.send(c.anonymous.get(c.url("metadata"))).await?;
    ensure!(
        a.status == 200 && a.body["resourceType"] == "CapabilityStatement",
        "status {}",
        a.status
    );
    let service = &a.body["rest"][0]["security"]["service"][0]["coding"][0]["code"];
    ensure!(service == "SMART-on-FHIR", "security.service {service}");
    Ok(())
}

async fn smart_configuration(c: Fhir) -> Outcome {
    let a = c
        .send(c.anonymous.get(c.url(".well-known/smart-configuration")))
        .await?;
    ensure!(a.status == 200, "status {}", a.status);
    for field in [
        "token_endpoint",
        "grant_types_supported",
        "capabilities",
        "code_challenge_methods_supported",
    ] {
        ensure!(!a.body[field].is_null(), "{field} missing");
    }
    Ok(())
}

async fn audited(c: Fhir) -> Outcome {
    let (id, _) = create_patient(&c, "audited").await?;
    let r = c.get(&format!("Patient/{id}")).await?;
    ensure!(r.status == 200, "read: status {}", r.status);
    let a = c
        .get(&format!("AuditEvent?patient=Patient/{id}&_count=100"))
        .await?;
    ensure!(a.status == 200, "AuditEvent search: status {}", a.status);
    let events = a.body["entry"].as_array().cloned().unwrap_or_default();
    let read = events
        .iter()
        .any(|e| e["resource"]["subtype"][0]["code"] == "read" && e["resource"]["action"] == "R");
    ensure!(
        read,
        "no AuditEvent for the read of Patient/{id} ({} events)",
        events.len()
    );
    Ok(())
}

async fn audit_read_only(c: Fhir) -> Outcome {
    let event = serde_json::json!({"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2020-01-01T00:00:00Z",
        "agent": [{"requestor": true}], "source": {"observer": {"display": "forged"}}});
    let a = c.post("AuditEvent", &event, &[]).await?;
    ensure!(a.status == 405 || a.status == 403, "status {}", a.status);
    Ok(())
}

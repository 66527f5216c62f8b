"""Third-party FHIR clients against a running gateway: Python `fhirpy` and `fhirclient` (SMART's
client) create, read, update and search by `_id`; every response is validated with the pydantic
models of `fhir.resources` (R4B models, wire-compatible with R4 for these resources).

Run: GATEWAY_BASE=http://127.0.0.1:8080/fhir pytest conformance/clients
"""

import os
import uuid

import pytest
import requests
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient as PatientModel

BASE = os.environ.get("GATEWAY_BASE", "http://127.0.0.1:8080/fhir")
# A bearer token the gateway trusts (e.g. `gateway token --scope "system/*.cruds"` for the demo).
TOKEN = os.environ["GATEWAY_TOKEN"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BSN = "http://fhir.nl/fhir/NamingSystem/bsn"


def _patient_body(family):
    return {
        "resourceType": "Patient",
        "identifier": [{"system": BSN, "value": "999911120"}, {"system": "urn:test", "value": str(uuid.uuid4())}],
        "name": [{"family": family, "given": ["Anna"]}],
        "gender": "female",
        "birthDate": "1984-03-02",
    }


def test_capability_statement_validates():
    r = requests.get(f"{BASE}/metadata", headers={"Accept": "application/fhir+json"}, timeout=30)
    assert r.status_code == 200
    cap = CapabilityStatement.model_validate(r.json())
    assert cap.fhirVersion == "4.0.1"
    assert any(res.type == "Patient" for res in cap.rest[0].resource)


def test_fhirpy_create_read_update_search():
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(BASE, authorization=f"Bearer {TOKEN}")
    patient = client.resource("Patient", **_patient_body("de Vries"))
    patient.save()
    assert patient.id
    assert patient["meta"]["versionId"] == "1"

    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "de Vries"
    PatientModel.model_validate(fetched.serialize())

    fetched["gender"] = "other"
    fetched.save()
    again = client.reference("Patient", patient.id).to_resource()
    assert again["gender"] == "other"
    assert again["meta"]["versionId"] == "2"

    found = client.resources("Patient").search(_id=patient.id).fetch_all()
    assert [p.id for p in found] == [patient.id]

    raw = requests.get(f"{BASE}/Patient", params={"_id": patient.id}, headers=AUTH, timeout=30).json()
    bundle = Bundle.model_validate(raw)
    assert bundle.type == "searchset" and bundle.total == 1


def test_fhirclient_create_read_update_search():
    from fhirclient import client as smart_client
    from fhirclient.models.patient import Patient

    smart = smart_client.FHIRClient(settings={"app_id": "gateway-ci", "api_base": BASE})
    server = smart.server
    server.session.headers.update(AUTH)

    p = Patient(_patient_body("Jansen"))
    created = p.create(server)
    assert created is not None
    new_id = created["id"]
    PatientModel.model_validate(created)

    read = Patient.read(new_id, server)
    assert read.name[0].family == "Jansen"
    assert read.birthDate.isostring == "1984-03-02"

    read.gender = "male"
    updated = read.update(server)
    assert updated["meta"]["versionId"] == "2"
    assert Patient.read(new_id, server).gender == "male"

    results = list(Patient.where(struct={"_id": new_id}).perform_resources_iter(server))
    assert [r.id for r in results] == [new_id]


def test_errors_are_operation_outcomes():
    r = requests.post(
        f"{BASE}/Patient",
        data='{"resourceType": "Patient", "gender": 3}',
        headers={"Content-Type": "application/fhir+json", **AUTH},
        timeout=30,
    )
    assert r.status_code == 400
    oo = OperationOutcome.model_validate(r.json())
    assert oo.issue[0].expression == ["Patient.gender"]


@pytest.mark.parametrize("kind", ["history", "search"])
def test_bundles_validate(kind):
    url = f"{BASE}/Patient/_history?_count=5" if kind == "history" else f"{BASE}/Patient?_count=5"
    Bundle.model_validate(requests.get(url, headers=AUTH, timeout=30).json())


def test_no_token_is_refused():
    r = requests.get(f"{BASE}/Patient", timeout=30)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    OperationOutcome.model_validate(r.json())

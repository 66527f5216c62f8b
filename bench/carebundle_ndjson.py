"""Synthetic R4 patients from the PyPI package `carebundle` (pinned in
conformance/clients/requirements.txt), written as one NDJSON file per resource type.

    python bench/carebundle_ndjson.py OUT_DIR PATIENTS SEED

Deterministic per seed. Patients are generated in chunks of 200 (seeds SEED, SEED+1, ...) and
appended to the files, so that a large population (the search benchmark's million resources)
never sits in memory at once. Every Patient gets a Dutch BSN identifier (valid 11-proof, unique
in the run, derived from its position), as the region's patients have.
"""

import json
import pathlib
import sys

from carebundle import generate_cohort, to_ndjson


BSN = "http://fhir.nl/fhir/NamingSystem/bsn"


def bsn(n: int) -> str:
    """The n-th 9-digit number that passes the BSN 11-proof (weights 9..2, then -1)."""
    while True:
        digits = [int(d) for d in f"{n:08d}"][-8:]
        check = sum(w * d for w, d in zip(range(9, 1, -1), digits)) % 11
        n += 1
        if check < 10:
            return "".join(map(str, digits)) + str(check)


def with_bsn(line: str, number: str) -> str:
    patient = json.loads(line)
    patient.setdefault("identifier", []).append({"system": BSN, "value": number})
    return json.dumps(patient, separators=(",", ":"), sort_keys=True)


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    patients, seed = int(sys.argv[2]), int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    chunk = 200
    for start in range(0, patients, chunk):
        n = min(chunk, patients - start)
        streams = to_ndjson(generate_cohort(count=n, seed=seed + start // chunk))
        patients_text = streams.get("Patient", "").splitlines()
        # Position-derived numbers stay unique across chunks (10 candidates per patient).
        streams["Patient"] = "".join(
            with_bsn(line, bsn(10_000_000 + (start + i) * 10)) + "\n" for i, line in enumerate(patients_text)
        )
        for ty, text in streams.items():
            with open(out / f"{ty}.ndjson", "a", encoding="utf-8") as f:
                f.write(text)
        print(f"{start + n}/{patients} patients", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

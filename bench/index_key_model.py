"""A model of what the search index's key costs a SQLite write, outside the gateway.

    python3 bench/index_key_model.py uuid|rid [DIR]

Builds the gateway's `search_index` table with its value and owner indexes (store/sqlite.rs),
writes 2,000 patients' worth of Observations (34 each, ~14 index rows each, the parameters a
carebundle Observation has) in commits of ~800 resources, as the SQLite writer groups them, and
prints the WAL bytes written per resource. `uuid` keys the rows by a random id, as the gateway
did until session 19; `rid` by an increasing integer (the per-resource key it uses since). Session 18 (2 cores):
uuid 48.0 KB per resource in 12.4 s, rid 8.8 KB in 4.6 s. Why it matters: every index entry of
a low-cardinality value (status, tag, code) lands on a random leaf of that value's range when
the id is random, and each dirty page is written to the WAL and again to the database.
"""

import os
import random
import sqlite3
import sys
import time
import uuid

PARAMS = ["code", "_lastUpdated", "_profile", "_security", "_tag", "category",
          "code-value-quantity", "date", "encounter", "patient", "subject", "performer",
          "status", "value-quantity"]


def main() -> None:
    mode = sys.argv[1]
    directory = sys.argv[2] if len(sys.argv) > 2 else "/tmp"
    path = os.path.join(directory, f"index_key_model_{mode}.db")
    for suffix in ["", "-wal", "-shm"]:
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=OFF")
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("PRAGMA cache_size=-65536")
    key = "id" if mode == "uuid" else "rid"
    column = "id TEXT" if mode == "uuid" else "rid INTEGER"
    c.executescript(f"""
CREATE TABLE search_index (type TEXT NOT NULL, {column} NOT NULL, param TEXT NOT NULL,
    system TEXT NOT NULL, value TEXT NOT NULL, raw TEXT NOT NULL, low REAL, high REAL);
CREATE INDEX search_index_value ON search_index (type, param, value, {key}, system);
CREATE INDEX search_index_owner ON search_index (type, {key}, param);
""")
    random.seed(1)
    codes = [f"{random.randint(1000, 99999)}-{random.randint(0, 9)}" for _ in range(50)]
    practitioners = [f"Practitioner/{uuid.uuid4()}" for _ in range(2000)]
    resources, wal_bytes, pending = 0, 0, []
    started = time.time()
    for p in range(2000):
        patient = f"Patient/{uuid.uuid4()}"
        encounters = [f"Encounter/{uuid.uuid4()}" for _ in range(3)]
        for _ in range(34):
            resources += 1
            k = str(uuid.uuid4()) if mode == "uuid" else resources
            code, ts = random.choice(codes), 1.7e12 + resources
            values = {
                "code": ("http://loinc.org", code, None),
                "_lastUpdated": ("", "", ts),
                "_profile": ("", "http://hl7.org/fhir/StructureDefinition/vitalsigns", None),
                "_security": ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "HTEST", None),
                "_tag": ("https://healthhub-utrecht.nl/fhir/CodeSystem/holder", "ura|90000001", None),
                "category": ("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", None),
                "code-value-quantity": ("http://loinc.org", code, float(random.randint(1, 200))),
                "date": ("", "", ts),
                "encounter": ("", random.choice(encounters), None),
                "patient": ("", patient, None),
                "subject": ("", patient, None),
                "performer": ("", random.choice(practitioners), None),
                "status": ("", "final", None),
                "value-quantity": ("", "", float(random.randint(1, 200))),
            }
            for param in PARAMS:
                system, value, low = values[param]
                pending.append(("Observation", k, param, system, value, "", low, low))
        if len(pending) >= 800 * len(PARAMS) or p == 1999:
            c.execute("BEGIN")
            c.executemany("INSERT INTO search_index VALUES (?, ?, ?, ?, ?, ?, ?, ?)", pending)
            c.execute("COMMIT")
            pending = []
            wal_bytes += os.path.getsize(path + "-wal")
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"{mode}: {resources} resources, {wal_bytes / resources / 1e3:.1f} KB of WAL per resource, "
          f"{time.time() - started:.1f} s")


if __name__ == "__main__":
    main()

"""Synthetic R4 patients from the PyPI package `carebundle` (pinned in
conformance/clients/requirements.txt), written as one NDJSON file per resource type.

    python bench/carebundle_ndjson.py OUT_DIR PATIENTS SEED [FIRST]

Deterministic per seed. With FIRST, patients are generated in chunks of 200 with seeds
SEED+FIRST/200 ... so that a large population (the search benchmark's million resources) can be
made in parts and appended (files are opened for append).
"""

import pathlib
import sys

from carebundle import generate_cohort, to_ndjson


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    patients, seed = int(sys.argv[2]), int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    chunk = 200
    for start in range(0, patients, chunk):
        n = min(chunk, patients - start)
        streams = to_ndjson(generate_cohort(count=n, seed=seed + start // chunk))
        for ty, text in streams.items():
            with open(out / f"{ty}.ndjson", "a", encoding="utf-8") as f:
                f.write(text)
        print(f"{start + n}/{patients} patients", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

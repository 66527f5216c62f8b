#!/usr/bin/env bash
# Regenerates schemas/fhir/ from the pinned npm package hl7.fhir.r4.examples@4.0.1.
# The generator checks the tarball's sha256 before reading it.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent hl7.fhir.r4.examples@4.0.1 >/dev/null)
cargo run --quiet -p schemagen -- --package "$tmp/hl7.fhir.r4.examples-4.0.1.tgz" --out schemas/fhir

#!/usr/bin/env bash
# Benchmarks: the gateway (SQLite and PostgreSQL) beside a bare hyper server from the same
# workspace, loaded by the same generator (wrk) in the same run; medians and ratios in
# bench/out/summary.md. Not part of CI (release build, several minutes).
#
#   bash bench/run.sh [--suites reads,consent,creates,replicas] [--seconds N] [--rounds N] [--connections N]
#
# PostgreSQL: GATEWAY_BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432/test); each run
# uses a fresh schema.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p gateway --bins
exec python3 bench/bench.py "$@"

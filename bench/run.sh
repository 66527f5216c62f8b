#!/usr/bin/env bash
# Benchmark: point reads on the gateway vs a bare hyper server from the same workspace, loaded by
# the same generator (wrk) in the same run, alternating rounds; prints throughput and latency
# percentiles and the gateway's throughput as a ratio of the bare server's.
#
#   bash bench/run.sh [--seconds N] [--rounds N] [--connections N]
#
# Not part of CI (it builds in release mode and takes a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROUND=10 ROUNDS=3 CONNECTIONS=32
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_ROUND=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p gateway --bins

out=bench/out; mkdir -p "$out"
work=$(mktemp -d)
gw_port=18180 bare_port=18181
cleanup() { kill "$gw_pid" "$bare_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

RUST_LOG=warn target/release/gateway serve --listen 127.0.0.1:$gw_port --data "$work/data" & gw_pid=$!
target/release/bare-hello 127.0.0.1:$bare_port 2>/dev/null & bare_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null && break; sleep 0.1; done

# Seed 1,000 patients; the read script cycles through their ids.
python3 - "$gw_port" "$work/ids.txt" <<'PY'
import json, sys, urllib.request
port, path = sys.argv[1], sys.argv[2]
ids = []
for i in range(1000):
    body = json.dumps({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": f"{i:09d}"}],
                       "name": [{"family": f"Bench{i}", "given": ["Load"]}], "gender": "unknown", "birthDate": "1970-01-01"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/fhir/Patient", data=body, method="POST", headers={"Content-Type": "application/fhir+json"})
    ids.append(json.load(urllib.request.urlopen(req))["id"])
open(path, "w").write("\n".join(ids) + "\n")
PY

cat > "$work/read.lua" <<LUA
local ids = {}
for line in io.lines("$work/ids.txt") do ids[#ids + 1] = line end
local i = 0
request = function()
  i = (i % #ids) + 1
  return wrk.format("GET", "/fhir/Patient/" .. ids[i], { ["Accept"] = "application/fhir+json" })
end
LUA

run() { # name url script -> wrk output file
  local name=$1 url=$2 script=$3 round=$4
  wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_ROUND}s" --latency ${script:+-s "$script"} "$url" > "$out/$name-$round.txt"
}
echo "warming up..."
wrk -t2 -c"$CONNECTIONS" -d3s -s "$work/read.lua" "http://127.0.0.1:$gw_port" >/dev/null
wrk -t2 -c"$CONNECTIONS" -d3s "http://127.0.0.1:$bare_port/fhir/Patient/x" >/dev/null
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS"
  run gateway "http://127.0.0.1:$gw_port" "$work/read.lua" "$r"
  run bare "http://127.0.0.1:$bare_port/fhir/Patient/x" "" "$r"
done

python3 - "$out" "$ROUNDS" "$CONNECTIONS" "$SECONDS_PER_ROUND" <<'PY' | tee "$out/summary.md"
import re, statistics, sys
out, rounds, conns, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def ms(v):
    n, unit = float(re.match(r"[\d.]+", v).group()), re.sub(r"[\d.]+", "", v)
    return n * {"us": 0.001, "ms": 1, "s": 1000}[unit]
def parse(path):
    t = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    lat = {p: ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", t).group(1)) for p in ("50", "75", "90", "99")}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    return rps, lat, int(errors.group(1)) if errors else 0
res = {n: [parse(f"{out}/{n}-{r}.txt") for r in range(1, rounds + 1)] for n in ("gateway", "bare")}
med = lambda xs: statistics.median(xs)
print(f"## Point reads: gateway vs bare hyper ({rounds} alternating rounds x {secs} s, wrk -t2 -c{conns}, release build, 2 cores)\n")
print("| server | req/s (median) | p50 ms | p75 ms | p90 ms | p99 ms | non-2xx |")
print("|---|---|---|---|---|---|---|")
for n in ("gateway", "bare"):
    rs = res[n]
    print(f"| {n} | {med([r[0] for r in rs]):.0f} | " + " | ".join(f"{med([r[1][p] for r in rs]):.2f}" for p in ("50", "75", "90", "99")) + f" | {sum(r[2] for r in rs)} |")
g, b = med([r[0] for r in res["gateway"]]), med([r[0] for r in res["bare"]])
print(f"\nThroughput ratio gateway/bare: {g / b * 100:.1f} %  (per round: " + ", ".join(f"{x[0] / y[0] * 100:.1f} %" for x, y in zip(res["gateway"], res["bare"])) + ")")
PY

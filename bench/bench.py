"""Gateway benchmarks, each run side by side with a baseline in the same run (see bench/run.sh).

Suites:
  reads     point reads: gateway on SQLite, gateway on PostgreSQL, bare hyper server
  creates   creates: gateway on SQLite, gateway on PostgreSQL, bare hyper server (POST answered)
  replicas  creates/s with 1, 2 and 4 gateway replicas on one PostgreSQL
  import    `gateway import` of the Synthea population in ../shared/synthea (--import-data), fresh
            data directory per round, beside a baseline that stores the same NDJSON lines as
            plain rows in SQLite (WAL, synchronous=FULL, one transaction per 500 lines, no
            validation, indexing, policy or audit): resources/s, medians
  search    a carebundle population (default ~1,000,000 resources, made once with
            bench/carebundle_ndjson.py into --search-data) loaded over REST with bench-load (writes/s
            with indexing), then the first page of Observation?patient=X&category=laboratory and
            of Patient?identifier=bsn|N (wrk, --search-connections), and _total=accurate over the
            ~112,000 DiagnosticReports; SQLite and/or PostgreSQL (--search-stores)

  social    the SQL adapter's read (GET Observation/[id] from MariaDB) beside the same row read
            directly with sqlx (sql-direct), and WMO301 messages ingested per second by POST
            /istandaarden (wrk, unique message ids per thread)
  federation a partner gateway (St. Antonius' FHIR server) read directly, beside the same reads
            through the gateway's upstream-FHIR adapter without a cache and from its cache, and
            local reads at the gateway (wrk -c--federation-connections, latency at low load)

Rounds alternate between the servers so drift on the machine hits all of them alike; the tables
report medians over rounds and the ratio to the bare server.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = os.path.join(ROOT, "target/release/gateway")
BARE = os.path.join(ROOT, "target/release/bare-hello")
LOADER = os.path.join(ROOT, "target/release/bench-load")
BSN = "http://fhir.nl/fhir/NamingSystem/bsn"
LOAD_ORDER = ["Practitioner", "Patient", "Encounter", "Condition", "AllergyIntolerance", "MedicationRequest",
              "Observation", "DiagnosticReport"]
PG_URL = os.environ.get("GATEWAY_BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")

PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}],
    "name": [{"family": "Bench", "given": ["Load"]}],
    "gender": "unknown",
    "birthDate": "1970-01-01",
}


def demo_token(scope="system/*.cruds", org="umcu"):
    """A verified JWT on every request: the cost of authentication is part of what is measured."""
    return subprocess.run([GATEWAY, "token", "--scope", scope, "--org", org], capture_output=True, text=True, check=True).stdout.strip()


TOKEN = None


class Server:
    def __init__(self, name, argv, port, env=None):
        self.name, self.port = name, port
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, **(env or {})})
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1)
                return
            except Exception:
                time.sleep(0.05)
        raise SystemExit(f"{name} did not start; see {self.log.name}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=40)


def gateway(name, port, workdir, config=""):
    cfg = os.path.join(workdir, f"{name}.toml")
    # The benchmark authenticates with demo tokens, as the demo region does.
    open(cfg, "w").write(config + "\n[auth]\ndemo = true\n")
    return Server(name, [GATEWAY, "serve", "--config", cfg, "--listen", f"127.0.0.1:{port}",
                         "--data", os.path.join(workdir, name)], port, {"RUST_LOG": "warn"})


def postgres_config(schema):
    return f'store = "{PG_URL}"\n[postgres]\nschema = "{schema}"\npool_size = 16\n'


def seed(server, n=1000):
    ids = []
    for i in range(n):
        body = dict(PATIENT, identifier=[{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": f"{i:09d}"}])
        req = urllib.request.Request(f"{server.url}/fhir/Patient", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {TOKEN}"})
        ids.append(json.load(urllib.request.urlopen(req))["id"])
    return ids


def lua_reads(workdir, name, ids, prefix="/fhir/Patient/", token=None):
    token = token or TOKEN
    path = os.path.join(workdir, f"{name}-ids.txt")
    open(path, "w").write("\n".join(ids) + "\n")
    script = os.path.join(workdir, f"{name}-read.lua")
    open(script, "w").write(f"""
local ids = {{}}
for line in io.lines("{path}") do ids[#ids + 1] = line end
local i = 0
request = function()
  i = (i % #ids) + 1
  return wrk.format("GET", "{prefix}" .. ids[i], {{ ["Accept"] = "application/fhir+json", ["Authorization"] = "Bearer {token}" }})
end
""")
    return script


def lua_creates(workdir):
    script = os.path.join(workdir, "create.lua")
    body = json.dumps(PATIENT).replace('"', '\\"')
    open(script, "w").write(f"""
wrk.method = "POST"
wrk.body = "{body}"
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.headers["Authorization"] = "Bearer {TOKEN}"
""")
    return script


def post(server, body, token=None):
    req = urllib.request.Request(f"{server.url}/fhir/{body['resourceType']}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {token or TOKEN}"})
    return json.load(urllib.request.urlopen(req))["id"]


def seed_consented(server, n=200):
    """n patients, each with a lab result held by UMC Utrecht and a Consent permitting GPs."""
    obs = []
    for i in range(n):
        pid = post(server, dict(PATIENT, identifier=[{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": f"{i:09d}"}]))
        obs.append(post(server, {"resourceType": "Observation", "status": "final", "code": {"text": "Hb"},
                                 "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
                                 "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 8.5, "unit": "mmol/L"}}))
        post(server, {"resourceType": "Consent", "status": "active",
                      "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                      "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                      "patient": {"reference": f"Patient/{pid}"}, "policy": [{"uri": "https://healthhub-utrecht.nl/consent-policy"}],
                      "provision": {"type": "deny", "provision": [{"type": "permit", "actor": [{
                          "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                          "reference": {"identifier": {"system": "https://healthhub-utrecht.nl/fhir/CodeSystem/organization-type", "value": "gp"}}}]}]}})
    return obs


def ms(v):
    n, unit = float(re.match(r"[\d.]+", v).group()), re.sub(r"[\d.]+", "", v)
    return n * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def wrk(url, script, seconds, connections, threads=2):
    # wrk refuses more threads than connections (the search suite's latency runs use -c1).
    threads = min(threads, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "90", "99")}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    done = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "lat": lat, "non2xx": int(bad.group(1)) if bad else 0, "socket": errors.group(1) if errors else "",
            "requests": int(done.group(1)) if done else 0}


def table(title, results, baseline="bare"):
    med = lambda xs: statistics.median(xs)
    lines = [f"### {title}", "", "| server | req/s (median) | p50 ms | p90 ms | p99 ms | non-2xx | vs bare |", "|---|---|---|---|---|---|---|"]
    base = med([r["rps"] for r in results[baseline]]) if baseline in results else None
    for name, rs in results.items():
        rps = med([r["rps"] for r in rs])
        ratio = f"{rps / base * 100:.1f} %" if base else "-"
        lines.append(f"| {name} | {rps:.0f} | " + " | ".join(f"{med([r['lat'][p] for r in rs]):.2f}" for p in ("50", "90", "99"))
                     + f" | {sum(r['non2xx'] for r in rs)} | {ratio} |")
    return "\n".join(lines) + "\n"


def alternate(targets, rounds, seconds, connections):
    """targets: name -> (url, script). Runs each once per round, in turn."""
    results = {name: [] for name in targets}
    for r in range(rounds):
        for name, (url, script) in targets.items():
            print(f"  round {r + 1}/{rounds}: {name}", file=sys.stderr)
            results[name].append(wrk(url, script, seconds, connections))
    return results


def timed_get(url, token=None):
    req = urllib.request.Request(url, headers={"Accept": "application/fhir+json", "Authorization": f"Bearer {token or TOKEN}"})
    started = time.perf_counter()
    body = json.load(urllib.request.urlopen(req, timeout=120))
    return (time.perf_counter() - started) * 1000, body


def token_endpoint(port, token):
    """A SMART token endpoint for the benchmark: answers every client_credentials request with one
    demo token of the partner's organisation (the assertion is checked by tests/federation.rs, not
    here)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"access_token": token, "token_type": "bearer", "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def adapter_config(upstream, token_url, cache):
    key = os.path.join(ROOT, "gateway/src/policy/demo/demo-issuer.key.pem")
    return f"""
[[adapters]]
name = "antonius"
kind = "fhir"
base_url = "{upstream}/fhir"
resources = [{{ type = "Patient", search_params = ["identifier"] }}]
[adapters.organization]
system = "http://fhir.nl/fhir/NamingSystem/ura"
value = "90000002"
type = "hospital"
name = "St. Antonius (bench partner)"
[adapters.cache]
{cache}
[adapters.auth]
kind = "smart-backend"
token_url = "{token_url}"
client_id = "bench-gateway"
private_key_file = "{key}"
algorithm = "ES256"
scope = "system/*.rs"
"""


def federation_suite(args, workdir, servers, report):
    partner_token = demo_token("system/*.cruds", "antonius")
    reader = demo_token("system/*.rs", "antonius")
    partner = gateway("partner", 18290, workdir)
    servers.append(partner)
    tokens = token_endpoint(18291, demo_token("system/*.rs", "antonius"))
    url = "http://127.0.0.1:18291/token"
    through = gateway("through-no-cache", 18292, workdir, adapter_config(partner.url, url, "enabled = false"))
    cached = gateway("through-cache", 18293, workdir, adapter_config(partner.url, url, "fresh_ms = 3600000"))
    servers += [through, cached]
    print("federation: seeding", file=sys.stderr)
    remote = [post(partner, dict(PATIENT, identifier=[{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": f"{i:09d}"}]), partner_token)
              for i in range(200)]
    local = [post(cached, dict(PATIENT, identifier=[{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": f"{i:09d}"}]), partner_token)
             for i in range(200)]
    via = [f"antonius.{i}" for i in remote]
    targets = {
        "partner read directly": (partner.url, lua_reads(workdir, "direct", remote, token=partner_token)),
        "through the adapter, no cache": (through.url, lua_reads(workdir, "through", via, token=reader)),
        "through the adapter, cache hit": (cached.url, lua_reads(workdir, "cached", via, token=reader)),
        "local read at the gateway": (cached.url, lua_reads(workdir, "local", local, token=reader)),
    }
    c = args.federation_connections
    for u, script in targets.values():
        wrk(u, script, 3, c)  # warm-up (fills the cache)
    results = alternate(targets, args.rounds, args.seconds, c)
    tokens.shutdown()
    med = lambda name, f: statistics.median([f(r) for r in results[name]])
    p50 = lambda name: med(name, lambda r: r["lat"]["50"])
    rps = lambda name: med(name, lambda r: r["rps"])
    lines = [table(f"Reads through the upstream-FHIR adapter (GET Patient/[id], 200 patients, wrk -c{c})", results,
                   baseline="partner read directly").replace("vs bare", "vs partner direct"),
             f"- adapter read adds **{p50('through the adapter, no cache') - p50('partner read directly'):.2f} ms** at p50 over reading the partner directly (target <= 1 ms)",
             f"- cache hit vs local read: p50 **{p50('through the adapter, cache hit') / p50('local read at the gateway'):.2f}x**, "
             f"throughput {rps('local read at the gateway') / rps('through the adapter, cache hit'):.2f}x (target within 1.5x)", ""]
    report.append("\n".join(lines))


MARIADB = os.environ.get("GATEWAY_BENCH_MARIADB", "mysql://root@127.0.0.1:3306/test")
SQL_DIRECT = os.path.join(ROOT, "target/release/sql-direct")


def mysql(sql):
    subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "test"], input=sql, text=True, check=True)


def eleven_proof_bsns(n):
    out, i = [], 100000000
    while len(out) < n:
        i += 1
        d = [int(c) for c in f"{i:09d}"]
        s = sum(d[k] * (9 - k) for k in range(8)) - d[8]
        if s % 11 == 0 and s != 0:
            out.append(f"{i:09d}")
    return out


def social_suite(args, workdir, servers, report):
    """The SQL adapter read vs the same row read directly from MariaDB, and iWmo messages per
    second beside the same content as a FHIR transaction."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    n = 2000
    print("social: seeding MariaDB", file=sys.stderr)
    rows = ",".join(f"({i}, {1 + i % 500}, 'RR_SYS', {110 + i % 40}, 'mm[Hg]', '2026-0{1 + i % 9}-1{i % 10} 08:30:00')" for i in range(1, n + 1))
    mysql(f"CREATE TABLE {prefix}_metingen (meting_id INT PRIMARY KEY, client_id INT, soort VARCHAR(20), waarde DECIMAL(7,2), "
          f"eenheid VARCHAR(20), gemeten_op DATETIME); INSERT INTO {prefix}_metingen VALUES {rows};")
    try:
        config = f"""
[[adapters]]
name = "zorg"
kind = "sql"
url = "{MARIADB}"
pool_size = 4
[adapters.organization]
system = "http://fhir.nl/fhir/NamingSystem/ura"
value = "90000004"
type = "vvt"
name = "bench care home"
[[adapters.mappings]]
resource = "Observation"
table = "{prefix}_metingen"
id = "meting_id"
[adapters.mappings.fields]
patient = "client_id"
effective = "gemeten_op"
value = {{ column = "waarde", unit_column = "eenheid" }}
code = {{ column = "soort", map = {{ RR_SYS = {{ system = "http://loinc.org", code = "8480-6" }} }} }}
[istandaarden.municipalities."0344"]
system = "urn:healthhub-utrecht:cbs-gemeentecode"
value = "0344"
type = "municipality"
name = "Gemeente Utrecht"
"""
        gw = gateway("social", 18294, workdir, config)
        servers.append(gw)
        vvt = demo_token("system/*.rs", "vvt")
        ids = [str(i) for i in range(1, n + 1)]
        ids_file = os.path.join(workdir, "sql-ids.txt")
        open(ids_file, "w").write("\n".join(ids) + "\n")
        script = lua_reads(workdir, "sqlread", [f"zorg.{i}" for i in ids], "/fhir/Observation/", vvt)
        lines = [f"### Reads through the SQL adapter vs the same row read directly from MariaDB ({n} rows)", "",
                 "| client | concurrency | calls/s (median) | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|---|"]
        wrk(gw.url, script, 3, 1, threads=1)  # warm-up (resolves the mapping)
        for c in (1, 4):
            direct, through = [], []
            for _ in range(args.rounds):
                out = subprocess.run([SQL_DIRECT, MARIADB, f"SELECT * FROM {prefix}_metingen WHERE meting_id = ?", ids_file,
                                      str(args.seconds), str(c)], capture_output=True, text=True, check=True).stdout
                direct.append(json.loads(out))
                through.append(wrk(gw.url, script, args.seconds, c, threads=1))
            med = statistics.median
            lines.append(f"| MariaDB directly (sqlx pool) | {c} | {med([d['rps'] for d in direct]):.0f} | "
                         + " | ".join(f"{med([d[p] for d in direct]):.3f}" for p in ("p50", "p90", "p99")) + " |")
            lines.append(f"| gateway: JWT, SQL adapter, FHIR mapping, policy, audit | {c} | {med([t['rps'] for t in through]):.0f} | "
                         + " | ".join(f"{med([t['lat'][p] for t in through]):.3f}" for p in ("50", "90", "99")) + " |")
        report.append("\n".join(lines) + "\n")

        # iWmo: WMO301 messages (one allocation each) to POST /istandaarden, unique ids per thread.
        bsns = eleven_proof_bsns(5000)
        utrecht = demo_token("system/*.rs", "utrecht")
        lua = os.path.join(workdir, "wmo301.lua")
        open(lua, "w").write("""
local bsns = {%s}
local run = RUN
local counter = 1
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
function init(args) n = 0 end
request = function()
  n = n + 1
  local ident = string.format("%%d%%d%%08d", run, tid, n)
  local number = string.format("%%d%%d%%06d", run, tid, n %% 1000000)
  local bsn = bsns[(tid * 7919 + n) %% #bsns + 1]
  local body = '<?xml version="1.0" encoding="UTF-8"?><wmo301:Bericht xmlns:wmo301="http://www.istandaarden.nl/iwmo/3_2/wmo301/schema" xmlns:iwmo="http://www.istandaarden.nl/iwmo/3_2/basisschema/schema">'
    .. '<wmo301:Header><wmo301:BerichtCode>414</wmo301:BerichtCode><wmo301:BerichtVersie>3</wmo301:BerichtVersie><wmo301:BerichtSubversie>2</wmo301:BerichtSubversie><wmo301:Afzender>0344</wmo301:Afzender><wmo301:Ontvanger>42420001</wmo301:Ontvanger>'
    .. '<wmo301:BerichtIdentificatie><iwmo:Identificatie>' .. ident .. '</iwmo:Identificatie><iwmo:Dagtekening>2026-01-05</iwmo:Dagtekening></wmo301:BerichtIdentificatie><wmo301:XsdVersie><iwmo:BasisschemaXsdVersie>1.0.0</iwmo:BasisschemaXsdVersie><iwmo:BerichtXsdVersie>1.0.0</iwmo:BerichtXsdVersie></wmo301:XsdVersie></wmo301:Header>'
    .. '<wmo301:Client><wmo301:Bsn>' .. bsn .. '</wmo301:Bsn><wmo301:Geboortedatum><iwmo:Datum>1950-02-03</iwmo:Datum></wmo301:Geboortedatum><wmo301:Geslacht>2</wmo301:Geslacht><wmo301:Naam><iwmo:Geslachtsnaam><iwmo:Achternaam>Bench</iwmo:Achternaam></iwmo:Geslachtsnaam><iwmo:NaamGebruik>1</iwmo:NaamGebruik></wmo301:Naam>'
    .. '<wmo301:Contactgegevens><wmo301:Contact><wmo301:Soort>01</wmo301:Soort><wmo301:Adres><iwmo:Huis><iwmo:Huisnummer>1</iwmo:Huisnummer></iwmo:Huis><iwmo:Postcode>3511AA</iwmo:Postcode><iwmo:Straatnaam>Teststraat</iwmo:Straatnaam><iwmo:Plaatsnaam>Utrecht</iwmo:Plaatsnaam></wmo301:Adres></wmo301:Contact></wmo301:Contactgegevens>'
    .. '<wmo301:ToegewezenProducten><wmo301:ToegewezenProduct><wmo301:ToewijzingNummer>' .. number .. '</wmo301:ToewijzingNummer><wmo301:Product><iwmo:Categorie>01</iwmo:Categorie><iwmo:Code>01A01</iwmo:Code></wmo301:Product><wmo301:Toewijzingsdatum>2026-01-05</wmo301:Toewijzingsdatum><wmo301:Ingangsdatum>2026-02-01</wmo301:Ingangsdatum><wmo301:Einddatum>2026-12-31</wmo301:Einddatum><wmo301:Omvang><iwmo:Volume>3</iwmo:Volume><iwmo:Eenheid>04</iwmo:Eenheid><iwmo:Frequentie>2</iwmo:Frequentie></wmo301:Omvang></wmo301:ToegewezenProduct></wmo301:ToegewezenProducten></wmo301:Client></wmo301:Bericht>'
  return wrk.format("POST", "/istandaarden", { ["Content-Type"] = "application/xml", ["Authorization"] = "Bearer %s" }, body)
end
done = function(summary, latency, requests) end
""" % (",".join(f'"{b}"' for b in bsns), utrecht))
        lines = ["### iWmo WMO301 allocations ingested (POST /istandaarden: parse, rules, Patient + ServiceRequest in one transaction, receipt, audit, WMO302 answer)", "",
                 "| connections | messages/s (median) | p50 ms | p99 ms | non-2xx |", "|---|---|---|---|---|"]
        template = open(lua).read()
        runs = 0

        def one_run(c):
            # Every run its own message ids and allocation numbers: each message is new.
            nonlocal runs
            runs += 1
            open(lua, "w").write(template.replace("local run = RUN", f"local run = {runs}"))
            return wrk(gw.url + "/istandaarden", lua, args.seconds, c, threads=min(c, 2))

        sent = 0
        for c in (1, 4):
            rs = [one_run(c) for _ in range(args.rounds)]
            sent += sum(r["requests"] for r in rs)
            med = statistics.median
            lines.append(f"| {c} | {med([r['rps'] for r in rs]):.0f} | {med([r['lat']['50'] for r in rs]):.2f} | "
                         f"{med([r['lat']['99'] for r in rs]):.2f} | {sum(r['non2xx'] for r in rs)} |")
        total = timed_get(f"{gw.url}/fhir/ServiceRequest?_summary=count", utrecht)[1].get("total")
        lines.append(f"\n- messages sent: {sent}; ServiceRequests stored afterwards: {total} (one per accepted message)")
        report.append("\n".join(lines) + "\n")
    finally:
        mysql(f"DROP TABLE IF EXISTS {prefix}_metingen;")


def wait_tcp(port):
    import socket
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def mllp_suite(args, workdir, servers, schema, report):
    """HL7 v2 ADT^A04 over MLLP, each message acknowledged (AA) before the next on its connection:
    the gateway (parse, map, one transaction through the chokepoint, durable, audited) against
    bare-mllp (the same listener and mapping, nothing stored)."""
    bare_port = 18295
    bare = subprocess.Popen([os.path.join(ROOT, "target/release/bare-mllp"), f"127.0.0.1:{bare_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_tcp(bare_port)
    targets = {"bare MLLP (nothing stored)": bare_port}
    for name, port, config in (("gateway, SQLite", 18297, ""), ("gateway, PostgreSQL", 18299, postgres_config(schema))):
        servers.append(gateway(f"mllp-{port}", port - 1, workdir, config + f'\n[mllp]\nlisten = "127.0.0.1:{port}"\n'))
        wait_tcp(port)
        targets[name] = port
    load = os.path.join(ROOT, "target/release/mllp-load")
    results = {}
    try:
        for c in args.mllp_connections:
            for r in range(args.rounds):
                for name, port in targets.items():
                    out = subprocess.run([load, "--addr", f"127.0.0.1:{port}", "--connections", str(c),
                                          "--seconds", str(args.seconds), "--run", f"r{r}c{c}{uuid.uuid4().hex[:6]}"],
                                         capture_output=True, text=True, check=True).stdout
                    results.setdefault((name, c), []).append(json.loads(out))
    finally:
        bare.terminate()
    lines = ["### HL7 v2 ADT^A04 over MLLP, acknowledged one by one per connection (AA after commit)", "",
             "| connections | target | acks/s (median) | ACK p50 ms | ACK p99 ms | other answers | vs bare |",
             "|---|---|---|---|---|---|---|"]
    for c in args.mllp_connections:
        base = statistics.median(x["per_second"] for x in results[("bare MLLP (nothing stored)", c)])
        for name in targets:
            rs = results[(name, c)]
            rate = statistics.median(x["per_second"] for x in rs)
            lines.append(f"| {c} | {name} | {rate:,.0f} | {statistics.median(x['p50_ms'] for x in rs):.2f} | "
                         f"{statistics.median(x['p99_ms'] for x in rs):.2f} | {sum(x['other'] for x in rs)} | {rate / base:.3f} |")
    report.append("\n".join(lines) + "\n")


def bare_import(data, path):
    """The floor: every NDJSON line into one SQLite table, as the gateway commits (WAL, FULL)."""
    import sqlite3
    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE r (type TEXT, id TEXT, body BLOB, PRIMARY KEY (type, id))")
    n = 0
    for name in sorted(os.listdir(data)):
        if not name.endswith(".ndjson"):
            continue
        lines = [l for l in open(os.path.join(data, name), encoding="utf-8") if l.strip()]
        for at in range(0, len(lines), 500):
            rows = []
            for line in lines[at:at + 500]:
                r = json.loads(line)
                if "resourceType" in r:
                    rows.append((r["resourceType"], r.get("id") or str(uuid.uuid4()), json.dumps(r).encode()))
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO r VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
            n += len(rows)
    db.close()
    return n / (time.perf_counter() - started)


def import_suite(args, workdir, report):
    data = args.import_data
    results = {"gateway import": [], "bare SQLite rows": []}
    cfg = os.path.join(workdir, "import.toml")
    open(cfg, "w").write("[auth]\ndemo = true\n")
    for r in range(args.rounds):
        target = os.path.join(workdir, f"import-{r}")
        out = subprocess.run([GATEWAY, "import", "--config", cfg, "--data", target, data],
                             capture_output=True, text=True, check=True).stdout
        rate = float(re.search(r"\(([\d.]+) resources/s\)", out).group(1))
        results["gateway import"].append(rate)
        results["bare SQLite rows"].append(bare_import(data, os.path.join(workdir, f"bare-{r}.db")))
        print(f"  round {r + 1}/{args.rounds}: gateway {rate:.0f}/s, bare {results['bare SQLite rows'][-1]:.0f}/s", file=sys.stderr)
    base = statistics.median(results["bare SQLite rows"])
    lines = [f"### Import of {data} ({args.rounds} rounds, fresh data directory each)", "",
             "| what | resources/s (median) | min | max | vs bare |", "|---|---|---|---|---|"]
    for name, rates in results.items():
        med = statistics.median(rates)
        lines.append(f"| {name} | {med:.0f} | {min(rates):.0f} | {max(rates):.0f} | {med / base * 100:.1f} % |")
    report.append("\n".join(lines) + "\n")


def search_suite(args, workdir, bare, servers, report):
    data = args.search_data
    if not os.path.exists(os.path.join(data, "Patient.ndjson")):
        print(f"search: generating {args.search_patients} carebundle patients into {data}", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(ROOT, "bench/carebundle_ndjson.py"), data,
                        str(args.search_patients), "1000"], check=True)
    files = [os.path.join(data, f"{t}.ndjson") for t in LOAD_ORDER if os.path.exists(os.path.join(data, f"{t}.ndjson"))]
    resources = sum(sum(1 for _ in open(f)) for f in files)
    patients, bsns = [], []
    for line in open(os.path.join(data, "Patient.ndjson")):
        p = json.loads(line)
        patients.append(p["id"])
        bsns.extend(i["value"] for i in p.get("identifier", []) if i.get("system") == BSN)
        if len(patients) >= 2000:
            break
    lines = [f"### Search over {resources:,} stored resources (carebundle, loaded over REST)", ""]
    for name in args.search_stores.split(","):
        config = "" if name == "sqlite" else postgres_config(f"bench_search_{uuid.uuid4().hex[:8]}")
        port = 18290 if name == "sqlite" else 18291
        gw = gateway(f"search-{name}", port, workdir, config)
        servers.append(gw)
        print(f"search: loading {resources:,} resources into {name}", file=sys.stderr)
        out = subprocess.run([LOADER, "--base", gw.url + "/fhir", "--token", TOKEN, "--concurrency", "64", *files],
                             capture_output=True, text=True, check=True).stdout
        load = json.loads(out)
        lines.append(f"- {name}: loaded {load['written']:,} resources in {load['seconds']:.0f} s = "
                     f"**{load['per_second']:.0f} writes/s** with indexing ({load['failed']} failed)")
        by_patient = lua_reads(workdir, f"{name}-lab", patients, "/fhir/Observation?category=laboratory&patient=")
        by_bsn = lua_reads(workdir, f"{name}-bsn", bsns, f"/fhir/Patient?identifier={BSN}%7C")
        targets = {
            f"{name}: Observation?patient=X&category=laboratory": (gw.url, by_patient),
            f"{name}: Patient?identifier=bsn|N": (gw.url, by_bsn),
            "bare": (bare.url + "/fhir/Patient/x", None),
        }
        for url, script in targets.values():
            wrk(url, script, 3, args.search_connections)  # warm-up
        lines.append("")
        lines.append(table(f"First pages on {name} (wrk -c{args.search_connections})",
                           alternate(targets, args.rounds, args.seconds, args.search_connections)))
        # Counts over many matches: a token, and ranges (a date, a quantity, a birth date), whose
        # conditions are probed per resource (a range never drives a search).
        for q in ("DiagnosticReport?status=final&_total=accurate&_count=1",
                  "Observation?category=vital-signs&_total=accurate&_count=1",
                  "Observation?date=lt2030-01-01&_total=accurate&_count=1",
                  "Observation?value-quantity=gt5&_total=accurate&_count=1",
                  "Patient?birthdate=lt1980-01-01&_total=accurate&_count=1"):
            times = []
            for _ in range(7):
                ms_, body = timed_get(f"{gw.url}/fhir/{q}")
                times.append(ms_)
            lines.append(f"- {name}: `{q}`: total {body.get('total'):,}, median {statistics.median(times):.0f} ms, "
                         f"max {max(times):.0f} ms (7 runs)")
        lines.append("")
        gw.stop()
        servers.remove(gw)
    report.append("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suites", default="reads,consent,creates,replicas")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--search-data", default=os.path.join(ROOT, "bench/out/carebundle"))
    ap.add_argument("--search-patients", type=int, default=22400)
    ap.add_argument("--search-stores", default="sqlite,postgres")
    ap.add_argument("--search-connections", type=int, default=8)
    ap.add_argument("--federation-connections", type=int, default=4)
    ap.add_argument("--mllp-connections", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8])
    ap.add_argument("--import-data", default=os.path.join(ROOT, "../shared/synthea/10-patients"))
    args = ap.parse_args()
    global TOKEN
    TOKEN = demo_token()
    suites = args.suites.split(",")
    workdir = tempfile.mkdtemp(prefix="gateway-bench-")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    report = [f"## Gateway benchmarks ({time.strftime('%Y-%m-%d %H:%M')}, release build, 2 cores, wrk -t2 -c{args.connections}, "
              f"{args.rounds} alternating rounds x {args.seconds} s)\n"]
    servers = []
    try:
        bare = Server("bare", [BARE, "127.0.0.1:18281"], 18281)
        sqlite = gateway("sqlite", 18282, workdir)
        pg = gateway("postgres", 18283, workdir, postgres_config(schema))
        servers += [bare, sqlite, pg]
        if "reads" in suites:
            print("reads: seeding", file=sys.stderr)
            targets = {
                "gateway, SQLite": (sqlite.url, lua_reads(workdir, "sqlite", seed(sqlite))),
                "gateway, PostgreSQL": (pg.url, lua_reads(workdir, "pg", seed(pg))),
                "bare": (bare.url + "/fhir/Patient/x", None),
            }
            for url, script in targets.values():
                wrk(url, script, 3, args.connections)  # warm-up
            report.append(table("Point reads (GET Patient/[id], 1,000 stored patients)",
                                alternate(targets, args.rounds, args.seconds, args.connections)))
        if "consent" in suites:
            print("consent: seeding", file=sys.stderr)
            obs = seed_consented(sqlite)
            gp = demo_token("user/Observation.rs", "gp")
            targets = {
                "holder reads its own (umcu)": (sqlite.url, lua_reads(workdir, "own", obs, "/fhir/Observation/")),
                "GP reads under a Consent permit": (sqlite.url, lua_reads(workdir, "gp", obs, "/fhir/Observation/", gp)),
                "bare": (bare.url + "/fhir/Patient/x", None),
            }
            for url, script in targets.values():
                wrk(url, script, 3, args.connections)  # warm-up
            report.append(table("Reads with a verified JWT, a consent decision and an audit record per request (GET Observation/[id], SQLite)",
                                alternate(targets, args.rounds, args.seconds, args.connections)))
        if "creates" in suites:
            script = lua_creates(workdir)
            targets = {
                "gateway, SQLite": (sqlite.url + "/fhir/Patient", script),
                "gateway, PostgreSQL": (pg.url + "/fhir/Patient", script),
                "bare": (bare.url + "/fhir/Patient", script),
            }
            report.append(table("Creates (POST Patient, validated, durable before the answer)",
                                alternate(targets, args.rounds, args.seconds, args.connections)))
        if "import" in suites:
            import_suite(args, workdir, report)
        if "federation" in suites:
            federation_suite(args, workdir, servers, report)
        if "search" in suites:
            search_suite(args, workdir, bare, servers, report)
        if "social" in suites:
            social_suite(args, workdir, servers, report)
        if "mllp" in suites:
            mllp_suite(args, workdir, servers, schema, report)
        if "replicas" in suites:
            script = lua_creates(workdir)
            extra = [gateway(f"postgres-{i}", 18283 + i, workdir, postgres_config(schema)) for i in (1, 2, 3)]
            servers += extra
            replicas = [pg] + extra
            lines = ["### Creates/s with replicas on one PostgreSQL (connections split evenly, one wrk per replica)", "",
                     "| replicas | creates/s (median) | per replica | non-2xx |", "|---|---|---|---|"]
            for n in (1, 2, 4):
                totals, bad = [], 0
                for _ in range(args.rounds):
                    procs = []
                    for s in replicas[:n]:
                        c = max(2, args.connections // n)
                        procs.append(subprocess.Popen(["wrk", "-t1", f"-c{c}", f"-d{args.seconds}s", "-s", script, s.url + "/fhir/Patient"],
                                                      stdout=subprocess.PIPE, text=True))
                    outs = [p.communicate()[0] for p in procs]
                    totals.append(sum(float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1)) for o in outs))
                    bad += sum(int(m.group(1)) for o in outs for m in [re.search(r"Non-2xx or 3xx responses: (\d+)", o)] if m)
                    print(f"  {n} replica(s): {totals[-1]:.0f}/s", file=sys.stderr)
                med = statistics.median(totals)
                lines.append(f"| {n} | {med:.0f} | {med / n:.0f} | {bad} |")
            report.append("\n".join(lines) + "\n")
    finally:
        for s in servers:
            s.stop()
    text = "\n".join(report)
    os.makedirs(os.path.join(ROOT, "bench/out"), exist_ok=True)
    open(os.path.join(ROOT, "bench/out/summary.md"), "w").write(text)
    print(text)


if __name__ == "__main__":
    main()

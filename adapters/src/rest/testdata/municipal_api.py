"""A municipality's case-management API for the REST adapter's tests (stdlib only): clients and
Wmo/Jeugdwet allocations from a JSON data file, bearer-token auth, filters as query parameters,
pages of two items with an absolute `next` link, and a slow endpoint.

    python3 municipal_api.py PORT DATA_FILE TOKEN
"""
import json
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, DATA, TOKEN = int(sys.argv[1]), json.load(open(sys.argv[2])), sys.argv[3]
BASE = f"http://127.0.0.1:{PORT}/api/v1"
PAGE = 2


class Handler(BaseHTTPRequestHandler):
    def answer(self, status, body):
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/api/v1":
            return self.answer(200, {"api": "gemeente"})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.answer(401, {"error": "unauthorized"})
        parts = [p for p in url.path.split("/") if p][2:]
        if not parts or parts[0] not in DATA:
            return self.answer(404, {"error": "not found"})
        if parts[0] == "traag":
            time.sleep(3)
        items = DATA[parts[0]]
        if len(parts) == 2:
            found = [i for i in items if str(i["id"]) == urllib.parse.unquote(parts[1])]
            return self.answer(200, found[0]) if found else self.answer(404, {"error": "not found"})
        query = urllib.parse.parse_qs(url.query)
        page = int(query.pop("page", ["1"])[0])
        for k, (v, *_) in query.items():
            items = [i for i in items if str(i.get(k)) == v]
        start = (page - 1) * PAGE
        more = start + PAGE < len(items)
        nxt = None
        if more:
            q = {k: v[0] for k, v in query.items()}
            q["page"] = page + 1
            nxt = f"{BASE}/{parts[0]}?{urllib.parse.urlencode(q)}"
        self.answer(200, {"data": items[start:start + PAGE], "next": nxt})

    def log_message(self, *a):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()

#!/usr/bin/env python3
"""Stand-in decision server and recording upstream, ONLY for checking the ingress
templates in this folder (nginx.conf.tmpl, Caddyfile.tmpl) before flexgate's decision
mode exists. Standard library only.

    python3 standin.py --decision-port 9191 --upstream-port 9292 --log /tmp/x/log.jsonl

Every request either server receives is appended to --log as one JSON object per line:
    {"role": "decision"|"upstream", "method", "path", "headers": [[name, value], ...],
     "body": "<the body as latin-1 text>", "body_len": N}

Decision rule (on the *original* request, as the ingress reports it):
    original URI = X-Original-URI (nginx) or X-Forwarded-Uri (Caddy, Traefik) or the path
    original URI starts with /slow        -> waits --slow seconds, then decides as below
    original URI starts with /public-bare -> 200, no identity headers at all
    original URI starts with /public      -> 200, all seven identity headers, empty
    original URI starts with /missing     -> 404 + JSON
    original URI starts with /boom        -> 500 + JSON
    no Authorization                      -> 401 + JSON + WWW-Authenticate
    Authorization: good                   -> 200 + all seven X-Flexgate-* identity headers
    Authorization: good-partial           -> 200 + only user id/email/timestamp/signature
                                             (no account id, no roles)
    anything else                         -> 403 + JSON
With --body-header, denials also carry the compact JSON body in X-Flexgate-Error-Body
(for the nginx single-query variant described in /work/notes/ingress.md).
"""
import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
ARGS = None

IDENTITY = ["X-Flexgate-User-Id", "X-Flexgate-User-Email", "X-Flexgate-Account-Id",
            "X-Flexgate-User-Roles", "X-Flexgate-Account-Roles", "X-Flexgate-Timestamp",
            "X-Flexgate-Signature"]

BODY_401 = {"message": "You could not be properly authenticated for this content or functionality.",
            "status": "UNAUTHORIZED"}
BODY_403 = {"result": "Rejected", "status": "INVALID_SENDER",
            "message": "You cannot be authorized for this content or functionality."}
BODY_404 = {"message": "The requested URL was not found on the server.", "status": 404}
BODY_500 = {"message": "decision stand-in says 500", "status": 500}


def record(role, handler, body):
    entry = {
        "role": role,
        "method": handler.command,
        "path": handler.path,
        "version": handler.request_version,
        "headers": [[k, v] for k, v in handler.headers.items()],
        "body": body.decode("latin-1"),
        "body_len": len(body),
    }
    with LOCK:
        with open(ARGS.log, "a") as f:
            f.write(json.dumps(entry) + "\n")


class Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):  # quiet
        pass

    def read_body(self):
        n = self.headers.get("Content-Length")
        if n is not None:
            return self.rfile.read(int(n))
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def send(self, status, body_obj, extra=()):
        body = json.dumps(body_obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self.handle_any()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET


class Decision(Base):
    def handle_any(self):
        body = self.read_body()
        record("decision", self, body)
        h = self.headers
        uri = h.get("X-Original-URI") or h.get("X-Forwarded-Uri") or self.path
        auth = h.get("Authorization")
        deny = None
        if uri.startswith("/slow"):
            # answer (200) only after --slow seconds: for the ingress's timeouts
            import time
            time.sleep(ARGS.slow)
        if uri.startswith("/public-bare"):
            # allowed without identity, no identity headers at all
            self.send(200, {"decision": "allow"})
            return
        if uri.startswith("/public"):
            # allowed without identity, all seven identity headers present and empty
            self.send(200, {"decision": "allow"}, [(n, "") for n in IDENTITY])
            return
        if uri.startswith("/missing"):
            deny = (404, BODY_404, [])
        elif uri.startswith("/boom"):
            deny = (500, BODY_500, [])
        elif auth is None:
            deny = (401, BODY_401, [("WWW-Authenticate", 'Bearer realm="flexgate"')])
        elif auth in ("good", "good-partial"):
            ident = [("X-Flexgate-User-Id", "5"),
                     ("X-Flexgate-User-Email", "prosumer@flexgate.demo"),
                     ("X-Flexgate-Timestamp", "1764000000"),
                     ("X-Flexgate-Signature", "v1=deadbeef")]
            if auth == "good":
                ident += [("X-Flexgate-Account-Id", "3"),
                          ("X-Flexgate-User-Roles", ""),
                          ("X-Flexgate-Account-Roles", "Prosumer")]
                # an empty roles value is a real case (no roles): keep it to see
                # whether the ingress forwards an empty header or drops it
            self.send(200, {"decision": "allow"}, ident + [("X-Decision-Only", "not-an-identity-header")])
            return
        else:
            deny = (403, BODY_403, [])
        status, obj, extra = deny
        if ARGS.body_header:
            extra = extra + [("X-Flexgate-Error-Body", json.dumps(obj, separators=(",", ":")))]
        self.send(status, obj, extra)


class Upstream(Base):
    def handle_any(self):
        body = self.read_body()
        record("upstream", self, body)
        self.send(200, {"upstream": "reached", "method": self.command, "path": self.path})


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--decision-port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--body-header", action="store_true")
    p.add_argument("--slow", type=float, default=3.0, help="seconds /slow... waits")
    ARGS = p.parse_args()
    servers = [ThreadingHTTPServer(("127.0.0.1", ARGS.decision_port), Decision),
               ThreadingHTTPServer(("127.0.0.1", ARGS.upstream_port), Upstream)]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()

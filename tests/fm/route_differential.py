#!/usr/bin/env python3
"""route_differential.py - flexgate's route matching against FlexMeasures' own Werkzeug routing.

Run with the FlexMeasures venv's interpreter (a review tool, not part of `cargo test`):

    /opt/flexgate-ci/fm/bin/python tests/fm/route_differential.py \
        --flexgate target/debug/flexgate --config config/flexmeasures.toml \
        [--db fg_routediff] [--instance-dir /tmp/rd/fm] [--reuse] [--jobs 1] [--out report.json]

What it does:
  1. Unless --reuse, runs fm_server.py --setup-only: a FlexMeasures 1.0.1 database (created,
     migrated, seeded) and its config file. flexgate's `explain` reads that database
     (DATABASE_URL) in FlexMeasures mode.
  2. Builds FlexMeasures' app in this process (flexmeasures.app.create, as fm_server.py does)
     and reads app.url_map.
  3. For every URL rule and method, makes a canonical request and many hostile variants
     (trailing slash, '//', percent-escapes of letters and of '/', case changes, leading
     zeros, signs, whitespace, unicode digits, '_' in ids, ';' parameters, dot segments,
     very long ids, path-converter edge cases, other words in id positions, HEAD, OPTIONS,
     other methods, query strings).
  4. Asks `flexgate explain --json` (as the admin, so that ACLs pass and the trace shows the
     route, the normalized path and every check's resource id).
  5. Asks Werkzeug what it would dispatch for the string flexgate forwards (the normalized
     path: README "Security: One path"), decoded as a WSGI server decodes PATH_INFO:
     MapAdapter.match with the request's method -> endpoint + view args, a redirect
     (308), or 404 / 405. A redirect's target goes through both again.
  6. Compares: flexgate's route must be the one flexgate picks for the canonical request
     of the rule Werkzeug dispatches, and each path id flexgate checks must be the id the
     view gets (int() of the view arg, as marshmallow's Integer field reads it).

Every case where flexgate allows (or forwards) and the two disagree is a FINDING. Cases
flexgate refuses although Werkzeug would serve them are counted as usability notes.
stdout: a summary; --out: every case as JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
HOST = "flexmeasures.example.com"  # the preset's allowed_hosts


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--flexgate", default=os.path.join(REPO, "target", "debug", "flexgate"))
    p.add_argument("--config", default=os.path.join(REPO, "config", "flexmeasures.toml"))
    p.add_argument("--db", default="fg_routediff")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--instance-dir", default="/tmp/fg_routediff")
    p.add_argument("--secret-key", default="route-differential-secret")
    p.add_argument("--password-salt", default="route-differential-salt")
    p.add_argument("--reuse", action="store_true",
                   help="reuse --instance-dir/seed.json and its database instead of running fm_server.py --setup-only")
    p.add_argument("--jobs", type=int, default=1, help="parallel flexgate explain processes")
    p.add_argument("--limit", type=int, default=0, help="only the first N cases (0: all)")
    p.add_argument("--out", default=None, help="write every case as JSON here")
    p.add_argument("--serve-check", type=int, default=0, metavar="N",
                   help="also send up to N of the cases flexgate allows through a real `flexgate serve` "
                        "(plain HTTP, a recording upstream) and compare the request line the upstream "
                        "receives with the forwarded string assumed above (0: skip)")
    return p.parse_args(argv)


def log(msg):
    sys.stderr.write(f"[route_differential] {msg}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------
# FlexMeasures


def setup_flexmeasures(args) -> dict:
    os.makedirs(args.instance_dir, exist_ok=True)
    seed_file = os.path.join(args.instance_dir, "seed.json")
    if not args.reuse:
        cmd = [sys.executable, os.path.join(HERE, "fm_server.py"), "--db", args.db, "--port", "1",
               "--secret-key", args.secret_key, "--password-salt", args.password_salt,
               "--instance-dir", args.instance_dir, "--pg", args.pg, "--setup-only",
               "--fast-imports", "--no-stdin-watch", "--no-legacy-user"]
        log("fm_server.py --setup-only ...")
        with open(os.path.join(args.instance_dir, "setup.err"), "w") as err:
            out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                 check=True, text=True).stdout
        with open(seed_file, "w") as f:
            f.write(out.splitlines()[0])
    with open(seed_file) as f:
        return json.load(f)


def build_app(seed: dict):
    os.environ.update({
        "SQLALCHEMY_DATABASE_URI": seed["db_uri"],
        "SECRET_KEY": seed["secret_key"],
        "FLEXMEASURES_ENV": seed["env"],
        "LOGGING_LEVEL": "ERROR",
    })
    os.environ.pop("FLASK_ENV", None)
    cwd = os.getcwd()
    os.chdir(seed["instance_dir"])  # FlexMeasures' logging writes ./flexmeasures.log
    import typeguard

    typeguard.typechecked = lambda target=None, **_kw: target if target is not None else (lambda f: f)
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # FlexMeasures prints while starting
    try:
        from flexmeasures.app import create

        app = create(env=seed["env"], path_to_config=seed["config_file"])
    finally:
        sys.stdout = real_stdout
        os.chdir(cwd)
    return app


class Werkzeug:
    """What FlexMeasures' Flask app dispatches for a forwarded request target."""

    def __init__(self, app):
        self.app = app
        self.map = app.url_map

    def match(self, method: str, target: str) -> dict:
        from werkzeug.exceptions import MethodNotAllowed, NotFound
        from werkzeug.routing import RequestRedirect

        path, _, query = target.partition("?")
        # A WSGI server (gunicorn, Werkzeug's) percent-decodes the whole path into PATH_INFO
        # (bytes as latin-1); Werkzeug decodes that as UTF-8 (errors replaced) to match.
        environ = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "HTTP_HOST": "localhost",
            "wsgi.url_scheme": "http",
        }
        adapter = self.map.bind_to_environ(environ)
        try:
            rule, view_args = adapter.match(return_rule=True)
        except RequestRedirect as e:
            u = urllib.parse.urlsplit(e.new_url)
            return {"kind": "redirect", "code": e.code, "to": u.path + (("?" + u.query) if u.query else "")}
        except MethodNotAllowed as e:
            return {"kind": "405", "allowed": sorted(e.valid_methods or [])}
        except NotFound:
            return {"kind": "404"}
        view = self.app.view_functions.get(rule.endpoint)
        auto_options = (method == "OPTIONS" and getattr(rule, "provide_automatic_options", False))
        return {
            "kind": "dispatch",
            "rule": rule.rule,
            "endpoint": rule.endpoint,
            "args": {k: (v if isinstance(v, (int, str)) else str(v)) for k, v in view_args.items()},
            "auto_options": bool(auto_options),
            "arg_segments": rule_arg_segments(rule.rule),
            "view": getattr(view, "__qualname__", None),
        }


def rule_arg_segments(rule: str) -> dict:
    """Converter name -> index of its segment (after the leading '/')."""
    out = {}
    for i, seg in enumerate(rule.lstrip("/").split("/")):
        for m in re.finditer(r"<(?:[^:<>]+:)?([^<>]+)>", seg):
            out[m.group(1)] = i
    return out


# ---------------------------------------------------------------------------------------
# flexgate


RULE_RE = re.compile(r'^rule: "([^"]+)" \([^)]*\) (\S+) (\S+)$')
CHECK_RE = re.compile(r"^check (\d+): (\S+) on (\S+) (.+?) \((path|query|json|header|form|column|body)\s*([^)]*)\)")


class Flexgate:
    def __init__(self, binary, config, env):
        self.binary = binary
        self.config = config
        self.env = env
        self.cache = {}

    def explain(self, method: str, target: str) -> dict:
        key = (method, target)
        if key in self.cache:
            return self.cache[key]
        cmd = [self.binary, "explain", "--config", self.config, "--method", method, "--path", target,
               "--email", "admin@example.com", "--header", f"Host: {HOST}", "--json"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60)
        except subprocess.TimeoutExpired:
            return {"error": "timeout"}
        try:
            j = json.loads(p.stdout)
        except ValueError:
            r = {"error": (p.stdout + p.stderr).strip()[:300]}
            self.cache[key] = r
            return r
        r = {"decision": j.get("decision"), "status": j.get("status"), "reason": j.get("reason"),
             "normalized": None, "route": None, "template": None, "checks": []}
        for line in j.get("trace", []):
            if line.startswith("normalized path: "):
                r["normalized"] = line[len("normalized path: "):]
            m = RULE_RE.match(line)
            if m:
                r["route"], r["template"] = m.group(1), m.group(3)
            m = CHECK_RE.match(line)
            if m:
                r["checks"].append({"perm": m.group(2), "kind": m.group(3), "id": m.group(4),
                                    "source": m.group(5), "name": m.group(6).strip()})
            if "the rule is public" in line:
                r["public"] = True
        self.cache[key] = r
        return r


def template_param_segments(template: str) -> dict:
    out = {}
    for i, seg in enumerate(template.lstrip("/").split("/")):
        if seg.startswith("{") and seg.endswith("}"):
            out[seg.strip("{}*")] = i
    return out


# ---------------------------------------------------------------------------------------
# cases


ID_NAMES = {"id", "account_id", "instance_number", "per_page", "page"}
CANON = {"id": "1", "account_id": "1", "instance_number": "0", "per_page": "10", "page": "1",
         "uuid": "abc", "job_id": "abc", "token": "abc", "queue_name": "default",
         "registry_name": "queued", "order": "asc", "path": "index.html", "filename": "js/app.js"}

# Hostile spellings of an id (as sent on the wire: escapes are literal here).
ID_VARIANTS = [
    "01", "001", "0001", "0", "00", "+1", "-1", "%2B1", "%2D1", "1%20", "%201", "%091", "1%09",
    "1%0A", "1%0D", "1%00", "1%0C", "1%0B", "%C2%A01", "1%C2%A0", "%E2%80%8A1", "1.0", "1.", ".1",
    "1e0", "1_0", "1_000", "0x1", "%31", "%30%31", "%31%30", "1%30", "1%2F0", "1%2f0", "1%3B0",
    "1;0", "1%3F0", "1%230", "1%25", "1%2530", "1%252F0", "%D9%A1", "%D9%A1%D9%A0", "%EF%BC%91",
    "%C2%B9", "%E0%A5%A7", "1" * 30, "9223372036854775807", "9223372036854775808",
    "18446744073709551617", "4294967297", "2147483648", "-9223372036854775808", "1" * 400,
    "1+", "+", "1,2", "1&2", "1=2", "1@2", "1:2", "1~", "1-", "1!", "1*", "1'", "1(", "1)",
    "1$", "%7E1", "1%7E", "%2E1", "1%2E", "1%2E0",
]
# For a rule's other methods (the id is read by the same code; the route differs).
ID_VARIANTS_SHORT = ["01", "+1", "-1", "%2B1", "1%20", "%201", "1.0", "1_0", "%31%30", "1%30",
                     "1%3B0", "%D9%A1", "%EF%BC%91", "1" * 30, "9223372036854775808", "4294967297"]
WORDS = ["create", "public", "types", "data", "new", "auditlog", "owned_by", "delete_with_data", "requeue",
         "default_asset_view", "keep_legends_below_graphs", "health", "ready", "static", "docs",
         "favicon.ico", "job", "queue", "view", "sensors", "chart", "copy", "upload"]
STR_VARIANTS = ["abc%2Fdef", "abc/def", "abc%2E%2E", "..", ".", "%2e", "%2e%2e", "abc;x", "abc%3Bx",
                "abc%20", "%20", "abc%00", "ABC", "a%62c", "abc.json", "abc%252F..%252Fx", "~"]
PATH_VARIANTS = ["", "/", "a", "a/", "a/b", "a//b", "../x", "..%2Fx", "%2e%2e/x", "a/%2e%2e/b",
                 "a%2Fb", "a%5Cb", "a\\b", "a/./b", ".", "..", "a;b", "a%3Bb", "%2Fetc/passwd",
                 "api/v3_0/assets/1", "../../api/v3_0/assets/1", "..%252F..%252Fapi", "a%00b",
                 "x.js?y=1", "x" * 9000]


def split_rule(rule: str):
    """Segments of a rule: ('static', text) or ('arg', name, converter) or ('mixed', raw)."""
    out = []
    for seg in rule.lstrip("/").split("/"):
        m = re.fullmatch(r"<(?:([^:<>]+):)?([^<>]+)>", seg)
        if m:
            out.append(("arg", m.group(2), m.group(1) or "default"))
        elif "<" in seg:
            out.append(("mixed", seg))
        else:
            out.append(("static", seg))
    return out


def render(segs, subst=None) -> str:
    subst = subst or {}
    parts = []
    for i, s in enumerate(segs):
        if i in subst:
            parts.append(subst[i])
        elif s[0] == "static":
            parts.append(s[1])
        elif s[0] == "arg":
            parts.append(CANON.get(s[1], "abc"))
        else:
            parts.append(re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: CANON.get(m.group(1), "abc"), s[1]))
    return "/" + "/".join(parts)


def letter_escapes(word: str):
    out = []
    for i, c in enumerate(word):
        if c.isalpha():
            out.append(word[:i] + "%%%02X" % ord(c) + word[i + 1:])
            out.append(word[:i] + "%%%02x" % ord(c) + word[i + 1:])
            break
    if word:
        out.append("".join("%%%02X" % ord(c) for c in word))
    return out


def cases_for_rule(rule, methods):
    segs = split_rule(rule)
    canon = render(segs)
    if canon == "/" and rule == "/":
        canon = "/"
    meths = sorted(m for m in methods if m not in ("HEAD", "OPTIONS"))
    out = []

    def add(m, path, what):
        out.append({"rule": rule, "method": m, "target": path, "variant": what})

    for m in meths:
        add(m, canon, "canonical")
    main = meths[0]
    for extra in ("HEAD", "OPTIONS", "GET", "POST", "PATCH", "DELETE", "PUT"):
        if extra not in meths:
            add(extra, canon, f"method {extra}")
    # path-level variants, for every method the rule has
    for m in meths:
        base = canon if rule != "/" else ""
        add(m, base + "/", "trailing slash")
        add(m, canon.rstrip("/") if canon != "/" else "/", "no trailing slash")
        add(m, base + "//", "trailing //")
        add(m, base + "/.", "trailing /.")
        add(m, base + "/%2e", "trailing /%2e")
        add(m, base + "/..", "trailing /..")
        add(m, base + ";x=1", "trailing ;param")
        add(m, base + "%3B", "trailing %3B")
        add(m, base + "%20", "trailing %20")
        add(m, base + "%09", "trailing %09")
        add(m, base + "%00", "trailing %00")
        add(m, base + "%2F", "trailing %2F")
        add(m, base + "?", "empty query")
        add(m, base + "?id=2&account=2&asset=2", "query with ids")
        add(m, base + "?x=1&x=2", "repeated query")
        add(m, base + "#frag", "raw #")
        add(m, "/" + canon, "leading //")
        add(m, "/./" + canon.lstrip("/"), "leading /./")
        add(m, "/x/.." + canon, "leading /x/..")
        add(m, "/x/%2e%2e" + canon, "leading /x/%2e%2e")
        add(m, "/%2e" + canon, "leading /%2e")
        for i, s in enumerate(segs):
            if s[0] == "static" and s[1]:
                w = s[1]
                add(m, render(segs, {i: w.upper()}), f"seg{i} upper")
                add(m, render(segs, {i: w[0].swapcase() + w[1:]}), f"seg{i} swapcase first")
                for e in letter_escapes(w):
                    add(m, render(segs, {i: e}), f"seg{i} escaped {e}")
                add(m, render(segs, {i: w + ";x"}), f"seg{i} ;param")
                add(m, render(segs, {i: w + "%3Bx"}), f"seg{i} %3B")
                add(m, render(segs, {i: w + "%20"}), f"seg{i} trailing %20")
                add(m, render(segs, {i: w + "%2F"}), f"seg{i} trailing %2F")
                add(m, render(segs, {i: w + "/"}), f"seg{i} extra /")
                add(m, render(segs, {i: w + "/."}), f"seg{i} /.")
                add(m, render(segs, {i: w + "/x/.."}), f"seg{i} /x/..")
                add(m, render(segs, {i: w + "%2F.."}), f"seg{i} %2F..")
                if i + 1 < len(segs):
                    # join this segment with the next by an encoded slash
                    nxt = render(segs).lstrip("/").split("/")
                    joined = "/" + "/".join(nxt[:i] + [nxt[i] + "%2F" + nxt[i + 1]] + nxt[i + 2:])
                    add(m, joined, f"seg{i} %2F-joined")
            elif s[0] == "arg":
                name, conv = s[1], s[2]
                if conv == "path":
                    for v in PATH_VARIANTS:
                        add(m, render(segs, {i: v}), f"{name} path {v[:30]!r}")
                elif name in ID_NAMES or conv == "int":
                    for v in (ID_VARIANTS if m == main else ID_VARIANTS_SHORT):
                        add(m, render(segs, {i: v}), f"{name}={v[:30]}")
                    for w in WORDS:
                        add(m, render(segs, {i: w}), f"{name} word {w}")
                else:
                    for v in STR_VARIANTS + WORDS[:6]:
                        add(m, render(segs, {i: v}), f"{name}={v}")
    return out


def all_cases(app):
    rules = {}
    for r in app.url_map.iter_rules():
        rules.setdefault(r.rule, set()).update(r.methods or ())
    cases = []
    for rule in sorted(rules):
        cases += cases_for_rule(rule, rules[rule])
    # a few paths outside every rule, near protected ones
    for t in ["/api", "/api/v3_0/", "/api/v3_0/assets/", "/api/v3_0/sensors/", "/assets/", "/tasks",
              "/tasks/requeue", "/tasks/requeue/", "/api/v3_0/docs", "/api/v3_0/docs/../assets/1",
              "/reset/", "/static/", "/static", "/api/v2_0/user/1/password-reset"]:
        for m in ("GET", "POST", "PATCH", "DELETE"):
            cases.append({"rule": None, "method": m, "target": t, "variant": "outside"})
    # canonical requests first: where a variant of one rule spells another rule's canonical
    # request, the case is kept as that rule's canonical one
    cases.sort(key=lambda c: c["variant"] != "canonical")
    seen, uniq = set(), []
    for c in cases:
        k = (c["method"], c["target"])
        if k not in seen:
            seen.add(k)
            uniq.append(c)
    return uniq


# ---------------------------------------------------------------------------------------
# the real proxy: what string reaches the upstream


def serve_check(args, env, seed, cases):
    import queue
    import socket
    import tempfile
    import threading

    received = queue.Queue()
    up = socket.socket()
    up.bind(("127.0.0.1", 0))
    up.listen(64)
    up_port = up.getsockname()[1]

    def upstream():
        while True:
            try:
                c, _ = up.accept()
            except OSError:
                return
            def conn(c=c):
                data = b""
                c.settimeout(10)
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = c.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    received.put(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
                except OSError:
                    pass
                finally:
                    c.close()
            threading.Thread(target=conn, daemon=True).start()

    threading.Thread(target=upstream, daemon=True).start()
    text = open(args.config).read()
    start = re.search(r"(?m)^\[server\]", text).start()
    end = re.search(r"(?m)^\[identity\]", text).start()
    server = (f'[server]\nhttp = "127.0.0.1:0"\nhttp_mode = "proxy"\nadmin = "127.0.0.1:0"\n'
              f'upstream = "http://127.0.0.1:{up_port}"\nallowed_hosts = ["{HOST}"]\npreserve_host = true\n\n')
    tmp = tempfile.mkdtemp(prefix="fg_routediff_serve_")
    cfg = os.path.join(tmp, "flexmeasures.toml")
    with open(cfg, "w") as f:
        f.write(text[:start] + server + text[end:])
    ready = os.path.join(tmp, "ready.json")
    senv = dict(env, FLEXGATE_UPSTREAM_SECRET="u" * 64)
    proc = subprocess.Popen([os.path.abspath(args.flexgate), "serve", "--config", cfg, "--ready-file", ready],
                            env=senv, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "serve.err"), "w"))
    try:
        for _ in range(300):
            if os.path.exists(ready) and os.path.getsize(ready) > 0:
                break
            time.sleep(0.1)
        addrs = json.load(open(ready))
        http_addr = addrs["http"]
        h, _, port = str(http_addr).rpartition(":")
        port = int(port)

        def raw(method, target, token=None, body=None):
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            head = f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
            if token:
                head += f"Authorization: {token}\r\n"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            s.sendall((head + "\r\n").encode("latin-1") + (body or b""))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            return int(line.split()[1]) if len(line.split()) > 1 else 0, data

        admin = seed["users"]["admin"]
        st, data = raw("POST", "/api/requestAuthToken", body=json.dumps(
            {"email": admin["email"], "password": admin["password"]}).encode())
        token = json.loads(data.split(b"\r\n\r\n", 1)[1])["auth_token"]
        checked, mismatches, statuses = 0, [], {}
        # (the token endpoint is answered by flexgate itself, never forwarded)
        allowed = [c for c in cases if c["flexgate"].get("decision") == "allow" and "#" not in c["target"]
                   and c["flexgate"].get("normalized") != "/api/requestAuthToken"]
        for c in allowed[: args.serve_check]:
            while not received.empty():
                received.get_nowait()
            st, _ = raw(c["method"], c["target"], token)
            statuses[st] = statuses.get(st, 0) + 1
            try:
                line = received.get(timeout=5 if st == 200 else 0.3)
            except queue.Empty:
                line = None
            checked += 1
            got = line.split(" ")[1] if line else None
            if st == 200 and got != c["forwarded"]:
                mismatches.append({"method": c["method"], "target": c["target"], "expected": c["forwarded"],
                                   "upstream_got": got, "status": st})
            elif st != 200:
                mismatches.append({"method": c["method"], "target": c["target"], "expected": c["forwarded"],
                                   "upstream_got": got, "status": st, "note": "explain allowed, serve did not forward"})
        return {"checked": checked, "statuses": statuses, "mismatches": mismatches}
    finally:
        proc.terminate()
        proc.wait(10)
        up.close()


# ---------------------------------------------------------------------------------------
# comparison


def fm_id(value):
    """The id a FlexMeasures view reads from a view arg (marshmallow Integer: int())."""
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# A view that branches on a value of its string arg, which the preset models as a route of
# its own: AssetCrudUI.get(id="new") is the new-asset form, AssetCrudUI.post(id="create")
# creates an asset (flexmeasures/ui/views/assets/views.py). Not findings when flexgate
# picks exactly that route; reported as "special" so they stay visible.
KNOWN_SPECIAL = {
    ("/assets/<id>", "GET", "id", "new"): "ui-asset-new",
    ("/assets/<id>", "POST", "id", "create"): "ui-asset-create",
}


def flexgate_forwards(fg: dict) -> bool:
    # explain as admin: "allow" means the route matched and every id resolved
    return fg.get("decision") == "allow"


def compare(case, fg, wz, canonical_route) -> list:
    """Findings for one case (flexgate allows / forwards, Werkzeug dispatches otherwise)."""
    out = []
    if not flexgate_forwards(fg):
        return out
    if wz["kind"] != "dispatch":
        return out  # 404/405/redirect: no view runs (redirects are checked separately)
    if wz["auto_options"]:
        return out
    meth = "GET" if case["method"] == "HEAD" else case["method"]
    expected = canonical_route.get((wz["rule"], meth))
    for (rule, m, arg, value), route in KNOWN_SPECIAL.items():
        if wz["rule"] == rule and meth == m and wz["args"].get(arg) == value:
            if fg.get("route") == route:
                return [{"type": "special", "flexgate_route": route, "werkzeug_rule": rule, "value": value}]
            expected = route
    if expected != fg.get("route"):
        out.append({"type": "route", "flexgate_route": fg.get("route"), "expected_route": expected,
                    "werkzeug_rule": wz["rule"], "endpoint": wz["endpoint"]})
    tparams = template_param_segments(fg.get("template") or "")
    seg_to_arg = {i: n for n, i in wz["arg_segments"].items()}
    for ch in fg.get("checks", []):
        if ch["source"] != "path":
            continue
        seg = tparams.get(ch["name"])
        arg = seg_to_arg.get(seg)
        if arg is None:
            out.append({"type": "id-unmapped", "check": ch, "werkzeug_rule": wz["rule"], "args": wz["args"]})
            continue
        got = fm_id(wz["args"][arg])
        try:
            fg_id = int(ch["id"])
        except ValueError:
            fg_id = ch["id"]
        if got != fg_id:
            out.append({"type": "id", "check": ch, "werkzeug_arg": arg, "werkzeug_value": wz["args"][arg],
                        "fm_id": got, "werkzeug_rule": wz["rule"]})
    return out


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    seed = setup_flexmeasures(args)
    app = build_app(seed)
    wz = Werkzeug(app)
    dsn = seed["db_uri"].replace("postgresql+psycopg2://", "postgres://")
    env = dict(os.environ, DATABASE_URL=dsn, FLEXMEASURES_SECRET_KEY=seed["secret_key"],
               FLEXMEASURES_SECURITY_PASSWORD_SALT=seed["password_salt"], RUST_LOG="off")
    env.pop("SECRET_KEY", None)  # FlexMeasures' (set for create()); flexgate's own SECRET_KEY is native mode's
    fg = Flexgate(os.path.abspath(args.flexgate), os.path.abspath(args.config), env)

    cases = all_cases(app)
    if args.limit:
        cases = cases[: args.limit]
    log(f"{len(cases)} cases from {len(set(c['rule'] for c in cases))} rules")

    def run(case):
        case["flexgate"] = fg.explain(case["method"], case["target"])
        # what reaches FlexMeasures: flexgate's normalized path plus the query as sent
        query = case["target"].partition("?")[2]
        norm = case["flexgate"].get("normalized")
        case["forwarded"] = (norm + ("?" + query if "?" in case["target"] else "")) if norm else None
        case["werkzeug_raw"] = wz.match(case["method"], case["target"].partition("#")[0])
        case["werkzeug"] = wz.match(case["method"], case["forwarded"]) if case["forwarded"] else None
        return case

    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as ex:
        futs = [ex.submit(run, c) for c in cases]
        for f in concurrent.futures.as_completed(futs):
            f.result()
            done += 1
            if done % 500 == 0:
                log(f"{done}/{len(cases)} ({time.time() - t0:.0f} s)")

    canonical_route = {}
    for c in cases:
        if c["variant"] == "canonical":
            canonical_route[(c["rule"], c["method"])] = c["flexgate"].get("route")

    findings, notes, redirects, specials = [], [], [], []
    stats = {}
    for c in cases:
        f, w = c["flexgate"], c["werkzeug"]
        fgk = "error" if "error" in f else ("allow" if f["decision"] == "allow" else f"deny {f['status']} {f['reason']}")
        wk = "n/a" if w is None else (w["kind"] if w["kind"] != "dispatch" else ("options" if w["auto_options"] else "dispatch"))
        stats[(fgk.split(" ")[0] + (" " + fgk.split(" ")[1] if " " in fgk else ""), wk)] = stats.get(
            (fgk.split(" ")[0] + (" " + fgk.split(" ")[1] if " " in fgk else ""), wk), 0) + 1
        if w is not None:
            for d in compare(c, f, w, canonical_route):
                if d["type"] == "special":
                    specials.append((c["method"], c["target"], d["flexgate_route"]))
                    continue
                findings.append({"method": c["method"], "target": c["target"], "variant": c["variant"],
                                 "forwarded": c["forwarded"], "flexgate": f, "werkzeug": w, "finding": d})
            if w["kind"] == "redirect" and flexgate_forwards(f):
                tgt = w["to"]
                f2 = fg.explain(c["method"], tgt)
                q2 = tgt.partition("?")[2]
                fwd2 = (f2.get("normalized") + ("?" + q2 if "?" in tgt else "")) if f2.get("normalized") else None
                w2 = wz.match(c["method"], fwd2) if fwd2 else None
                entry = {"method": c["method"], "target": c["target"], "forwarded": c["forwarded"],
                         "redirect_to": tgt, "flexgate_route": f.get("route"),
                         "target_flexgate": f2, "target_werkzeug": w2}
                if w2 is not None:
                    entry["target_findings"] = compare({"method": c["method"], "target": tgt}, f2, w2, canonical_route)
                redirects.append(entry)
        # usability: Werkzeug (on the raw target) dispatches a view, flexgate refuses the path itself
        wr = c["werkzeug_raw"]
        if (f.get("status") == 400 or f.get("reason") in ("no_route", "method_not_allowed")) and \
                wr["kind"] == "dispatch" and not wr["auto_options"]:
            notes.append({"method": c["method"], "target": c["target"], "flexgate": f"{f.get('status')} {f.get('reason')}",
                          "werkzeug": f"{wr['endpoint']} {wr['args']}"})

    print(f"cases compared: {len(cases)}  (flexgate explain calls: {len(fg.cache)}, {time.time() - t0:.0f} s)")
    print("outcomes (flexgate x Werkzeug on the forwarded string):")
    for k in sorted(stats):
        print(f"  {k[0]:<18} {k[1]:<10} {stats[k]}")
    print(f"\nFINDINGS (flexgate allows, Werkzeug dispatches something else): {len(findings)}")
    for d in findings:
        print(f"  {d['method']} {d['target']}  [{d['variant']}]\n"
              f"    flexgate: route {d['flexgate'].get('route')} checks {d['flexgate'].get('checks')} forwards {d['forwarded']}\n"
              f"    werkzeug: {d['werkzeug'].get('endpoint')} {d['werkzeug'].get('args')}\n    {d['finding']}")
    print(f"\nview-internal special values matched to their own route (expected): {len(specials)}, e.g. {specials[:4]}")
    bad_redirects = [r for r in redirects if r.get("target_findings")]
    print(f"\nredirects of forwarded requests: {len(redirects)}; with a mismatched target: {len(bad_redirects)}")
    for r in redirects[:40]:
        tf = r["target_flexgate"]
        tw = r["target_werkzeug"] or {}
        print(f"  {r['method']} {r['target']} (flexgate {r['flexgate_route']}) -> 308 {r['redirect_to']}: "
              f"flexgate {tf.get('route')} {tf.get('decision')} {tf.get('status')}, werkzeug {tw.get('endpoint', tw.get('kind'))}"
              + (f"  MISMATCH {r['target_findings']}" if r.get("target_findings") else ""))
    print(f"\nusability notes (flexgate refuses the path or finds no route, Werkzeug would run a view): {len(notes)}")
    by_reason = {}
    for n in notes:
        by_reason.setdefault(n["flexgate"], []).append(n)
    for reason, ns in sorted(by_reason.items()):
        print(f"  {reason}: {len(ns)}, e.g. " + "; ".join(f"{n['method']} {n['target'][:60]} -> {n['werkzeug'][:60]}" for n in ns[:3]))
    errors = [c for c in cases if "error" in c["flexgate"]]
    print(f"\nexplain errors: {len(errors)}" + ("".join(f"\n  {c['method']} {c['target'][:80]}: {c['flexgate']['error'][:160]}" for c in errors[:10])))
    serve = None
    if args.serve_check:
        serve = serve_check(args, env, seed, cases)
        print(f"\nserve check: {serve['checked']} allowed cases sent through `flexgate serve`; statuses {serve['statuses']}; "
              f"mismatches (upstream request line != normalized path + query, or not forwarded): {len(serve['mismatches'])}")
        for m in serve["mismatches"][:30]:
            print(f"  {m}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"serve_check": serve, "cases": cases, "findings": findings, "redirects": redirects, "notes": notes}, f, indent=1, default=str)
    return 1 if findings or bad_redirects or (serve and serve["mismatches"]) else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""fm_server.py - start a real, unmodified FlexMeasures 1.0.1 for flexgate's integration tests.

Run with the FlexMeasures venv's interpreter (nothing beyond that venv is needed):

    /opt/flexgate-ci/fm/bin/python tests/fm/fm_server.py --db NAME --port PORT \
        --secret-key K --password-salt S --instance-dir DIR [--trusted-hosts h1,h2] [...]

What it does, all in ONE Python process (every `flexmeasures` CLI start costs ~11 s of
imports, so we never shell out to it):
  1. (re)creates the PostgreSQL database NAME (DROP ... WITH (FORCE), CREATE),
  2. writes DIR/flexmeasures.cfg (a Python config file, see write_config()) and DIR/fm-env.sh,
  3. sets the environment FlexMeasures reads (SQLALCHEMY_DATABASE_URI, SECRET_KEY,
     FLEXMEASURES_ENV, proxies pointing at a closed loopback port, ...),
  4. builds the app with FlexMeasures' own factory `flexmeasures.app.create()`,
  5. runs the Alembic migrations (`flask_migrate.upgrade`, what `flexmeasures db upgrade` does),
  6. seeds accounts / users / assets / sensors with FlexMeasures' own model code
     (passwords hashed by Flask-Security's `hash_password`, i.e. argon2id over
     base64(HMAC-SHA512(SECURITY_PASSWORD_SALT, password))),
  7. prints ONE line of JSON describing the seed on stdout,
  8. serves HTTP on 127.0.0.1:PORT (werkzeug's threaded server, in this process),
     checks /api/v3_0/health/ready itself and then prints the line READY on stdout.

stdout carries only those two lines: everything FlexMeasures logs or prints goes to stderr
(file descriptor 1 is re-pointed at stderr before FlexMeasures is imported). Send stderr to
a file (or drain it): with --log-level INFO/DEBUG every request is logged there, and an
undrained pipe would eventually block the server.

Lifetime: the server exits (os._exit) as soon as its stdin reaches EOF, or its parent
process goes away (getppid() changes), or on SIGTERM/SIGINT. The Rust side should spawn it
with a piped stdin and simply keep the pipe open; dropping the pipe (or dying) stops the
server. Use --no-stdin-watch when running it by hand with stdin at /dev/null.
We deliberately do NOT use prctl(PR_SET_PDEATHSIG): it fires when the parent *thread*
exits, and cargo test runs every test on its own thread, so a server shared between tests
would be killed when the test that started it finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

T_START = time.time()

# ---------------------------------------------------------------------------------------
# Seed description. Passwords are fixed so tests can log in; every user is @example.com
# (FlexMeasures' email validation rejects reserved TLDs such as .test).
# (key, email, password, account key, roles, active)
USERS = [
    ("admin", "admin@example.com", "admin-password-1", "consultancy", ["admin"], True),
    ("admin_reader", "admin-reader@example.com", "admin-reader-password-1", "consultancy", ["admin-reader"], True),
    ("consultant", "consultant@example.com", "consultant-password-1", "consultancy", ["consultant"], True),
    ("consultancy_member", "consultancy-member@example.com", "consultancy-member-password-1", "consultancy", [], True),
    ("prosumer_admin", "prosumer-admin@example.com", "prosumer-admin-password-1", "prosumer_a", ["account-admin"], True),
    ("prosumer_member", "prosumer-member@example.com", "prosumer-member-password-1", "prosumer_a", [], True),
    ("tenant_b_member", "tenant-b-member@example.com", "tenant-b-member-password-1", "tenant_b", [], True),
    ("inactive", "inactive@example.com", "inactive-password-1", "prosumer_a", [], False),
]
# A user whose stored hash is the legacy bcrypt-over-HMAC format ($2b$...), as databases
# written by FlexMeasures before Flask-Security 5.5 (argon2 default) hold them.
LEGACY_USER = ("legacy_bcrypt", "legacy-bcrypt@example.com", "legacy-bcrypt-password-1", "prosumer_a", [], True)

# (key, name, account roles, consultancy account key)
ACCOUNTS = [
    ("consultancy", "Consultancy", ["Consultancy"], None),
    ("prosumer_a", "Prosumer A", ["Prosumer"], "consultancy"),
    ("tenant_b", "Other Tenant B", ["Prosumer"], None),
]
# (key, asset name, account key or None for a public asset, lat, lon)
ASSETS = [
    ("prosumer_a", "Prosumer A battery", "prosumer_a", 52.37, 4.89),
    ("tenant_b", "Tenant B battery", "tenant_b", 51.92, 4.48),
    ("public", "Public weather station", None, 52.09, 5.12),
]
ASSET_TYPE = "battery"  # one of FlexMeasures' default asset types (add_default_asset_types)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", required=True, help="PostgreSQL database name (dropped and recreated)")
    p.add_argument("--port", required=True, type=int, help="HTTP port on --host")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--secret-key", required=True, help="SECRET_KEY (signs sessions and auth tokens)")
    p.add_argument("--password-salt", required=True, help="SECURITY_PASSWORD_SALT (HMAC key of password hashing)")
    p.add_argument("--instance-dir", required=True, help="directory for flexmeasures.cfg, fm-env.sh and flexmeasures.log")
    p.add_argument("--trusted-hosts", default="127.0.0.1,localhost",
                   help="comma-separated TRUSTED_HOSTS (Host header check); '' or '*' disables the check")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432",
                   help="PostgreSQL server URL without database (trust auth)")
    p.add_argument("--redis-host", default="127.0.0.1")
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--redis-db", type=int, default=None,
                   help="Redis DB number for queues AND rate-limit counters (FLUSHDB'd at start). "
                        "Default: queues on DB (port %% 16), rate-limit counters in process memory, "
                        "so parallel servers never share counters.")
    p.add_argument("--env", default="production", choices=["production", "development", "staging"],
                   help="FLEXMEASURES_ENV (default production: JSON 500s, no debug)")
    p.add_argument("--log-level", default="WARNING", help="LOGGING_LEVEL (to stderr and DIR/flexmeasures.log)")
    p.add_argument("--rate-limit", default=None,
                   help="FLEXMEASURES_API_DEFAULT_RATE_LIMIT, e.g. '100000 per minute' (FlexMeasures default: 500 per minute)")
    p.add_argument("--token-max-age", type=int, default=None, help="SECURITY_TOKEN_MAX_AGE in seconds (FlexMeasures: 21600)")
    p.add_argument("--config-line", action="append", default=[],
                   help="extra Python line appended verbatim to flexmeasures.cfg, e.g. "
                        "'SECRET_KEY_FALLBACKS = [\"old\"]' (repeatable)")
    p.add_argument("--template-assets", action="store_true",
                   help="also provision FlexMeasures' public template assets, as a real first start does")
    p.add_argument("--fast-imports", action="store_true",
                   help="make typeguard's @typechecked a no-op before importing FlexMeasures: saves ~2-3 s "
                        "(the `inflect` package instruments ~100 functions at import). Only drops inflect's "
                        "runtime argument type checks; FlexMeasures itself is untouched. Off by default.")
    p.add_argument("--no-legacy-user", action="store_true", help="skip the bcrypt-hashed legacy user")
    p.add_argument("--no-stdin-watch", action="store_true", help="do not exit on stdin EOF")
    p.add_argument("--setup-only", action="store_true", help="create, migrate, seed, print the JSON, then exit")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------
# stdout discipline: keep the real stdout for our two protocol lines, send the rest to stderr.
_PROTO_OUT = None


def claim_stdout():
    global _PROTO_OUT
    sys.stdout.flush()
    _PROTO_OUT = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # fd 1 (what print() and FlexMeasures' logging handler write to) -> stderr


def proto(line: str):
    _PROTO_OUT.write(line + "\n")
    _PROTO_OUT.flush()


def log(msg: str):
    sys.stderr.write(f"[fm_server +{time.time() - T_START:6.2f}s] {msg}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------
# lifetime


def start_watchdogs(watch_stdin: bool):
    parent = os.getppid()

    def stdin_watch():
        try:
            while True:
                if not os.read(0, 65536):
                    break
        except OSError:
            pass
        log("stdin closed, exiting")
        os._exit(0)

    def parent_watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                log("parent process gone, exiting")
                os._exit(0)

    if watch_stdin:
        threading.Thread(target=stdin_watch, daemon=True, name="stdin-watch").start()
    threading.Thread(target=parent_watch, daemon=True, name="parent-watch").start()

    def on_signal(signum, _frame):
        log(f"signal {signum}, exiting")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)


# ---------------------------------------------------------------------------------------
# database and config


def recreate_database(pg_url: str, name: str):
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(pg_url.rstrip("/") + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.close()


def write_config(args, redis_db: int, ratelimit_uri: str | None) -> str:
    os.makedirs(args.instance_dir, exist_ok=True)
    th = [h.strip() for h in args.trusted_hosts.split(",") if h.strip()]
    lines = [
        "# Written by flexgate's tests/fm/fm_server.py. A FlexMeasures config file is Python.",
        "from datetime import timedelta",
        "# FlexMeasures 1.0.1 sets '1 week', which Flask-Security-Too 5.9 cannot parse",
        "# (TypeError: 'week' is an invalid keyword argument): give it a timedelta.",
        "SECURITY_TWO_FACTOR_LOGIN_VALIDITY = timedelta(weeks=1)",
        "# SECURITY_PASSWORD_SALT is read from a config file only (not from the environment).",
        f"SECURITY_PASSWORD_SALT = {args.password_salt!r}",
        "# No internet: the breached-password check would call api.pwnedpasswords.com.",
        "SECURITY_PASSWORD_CHECK_BREACHED = None",
        "# Development config turns request profiling on; it writes files. Off everywhere.",
        "FLEXMEASURES_PROFILE_REQUESTS = False",
        "# One-off public template assets on start-up: provisioned explicitly (--template-assets) instead.",
        "FLEXMEASURES_CREATE_TEMPLATE_ASSETS_ON_STARTUP = False",
        "FLEXMEASURES_REDIS_URL = " + repr(args.redis_host),
        f"FLEXMEASURES_REDIS_PORT = {args.redis_port}",
        f"FLEXMEASURES_REDIS_DB_NR = {redis_db}",
        "MAIL_SERVER = '127.0.0.1'",
        "MAIL_PORT = 9  # closed: should a mail ever be sent for real, it fails fast instead of hanging",
        "# Flask-Mail: do not connect at all (else PATCH /users/<id>/password-reset answers 500",
        "# 'Connection refused' and rolls back the reset)",
        "MAIL_SUPPRESS_SEND = True",
        "MAIL_USERNAME = 'flexgate-tests'",
        "MAIL_PASSWORD = 'unused'",
        "SENTRY_DSN = None",
        f"TRUSTED_HOSTS = {th!r}" if th and th != ["*"] else "TRUSTED_HOSTS = None",
    ]
    if ratelimit_uri:
        lines.append(f"RATELIMIT_STORAGE_URI = {ratelimit_uri!r}")
    if args.rate_limit:
        lines.append(f"FLEXMEASURES_API_DEFAULT_RATE_LIMIT = {args.rate_limit!r}")
    if args.token_max_age is not None:
        lines.append(f"SECURITY_TOKEN_MAX_AGE = {args.token_max_age}")
    lines += args.config_line
    path = os.path.join(args.instance_dir, "flexmeasures.cfg")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    # so that `HOME=DIR flexmeasures ...` (the CLI) finds the same config file
    home_cfg = os.path.join(args.instance_dir, ".flexmeasures.cfg")
    try:
        if os.path.lexists(home_cfg):
            os.remove(home_cfg)
        os.symlink("flexmeasures.cfg", home_cfg)
    except OSError:
        pass
    return path


def set_environment(args, db_uri: str) -> dict:
    closed = "http://127.0.0.1:9"  # nothing listens on the discard port: outgoing HTTP fails at once
    env = {
        "SQLALCHEMY_DATABASE_URI": db_uri,
        "SECRET_KEY": args.secret_key,
        "FLEXMEASURES_ENV": args.env,
        "LOGGING_LEVEL": args.log_level,
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "http_proxy": closed,
        "https_proxy": closed,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)
    os.environ.pop("FLASK_ENV", None)
    with open(os.path.join(args.instance_dir, "fm-env.sh"), "w") as f:
        f.write("# source this, then: HOME=$DIR flexmeasures <command>  (uses $DIR/.flexmeasures.cfg)\n")
        for k, v in env.items():
            f.write(f"export {k}={json.dumps(v)}\n")
    return env


# ---------------------------------------------------------------------------------------
# seeding (inside the app context)


def legacy_bcrypt_hash(password: str) -> str:
    """The pre-5.5 Flask-Security format: bcrypt over the first 72 bytes of the HMAC value.

    get_hmac(password) = base64(HMAC-SHA512(key=SECURITY_PASSWORD_SALT, msg=password)) is
    88 ASCII bytes; bcrypt only reads 72, and Flask-Security's verify_password truncates to
    72 explicitly when the stored hash identifies as bcrypt (flask_security/utils.py).
    Made with the `bcrypt` package of the venv, cost 12, prefix $2b$ (what passlib's
    bcrypt handler, Flask-Security's old default, wrote).
    """
    import bcrypt
    from flask_security.utils import get_hmac

    return bcrypt.hashpw(get_hmac(password)[:72], bcrypt.gensalt(rounds=12, prefix=b"2b")).decode("ascii")


def seed(app, db, with_legacy: bool, template_assets: bool) -> dict:
    from datetime import timedelta
    from sqlalchemy import select
    from flask_security.utils import verify_password
    from flexmeasures.data.models.user import Account, AccountRole, User
    from flexmeasures.data.models.generic_assets import GenericAsset, GenericAssetType
    from flexmeasures.data.models.time_series import Sensor
    from flexmeasures.data.services.users import create_user
    from flexmeasures.data.scripts.data_gen import populate_initial_structure

    # what `flexmeasures add initial-structure` does: default data sources, user roles
    # (admin, admin-reader, account-admin, consultant), account roles, asset types
    populate_initial_structure(db)
    db.session.flush()

    def account_role(name):
        r = db.session.execute(select(AccountRole).filter_by(name=name)).scalar_one_or_none()
        if r is None:
            r = AccountRole(name=name)
            db.session.add(r)
            db.session.flush()
        return r

    accounts = {}
    for key, name, roles, consultancy in ACCOUNTS:
        a = Account(name=name)
        if consultancy:
            a.consultancy_account = accounts[consultancy]
        for r in roles:
            a.account_roles.append(account_role(r))
        db.session.add(a)
        db.session.flush()
        accounts[key] = a

    users = {}
    specs = list(USERS) + ([LEGACY_USER] if with_legacy else [])
    for key, email, password, acc, roles, active in specs:
        u = create_user(
            password=password,
            user_roles=roles or None,
            check_email_deliverability=False,
            account_name=accounts[acc].name,
            email=email,
            active=active,
            timezone="Europe/Amsterdam",
        )
        users[key] = (u, password)
    db.session.flush()
    if with_legacy:
        u, pw = users[LEGACY_USER[0]]
        u.password = legacy_bcrypt_hash(pw)
        assert verify_password(pw, u.password), "legacy bcrypt hash does not verify"

    gat = db.session.execute(select(GenericAssetType).filter_by(name=ASSET_TYPE)).scalar_one()
    assets = {}
    for key, name, acc, lat, lon in ASSETS:
        ga = GenericAsset(
            name=name,
            generic_asset_type=gat,
            account_id=accounts[acc].id if acc else None,
            latitude=lat,
            longitude=lon,
        )
        db.session.add(ga)
        db.session.flush()
        s = Sensor(
            name="power",
            unit="kW",
            event_resolution=timedelta(minutes=15),
            timezone="Europe/Amsterdam",
            generic_asset=ga,
        )
        db.session.add(s)
        db.session.flush()
        assets[key] = (ga, s)
    db.session.commit()

    out = {
        "accounts": {
            k: {
                "id": a.id,
                "name": a.name,
                "account_roles": [r.name for r in a.account_roles],
                "consultancy_account_id": a.consultancy_account_id,
            }
            for k, a in accounts.items()
        },
        "users": {},
        "asset_type": {"id": gat.id, "name": gat.name},
        "assets": {},
        "sensors": {},
    }
    for k, (u, pw) in users.items():
        db.session.refresh(u)
        out["users"][k] = {
            "id": u.id,
            "email": u.email,
            "username": u.username,
            "password": pw,
            "fs_uniquifier": u.fs_uniquifier,
            "roles": [r.name for r in u.flexmeasures_roles],
            "account_id": u.account_id,
            "active": bool(u.active),
            "hash_scheme": "bcrypt" if u.password.startswith("$2") else u.password.split("$")[1],
        }
    for k, (ga, s) in assets.items():
        out["assets"][k] = {"id": ga.id, "name": ga.name, "account_id": ga.account_id, "sensor_id": s.id}
        out["sensors"][k] = {
            "id": s.id,
            "name": s.name,
            "asset_id": ga.id,
            "unit": s.unit,
            "event_resolution": "PT15M",
            "timezone": s.timezone,
        }
    if template_assets:
        # what a real first start does (FLEXMEASURES_CREATE_TEMPLATE_ASSETS_ON_STARTUP); it
        # manages its own session, so run it after everything above has been read out
        from flexmeasures.data.scripts.data_gen import provision_default_template_assets

        provision_default_template_assets(db)
        db.session.commit()
        public_id = out["assets"]["public"]["id"]
        tmpl = db.session.execute(
            select(GenericAsset).filter(GenericAsset.account_id.is_(None), GenericAsset.id != public_id)
        ).scalars().all()
        out["template_assets"] = [{"id": a.id, "name": a.name, "sensor_ids": [s.id for s in a.sensors]} for a in tmpl]
    return out


# ---------------------------------------------------------------------------------------
# serving


def serve(app, host: str, port: int, trusted: list[str]):
    import http.client
    from werkzeug.serving import make_server

    import logging

    # werkzeug logs one INFO line per request unless told otherwise; follow --log-level so a
    # parent that pipes stderr without draining it cannot make the server block on a full pipe
    logging.getLogger("werkzeug").setLevel(os.environ.get("LOGGING_LEVEL", "WARNING"))
    srv = make_server(host, port, app, threaded=True)  # binds now: connections queue from here on
    t = threading.Thread(target=srv.serve_forever, daemon=True, name="werkzeug")
    t.start()
    host_header = trusted[0] if trusted and trusted[0] not in ("*",) else host
    if host_header.startswith("."):
        host_header = host
    deadline = time.time() + 60
    while True:
        try:
            c = http.client.HTTPConnection(host, port, timeout=10)
            c.request("GET", "/api/v3_0/health/ready", headers={"Host": f"{host_header}:{port}"})
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == 200:
                break
            log(f"health/ready answered {r.status}: {body[:200]!r}")
        except OSError as e:
            log(f"health/ready: {e}")
        if time.time() > deadline:
            log("not ready after 60 s, giving up")
            os._exit(3)
        time.sleep(0.2)
    return srv, t


def main(argv=None):
    args = parse_args(argv)
    claim_stdout()
    start_watchdogs(not args.no_stdin_watch)
    args.instance_dir = os.path.abspath(args.instance_dir)
    os.makedirs(args.instance_dir, exist_ok=True)

    if args.redis_db is None:
        redis_db, ratelimit_uri = args.port % 16, "memory://"
    else:
        redis_db, ratelimit_uri = args.redis_db, None  # FlexMeasures default: its Redis connection
        import redis

        redis.Redis(args.redis_host, port=args.redis_port, db=redis_db).flushdb()

    times = {}
    t = time.time()
    recreate_database(args.pg, args.db)
    times["create_db"] = time.time() - t
    db_uri = args.pg.rstrip("/") + "/" + args.db
    # psycopg2 understands postgresql://; make sure SQLAlchemy picks psycopg2 explicitly
    if db_uri.startswith("postgresql://"):
        db_uri = "postgresql+psycopg2://" + db_uri[len("postgresql://"):]
    cfg = write_config(args, redis_db, ratelimit_uri)
    set_environment(args, db_uri)
    os.chdir(args.instance_dir)  # FlexMeasures' logging config writes ./flexmeasures.log

    t = time.time()
    if args.fast_imports:
        import typeguard

        def _no_typecheck(target=None, **_kw):
            return target if target is not None else (lambda f: f)

        typeguard.typechecked = _no_typecheck
    from flexmeasures.app import create

    times["import"] = time.time() - t
    t = time.time()
    app = create(env=args.env, path_to_config=cfg)
    times["create_app"] = time.time() - t

    import flask_migrate
    from flexmeasures.data import db

    t = time.time()
    with app.app_context():
        flask_migrate.upgrade(directory=os.path.join(app.root_path, "data", "migrations"))
    app.database_schema_is_migrated_to_head = True
    times["migrate"] = time.time() - t

    t = time.time()
    with app.app_context():
        info = seed(app, db, not args.no_legacy_user, args.template_assets)
        db.session.remove()
    times["seed"] = time.time() - t

    trusted = [h.strip() for h in args.trusted_hosts.split(",") if h.strip()]
    info.update(
        {
            "base_url": f"http://{args.host}:{args.port}",
            "host": args.host,
            "port": args.port,
            "db": args.db,
            "db_uri": db_uri,
            "config_file": cfg,
            "instance_dir": args.instance_dir,
            "pid": os.getpid(),
            "env": args.env,
            "secret_key": args.secret_key,
            "password_salt": args.password_salt,
            "token_max_age": int(app.config["SECURITY_TOKEN_MAX_AGE"].total_seconds()),
            "trusted_hosts": app.config.get("TRUSTED_HOSTS"),
            "redis_db": redis_db,
            "ratelimit_storage": app.config.get("RATELIMIT_STORAGE_URI"),
            "default_rate_limit": app.config.get("FLEXMEASURES_API_DEFAULT_RATE_LIMIT"),
            "flexmeasures_version": __import__("flexmeasures").__version__,
            # Every URL rule FlexMeasures serves, for the test that compares them with
            # flexgate's preset (what `flexmeasures routes` prints).
            "routes": sorted(
                ({"rule": r.rule, "methods": sorted(set(r.methods) - {"HEAD", "OPTIONS"})}
                 for r in app.url_map.iter_rules()),
                key=lambda r: (r["rule"], r["methods"]),
            ),
        }
    )
    times["until_seed_json"] = time.time() - T_START
    info["timings"] = {k: round(v, 3) for k, v in times.items()}
    proto(json.dumps(info, separators=(",", ":")))
    if args.setup_only:
        os._exit(0)

    t = time.time()
    srv, thread = serve(app, args.host, args.port, trusted)
    times["serve_until_ready"] = time.time() - t
    times["total"] = time.time() - T_START
    proto("READY")
    log("READY " + " ".join(f"{k}={v:.2f}s" for k, v in times.items()))
    while thread.is_alive():
        thread.join(1.0)


if __name__ == "__main__":
    main()

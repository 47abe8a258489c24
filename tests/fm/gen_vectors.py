#!/usr/bin/env python3
"""gen_vectors.py - regenerate tests/fm/vectors.json from the REAL FlexMeasures 1.0.1 code paths.

    /opt/flexgate-ci/fm/bin/python tests/fm/gen_vectors.py [--out tests/fm/vectors.json]

Builds the FlexMeasures app with its own factory (config like fm_server.py writes; no
database rows are needed, transient User objects are enough), freezes the clock
(time.time is patched, which both Flask-Security's fs_paa and itsdangerous' timestamp
read), and records what the libraries themselves produce:
  - auth tokens from User.get_auth_token() (plain, zlib-compressed with a leading ".",
    signed with SECRET_KEY_FALLBACKS configured, old list formats v4/v3, a non-zero exp),
    each re-checked with flask_security.utils.parse_auth_token at several "now"s;
  - a logged-in session cookie from flask_security.login_user(...) + Flask's
    SecureCookieSessionInterface.save_session, and the remember_token Flask-Login sets;
  - a Flask-WTF CSRF token; password HMAC, argon2id and bcrypt hashes (verified with
    flask_security.utils.verify_password).
Each vector is also re-minted / re-verified with tests/fm/mint.py (itsdangerous only) and
the result stored as "mint_py_agrees", so a Rust test can trust mint.py for anything else.
It needs PostgreSQL only because FlexMeasures' app factory inspects the schema revision
at start (it just logs when the database is empty).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mint  # noqa: E402

SECRET_KEY = "test-secret-key-0123456789abcdef0123456789"
PASSWORD_SALT = "test-salt-0123456789"
FALLBACK_KEY = "old-secret-key-fallback-0123456789"
T0 = 1796140800  # 2026-12-01T00:00:00Z, a fixed signing time


@contextlib.contextmanager
def frozen(t: float):
    real = time.time
    time.time = lambda: t
    try:
        yield
    finally:
        time.time = real


def build_app(db_uri: str):
    d = tempfile.mkdtemp(prefix="fm-vectors-")
    cfg = os.path.join(d, "flexmeasures.cfg")
    with open(cfg, "w") as f:
        f.write(
            "from datetime import timedelta\n"
            "SECURITY_TWO_FACTOR_LOGIN_VALIDITY = timedelta(weeks=1)\n"
            f"SECURITY_PASSWORD_SALT = {PASSWORD_SALT!r}\n"
            "SECURITY_PASSWORD_CHECK_BREACHED = None\n"
            "FLEXMEASURES_PROFILE_REQUESTS = False\n"
            "FLEXMEASURES_CREATE_TEMPLATE_ASSETS_ON_STARTUP = False\n"
            "RATELIMIT_STORAGE_URI = 'memory://'\n"
            "TRUSTED_HOSTS = ['127.0.0.1', 'localhost']\n"
        )
    os.environ.update(
        SQLALCHEMY_DATABASE_URI=db_uri, SECRET_KEY=SECRET_KEY, FLEXMEASURES_ENV="production",
        LOGGING_LEVEL="ERROR", HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
    )
    os.chdir(d)
    from flexmeasures.app import create

    return create(env="production", path_to_config=cfg)


def token_vector(app, user, t: float, name: str, note: str, fallbacks=None):
    """A token made by the real User.get_auth_token() at frozen time t."""
    from flask_security import core as fs_core
    from flask_security.utils import parse_auth_token

    sec = app.extensions["security"]
    saved = app.config.get("SECRET_KEY_FALLBACKS"), sec.remember_token_serializer
    try:
        if fallbacks is not None:
            app.config["SECRET_KEY_FALLBACKS"] = fallbacks
            # exactly what Security.init_app does (flask_security/core.py _get_serializer)
            sec.remember_token_serializer = fs_core._get_serializer(app, "remember")
        with app.test_request_context("/"), frozen(t):
            tok = user.get_auth_token()
        v = {"name": name, "note": note, "token": tok, "uid": user.fs_uniquifier,
             "fs_paa": t, "timestamp": int(t), **{k: x for k, x in mint.describe(tok).items() if k != "signed_part"},
             "signed_part": mint.describe(tok)["signed_part"],
             "secret_key_fallbacks": fallbacks or []}
        keys = [SECRET_KEY] + (fallbacks or [])
        v["signing_key"] = keys[-1]
        v["derived_signing_key_hex"] = hashlib.sha1(b"remember-salt" + b"signer" + keys[-1].encode()).hexdigest()
        # what parse_auth_token says at various "now"s (max age 21600 s)
        checks = {}
        for label, now in (("now=ts", int(t)), ("now=ts+21600", int(t) + 21600), ("now=ts+21601", int(t) + 21601),
                           ("now=ts-1 (signed in the future)", int(t) - 1)):
            with app.test_request_context("/"), frozen(now + 0.5):
                try:
                    checks[label] = {"valid": True, "tdata": parse_auth_token(tok)}
                except Exception as e:
                    checks[label] = {"valid": False, "error": f"{type(e).__name__}: {e}"}
        v["parse_auth_token"] = checks
        # mint.py must agree (re-mint from the same inputs, and verify)
        ser = mint.token_serializer(SECRET_KEY, fallbacks or [], int(t))
        v["mint_py_agrees"] = ser.dumps(json.loads(v["payload_json"])) == tok
        return v
    finally:
        app.config["SECRET_KEY_FALLBACKS"], sec.remember_token_serializer = saved


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(HERE, "vectors.json"))
    p.add_argument("--db-uri", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    a = p.parse_args(argv)
    out_path = os.path.abspath(a.out)
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # FlexMeasures logs to stdout

    app = build_app(a.db_uri)
    from flask import session
    from flask_security.utils import get_hmac, hash_password, login_user, verify_password, parse_auth_token
    from flexmeasures.data.models.user import User
    from itsdangerous import URLSafeTimedSerializer

    vec = {
        "about": "Generated by tests/fm/gen_vectors.py from FlexMeasures 1.0.1 / Flask-Security-Too 5.9.2 / "
                 "Flask 3.1 / Flask-Login 0.6.3 / itsdangerous 2.2 running code. Times are Unix seconds.",
        "inputs": {"SECRET_KEY": SECRET_KEY, "SECURITY_PASSWORD_SALT": PASSWORD_SALT,
                   "SECURITY_REMEMBER_SALT": "remember-salt", "SECURITY_TOKEN_MAX_AGE": 21600,
                   "session_salt": "cookie-session", "PERMANENT_SESSION_LIFETIME": 2678400,
                   "fallback_key_used_in_fallback_vectors": FALLBACK_KEY},
        "versions": {m: __import__("importlib.metadata").metadata.version(m) for m in
                     ("flexmeasures", "Flask-Security-Too", "Flask", "Flask-Login", "itsdangerous", "Werkzeug",
                      "libpass", "argon2-cffi", "bcrypt", "Flask-WTF")},
    }

    # -- auth tokens ----------------------------------------------------------------------
    plain_uid = "4f0d8c2b9a6e4e1f8b7c3d2a1e0f9b8c"
    # a uid for which zlib wins by >= 2 bytes (about 1 real uuid4 in 10 does, with a full-precision
    # fs_paa as time.time() gives; with a short float like ...800.25 almost none do)
    comp_uid = None
    for i in range(10000):
        cand = hashlib.sha256(f"flexgate-vector-{i}".encode()).hexdigest()[:32]
        j = json.dumps({"ver": "5", "uid": cand, "fs_paa": T0 + 0.3141592653589793, "exp": 0}, separators=(",", ":")).encode()
        import zlib

        if len(zlib.compress(j)) < len(j) - 1:
            comp_uid = cand
            break
    u_plain = User(email="vec-plain@example.com", fs_uniquifier=plain_uid, active=True)
    u_comp = User(email="vec-comp@example.com", fs_uniquifier=comp_uid, active=True)
    tokens = [
        token_vector(app, u_plain, T0 + 0.123456, "plain", "v5 payload, not compressed"),
        token_vector(app, u_comp, T0 + 0.3141592653589793, "compressed", "v5 payload, zlib-compressed: payload part starts with '.'"),
        token_vector(app, u_plain, T0 + 0.5, "fallback_configured",
                     "SECRET_KEY_FALLBACKS=[FALLBACK] configured: Flask-Security signs with the LAST key of "
                     "[SECRET_KEY]+fallbacks, i.e. the fallback", fallbacks=[FALLBACK_KEY]),
    ]
    # the fallback-signed token: does a server WITHOUT fallbacks (SECRET_KEY only) accept it? (no)
    fb = tokens[-1]
    with app.test_request_context("/"), frozen(T0 + 10):
        try:
            parse_auth_token(fb["token"])
            fb["accepted_by_server_with_only_SECRET_KEY"] = True
        except Exception as e:
            fb["accepted_by_server_with_only_SECRET_KEY"] = False
            fb["error_on_server_with_only_SECRET_KEY"] = f"{type(e).__name__}: {e}"
    # and a token signed with plain SECRET_KEY: accepted by a server that has fallbacks configured? (yes)
    sec = app.extensions["security"]
    from flask_security import core as fs_core

    saved = sec.remember_token_serializer
    app.config["SECRET_KEY_FALLBACKS"] = [FALLBACK_KEY]
    sec.remember_token_serializer = fs_core._get_serializer(app, "remember")
    with app.test_request_context("/"), frozen(T0 + 10):
        try:
            parse_auth_token(tokens[0]["token"])
            tokens[0]["accepted_by_server_with_fallbacks_configured"] = True
        except Exception as e:
            tokens[0]["accepted_by_server_with_fallbacks_configured"] = f"{type(e).__name__}: {e}"
    app.config["SECRET_KEY_FALLBACKS"] = None
    sec.remember_token_serializer = saved

    # older payload formats and a non-zero exp, signed with the real serializer
    for name, payload, note in (
        ("v4_list", [plain_uid], "Flask-Security 4.x payload [fs_uniquifier]: still accepted (ver '4')"),
        ("v3_list", [42, "5e1f3c0b2a", plain_uid], "Flask-Security 3.x payload [id, pw digest, uid]: accepted, only [2] is read (ver '3')"),
        ("v5_exp_nonzero", {"ver": "5", "uid": plain_uid, "fs_paa": T0 + 0.75, "exp": T0 + 3600},
         "exp > 0: rejected once now > exp (int compare), independently of max age"),
        ("v5_missing_exp", {"ver": "5", "uid": plain_uid, "fs_paa": T0 + 0.75},
         "dict without 'exp': ValueError('Token missing keys') -> refused"),
    ):
        with app.test_request_context("/"), frozen(T0 + 0.75):
            tok = sec.remember_token_serializer.dumps(payload)
        v = {"name": name, "note": note, "token": tok, "payload": payload, "timestamp": T0, **mint.describe(tok)}
        checks = {}
        for label, now in (("now=ts", T0), ("now=ts+3601", T0 + 3601)):
            with app.test_request_context("/"), frozen(now + 0.5):
                try:
                    checks[label] = {"valid": True, "tdata": parse_auth_token(tok)}
                except Exception as e:
                    checks[label] = {"valid": False, "error": f"{type(e).__name__}: {e}"}
        v["parse_auth_token"] = checks
        v["mint_py_agrees"] = mint.token_serializer(SECRET_KEY, [], T0).dumps(payload) == tok
        tokens.append(v)
    vec["auth_tokens"] = tokens

    # -- session cookie and remember_token from a real login ---------------------------------
    uid_s = "5d5d54e760f94d8ebd145d53e111af1a"
    u_s = User(email="vec-session@example.com", fs_uniquifier=uid_s, active=True)
    u_s.login_count = 0
    ua = "flexgate-test/1.0"
    t_login = T0 + 60.5
    csrf_raw = hashlib.sha1(b"flexgate-vector-csrf").hexdigest()  # Flask-WTF: sha1(os.urandom(64)).hexdigest()
    with app.test_request_context("/login", method="POST", headers={"User-Agent": ua},
                                  environ_base={"REMOTE_ADDR": "127.0.0.1"}), frozen(t_login):
        session["csrf_token"] = csrf_raw  # what GET /login's form rendering put there
        login_user(u_s, remember=True)
        resp = app.make_response("ok")
        app.login_manager._update_remember_cookie(resp)  # Flask-Login's after_request hook (pops "_remember")
        sess_dict = dict(session)
        app.session_interface.save_session(app, session, resp)
        set_cookies = resp.headers.getlist("Set-Cookie")
    cookies = {c.split("=", 1)[0]: c for c in set_cookies}
    sval = cookies["session"].split("=", 1)[1].split(";", 1)[0]
    rval = cookies["remember_token"].split("=", 1)[1].split(";", 1)[0]
    identifier_base = f"{'127.0.0.1'.encode()}|{ua.encode()}"
    vec["session_cookie"] = {
        "note": "flask_security.login_user(user, remember=True) in a request from 127.0.0.1 with User-Agent "
                f"{ua!r}, session['csrf_token'] pre-set as the login form would, clock frozen at {t_login}",
        "cookie_value": sval,
        "set_cookie_header": cookies["session"],
        "session_dict": sess_dict,
        "_id_formula": "sha512((f\"{remote_addr_bytes}|{user_agent_bytes}\").encode()).hexdigest(), i.e. of the text "
                       + repr(identifier_base),
        "_id_recomputed": hashlib.sha512(identifier_base.encode()).hexdigest(),
        **mint.describe(sval),
    }
    ms = mint.session_serializer(SECRET_KEY, [], int(t_login))
    vec["session_cookie"]["mint_py_agrees"] = ms.dumps(sess_dict) == sval
    vec["session_cookie"]["derived_signing_key_hex"] = __import__("hmac").new(
        SECRET_KEY.encode(), b"cookie-session", hashlib.sha1).hexdigest()
    # a small session (what GET /login leaves for an anonymous visitor) - not compressed
    small = {"csrf_token": csrf_raw, "fs_cc": "set"}
    with app.test_request_context("/"), frozen(t_login):
        small_val = app.session_interface.get_signing_serializer(app).dumps(small)
    vec["session_cookie_anonymous"] = {"session_dict": small, "cookie_value": small_val, **mint.describe(small_val),
                                       "mint_py_agrees": ms.dumps(small) == small_val}
    # TaggedJSON tags, for decoders: tuple " t", bytes " b", datetime " d", uuid " u", markup " m", dict " di"
    import datetime as _dt
    import uuid as _uuid
    from markupsafe import Markup

    tagged = {"a_tuple": (1, 2), "b_bytes": b"\x00\xff", "c_when": _dt.datetime(2026, 12, 1, 12, 0, tzinfo=_dt.timezone.utc),
              "d_uuid": _uuid.UUID(int=1), "e_markup": Markup("<b>x</b>"), "f_dict_with_tag_key": {" t": 1}}
    with app.test_request_context("/"), frozen(t_login):
        tval = app.session_interface.get_signing_serializer(app).dumps(tagged)
    vec["session_cookie_tagged_types"] = {"python_repr": repr(tagged), "cookie_value": tval, **mint.describe(tval)}
    vec["remember_token"] = {
        "note": "Flask-Login encode_cookie(user.get_id()) = fs_uniquifier + '|' + hex(HMAC-SHA512(SECRET_KEY, fs_uniquifier))",
        "uid": uid_s, "cookie_value": rval, "set_cookie_header": cookies["remember_token"],
        "mint_py_agrees": f"{uid_s}|{mint.remember_digest(SECRET_KEY, uid_s)}" == rval,
    }

    # -- Flask-WTF CSRF token (login form / JSON login body field csrf_token) -----------------
    with frozen(t_login):
        csrf_tok = URLSafeTimedSerializer(SECRET_KEY, salt="wtf-csrf-token").dumps(csrf_raw)
    with app.test_request_context("/"), frozen(t_login + 5):
        from flask_wtf.csrf import validate_csrf

        session["csrf_token"] = csrf_raw
        try:
            validate_csrf(csrf_tok)
            ok = True
        except Exception as e:
            ok = f"{type(e).__name__}: {e}"
    vec["csrf_token"] = {"raw_in_session": csrf_raw, "form_token": csrf_tok, "timestamp": int(t_login),
                         "validate_csrf_ok": ok,
                         "formula": "URLSafeTimedSerializer(SECRET_KEY, salt='wtf-csrf-token').dumps(session['csrf_token']), "
                                    "max age WTF_CSRF_TIME_LIMIT=3600", **mint.describe(csrf_tok)}

    # -- passwords ------------------------------------------------------------------------
    pw = "prosumer-member-password-1"
    with app.test_request_context("/"):
        h = get_hmac(pw)
        argon_real = hash_password(pw)
        a2 = json.loads(_capture(lambda: mint.main(["hash", "--password-salt", PASSWORD_SALT, "--password", pw,
                                                    "--scheme", "argon2", "--salt-b64", "AAECAwQFBgcICQoLDA0ODw"])))
        bc = json.loads(_capture(lambda: mint.main(["hash", "--password-salt", PASSWORD_SALT, "--password", pw,
                                                    "--scheme", "bcrypt", "--salt-b64", "abcdefghijklmnopqrstuu"])))
        long_pw = "ü" * 80  # 160 UTF-8 bytes: the HMAC input is not truncated; only the 88-char HMAC is, for bcrypt
        vec["passwords"] = {
            "password": pw,
            "get_hmac_b64": h.decode(),
            "formula": "base64(HMAC-SHA512(key=SECURITY_PASSWORD_SALT utf-8, msg=password utf-8)), 88 ASCII chars",
            "argon2id_by_hash_password": argon_real,
            "argon2id_by_hash_password_verifies": verify_password(pw, argon_real),
            "argon2id_fixed_salt": a2["hash"],
            "argon2id_fixed_salt_verifies": verify_password(pw, a2["hash"]),
            "argon2_params": "argon2id v=19 m=65536 t=3 p=4, 16-byte random salt, 32-byte hash (passlib defaults)",
            "bcrypt_fixed_salt": bc["hash"],
            "bcrypt_input": h[:72].decode(),
            "bcrypt_fixed_salt_verifies": verify_password(pw, bc["hash"]),
            "wrong_password_verifies": verify_password(pw + "x", argon_real),
            "long_unicode_password": long_pw,
            "long_unicode_password_hmac": get_hmac(long_pw).decode(),
        }

    os.dup2(real_stdout, 1)
    with open(out_path, "w") as f:
        json.dump(vec, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
    bad = [t["name"] for t in tokens if not t.get("mint_py_agrees")]
    print(json.dumps({"wrote": out_path, "tokens": len(tokens), "mint_py_disagrees": bad,
                      "session_mint_py_agrees": vec["session_cookie"]["mint_py_agrees"]}))


def _capture(fn) -> str:
    """Run a mint.py command (which prints JSON then sys.exit) and return its stdout text."""
    import io

    buf, old = io.StringIO(), sys.stdout
    sys.stdout = buf
    try:
        fn()
    except SystemExit:
        pass
    finally:
        sys.stdout = old
    return buf.getvalue()


if __name__ == "__main__":
    main()

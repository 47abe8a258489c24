#!/usr/bin/env python3
"""mint.py - mint and verify FlexMeasures 1.0.1 credentials with the venv's own itsdangerous.

For flexgate's Rust tests to cross-check their own implementation against the Python
libraries FlexMeasures uses (itsdangerous 2.2, Flask 3.1 sessions, Flask-Login 0.6.3,
Flask-Security-Too 5.9.2's password HMAC), WITHOUT starting FlexMeasures: it imports only
itsdangerous/hmac/hashlib (plus argon2/bcrypt for the password commands), so each call
takes ~50 ms. Every command prints one JSON object on stdout; exit 0 = success/valid,
1 = invalid/refused, 2 = usage error.

    PY=/opt/flexgate-ci/fm/bin/python
    $PY tests/fm/mint.py token   --secret K --uid U --time 1796144039 [--fs-paa 1796144039.25] [--exp 0]
                                 [--fallback OLDKEY ...] [--format v5|v4|v3 --user-id 6]
    $PY tests/fm/mint.py verify-token --secret K --token T [--now 1796144100] [--max-age 21600] [--fallback K2 ...]
    $PY tests/fm/mint.py session --secret K --json '{"_user_id":"..."}' --time T [--fallback ...]
    $PY tests/fm/mint.py verify-session --secret K --cookie C [--now T] [--max-age 2678400]
    $PY tests/fm/mint.py remember --secret K --uid U          (Flask-Login remember_token value)
    $PY tests/fm/mint.py verify-remember --secret K --cookie C
    $PY tests/fm/mint.py hmac    --password-salt S --password P   (Flask-Security get_hmac)
    $PY tests/fm/mint.py hash    --password-salt S --password P --scheme argon2|bcrypt [--salt-b64 ...]
    $PY tests/fm/mint.py verify-password --password-salt S --password P --hash H

What exactly is computed (all verified against the live library code, see
docs/flexmeasures-formats.md and tests/fm/vectors.json):
  token   = itsdangerous.URLSafeTimedSerializer([SECRET_KEY] + SECRET_KEY_FALLBACKS,
            salt="remember-salt").dumps({"ver":"5","uid":U,"fs_paa":F,"exp":0})
            -> signed with the LAST key of that list (Flask-Security puts SECRET_KEY first!)
            key = SHA1(b"remember-salt" + b"signer" + key)  ("django-concat"), sig = HMAC-SHA1
  session = URLSafeTimedSerializer(SECRET_KEY_FALLBACKS + [SECRET_KEY], salt="cookie-session",
            serializer=flask TaggedJSON (sorted keys, compact, ensure_ascii),
            signer_kwargs={"key_derivation":"hmac","digest_method":sha1})
            -> signed with SECRET_KEY (Flask puts it last); key = HMAC-SHA1(SECRET_KEY, b"cookie-session")
  remember = U + "|" + hex(HMAC-SHA512(key=SECRET_KEY (latin-1 bytes), msg=U))
--time/--now are integer Unix seconds and replace itsdangerous' clock (int(time.time())).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
import zlib

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, bytes_to_int


def fixed_signer(ts: int | None):
    """A TimestampSigner whose clock is `ts` (signing time, or 'now' when verifying)."""

    class _Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(ts) if ts is not None else int(time.time())

    return _Signer


def token_serializer(secret, fallbacks, ts, salt="remember-salt"):
    # exactly flask_security.core._get_serializer: [SECRET_KEY] + SECRET_KEY_FALLBACKS (a list)
    keys = [secret] + list(fallbacks or [])
    return URLSafeTimedSerializer(keys, salt=salt, signer=fixed_signer(ts))


class _TaggedJSON:
    """Flask's TaggedJSONSerializer, without needing an app: flask.json.tag with the stdlib
    json settings Flask's DefaultJSONProvider uses (sort_keys=True, ensure_ascii=True)."""

    def __init__(self):
        from flask.json.tag import TaggedJSONSerializer

        self._t = TaggedJSONSerializer()

    def dumps(self, value):
        return json.dumps(self._t.tag(value), separators=(",", ":"), sort_keys=True, ensure_ascii=True)

    def loads(self, value):
        return self._t._untag_scan(json.loads(value))


def session_serializer(secret, fallbacks, ts):
    # exactly flask.sessions.SecureCookieSessionInterface.get_signing_serializer
    keys = list(fallbacks or []) + [secret]
    return URLSafeTimedSerializer(
        keys,
        salt="cookie-session",
        serializer=_TaggedJSON(),
        signer=fixed_signer(ts),
        signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha1},
    )


def describe(value: str) -> dict:
    """Split an itsdangerous URL-safe timed value into its parts (no verification)."""
    payload_b64, ts_b64, sig_b64 = value.rsplit(".", 2)
    compressed = payload_b64.startswith(".")
    raw = base64_decode(payload_b64[1:] if compressed else payload_b64)
    if compressed:
        raw = zlib.decompress(raw)
    return {
        "compressed": compressed,
        "payload_json": raw.decode("utf-8", "replace"),
        "timestamp": bytes_to_int(base64_decode(ts_b64)),
        "signature_hex": base64_decode(sig_b64).hex(),
        "signed_part": value.rsplit(".", 1)[0],
    }


def out(obj, ok=True):
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.exit(0 if ok else 1)


def cmd_token(a):
    if a.format == "v5":
        payload = {"ver": "5", "uid": a.uid, "fs_paa": a.fs_paa if a.fs_paa is not None else float(a.time), "exp": a.exp}
    elif a.format == "v4":  # Flask-Security 4.x: [fs_uniquifier]
        payload = [a.uid]
    else:  # 3.x: [user id, password-hash digest, fs_uniquifier]; only element [2] is used
        payload = [a.user_id, "legacy", a.uid]
    s = token_serializer(a.secret, a.fallback, a.time, a.salt)
    tok = s.dumps(payload)
    out({"token": tok, "payload": payload, "time": a.time, **describe(tok),
         "signing_key": (([a.secret] + (a.fallback or []))[-1])})


def cmd_verify_token(a):
    """What flask_security.utils.parse_auth_token + core._request_loader do (minus the DB)."""
    s = token_serializer(a.secret, a.fallback, a.now, a.salt)
    res = {"now": a.now if a.now is not None else int(time.time()), "max_age": a.max_age}
    try:
        res.update(describe(a.token))
    except Exception as e:  # not even splittable
        res["describe_error"] = repr(e)
    try:
        data = s.loads(a.token, max_age=float(a.max_age))
    except SignatureExpired as e:
        out({**res, "valid": False, "reason": f"SignatureExpired: {e}"}, False)
    except BadSignature as e:
        out({**res, "valid": False, "reason": f"{type(e).__name__}: {e}"}, False)
    if isinstance(data, dict):
        if not all(k in data for k in ("ver", "uid", "exp")):
            out({**res, "valid": False, "reason": "ValueError: Token missing keys", "data": data}, False)
        if data.get("exp") and data["exp"] < res["now"]:
            out({**res, "valid": False, "reason": "SignatureExpired: token[exp] value expired", "data": data}, False)
        uid, ver = data["uid"], data["ver"]
    else:
        try:
            uid, ver = (data[0], "4") if len(data) == 1 else (data[2], "3")
        except Exception as e:
            out({**res, "valid": False, "reason": f"{type(e).__name__}: {e}", "data": data}, False)
    out({**res, "valid": True, "data": data, "uid": uid, "ver": ver})


def cmd_session(a):
    s = session_serializer(a.secret, a.fallback, a.time)
    val = s.dumps(json.loads(a.json))
    out({"cookie": val, **describe(val)})


def cmd_verify_session(a):
    s = session_serializer(a.secret, a.fallback, a.now)
    try:
        data = s.loads(a.cookie, max_age=a.max_age)
    except BadSignature as e:
        out({"valid": False, "reason": f"{type(e).__name__}: {e}"}, False)
    out({"valid": True, "data": data, **describe(a.cookie)})


def remember_digest(secret: str, uid: str) -> str:
    return hmac.new(secret.encode("latin1"), uid.encode("utf-8"), hashlib.sha512).hexdigest()


def cmd_remember(a):
    out({"cookie": f"{a.uid}|{remember_digest(a.secret, a.uid)}"})


def cmd_verify_remember(a):
    try:
        uid, digest = a.cookie.rsplit("|", 1)
    except ValueError:
        out({"valid": False, "reason": "no |"}, False)
    ok = hmac.compare_digest(remember_digest(a.secret, uid), digest)
    out({"valid": ok, "uid": uid if ok else None}, ok)


def get_hmac(password_salt: str, password: str) -> bytes:
    # flask_security.utils.get_hmac
    return base64.b64encode(hmac.new(password_salt.encode("utf-8"), password.encode("utf-8"), hashlib.sha512).digest())


def cmd_hmac(a):
    h = get_hmac(a.password_salt, a.password)
    out({"hmac_b64": h.decode(), "bcrypt_input": h[:72].decode()})


def cmd_hash(a):
    h = get_hmac(a.password_salt, a.password)
    if a.scheme == "bcrypt":
        import bcrypt

        salt = (b"$2b$12$" + a.salt_b64.encode()) if a.salt_b64 else bcrypt.gensalt(12, b"2b")
        out({"hash": bcrypt.hashpw(h[:72], salt).decode(), "secret": h[:72].decode()})
    else:
        import argon2.low_level as ll

        # passlib's argon2 defaults as used by Flask-Security: argon2id v=19 m=65536 t=3 p=4,
        # 16-byte salt, 32-byte digest; the secret is the HMAC value as ASCII text
        salt = base64.b64decode(a.salt_b64 + "=" * (-len(a.salt_b64) % 4)) if a.salt_b64 else __import__("os").urandom(16)
        enc = ll.hash_secret(h, salt, time_cost=3, memory_cost=65536, parallelism=4, hash_len=32, type=ll.Type.ID)
        out({"hash": enc.decode(), "secret": h.decode()})


def cmd_verify_password(a):
    h = get_hmac(a.password_salt, a.password)
    if a.hash.startswith("$2"):
        import bcrypt

        ok = bcrypt.checkpw(h[:72], a.hash.encode())
    elif a.hash.startswith("$argon2"):
        import argon2

        try:
            ok = argon2.PasswordHasher().verify(a.hash, h)
        except Exception:
            ok = False
    else:
        out({"valid": False, "reason": "unknown scheme"}, False)
    out({"valid": ok}, ok)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, clock):
        sp.add_argument("--secret", required=True, help="SECRET_KEY")
        sp.add_argument("--fallback", action="append", default=[], help="SECRET_KEY_FALLBACKS entry (repeatable, in order)")
        sp.add_argument(clock, type=int, default=None, help="Unix seconds (default: now)")

    sp = sub.add_parser("token"); common(sp, "--time")
    sp.add_argument("--uid", required=True, help="fs_uniquifier")
    sp.add_argument("--fs-paa", type=float, default=None, help="fs_paa float (default: --time)")
    sp.add_argument("--exp", type=int, default=0)
    sp.add_argument("--salt", default="remember-salt", help="SECURITY_REMEMBER_SALT")
    sp.add_argument("--format", default="v5", choices=["v5", "v4", "v3"])
    sp.add_argument("--user-id", type=int, default=1, help="for --format v3")
    sp.set_defaults(fn=cmd_token)

    sp = sub.add_parser("verify-token"); common(sp, "--now")
    sp.add_argument("--token", required=True)
    sp.add_argument("--max-age", type=int, default=21600, help="SECURITY_TOKEN_MAX_AGE (FlexMeasures: 21600)")
    sp.add_argument("--salt", default="remember-salt")
    sp.set_defaults(fn=cmd_verify_token)

    sp = sub.add_parser("session"); common(sp, "--time")
    sp.add_argument("--json", required=True, help="session dict as JSON")
    sp.set_defaults(fn=cmd_session)

    sp = sub.add_parser("verify-session"); common(sp, "--now")
    sp.add_argument("--cookie", required=True)
    sp.add_argument("--max-age", type=int, default=31 * 86400, help="PERMANENT_SESSION_LIFETIME (31 days)")
    sp.set_defaults(fn=cmd_verify_session)

    sp = sub.add_parser("remember"); sp.add_argument("--secret", required=True); sp.add_argument("--uid", required=True)
    sp.set_defaults(fn=cmd_remember)
    sp = sub.add_parser("verify-remember"); sp.add_argument("--secret", required=True); sp.add_argument("--cookie", required=True)
    sp.set_defaults(fn=cmd_verify_remember)

    for name, fn in (("hmac", cmd_hmac), ("hash", cmd_hash), ("verify-password", cmd_verify_password)):
        sp = sub.add_parser(name)
        sp.add_argument("--password-salt", required=True, help="SECURITY_PASSWORD_SALT")
        sp.add_argument("--password", required=True)
        if name == "hash":
            sp.add_argument("--scheme", default="argon2", choices=["argon2", "bcrypt"])
            sp.add_argument("--salt-b64", default=None,
                            help="argon2: base64 of the 16 salt bytes; bcrypt: the 22 salt chars after $2b$12$")
        if name == "verify-password":
            sp.add_argument("--hash", required=True)
        sp.set_defaults(fn=fn)

    a = p.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main()

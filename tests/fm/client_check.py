#!/usr/bin/env python3
"""client_check.py - drive FlexMeasures' own API client (flexmeasures-client 0.9.6) against a host.

Used by flexgate's integration tests to compare FlexMeasures' own client talking to
FlexMeasures directly with the same client talking to FlexMeasures through flexgate.

    /opt/flexgate-ci/fm/bin/python tests/fm/client_check.py --host 127.0.0.1:PORT \
        --email E --password P --own-asset A --other-asset B --own-sensor S --other-sensor T

or take the ids and credentials from fm_server.py's seed JSON:

    ... client_check.py --host 127.0.0.1:PORT --seed seed.json --user prosumer_admin
        (--seed - reads the seed JSON from stdin; own = the user's account's asset/sensor,
         other = Other Tenant B's, or Prosumer A's for a Tenant B user)

Prints ONE JSON object on stdout:
    {"host":..., "email":..., "calls": {NAME: {"ok": bool, "status": int|null,
        "statuses": [every HTTP status the client saw during the call],
        "error": null | "ExceptionClass: message", "expect": "ok"|403|401,
        "as_expected": bool, "result": <short summary>}}, "all_as_expected": bool}
Exit code 0 when every call went as expected, 1 otherwise (the JSON is printed either way).

HTTP statuses are recorded with an aiohttp TraceConfig on the client's own session, because
the client's exceptions do not always carry them (a wrong password surfaces as
ValueError("User password does not match.")). Plain http (ssl=False); aiohttp ignores
HTTP(S)_PROXY unless trust_env is set, so nothing is proxied.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import warnings
from datetime import datetime, timedelta, timezone

warnings.simplefilter("ignore", FutureWarning)  # the client's parse_json_fields notices


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", required=True, help="host:port, no scheme (FlexMeasuresClient's host)")
    p.add_argument("--email")
    p.add_argument("--password")
    p.add_argument("--own-asset", type=int)
    p.add_argument("--other-asset", type=int)
    p.add_argument("--own-sensor", type=int)
    p.add_argument("--other-sensor", type=int)
    p.add_argument("--seed", help="fm_server.py seed JSON file ('-' = stdin) to take ids/credentials from")
    p.add_argument("--user", default="prosumer_admin", help="user key in the seed JSON (default prosumer_admin)")
    p.add_argument("--expect-other", default="403", choices=["403", "ok"],
                   help="expected outcome of get_asset/get_sensor on the other tenant's ids (ok for admins)")
    p.add_argument("--timeout", type=float, default=20.0, help="per-request timeout (s)")
    a = p.parse_args(argv)
    if a.seed:
        seed = json.load(sys.stdin if a.seed == "-" else open(a.seed))
        u = seed["users"][a.user]
        a.email = a.email or u["email"]
        a.password = a.password or u["password"]
        own_key = next(k for k, v in seed["assets"].items() if v["account_id"] == u["account_id"]) \
            if any(v["account_id"] == u["account_id"] for v in seed["assets"].values()) else "prosumer_a"
        other_key = "tenant_b" if own_key != "tenant_b" else "prosumer_a"
        a.own_asset = a.own_asset or seed["assets"][own_key]["id"]
        a.own_sensor = a.own_sensor or seed["sensors"][own_key]["id"]
        a.other_asset = a.other_asset or seed["assets"][other_key]["id"]
        a.other_sensor = a.other_sensor or seed["sensors"][other_key]["id"]
    missing = [n for n in ("email", "password", "own_asset", "other_asset", "own_sensor", "other_sensor")
               if getattr(a, n) is None]
    if missing:
        p.error("missing: " + ", ".join(missing))
    return a


def summarize(value):
    """Keep the JSON short: ids/names of dicts, lengths of lists."""
    if isinstance(value, list):
        return {"count": len(value), "ids": [v.get("id") for v in value if isinstance(v, dict)][:20]}
    if isinstance(value, tuple):
        return [summarize(v) for v in value]
    if isinstance(value, dict):
        keep = ("id", "name", "email", "account_id", "generic_asset_id", "unit", "values", "start",
                "duration", "message", "status", "server_version", "server_supports_api_versions",
                "client_version", "client_uses_api_version")
        return {k: value[k] for k in keep if k in value}
    return value


async def run(a) -> dict:
    import aiohttp
    from flexmeasures_client import FlexMeasuresClient

    seen: list[int] = []

    async def on_end(session, ctx, params):
        seen.append(params.response.status)

    tc = aiohttp.TraceConfig()
    tc.on_request_end.append(on_end)
    session = aiohttp.ClientSession(trace_configs=[tc])

    def make_client(password):
        return FlexMeasuresClient(
            host=a.host, email=a.email, password=password, ssl=False, session=session,
            request_timeout=a.timeout, request_retry_timeout=max(a.timeout * 2, 30),
        )

    client = make_client(a.password)
    calls: dict[str, dict] = {}

    # a 15-minute aligned window in the past (FlexMeasures refuses future measurements by default)
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    start = (now - timedelta(days=1)).replace(minute=0)

    async def call(name, expect, coro_fn):
        seen.clear()
        rec = {"ok": False, "status": None, "statuses": [], "error": None, "expect": expect}
        try:
            res = await coro_fn()
            rec["ok"] = True
            rec["result"] = summarize(res)
        except Exception as e:  # the client raises ValueError / ConnectionError / aiohttp errors
            rec["error"] = f"{type(e).__name__}: {e}"[:500]
        rec["statuses"] = list(seen)
        rec["status"] = seen[-1] if seen else None
        if expect == "ok":
            rec["as_expected"] = rec["ok"]
        else:
            rec["as_expected"] = (not rec["ok"]) and rec["status"] == expect
        calls[name] = rec

    await call("get_access_token", "ok", client.get_access_token)
    await call("get_versions", "ok", client.get_versions)
    await call("get_user", "ok", client.get_user)
    await call("get_account", "ok", client.get_account)
    await call("get_assets", "ok", lambda: client.get_assets(parse_json_fields=True))
    await call("get_asset_own", "ok", lambda: client.get_asset(a.own_asset, parse_json_fields=True))
    other = 403 if a.expect_other == "403" else "ok"
    await call("get_asset_other", other, lambda: client.get_asset(a.other_asset, parse_json_fields=True))
    await call("get_sensors", "ok", lambda: client.get_sensors(parse_json_fields=True))
    await call("get_sensor_own", "ok", lambda: client.get_sensor(a.own_sensor, parse_json_fields=True))
    await call("post_sensor_data_own", "ok", lambda: client.post_sensor_data(
        a.own_sensor, start=start.isoformat(), duration="PT1H", values=[1.5, 2.5, 3.5, 4.5], unit="kW"))
    await call("get_sensor_data_own", "ok", lambda: client.get_sensor_data(
        a.own_sensor, start=start.isoformat(), duration="PT1H", unit="kW", resolution="PT15M"))
    await call("get_sensor_other", other, lambda: client.get_sensor(a.other_sensor, parse_json_fields=True))

    bad = make_client(a.password + "-wrong")
    await call("login_wrong_password", 401, bad.get_access_token)

    # did the data round-trip?
    d = calls["get_sensor_data_own"].get("result") or {}
    calls["get_sensor_data_own"]["values_match"] = d.get("values") == [1.5, 2.5, 3.5, 4.5]

    await session.close()
    return {
        "host": a.host,
        "email": a.email,
        "ids": {"own_asset": a.own_asset, "other_asset": a.other_asset,
                "own_sensor": a.own_sensor, "other_sensor": a.other_sensor},
        "server_version": client.server_version,
        "calls": calls,
        "all_as_expected": all(c["as_expected"] for c in calls.values()),
    }


def main(argv=None):
    a = parse_args(argv)
    out = asyncio.run(run(a))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.exit(0 if out["all_as_expected"] else 1)


if __name__ == "__main__":
    main()

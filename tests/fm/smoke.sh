#!/usr/bin/env bash
# smoke.sh - start a real FlexMeasures with fm_server.py, run client_check.py against it for a
# few seeded users, print the timings, stop the server. A manual check of the harness that
# flexgate's Rust integration tests use; also shows the subprocess protocol in ~40 lines:
#   spawn with a piped stdin, read line 1 (seed JSON) and line 2 (READY) from stdout,
#   close stdin to stop it.
# Usage: tests/fm/smoke.sh [PORT] [DBNAME]      (run from anywhere; needs /opt/flexgate-ci/fm)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${FM_PYTHON:-/opt/flexgate-ci/fm/bin/python}"
PORT="${1:-18950}"
DB="${2:-flexgate_fm_smoke_$PORT}"
DIR="$(mktemp -d /tmp/fm-smoke.XXXXXX)"
t0=$(date +%s.%N)

# stdin of the server is the write end we keep open in fd 7 (a coprocess keeps both ends)
coproc FM { exec "$PY" "$HERE/fm_server.py" --db "$DB" --port "$PORT" \
    --secret-key "test-secret-key-0123456789abcdef0123456789" \
    --password-salt "test-salt-0123456789" --instance-dir "$DIR" 2>"$DIR/stderr.log"; }
exec 7>&"${FM[1]}"
read -r -t 120 SEED <&"${FM[0]}" || { echo "no seed JSON; stderr:"; tail -40 "$DIR/stderr.log"; exit 1; }
t_seed=$(date +%s.%N)
read -r -t 60 READY <&"${FM[0]}" || { echo "no READY"; tail -40 "$DIR/stderr.log"; exit 1; }
t_ready=$(date +%s.%N)
[ "$READY" = READY ] || { echo "unexpected line: $READY"; exit 1; }
printf '%s\n' "$SEED" >"$DIR/seed.json"
echo "seed JSON after $(echo "$t_seed - $t0" | bc) s, READY after $(echo "$t_ready - $t0" | bc) s"
echo "server timings: $(printf '%s' "$SEED" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["timings"])')"

rc=0
for u in prosumer_admin prosumer_member tenant_b_member consultant legacy_bcrypt; do
  if out=$("$PY" "$HERE/client_check.py" --host "127.0.0.1:$PORT" --seed "$DIR/seed.json" --user "$u"); then
    echo "client_check $u: all as expected"
  else
    rc=1; echo "client_check $u: NOT as expected: $out"
  fi
done
if "$PY" "$HERE/client_check.py" --host "127.0.0.1:$PORT" --seed "$DIR/seed.json" --user admin --expect-other ok >/dev/null; then
  echo "client_check admin: all as expected"
else rc=1; echo "client_check admin: NOT as expected"; fi

exec 7>&-                       # close the server's stdin: it exits
eval "exec ${FM[1]}>&-" 2>/dev/null || true
wait "$FM_PID" 2>/dev/null || true
echo "stopped; total $(echo "$(date +%s.%N) - $t0" | bc) s; logs in $DIR"
exit $rc

#!/usr/bin/env bash
# Instructions per request under callgrind: flexgate's authorized route, its public
# route, and nginx proxying the same upstream (docs/performance.md, Profiles).
#
# Instruction counts repeat to within a few tens per request on one machine, where
# wall-clock figures on two shared cores do not: use them to measure a change on the
# request path, before and after (FLEXGATE_BIN names another build to compare).
#
#   bash benches/instructions.sh            # needs valgrind, nginx and wrk
#
# Rig: nginx (one worker, `return 200 "ok"`) as the upstream; `flexgate serve` under
# valgrind with the demo's database and rules, `http_mode = "proxy"`, one worker; wrk
# with 8 connections for 4 s to warm, then the counters are zeroed, 6 s counted, and
# the total divided by the requests wrk made. Everything runs on loopback and stops.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
for program in valgrind callgrind_control wrk curl; do
  command -v "$program" >/dev/null || { echo "instructions: $program is not installed (apt-get install valgrind wrk curl)" >&2; exit 2; }
done
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx" ] || { echo "instructions: nginx is not installed (apt-get install nginx)" >&2; exit 2; }

bin=${FLEXGATE_BIN:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --locked --quiet)
  bin=$root/target/release/flexgate
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_for URL: until something answers there (a minute at most: valgrind is slow).
wait_for() {
  for _ in $(seq 1 600); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "instructions: nothing answers at $1" >&2
  exit 1
}

export SECRET_KEY=instructions-rig-secret-key-0123456789
export FLEXGATE_UPSTREAM_SECRET=instructions-rig-upstream-secret-0123456789
export RUST_LOG=warn

# The demo's database and rules (the demo is stopped once it has written them).
"$bin" demo --dir "$work/demo" --https-port 0 --http-port 0 --admin-port 0 \
  --ready-file "$work/ready" >/dev/null 2>&1 &
demo=$!
for _ in $(seq 1 300); do [ -s "$work/ready" ] && break; sleep 0.1; done
kill "$demo"; wait "$demo" 2>/dev/null || true
[ -s "$work/demo/demo.db" ] || { echo "instructions: flexgate demo wrote no database" >&2; exit 1; }
export DATABASE_URL="sqlite://$work/demo/demo.db"

up=$(free_port)
cat >"$work/upstream.conf" <<EOF
daemon off; master_process off; worker_processes 1;
error_log /dev/null; pid $work/upstream.pid;
events { worker_connections 1024; }
http { access_log off;
  server { listen 127.0.0.1:$up; keepalive_requests 1000000; location / { return 200 "ok"; } } }
EOF
"$nginx" -c "$work/upstream.conf" -p "$work" &
pids+=($!)
wait_for "http://127.0.0.1:$up/"

proxy=$(free_port)
admin=$(free_port)
{
  printf '[server]\nhttp = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\nupstream = "http://127.0.0.1:%s"\n' "$proxy" "$admin" "$up"
  printf 'http_mode = "proxy"\nworkers = 1\nallowed_hosts = ["127.0.0.1"]\n'
  sed -n '/^\[server\]/,/^$/!p' "$work/demo/demo.toml" | sed '1{/^#/d}'
} >"$work/rig.toml"
token=$("$bin" token issue --email prosumer@flexgate.demo | tail -n 1)

# count NAME PATH [HEADER]: instructions per request of the process under callgrind.
count() {
  local name=$1 url=$2 pid=$3 header=${4:-}
  local args=(-t1 -c8 -d4s)
  [ -n "$header" ] && args+=(-H "$header")
  wrk "${args[@]}" "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  args[2]=-d6s
  local requests
  requests=$(wrk "${args[@]}" "$url" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 0.5
  local dump total
  dump=$(ls -t "$work"/cg."$pid".* | head -n 1)
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  awk -v n="$name" -v t="$total" -v r="$requests" \
    'BEGIN { printf "%-44s %9.0f instructions per request (%d requests)\n", n, t / r, r }'
}

valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
  "$bin" serve --config "$work/rig.toml" >"$work/flexgate.log" 2>&1 &
fg=$!
pids+=($fg)
wait_for "http://127.0.0.1:$proxy/api/ops/ping"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$proxy/api/v3_0/assets/1")
[ "$code" = 200 ] || { echo "instructions: the authorized route answered $code" >&2; cat "$work/flexgate.log" >&2; exit 1; }
count "flexgate, authorized GET /api/v3_0/assets/1" "http://127.0.0.1:$proxy/api/v3_0/assets/1" "$fg" "Authorization: Bearer $token"
count "flexgate, public GET /api/ops/ping" "http://127.0.0.1:$proxy/api/ops/ping" "$fg"
if [ -n "${FLEXGATE_CALLGRIND_KEEP:-}" ]; then
  cp "$work"/cg."$fg".* "$FLEXGATE_CALLGRIND_KEEP"/
  echo "callgrind dumps copied to $FLEXGATE_CALLGRIND_KEEP (callgrind_annotate --inclusive=yes)"
fi
kill "$fg"

front=$(free_port)
cat >"$work/front.conf" <<EOF
daemon off; master_process off; worker_processes 1;
error_log /dev/null; pid $work/front.pid;
events { worker_connections 1024; }
http { access_log off;
  upstream up { server 127.0.0.1:$up; keepalive 32; }
  server { listen 127.0.0.1:$front; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "$nginx" -c "$work/front.conf" -p "$work" >/dev/null 2>&1 &
ng=$!
pids+=($ng)
wait_for "http://127.0.0.1:$front/"
count "nginx, plain reverse proxy" "http://127.0.0.1:$front/" "$ng"

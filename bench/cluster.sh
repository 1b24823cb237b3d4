#!/usr/bin/env bash
# Scale-out benchmarks:
#  1. dispatch latency and throughput (fake executor) for SQLite and Redis with 1, 2, 4 workers;
#  2. time from SIGKILL of a worker to its task running on another worker (real binary,
#     real git and npm, Redis store), with the default lease (15 s) and a short one (3 s).
# Starts its own redis-server (AOF, appendfsync everysec) on a free port. Usage: bench/cluster.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Sets redis_url; not called in a subshell, so the cleanup knows the pid.
start_redis() {
  local port; port=$(free_port)
  mkdir -p "$tmp/redis-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
    --dir "$tmp/redis-$port" >/dev/null 2>&1 &
  pids+=($!); disown $!
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
  redis_url="redis://127.0.0.1:$port"
}

cargo build --release -q -p cloudbuild-bench -p cloudbuild --manifest-path "$root/Cargo.toml"
bench="$root/target/release/cloudbuild-bench"
cb="$root/target/release/cloudbuild"

echo "## Dispatch (fake executor), 16 slots per worker, 2000 tasks"
echo
echo "| store | workers | latency p50 | latency p99 | tasks/s | all succeeded |"
echo "|---|---|---|---|---|---|"
for store in sqlite redis; do
  for workers in 1 2 4; do
    url=sqlite
    if [ "$store" = redis ]; then start_redis; url=$redis_url; fi
    out=$("$bench" --workers "$workers" --slots 16 --tasks 2000 --store "$url")
    p50=$(grep 'p50' <<<"$out" | awk -F'|' '{print $3}' | xargs)
    p99=$(grep 'p99' <<<"$out" | awk -F'|' '{print $3}' | xargs)
    tps=$(grep 'throughput' <<<"$out" | awk -F'|' '{print $3}' | xargs)
    ok=$(grep 'succeeded' <<<"$out" | awk -F'|' '{print $3}' | xargs)
    echo "| $store | $workers | $p50 | $p99 | $tps | $ok |"
  done
done

echo
echo "## SIGKILL of a worker mid-build to its task running on another worker (Redis store)"
echo
# A repo whose first build attempt hangs (and records its pid in a marker file); later
# attempts build. Builds get a cleared environment, so the marker path is in the script.
repo="$tmp/repo"; mkdir -p "$repo"
git -C "$repo" init -q -b main
cat >"$repo/package.json" <<'JSON'
{"name":"killed-site","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}
JSON
write_build() {
  cat >"$repo/build.js" <<JS
const fs = require('fs');
if (!fs.existsSync('$1')) { fs.writeFileSync('$1', String(process.pid)); setInterval(() => {}, 1000); }
else { fs.mkdirSync('dist'); fs.writeFileSync('dist/index.html', 'ok'); }
JS
  git -C "$repo" add -A && git -C "$repo" -c user.email=b@b -c user.name=b commit -qm "marker $1"
}
echo "| lease / heartbeat | SIGKILL → attempt 2 running elsewhere |"
echo "|---|---|"
for lease in "15 3" "3 1"; do
  set -- $lease
  start_redis; url=$redis_url
  data="$tmp/data-$1"; mkdir -p "$data"
  port=$(free_port)
  write_build "$tmp/marker-$1"
  cat >"$data/config.toml" <<TOML
store = "$url"
[workers]
embedded = false
lease_secs = $1
heartbeat_secs = $2
[git]
allowed_protocols = ["file", "https"]
allow_local_hosts = true
TOML
  "$cb" server --listen "127.0.0.1:$port" --data-dir "$data" --config "$data/config.toml" 2>"$data/server.log" &
  pids+=($!); disown $!
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.05; done
  token=$("$cb" worker-tokens create bench --server "http://127.0.0.1:$port" 2>/dev/null)
  "$cb" worker --server "http://127.0.0.1:$port" --worker-token "$token" --name first --work-dir "$data/w1" 2>"$data/w1.log" &
  w1=$!; pids+=($w1); disown $w1
  sleep 0.5
  id=$(curl -sf -X POST "http://127.0.0.1:$port/api/v1/tasks" -H 'content-type: application/json' \
    -d "{\"repo\":\"file://$repo\",\"branch\":\"main\",\"name\":\"killed-site\",\"version\":\"1.0.$1\"}" \
    | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
  until [ -s "$tmp/marker-$1" ]; do sleep 0.05; done
  "$cb" worker --server "http://127.0.0.1:$port" --worker-token "$token" --name second --work-dir "$data/w2" 2>"$data/w2.log" &
  pids+=($!); disown $!
  sleep 0.5
  kill -9 "$w1"; kill -9 "$(cat "$tmp/marker-$1")" 2>/dev/null || true
  t0=$(date +%s.%N)
  until curl -sf "http://127.0.0.1:$port/api/v1/tasks/$id" | python3 -c \
    'import json,sys;t=json.load(sys.stdin);sys.exit(0 if t["attempt"]==2 and t["state"] in ("running","succeeded") else 1)'; do
    sleep 0.05
  done
  t1=$(date +%s.%N)
  echo "| $1 s / $2 s | $(python3 -c "print(f'{$t1-$t0:.2f} s')") |"
done

#!/usr/bin/env bash
# socket.io benchmark: idle connections held (server memory per connection, and after they
# leave), the rate of `building` messages delivered to one client, then the fan-out table of
# bench/fanout.sh. Uses the real socket.io-client 4.8 from
# crates/cli/tests/node. Usage: bench/socketio.sh [CONNECTIONS]   (default 10000)
set -euo pipefail
n=${1:-10000}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p cloudbuild --manifest-path "$root/Cargo.toml"
(cd "$root/crates/cli/tests/node" && [ -d node_modules/socket.io-client-v4 ] || npm ci --no-audit --no-fund >/dev/null)
ulimit -n "$(ulimit -Hn)"   # server and load client each hold one descriptor per connection
tmp=$(mktemp -d)
server_pid=""; load_pid=""
cleanup() { [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null; [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# A project printing 200,000 lines (~8 MB), then building.
git init -q --bare "$tmp/loud.git"
mkdir "$tmp/loud" && cd "$tmp/loud"
echo '{"name":"loud","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}' > package.json
cat > build.js <<'JS'
const out = []; for (let i = 0; i < 200000; i++) out.push(`line ${i} of the build output, some text to make it realistic`);
process.stdout.write(out.join('\n') + '\n');
require('fs').mkdirSync('dist'); require('fs').writeFileSync('dist/index.html', 'loud');
JS
git init -q -b main && git add -A && git -c user.email=b@b -c user.name=b commit -q -m x
git remote add origin "file://$tmp/loud.git" && git push -q -u origin main

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
CLOUDBUILD_GIT__ALLOWED_PROTOCOLS='[file]' CLOUDBUILD_LIMITS__OUTPUT_BYTES=67108864 \
  "$root/target/release/cloudbuild" server --listen "127.0.0.1:$port" --data-dir "$tmp/data" 2>"$tmp/server.log" &
server_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port"
query="{\"repo\":\"file://$tmp/loud.git\",\"name\":\"loud\",\"version\":\"1.0.0\",\"branch\":\"main\",\"prod\":\"false\"}"

rate=$(node "$root/bench/socketio-load.js" rate "$url" "$query")

# Settled, as after they leave: the rate run's log is released and its memory purged.
sleep 12
before=$(rss_kib "$server_pid")
node "$root/bench/socketio-load.js" idle "$url" "$n" "$query" > "$tmp/idle.out" &
load_pid=$!
for _ in $(seq 1200); do [ -s "$tmp/idle.out" ] && break; sleep 0.2; done
sleep 2
after=$(rss_kib "$server_pid")
idle=$(cat "$tmp/idle.out")
# They leave; the memory should go back (jemalloc purges freed pages on its own thread).
kill "$load_pid"; load_pid=""
sleep 12
left=$(rss_kib "$server_pid")

python3 - "$n" "$before" "$after" "$idle" "$rate" "$left" <<'PY'
import json, sys
n, before, after = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
idle, rate = json.loads(sys.argv[4]), json.loads(sys.argv[5])
left = int(sys.argv[6])
print("| metric | value |\n|---|---|")
print(f"| idle connections requested | {n} |")
print(f"| connected and greeted (held open) | {idle['greeted']} (failed: {idle['failed']}, in {idle['secs']:.1f} s) |")
print(f"| server RSS before / after | {before/1024:.1f} MiB / {after/1024:.1f} MiB |")
print(f"| server memory per idle connection | {(after-before)*1024/max(idle['greeted'],1)/1024:.1f} KiB |")
print(f"| server RSS 12 s after they left | {left/1024:.1f} MiB ({(left-before)/before*100:+.0f} % of before) |")
print(f"| `building` messages to one client | {rate['messages']} messages, {rate['lines']} lines, {rate['bytes']/1e6:.1f} MB in {rate['secs']:.2f} s |")
print(f"| delivery rate | {rate['messages']/rate['secs']:.0f} messages/s, {rate['lines']/rate['secs']:.0f} lines/s, {rate['bytes']/1e6/rate['secs']:.1f} MB/s |")
PY

# The fan-out row: one build followed by 1, then by 200 followers (bench/fanout.sh).
echo
"$root/bench/fanout.sh"

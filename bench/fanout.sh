#!/usr/bin/env bash
# Fan-out: the server's CPU time for one build followed by 1 SSE follower, then by 200 (100 SSE
# with curl, 100 socket.io 4.x clients following the task with `?task=<id>`), and whether every
# follower received the same complete log. The build waits 3 s (followers connect), then
# prints LINES lines of about 100 bytes.
# Usage: bench/fanout.sh [LINES]   (default 20000, about 2 MB)
set -euo pipefail
lines=${1:-20000}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p cloudbuild --manifest-path "$root/Cargo.toml"
(cd "$root/crates/cli/tests/node" && [ -d node_modules/socket.io-client-v4 ] || npm ci --no-audit --no-fund >/dev/null)
bin="$root/target/release/cloudbuild"
. "$root/bench/lib.sh"

git init -q --bare "$tmp/fan.git"
mkdir "$tmp/fan" && cd "$tmp/fan"
echo '{"name":"fan","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}' > package.json
cat > build.js <<JS
setTimeout(() => {
  const out = []; for (let i = 0; i < $lines; i++) out.push(\`line \${i} \${'x'.repeat(88)}\`);
  for (let i = 0; i < out.length; i += 1000) process.stdout.write(out.slice(i, i + 1000).join('\n') + '\n');
  require('fs').mkdirSync('dist'); require('fs').writeFileSync('dist/index.html', 'fan');
}, 3000);
JS
git init -q -b main && git add -A && git -c user.email=b@b -c user.name=b commit -q -m x
git remote add origin "file://$tmp/fan.git" && git push -q -u origin main

port=$(free_port)
printf '[git]\nallowed_protocols = ["file"]\n[limits]\noutput_bytes = 67108864\n' > "$tmp/server.toml"
"$bin" server --listen "127.0.0.1:$port" --data-dir "$tmp/data" --config "$tmp/server.toml" 2>"$tmp/server.log" &
server=$!; pids+=("$server")
url="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$url/healthz" | grep -q '"workers":1' && break; sleep 0.1; done
cpu_ms() { awk '{print ($14 + $15) * 1000 / '"$(getconf CLK_TCK)"'}' "/proc/$server/stat"; }

# One task followed by $1 SSE and $2 socket.io followers; prints "cpu_ms sse_identical sio_identical bytes".
run() {
  local sse=$1 sio=$2 id c0 c1 i
  c0=$(cpu_ms)
  id=$(curl -sf -X POST "$url/api/v1/tasks" -H 'content-type: application/json' \
    -d "{\"repo\":\"file://$tmp/fan.git\",\"branch\":\"main\",\"name\":\"fan\",\"version\":\"1.0.0\",\"force\":true}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
  rm -f "$tmp"/sse-*
  for i in $(seq "$sse"); do curl -sN "$url/api/v1/tasks/$id/events" > "$tmp/sse-$i" & done
  local node_pid=""
  if [ "$sio" -gt 0 ]; then
    (cd "$root/crates/cli/tests/node" && node followers.js "$url" "$sio" "$id" > "$tmp/sio.out") & node_pid=$!
  fi
  wait $(jobs -p | grep -v "^$server$") 2>/dev/null || true
  c1=$(cpu_ms)
  python3 - "$tmp" "$sse" "$sio" "$c0" "$c1" <<'PY'
import hashlib, json, sys, glob
tmp, sse, sio, c0, c1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
logs = [open(f, 'rb').read() for f in sorted(glob.glob(tmp + '/sse-*'))]
text = ''.join(json.loads(l[6:]).get('text', '') for l in logs[0].decode().split('\n') if l.startswith('data: '))
same_sse = all(l == logs[0] for l in logs) and b'event: end' in logs[0]
sha = hashlib.sha256(text.encode()).hexdigest()
same_sio = True
if sio:
    lines = open(tmp + '/sio.out').read().splitlines()
    res = json.loads(lines[-1]).get('results', [])
    same_sio = len(res) == sio and all(r['sha256'] == sha for r in res)
print(f"{c1 - c0:.0f} {same_sse} {same_sio} {len(text.encode())}")
PY
}
run 1 0 >/dev/null   # warm-up: npm cache, page cache
read -r one s1 _ bytes1 <<<"$(run 1 0)"
if [ -n "${PERF_OUT:-}" ]; then (sleep 1; perf record -F 3000 -g -p "$server" -o "$PERF_OUT" -- sleep 6 >/dev/null 2>&1) & fi
read -r many s2 i2 bytes2 <<<"$(run 100 100)"
printf '| followers | server CPU for the task (ms) | ratio | every follower got the whole log | log bytes |\n|---|---|---|---|---|\n'
printf '| 1 (SSE) | %s | 1.00 | %s | %s |\n' "$one" "$s1" "$bytes1"
python3 -c "print(f'| 200 (100 SSE, 100 socket.io) | $many | {$many/$one:.2f} | ' + ('True' if '$s2' == 'True' and '$i2' == 'True' else 'False') + ' | $bytes2 |')"

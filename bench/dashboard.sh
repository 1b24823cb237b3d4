#!/usr/bin/env bash
# The dashboard's build page on a large log and under many live viewers (issue: a 200,000-line,
# ≈ 20 MB finished log opens in under 1 s; the server's memory with 200 open live pages; a live
# page on a build printing 5,000 lines a second stays bounded and keeps up).
# Prints a table. Usage: bench/dashboard.sh   (release build; Chromium and playwright-core as
# .ci/run installs them)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
cargo build --release -q -p cloudbuild --manifest-path "$root/Cargo.toml"
bin="$root/target/release/cloudbuild"
node_dir="$root/crates/cli/tests/node"
[ -d "$node_dir/node_modules/playwright-core" ] || (cd "$node_dir" && npm ci --no-audit --no-fund >/dev/null)
port=$(free_port)
url="http://127.0.0.1:$port"
CLOUDBUILD_LIMITS__OUTPUT_BYTES=67108864 CLOUDBUILD_CACHE__ENABLED=false \
  CLOUDBUILD_GIT__ALLOWED_PROTOCOLS='[https,ssh,file]' \
  "$bin" server --data-dir "$tmp/data" --listen "127.0.0.1:$port" >"$tmp/server.log" 2>&1 &
pids+=($!)
server_pid=$!
for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done

project() { # name, build.js body
  git init -q --bare "$tmp/$1.git"
  git init -q -b main "$tmp/$1" && cd "$tmp/$1"
  printf '{"name": "%s", "version": "1.0.0", "private": true, "scripts": {"build": "node build.js"}}\n' "$1" > package.json
  printf '%s\n' "$2" > build.js
  git add -A && git -c user.name=b -c user.email=b@x commit -qm "$1"
  git remote add origin "file://$tmp/$1.git" && git push -q origin main
}
wait_state() { # id, state
  for _ in $(seq 600); do
    curl -s "$url/api/v1/tasks/$1" | grep -q "\"state\":\"$2\"" && return 0; sleep 0.1
  done; echo "task $1 did not reach $2" >&2; exit 1
}

# 1. A finished 200,000-line log (≈ 20 MB, coloured).
project big-log "const fs=require('fs');const line=(i)=>'line '+String(i).padStart(6,'0')+' \x1b[32mok\x1b[0m '+'x'.repeat(80)+'\n';let b='';for(let i=1;i<=200000;i++){b+=line(i);if(b.length>65536){process.stdout.write(b);b='';}}process.stdout.write(b);fs.mkdirSync('dist',{recursive:true});fs.writeFileSync('dist/index.html','ok');"
"$bin" publish --server "$url" --detach >/dev/null
wait_state 1 succeeded
bytes=$(curl -s "$url/tasks/1/raw" | wc -c)
ttfb=(); total=()
for _ in 1 2 3 4 5; do
  read -r a b < <(curl -s -o /dev/null -w '%{time_starttransfer} %{time_total}\n' "$url/tasks/1")
  ttfb+=("$a"); total+=("$b")
done
median() { printf '%s\n' "$@" | sort -n | sed -n 3p; }
page=$(NODE_DIR="$node_dir" node "$root/bench/dashboard-load.js" page "$url/tasks/1")

# 2. 200 live viewers of one running build (a line every 50 ms for 60 s).
project live-log "let i=0;const t=setInterval(()=>{console.log('tick '+(++i));if(i===1200){clearInterval(t);require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/index.html','ok');}},50);"
"$bin" publish --server "$url" --detach >/dev/null
wait_state 2 running
rss() { awk '/VmRSS/ {print $2}' "/proc/$server_pid/status"; }
sleep 10  # let the allocator return what the large page's rendering freed
before=$(rss)
coproc VIEWERS { NODE_DIR="$node_dir" node "$root/bench/dashboard-load.js" follow "$url/tasks/2/live?after=0&line=1" 200; }
read -r _ <&"${VIEWERS[0]}"
sleep 5
during=$(rss)
exec {VIEWERS[1]}>&-
sleep 2
after=$(rss)

# 3. A build printing 5,000 lines a second for 40 s, its page open in Chromium all along.
project firehose "let i=0;const t=setInterval(()=>{let b='';for(let k=0;k<50;k++){b+='fire '+(++i)+' '+Date.now()+'\\n';}process.stdout.write(b);if(i>=200000){clearInterval(t);require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/index.html','ok');}},10);"
"$bin" publish --server "$url" --detach >/dev/null
wait_state 3 running
fire=$(NODE_DIR="$node_dir" node "$root/bench/dashboard-load.js" firehose "$url/tasks/3" 40)
wait_state 3 succeeded
at() { echo "$fire" | grep "\"t\":$1," | sed 's/.*"lines":\([0-9]*\),"nodes":\([0-9]*\),"heap_mb":\([0-9.]*\),"lag_ms":\([0-9-]*\).*/\1 line nodes, \2 elements, JS heap \3 MiB, last line \4 ms old/'; }

echo "| metric | value |"
echo "|---|---|"
echo "| finished log | $(printf "%'d" "$bytes") bytes, 200,000 lines |"
echo "| build page: time to first byte, median of 5 (curl) | $(median "${ttfb[@]}") s |"
echo "| build page: whole answer, median of 5 (curl) | $(median "${total[@]}") s |"
echo "| build page in Chromium: goto to load (ms), line nodes in the DOM | $(echo "$page" | sed 's/.*"load_ms":\([0-9]*\).*"lines":\([0-9]*\).*/\1 ms, \2/') |"
echo "| server RSS: one running build, no viewer | $((before / 1024)) MiB |"
echo "| server RSS: 200 open live pages (SSE) on it | $((during / 1024)) MiB ($(( (during - before) / 200 )) KiB each) |"
echo "| server RSS: after they left | $((after / 1024)) MiB |"
echo "| live page of a build printing 5,000 lines/s, after 10 s | $(at 10) |"
echo "| the same page after 40 s | $(at 40) |"

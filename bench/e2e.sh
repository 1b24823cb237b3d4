#!/usr/bin/env bash
# End-to-end benchmark: `cloudbuild publish` against the same clone + install + build run by
# hand, on the vite-admin fixture (real Vite + React + antd, with its lockfile) and on a tiny
# project with no dependencies (which shows the fixed overhead alone). The npm cache is warmed
# first, so both sides install from the same cache. Prints a table of medians.
#
# Usage: bench/e2e.sh [RUNS]        (default 3 runs of each)
set -euo pipefail
runs=${1:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p cloudbuild --manifest-path "$root/Cargo.toml"
bin="$root/target/release/cloudbuild"
tmp=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

make_repo() { # name source-dir
  local name=$1 src=$2
  git init -q --bare "$tmp/$name.git"
  cp -r "$src" "$tmp/$name"
  (cd "$tmp/$name" && git init -q -b main && git add -A \
    && git -c user.email=b@b -c user.name=bench commit -q -m fixture \
    && git remote add origin "file://$tmp/$name.git" && git push -q -u origin main)
}

mkdir -p "$tmp/tiny-src"
cat > "$tmp/tiny-src/package.json" <<'JSON'
{"name":"tiny-site","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}
JSON
echo "require('fs').mkdirSync('dist',{recursive:true});require('fs').writeFileSync('dist/index.html','<p>tiny</p>')" > "$tmp/tiny-src/build.js"
make_repo tiny "$tmp/tiny-src"
make_repo vite-admin "$root/bench/fixtures/vite-admin"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
CLOUDBUILD_GIT__ALLOWED_PROTOCOLS='[file]' CLOUDBUILD_WORKERS__EMBEDDED_SLOTS=1 \
  "$bin" server --listen "127.0.0.1:$port" --data-dir "$tmp/data" 2>"$tmp/server.log" &
server_pid=$!
export CLOUDBUILD_SERVER="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$CLOUDBUILD_SERVER/healthz" | grep -q '"workers":1' && break; sleep 0.1; done

manual() { # name → seconds for clone + install + build by hand
  local name=$1 dir="$tmp/manual-$name-$RANDOM" t0
  t0=$(now)
  git clone -q --depth 1 --single-branch --branch main "file://$tmp/$name.git" "$dir"
  (cd "$dir" && if [ -f package-lock.json ]; then npm ci --silent; else npm install --silent; fi >/dev/null && npm run -s build >/dev/null)
  echo "$(now) - $t0" | bc
  # Removed in the background, as the worker removes its work directory: both sides then start
  # right after the other's large delete (which slows file creation on ext4 for a while).
  (rm -rf "$dir" &)
}

publish() { # name → seconds for `cloudbuild publish` until it exits
  local name=$1 t0
  t0=$(now)
  (cd "$tmp/$name" && "$bin" publish >/dev/null)
  echo "$(now) - $t0" | bc
}

printf '| project | runs | by hand (median s) | cloudbuild publish (median s) | overhead (s) |\n|---|---|---|---|---|\n'
for name in tiny vite-admin; do
  manual "$name" >/dev/null; publish "$name" >/dev/null   # warm the npm cache and the page cache
  m=(); p=()
  for _ in $(seq "$runs"); do m+=("$(manual "$name")"); p+=("$(publish "$name")"); done
  mm=$(printf '%s\n' "${m[@]}" | median); pm=$(printf '%s\n' "${p[@]}" | median)
  printf '| %s | %s | %.2f | %.2f | %+.2f |\n' "$name" "$runs" "$mm" "$pm" "$(echo "$pm - $mm" | bc)"
done

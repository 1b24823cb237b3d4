#!/usr/bin/env bash
# Sandbox overhead: the same publishes on two servers in one run, one building in the
# bubblewrap sandbox (the default) and one with `[sandbox] mode = "off"`, alternating, each
# with a warm npm cache. Projects: a tiny one (no dependencies) and bench/fixtures/vite-admin
# (131 packages, npm ci + vite build). Prints the median whole-task time of each and the
# difference.
# Usage: bench/sandbox.sh [RUNS]   (default 5 for the tiny project, 3 for vite-admin)
set -euo pipefail
runs=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p cloudbuild --manifest-path "$root/Cargo.toml"
bin="$root/target/release/cloudbuild"
. "$root/bench/lib.sh"

project() { # name, source dir (or empty for the tiny one) → a bare repo at $tmp/<name>.git
  local name=$1 src=$2
  git init -q --bare "$tmp/$name.git"
  mkdir "$tmp/$name" && cd "$tmp/$name"
  if [ -n "$src" ]; then
    cp -r "$src"/. .
    rm -rf node_modules dist
  else
    echo '{"name":"tiny","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}' > package.json
    echo "require('fs').mkdirSync('dist',{recursive:true});require('fs').writeFileSync('dist/index.html','<h1>tiny</h1>')" > build.js
  fi
  git init -q -b main && git add -A && git -c user.email=b@b -c user.name=b commit -q -m x
  git remote add origin "file://$tmp/$name.git" && git push -q -u origin main
}
project tiny ""
project vite-admin "$root/bench/fixtures/vite-admin"

start() { # mode → sets $url (not in a subshell: the server's pid must reach the cleanup)
  local mode=$1 port
  port=$(free_port)
  printf '[git]\nallowed_protocols = ["file"]\n[workers]\nembedded_slots = 1\n[sandbox]\nmode = "%s"\n' "$mode" > "$tmp/$mode.toml"
  # The unsandboxed server gets its own npm cache too, so both start equally cold.
  npm_config_cache="$tmp/npm-cache-$mode" "$bin" server --listen "127.0.0.1:$port" --data-dir "$tmp/data-$mode" \
    --config "$tmp/$mode.toml" >/dev/null 2>"$tmp/server-$mode.log" &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" | grep -q '"workers":1' && break; sleep 0.1; done
  url="http://127.0.0.1:$port"
}
start bwrap; on=$url
start off; off=$url
grep -h "sandbox:" "$tmp"/server-*.log | sed 's/^/# /'

publish() { # server, project → seconds of the whole task (or "failed")
  cd "$tmp/$2"
  local t0 t1
  t0=$(date +%s.%N)
  if ! CLOUDBUILD_SERVER=$1 "$bin" publish >"$tmp/last.log" 2>&1; then
    echo failed; tail -5 "$tmp/last.log" >&2; return
  fi
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:] if x!="failed"]; print(f"{statistics.median(v):.3f}" if v else "failed")' "$@"; }

printf '| project | runs | sandbox off (median s) | sandbox on (median s) | overhead |\n|---|---|---|---|---|\n'
for p in tiny vite-admin; do
  n=$runs; [ "$p" = vite-admin ] && n=$(( runs < 3 ? runs : 3 ))
  publish "$off" "$p" >/dev/null; publish "$on" "$p" >/dev/null   # warm caches, not measured
  a=(); b=()
  for _ in $(seq "$n"); do a+=("$(publish "$off" "$p")"); b+=("$(publish "$on" "$p")"); done
  ma=$(median "${a[@]}"); mb=$(median "${b[@]}")
  python3 -c "a,b=$ma,$mb; print(f'| $p | $n | {a:.3f} | {b:.3f} | {(b-a)*1000:+.0f} ms ({(b-a)/a*100:+.1f} %) |')"
done

#!/usr/bin/env bash
# Build caches on vite-admin (bench/fixtures/vite-admin, 131 packages): by-hand references
# (clone + npm ci with a warm npm cache + build; the build alone) against publishes that are
# cold (no git mirror, no saved node_modules or output; npm's download cache warm), after a
# one-file source change, of the same commit again, after a version bump only, and after a
# lockfile change (one dependency bumped); then the three cached cases for a small pnpm and a
# small yarn project (one dependency from the npm registry). Median of RUNS; whole-task time as
# the CLI waits for it, and the install and build stages' times from the task's events.
# Needs the npm registry (the fixtures' dependencies). Usage: bench/cache.sh [RUNS] (default 3)
set -euo pipefail
runs=${1:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p cloudbuild --manifest-path "$root/Cargo.toml"
bin="$root/target/release/cloudbuild"
. "$root/bench/lib.sh"
export npm_config_cache="$tmp/npm-cache" npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

project() { # name, source dir → a bare repo at $tmp/<name>.git and a checkout at $tmp/<name>
  local name=$1 src=$2
  git init -q --bare -b main "$tmp/$name.git"
  mkdir "$tmp/$name" && cd "$tmp/$name"
  cp -r "$src"/. . && rm -rf node_modules dist
  printf 'node_modules/\ndist/\n' > .gitignore
  git init -q -b main && git add -A && git -c user.email=b@b -c user.name=b commit -q -m x
  git remote add origin "file://$tmp/$name.git" && git push -q -u origin main
}
commit() { git add -A && git -c user.email=b@b -c user.name=b commit -q -m "$1" && git push -q; }
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.2f}")' "$@"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{$(now) - $1:.3f}')"; }

project vite-admin "$root/bench/fixtures/vite-admin"

port=$(free_port)
printf '[git]\nallowed_protocols = ["file"]\n[workers]\nembedded_slots = 1\n' > "$tmp/config.toml"
"$bin" server --listen "127.0.0.1:$port" --data-dir "$tmp/data" --config "$tmp/config.toml" >/dev/null 2>"$tmp/server.log" &
pids+=($!)
export CLOUDBUILD_SERVER="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$CLOUDBUILD_SERVER/healthz" | grep -q '"workers":1' && break; sleep 0.1; done
caches="$tmp/data/work/.cache"

# publish [ARGS]: writes "<whole s> <install s> <build s> <dependencies> <output>" of the new
# task to $tmp/result (not printed: the cases' counters must not run in a subshell).
publish() {
  local t0 id
  t0=$(now)
  "$bin" publish "$@" >"$tmp/last.log" 2>&1 || { tail -20 "$tmp/last.log" >&2; exit 1; }
  local whole; whole=$(since "$t0")
  id=$(curl -sf "$CLOUDBUILD_SERVER/api/v1/tasks?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tasks"][0]["id"])')
  curl -sf -H 'Accept: application/json' "$CLOUDBUILD_SERVER/api/v1/tasks/$id/events" >"$tmp/events.json"
  curl -sf "$CLOUDBUILD_SERVER/api/v1/tasks/$id" >"$tmp/task.json"
  python3 - "$whole" "$tmp/events.json" "$tmp/task.json" >"$tmp/result" <<'PY'
import json, sys
whole, events, task = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
first = {}
for e in events:
    body = e["data"]
    action = body.get("data", {}).get("action") if isinstance(body.get("data"), dict) else None
    if action and action not in first:
        first[action] = body["meta"]["timestamp"]
span = lambda a, b: (first[b] - first[a]) / 1000 if a in first and b in first else 0.0
cache = task.get("cache") or {}
print(whole, f"{span('install', 'check'):.3f}", f"{span('build', 'pre-publish'):.3f}",
      cache.get("dependencies") or "-", cache.get("output") or "-")
PY
}

declare -A whole install build deps output
measure() { # case, command...
  local case=$1; shift
  local w=() i=() b=() r
  for _ in $(seq "$runs"); do
    "$@"
    read -r ww ii bb dd oo <"$tmp/result"
    w+=("$ww"); i+=("$ii"); b+=("$bb")
    deps[$case]=$dd; output[$case]=$oo
  done
  whole[$case]=$(median "${w[@]}")
  if [ "${i[0]}" = - ]; then install[$case]=-; build[$case]=-; else install[$case]=$(median "${i[@]}"); build[$case]=$(median "${b[@]}"); fi
}

# References, by hand in a fresh clone (npm's cache warmed by the first run, not measured).
by_hand() {
  # Moved aside, not deleted: deleting 22,500 files slows the next install down (the trash).
  cd "$tmp" && { [ ! -d "$tmp/hand" ] || mv "$tmp/hand" "$tmp/aside-$RANDOM$RANDOM"; } && local t0; t0=$(now)
  git clone -q "file://$tmp/vite-admin.git" "$tmp/hand" && cd "$tmp/hand" && npm ci --silent >/dev/null && npm run build --silent >/dev/null
  echo "$(since "$t0") - - - -" >"$tmp/result"
}
floor() { cd "$tmp/hand" && rm -rf dist && local t0; t0=$(now); npm run build --silent >/dev/null; echo "$(since "$t0") - - - -" >"$tmp/result"; }
by_hand
measure "by hand: clone + npm ci (warm npm cache) + build" by_hand
measure "by hand: build alone (the floor)" floor

cd "$tmp/vite-admin"
publish # warms the worker's npm cache for this project
cold() { for c in git deps output; do [ ! -d "$caches/$c" ] || mv "$caches/$c" "$tmp/aside-$RANDOM$RANDOM"; done; cd "$tmp/vite-admin"; echo "// $RANDOM$RANDOM" >> src/main.tsx; commit cold; publish; }
measure "publish, cold worker (no caches)" cold
source_change() { cd "$tmp/vite-admin"; echo "// $RANDOM$RANDOM" >> src/main.tsx; commit source; publish; }
source_change # saves node_modules again (the cold runs' entries were removed)
measure "publish, one source file changed" source_change
envs=(test prod); n=0
same_commit() { cd "$tmp/vite-admin"; n=$((n + 1)); publish --env "${envs[$((n % 2))]}" --force; }
measure "publish of the same commit again" same_commit
bump=0
version_bump() {
  cd "$tmp/vite-admin"; bump=$((bump + 1))
  node -e "const f='package.json',p=JSON.parse(require('fs').readFileSync(f));p.version='0.0.$bump';require('fs').writeFileSync(f,JSON.stringify(p,null,2)+'\n')"
  commit "version 0.0.$bump"; publish
}
measure "publish after a version bump only" version_bump
dayjs=(1.11.18 1.11.17 1.11.16 1.11.15 1.11.14); d=0
lockfile_change() {
  cd "$tmp/vite-admin"; npm install --silent --package-lock-only "dayjs@${dayjs[$d]}" >/dev/null; d=$((d + 1)); commit "dayjs"; publish
}
measure "publish, lockfile changed (one dependency bumped)" lockfile_change
# Its reference, next to it in time (the machine's disk state drifts over a run): by hand, the
# same lockfile, with that dependency in npm's cache.
npm cache add --silent "dayjs@${dayjs[$((d - 1))]}" >/dev/null
measure "by hand, lockfile changed: clone + npm ci (warm npm cache) + build" by_hand

# Small pnpm and yarn projects: one dependency from the registry, a node build.
small() { # name, manager
  local name=$1 pm=$2 dir="$tmp/src-$1"
  mkdir -p "$dir" && cd "$dir"
  echo "{\"name\":\"$name\",\"version\":\"1.0.0\",\"private\":true,\"scripts\":{\"build\":\"node build.js\"},\"dependencies\":{\"dayjs\":\"1.11.13\"}}" > package.json
  echo "const d=require('dayjs');require('fs').mkdirSync('dist',{recursive:true});require('fs').writeFileSync('dist/index.html','<p>'+d('2026-01-01').format('YYYY')+'</p>')" > build.js
  case $pm in pnpm) pnpm install --silent --lockfile-only >/dev/null ;; yarn) yarn install --silent --mode update-lockfile >/dev/null 2>&1 || yarn install --silent >/dev/null; rm -rf node_modules ;; esac
  project "$name" "$dir"
  publish
  # Its floor: the build alone, by hand, in an installed checkout.
  git clone -q "file://$tmp/$name.git" "$tmp/hand-$name" && cd "$tmp/hand-$name" && "$pm" install --silent >/dev/null 2>&1
}
small_floor() { cd "$tmp/hand-small-$pm" && rm -rf dist && local t0; t0=$(now); "$pm" run --silent build >/dev/null; echo "$(since "$t0") - - - -" >"$tmp/result"; }
for pm in pnpm yarn; do
  small "small-$pm" "$pm"
  sc() { cd "$tmp/small-$pm"; echo "// $RANDOM$RANDOM" >> build.js; commit source; publish; }
  sm() { cd "$tmp/small-$pm"; n=$((n + 1)); publish --env "${envs[$((n % 2))]}" --force; }
  vb() { cd "$tmp/small-$pm"; bump=$((bump + 1)); node -e "const f='package.json',p=JSON.parse(require('fs').readFileSync(f));p.version='1.0.$bump';require('fs').writeFileSync(f,JSON.stringify(p))"; commit v; publish; }
  measure "$pm: by hand, build alone (the floor)" small_floor
  measure "$pm: one source file changed" sc
  measure "$pm: the same commit again" sm
  measure "$pm: after a version bump only" vb
done

printf '| case | whole task (s) | install (s) | build (s) | dependencies | output |\n|---|---|---|---|---|---|\n'
for c in "by hand: clone + npm ci (warm npm cache) + build" "by hand: build alone (the floor)" \
  "publish, cold worker (no caches)" "publish, one source file changed" "publish of the same commit again" \
  "publish after a version bump only" "publish, lockfile changed (one dependency bumped)" \
  "by hand, lockfile changed: clone + npm ci (warm npm cache) + build" \
  "pnpm: by hand, build alone (the floor)" "pnpm: one source file changed" "pnpm: the same commit again" \
  "pnpm: after a version bump only" "yarn: by hand, build alone (the floor)" "yarn: one source file changed" \
  "yarn: the same commit again" "yarn: after a version bump only"; do
  printf '| %s | %s | %s | %s | %s | %s |\n' "$c" "${whole[$c]}" "${install[$c]}" "${build[$c]}" "${deps[$c]}" "${output[$c]}"
done
echo "(runs: $runs, median; $(node --version), npm $(npm --version), pnpm $(pnpm --version), yarn $(yarn --version))"

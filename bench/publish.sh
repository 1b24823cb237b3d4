#!/usr/bin/env bash
# Publish benchmark: a generated 5,000-file output (~10 MB) published cold, unchanged, and with
# one file changed, to the local target and to an S3 target (s3s-fs on loopback). Prints files
# and bytes sent and the wall time of the publish stage and of the whole task.
# Usage: bench/publish.sh [FILES]   (default 5000)
set -euo pipefail
files=${1:-5000}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p cloudbuild --manifest-path "$root/Cargo.toml"
s3s=$(command -v s3s-fs || echo "$root/target/tools/bin/s3s-fs")
[ -x "$s3s" ] || cargo install s3s-fs@0.14.1 --features binary --locked --root "$root/target/tools"
. "$root/bench/lib.sh"

# The project: its build writes FILES files of ~2 KB; file 0 depends on seed.txt.
git init -q --bare "$tmp/gen.git"
mkdir "$tmp/gen" && cd "$tmp/gen"
echo '{"name":"gen-site","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}' > package.json
cat > build.js <<JS
const fs = require('fs');
fs.mkdirSync('dist/assets', { recursive: true });
const seed = fs.readFileSync('seed.txt', 'utf8');
fs.writeFileSync('dist/index.html', '<h1>generated</h1>');
for (let i = 0; i < $files - 1; i++) {
  const body = (i === 0 ? seed : '') + '// chunk ' + i + '\n' + 'x'.repeat(2000) + '\n';
  fs.writeFileSync('dist/assets/chunk-' + i + '-a1b2c3d4.js', body);
}
JS
echo one > seed.txt
git init -q -b main && git add -A && git -c user.email=b@b -c user.name=b commit -q -m x
git remote add origin "file://$tmp/gen.git" && git push -q -u origin main

s3port=$(free_port)
mkdir -p "$tmp/s3/bucket-bench"
"$s3s" --host 127.0.0.1 --port "$s3port" --access-key benchkey --secret-key benchsecret0123456789 "$tmp/s3" >/dev/null 2>&1 &
pids+=($!)
port=$(free_port)
cat > "$tmp/config.toml" <<TOML
[git]
allowed_protocols = ["file"]
[targets.prod]
kind = "s3"
endpoint = "http://127.0.0.1:$s3port"
bucket = "bucket-bench"
allow_http = true
public_url = "https://cdn.example.com"
TOML
AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret0123456789 \
  "$root/target/release/cloudbuild" server --listen "127.0.0.1:$port" --data-dir "$tmp/data" --config "$tmp/config.toml" 2>"$tmp/server.log" &
pids+=($!)
export CLOUDBUILD_SERVER="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$CLOUDBUILD_SERVER/healthz" | grep -q '"workers":1' && break; sleep 0.1; done

run() { # env label force → one table row
  local env=$1 label=$2 force=$3 id
  id=$("$root/target/release/cloudbuild" publish --env "$env" $force --detach --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  "$root/target/release/cloudbuild" logs "$id" --follow >/dev/null || true
  curl -s -H 'accept: application/json' "$CLOUDBUILD_SERVER/api/v1/tasks/$id/events" | python3 -c "
import json, re, sys
ev = [e for e in json.load(sys.stdin) if e['event'] in ('build', 'end')]
stage = [(e['data']['meta']['timestamp'], e['data']['data']['action'], e['data']['data']['payload']['message']) for e in ev if e['event'] == 'build']
pub = [s for s in stage if s[1] == 'publish']
end = [e for e in ev if e['event'] == 'end'][0]['data']
if end['state'] != 'succeeded':
    print('| $env | $label | failed: %s |' % end['reason']); sys.exit()
m = re.search(r'uploaded (\d+) files? \((\d+) bytes?\), skipped (\d+) files? \((\d+) bytes?\)', pub[-1][2])
print('| $env | $label | %s | %s | %s | %.2f s | %.2f s |' % (m.group(1), f'{int(m.group(2)):,}', m.group(3), (pub[-1][0]-pub[0][0])/1000, (stage[-1][0]-stage[0][0])/1000))
"
}

printf '| target | run | files uploaded | bytes uploaded | files skipped | publish stage | whole task |\n|---|---|---|---|---|---|---|\n'
for env in test prod; do
  force=""; [ "$env" = prod ] && force="--force"
  git checkout -q seed.txt; echo one > seed.txt; git commit -qam "seed one" --allow-empty; git push -q
  run "$env" cold "$force"
  run "$env" unchanged "$force"
  echo "two-$env" > seed.txt; git commit -qam "seed two"; git push -q
  run "$env" "one file changed" "$force"
done | sed 's/^| test |/| local (test) |/; s/^| prod |/| s3 via s3s-fs (prod) |/'

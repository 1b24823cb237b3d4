#!/usr/bin/env bash
# Static serving benchmark: cloudbuild (a published site, by host) against nginx serving the
# same release directory, for a 2 KB and a 1 MB file, with wrk on loopback. Prints requests per
# second and p99 latency for each, and cloudbuild's ratio to nginx.
# Usage: bench/sites.sh [SECONDS] [CONNECTIONS]   (defaults 10 and 32)
set -euo pipefail
secs=${1:-10}
conns=${2:-32}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)"; exit 1; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx_bin" ] || { echo "nginx is needed (apt-get install nginx-light)"; exit 1; }
cargo build --release -q -p cloudbuild --manifest-path "$root/Cargo.toml"
. "$root/bench/lib.sh"

# The site: a 2 KB page and a 1 MB file.
git init -q --bare "$tmp/origin.git"
mkdir "$tmp/site" && cd "$tmp/site"
echo '{"name":"bench-site","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}' > package.json
cat > build.js <<'JS'
const fs = require('fs');
fs.mkdirSync('dist', { recursive: true });
fs.writeFileSync('dist/index.html', '<h1>bench</h1>');
fs.writeFileSync('dist/small.txt', 'x'.repeat(2048));
fs.writeFileSync('dist/large.bin', Buffer.alloc(1024 * 1024, 7));
JS
git init -q -b main && git add -A && git -c user.email=b@b -c user.name=b commit -q -m x
git remote add origin "file://$tmp/origin.git" && git push -q -u origin main

port=$(free_port)
printf '[git]\nallowed_protocols = ["file"]\n' > "$tmp/config.toml"
"$root/target/release/cloudbuild" server --listen "127.0.0.1:$port" --data-dir "$tmp/data" --config "$tmp/config.toml" 2>"$tmp/server.log" &
pids+=($!)
export CLOUDBUILD_SERVER="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$CLOUDBUILD_SERVER/healthz" | grep -q '"workers":1' && break; sleep 0.1; done
"$root/target/release/cloudbuild" publish >/dev/null
release=$(ls -d "$tmp"/data/targets/test/bench-site/1.0.0/*/ | head -1)

# nginx as it is usually run: a master and one worker per core, sendfile, no access log.
nport=$(free_port)
mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<CONF
user root;
worker_processes auto;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 1024; }
http {
  include /etc/nginx/mime.types;
  access_log off;
  sendfile on;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  server { listen 127.0.0.1:$nport; root $release; }
}
CONF
"$nginx_bin" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$nport/small.txt" >/dev/null && break; sleep 0.1; done
host="bench-site.test.localhost:$port"
curl -sf -H "Host: $host" "http://127.0.0.1:$port/small.txt" | cmp -s - "$release/small.txt" || { echo "cloudbuild does not serve the site"; exit 1; }

measure() { # port host path → "rps p99"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -H "Host: $2" "http://127.0.0.1:$1$3" | python3 -c '
import re, sys
out = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
print(f"{rps:.0f} {p99:.2f}")'
}

printf '| file | nginx req/s | cloudbuild req/s | ratio | nginx p99 | cloudbuild p99 |\n|---|---|---|---|---|---|\n'
for f in small.txt:2KB large.bin:1MB; do
  path=/${f%%:*}; label=${f##*:}
  read -r n_rps n_p99 < <(measure "$nport" "127.0.0.1" "$path")
  read -r c_rps c_p99 < <(measure "$port" "$host" "$path")
  python3 -c "print(f'| $label | {$n_rps:,.0f} | {$c_rps:,.0f} | {$c_rps/$n_rps:.2f} | {$n_p99:.2f} ms | {$c_p99:.2f} ms |')"
done
echo
echo "wrk -t2 -c$conns -d${secs}s on loopback, $(nproc) cores; nginx $("$nginx_bin" -v 2>&1 | cut -d/ -f2), worker_processes auto, sendfile on"

#!/usr/bin/env bash
# Runs every benchmark and prints their tables: scheduler dispatch (fake executor) and
# end-to-end publish against a manual build. Usage: bench/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
echo "## Dispatch (fake executor, SQLite store), anonymous callers"
cargo run --release -q -p cloudbuild-bench --manifest-path "$root/Cargo.toml" -- "$@"
echo
echo "## Dispatch (fake executor, SQLite store), a signed-in user with a project role"
cargo run --release -q -p cloudbuild-bench --manifest-path "$root/Cargo.toml" -- --auth user "$@"
echo
echo "## End to end (real git, npm, build, upload)"
"$root/bench/e2e.sh"
echo
echo "(Scale-out figures, SQLite vs Redis with 1, 2, 4 workers and worker-loss recovery: bench/cluster.sh)"

#!/usr/bin/env bash
# Webhook intake (issue: deliveries/s accepted with verification, deduplication and a task
# created, and the p99 latency to the 2xx answer). Prints a table. Usage: bench/hooks.sh [--deliveries N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo run --release -q -p cloudbuild-bench --bin cloudbuild-bench-hooks --manifest-path "$root/Cargo.toml" -- "$@"

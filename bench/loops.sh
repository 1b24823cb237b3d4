#!/usr/bin/env bash
# The background loops every server runs (schedule scan, preview sweep, commit status reporter, release
# gates), measured per look. Prints a table. Usage: bench/loops.sh [--projects N] [--tasks M]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo run --release -q -p cloudbuild-bench --bin cloudbuild-bench-loops --manifest-path "$root/Cargo.toml" -- "$@"

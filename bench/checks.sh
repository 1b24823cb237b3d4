#!/usr/bin/env bash
# The mandatory checks' cost: the gitleaks rule set's compile, the secrets scan of a repository
# (default: the vite-admin fixture), each output check over a build output (default: a synthetic
# 10 MB one). Prints a table. Usage: bench/checks.sh [--repo DIR] [--output DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo run --release -q -p cloudbuild-bench --bin cloudbuild-bench-checks --manifest-path "$root/Cargo.toml" -- "$@"

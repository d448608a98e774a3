#!/usr/bin/env bash
# How late a 1 ms ticker on a tokio current_thread runtime runs while jobs flow through the
# async API, against the blocking calls on the same runtime (examples/ticker_lag.rs). Figures
# for docs/benchmarks.md, with the machine, the date and this command.
#   usage: scripts/ticker-lag.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release --example ticker_lag -- "${1:-5}"

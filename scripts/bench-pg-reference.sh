#!/usr/bin/env bash
# jobdb on PostgreSQL next to the hand-written SKIP LOCKED reference
# (examples/pg_skip_locked_reference.rs), alternating round by round, ROUNDS rounds, medians.
# Usage: scripts/bench-pg-reference.sh POSTGRES_URL [ROUNDS] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
pg=${1:?usage: scripts/bench-pg-reference.sh postgres://user@host/db [ROUNDS] [JOBS]}
rounds=${2:-3}
jobs=${3:-10000}
cargo build --release --quiet --bin jobdb --example pg_skip_locked_reference
bin=target/release/jobdb
ref=target/release/examples/pg_skip_locked_reference
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  for w in 1 4 16 64; do
    j=$($bin bench --database-url "$pg" --jobs "$jobs" --workers "$w" --json 2>/dev/null) || { echo "jobdb bench failed at $w workers" >&2; exit 1; }
    echo "jobdb $w $j" >> "$out"
    j=$($ref "$pg" "$w" "$jobs") || { echo "reference failed at $w workers" >&2; exit 1; }
    echo "reference $w $j" >> "$out"
    echo "round $r: $w workers done" >&2
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    who, w, js = line.split(" ", 2)
    runs.setdefault((who, int(w)), []).append(json.loads(js)["jobs_per_sec"])
print("| workers | jobdb jobs/s | reference jobs/s | jobdb / reference |")
print("|---|---|---|---|")
for w in sorted({w for _, w in runs}):
    a, b = statistics.median(runs[("jobdb", w)]), statistics.median(runs[("reference", w)])
    print(f"| {w} | {a:.0f} | {b:.0f} | {b and a / b:.2f} |")
PY
rm -f "$out"

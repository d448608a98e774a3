#!/usr/bin/env bash
# SQLite next to PostgreSQL in one run: `jobdb bench` at 1, 4, 16 and 64 workers (and claims
# of 32 at 16 workers) on both, alternating backend and configuration round by round, ROUNDS
# rounds, medians. Usage: scripts/bench-backends.sh POSTGRES_URL [ROUNDS] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
pg=${1:?usage: scripts/bench-backends.sh postgres://user@host/db [ROUNDS] [JOBS]}
rounds=${2:-3}
jobs=${3:-10000}
cargo build --release --quiet
bin=target/release/jobdb
configs=("--workers 1" "--workers 4" "--workers 16" "--workers 64" "--workers 16 --batch 32")
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  for i in "${!configs[@]}"; do
    for backend in sqlite postgres; do
      url_args=()
      [[ $backend == postgres ]] && url_args=(--database-url "$pg")
      # shellcheck disable=SC2086
      line=$($bin bench "${url_args[@]}" --jobs "$jobs" ${configs[$i]} --json 2>/dev/null) || { echo "bench failed: $backend ${configs[$i]}" >&2; exit 1; }
      echo "$backend $i $line" >> "$out"
    done
    echo "round $r: ${configs[$i]} done" >&2
  done
done
python3 - "$out" "${configs[@]}" <<'PY'
import json, statistics, sys
path, configs = sys.argv[1], sys.argv[2:]
runs = {}
for line in open(path):
    b, i, js = line.split(" ", 2)
    runs.setdefault((b, int(i)), []).append(json.loads(js))
med = lambda b, i, k: statistics.median(r[k] for r in runs[(b, i)])
v = {b: runs[(b, 0)][0]["backend_version"] for b in ("sqlite", "postgres")}
print(f"SQLite {v['sqlite']} and PostgreSQL {v['postgres']}, {len(runs[('sqlite', 0)])} rounds, medians, {runs[('sqlite', 0)][0]['jobs']} jobs per run")
print("| configuration | SQLite jobs/s | SQLite claim p99 ms | PostgreSQL jobs/s | PostgreSQL claim p99 ms | errors / lost / duplicated |")
print("|---|---|---|---|---|---|")
for i, c in enumerate(configs):
    bad = sum(r["errors"] + r["lost"] + r["duplicated"] for b in ("sqlite", "postgres") for r in runs[(b, i)])
    print(f"| `{c}` | {med('sqlite', i, 'jobs_per_sec'):.0f} | {med('sqlite', i, 'claim_p99_ms'):.2f} | {med('postgres', i, 'jobs_per_sec'):.0f} | {med('postgres', i, 'claim_p99_ms'):.2f} | {bad} |")
PY
rm -f "$out"

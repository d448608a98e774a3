#!/usr/bin/env bash
# SQLite next to PostgreSQL (and MySQL / MariaDB) in one run: `jobdb bench` at 1, 4, 16 and 64
# workers (and claims of 32 at 16 workers) on each, alternating backend and configuration
# round by round, ROUNDS rounds, medians.
# Usage: scripts/bench-backends.sh POSTGRES_URL [ROUNDS] [JOBS] [MYSQL_URL]
# With MYSQL_URL (e.g. mysql://root@127.0.0.1:3306/bench) the binary is built with feature
# `mysql` and MariaDB gets a column of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
pg=${1:?usage: scripts/bench-backends.sh postgres://user@host/db [ROUNDS] [JOBS] [mysql://user@host/db]}
rounds=${2:-3}
jobs=${3:-10000}
my=${4:-}
backends=(sqlite postgres)
features=()
if [[ -n $my ]]; then
  backends+=(mysql)
  features=(--features mysql)
fi
cargo build --release --quiet "${features[@]}"
bin=target/release/jobdb
configs=("--workers 1" "--workers 4" "--workers 16" "--workers 64" "--workers 16 --batch 32")
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  for i in "${!configs[@]}"; do
    for backend in "${backends[@]}"; do
      url_args=()
      [[ $backend == postgres ]] && url_args=(--database-url "$pg")
      [[ $backend == mysql ]] && url_args=(--database-url "$my")
      # shellcheck disable=SC2086
      line=$($bin bench "${url_args[@]}" --jobs "$jobs" ${configs[$i]} --json 2>/dev/null) || { echo "bench failed: $backend ${configs[$i]}" >&2; exit 1; }
      echo "$backend $i $line" >> "$out"
    done
    echo "round $r: ${configs[$i]} done" >&2
  done
done
python3 - "$out" "${backends[*]}" "${configs[@]}" <<'PY'
import json, statistics, sys
path, backends, configs = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
names = {"sqlite": "SQLite", "postgres": "PostgreSQL", "mysql": "MariaDB/MySQL"}
runs = {}
for line in open(path):
    b, i, js = line.split(" ", 2)
    runs.setdefault((b, int(i)), []).append(json.loads(js))
med = lambda b, i, k: statistics.median(r[k] for r in runs[(b, i)])
v = {b: runs[(b, 0)][0]["backend_version"] for b in backends}
print(", ".join(f"{names[b]} {v[b]}" for b in backends)
      + f"; {len(runs[('sqlite', 0)])} rounds, medians, {runs[('sqlite', 0)][0]['jobs']} jobs per run")
head = "".join(f" {names[b]} jobs/s | {names[b]} claim p99 ms |" for b in backends)
print(f"| configuration |{head} errors / lost / duplicated |")
print("|---|" + "---|---|" * len(backends) + "---|")
for i, c in enumerate(configs):
    bad = sum(r["errors"] + r["lost"] + r["duplicated"] for b in backends for r in runs[(b, i)])
    cells = "".join(f" {med(b, i, 'jobs_per_sec'):.0f} | {med(b, i, 'claim_p99_ms'):.2f} |" for b in backends)
    print(f"| `{c}` |{cells} {bad} |")
PY
rm -f "$out"

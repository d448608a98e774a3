#!/usr/bin/env bash
# Throughput of two `jobdb` binaries side by side, in one run: for each configuration of
# scripts/bench-matrix.sh (and, with a PostgreSQL URL, of scripts/bench-backends.sh), the two
# binaries run alternately, round by round, so machine noise hits both alike. Prints medians
# and the ratio NEW/OLD per configuration, with the errors, lost and duplicated jobs seen.
# Usage: scripts/bench-compare.sh OLD_BIN NEW_BIN [ROUNDS] [JOBS] [POSTGRES_URL]
# (e.g. OLD_BIN built from the previous commit with `git worktree` and `cargo build --release`).
set -euo pipefail
old=${1:?usage: scripts/bench-compare.sh OLD_BIN NEW_BIN [ROUNDS] [JOBS] [POSTGRES_URL]}
new=${2:?usage: scripts/bench-compare.sh OLD_BIN NEW_BIN [ROUNDS] [JOBS] [POSTGRES_URL]}
rounds=${3:-3}
jobs=${4:-20000}
pg=${5:-}
configs=(
  "sqlite|--workers 1"
  "sqlite|--workers 16"
  "sqlite|--workers 64"
  "sqlite|--workers 16 --processes 4"
  "sqlite|--workers 64 --processes 8"
  "sqlite|--workers 16 --batch 32"
  "sqlite|--workers 1 --finished 1000000"
)
if [[ -n "$pg" ]]; then
  configs+=("pg|--workers 1" "pg|--workers 4" "pg|--workers 16" "pg|--workers 64" "pg|--workers 16 --batch 32")
fi
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  for i in "${!configs[@]}"; do
    backend=${configs[$i]%%|*}
    args=${configs[$i]#*|}
    url_args=()
    n=$jobs
    if [[ $backend == pg ]]; then url_args=(--database-url "$pg"); n=$((jobs / 2)); fi
    for which in old new; do
      bin=$old; [[ $which == new ]] && bin=$new
      # shellcheck disable=SC2086
      line=$($bin bench "${url_args[@]}" --jobs "$n" $args --json 2>/dev/null) || { echo "bench failed: $which $backend $args" >&2; exit 1; }
      echo "$i $which $line" >> "$out"
    done
    echo "round $r: $backend $args done" >&2
  done
done
python3 - "$out" "${configs[@]}" <<'PY'
import json, statistics, sys
path, configs = sys.argv[1], sys.argv[2:]
runs = {}
for line in open(path):
    i, which, js = line.split(" ", 2)
    runs.setdefault((int(i), which), []).append(json.loads(js))
print(f"{len(runs[(0, 'old')])} rounds, medians; OLD and NEW alternate run by run")
print("| backend | configuration | OLD jobs/s | NEW jobs/s | NEW/OLD | NEW claim p99 ms | errors | lost | duplicated |")
print("|---|---|---|---|---|---|---|---|---|")
for i, c in enumerate(configs):
    backend, args = c.split("|", 1)
    o, n = runs[(i, "old")], runs[(i, "new")]
    mo = statistics.median(r["jobs_per_sec"] for r in o)
    mn = statistics.median(r["jobs_per_sec"] for r in n)
    p99 = statistics.median(r["claim_p99_ms"] for r in n)
    tot = lambda k: sum(r[k] for r in o + n)
    print(f"| {backend} | `{args}` | {mo:.0f} | {mn:.0f} | {mn/mo:.2f} | {p99:.2f} | {tot('errors')} | {tot('lost')} | {tot('duplicated')} |")
PY
rm -f "$out"

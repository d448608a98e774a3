#!/usr/bin/env bash
# The figures in README: `jobdb bench` over the configurations the targets name, alternating
# configurations round by round (so machine noise hits all of them alike), ROUNDS rounds,
# medians reported with the ratio to one worker. Usage: scripts/bench-matrix.sh [ROUNDS] [JOBS]
# With JOBDB_BENCH_URL=postgres://… it measures that PostgreSQL database instead (1, 4, 16 and
# 64 workers, 4 processes, and claims of 32), each run on a fresh queue of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
jobs=${2:-20000}
cargo build --release --quiet
bin=target/release/jobdb
url_args=()
if [[ -n "${JOBDB_BENCH_URL:-}" ]]; then
  url_args=(--database-url "$JOBDB_BENCH_URL")
  configs=(
    "--workers 1"
    "--workers 4"
    "--workers 16"
    "--workers 64"
    "--workers 16 --processes 4"
    "--workers 16 --batch 32"
  )
else
  configs=(
    "--workers 1"
    "--workers 4"
    "--workers 16"
    "--workers 64"
    "--workers 16 --processes 4"
    "--workers 64 --processes 8"
    "--workers 16 --batch 32"
    "--workers 1 --finished 1000000"
  )
fi
# Extra configurations from the environment, `;`-separated; a configuration may start with
# VAR=value settings, e.g.
#   JOBDB_BENCH_EXTRA='JOBDB_WRITE_GATE=0 --workers 16 --processes 4;JOBDB_SYNCHRONOUS=full --workers 16'
if [[ -n "${JOBDB_BENCH_EXTRA:-}" ]]; then
  IFS=';' read -r -a extra <<< "$JOBDB_BENCH_EXTRA"
  configs+=("${extra[@]}")
fi
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  for i in "${!configs[@]}"; do
    settings=() flags=()
    for word in ${configs[$i]}; do
      if [[ ${#flags[@]} -eq 0 && $word == *=* && $word != --* ]]; then settings+=("$word"); else flags+=("$word"); fi
    done
    line=$(env "${settings[@]}" $bin bench "${url_args[@]}" --jobs "$jobs" "${flags[@]}" --json 2>/dev/null) || { echo "bench failed: ${configs[$i]}" >&2; exit 1; }
    echo "$i $line" >> "$out"
    echo "round $r: ${configs[$i]} done" >&2
  done
done
python3 - "$out" "${configs[@]}" <<'PY'
import json, statistics, sys
path, configs = sys.argv[1], sys.argv[2:]
runs = {}
for line in open(path):
    i, js = line.split(" ", 1)
    runs.setdefault(int(i), []).append(json.loads(js))
med = lambda i, k: statistics.median(r[k] for r in runs[i])
base = med(0, "jobs_per_sec")
r0 = runs[0][0]
name = "SQLite" if r0["backend"] == "sqlite" else "PostgreSQL"
print(f"{name} {r0['backend_version']}, {len(runs[0])} rounds, medians, {r0['jobs']} jobs per run")
print(f"| configuration | jobs/s | × 1 worker | claim p50 ms | claim p99 ms | claim p99.9 ms | claim max ms | fewest / most jobs of a process | busy retries | errors | lost | duplicated | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
def fairness(rs):
    # The median over runs of (fewest jobs of a process / most jobs of a process).
    shares = [min(p["completed"] for p in r["per_process"]) / max(1, max(p["completed"] for p in r["per_process"])) for r in rs if len(r.get("per_process", [])) > 1]
    return f"{statistics.median(shares):.2f}" if shares else "–"
for i, c in enumerate(configs):
    rs = runs[i]
    tot = lambda k: sum(r[k] for r in rs)
    print(f"| `{c}` | {med(i,'jobs_per_sec'):.0f} | {med(i,'jobs_per_sec')/base:.2f} | {med(i,'claim_p50_ms'):.2f} | {med(i,'claim_p99_ms'):.2f} | {med(i,'claim_p999_ms'):.2f} | {med(i,'claim_max_ms'):.1f} | {fairness(rs)} | {med(i,'busy_retries'):.0f} | {tot('errors')} | {tot('lost')} | {tot('duplicated')} | {max(r['peak_rss_mib'] for r in rs):.0f} |")
PY
rm -f "$out"

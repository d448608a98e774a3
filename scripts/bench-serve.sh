#!/usr/bin/env bash
# jobdb serve, measured (issue 15's two performance lines), with a release binary:
#
# 1. Latency at a million jobs: fills a SQLite database with 1,000,000 jobs (90% succeeded,
#    3% dead, 2% cancelled, 4% queued, 1% running, over 5 queues, a results row per finished
#    job), starts `jobdb serve` on it and times every page and API call (curl, 20 tries each
#    after a warm-up; median and worst), including the keyset pages of rare filters.
# 2. The cost beside workers: `jobdb bench --workers 16` alone and with `jobdb serve` on the
#    same file and a client loading the overview and /api/queues every second, alternated,
#    ROUNDS each; prints both medians and their ratio.
#
# Usage: scripts/bench-serve.sh [BIN] [ROUNDS] [JOBS]   (SKIP_LATENCY=1: part 2 only)
set -euo pipefail
bin=${1:-target/release/jobdb}
rounds=${2:-5}
jobs=${3:-20000}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$((20000 + RANDOM % 20000))

serve() { # db port
  "$bin" --database-url "sqlite://$1" serve --listen "127.0.0.1:$2" > "$dir/serve.log" 2>&1 &
  for _ in $(seq 1 200); do
    curl -s -o /dev/null "http://127.0.0.1:$2/static/app.css" && return 0
    sleep 0.05
  done
  echo "serve did not start" >&2; exit 1
}

if [[ -z ${SKIP_LATENCY:-} ]]; then
echo "== 1. latency with 1,000,000 jobs"
db="$dir/million.db"
"$bin" --database-url "sqlite://$db" migrate > /dev/null
sqlite3 "$db" <<'SQL'
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000),
t(i, at) AS (SELECT i, strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || ((1000000 - i) * 7 / 1000) || ' seconds') || '000' FROM n)
INSERT INTO jobs (id, queue, state, priority, payload, attempts, max_attempts, run_at, created_at,
                  updated_at, worker_id, last_error, attempt_base, unique_key)
SELECT i, 'queue-' || (i % 5),
  CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 93 THEN 'dead' WHEN i % 100 < 95 THEN 'cancelled'
       WHEN i % 100 < 99 THEN 'queued' ELSE 'running' END,
  0, '{"order": ' || i || ', "customer": "c-' || (i % 9973) || '", "note": "some payload text"}',
  CASE WHEN i % 100 < 95 OR i % 100 = 99 THEN 1 ELSE 0 END, 5,
  CASE WHEN i % 100 BETWEEN 95 AND 98 AND i % 2 = 0
       THEN strftime('%Y-%m-%d %H:%M:%f', 'now', '+3600 seconds') || '000' ELSE at END,
  at, at,
  CASE WHEN i % 100 < 95 OR i % 100 = 99 THEN 'worker-' || (i % 16) END,
  CASE WHEN i % 100 BETWEEN 90 AND 92 THEN 'boom ' || i END, 0,
  CASE WHEN i % 1000 = 7 THEN 'key-' || i END
FROM t;
UPDATE jobs SET heartbeat_at = updated_at,
  lease_expires_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '+3600 seconds') || '000'
  WHERE state = 'running';
INSERT INTO results (job_id, attempt, outcome, output, error, created_at, duration_ms)
  SELECT id, 1, CASE state WHEN 'succeeded' THEN 'succeeded' ELSE 'failed' END,
         CASE state WHEN 'succeeded' THEN '{"ok":true}' END, last_error, updated_at, id % 1000
  FROM jobs WHERE state IN ('succeeded', 'dead', 'cancelled');
SQL
echo "filled: $(sqlite3 "$db" 'SELECT count(*) FROM jobs') jobs, $(du -h "$db" | cut -f1)"
serve "$db" "$port"
base="http://127.0.0.1:$port"
paths=(
  "/" "/api/queues" "/metrics"
  "/jobs" "/api/jobs" "/jobs?state=dead" "/jobs?queue=queue-3&state=running"
  "/api/jobs?state=cancelled&queue=queue-1" "/api/jobs?unique_key=key-500007"
  "/api/jobs?state=dead&before=400000" "/jobs/777777" "/api/jobs/777777"
)
printf '%-45s %10s %10s\n' "request" "median ms" "worst ms"
for p in "${paths[@]}"; do
  curl -s -o /dev/null "$base$p"  # warm-up (and the first snapshot)
  ts=()
  for _ in $(seq 1 20); do
    ts+=("$(curl -s -o /dev/null -w '%{time_total}' "$base$p")")
  done
  printf '%s\n' "${ts[@]}" | sort -g | awk -v p="$p" '{a[NR]=$1} END {printf "%-45s %10.1f %10.1f\n", p, a[int((NR+1)/2)]*1000, a[NR]*1000}'
done
# Actions, and the overview right after each (it does not wait for a slow scan).
: > "$dir/post"; : > "$dir/after"
for i in $(seq 1 10); do
  verb=pause; [[ $((i % 2)) == 0 ]] && verb=resume
  curl -s -o /dev/null -w '%{time_total}\n' -XPOST -H 'content-type: application/json' \
    "$base/api/queues/queue-0/$verb" >> "$dir/post"
  curl -s -o /dev/null -w '%{time_total}\n' "$base/" >> "$dir/after"
done
for f in post after; do
  sort -g "$dir/$f" | awk -v p="$f" '{a[NR]=$1} END {printf "%-45s %10.1f %10.1f\n", (p == "post" ? "POST /api/queues/queue-0/pause|resume" : "/ right after that action"), a[int((NR+1)/2)]*1000, a[NR]*1000}'
done
scan=$(curl -s "$base/metrics" | awk '/^jobdb_overview_scan_seconds/ {print $2}')
echo "the background overview scan took ${scan} s"
kill %1 2>/dev/null || true; wait 2>/dev/null || true
fi

if (( rounds == 0 )); then exit 0; fi
echo "== 2. --workers 16 --jobs $jobs, alone and beside the dashboard refreshing every second"
: > "$dir/alone"; : > "$dir/viewed"
for r in $(seq 1 "$rounds"); do
  for mode in alone viewed; do
    db="$dir/bench-$r-$mode.db"
    if [[ $mode == viewed ]]; then
      port=$((port + 1))
      serve "$db" "$port"
      ( while sleep 1; do
          curl -s -o /dev/null "http://127.0.0.1:$port/"
          curl -s -o /dev/null "http://127.0.0.1:$port/api/queues"
        done ) &
      viewer=$!
    fi
    line=$("$bin" --database-url "sqlite://$db" bench --workers 16 --jobs "$jobs" --json)
    echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["jobs_per_sec"], r["errors"], r["lost"], r["duplicated"])' >> "$dir/$mode"
    if [[ $mode == viewed ]]; then
      kill "$viewer"; kill %1 2>/dev/null || true; wait 2>/dev/null || true
    fi
    rm -f "$db" "$db-wal" "$db-shm" "$db-jobdb-lock"
  done
  echo "round $r: alone $(tail -1 "$dir/alone"), viewed $(tail -1 "$dir/viewed")" >&2
done
python3 - "$dir/alone" "$dir/viewed" <<'PY'
import statistics, sys
rows = [[list(map(float, l.split())) for l in open(f)] for f in sys.argv[1:3]]
a, v = (statistics.median(r[0] for r in rs) for rs in rows)
bad = sum(sum(r[1:]) for rs in rows for r in rs)
ratios = [y[0] / x[0] for x, y in zip(*rows)]
print(f"alone median {a:.0f} jobs/s, viewed median {v:.0f} jobs/s, ratio {v / a:.3f} "
      f"(per round {min(ratios):.2f}–{max(ratios):.2f}); errors+lost+duplicated {bad:.0f}")
PY

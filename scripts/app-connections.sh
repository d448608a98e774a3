#!/usr/bin/env bash
# The app's own writes beside jobdb's workers, by the connection the app writes on: 4 app
# processes x 50 transactions (insert + publish a post, enqueue its job; examples/diesel_app)
# while 2 `jobdb work` processes of 4 workers drain a backlog on the same file. For each
# connection (plain: Diesel's unmodified establish_connection(); protected: the same with
# jobdb::sqlite::protect_process at startup; write: db.write; pool: db.pool() + the app's own
# immediate_transaction), RUNS runs: failed transactions, p50 / p99 / max of the rest, and
# whether each post's job ran exactly once (`diesel_app check`) with integrity ok.
#   usage: scripts/app-connections.sh [RUNS] [MODES...]
# JOBDB_BIN and DIESEL_APP_BIN run other builds of the two programs (an A/B of two commits in
# one sitting); by default both are built here, release.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(plain protected write pool)
if [ -z "${JOBDB_BIN:-}${DIESEL_APP_BIN:-}" ]; then
  cargo build --quiet --release --bin jobdb --example diesel_app
fi
bin=${JOBDB_BIN:-target/release/jobdb}
app=${DIESEL_APP_BIN:-target/release/examples/diesel_app}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf '%-10s %4s %7s %8s %8s %8s  %s\n' via run failed p50_ms p99_ms max_ms "exactly once / integrity"
for mode in "${modes[@]}"; do
  for run in $(seq 1 "$runs"); do
    db="$dir/$mode-$run.sqlite3"
    "$app" "$db" publish 0 >/dev/null
    seq 1 2000 | sed 's/.*/{"backlog":&}/' | "$bin" --database-url "$db" enqueue --queue notify --file - >/dev/null
    pids=()
    for _ in 1 2; do
      "$bin" --database-url "$db" work --queue notify --concurrency 4 --exec cat >/dev/null 2>>"${JOBDB_WORKER_LOG:-/dev/null}" &
      pids+=($!)
    done
    sleep 0.5
    outs=()
    start="$dir/start-$mode-$run"
    for a in 1 2 3 4; do
      DIESEL_APP_START=$start "$app" "$db" publish 50 "$mode" >"$dir/app-$a.json" 2>"$dir/app-$a.err" &
      outs+=($!)
    done
    # They write together once all four have started up.
    while [ "$(ls "$start".ready.* 2>/dev/null | wc -l)" -lt 4 ]; do sleep 0.01; done
    touch "$start"
    for p in "${outs[@]}"; do wait "$p" || true; done
    # Let the workers drain the backlog and the posts' jobs, then stop them.
    while [ "$("$bin" --database-url "$db" stats --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["queued"]+s["running"])')" != 0 ]; do sleep 0.2; done
    kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
    # Every published post has exactly one job, which succeeded exactly once.
    check=$(python3 - "$db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
bad = c.execute("""SELECT count(*) FROM posts p WHERE p.published AND (
    SELECT count(*) FROM jobs j JOIN results r ON r.job_id = j.id AND r.outcome = 'succeeded'
    WHERE j.queue = 'notify' AND json_extract(j.payload, '$.post') = p.id) != 1""").fetchone()[0]
print("ok" if bad == 0 else "%d posts not run exactly once" % bad)
PY
)
    integrity=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])" "$db")
    cat "$dir"/app-*.json | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
failed = sum(r["failed"] for r in rows)
lat = sorted(x for r in rows for x in r["latencies_ms"])
at = lambda p: lat[min(int(len(lat) * p), len(lat) - 1)] if lat else 0.0
print("%-10s %4s %7d %8.2f %8.2f %8.2f" % (sys.argv[1], sys.argv[2], failed, at(0.5), at(0.99), lat[-1] if lat else 0.0), end="")
' "$mode" "$run"
    echo "  $check / $integrity"
  done
done
echo "(p50 / p99 / max over the 200 writes of the 4 processes that did not fail; $(nproc) cores, $(date -u +%F))"

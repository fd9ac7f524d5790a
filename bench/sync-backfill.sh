#!/usr/bin/env bash
# Benchmark (not a test): the initial backfill of a HubSpot account end to end. The sandbox CRM
# (release build, limits off, no webhooks) is seeded with CONTACTS contacts; `ferry all` (release)
# on a scratch database connects to it through the OAuth consent page and backfills. Every second
# we sample the contact cursor's `backfill_done` and the ferry process's memory (VmRSS, VmHWM)
# until `backfilled_at` is set.
# Needs Postgres and Redis on the standard ports.
#   bench/sync-backfill.sh                    # 1,000,000 contacts
#   CONTACTS=100000 bench/sync-backfill.sh    # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."

CONTACTS=${CONTACTS:-1000000}
TIMEOUT=${TIMEOUT:-3600}
PORT=${PORT:-18093}
SANDBOX_PORT=${SANDBOX_PORT:-18094}
source bench/common.sh

bench_init
say "seeding the sandbox with $CONTACTS contacts"
start_sandbox --seed-contacts "$CONTACTS" --rate-limit 0 --search-rate-limit 0 --webhook-url off
create_tenant
start_ferry all
login
machine
say "connecting (the backfill starts at once)"
connect_sandbox
say "connected: $CONNECTION"

pg_cpu_start=$(cpu_of_postgres)
# The server's WAL and checkpoint counters (server-wide: other work on it shows up too).
wal_stats() {
  psql "$DATABASE_URL" -AtXqc "SELECT w.wal_bytes, w.wal_fpi, b.checkpoints_timed + b.checkpoints_req
                                FROM pg_stat_wal w, pg_stat_bgwriter b"
}
IFS='|' read -r wal_bytes_start wal_fpi_start checkpoints_start < <(wal_stats)
sandbox_cpu_start=$(cpu_of "$sandbox")
samples="$work_dir/samples.csv"
echo "t,done,rss_mb,hwm_mb" >"$samples"
sql() { psql "$DATABASE_URL" -AtXqc "$1"; }
# The samples go through one psql session: a psql (and a Postgres backend) started every second
# took about 3% of the two cores the run is measured on.
coproc SAMPLER { psql "$DATABASE_URL" -AtXq 2>&1; }
sample() { # one line of SQL; prints the one row it returns
  printf '%s\n' "$1" >&"${SAMPLER[1]}"
  IFS= read -r -t 30 line <&"${SAMPLER[0]}" || { echo "the sampling psql stopped answering" >&2; exit 1; }
  printf '%s\n' "$line"
}
deadline=$(($(date +%s) + TIMEOUT))
while :; do
  now=$(date +%s.%N)
  row=$(sample "SELECT backfill_done, backfilled_at IS NOT NULL FROM sync_cursors WHERE connection_id = '$CONNECTION' AND object = 'contact';")
  read -r hwm rss < <(rss_of "$server")
  done_count=${row%%|*}
  echo "$(echo "$now - $CONNECTED_AT" | bc),$done_count,$rss,$hwm" >>"$samples"
  [ "${row##*|}" = t ] && break
  if [ "$(date +%s)" -gt "$deadline" ]; then
    echo "timed out after ${TIMEOUT}s at $done_count records" >&2
    exit 1
  fi
  tick=$((${tick:-0} + 1))
  [ $((tick % 15)) = 0 ] && say "$done_count records, ferry RSS $rss MB (peak $hwm MB)"
  sleep 1
done
read -r hwm rss < <(rss_of "$server")
finished=$(sql "SELECT extract(epoch FROM backfilled_at) FROM sync_cursors
                WHERE connection_id = '$CONNECTION' AND object = 'contact'")
contacts=$(sql "SELECT count(*) FROM contacts")
fetched=$(sql "SELECT backfill_done FROM sync_cursors WHERE connection_id = '$CONNECTION' AND object = 'contact'")
failed=$(sql "SELECT count(*) FROM sync_items WHERE outcome <> 'ok'")
letters=$(sql "SELECT count(*) FROM dead_letters")
elapsed=$(echo "$finished - $CONNECTED_AT" | bc -l)

echo
echo "== backfill of $CONTACTS contacts"
printf 'contacts in Ferry: %s (records fetched: %s; failed items: %s; dead letters: %s)\n' \
  "$contacts" "$fetched" "$failed" "$letters"
printf 'elapsed (connect -> backfilled_at): %.1f s\n' "$elapsed"
printf 'overall: %.0f records/s\n' "$(echo "$contacts / $elapsed" | bc -l)"
# Steady state: the rate between 10% and 90% of the records (start-up and the tail left out).
awk -F, -v total="$fetched" 'NR > 1 {
    if (!a && $2 >= total * 0.1) { a = 1; t1 = $1; d1 = $2 }
    if (a && !b && $2 >= total * 0.9) { b = 1; t2 = $1; d2 = $2 }
  } END {
    if (b && t2 > t1) printf "steady state (10%%-90%%): %.0f records/s\n", (d2 - d1) / (t2 - t1)
  }' "$samples"
# The slowest and fastest 10-second windows of the steady part.
awk -F, -v total="$fetched" 'NR > 1 { t[n] = $1; d[n] = $2; n++ } END {
    lo = -1; hi = 0
    for (i = 0; i < n; i++) {
      if (d[i] < total * 0.1 || d[i] > total * 0.9) continue
      for (j = i; j < n && t[j] - t[i] < 10; j++) {}
      if (j >= n || d[j] > total * 0.9) continue
      r = (d[j] - d[i]) / (t[j] - t[i]); if (lo < 0 || r < lo) lo = r; if (r > hi) hi = r
    }
    if (lo >= 0) printf "10-second windows in the steady part: %.0f to %.0f records/s\n", lo, hi
  }' "$samples"
# Where the two cores went (Postgres: every server process, so including other work on it).
printf 'CPU seconds during the run: ferry %s, sandbox %s, postgres %s (elapsed %.1f s x 2 cores)\n' \
  "$(cpu_of "$server")" "$(echo "$(cpu_of "$sandbox") - $sandbox_cpu_start" | bc)" \
  "$(echo "$(cpu_of_postgres) - $pg_cpu_start" | bc)" "$elapsed"
IFS='|' read -r wal_bytes wal_fpi checkpoints < <(wal_stats)
printf 'WAL written: %.0f MB (%.0f bytes per record, %s full-page images); checkpoints: %s\n' \
  "$(echo "($wal_bytes - $wal_bytes_start) / 1048576" | bc -l)" \
  "$(echo "($wal_bytes - $wal_bytes_start) / $contacts" | bc -l)" \
  "$((wal_fpi - wal_fpi_start))" "$((checkpoints - checkpoints_start))"
printf 'ferry peak RSS (VmHWM): %s MB; RSS at the end: %s MB\n' "$hwm" "$rss"
echo "samples: $samples"

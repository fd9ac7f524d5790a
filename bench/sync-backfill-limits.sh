#!/usr/bin/env bash
# Benchmark (not a test): the initial backfill of a HubSpot account under HubSpot's real limits.
# Like bench/sync-backfill.sh, but the sandbox keeps its default limits (110 calls per rolling
# 10 s, 5 searches per second per portal: HubSpot's) and Ferry's limiter keeps its defaults (no
# FERRY_HUBSPOT_* overrides), so what is measured is how much of HubSpot's budget the backfill
# uses. The backfill pages through search, 200 records a page, so HubSpot allows it at most
# 5 x 200 = 1,000 records/s. Reports records/s, that share, and the 429s the sandbox answered
# (from /_sandbox/stats, so the sandbox runs with --faults, none of them set).
# Needs Postgres and Redis on the standard ports.
#   bench/sync-backfill-limits.sh                       # 30,000 contacts
#   CONTACTS=100000 bench/sync-backfill-limits.sh
#   SKIP_BUILD=1 FERRY_BIN=/work/target-bench/release/ferry bench/sync-backfill-limits.sh
#   LATENCY_MS=150 JITTER_MS=100 bench/sync-backfill-limits.sh   # a CRM answering as slowly as HubSpot
#   LIFT_SEARCH=1000 bench/sync-backfill-limits.sh                 # Ferry's search pacing lifted
set -euo pipefail
cd "$(dirname "$0")/.."

CONTACTS=${CONTACTS:-30000}
TIMEOUT=${TIMEOUT:-600}
PORT=${PORT:-18095}
SANDBOX_PORT=${SANDBOX_PORT:-18096}
source bench/common.sh

bench_init
# Ferry's limiter at its defaults: HubSpot's budget. LIFT_SEARCH=N: Ferry allows itself N searches
# per second instead (more than HubSpot's 5: what its 429s then cost).
unset FERRY_HUBSPOT_RATE_LIMIT FERRY_HUBSPOT_SEARCH_RATE_LIMIT
[ -n "${LIFT_SEARCH:-}" ] && export FERRY_HUBSPOT_SEARCH_RATE_LIMIT=$LIFT_SEARCH
say "seeding the sandbox with $CONTACTS contacts (HubSpot's limits on)"
start_sandbox --seed-contacts "$CONTACTS" --webhook-url off --faults
if [ "${LATENCY_MS:-0}" != 0 ] || [ "${JITTER_MS:-0}" != 0 ]; then
  say "every CRM call answered ${LATENCY_MS:-0} ms (+ up to ${JITTER_MS:-0} ms) late"
  curl -fsS -X PUT -H 'Content-Type: application/json' \
    -d "{\"latencyMs\": ${LATENCY_MS:-0}, \"latencyJitterMs\": ${JITTER_MS:-0}}" \
    "$crm/_sandbox/faults" >/dev/null
fi
create_tenant
start_ferry all
login
machine
say "connecting (the backfill starts at once)"
connect_sandbox
say "connected: $CONNECTION"

stats() { curl -fsS "$crm/_sandbox/stats"; }
# The 429s answered to the connected portal, total and by policy (jq-free: the stats are small).
refused_of() {
  python3 -c '
import json, sys
portal = int(sys.argv[1])
stats = json.load(sys.stdin)
p = next(p for p in stats["portals"] if p["portalId"] == portal)
by = p.get("rateLimitedByPolicy", {})
# An older sandbox does not count them: "n/a".
print(p.get("rateLimited", "n/a"), by.get("secondly", "n/a"), by.get("tenSecondlyRolling", "n/a"), by.get("daily", "n/a"))
' "$portal"
}

samples="$work_dir/samples.csv"
echo "t,done" >"$samples"
sql() { psql "$DATABASE_URL" -AtXqc "$1"; }
coproc SAMPLER { psql "$DATABASE_URL" -AtXq 2>&1; }
sample() {
  printf '%s\n' "$1" >&"${SAMPLER[1]}"
  IFS= read -r -t 30 line <&"${SAMPLER[0]}" || { echo "the sampling psql stopped answering" >&2; exit 1; }
  printf '%s\n' "$line"
}
deadline=$(($(date +%s) + TIMEOUT))
while :; do
  now=$(date +%s.%N)
  row=$(sample "SELECT backfill_done, backfilled_at IS NOT NULL FROM sync_cursors WHERE connection_id = '$CONNECTION' AND object = 'contact';")
  done_count=${row%%|*}
  echo "$(echo "$now - $CONNECTED_AT" | bc),$done_count" >>"$samples"
  [ "${row##*|}" = t ] && break
  if [ "$(date +%s)" -gt "$deadline" ]; then
    echo "timed out after ${TIMEOUT}s at $done_count records" >&2
    exit 1
  fi
  tick=$((${tick:-0} + 1))
  [ $((tick % 10)) = 0 ] && say "$done_count records"
  sleep 0.5
done
finished=$(sql "SELECT extract(epoch FROM backfilled_at) FROM sync_cursors
                WHERE connection_id = '$CONNECTION' AND object = 'contact'")
contacts=$(sql "SELECT count(*) FROM contacts")
fetched=$(sql "SELECT backfill_done FROM sync_cursors WHERE connection_id = '$CONNECTION' AND object = 'contact'")
failed=$(sql "SELECT count(*) FROM sync_items WHERE outcome <> 'ok'")
letters=$(sql "SELECT count(*) FROM dead_letters")
elapsed=$(echo "$finished - $CONNECTED_AT" | bc -l)
read -r refused secondly ten_secondly daily < <(stats | refused_of)

echo
echo "== backfill of $CONTACTS contacts under HubSpot's limits (110 / 10 s, 5 searches / s)${LATENCY_MS:+, CRM latency ${LATENCY_MS} ms + up to ${JITTER_MS:-0} ms}${LIFT_SEARCH:+, Ferry allowing itself $LIFT_SEARCH searches/s}"
printf 'contacts in Ferry: %s (records fetched: %s; failed items: %s; dead letters: %s)\n' \
  "$contacts" "$fetched" "$failed" "$letters"
printf 'elapsed (connect -> backfilled_at): %.1f s\n' "$elapsed"
rate=$(echo "$contacts / $elapsed" | bc -l)
printf 'overall: %.0f records/s = %.1f%% of the 1,000 records/s search allows\n' "$rate" "$(echo "$rate / 10" | bc -l)"
awk -F, -v total="$fetched" 'NR > 1 {
    if (!a && $2 >= total * 0.1) { a = 1; t1 = $1; d1 = $2 }
    if (a && !b && $2 >= total * 0.9) { b = 1; t2 = $1; d2 = $2 }
  } END {
    if (b && t2 > t1) printf "steady state (10%%-90%%): %.0f records/s\n", (d2 - d1) / (t2 - t1)
  }' "$samples"
printf '429s answered by the sandbox: %s (secondly %s, ten-secondly %s, daily %s)\n' \
  "$refused" "$secondly" "$ten_secondly" "$daily"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "samples: $samples"

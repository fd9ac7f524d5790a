#!/usr/bin/env bash
# Benchmark (not a test): how long a change in the CRM takes to be committed in Ferry through
# webhooks, at a sustained RATE changes per second for DURATION seconds. The sandbox CRM (release,
# limits off) sends its webhooks to `ferry all` (release) after a short batch window
# (BATCH_MS); a driver (bench/webhook-latency.py) PATCHes a different contact per change with an
# access token of its own and watches Ferry's sync history for each contact's inbound item.
# Polling is pushed a day out once the backfill is done, so every change measured came by webhook.
# Needs Postgres and Redis on the standard ports, python3 (psycopg is installed in a scratch
# virtualenv under bench/results/tmp).
#   bench/webhook-latency.sh                       # 200 changes/s for 60 s
#   RATE=400 DURATION=30 bench/webhook-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-200}
DURATION=${DURATION:-60}
BATCH_MS=${BATCH_MS:-50}
CONTACTS=${CONTACTS:-20000}
PORT=${PORT:-18097}
SANDBOX_PORT=${SANDBOX_PORT:-18098}
source bench/common.sh

venv=bench/results/tmp/venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import psycopg' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'psycopg[binary]>=3.1'
fi

needed=$(echo "$RATE * $DURATION / 1" | bc)
[ "$CONTACTS" -ge "$needed" ] || CONTACTS=$needed
bench_init
start_sandbox --seed-contacts "$CONTACTS" --rate-limit 0 --search-rate-limit 0 \
  --webhook-url "$base/webhooks/hubspot" --webhook-batch-ms "$BATCH_MS"
create_tenant
start_ferry all
login
connect_sandbox
say "connected: $CONNECTION; waiting for the backfill of $CONTACTS contacts"
sql() { psql "$DATABASE_URL" -AtXqc "$1"; }
for _ in $(seq 1 600); do
  left=$(sql "SELECT count(*) FROM sync_cursors WHERE connection_id = '$CONNECTION' AND backfilled_at IS NULL")
  [ "$left" = 0 ] && break
  sleep 1
done
[ "$left" = 0 ] || { echo "the backfill did not finish" >&2; exit 1; }
# Only webhooks from here on: the next poll is a day away.
sql "UPDATE connections SET settings = jsonb_set(settings, '{poll_interval_secs}', '86400')
     WHERE id = '$CONNECTION';
     UPDATE sync_cursors SET next_poll_at = now() + interval '1 day' WHERE connection_id = '$CONNECTION'" >/dev/null
# Let the outbound side skip past the backfill's own changes before measuring.
for _ in $(seq 1 300); do
  behind=$(sql "SELECT count(*) FROM sync_connections s WHERE connection_id = '$CONNECTION'
                AND EXISTS (SELECT 1 FROM outbox o WHERE o.tenant_id = s.tenant_id AND o.id > s.outbox_position)")
  [ "$behind" = 0 ] && break
  sleep 1
done
say "backfill done; the outbox is drained"
machine

token=$(crm_token)
[ -n "$token" ] || { echo "no CRM access token for the driver" >&2; exit 1; }
echo
echo "== CRM change -> committed in Ferry, via webhooks: $RATE/s for ${DURATION}s, sandbox batch window ${BATCH_MS} ms"
status=0
"$venv/bin/python" bench/webhook-latency.py --crm "$crm" --token "$token" --db "$DATABASE_URL" \
  --connection "$CONNECTION" --rate "$RATE" --duration "$DURATION" || status=$?

echo
echo "-- cross-check from Ferry's tables: event occurredAt -> sync item written (transaction start)"
sql "WITH firsts AS (
       SELECT e.object_id, min(e.occurred_at) AS occurred, min(i.at) AS applied
       FROM inbound_events e
       JOIN sync_items i ON i.connection_id = e.connection_id AND i.remote_id = e.object_id
                        AND i.direction = 'inbound' AND i.at >= e.occurred_at
       WHERE e.connection_id = '$CONNECTION'
       GROUP BY e.object_id)
     SELECT format('events: %s; p50 %s ms, p95 %s ms, p99 %s ms', count(*),
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied - occurred)) * 1000),
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM applied - occurred)) * 1000),
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM applied - occurred)) * 1000))
     FROM firsts"
sql "SELECT format('webhook POSTs stored: %s; events: %s; sync items by action: %s',
       (SELECT count(*) FROM webhook_deliveries),
       (SELECT count(*) FROM inbound_events),
       (SELECT string_agg(action || '=' || n, ', ') FROM (SELECT action, count(*) AS n FROM sync_items
          WHERE run_id IN (SELECT id FROM sync_runs WHERE kind = 'webhook') GROUP BY action) a))"
exit "$status"

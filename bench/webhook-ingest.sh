#!/usr/bin/env bash
# Benchmark (not a test): POST /webhooks/hubspot at fixed concurrency with wrk. Every request is
# a correctly signed (v3) batch of EVENTS contact events; the receiver checks the signature and
# the timestamp, stores the raw body and answers 204. Then, in the same run and on the same
# scratch database, pgbench inserts the same body into a copy of the deliveries table, one row
# per transaction: the ceiling Postgres alone puts on the receiver.
# Needs wrk (Debian package `wrk`), pgbench, Postgres and Redis on the standard ports.
#   bench/webhook-ingest.sh                  # `ferry serve`, 30 s per run, 32 connections
#   MODE=all bench/webhook-ingest.sh         # workers in the same process route what arrives
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
EVENTS=${EVENTS:-10}
MODE=${MODE:-serve}
PORT=${PORT:-18095}
SANDBOX_PORT=${SANDBOX_PORT:-18096}
source bench/common.sh

command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "install pgbench (postgresql-contrib)" >&2; exit 1; }
bench_init
create_tenant
start_ferry "$MODE"
machine

url="$base/webhooks/hubspot"
body_file="$work_dir/body.json"
# A batch as the sandbox (and HubSpot) sends it: propertyChange events for portal 1000001.
python3 - "$EVENTS" >"$body_file" <<'EOF'
import json, sys, time
now = int(time.time() * 1000)
events = [{
    "eventId": 100000 + i, "subscriptionId": 7, "portalId": 1000001, "appId": 4242,
    "occurredAt": now - i, "subscriptionType": "contact.propertyChange", "attemptNumber": 0,
    "objectId": 5000 + i, "changeSource": "INTEGRATION", "propertyName": "jobtitle",
    "propertyValue": "Head of Benchmarks %d" % i,
} for i in range(int(sys.argv[1]))]
sys.stdout.write(json.dumps(events, separators=(",", ":")))
EOF
export WEBHOOK_BODY_FILE="$body_file"

# Signs the body for a run starting now: base64(HMAC-SHA256(client secret,
# "POST" + URL + body + timestamp)).
sign() {
  WEBHOOK_TIMESTAMP=$(date +%s%3N)
  WEBHOOK_SIGNATURE=$({ printf 'POST%s' "$url"; cat "$body_file"; printf '%s' "$WEBHOOK_TIMESTAMP"; } |
    openssl dgst -sha256 -hmac "$FERRY_SANDBOX_CLIENT_SECRET" -binary | base64 -w0)
  export WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE
}

sign
check=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  -H "X-HubSpot-Signature-v3: $WEBHOOK_SIGNATURE" -H "X-HubSpot-Request-Timestamp: $WEBHOOK_TIMESTAMP" \
  --data-binary "@$body_file" "$url")
[ "$check" = 204 ] || { echo "a signed request answered $check" >&2; exit 1; }
bad=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  -H "X-HubSpot-Signature-v3: $WEBHOOK_SIGNATURE" -H "X-HubSpot-Request-Timestamp: $WEBHOOK_TIMESTAMP" \
  --data-binary '[]' "$url")
[ "$bad" = 401 ] || { echo "a request with a wrong signature answered $bad" >&2; exit 1; }

echo "body: $EVENTS events, $(wc -c <"$body_file") bytes; ferry $MODE"
echo "warm-up (5 s)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d5s -s bench/signed-webhook.lua "$url" >/dev/null

before=$(psql "$DATABASE_URL" -AtXqc "SELECT count(*) FROM webhook_deliveries")
sign
echo
echo "== POST /webhooks/hubspot (signature v3): $CONNECTIONS connections, ${DURATION}s"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s bench/signed-webhook.lua "$url"
after=$(psql "$DATABASE_URL" -AtXqc "SELECT count(*) FROM webhook_deliveries")
echo "deliveries stored during the run: $((after - before))"

# The same insert without HTTP, signature or Redis: one row per transaction, same table shape
# (indexes included), same body, same number of clients.
psql "$DATABASE_URL" -qXc "CREATE TABLE bench_deliveries (LIKE webhook_deliveries INCLUDING ALL)"
{
  printf "INSERT INTO bench_deliveries (provider, body) VALUES ('hubspot-sandbox', '\\\\x"
  od -An -v -tx1 "$body_file" | tr -d ' \n'
  printf "'::bytea);\n"
} >"$work_dir/insert.sql"
echo
echo "== pgbench: one INSERT of the same body per transaction: $CONNECTIONS clients, ${DURATION}s"
pgbench -n -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" -f "$work_dir/insert.sql" \
  -l --log-prefix="$work_dir/pgbench" "$DATABASE_URL" |
  grep -E 'latency average|tps|number of (clients|transactions actually)'
# Latency percentiles from the per-transaction log (third column: microseconds).
cat "$work_dir"/pgbench.* | awk '{ print $3 }' | sort -n | awk '{ v[NR] = $1 } END {
  printf "latency p50 = %.3f ms, p99 = %.3f ms\n", v[int(NR * 0.5)] / 1000, v[int(NR * 0.99)] / 1000 }'

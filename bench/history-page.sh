#!/usr/bin/env bash
# Benchmark (not a test): the sync history and dead-letter pages with 10 million sync_items in one
# tenant. Builds a scratch database with `ferry migrate`, seeds it straight into Postgres with
# generate_series, logs in with curl's cookie jar and times each page (sequential requests, one
# client: the latency a person at the page sees), then drives the deep pages with wrk.
# Needs Postgres and Redis on the standard ports, curl, and wrk (Debian package `wrk`).
#   bench/history-page.sh                      # 10M items, 300 timed requests per page
#   ITEMS=1000000 REQUESTS=100 bench/history-page.sh
#   KEEP=1 bench/history-page.sh               # keep the seeded database (BENCH_DB, default
#                                              # ferry_bench_history)
#   REUSE=1 bench/history-page.sh              # time pages on the kept database, no re-seeding
#   SEED_ONLY=1 KEEP=1 bench/history-page.sh   # seed and stop
set -euo pipefail
cd "$(dirname "$0")/.."

ITEMS=${ITEMS:-10000000}
# A backfill run holds this many items; the rest go into runs of RUN_SIZE.
BACKFILL=${BACKFILL:-1000000}
RUN_SIZE=${RUN_SIZE:-200}
CONTACTS=${CONTACTS:-100000}
LETTERS=${LETTERS:-50000}
REQUESTS=${REQUESTS:-300}
WARMUP=${WARMUP:-30}
DURATION=${DURATION:-10s}
PORT=${PORT:-18091}
admin=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=${BENCH_DB:-ferry_bench_history}
url="${admin%/*}/$db"
email=bench-history@ferry.test
password="bench history password"
jar=$(mktemp)

command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)" >&2; exit 1; }
ferry=${FERRY_BIN:-target/release/ferry}
[ -n "${FERRY_BIN:-}" ] || cargo build --release --quiet --bin ferry

server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -f "$jar"
  if [ "${KEEP:-0}" != 1 ] && [ "${REUSE:-0}" != 1 ]; then
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  redis-cli --scan --pattern "bench_history_$$:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
}
trap cleanup EXIT

export DATABASE_URL="$url"
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export FERRY_REDIS_PREFIX="bench_history_$$"
export FERRY_BIND="127.0.0.1:$PORT"
export FERRY_PUBLIC_URL="http://127.0.0.1:$PORT"
export FERRY_SECRET_KEY="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
export FERRY_LOG=warn

sql() { psql "$url" -v ON_ERROR_STOP=1 -qAt "$@"; }

if [ "${REUSE:-0}" != 1 ]; then
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  psql "$admin" -qc "CREATE DATABASE $db"
  "$ferry" migrate
  "$ferry" tenant create --name "Bench History" --email "$email" \
    --password "$password" >/dev/null
  echo "seeding $ITEMS sync items ($(date -u +%T))"
  start=$(date +%s)
  sql <<SQL
-- Seeding bypasses foreign-key triggers (the rows are consistent by construction) and builds the
-- sync_items indexes after the rows are in, as a restore would.
SET session_replication_role = replica;
SET maintenance_work_mem = '512MB';
CREATE TEMP TABLE bench AS
  SELECT tenant_id AS tenant, id AS owner FROM users WHERE email = '$email';
INSERT INTO connections (id, tenant_id, provider, remote_account_id, status, scopes)
  SELECT ('00000000-0000-7000-8000-00000000000' || n)::uuid, tenant, 'hubspot-sandbox',
         (4000 + n)::text, 'active', '{oauth}'
  FROM bench, generate_series(1, 2) AS n;
-- Contacts with names, emails and an external id each.
INSERT INTO contacts (id, tenant_id, email, first_name, last_name, phone, company, source,
                      created_at, updated_at)
  SELECT ('00000000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid, tenant,
         'person' || i || '@example.com',
         (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Margaret','Ken'])[1 + i % 8],
         (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Hamilton','Thompson'])[1 + (i / 8) % 8] || i,
         '+1 555 ' || lpad(i::text, 7, '0'), 'Company ' || (i % 1000), 'hubspot',
         now() - interval '90 days', now() - interval '1 day'
  FROM bench, generate_series(1, $CONTACTS) AS i;
INSERT INTO external_links (tenant_id, key, record_kind, record_id, connection_id)
  SELECT tenant, 'hubspot:contact:' || (1000000 + i), 'contact',
         ('00000000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid,
         '00000000-0000-7000-8000-000000000001'::uuid
  FROM bench, generate_series(1, $CONTACTS) AS i;
-- Runs: one big backfill first, then runs of $RUN_SIZE spread evenly over 90 days.
INSERT INTO sync_runs (tenant_id, connection_id, object, kind, outcome, started_at, finished_at,
                       fetched, created, updated, unchanged, skipped, failed)
  SELECT tenant, '00000000-0000-7000-8000-000000000001'::uuid, 'contact', 'backfill', 'partial',
         now() - interval '91 days', now() - interval '91 days' + interval '40 minutes',
         $BACKFILL, $BACKFILL - $BACKFILL / 50, 0, 0, 0, $BACKFILL / 50
  FROM bench;
INSERT INTO sync_runs (tenant_id, connection_id, object, kind, outcome, started_at, finished_at,
                       fetched, created, updated, unchanged, skipped, failed)
  SELECT tenant, ('00000000-0000-7000-8000-00000000000' || (1 + r % 2))::uuid,
         (ARRAY['contact','deal','task'])[1 + r % 3],
         (ARRAY['incremental','webhook','outbound','incremental','webhook','replay'])[1 + r % 6],
         (ARRAY['succeeded','succeeded','succeeded','partial','failed'])[1 + (r / 7) % 5],
         now() - interval '90 days' + r * (interval '90 days' / runs),
         now() - interval '90 days' + r * (interval '90 days' / runs) + interval '3 seconds',
         $RUN_SIZE, 5, $RUN_SIZE - 15, 5, 1, 4
  FROM bench, (SELECT ($ITEMS - $BACKFILL) / $RUN_SIZE AS runs) AS n, generate_series(1, runs) AS r;
CREATE TEMP TABLE run_ids AS
  SELECT id, row_number() OVER (ORDER BY id) - 1 AS n, connection_id, started_at FROM sync_runs;
CREATE TEMP TABLE item_indexes AS
  SELECT indexname, indexdef FROM pg_indexes
  WHERE tablename = 'sync_items' AND indexname <> 'sync_items_pkey';
DO \$\$ DECLARE r record; BEGIN
  FOR r IN SELECT indexname FROM item_indexes LOOP EXECUTE 'DROP INDEX ' || r.indexname; END LOOP;
END \$\$;
-- Items: item i touches contact (i % CONTACTS); 2% fail; each carries a small change.
INSERT INTO sync_items (tenant_id, run_id, connection_id, object, direction, record_id, remote_id,
                        action, outcome, attempts, error_class, error, mapping_version, changes,
                        latency_ms, at)
  SELECT b.tenant, r.id, r.connection_id, 'contact',
         CASE WHEN i % 3 = 0 THEN 'outbound' ELSE 'inbound' END,
         CASE WHEN i % 50 = 0 THEN NULL
              ELSE ('00000000-0000-7000-9000-' || lpad(to_hex(1 + i % $CONTACTS), 12, '0'))::uuid END,
         (1000000 + 1 + i % $CONTACTS)::text,
         CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'updated' END,
         CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'ok' END,
         CASE WHEN i % 50 = 0 THEN 3 ELSE 1 END,
         CASE WHEN i % 50 = 0 THEN 'permanent' END,
         CASE WHEN i % 50 = 0 THEN 'PROPERTY_DOESNT_EXIST: lifecyclestage' END,
         7,
         jsonb_build_object('company', jsonb_build_object('before', 'Company ' || (i % 997),
                                                          'after', 'Company ' || (i % 991)),
                            'email', jsonb_build_object('before', 'old' || i || '@example.com',
                                                        'after', 'person' || (1 + i % $CONTACTS) || '@example.com')),
         20 + i % 200,
         r.started_at + make_interval(secs => (i % $RUN_SIZE) * 0.01)
  FROM bench b, generate_series(0, $ITEMS - 1) AS i
  JOIN run_ids r ON r.n = CASE WHEN i < $BACKFILL THEN 0 ELSE 1 + (i - $BACKFILL) / $RUN_SIZE END;
DO \$\$ DECLARE r record; BEGIN
  FOR r IN SELECT indexdef FROM item_indexes LOOP EXECUTE r.indexdef; END LOOP;
END \$\$;
-- Dead letters: open ones of two kinds, and some already handled.
INSERT INTO dead_letters (tenant_id, connection_id, object, direction, scope, remote_id, work_key,
                          payload, error_class, error, attempts, first_failed_at, last_failed_at,
                          status)
  SELECT tenant, '00000000-0000-7000-8000-000000000001'::uuid, 'contact', 'inbound', 'record',
         (1000000 + i)::text, 'inbound:contact:' || i,
         jsonb_build_object('remote', jsonb_build_object('id', (1000000 + i)::text,
           'properties', jsonb_build_object('email', 'person' || i || '@example.com'),
           'updatedAt', '2026-01-01T00:00:00Z')),
         CASE WHEN i % 4 = 0 THEN 'transient' ELSE 'permanent' END,
         CASE WHEN i % 4 = 0 THEN 'HubSpot answered 503 after 8 attempts'
              ELSE 'INVALID_EMAIL: Email address is invalid' END,
         3, now() - make_interval(mins => $LETTERS - i), now() - make_interval(mins => $LETTERS - i),
         CASE WHEN i % 10 = 0 THEN 'replayed' ELSE 'open' END
  FROM bench, generate_series(1, $LETTERS) AS i;
INSERT INTO dead_letter_attempts (tenant_id, dead_letter_id, at, error_class, error, status)
  SELECT tenant_id, id, first_failed_at, error_class, error, 400 FROM dead_letters;
SET session_replication_role = DEFAULT;
VACUUM ANALYZE;
SQL
  echo "seeded in $(( $(date +%s) - start )) s: $(sql -c 'SELECT count(*) FROM sync_items') items," \
    "$(sql -c 'SELECT count(*) FROM sync_runs') runs, $(sql -c "SELECT pg_size_pretty(pg_total_relation_size('sync_items'))")"
fi

[ "${SEED_ONLY:-0}" = 1 ] && exit 0
"$ferry" serve --no-migrate &
server=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.2
done

# Log in like a browser: the login page sets the session and carries the CSRF token.
base="http://127.0.0.1:$PORT"
token=$(curl -fsS -c "$jar" -b "$jar" "$base/login" | sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p' | head -1)
curl -fsS -o /dev/null -c "$jar" -b "$jar" -H "Origin: $base" \
  --data-urlencode "email=$email" --data-urlencode "password=$password" \
  --data-urlencode "csrf_token=$token" "$base/login"
cookie=$(awk '$6 == "ferry_session" { print $7 }' "$jar")
[ -n "$cookie" ] || { echo "login failed" >&2; exit 1; }

# Pages to time: cursors and ids chosen from the data so that "deep" means deep.
backfill=$(sql -c "SELECT min(id) FROM sync_runs")
backfill_deep=$(sql -c "SELECT id FROM sync_items WHERE run_id = $backfill ORDER BY id OFFSET $(( BACKFILL * 9 / 10 )) LIMIT 1")
typical=$(sql -c "SELECT id FROM sync_runs ORDER BY id OFFSET (SELECT count(*) / 2 FROM sync_runs) LIMIT 1")
runs_deep=$(sql -c "SELECT id FROM sync_runs ORDER BY id OFFSET 100 LIMIT 1")
second=00000000-0000-7000-8000-000000000002
# A contact from the middle, and the one with the rarest name (the last one).
pick=$(( CONTACTS / 2 + 42 ))
contact=00000000-0000-7000-9000-$(printf '%012x' "$pick")
contact_deep=$(sql -c "SELECT id FROM sync_items WHERE record_id = '$contact' ORDER BY id DESC
                       OFFSET (SELECT count(*) / 2 FROM sync_items WHERE record_id = '$contact') LIMIT 1")
surnames=(Lovelace Hopper Turing Dijkstra Liskov Knuth Hamilton Thompson)
rare="${surnames[$(( (CONTACTS / 8) % 8 ))]}$CONTACTS"
letters_deep=$(sql -c "SELECT id FROM dead_letters ORDER BY id OFFSET $(( LETTERS / 2 )) LIMIT 1")

pages=(
  "/history"
  "/history?before=$runs_deep"
  "/history?kind=webhook&outcome=failed"
  "/history?connection=$second&object=deal&before=$runs_deep"
  "/history?from=$(date -u -d '-60 days' +%F)&to=$(date -u -d '-59 days' +%F)"
  "/history/$typical"
  "/history/$backfill"
  "/history/$backfill?after=$backfill_deep"
  "/history/$backfill?show=problems&after=$backfill_deep"
  "/history/records?q=$contact"
  "/history/records?q=$contact&before=$contact_deep"
  "/history/records?q=hubspot:contact:$(( 1000000 + pick ))"
  "/history/records?q=person$pick@example.com"
  "/history/records?q=Grace+Hopper"
  "/history/records?q=$rare"
  "/dlq"
  "/dlq?text=INVALID_EMAIL&before=$letters_deep"
  "/dlq/$letters_deep"
)

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$(sql -c 'SELECT count(*) FROM sync_items') sync_items, $(sql -c 'SELECT count(*) FROM sync_runs') sync_runs," \
  "$(sql -c 'SELECT count(*) FROM dead_letters') dead_letters in one tenant"
echo "$REQUESTS sequential requests per page after $WARMUP warm-up requests (milliseconds)"
printf '%-72s %7s %7s %7s %7s\n' page p50 p95 p99 max
for page in "${pages[@]}"; do
  status=$(curl -s -o /dev/null -w '%{http_code}' -b "ferry_session=$cookie" -H 'Accept: text/html' "$base$page")
  [ "$status" = 200 ] || { echo "$page answered $status" >&2; exit 1; }
  for _ in $(seq 1 "$WARMUP"); do
    curl -s -o /dev/null -b "ferry_session=$cookie" -H 'Accept: text/html' "$base$page"
  done
  for _ in $(seq 1 "$REQUESTS"); do
    curl -s -o /dev/null -w '%{time_total}\n' -b "ferry_session=$cookie" -H 'Accept: text/html' "$base$page"
  done | sort -n | awk -v page="$page" '
    { t[NR] = $1 * 1000 }
    END { printf "%-72s %7.1f %7.1f %7.1f %7.1f\n", page, t[int(NR*0.5)], t[int(NR*0.95)], t[int(NR*0.99)], t[NR] }'
done

echo
for page in "/history/$backfill?after=$backfill_deep" "/history/records?q=$contact" "/history?before=$runs_deep"; do
  echo "== wrk, 2 threads, 8 connections, $DURATION: $page"
  wrk -t2 -c8 -d"$DURATION" --latency -H "Cookie: ferry_session=$cookie" -H 'Accept: text/html' \
    "$base$page" | sed -n '/Latency Distribution/,/Requests\/sec/p'
done

#!/usr/bin/env bash
# Benchmark (not a test): POST /v1/contacts at fixed concurrency with wrk, without and with an
# Idempotency-Key, against a release build of `ferry serve` on a scratch database.
# Needs wrk (Debian package `wrk`), Postgres and Redis on the standard ports.
#   bench/records-create.sh                  # 30 s per run, 32 connections
#   DURATION=10s CONNECTIONS=64 bench/records-create.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18090}
admin=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db="ferry_bench_$$"

command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet --bin ferry

server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "bench_$$:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql "$admin" -qc "CREATE DATABASE $db"
export DATABASE_URL="${admin%/*}/$db"
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export FERRY_REDIS_PREFIX="bench_$$"
export FERRY_BIND="127.0.0.1:$PORT"
export FERRY_PUBLIC_URL="http://127.0.0.1:$PORT"
export FERRY_SECRET_KEY="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
# The per-tenant API limit would (rightly) throttle a load test; lift it for the benchmark.
export FERRY_API_RATE_LIMIT=1000000 FERRY_API_BURST=1000000
export FERRY_LOG=warn

FERRY_BENCH_KEY=$(target/release/ferry tenant create --name Bench --email "bench-$$@ferry.test" \
  --password "bench bench bench" | sed -n 's/^FERRY_API_KEY=//p')
export FERRY_BENCH_KEY

target/release/ferry serve --no-migrate &
server=$!
for _ in $(seq 1 50); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.2
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "warm-up (5 s)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d5s -s bench/create-contact.lua "http://127.0.0.1:$PORT/v1/contacts" >/dev/null

echo
echo "== POST /v1/contacts, no Idempotency-Key: $CONNECTIONS connections, $DURATION"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/create-contact.lua \
  "http://127.0.0.1:$PORT/v1/contacts"

echo
echo "== POST /v1/contacts with a unique Idempotency-Key per request: $CONNECTIONS connections, $DURATION"
IDEMPOTENCY=1 wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/create-contact.lua \
  "http://127.0.0.1:$PORT/v1/contacts"

echo
echo "contacts stored: $(psql "$DATABASE_URL" -Atc 'SELECT count(*) FROM contacts')"

# Shared by the sync benchmarks (sourced, not run): a scratch database and Redis prefix, the
# sandbox CRM and Ferry as release builds, a tenant whose owner logs in with curl and connects the
# sandbox through its OAuth consent page, exactly as a person would in the browser.
#
# The caller sets PORT and SANDBOX_PORT (or takes the defaults below) and calls, in order:
#   bench_init; start_sandbox <sandbox flags>; create_tenant; start_ferry all|serve;
#   login; connect_sandbox
# Everything started is stopped and the scratch database dropped on exit.

PORT=${PORT:-18091}
SANDBOX_PORT=${SANDBOX_PORT:-18092}
admin=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db="ferry_bench_$$"
base="http://127.0.0.1:$PORT"
crm="http://127.0.0.1:$SANDBOX_PORT"
work_dir="bench/results/tmp/$(basename "$0" .sh)-$$"
jar="$work_dir/cookies.txt"
email="bench-$$@ferry.test"
password="bench bench bench"
portal=1000001
server=""
sandbox=""
extra_pids=()

say() { echo "[$(date -u +%H:%M:%S)] $*"; }

bench_cleanup() {
  for pid in "${extra_pids[@]}" $server $sandbox; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${extra_pids[@]}" $server $sandbox; do
    wait "$pid" 2>/dev/null || true
  done
  # KEEP_DB=1: leave the scratch database behind to look at (its name is printed at the start).
  [ "${KEEP_DB:-0}" = 1 ] || psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "bench_$$:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
}

bench_init() {
  command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }
  mkdir -p "$work_dir"
  # SKIP_BUILD=1: use target/release/ferry as it is (e.g. built with SQLX_OFFLINE=false), or
  # the binary FERRY_BIN names (e.g. built into another CARGO_TARGET_DIR).
  [ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet --bin ferry
  trap bench_cleanup EXIT
  psql "$admin" -qc "CREATE DATABASE $db"
  [ "${KEEP_DB:-0}" = 1 ] && say "scratch database: $db (kept)"
  export DATABASE_URL="${admin%/*}/$db"
  export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
  export FERRY_REDIS_PREFIX="bench_$$"
  export FERRY_BIND="127.0.0.1:$PORT"
  export FERRY_PUBLIC_URL="$base"
  export FERRY_SECRET_KEY="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
  export FERRY_LOG=${FERRY_LOG:-warn}
  # The one OAuth app: Ferry's "HubSpot (sandbox)" provider and the sandbox read the same
  # variables. The client secret is also the webhook signing key.
  export FERRY_SANDBOX_URL="$crm"
  export FERRY_SANDBOX_CLIENT_ID="ferry-bench-client"
  export FERRY_SANDBOX_CLIENT_SECRET="ferry-bench-secret-$$"
  export FERRY_SANDBOX_BIND="127.0.0.1:$SANDBOX_PORT"
  export FERRY_SANDBOX_REDIRECT_URIS="$base/oauth/callback/hubspot"
  # Ferry's own per-account ceiling on CRM calls is HubSpot's (110 per 10 s, 5 searches/s);
  # the sandbox runs with its limits off, so lift Ferry's too: this measures Ferry, not the
  # budget. (With HubSpot's budget a backfill is capped at 5 x 200 records/s by search alone:
  # bench/sync-backfill-limits.sh measures that.)
  export FERRY_HUBSPOT_RATE_LIMIT=${FERRY_HUBSPOT_RATE_LIMIT:-10000000}
  export FERRY_HUBSPOT_SEARCH_RATE_LIMIT=${FERRY_HUBSPOT_SEARCH_RATE_LIMIT:-100000}
  # The REST API's per-tenant limit is not what is measured either.
  export FERRY_API_RATE_LIMIT=1000000 FERRY_API_BURST=1000000
}

wait_for() { # url, seconds
  local url=$1 secs=$2
  for _ in $(seq 1 $((secs * 5))); do
    curl -fs -o /dev/null "$url" && return 0
    sleep 0.2
  done
  echo "nothing answered at $url within ${secs}s" >&2
  return 1
}

start_sandbox() { # flags for `ferry sandbox`
  RUST_LOG=${SANDBOX_LOG:-warn} "${FERRY_BIN:-target/release/ferry}" sandbox "$@" >"$work_dir/sandbox.log" 2>&1 &
  sandbox=$!
  wait_for "$crm/" 300
}

create_tenant() {
  FERRY_BENCH_KEY=$("${FERRY_BIN:-target/release/ferry}" tenant create --name Bench --email "$email" \
    --password "$password" | sed -n 's/^FERRY_API_KEY=//p')
  export FERRY_BENCH_KEY
}

start_ferry() { # all | serve
  "${FERRY_BIN:-target/release/ferry}" "$1" --no-migrate >"$work_dir/ferry.log" 2>&1 &
  server=$!
  wait_for "$base/readyz" 60
}

# The csrf_token of the page at $1 (this session's).
csrf_of() {
  curl -fsS -b "$jar" -c "$jar" "$base$1" | sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p' | head -1
}

login() {
  local token
  token=$(csrf_of /login)
  [ -n "$token" ] || { echo "no csrf token on /login" >&2; return 1; }
  local status
  status=$(curl -sS -o /dev/null -w '%{http_code}' -b "$jar" -c "$jar" -H "Origin: $base" \
    --data-urlencode "email=$email" --data-urlencode "password=$password" \
    --data-urlencode "csrf_token=$token" "$base/login")
  [ "$status" = 303 ] || { echo "login answered $status" >&2; return 1; }
}

# Connects the sandbox's first account: Ferry's connect button, the sandbox's consent page, Allow,
# and back to Ferry's callback. Sets CONNECTED_AT (epoch seconds, when the callback was called:
# the backfill cannot start before it commits) and CONNECTION (its id).
connect_sandbox() {
  local token authorize consent back done
  token=$(csrf_of /connections)
  authorize=$(curl -sS -o /dev/null -w '%{redirect_url}' -b "$jar" -c "$jar" -H "Origin: $base" \
    --data-urlencode "csrf_token=$token" "$base/connections/new/hubspot-sandbox")
  case "$authorize" in "$crm"/*) ;; *) echo "connect did not go to the sandbox: $authorize" >&2; return 1 ;; esac
  consent=$(curl -fsS "$authorize" | sed -n 's/.*name="consent" value="\([^"]*\)".*/\1/p' | head -1)
  [ -n "$consent" ] || { echo "no consent id on the sandbox's page" >&2; return 1; }
  back=$(curl -sS -o /dev/null -w '%{redirect_url}' -H "Origin: $crm" \
    --data-urlencode "consent=$consent" --data-urlencode "portal=$portal" \
    --data-urlencode "decision=allow" "$crm/oauth/authorize")
  case "$back" in "$base/oauth/callback/hubspot"*) ;; *) echo "consent did not come back: $back" >&2; return 1 ;; esac
  CONNECTED_AT=$(date +%s.%N)
  done=$(curl -sS -o /dev/null -w '%{redirect_url}' -b "$jar" -c "$jar" "$back")
  case "$done" in "$base/connections/"*) ;; *) echo "callback answered: $done" >&2; return 1 ;; esac
  CONNECTION=${done##*/}
}

# A sandbox access token of our own for the connected account (the same OAuth app, a second
# grant): what an admin editing records in the CRM would use.
crm_token() {
  local query consent back code
  query="client_id=$FERRY_SANDBOX_CLIENT_ID&redirect_uri=$(printf %s "$FERRY_SANDBOX_REDIRECT_URIS" | sed 's/:/%3A/g; s#/#%2F#g')&scope=crm.objects.contacts.read%20crm.objects.contacts.write&state=bench"
  consent=$(curl -fsS "$crm/oauth/authorize?$query" | sed -n 's/.*name="consent" value="\([^"]*\)".*/\1/p' | head -1)
  [ -n "$consent" ] || { echo "no consent id for the driver's grant" >&2; return 1; }
  back=$(curl -sS -o /dev/null -w '%{redirect_url}' -H "Origin: $crm" \
    --data-urlencode "consent=$consent" --data-urlencode "portal=$portal" \
    --data-urlencode "decision=allow" "$crm/oauth/authorize")
  code=$(printf %s "$back" | sed -n 's/.*[?&]code=\([^&]*\).*/\1/p')
  [ -n "$code" ] || { echo "no code in $back" >&2; return 1; }
  curl -fsS "$crm/oauth/2026-03/token" \
    --data-urlencode grant_type=authorization_code \
    --data-urlencode "client_id=$FERRY_SANDBOX_CLIENT_ID" \
    --data-urlencode "client_secret=$FERRY_SANDBOX_CLIENT_SECRET" \
    --data-urlencode "redirect_uri=$FERRY_SANDBOX_REDIRECT_URIS" \
    --data-urlencode "code=$code" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'
}

# Peak and current resident memory of a process, in MB: "<VmHWM> <VmRSS>".
rss_of() {
  awk '/^VmHWM/ {h=$2} /^VmRSS/ {r=$2} END {printf "%.1f %.1f\n", h/1024, r/1024}' "/proc/$1/status" 2>/dev/null
}

# CPU seconds (user + system) used so far by the process $1, and by all Postgres processes.
cpu_of() {
  awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f\n", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}
cpu_of_postgres() {
  local total=0 pid
  for pid in $(pgrep -x postgres); do
    total=$(echo "$total + $(cpu_of "$pid")" | bc)
  done
  echo "$total"
}

machine() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

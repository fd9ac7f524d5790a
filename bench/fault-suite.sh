#!/usr/bin/env bash
# The fault suite (a benchmark, not a timed test; results in RELIABILITY.md).
#
# In a PRIVATE environment — its own Postgres cluster (initdb in a temp dir, a free port, trust
# auth) and its own redis-server on a free port, so the machine's shared services are never
# touched — it runs the sandbox CRM with faults on (seeded; its webhooks go to Ferry), `ferry
# serve` and `ferry work` as separate processes, makes a tenant (`ferry tenant create`) and
# connects the sandbox through the real OAuth flow (Ferry's Connect button, the consent page,
# the callback). Then, for DURATION seconds, a steady two-way load (creates and edits in the CRM
# through its API, which sends signed webhooks; creates and updates through Ferry's /v1) under a
# fault schedule: kill -9 of a worker every ~KILL_EVERY s, restarted RESTART_DELAY s later;
# Redis FLUSHALL; Redis restarted (empty); Postgres restarted with `pg_ctl -m immediate`; CRM 5xx
# bursts, 429 bursts and latency (the sandbox's /_sandbox/faults). Then it stops the load, lets
# Ferry settle (until nothing is due: outbox drained, no unrouted deliveries or pending events,
# no queued replays, and every cursor backfilled and polled after the load ended; or
# SETTLE_TIMEOUT), and compares both sides record by record (bench/fault/compare.py, usable on
# its own), printing lost, duplicated, mismatched, reverted and dead-lettered counts (each dead
# letter with its reason) and the time to settle. Exit status 0 only when all are 0 and it
# settled.
#
#   bench/fault-suite.sh                               # the full run: 600 s of faults
#   DURATION=150 bench/fault-suite.sh                  # a short run
#   SKIP_BUILD=1 bench/fault-suite.sh                  # reuse target/release/ferry as it is
#
# Knobs (environment), defaults in brackets:
#   DURATION [600]  SETTLE_TIMEOUT [600]  KEEP [0: remove the private cluster at the end]
#   SEED_CONTACTS [3000] SEED_DEALS [300] SEED_TASKS [300] SEED [42]: the sandbox's data, which
#       Ferry backfills while the load and the faults run
#   WORKERS [1]: `ferry work` processes (a kill picks one)
#   KILL_EVERY [10] (0: no kills; each gap is drawn in ±20%) RESTART_DELAY [0.5]
#   RESPAWN_DELAY [2]: a worker that exits by itself is counted and started again after this
#   SCHEDULE ["crm-5xx@20+15,flushall@40,crm-429@55,pg-restart@70,crm-latency@85+20,
#       redis-restart@110"]: name@offset[+length] within each CYCLE [120] seconds; names:
#       crm-5xx crm-429 crm-latency flushall redis-restart pg-restart
#   CRM_ERROR_RATE [0.5] CRM_429_BURST [60] CRM_LATENCY_MS [800] CRM_LATENCY_JITTER_MS [400]
#   REDIS_DOWN [2] PG_DOWN [0: `restart`; >0 stop, wait, start]
#   BASE_FAULTS ['{"webhookDuplicateRate": 0.1, "webhookReorder": true}']: always on
#   SLOW_CRM_MS [0]: latency of every CRM call for the whole run (a slow CRM)
#   CRM_RATE [4] FERRY_RATE [4]: operations per second on each side; CREATE_SHARE [0.3] of them
#       creates (contacts 60%, deals 25%, tasks 15%), the rest edits of records of either origin
#   NO_EMAIL_SHARE [0.1]: contacts created through /v1 without an email
#   EDIT_SEEDED [1]: CRM edits also hit seeded records (edits during the backfill)
#   PAIRED_RATE [0] PAIRED_GAP [1]: per second, a contact edited at Ferry (job_title) and
#       PAIRED_GAP s later at the CRM (phone): concurrent two-way edits
#   LOAD_DELAY [0]: seconds before the load starts
#   POLL_INTERVAL [15]: the connection's poll interval (Ferry's default is 60)
#   LIMITS [off]: `off` lifts the sandbox's and Ferry's CRM rate limits; `hubspot` keeps both
#   REVERT_GAP [2]: a last write this long after the previous one must be the final value
#   FERRY_BIN [target/release/ferry]  PG_BIN [/usr/lib/postgresql/15/bin]
#
# Needs: python3 (standard library only), psql, redis-server, redis-cli, Postgres 15's server
# binaries, and root or the postgres user (initdb refuses root: the cluster runs as postgres).
# Logs, the load's journal and report.json go to target/fault-suite/<UTC time>/.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in python3 psql redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "fault suite: $tool is needed" >&2; exit 2; }
done
# SKIP_BUILD=1: use target/release/ferry as it is.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin ferry
fi
PYTHONDONTWRITEBYTECODE=1 exec python3 bench/fault/suite.py "$@"

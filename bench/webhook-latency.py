"""Driver of bench/webhook-latency.sh: changes contacts in the sandbox CRM at a fixed rate and
measures, per change, the time until Ferry has committed it.

The sender is open-loop: change i is sent at start + i / rate whatever happened to earlier ones
(a pool of keep-alive connections sends them), each to a different contact, so every change is
one webhook event and one record write in Ferry. The watcher polls Ferry's `sync_items` (new rows
by id, every few milliseconds) and notes when each contact's inbound item first becomes visible:
that is the commit, seen from outside, at most one poll late. Latency = first visible - the
moment the driver sent the change (so the CRM's own answer time is included).

Standard library plus psycopg 3 (the shell script installs it in a scratch virtualenv).
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import psycopg


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class Crm:
    """Keep-alive HTTP connections to the sandbox, one per thread."""

    def __init__(self, base, token):
        self.url = urllib.parse.urlsplit(base)
        self.token = token
        self.local = threading.local()

    def call(self, method, path, body=None):
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)
                self.local.conn = conn
            try:
                payload = None if body is None else json.dumps(body)
                conn.request(method, path, body=payload, headers={
                    "Authorization": "Bearer " + self.token,
                    "Content-Type": "application/json",
                })
                response = conn.getresponse()
                data = response.read()
                return response.status, (json.loads(data) if data else None)
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")


def contact_ids(crm, count):
    ids, after = [], None
    while len(ids) < count:
        path = "/crm/v3/objects/contacts?limit=100" + (f"&after={after}" if after else "")
        status, page = crm.call("GET", path)
        if status != 200:
            sys.exit(f"listing contacts answered {status}: {page}")
        ids.extend(r["id"] for r in page["results"])
        after = (page.get("paging") or {}).get("next", {}).get("after")
        if not after:
            break
    if len(ids) < count:
        sys.exit(f"the sandbox has {len(ids)} contacts; {count} are needed (one per change)")
    return ids[:count]


class Watcher(threading.Thread):
    """Notes when each remote id's inbound sync item first becomes visible in Postgres."""

    def __init__(self, dsn, connection, interval):
        super().__init__(daemon=True)
        self.db = psycopg.connect(dsn, autocommit=True)
        self.connection = connection
        self.interval = interval
        self.last = self.db.execute("SELECT coalesce(max(id), 0) FROM sync_items").fetchone()[0]
        self.first_seen = {}
        self.polls = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            rows = self.db.execute(
                "SELECT id, remote_id FROM sync_items WHERE id > %s AND connection_id = %s"
                " AND direction = 'inbound' ORDER BY id",
                (self.last, self.connection),
            ).fetchall()
            seen = time.time()
            self.polls += 1
            for item_id, remote_id in rows:
                self.last = item_id
                self.first_seen.setdefault(remote_id, seen)
            time.sleep(self.interval)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crm", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--connection", required=True)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--poll-ms", type=float, default=5)
    parser.add_argument("--drain", type=float, default=30, help="seconds to wait for stragglers")
    args = parser.parse_args()

    crm = Crm(args.crm, args.token)
    total = int(args.rate * args.duration)
    ids = contact_ids(crm, total)
    watcher = Watcher(args.db, args.connection, args.poll_ms / 1000)
    watcher.start()

    sent = {}
    failures = []
    answer_times = []

    def change(i, contact):
        started = time.time()
        status, body = crm.call(
            "PATCH", f"/crm/v3/objects/contacts/{contact}",
            {"properties": {"jobtitle": f"Benchmark change {i}"}},
        )
        answer_times.append(time.time() - started)
        if status != 200:
            failures.append((contact, status, body))
        else:
            sent[contact] = started

    print(f"sending {total} changes at {args.rate:.0f}/s for {args.duration:.0f} s", flush=True)
    start = time.time() + 0.5
    lag = []
    with ThreadPoolExecutor(max_workers=args.senders) as pool:
        for i, contact in enumerate(ids):
            due = start + i / args.rate
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            lag.append(time.time() - due)
            pool.submit(change, i, contact)
    sending_took = time.time() - start

    deadline = time.time() + args.drain
    while time.time() < deadline and not all(c in watcher.first_seen for c in sent):
        time.sleep(0.1)
    watcher.stop.set()
    watcher.join()

    latencies = [watcher.first_seen[c] - t for c, t in sent.items() if c in watcher.first_seen]
    missing = [c for c in sent if c not in watcher.first_seen]
    print(f"sent {len(sent)} changes in {sending_took:.1f} s ({len(sent) / sending_took:.0f}/s);"
          f" CRM answers: median {statistics.median(answer_times) * 1000:.1f} ms,"
          f" p99 {percentile(answer_times, 99) * 1000:.1f} ms; failed: {len(failures)};"
          f" sender behind schedule by up to {max(lag) * 1000:.0f} ms")
    if failures:
        print(f"first failure: {failures[0]}")
    print(f"watcher: {watcher.polls} polls, every {args.poll_ms:g} ms")
    print(f"committed in Ferry: {len(latencies)} of {len(sent)}"
          f" ({len(missing)} not within {args.drain:.0f} s of the last change)")
    if latencies:
        ms = [v * 1000 for v in latencies]
        print("change sent -> record committed in Ferry (ms): "
              f"p50 {percentile(ms, 50):.0f}, p95 {percentile(ms, 95):.0f}, "
              f"p99 {percentile(ms, 99):.0f}, max {max(ms):.0f}, mean {statistics.mean(ms):.0f}")
        # By second of the run, to show whether a backlog built up.
        buckets = {}
        for contact, t in sent.items():
            if contact in watcher.first_seen:
                buckets.setdefault(int(t - start) // 10, []).append(
                    (watcher.first_seen[contact] - t) * 1000)
        print("per 10 s of the run (p50 / p95 ms): " + ", ".join(
            f"{k * 10}s: {percentile(v, 50):.0f}/{percentile(v, 95):.0f}"
            for k, v in sorted(buckets.items())))
    sys.exit(0 if not missing and not failures else 1)


if __name__ == "__main__":
    main()

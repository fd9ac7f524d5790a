#!/usr/bin/env python3
"""The fault suite (run through bench/fault-suite.sh, which builds and documents the knobs).

A private environment (its own Postgres cluster and Redis on free ports, the sandbox CRM with
faults on, `ferry serve` and `ferry work` as separate processes), a tenant connected through
the real OAuth flow, a steady two-way load, a fault schedule, then settle and compare.
"""

from __future__ import annotations

import json
import os
import platform
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
import lib  # noqa: E402
from lib import now, say  # noqa: E402


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


KNOBS = {
    "DURATION": env_int("DURATION", 600),
    "SETTLE_TIMEOUT": env_int("SETTLE_TIMEOUT", 600),
    "SEED_CONTACTS": env_int("SEED_CONTACTS", 3000),
    "SEED_DEALS": env_int("SEED_DEALS", 300),
    "SEED_TASKS": env_int("SEED_TASKS", 300),
    "SEED": env_int("SEED", 42),
    "FAULT_SEED": env_int("FAULT_SEED", 7),
    "WORKERS": env_int("WORKERS", 1),
    "KILL_EVERY": env_float("KILL_EVERY", 10.0),
    "RESTART_DELAY": env_float("RESTART_DELAY", 0.5),
    "RESPAWN_DELAY": env_float("RESPAWN_DELAY", 2.0),
    "CYCLE": env_float("CYCLE", 120.0),
    "SCHEDULE": os.environ.get(
        "SCHEDULE",
        "crm-5xx@20+15,flushall@40,crm-429@55,pg-restart@70,crm-latency@85+20,redis-restart@110",
    ),
    "REDIS_DOWN": env_float("REDIS_DOWN", 2.0),
    "PG_DOWN": env_float("PG_DOWN", 0.0),
    "CRM_ERROR_RATE": env_float("CRM_ERROR_RATE", 0.5),
    "CRM_429_BURST": env_int("CRM_429_BURST", 60),
    "CRM_LATENCY_MS": env_int("CRM_LATENCY_MS", 800),
    "CRM_LATENCY_JITTER_MS": env_int("CRM_LATENCY_JITTER_MS", 400),
    "SLOW_CRM_MS": env_int("SLOW_CRM_MS", 0),
    "BASE_FAULTS": os.environ.get("BASE_FAULTS", '{"webhookDuplicateRate": 0.1, "webhookReorder": true}'),
    "CRM_RATE": env_float("CRM_RATE", 4.0),
    "FERRY_RATE": env_float("FERRY_RATE", 4.0),
    "CREATE_SHARE": env_float("CREATE_SHARE", 0.3),
    "NO_EMAIL_SHARE": env_float("NO_EMAIL_SHARE", 0.1),
    "PAIRED_RATE": env_float("PAIRED_RATE", 0.0),
    "PAIRED_GAP": env_float("PAIRED_GAP", 1.0),
    "EDIT_SEEDED": env_int("EDIT_SEEDED", 1),
    "LOAD_DELAY": env_float("LOAD_DELAY", 0.0),
    "POLL_INTERVAL": os.environ.get("POLL_INTERVAL", "15"),
    "LIMITS": os.environ.get("LIMITS", "off"),
    "REVERT_GAP": env_float("REVERT_GAP", 2.0),
    "KEEP": env_int("KEEP", 0),
}

PORTAL = 1000001
PASSWORD = "fault suite password"
SECRET_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FERRY = os.environ.get("FERRY_BIN", os.path.join(ROOT, "target", "release", "ferry"))
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")


# ---------------------------------------------------------------------------------------------
# Processes.


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict, log: str):
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log, "ab")
        out.write(f"\n=== {time.strftime('%H:%M:%S', time.gmtime())} start {self.name}\n".encode())
        out.flush()
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        out.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, sig: int = signal.SIGTERM, wait: float = 15.0) -> None:
        if not self.popen:
            return
        self.send(sig)
        try:
            self.popen.wait(wait)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait(5)


def wait_http(url: str, seconds: float) -> None:
    client = lib.Http(timeout=2)
    end = now() + seconds
    while now() < end:
        if client.get(url).status == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing answered 200 at {url} within {seconds}s")


def as_postgres() -> list[str]:
    """Postgres refuses to run as root: run its tools as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"]
    return []


class Postgres:
    """A private cluster in a temp dir: trust auth, its own port, fsync off (a process crash,
    which is all `-m immediate` plays, loses nothing with fsync off)."""

    def __init__(self, run_dir: str):
        self.port = lib.free_port()
        self.dir = tempfile.mkdtemp(prefix="ferry-fault-pg-")
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.dir, pg.pw_uid, pg.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "postgres.log")
        self.run_dir = run_dir
        self.url = f"postgres://postgres@127.0.0.1:{self.port}"
        self.options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=300"
        )

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            as_postgres() + [f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "120", *args],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def init(self) -> None:
        subprocess.run(
            as_postgres() + [f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self._ctl("-o", self.options, "start")
        lib.psql(f"{self.url}/postgres", "CREATE DATABASE ferry")

    def restart_immediate(self, down: float) -> None:
        if down > 0:
            self._ctl("-m", "immediate", "stop")
            time.sleep(down)
            self._ctl("-o", self.options, "start")
        else:
            self._ctl("-m", "immediate", "restart")

    def ensure_up(self) -> None:
        if subprocess.run(as_postgres() + [f"{PG_BIN}/pg_ctl", "-D", self.data, "status"], capture_output=True).returncode != 0:
            self._ctl("-o", self.options, "start")

    def destroy(self, keep: bool) -> None:
        try:
            self._ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        try:
            shutil.copy(self.log, os.path.join(self.run_dir, "postgres.log"))
        except OSError:
            pass
        if keep:
            say(f"kept the private cluster: {' '.join(as_postgres())} {PG_BIN}/pg_ctl -D {self.data} -o '{self.options}' start "
                f"(then psql {self.url}/ferry)")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    def __init__(self, run_dir: str):
        self.port = lib.free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = Proc(
            "redis",
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            dict(os.environ),
            os.path.join(run_dir, "redis.log"),
        )

    def start(self) -> None:
        self.proc.start()
        end = now() + 10
        while now() < end:
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not answer PING")

    def cli(self, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True)
        return done.stdout.strip()

    def restart(self, down: float) -> None:
        self.proc.stop(signal.SIGTERM)
        time.sleep(down)
        self.start()


class Workers:
    """`ferry work` processes: killed and restarted by the schedule; a worker that exits by
    itself is noted and started again after RESPAWN_DELAY (what a supervisor would do)."""

    def __init__(self, count: int, env: dict, run_dir: str):
        self.lock = threading.Lock()
        self.procs = []
        for i in range(count):
            worker_env = dict(env)
            self.procs.append(Proc(f"work-{i}", [FERRY, "work", "--no-migrate"], worker_env, os.path.join(run_dir, f"work-{i}.log")))
        self.kills = 0
        self.self_exits: list[tuple[float, str, int]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _fresh_bind(self, proc: Proc) -> None:
        # Newer `ferry work` serves its own health and metrics: a free port each start.
        proc.env["FERRY_WORK_BIND"] = f"127.0.0.1:{lib.free_port()}"

    def start(self) -> None:
        for proc in self.procs:
            self._fresh_bind(proc)
            proc.start()
        self.thread.start()

    def kill_and_restart(self, delay: float) -> str:
        with self.lock:
            proc = random.choice(self.procs)
            proc.send(signal.SIGKILL)
            if proc.popen:
                proc.popen.wait()
                proc.popen = None  # our kill, not an exit of its own
            self.kills += 1
        time.sleep(delay)
        with self.lock:
            if not proc.alive():
                self._fresh_bind(proc)
                proc.start()
        return proc.name

    def _watch(self) -> None:
        while not self.stopping:
            time.sleep(0.2)
            with self.lock:
                for proc in self.procs:
                    if proc.popen and proc.popen.poll() is not None and not self.stopping:
                        code = proc.popen.returncode
                        # Our own kill -9 is -9 and restarted under the lock; anything else
                        # ended by itself.
                        self.self_exits.append((now(), proc.name, code))
                        say(f"{proc.name} exited by itself with status {code}; restarting in {KNOBS['RESPAWN_DELAY']}s")
                        proc.popen = None
                        threading.Timer(KNOBS["RESPAWN_DELAY"], self._respawn, args=(proc,)).start()

    def _respawn(self, proc: Proc) -> None:
        with self.lock:
            if not self.stopping and not proc.alive():
                self._fresh_bind(proc)
                proc.start()

    def stop(self) -> None:
        self.stopping = True
        for proc in self.procs:
            proc.stop()


# ---------------------------------------------------------------------------------------------
# The load.


class Journal:
    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "w")
        self.lock = threading.Lock()
        self.entries: list[dict] = []

    def add(self, **entry) -> None:
        entry.setdefault("t", now())
        with self.lock:
            self.entries.append(entry)
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()


class Load:
    """Two-way load: creates and edits in the CRM (whose webhooks reach Ferry) and through
    Ferry's `/v1` (which Ferry pushes), each side at its own steady rate."""

    def __init__(self, run: str, base: str, api_key: str, crm: lib.Crm, db: str, tenant: str, journal: Journal):
        self.run, self.base, self.crm, self.db, self.tenant = run, base, crm, db, tenant
        self.auth = {"Authorization": f"Bearer {api_key}"}
        self.http = lib.Http(timeout=60)
        self.journal = journal
        self.stop_event = threading.Event()
        self.seq = 0
        self.seq_lock = threading.Lock()
        self.rng = random.Random(KNOBS["SEED"])
        seeded = KNOBS["EDIT_SEEDED"]
        self.crm_ids = {
            "contact": [str(i) for i in range(1, KNOBS["SEED_CONTACTS"] + 1)] if seeded else [],
            "deal": [str(i) for i in range(1, KNOBS["SEED_DEALS"] + 1)] if seeded else [],
            "task": [str(i) for i in range(1, KNOBS["SEED_TASKS"] + 1)] if seeded else [],
        }
        self.ferry_ids: dict[str, list[str]] = {"contact": [], "deal": [], "task": []}
        self.stats: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.threads = [
            threading.Thread(target=self._loop, args=("crm", KNOBS["CRM_RATE"]), daemon=True),
            threading.Thread(target=self._loop, args=("ferry", KNOBS["FERRY_RATE"]), daemon=True),
            threading.Thread(target=self._refresh_ids, daemon=True),
        ]
        if KNOBS["PAIRED_RATE"] > 0:
            self.threads.append(threading.Thread(target=self._paired, daemon=True))

    def count(self, key: str, table: dict | None = None) -> None:
        table = self.stats if table is None else table
        with self.seq_lock:
            table[key] = table.get(key, 0) + 1

    def next_seq(self) -> int:
        with self.seq_lock:
            self.seq += 1
            return self.seq

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(180)

    # -- Ferry's API, retried with one Idempotency-Key per operation.
    def api(self, method: str, path: str, body: dict) -> lib.Answer:
        key = f"fault-{uuid.uuid4()}"
        headers = dict(self.auth)
        headers["Idempotency-Key"] = key
        if method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        end = now() + 120
        delay = 0.2
        while True:
            answer = self.http.request(method, f"{self.base}{path}", body=body, headers=headers)
            if answer.status not in (0, 409, 429, 500, 502, 503, 504) or now() >= end:
                return answer
            self.count(f"ferry {answer.status or 'no answer'} (retried)", self.errors)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    def _pick(self, ids: list[str]) -> str | None:
        with self.seq_lock:
            return self.rng.choice(ids) if ids else None

    def _kind(self) -> str:
        r = self.rng.random()
        return "contact" if r < 0.6 else "deal" if r < 0.85 else "task"

    def _loop(self, side: str, rate: float) -> None:
        if rate <= 0:
            return
        time.sleep(KNOBS["LOAD_DELAY"])
        period = 1.0 / rate
        next_at = now()
        while not self.stop_event.is_set():
            next_at += period
            try:
                kind = self._kind()
                if self.rng.random() < KNOBS["CREATE_SHARE"]:
                    (self.crm_create if side == "crm" else self.ferry_create)(kind)
                else:
                    (self.crm_edit if side == "crm" else self.ferry_edit)(kind)
            except Exception:  # noqa: BLE001 - the load goes on; the error is counted
                self.count(f"{side} exception", self.errors)
                traceback.print_exc()
            pause = next_at - now()
            if pause > 0:
                self.stop_event.wait(pause)
            else:
                next_at = now()

    # -- values: unique per write so the journal can tell which one won.
    def value(self, kind: str, field: str, seq: int):
        """(Ferry's value, the CRM's property and value) for an edit of `field`."""
        if field == "job_title":
            return f"Title {seq}", "jobtitle", f"Title {seq}"
        if field == "company":
            return f"Company {seq}", "company", f"Company {seq}"
        if field == "phone":
            return f"+1-555-7{seq:06d}", "phone", f"+1-555-7{seq:06d}"
        if field == "value":
            return f"{1000 + seq}.5", "amount", f"{1000 + seq}.5"
        if field == "stage":
            pairs = [("lead", "appointmentscheduled"), ("qualified", "qualifiedtobuy"), ("proposal", "presentationscheduled"), ("won", "closedwon"), ("lost", "closedlost")]
            ferry, crm = pairs[seq % len(pairs)]
            return ferry, "dealstage", crm
        if field == "body":
            return f"Body {seq}", "hs_task_body", f"Body {seq}"
        if field == "priority":
            pairs = [("low", "LOW"), ("medium", "MEDIUM"), ("high", "HIGH")]
            ferry, crm = pairs[seq % len(pairs)]
            return ferry, "hs_task_priority", crm
        raise ValueError(field)

    EDIT_FIELDS = {"contact": ["job_title", "company", "phone"], "deal": ["value", "stage"], "task": ["body", "priority"]}
    CRM_OBJECT = {"contact": "contacts", "deal": "deals", "task": "tasks"}

    def crm_create(self, kind: str) -> None:
        n = self.next_seq()
        m = f"fs{self.run}-crm-{kind}{n}"
        day = 86_400_000
        due = (int(now() * 1000) // day + 30) * day
        props = {
            "contact": {"email": f"{m}@fault.test", "firstname": "Fault", "lastname": f"Crm {n}", "jobtitle": "Created"},
            "deal": {"dealname": m, "amount": "2500", "dealstage": "qualifiedtobuy", "pipeline": "default", "closedate": str(due)},
            "task": {"hs_task_subject": m, "hs_timestamp": str(due + 9 * 3_600_000), "hs_task_status": "NOT_STARTED", "hs_task_priority": "LOW"},
        }[kind]
        answer = self.crm.call("POST", f"/crm/v3/objects/{self.CRM_OBJECT[kind]}", {"properties": props})
        if answer.status == 201 or answer.status == 200:
            remote = str(answer.json()["id"])
            with self.seq_lock:
                self.crm_ids[kind].append(remote)
            marker = f"{m}@fault.test" if kind == "contact" else m
            self.journal.add(op="create", side="crm", kind=kind, id=remote, marker=marker)
            self.count(f"crm create {kind}")
        else:
            self.count(f"crm create {kind} {answer.status}", self.errors)
            say(f"CRM create of a {kind} answered {answer!r}")

    def ferry_create(self, kind: str) -> None:
        n = self.next_seq()
        m = f"fs{self.run}-api-{kind}{n}"
        if kind == "contact":
            if self.rng.random() < KNOBS["NO_EMAIL_SHARE"]:
                body = {"first_name": "Fault", "last_name": m, "job_title": "Created"}
                marker = f"name:Fault {m}"
            else:
                body = {"email": f"{m}@fault.test", "first_name": "Fault", "last_name": f"Api {n}", "job_title": "Created"}
                marker = f"{m}@fault.test"
        elif kind == "deal":
            body = {"title": m, "value": "1500.00", "currency": "USD", "stage": "qualified", "close_date": time.strftime("%Y-%m-%d", time.gmtime(now() + 45 * 86400))}
            marker = m
        else:
            body = {"title": m, "due_at": time.strftime("%Y-%m-%dT09:00:00Z", time.gmtime(now() + 20 * 86400)), "priority": "medium", "status": "open"}
            contact = self._pick(self.ferry_ids["contact"])
            if contact and self.rng.random() < 0.5:
                body["linked"] = {"type": "contact", "id": contact}
            marker = m
        answer = self.api("POST", f"/v1/{kind}s", body)
        if answer.status == 201:
            record = answer.json()["id"]
            with self.seq_lock:
                self.ferry_ids[kind].append(record)
            self.journal.add(op="create", side="ferry", kind=kind, id=record, marker=marker)
            self.count(f"ferry create {kind}")
        else:
            self.count(f"ferry create {kind} {answer.status}", self.errors)
            say(f"Ferry create of a {kind} answered {answer!r}")

    def crm_edit(self, kind: str, remote: str | None = None, field: str | None = None) -> None:
        remote = remote or self._pick(self.crm_ids[kind])
        if remote is None:
            return
        field = field or self.rng.choice(self.EDIT_FIELDS[kind])
        ferry_value, prop, crm_value = self.value(kind, field, self.next_seq())
        answer = self.crm.call("PATCH", f"/crm/v3/objects/{self.CRM_OBJECT[kind]}/{remote}", {"properties": {prop: crm_value}})
        if answer.status == 200:
            self.journal.add(op="edit", side="crm", kind=kind, id=remote, field=field, value=compare.ferry_value(kind, field, ferry_value))
            self.count(f"crm edit {kind}")
        else:
            self.count(f"crm edit {kind} {answer.status}", self.errors)

    def ferry_edit(self, kind: str, record: str | None = None, field: str | None = None) -> None:
        record = record or self._pick(self.ferry_ids[kind])
        if record is None:
            return
        field = field or self.rng.choice(self.EDIT_FIELDS[kind])
        ferry_value, _, _ = self.value(kind, field, self.next_seq())
        answer = self.api("PATCH", f"/v1/{kind}s/{record}", {field: ferry_value})
        if answer.status == 200:
            self.journal.add(op="edit", side="ferry", kind=kind, id=record, field=field, value=compare.ferry_value(kind, field, ferry_value))
            self.count(f"ferry edit {kind}")
        else:
            self.count(f"ferry edit {kind} {answer.status}", self.errors)

    def _paired(self) -> None:
        """Edits of one contact on both sides PAIRED_GAP apart, different fields (Ferry's
        job_title, then the CRM's phone): neither may cost the other."""
        period = 1.0 / KNOBS["PAIRED_RATE"]
        time.sleep(KNOBS["LOAD_DELAY"])
        while not self.stop_event.wait(period):
            try:
                rows = lib.psql_json(
                    self.db,
                    f"""SELECT l.record_id AS id, split_part(l.key, ':', 3) AS remote FROM external_links l
                         JOIN contacts c ON c.id = l.record_id AND c.deleted_at IS NULL
                        WHERE l.tenant_id = '{self.tenant}' AND l.key LIKE 'hubspot:contact:%'
                        ORDER BY random() LIMIT 1""",
                    timeout=10,
                )
                if not rows:
                    continue
                self.ferry_edit("contact", rows[0]["id"], "job_title")
                time.sleep(KNOBS["PAIRED_GAP"])
                self.crm_edit("contact", rows[0]["remote"], "phone")
                self.count("paired edits")
            except lib.PsqlError:
                continue
            except Exception:  # noqa: BLE001
                self.count("paired exception", self.errors)
                traceback.print_exc()

    def _refresh_ids(self) -> None:
        """Both sides edit records of either origin: Ferry ids of records the CRM made, CRM
        ids of records Ferry pushed, learned from the links every few seconds."""
        while not self.stop_event.wait(5):
            for kind in ("contact", "deal", "task"):
                try:
                    rows = lib.psql_json(
                        self.db,
                        f"""SELECT l.record_id AS id, split_part(l.key, ':', 3) AS remote FROM external_links l
                            WHERE l.tenant_id = '{self.tenant}' AND l.key LIKE 'hubspot:{kind}:%'
                            ORDER BY random() LIMIT 2000""",
                        timeout=10,
                    )
                except lib.PsqlError:
                    continue  # Postgres restarting: try again later
                with self.seq_lock:
                    known_ferry = set(self.ferry_ids[kind])
                    known_crm = set(self.crm_ids[kind])
                    self.ferry_ids[kind].extend(r["id"] for r in rows if r["id"] not in known_ferry)
                    self.crm_ids[kind].extend(r["remote"] for r in rows if r["remote"] not in known_crm)


# ---------------------------------------------------------------------------------------------
# The fault schedule.


class Faults:
    def __init__(self, start: float, duration: float, workers: Workers, redis: Redis, pg: Postgres, crm_url: str):
        self.start_at, self.duration = start, duration
        self.workers, self.redis, self.pg, self.crm_url = workers, redis, pg, crm_url
        self.http = lib.Http(timeout=10)
        self.stop_event = threading.Event()
        self.log: list[tuple[float, str]] = []
        self.overlays: dict[str, dict] = {}
        self.base = json.loads(KNOBS["BASE_FAULTS"])
        if KNOBS["SLOW_CRM_MS"]:
            self.base["latencyMs"] = KNOBS["SLOW_CRM_MS"]
        self.rng = random.Random(KNOBS["FAULT_SEED"])
        self.events = self._plan()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _plan(self) -> list[tuple[float, str, float]]:
        events = []
        every = KNOBS["KILL_EVERY"]
        if every > 0:
            t = every
            while t < self.duration:
                events.append((t, "kill-worker", 0.0))
                t += every * self.rng.uniform(0.8, 1.2)
        entries = [e.strip() for e in KNOBS["SCHEDULE"].split(",") if e.strip()]
        cycle = KNOBS["CYCLE"]
        c = 0.0
        while c < self.duration:
            for entry in entries:
                name, _, when = entry.partition("@")
                offset, _, length = when.partition("+")
                at = c + float(offset)
                if at < self.duration:
                    events.append((at, name, float(length or 0)))
            c += cycle
        return sorted(events)

    def note(self, what: str) -> None:
        t = now() - self.start_at
        self.log.append((t, what))
        say(f"fault t={t:5.1f}s: {what}")

    def put_crm_faults(self) -> None:
        settings = dict(self.base)
        for overlay in self.overlays.values():
            settings.update(overlay)
        answer = self.http.request("PUT", f"{self.crm_url}/_sandbox/faults", body=settings)
        if answer.status != 200:
            say(f"could not set the sandbox's faults: {answer!r}")

    def clear_crm_faults(self) -> None:
        self.overlays.clear()
        self.http.request("DELETE", f"{self.crm_url}/_sandbox/faults")

    def _apply(self, name: str, length: float) -> None:
        if name == "kill-worker":
            which = self.workers.kill_and_restart(KNOBS["RESTART_DELAY"])
            self.note(f"kill -9 {which}, restarted after {KNOBS['RESTART_DELAY']}s")
        elif name == "flushall":
            self.redis.cli("FLUSHALL")
            self.note("Redis FLUSHALL")
        elif name == "redis-restart":
            self.redis.restart(KNOBS["REDIS_DOWN"])
            self.note(f"Redis restarted (down {KNOBS['REDIS_DOWN']}s, no persistence: empty)")
        elif name == "pg-restart":
            started = now()
            self.pg.restart_immediate(KNOBS["PG_DOWN"])
            self.note(f"Postgres restarted -m immediate ({now() - started:.1f}s until it accepted connections)")
        elif name in ("crm-5xx", "crm-429", "crm-latency"):
            overlay = {
                "crm-5xx": {"errorRate": KNOBS["CRM_ERROR_RATE"]},
                "crm-429": {"rateLimitBurst": KNOBS["CRM_429_BURST"]},
                "crm-latency": {"latencyMs": KNOBS["CRM_LATENCY_MS"], "latencyJitterMs": KNOBS["CRM_LATENCY_JITTER_MS"]},
            }[name]
            self.overlays[name] = overlay
            self.put_crm_faults()
            self.note(f"CRM {name} {json.dumps(overlay)}" + (f" for {length:.0f}s" if length else ""))
            if name == "crm-429":
                self.overlays.pop(name)  # a burst counts itself down at the sandbox
        elif name.startswith("end:"):
            self.overlays.pop(name[4:], None)
            self.put_crm_faults()
            self.note(f"CRM {name[4:]} over")
        else:
            self.note(f"unknown fault {name!r} ignored")

    def _run(self) -> None:
        self.put_crm_faults()
        pending = list(self.events)
        while pending and not self.stop_event.is_set():
            at, name, length = pending.pop(0)
            if self.stop_event.wait(max(0.0, self.start_at + at - now())):
                break
            try:
                self._apply(name, length)
            except Exception as err:  # noqa: BLE001 - note it and go on
                self.note(f"{name} failed: {err}")
            if length > 0:
                pending.append((at + length, f"end:{name}", 0.0))
                pending.sort()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(180)
        self.clear_crm_faults()
        if not self.redis.proc.alive():
            self.redis.start()
        self.pg.ensure_up()


# ---------------------------------------------------------------------------------------------


def unsettled(db: str, tenant: str, load_end: float) -> dict:
    rows = lib.psql_json(
        db,
        f"""SELECT
          (SELECT count(*) FROM outbox o JOIN sync_connections s USING (tenant_id)
            WHERE o.tenant_id = '{tenant}' AND (o.tx, o.id) > (s.outbox_tx, s.outbox_position)) AS outbox,
          (SELECT count(*) FROM webhook_deliveries WHERE processed_at IS NULL) AS deliveries,
          (SELECT count(*) FROM inbound_events WHERE tenant_id = '{tenant}' AND status = 'pending') AS events,
          (SELECT count(*) FROM dead_letters WHERE tenant_id = '{tenant}' AND status = 'queued') AS replays,
          (SELECT count(*) FROM sync_cursors WHERE tenant_id = '{tenant}'
             AND (backfilled_at IS NULL OR query_after IS NOT NULL OR last_success_at IS NULL
                  OR last_success_at < to_timestamp({load_end + 2}))) AS cursors_behind""",
        timeout=20,
    )
    return rows[0]


def progress(db: str, tenant: str) -> str:
    try:
        rows = lib.psql_json(
            db,
            f"""SELECT object, backfill_done, backfill_total, backfilled_at IS NOT NULL AS done, failures, last_error
                  FROM sync_cursors WHERE tenant_id = '{tenant}' ORDER BY object""",
            timeout=10,
        )
        counts = lib.psql_json(
            db,
            f"""SELECT (SELECT count(*) FROM contacts WHERE tenant_id = '{tenant}') AS contacts,
                       (SELECT count(*) FROM deals WHERE tenant_id = '{tenant}') AS deals,
                       (SELECT count(*) FROM tasks WHERE tenant_id = '{tenant}') AS tasks,
                       (SELECT count(*) FROM dead_letters WHERE tenant_id = '{tenant}') AS letters""",
            timeout=10,
        )[0]
    except lib.PsqlError as err:
        return f"(database unavailable: {str(err)[:80]})"
    cursors = " ".join(
        f"{r['object']}:{'done' if r['done'] else str(r['backfill_done']) + '/' + str(r['backfill_total'])}"
        + (f"(failures {r['failures']})" if r["failures"] else "")
        for r in rows
    )
    return f"Ferry holds {counts['contacts']} contacts, {counts['deals']} deals, {counts['tasks']} tasks; {counts['letters']} dead letters; backfill {cursors}"


def git_state() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.split("\n")
        dirty = [d.strip() for d in dirty if d.strip()]
        return f"{commit}" + (f" + {len(dirty)} modified files ({', '.join(d.split()[-1] for d in dirty)})" if dirty else " (clean)")
    except OSError:
        return "unknown"


def binary() -> str:
    built = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.path.getmtime(FERRY)))
    return f"binary {os.path.relpath(FERRY, ROOT)} built {built}"


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}, load average {os.getloadavg()[0]:.2f}"


def grep_logs(run_dir: str) -> dict:
    patterns = {
        "worker is still active within threshold": 0,
        "worker not registered": 0,
        "broken pipe": 0,
        "worker future ended": 0,
        "panicked": 0,
    }
    for name in os.listdir(run_dir):
        if not name.endswith(".log") or name == "postgres.log":
            continue
        with open(os.path.join(run_dir, name), errors="replace") as f:
            for line in f:
                low = line.lower()
                for p in patterns:
                    if p in low:
                        patterns[p] += 1
    return {k: v for k, v in patterns.items() if v}


def main() -> int:
    if not os.path.exists(FERRY):
        raise SystemExit(f"{FERRY} is missing: build it (bench/fault-suite.sh does) or set FERRY_BIN")
    for tool in ("redis-server", "redis-cli", "psql"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed")
    if not os.path.exists(f"{PG_BIN}/initdb"):
        raise SystemExit(f"{PG_BIN}/initdb is needed (Postgres 15 server binaries; PG_BIN changes the folder)")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run = uuid.uuid4().hex[:6]
    run_dir = os.path.join(ROOT, "target", "fault-suite", stamp)
    os.makedirs(run_dir, exist_ok=True)
    say(f"fault suite run {run}: logs and report in {run_dir}")
    say(f"commit {git_state()}; {binary()}; machine: {machine()}")
    say("knobs: " + " ".join(f"{k}={v}" for k, v in KNOBS.items()))

    pg = Postgres(run_dir)
    redis = Redis(run_dir)
    procs: list[Proc] = []
    workers: Workers | None = None
    load: Load | None = None
    faults: Faults | None = None
    try:
        pg.init()
        redis.start()
        say(f"private Postgres on {pg.port} ({pg.dir}), Redis on {redis.port}")
        port, crm_port = lib.free_port(), lib.free_port()
        base, crm_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{crm_port}"
        client_id, client_secret = "ferry-fault-client", f"ferry-fault-secret-{run}"
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": f"{pg.url}/ferry",
                "REDIS_URL": redis.url,
                "FERRY_REDIS_PREFIX": f"fault_{run}",
                "FERRY_BIND": f"127.0.0.1:{port}",
                "FERRY_PUBLIC_URL": base,
                "FERRY_SECRET_KEY": SECRET_KEY,
                "FERRY_LOG": os.environ.get("FERRY_LOG", "info,sqlx=warn,tower_http=warn"),
                "FERRY_SANDBOX_URL": crm_url,
                "FERRY_SANDBOX_CLIENT_ID": client_id,
                "FERRY_SANDBOX_CLIENT_SECRET": client_secret,
                "FERRY_SANDBOX_BIND": f"127.0.0.1:{crm_port}",
                "FERRY_SANDBOX_REDIRECT_URIS": f"{base}/oauth/callback/hubspot",
                "FERRY_SANDBOX_WEBHOOK_URL": f"{base}/webhooks/hubspot",
                "FERRY_API_RATE_LIMIT": "1000000",
                "FERRY_API_BURST": "1000000",
                "RUST_LOG": os.environ.get("SANDBOX_LOG", "warn"),
            }
        )
        if KNOBS["LIMITS"] == "off":
            # The sandbox's limits off and Ferry's lifted: faults, not budgets, are tested.
            env["FERRY_HUBSPOT_RATE_LIMIT"] = "10000000"
            env["FERRY_HUBSPOT_SEARCH_RATE_LIMIT"] = "100000"
        os.environ.update({k: env[k] for k in ("FERRY_SANDBOX_CLIENT_ID", "FERRY_SANDBOX_CLIENT_SECRET", "FERRY_SANDBOX_REDIRECT_URIS")})
        db = env["DATABASE_URL"]

        subprocess.run([FERRY, "migrate"], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        email = f"fault-{run}@ferry.test"
        created = subprocess.run(
            [FERRY, "tenant", "create", "--name", "Fault suite", "--email", email, "--password", PASSWORD],
            env=env, check=True, cwd=ROOT, capture_output=True, text=True,
        ).stdout
        api_key = next(line.split("=", 1)[1] for line in created.splitlines() if line.startswith("FERRY_API_KEY="))

        sandbox_args = [
            FERRY, "sandbox", "--faults", "--fault-seed", str(KNOBS["FAULT_SEED"]), "--seed", str(KNOBS["SEED"]),
            "--seed-contacts", str(KNOBS["SEED_CONTACTS"]), "--seed-deals", str(KNOBS["SEED_DEALS"]),
            "--seed-tasks", str(KNOBS["SEED_TASKS"]),
        ]
        if KNOBS["LIMITS"] == "off":
            sandbox_args += ["--rate-limit", "0", "--search-rate-limit", "0"]
        sandbox = Proc("sandbox", sandbox_args, env, os.path.join(run_dir, "sandbox.log"))
        sandbox.start()
        procs.append(sandbox)
        wait_http(f"{crm_url}/", 300)
        serve = Proc("serve", [FERRY, "serve", "--no-migrate"], env, os.path.join(run_dir, "serve.log"))
        serve.start()
        procs.append(serve)
        wait_http(f"{base}/readyz", 60)

        browser = lib.login(base, email, PASSWORD)
        connection = lib.connect_sandbox(browser, base, crm_url, PORTAL)
        tenant = lib.psql(db, f"SELECT tenant_id FROM connections WHERE id = '{connection}'")
        say(f"connected {connection} (tenant {tenant}) through the consent page; Ferry {base}, CRM {crm_url}, "
            f"database {db}; compare by hand with FERRY_SANDBOX_CLIENT_ID={client_id} "
            f"FERRY_SANDBOX_CLIENT_SECRET={client_secret} FERRY_SANDBOX_REDIRECT_URIS={base}/oauth/callback/hubspot "
            f"bench/fault/compare.py --database-url {db} --crm {crm_url}")
        if KNOBS["POLL_INTERVAL"]:
            token = lib.csrf_of(browser, f"{base}/connections/{connection}")
            answer = browser.post(
                f"{base}/connections/{connection}/poll-interval",
                form={"poll_interval": KNOBS["POLL_INTERVAL"], "csrf_token": token},
                headers={"Origin": base, "Accept": "text/html"},
            )
            if answer.status not in (200, 303):
                raise RuntimeError(f"setting the poll interval answered {answer!r}")
        crm = lib.Crm(
            crm_url,
            lib.crm_grant(crm_url, client_id, client_secret, f"{base}/oauth/callback/hubspot", PORTAL),
            {"client_id": client_id, "client_secret": client_secret},
        )

        workers = Workers(KNOBS["WORKERS"], env, run_dir)
        workers.start()
        journal = Journal(os.path.join(run_dir, "journal.jsonl"))
        load = Load(run, base, api_key, crm, db, tenant, journal)
        started = now()
        faults = Faults(started, KNOBS["DURATION"], workers, redis, pg, crm_url)
        say(f"load and faults for {KNOBS['DURATION']}s ({len(faults.events)} fault events planned)")
        load.start()
        faults.start()
        while now() - started < KNOBS["DURATION"]:
            time.sleep(min(15, max(0.1, KNOBS["DURATION"] - (now() - started))))
            say(f"t={now() - started:5.0f}s {progress(db, tenant)}")
        say("stopping the load and the faults")
        load.stop()
        faults.stop()
        load_end = now()

        say("settling: waiting until nothing is due (outbox, deliveries, events, replays, a poll after the load)")
        state = {}
        settled_at = None
        last_print = 0.0
        while now() - load_end < KNOBS["SETTLE_TIMEOUT"]:
            try:
                state = unsettled(db, tenant, load_end)
            except lib.PsqlError as err:
                state = {"error": str(err)[:100]}
            if state and all(v == 0 for v in state.values() if isinstance(v, int)) and "error" not in state:
                settled_at = now()
                break
            if now() - last_print > 15:
                say(f"  still due: {state}")
                last_print = now()
            time.sleep(1)
        settle = (settled_at - load_end) if settled_at else None
        say(f"settled in {settle:.1f}s" if settle is not None else f"NOT settled within {KNOBS['SETTLE_TIMEOUT']}s: {state}")

        report = compare.compare(db, crm, connection, journal.entries, KNOBS["REVERT_GAP"])
        report["settle_seconds"] = settle
        report["unsettled"] = None if settle is not None else state
        report["load"] = load.stats
        report["load_errors"] = load.errors
        report["crm_retries_of_the_driver"] = crm.retries
        report["faults"] = faults.log
        report["worker_kills"] = workers.kills
        report["worker_self_exits"] = workers.self_exits
        report["log_findings"] = grep_logs(run_dir)
        report["knobs"] = KNOBS
        report["commit"] = git_state()
        with open(os.path.join(run_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=1, default=str)

        print()
        print("== fault suite: result")
        print(f"commit: {report['commit']}; {binary()}")
        print(f"machine: {machine()}")
        print(f"duration {KNOBS['DURATION']}s; faults applied: {len(faults.log)} "
              f"({workers.kills} worker kills, "
              + ", ".join(f"{n} {k}" for k, n in sorted(count_kinds(faults.log).items())) + ")")
        print("load acknowledged: " + ", ".join(f"{k} {v}" for k, v in sorted(load.stats.items())))
        if load.errors:
            print("load errors: " + ", ".join(f"{k} {v}" for k, v in sorted(load.errors.items())))
        exits = workers.self_exits
        print(f"workers that exited by themselves: {len(exits)}"
              + (f" (statuses {sorted({c for _, _, c in exits})})" if exits else ""))
        if report["log_findings"]:
            print("log lines: " + ", ".join(f"{k!r} x{v}" for k, v in report["log_findings"].items()))
        print(f"time to settle: {settle:.1f}s" if settle is not None else f"time to settle: NOT settled within {KNOBS['SETTLE_TIMEOUT']}s, still due: {state}")
        print(compare.render(report))
        ok = compare.clean(report) and settle is not None
        print(f"RESULT: {'PASS' if ok else 'FAIL'}  lost {report['lost']}  duplicated {report['duplicated']}  "
              f"mismatched {report['mismatched']}  reverted {report['reverted']}  dead-lettered {report['dead_lettered']}  "
              f"settle {'%.1fs' % settle if settle is not None else 'timeout'}")
        print(f"report: {os.path.join(run_dir, 'report.json')}")
        return 0 if ok else 1
    finally:
        if load:
            load.stop_event.set()
        if faults:
            faults.stop_event.set()
        if workers:
            workers.stop()
        for proc in reversed(procs):
            proc.stop()
        redis.proc.stop()
        pg.destroy(bool(KNOBS["KEEP"]))


def count_kinds(log: list[tuple[float, str]]) -> dict:
    kinds: dict = {}
    for _, what in log:
        for key in ("FLUSHALL", "Redis restarted", "Postgres restarted", "crm-5xx", "crm-429", "crm-latency"):
            if key in what and "over" not in what:
                kinds[key] = kinds.get(key, 0) + 1
    return kinds


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Compares Ferry and the sandbox CRM record by record (contacts, deals, tasks).

Every live CRM record must have exactly one live Ferry record linked to it
(`external_links.key = hubspot:<object>:<id>`) with equal mapped fields (Ferry's default HubSpot
mapping, src/mapping/defaults.rs), and every live Ferry record exactly one live CRM record.
Prints, per object and in total:

  lost        CRM records no live Ferry record is linked to, and live Ferry records linked to no
              live CRM record (with a journal: also acknowledged creates found on neither side)
  duplicated  extra records carrying one marker (a contact's email, a deal's name, a task's
              subject) on one side, and extra CRM records linked to one Ferry record
  mismatched  linked pairs whose mapped fields differ (the first few are shown field by field)
  reverted    (with a journal) fields whose final value, equal on both sides, is not the last
              acknowledged write when that write came --revert-gap seconds after the one before
  dead letters  every dead letter of the tenant, with its reason

Usable on its own against any Ferry database and sandbox:

  bench/fault/compare.py --database-url postgres://postgres@127.0.0.1:5432/ferry_x \\
      --crm http://127.0.0.1:8081 [--portal 1000001] [--connection <uuid>] [--json out.json]

The CRM is read with a grant of the script's own (the sandbox's OAuth variables
FERRY_SANDBOX_CLIENT_ID, FERRY_SANDBOX_CLIENT_SECRET and FERRY_SANDBOX_REDIRECT_URIS, or the
sandbox's demo defaults). Exit status 0 when nothing is lost, duplicated, mismatched or reverted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from decimal import Decimal, InvalidOperation

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib  # noqa: E402

DEAL_STAGES = {
    "appointmentscheduled": "lead",
    "qualifiedtobuy": "qualified",
    "presentationscheduled": "proposal",
    "decisionmakerboughtin": "negotiation",
    "contractsent": "negotiation",
    "closedwon": "won",
    "closedlost": "lost",
}
TASK_STATUS = {
    "NOT_STARTED": "open",
    "IN_PROGRESS": "in_progress",
    "COMPLETED": "done",
    "WAITING": "in_progress",
    "DEFERRED": "open",
}
TASK_PRIORITY = {"LOW": "low", "MEDIUM": "medium", "HIGH": "high", "NONE": None}


def text(value):
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def email(value):
    value = text(value)
    return value.lower() if value else None


def decimal(value):
    value = text(value)
    if value is None:
        return None
    try:
        return format(Decimal(value.replace(",", "")).normalize(), "f")
    except InvalidOperation:
        return f"unparsable:{value}"


def epoch_ms(value):
    """A CRM date or datetime (ms epoch or ISO 8601) as ms since the epoch."""
    value = text(value)
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return f"unparsable:{value}"
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp() * 1000)


def date_of(value):
    ms = epoch_ms(value)
    if not isinstance(ms, int):
        return ms
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date().isoformat()


def mapped(table):
    def convert(value):
        value = text(value)
        if value is None:
            return None
        return table.get(value, f"unmapped:{value}")

    return convert


def currency(value):
    # Single-currency portals leave it blank; Ferry's default mapping reads blank as USD.
    value = text(value)
    return value.upper() if value else "USD"


# Per object: the CRM object name, Ferry's table, and (Ferry field, SQL expression giving its
# value in comparable form, CRM property, converter of the CRM value to that form).
OBJECTS = {
    "contact": {
        "crm": "contacts",
        "table": "contacts",
        "fields": [
            ("email", "r.email", "email", email),
            ("first_name", "r.first_name", "firstname", text),
            ("last_name", "r.last_name", "lastname", text),
            ("phone", "r.phone", "phone", text),
            ("company", "r.company", "company", text),
            ("job_title", "r.job_title", "jobtitle", text),
            ("owner_id", "r.owner_id", "hubspot_owner_id", text),
        ],
    },
    "deal": {
        "crm": "deals",
        "table": "deals",
        "fields": [
            ("title", "r.title", "dealname", text),
            ("value", "r.value::text", "amount", decimal),
            ("currency", "r.currency", "deal_currency_code", currency),
            ("stage", "r.stage", "dealstage", mapped(DEAL_STAGES)),
            ("close_date", "r.close_date::text", "closedate", date_of),
            ("owner_id", "r.owner_id", "hubspot_owner_id", text),
        ],
    },
    "task": {
        "crm": "tasks",
        "table": "tasks",
        "fields": [
            ("title", "r.title", "hs_task_subject", text),
            ("body", "r.body", "hs_task_body", text),
            ("due_at", "(extract(epoch FROM r.due_at) * 1000)::bigint", "hs_timestamp", epoch_ms),
            ("status", "r.status", "hs_task_status", mapped(TASK_STATUS)),
            ("priority", "r.priority", "hs_task_priority", mapped(TASK_PRIORITY)),
            ("assignee_id", "r.assignee_id", "hubspot_owner_id", text),
        ],
    },
}

# How Ferry-side values read back compare (numbers and currencies normalised like the CRM's).
FERRY_NORMAL = {("deal", "value"): decimal, ("deal", "currency"): currency}


def ferry_value(kind, field, value):
    convert = FERRY_NORMAL.get((kind, field))
    if convert:
        # A deal without a currency at Ferry and a blank one at the CRM agree.
        if field == "currency" and value is None:
            return "USD"
        return convert(value)
    if isinstance(value, str):
        return text(value)
    return value


def marker(kind, values):
    """What identifies a record a person or the load made, the same on both sides."""
    if kind == "contact":
        if values.get("email"):
            return values["email"]
        name = " ".join(v for v in (values.get("first_name"), values.get("last_name")) if v)
        return f"name:{name}" if name else None
    return values.get("title")


def tenant_of(db, connection):
    rows = lib.psql_json(
        db,
        "SELECT id, tenant_id FROM connections"
        + (f" WHERE id = '{connection}'" if connection else "")
        + " ORDER BY created_at",
    )
    if len(rows) != 1:
        raise SystemExit(f"expected one connection, found {len(rows)}: pass --connection")
    return rows[0]["id"], rows[0]["tenant_id"]


def ferry_records(db, tenant, kind):
    spec = OBJECTS[kind]
    columns = ", ".join(f"{sql} AS {field}" for field, sql, _, _ in spec["fields"])
    rows = lib.psql_json(
        db,
        f"""SELECT r.id, {columns},
                   (SELECT coalesce(json_agg(split_part(l.key, ':', 3) ORDER BY l.key), '[]'::json)
                      FROM external_links l
                     WHERE l.tenant_id = r.tenant_id AND l.record_id = r.id
                       AND l.record_kind = '{kind}' AND l.key LIKE 'hubspot:{kind}:%') AS remote_ids
              FROM {spec['table']} r
             WHERE r.tenant_id = '{tenant}' AND r.deleted_at IS NULL""",
    )
    out = {}
    for row in rows:
        values = {field: ferry_value(kind, field, row.get(field)) for field, _, _, _ in spec["fields"]}
        out[row["id"]] = {"values": values, "remote_ids": row["remote_ids"] or []}
    return out


def crm_records(crm, kind):
    spec = OBJECTS[kind]
    properties = [prop for _, _, prop, _ in spec["fields"]]
    out = {}
    for remote_id, props in crm.all(spec["crm"], properties).items():
        out[remote_id] = {
            field: convert(props.get(prop)) for field, _, prop, convert in spec["fields"]
        }
    return out


def dead_letters(db, tenant):
    return lib.psql_json(
        db,
        f"""SELECT id, object, direction, scope, remote_id, record_id, error_class, error,
                   attempts, status, first_failed_at, last_failed_at
              FROM dead_letters WHERE tenant_id = '{tenant}' ORDER BY id""",
    )


def compare_kind(kind, crm_side, ferry_side, journal, revert_gap, details):
    lost_to_ferry = []  # CRM ids with no live Ferry record
    lost_to_crm = []  # Ferry ids with no live CRM record
    mismatched = []
    ferry_by_remote = {}
    for ferry_id, record in ferry_side.items():
        for remote_id in record["remote_ids"]:
            ferry_by_remote[remote_id] = ferry_id
    # CRM records linked to each Ferry record (more than one: the CRM holds a duplicate that
    # Ferry merged, or a link moved).
    crm_per_ferry: dict = {}
    for remote_id, values in crm_side.items():
        ferry_id = ferry_by_remote.get(remote_id)
        if ferry_id is None:
            lost_to_ferry.append(remote_id)
            continue
        crm_per_ferry.setdefault(ferry_id, []).append(remote_id)
        theirs = ferry_side[ferry_id]["values"]
        diff = {
            field: {"ferry": theirs.get(field), "crm": value}
            for field, value in values.items()
            if theirs.get(field) != value
        }
        if diff:
            mismatched.append({"crm_id": remote_id, "ferry_id": ferry_id, "fields": diff})
    for ferry_id, record in ferry_side.items():
        if ferry_id not in crm_per_ferry:
            lost_to_crm.append(ferry_id)
    shared = {f: ids for f, ids in crm_per_ferry.items() if len(ids) > 1}

    def dupes(records):
        groups: dict = {}
        for key, values in records:
            m = marker(kind, values)
            if m:
                groups.setdefault(m, []).append(key)
        return {m: keys for m, keys in groups.items() if len(keys) > 1}

    crm_dupes = dupes(crm_side.items())
    ferry_dupes = dupes((k, r["values"]) for k, r in ferry_side.items())
    duplicated = (
        sum(len(v) - 1 for v in crm_dupes.values())
        + sum(len(v) - 1 for v in ferry_dupes.values())
        + sum(len(v) - 1 for v in shared.values())
    )

    # The journal: creates acknowledged by either side but found on neither, and fields whose
    # final value is not the last acknowledged write.
    lost_creates = []
    reverted = []
    if journal is not None:
        markers = {marker(kind, v) for v in crm_side.values()} | {
            marker(kind, r["values"]) for r in ferry_side.values()
        }
        for entry in journal:
            if entry["kind"] == kind and entry["op"] == "create" and entry["marker"] not in markers:
                lost_creates.append(entry)
        crm_to_ferry = {r: f for f, ids in crm_per_ferry.items() for r in ids}
        writes: dict = {}
        for entry in journal:
            if entry["kind"] != kind or entry["op"] != "edit":
                continue
            ferry_id = entry["id"] if entry["side"] == "ferry" else crm_to_ferry.get(entry["id"])
            if ferry_id is None or ferry_id not in ferry_side:
                continue
            writes.setdefault((ferry_id, entry["field"]), []).append(entry)
        for (ferry_id, field), entries in writes.items():
            entries.sort(key=lambda e: e["t"])
            last = entries[-1]
            if len(entries) > 1 and last["t"] - entries[-2]["t"] < revert_gap:
                continue  # too close to call which one should win
            final = ferry_side[ferry_id]["values"].get(field)
            if final != last["value"]:
                reverted.append(
                    {
                        "ferry_id": ferry_id,
                        "field": field,
                        "last_write": last,
                        "final": final,
                        "writes": len(entries),
                    }
                )

    return {
        "crm_records": len(crm_side),
        "ferry_records": len(ferry_side),
        "lost": len(lost_to_ferry) + len(lost_to_crm) + len(lost_creates),
        "lost_to_ferry": len(lost_to_ferry),
        "lost_to_crm": len(lost_to_crm),
        "lost_creates": len(lost_creates),
        "duplicated": duplicated,
        "mismatched": len(mismatched),
        "reverted": len(reverted),
        "examples": {
            "lost_to_ferry": lost_to_ferry[:details],
            "lost_to_crm": lost_to_crm[:details],
            "lost_creates": lost_creates[:details],
            "duplicated_crm": dict(list(crm_dupes.items())[:details]),
            "duplicated_ferry": dict(list(ferry_dupes.items())[:details]),
            "crm_records_sharing_a_ferry_record": dict(list(shared.items())[:details]),
            "mismatched": mismatched[:details],
            "reverted": reverted[:details],
        },
    }


def history(db, tenant, record_id=None, remote_id=None, kind=None):
    """What the sync did to one record (its history items, oldest first), to explain a finding."""
    where = []
    if record_id:
        where.append(f"i.record_id = '{record_id}'")
    if remote_id and kind:
        where.append(f"(i.remote_id = '{remote_id}' AND i.object = '{kind}')")
    if not where:
        return []
    try:
        return lib.psql_json(
            db,
            f"""SELECT i.at, r.kind AS run, i.direction, i.action, i.outcome, i.remote_id, i.error,
                       i.changes::text AS changes
                  FROM sync_items i JOIN sync_runs r ON r.id = i.run_id
                 WHERE i.tenant_id = '{tenant}' AND ({' OR '.join(where)}) ORDER BY i.id""",
        )
    except lib.PsqlError as err:
        return [{"error": str(err)}]


def explain(db, tenant, kind, examples):
    """Attaches each example's sync history (the first three of each finding)."""
    for item in examples["mismatched"][:3]:
        item["history"] = history(db, tenant, item["ferry_id"], item["crm_id"], kind)
    for item in examples["reverted"][:3]:
        item["history"] = history(db, tenant, item["ferry_id"])
    for name in ("duplicated_ferry",):
        for marker_, ids in list(examples[name].items())[:3]:
            examples[name][marker_] = {"ids": ids, "history": [history(db, tenant, i) for i in ids]}
    for remote_id in examples["lost_to_ferry"][:3]:
        examples.setdefault("lost_to_ferry_history", {})[remote_id] = history(db, tenant, None, remote_id, kind)
    for ferry_id in examples["lost_to_crm"][:3]:
        examples.setdefault("lost_to_crm_history", {})[ferry_id] = history(db, tenant, ferry_id)


def compare(db, crm, connection=None, journal=None, revert_gap=2.0, details=5):
    connection, tenant = tenant_of(db, connection)
    report = {"connection": connection, "tenant": tenant, "objects": {}}
    for kind in OBJECTS:
        crm_side = crm_records(crm, kind)
        ferry_side = ferry_records(db, tenant, kind)
        report["objects"][kind] = compare_kind(kind, crm_side, ferry_side, journal, revert_gap, details)
        explain(db, tenant, kind, report["objects"][kind]["examples"])
    letters = dead_letters(db, tenant)
    report["dead_letters"] = letters
    for key in ("lost", "duplicated", "mismatched", "reverted"):
        report[key] = sum(o[key] for o in report["objects"].values())
    report["dead_lettered"] = len(letters)
    report["open_dead_letters"] = sum(1 for l in letters if l["status"] in ("open", "queued"))
    return report


def render(report, details=True) -> str:
    lines = []
    for kind, o in report["objects"].items():
        lines.append(
            f"{kind + 's':9} CRM {o['crm_records']:6}  Ferry {o['ferry_records']:6}  "
            f"lost {o['lost']} (CRM->Ferry {o['lost_to_ferry']}, Ferry->CRM {o['lost_to_crm']}, "
            f"creates on neither side {o['lost_creates']})  duplicated {o['duplicated']}  "
            f"mismatched {o['mismatched']}  reverted {o['reverted']}"
        )
    lines.append(
        f"TOTAL     lost {report['lost']}  duplicated {report['duplicated']}  "
        f"mismatched {report['mismatched']}  reverted {report['reverted']}  "
        f"dead-lettered {report['dead_lettered']} ({report['open_dead_letters']} open)"
    )
    if report["dead_letters"]:
        lines.append("dead letters (id, object, direction, scope, remote id / record, class, attempts, status: reason):")
        for l in report["dead_letters"]:
            subject = l["remote_id"] or l["record_id"] or "-"
            lines.append(
                f"  #{l['id']} {l['object']} {l['direction']} {l['scope']} {subject} "
                f"{l['error_class']} x{l['attempts']} {l['status']}: {l['error']}"
            )
    if details:
        for kind, o in report["objects"].items():
            for name, examples in o["examples"].items():
                if examples and not name.endswith("_history"):
                    lines.append(f"{kind} {name} (first few): {json.dumps(strip_history(examples), default=str)}")
    return "\n".join(lines)


def strip_history(value):
    """The examples without their histories (those are in the JSON report)."""
    if isinstance(value, dict):
        if set(value) == {"ids", "history"}:
            return value["ids"]
        return {k: strip_history(v) for k, v in value.items() if k != "history"}
    if isinstance(value, list):
        return [strip_history(v) for v in value]
    return value


def clean(report) -> bool:
    return report["lost"] == 0 and report["duplicated"] == 0 and report["mismatched"] == 0 and report["reverted"] == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"), required=False)
    parser.add_argument("--crm", default=os.environ.get("FERRY_SANDBOX_URL", "http://127.0.0.1:8081"))
    parser.add_argument("--portal", type=int, default=1000001)
    parser.add_argument("--connection")
    parser.add_argument("--journal", help="the load's journal (JSON lines) to check creates and last writes")
    parser.add_argument("--revert-gap", type=float, default=2.0)
    parser.add_argument("--details", type=int, default=5)
    parser.add_argument("--json", help="also write the full report here")
    args = parser.parse_args()
    if not args.database_url:
        parser.error("--database-url (or DATABASE_URL) is needed")
    crm = lib.crm_from_env(args.crm, args.portal)
    journal = None
    if args.journal:
        with open(args.journal) as f:
            journal = [json.loads(line) for line in f if line.strip()]
    report = compare(args.database_url, crm, args.connection, journal, args.revert_gap, args.details)
    print(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 0 if clean(report) else 1


if __name__ == "__main__":
    sys.exit(main())

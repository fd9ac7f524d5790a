//! A connection's state: healthy, degraded, overdue or blocked, with the reasons in words an
//! operator can act on. [`facts`] reads what the database says about the connection's work (its
//! gates, pending events and changes, open dead letters, the last hour's runs), [`assess`] decides,
//! as a pure function of those facts, the cursors and the time, so every rule is tested here.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::ObjectState;
use crate::connections::Status;
use crate::db::TenantTx;
use crate::error::Error;

/// A poll due for longer than this is overdue: no worker has run it. (A running poll keeps its
/// next poll a lease ahead, and the reconciler offers due work every few seconds.)
pub const OVERDUE_AFTER: Duration = Duration::seconds(60);
/// Webhook events or changes to push waiting longer than this are late.
pub const WAITING_AFTER: Duration = Duration::seconds(120);
/// The window of the "recent error rate".
pub const RECENT: Duration = Duration::hours(1);
/// A recent error rate (failed or dead-lettered records per hundred touched) at or above this is
/// degraded.
pub const DEGRADED_PERCENT: i64 = 5;
/// Pending events and changes are counted up to this many (the page says "10000+").
const COUNT_CAP: i64 = 10_000;
/// A claim of inbound or outbound work holds its gate for at most this long (the workers' lease,
/// `src/sync/webhooks.rs` and `outbound.rs`); a gate set further ahead is a failure's backoff.
const LEASE: Duration = Duration::seconds(60);

/// A connection's state, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Healthy,
    /// Work goes on, but some of it failed: open dead letters, a high recent error rate, a
    /// failed run, a poll retrying after one failure.
    Degraded,
    /// Work that should have run has not: a poll past due, events or changes waiting.
    Overdue,
    /// Work cannot go on until a retry time passes or someone acts: authorization lost, events
    /// or pushes held after failures, a poll failing and backing off.
    Blocked,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Overdue => "overdue",
            State::Blocked => "blocked",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Healthy => "Healthy",
            State::Degraded => "Degraded",
            State::Overdue => "Overdue",
            State::Blocked => "Blocked",
        }
    }
}

/// Where a reason points the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub href: String,
    pub text: String,
}

/// One reason a connection is not healthy, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub state: State,
    /// A stable key (`dead_letters`, `events_held`, `poll_overdue:contact`, ...).
    pub key: String,
    pub title: String,
    pub detail: String,
    pub link: Option<Link>,
}

/// A connection's state and why.
#[derive(Debug, Clone)]
pub struct Health {
    pub connection: Uuid,
    pub status: Status,
    pub state: State,
    pub problems: Vec<Problem>,
}

impl Health {
    /// What the status badge says: "Active" only when the connection syncs and nothing is wrong;
    /// an active connection with problems says its state; other statuses say themselves.
    pub fn badge_label(&self) -> &'static str {
        match (self.status, self.state) {
            (Status::Active, State::Healthy) => "Active",
            (Status::Active, state) => state.label(),
            (status, _) => status.label(),
        }
    }

    /// The badge's class: green only for a healthy active connection.
    pub fn badge_class(&self) -> &'static str {
        match (self.status, self.state) {
            (Status::Active, State::Healthy) => "badge-ok",
            (Status::NeedsReauth, _) | (_, State::Blocked) => "badge-danger",
            _ => "badge-warn",
        }
    }

    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What [`assess`] reads about a connection besides its cursors.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub inbound_retry_at: Option<DateTime<Utc>>,
    pub inbound_failures: i32,
    pub outbound_retry_at: Option<DateTime<Utc>>,
    pub outbound_failures: i32,
    /// The last error of event processing or pushing.
    pub last_error: Option<String>,
    /// Webhook events not processed yet (up to [`COUNT_CAP`]) and when the oldest arrived, not
    /// counting those waiting for their own retry (below).
    pub pending_events: i64,
    pub oldest_event_at: Option<DateTime<Utc>>,
    /// Events of records that failed alone, waiting for their own retry time (the others go
    /// ahead), the soonest retry, and the newest error.
    pub retrying_events: i64,
    pub next_event_retry_at: Option<DateTime<Utc>>,
    pub event_error: Option<String>,
    /// Outbox changes this connection has not pushed (or passed over) yet, and the oldest.
    pub pending_changes: i64,
    pub oldest_change_at: Option<DateTime<Utc>>,
    pub open_letters: i64,
    /// Open letters of whole event batches (`scope = 'events'`).
    pub open_event_letters: i64,
    /// The last [`RECENT`]: runs that failed, the newest one's error, records touched, and
    /// records that failed or were dead-lettered.
    pub failed_runs: i64,
    pub failed_run_error: Option<String>,
    pub touched: i64,
    pub problem_records: i64,
}

/// A duration in words: "24 s", "3 min", "2 h 5 min", "3 days".
pub fn span(d: Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min", s / 60),
        3_600..86_400 if s % 3_600 >= 60 => format!("{} h {} min", s / 3_600, s % 3_600 / 60),
        3_600..86_400 => format!("{} h", s / 3_600),
        86_400..172_800 => "1 day".into(),
        _ => format!("{} days", s / 86_400),
    }
}

/// "in 5 min" / "now".
fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if at <= now {
        "now".into()
    } else {
        format!("in {}", span(at - now))
    }
}

fn count_words(n: i64, one: &str, many: &str) -> String {
    if n >= COUNT_CAP {
        format!("{COUNT_CAP}+ {many}")
    } else if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Whether a retry gate holds work back: ahead of now after failures, or further ahead than a
/// worker's lease would put it.
fn held(retry_at: Option<DateTime<Utc>>, failures: i32, now: DateTime<Utc>) -> bool {
    retry_at.is_some_and(|at| at > now && (failures > 0 || at > now + LEASE))
}

/// "<what> (the oldest for 5 min): <failed> 3 times in a row (<error>). Next try in 50 s."
fn held_detail(
    what: String,
    oldest: Option<Duration>,
    failed: &str,
    failures: i32,
    error: Option<&str>,
    retry_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> String {
    let mut detail = what;
    if let Some(wait) = oldest {
        detail.push_str(&format!(" (the oldest for {})", span(wait)));
    }
    detail.push_str(&format!(": {failed}"));
    if failures > 0 {
        detail.push_str(&format!(" {failures} times in a row"));
    }
    if let Some(error) = error {
        detail.push_str(&format!(" ({})", short(error)));
    }
    detail.push('.');
    if let Some(at) = retry_at.filter(|at| *at > now) {
        detail.push_str(&format!(" Next try {}.", until(at, now)));
    }
    detail
}

fn short(text: &str) -> String {
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// The connection's state from what the database says, at `now`. Pure, so every rule is tested.
pub fn assess(
    connection: Uuid,
    status: Status,
    objects: &[ObjectState],
    facts: &Facts,
    now: DateTime<Utc>,
) -> Health {
    let mut problems = Vec::new();
    let history = format!("/history?connection={connection}");
    let letters = Link {
        href: format!("/dlq?connection={connection}"),
        text: "Dead letters".into(),
    };
    let active = status == Status::Active;

    if status == Status::NeedsReauth {
        problems.push(Problem {
            state: State::Blocked,
            key: "needs_reauth".into(),
            title: "Authorization lost".into(),
            detail: "The CRM revoked or expired Ferry's access: nothing syncs until an owner or \
                     admin reconnects the connection."
                .into(),
            link: Some(Link {
                href: format!("/connections/{connection}"),
                text: "Reconnect".into(),
            }),
        });
    }

    if active {
        // Webhook events: held by the retry gate after failures, or waiting too long.
        let gate_held = held(facts.inbound_retry_at, facts.inbound_failures, now);
        let oldest_wait = facts.oldest_event_at.map(|at| now - at);
        if facts.pending_events > 0 && (gate_held || facts.open_event_letters > 0) {
            let mut detail = held_detail(
                format!(
                    "{} waiting",
                    count_words(facts.pending_events, "webhook event", "webhook events")
                ),
                oldest_wait,
                "processing them failed",
                facts.inbound_failures,
                facts.last_error.as_deref(),
                facts.inbound_retry_at,
                now,
            );
            if facts.open_event_letters > 0 {
                detail.push_str(
                    " Their batch is in the dead-letter queue: replay it once the cause is fixed.",
                );
            }
            detail.push_str(" Until then CRM changes arrive only with the next poll.");
            problems.push(Problem {
                state: State::Blocked,
                key: "events_held".into(),
                title: "Webhook events held".into(),
                detail,
                link: Some(letters.clone()),
            });
        } else if facts.pending_events > 0
            && let Some(wait) = oldest_wait.filter(|w| *w > WAITING_AFTER)
        {
            problems.push(Problem {
                state: State::Overdue,
                key: "events_waiting".into(),
                title: "Webhook events waiting".into(),
                detail: format!(
                    "{} not processed, the oldest for {}. Check that a “ferry work” (or “ferry \
                     all”) process is running.",
                    count_words(facts.pending_events, "webhook event", "webhook events"),
                    span(wait)
                ),
                link: Some(Link {
                    href: history.clone(),
                    text: "Sync history".into(),
                }),
            });
        }

        // Events of records that failed on their own: retried alone while the others go on.
        if facts.retrying_events > 0 {
            let mut detail = format!(
                "{} failed and {} retried on {} own",
                count_words(
                    facts.retrying_events,
                    "webhook event of a record",
                    "webhook events of records"
                ),
                if facts.retrying_events == 1 {
                    "is"
                } else {
                    "are"
                },
                if facts.retrying_events == 1 {
                    "its"
                } else {
                    "their"
                }
            );
            if let Some(error) = &facts.event_error {
                detail.push_str(&format!(" ({})", short(error)));
            }
            detail.push('.');
            if let Some(at) = facts.next_event_retry_at {
                detail.push_str(&format!(" Next try {}.", until(at, now)));
            }
            detail.push_str(" Other events go ahead; records that keep failing are dead-lettered.");
            problems.push(Problem {
                state: State::Degraded,
                key: "events_retrying".into(),
                title: "Webhook events retrying".into(),
                detail,
                link: Some(Link {
                    href: format!("{history}&kind=webhook"),
                    text: "Webhook runs".into(),
                }),
            });
        }

        // Changes to push to the CRM.
        let push_held = held(facts.outbound_retry_at, facts.outbound_failures, now);
        let change_wait = facts.oldest_change_at.map(|at| now - at);
        if facts.pending_changes > 0 && push_held {
            let detail = held_detail(
                format!(
                    "{} to push to the CRM",
                    count_words(facts.pending_changes, "change", "changes")
                ),
                change_wait,
                "pushing failed",
                facts.outbound_failures,
                facts.last_error.as_deref(),
                facts.outbound_retry_at,
                now,
            );
            problems.push(Problem {
                state: State::Blocked,
                key: "outbox_held".into(),
                title: "Pushes to the CRM held".into(),
                detail,
                link: Some(Link {
                    href: format!("{history}&kind=outbound"),
                    text: "Outbound runs".into(),
                }),
            });
        } else if facts.pending_changes > 0
            && let Some(wait) = change_wait.filter(|w| *w > WAITING_AFTER)
        {
            problems.push(Problem {
                state: State::Overdue,
                key: "outbox_waiting".into(),
                title: "Changes waiting to be pushed".into(),
                detail: format!(
                    "{} not pushed to the CRM, the oldest for {}. Check that a “ferry work” (or \
                     “ferry all”) process is running.",
                    count_words(facts.pending_changes, "change", "changes"),
                    span(wait)
                ),
                link: Some(Link {
                    href: format!("{history}&kind=outbound"),
                    text: "Outbound runs".into(),
                }),
            });
        }

        // Each object's poll: failing (and backing off), or overdue.
        for o in objects {
            let link = Some(Link {
                href: format!("{history}&object={}", o.object),
                text: format!("{} runs", capitalised(&o.object)),
            });
            if o.failing() {
                let retry_soon = o.next_poll_at <= now + Duration::seconds(60);
                let state = if o.failures >= 2 || !retry_soon || o.overdue(now) {
                    State::Blocked
                } else {
                    State::Degraded
                };
                let mut detail = format!("Polling {}s failed", o.object);
                if o.failures > 0 {
                    detail.push_str(&format!(" {} times in a row", o.failures));
                }
                if let Some(error) = &o.last_error {
                    detail.push_str(&format!(": {}", short(error)));
                }
                match o.late(now).filter(|_| o.overdue(now)) {
                    Some(late) => detail.push_str(&format!(
                        ". The next try is overdue by {}: check that a “ferry work” (or “ferry \
                         all”) process is running.",
                        span(late)
                    )),
                    None => detail.push_str(&format!(
                        ". Next try {}{}.",
                        until(o.next_poll_at, now),
                        if retry_soon { "" } else { " (backing off)" }
                    )),
                }
                problems.push(Problem {
                    state,
                    key: format!("poll_failing:{}", o.object),
                    title: format!("{} poll failing", capitalised(&o.object)),
                    detail,
                    link,
                });
            } else if o.overdue(now) {
                let late = o.late(now).unwrap_or_default();
                problems.push(Problem {
                    state: State::Overdue,
                    key: format!("poll_overdue:{}", o.object),
                    title: format!("{} poll overdue", capitalised(&o.object)),
                    detail: format!(
                        "The poll of {}s is overdue by {}: no worker has run it. Check that a \
                         “ferry work” (or “ferry all”) process is running and reaches Redis.",
                        o.object,
                        span(late)
                    ),
                    link,
                });
            }
        }
    }

    if facts.open_letters > 0 {
        problems.push(Problem {
            state: State::Degraded,
            key: "dead_letters".into(),
            title: "Open dead letters".into(),
            detail: format!(
                "{} could not be synced and wait{} for someone to replay or discard {}.",
                count_words(facts.open_letters, "record or batch", "records or batches"),
                if facts.open_letters == 1 { "s" } else { "" },
                if facts.open_letters == 1 {
                    "it"
                } else {
                    "them"
                }
            ),
            link: Some(letters.clone()),
        });
    }
    let rate_high = facts.problem_records > 0
        && facts.problem_records * 100 >= DEGRADED_PERCENT * facts.touched.max(1);
    if rate_high {
        let touched = facts.touched.max(facts.problem_records);
        problems.push(Problem {
            state: State::Degraded,
            key: "error_rate".into(),
            title: "Records failing".into(),
            detail: format!(
                "{} of {} records touched in the last hour failed or were dead-lettered ({} %).",
                facts.problem_records,
                touched,
                (facts.problem_records * 100 / touched.max(1)).clamp(0, 100)
            ),
            link: Some(Link {
                href: format!("{history}&outcome=partial"),
                text: "Partial runs".into(),
            }),
        });
    }
    let polls_failing = problems.iter().any(|p| p.key.starts_with("poll_failing"));
    if facts.failed_runs > 0 && !polls_failing {
        let mut detail = format!(
            "{} in the last hour failed",
            count_words(facts.failed_runs, "run", "runs")
        );
        if let Some(error) = &facts.failed_run_error {
            detail.push_str(&format!(" (the last: {})", short(error)));
        }
        detail.push('.');
        problems.push(Problem {
            state: State::Degraded,
            key: "failed_runs".into(),
            title: "Runs failed".into(),
            detail,
            link: Some(Link {
                href: format!("{history}&outcome=failed"),
                text: "Failed runs".into(),
            }),
        });
    }

    problems.sort_by_key(|p| std::cmp::Reverse(p.state));
    Health {
        connection,
        status,
        state: problems
            .iter()
            .map(|p| p.state)
            .max()
            .unwrap_or(State::Healthy),
        problems,
    }
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or(String::new(), |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// Reads what [`assess`] needs about one connection of the tenant.
pub async fn facts(tx: &mut TenantTx, connection: Uuid) -> Result<Facts, Error> {
    let tenant = tx.tenant_id();
    let row = sqlx::query!(
        r#"SELECT s.inbound_retry_at, s.inbound_failures, s.outbound_retry_at,
                  s.outbound_failures, s.last_error,
                  (SELECT count(*) FROM (SELECT 1 FROM inbound_events e
                                         WHERE e.tenant_id = s.tenant_id
                                           AND e.connection_id = s.connection_id
                                           AND e.status = 'pending'
                                           AND (e.retry_at IS NULL OR e.retry_at <= now())
                                         LIMIT $3) p)
                      AS "pending_events!",
                  (SELECT e.received_at FROM inbound_events e
                   WHERE e.tenant_id = s.tenant_id AND e.connection_id = s.connection_id
                     AND e.status = 'pending'
                     AND (e.retry_at IS NULL OR e.retry_at <= now())
                   ORDER BY e.id LIMIT 1) AS oldest_event_at,
                  (SELECT count(*) FROM (SELECT 1 FROM inbound_events e
                                         WHERE e.tenant_id = s.tenant_id
                                           AND e.connection_id = s.connection_id
                                           AND e.status = 'pending' AND e.retry_at > now()
                                         LIMIT $3) p)
                      AS "retrying_events!",
                  (SELECT min(e.retry_at) FROM inbound_events e
                   WHERE e.tenant_id = s.tenant_id AND e.connection_id = s.connection_id
                     AND e.status = 'pending' AND e.retry_at > now()) AS next_event_retry_at,
                  (SELECT e.error FROM inbound_events e
                   WHERE e.tenant_id = s.tenant_id AND e.connection_id = s.connection_id
                     AND e.status = 'pending' AND e.retry_at > now() AND e.error IS NOT NULL
                   ORDER BY e.id DESC LIMIT 1) AS event_error,
                  (SELECT count(*) FROM (SELECT 1 FROM outbox o
                                         WHERE o.tenant_id = s.tenant_id
                                           AND (o.tx, o.id) > (s.outbox_tx, s.outbox_position)
                                         LIMIT $3) p) AS "pending_changes!",
                  (SELECT o.created_at FROM outbox o
                   WHERE o.tenant_id = s.tenant_id
                     AND (o.tx, o.id) > (s.outbox_tx, s.outbox_position)
                   ORDER BY o.tx, o.id LIMIT 1) AS oldest_change_at
           FROM sync_connections s
           WHERE s.tenant_id = $1 AND s.connection_id = $2"#,
        tenant.0,
        connection,
        COUNT_CAP
    )
    .fetch_optional(&mut **tx)
    .await?;
    let letters = sqlx::query!(
        r#"SELECT count(*) AS "open!",
                  count(*) FILTER (WHERE scope = 'events') AS "events!"
           FROM dead_letters
           WHERE tenant_id = $1 AND connection_id = $2 AND status = 'open'"#,
        tenant.0,
        connection
    )
    .fetch_one(&mut **tx)
    .await?;
    let since = Utc::now() - RECENT;
    let recent = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE outcome = 'failed' AND error IS NOT NULL)
                      AS "failed_runs!",
                  (array_agg(error ORDER BY id DESC) FILTER (WHERE error IS NOT NULL))[1]
                      AS failed_run_error,
                  coalesce(sum(created + updated + unchanged + skipped + failed), 0)::bigint
                      AS "touched!",
                  coalesce(sum(GREATEST(failed, dead_lettered)), 0)::bigint AS "problems!"
           FROM sync_runs
           WHERE tenant_id = $1 AND connection_id = $2 AND started_at >= $3"#,
        tenant.0,
        connection,
        since
    )
    .fetch_one(&mut **tx)
    .await?;
    let mut facts = Facts {
        open_letters: letters.open,
        open_event_letters: letters.events,
        failed_runs: recent.failed_runs,
        failed_run_error: recent.failed_run_error,
        touched: recent.touched,
        problem_records: recent.problems,
        ..Facts::default()
    };
    if let Some(r) = row {
        facts.inbound_retry_at = r.inbound_retry_at;
        facts.inbound_failures = r.inbound_failures;
        facts.outbound_retry_at = r.outbound_retry_at;
        facts.outbound_failures = r.outbound_failures;
        facts.last_error = r.last_error;
        facts.pending_events = r.pending_events;
        facts.oldest_event_at = r.oldest_event_at;
        facts.retrying_events = r.retrying_events;
        facts.next_event_retry_at = r.next_event_retry_at;
        facts.event_error = r.event_error;
        facts.pending_changes = r.pending_changes;
        facts.oldest_change_at = r.oldest_change_at;
    }
    Ok(facts)
}

/// One connection's health now (its cursors read too).
pub async fn health(
    tx: &mut TenantTx,
    connection: Uuid,
    status: Status,
) -> Result<(Health, Vec<ObjectState>), Error> {
    let objects = super::objects(tx, connection).await?;
    let facts = facts(tx, connection).await?;
    Ok((
        assess(connection, status, &objects, &facts, Utc::now()),
        objects,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn cursor(object: &str, next_poll_at: DateTime<Utc>) -> ObjectState {
        ObjectState {
            object: object.into(),
            watermark: None,
            watermark_id: None,
            backfilled_at: Some(next_poll_at),
            backfill_done: 0,
            backfill_total: None,
            next_poll_at,
            failures: 0,
            last_run_id: None,
            last_run: None,
            last_success_at: None,
            last_error: None,
            last_error_at: None,
        }
    }

    #[test]
    fn a_connection_with_nothing_wrong_is_active_and_green() {
        let now = at("2026-12-03T12:00:00Z");
        let objects = [cursor("contact", now + Duration::seconds(30))];
        let health = assess(
            Uuid::nil(),
            Status::Active,
            &objects,
            &Facts::default(),
            now,
        );
        assert_eq!(health.state, State::Healthy);
        assert_eq!(health.badge_label(), "Active");
        assert_eq!(health.badge_class(), "badge-ok");
        // A poll just due is not a problem yet, and says so.
        let due = cursor("contact", now - Duration::seconds(24));
        assert_eq!(due.late_words(now).as_deref(), Some("overdue by 24 s"));
        let health = assess(Uuid::nil(), Status::Active, &[due], &Facts::default(), now);
        assert_eq!(health.state, State::Healthy);
    }

    #[test]
    fn a_poll_clearly_past_due_is_overdue_with_the_delay_in_words() {
        let now = at("2026-12-03T12:00:00Z");
        let objects = [cursor("deal", now - Duration::seconds(200))];
        let health = assess(
            Uuid::nil(),
            Status::Active,
            &objects,
            &Facts::default(),
            now,
        );
        assert_eq!(health.state, State::Overdue);
        assert_eq!(health.badge_label(), "Overdue");
        assert_eq!(health.badge_class(), "badge-warn");
        assert_eq!(health.problems[0].key, "poll_overdue:deal");
        assert!(
            health.problems[0].detail.contains("overdue by 3 min"),
            "{:?}",
            health.problems
        );
        // Not while paused: nothing is meant to run.
        let paused = assess(
            Uuid::nil(),
            Status::Paused,
            &objects,
            &Facts::default(),
            now,
        );
        assert!(paused.healthy());
        assert_eq!(paused.badge_label(), "Paused");
    }

    #[test]
    fn events_held_by_the_retry_gate_block_the_connection_and_say_until_when() {
        let now = at("2026-12-03T12:00:00Z");
        let facts = Facts {
            inbound_retry_at: Some(now + Duration::minutes(50)),
            inbound_failures: 0,
            last_error: Some("CRM answered 503".into()),
            pending_events: 3,
            oldest_event_at: Some(now - Duration::minutes(7)),
            open_letters: 1,
            open_event_letters: 1,
            ..Facts::default()
        };
        let health = assess(Uuid::nil(), Status::Active, &[], &facts, now);
        assert_eq!(health.state, State::Blocked);
        assert_eq!(health.badge_label(), "Blocked");
        assert_eq!(health.badge_class(), "badge-danger");
        let held = &health.problems[0];
        assert_eq!(held.key, "events_held");
        assert!(
            held.detail
                .contains("3 webhook events waiting (the oldest for 7 min)")
        );
        assert!(held.detail.contains("CRM answered 503"));
        assert!(
            held.detail.contains("Next try in 50 min"),
            "{}",
            held.detail
        );
        assert!(health.problems.iter().any(|p| p.key == "dead_letters"));
        // A worker's lease (a minute ahead, no failures) is not a held gate.
        let leased = Facts {
            inbound_retry_at: Some(now + Duration::seconds(40)),
            pending_events: 3,
            oldest_event_at: Some(now - Duration::seconds(5)),
            ..Facts::default()
        };
        assert!(assess(Uuid::nil(), Status::Active, &[], &leased, now).healthy());
        // Events nobody processes for minutes are overdue.
        let stuck = Facts {
            pending_events: 2,
            oldest_event_at: Some(now - Duration::minutes(4)),
            ..Facts::default()
        };
        let health = assess(Uuid::nil(), Status::Active, &[], &stuck, now);
        assert_eq!(health.state, State::Overdue);
        assert_eq!(health.problems[0].key, "events_waiting");
    }

    #[test]
    fn a_failing_poll_and_a_held_outbox_block_and_dead_letters_degrade() {
        let now = at("2026-12-03T12:00:00Z");
        let mut failing = cursor("contact", now + Duration::minutes(5));
        failing.failures = 4;
        failing.last_error = Some("HubSpot answered 502".into());
        let facts = Facts {
            outbound_retry_at: Some(now + Duration::minutes(2)),
            outbound_failures: 3,
            pending_changes: 12,
            oldest_change_at: Some(now - Duration::minutes(9)),
            ..Facts::default()
        };
        let health = assess(Uuid::nil(), Status::Active, &[failing], &facts, now);
        assert_eq!(health.state, State::Blocked);
        let keys: Vec<&str> = health.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["outbox_held", "poll_failing:contact"]);
        assert!(
            health.problems[1]
                .detail
                .contains("failed 4 times in a row: HubSpot answered 502")
        );
        assert!(
            health.problems[1]
                .detail
                .contains("Next try in 5 min (backing off)")
        );

        let letters = Facts {
            open_letters: 2,
            touched: 100,
            problem_records: 2,
            ..Facts::default()
        };
        let health = assess(Uuid::nil(), Status::Active, &[], &letters, now);
        assert_eq!(health.state, State::Degraded);
        assert_eq!(health.badge_label(), "Degraded");
        assert_eq!(health.problems.len(), 1, "2 % is under the error-rate bar");
        let link = health.problems[0].link.as_ref().map(|l| l.href.as_str());
        assert_eq!(
            link,
            Some("/dlq?connection=00000000-0000-0000-0000-000000000000")
        );
        let failing = Facts {
            touched: 40,
            problem_records: 4,
            ..Facts::default()
        };
        let health = assess(Uuid::nil(), Status::Active, &[], &failing, now);
        assert!(
            health.problems[0].detail.contains("4 of 40 records"),
            "{:?}",
            health.problems
        );
        // Authorization lost: blocked whatever else holds.
        let reauth = assess(
            Uuid::nil(),
            Status::NeedsReauth,
            &[],
            &Facts::default(),
            now,
        );
        assert_eq!(reauth.state, State::Blocked);
        assert_eq!(reauth.badge_label(), "Needs reconnecting");
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(Duration::seconds(24)), "24 s");
        assert_eq!(span(Duration::seconds(200)), "3 min");
        assert_eq!(span(Duration::seconds(7_500)), "2 h 5 min");
        assert_eq!(span(Duration::hours(3)), "3 h");
        assert_eq!(span(Duration::days(3)), "3 days");
    }
}

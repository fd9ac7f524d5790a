//! `/`: the tenant at a glance: each connection's health over the last day (with small charts
//! drawn as plain SVG on the server), open alerts, a banner for connections that need
//! reconnecting, and the tenant's users and API keys.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use tower_sessions::Session;

use super::clock::Clock;
use super::{Chrome, render};
use crate::alerts::delivery::label;
use crate::alerts::health::{self, Health, Hour, RunTally, Summary};
use crate::app::AppState;
use crate::connections::{self, Connection, Status, alerts};
use crate::error::Error;
use crate::tenancy::accounts::{self, User};
use crate::tenancy::api_keys::{self, ApiKey};
use crate::tenancy::login::CurrentUser;

/// One bar of a chart (SVG user units).
pub struct Bar {
    pub x: u32,
    pub y: u32,
    pub height: u32,
    pub title: String,
}

/// A bar chart of one value per hour, drawn by the template as `<rect>`s.
pub struct Chart {
    pub label: String,
    pub bars: Vec<Bar>,
    pub max: i64,
}

impl Chart {
    pub const WIDTH: u32 = 240;
    pub const HEIGHT: u32 = 48;
    pub const BAR: u32 = 8;

    pub fn width(&self) -> u32 {
        Self::WIDTH
    }

    pub fn height(&self) -> u32 {
        Self::HEIGHT
    }

    pub fn bar_width(&self) -> u32 {
        Self::BAR
    }

    fn new(hours: &[Hour], clock: &Clock, what: &str, value: impl Fn(&Hour) -> i64) -> Chart {
        let max = hours.iter().map(&value).max().unwrap_or(0);
        let step = Self::WIDTH / (hours.len().max(1) as u32);
        let bars = hours
            .iter()
            .enumerate()
            .map(|(i, hour)| {
                let v = value(hour);
                let height = if max > 0 && v > 0 {
                    ((v as f64 / max as f64) * f64::from(Self::HEIGHT - 2)).ceil() as u32
                } else {
                    0
                };
                let from = hour.start.map(|s| clock.time_of_day(s)).unwrap_or_default();
                Bar {
                    x: i as u32 * step + (step - Self::BAR) / 2,
                    y: Self::HEIGHT - height,
                    height,
                    title: format!("{from}: {v} {what}"),
                }
            })
            .collect();
        let total: i64 = hours.iter().map(&value).sum();
        Chart {
            label: format!(
                "{what} per hour over the last 24 hours: {total} in all, at most {max} in one hour"
            ),
            bars,
            max,
        }
    }
}

/// A connection's row on the dashboard.
pub struct Row {
    pub connection: Connection,
    pub summary: Summary,
    /// Its state and why (the badge says "Active" only when nothing is wrong).
    pub health: Health,
    /// Its runs of the last 24 hours by outcome.
    pub runs: RunTally,
    pub throughput: Chart,
    pub errors: Chart,
}

impl Row {
    pub fn charts(&self) -> [&Chart; 2] {
        [&self.throughput, &self.errors]
    }

    /// Token health in words (the expiry itself is printed beside it).
    pub fn token(&self, clock: &Clock) -> String {
        match (self.connection.status, self.connection.expires_at) {
            (Status::NeedsReauth, _) => "Authorization lost".into(),
            (Status::Disconnected, _) | (_, None) => "No token".into(),
            (_, Some(at)) if at < clock.now() => format!("Expired {}", clock.ago(at)),
            (_, Some(at)) => format!("Valid, expires {}", clock.ago(at)),
        }
    }

    pub fn token_ok(&self, clock: &Clock) -> bool {
        self.connection.status == Status::Active
            && self.summary.refresh_failures == 0
            && self
                .connection
                .expires_at
                .is_some_and(|at| at > clock.now())
    }
}

/// An open alert as the dashboard shows it.
pub struct AlertLine {
    pub label: String,
    pub alert: alerts::Alert,
}

pub struct ProviderChoice {
    pub key: String,
    pub name: String,
}

#[derive(Template)]
#[template(path = "dashboard/index.html")]
struct DashboardPage {
    chrome: Chrome,
    rows: Vec<Row>,
    needs_reauth: Vec<Connection>,
    alerts: Vec<AlertLine>,
    providers: Vec<ProviderChoice>,
    users: Vec<User>,
    keys: Vec<ApiKey>,
    active_keys: usize,
}

pub async fn index(
    State(state): State<AppState>,
    session: Session,
    user: CurrentUser,
) -> Result<Response, Error> {
    let mut tx = state.db.tenant(user.tenant_id).await?;
    let users = accounts::list_users(&mut tx).await?;
    let keys = api_keys::list(&mut tx).await?;
    let connections = connections::list(&mut tx).await?;
    let mut summaries = health::summaries(&mut tx).await?;
    let mut states = Vec::with_capacity(connections.len());
    for connection in &connections {
        let (state, _) = health::health(&mut tx, connection.id, connection.status).await?;
        let runs = health::run_tally(&mut tx, connection.id).await?;
        states.push((state, runs));
    }
    let open = alerts::open(&mut tx).await?;
    tx.commit().await?;
    let chrome = Chrome::for_user(&session, &user, "Dashboard", "dashboard").await?;
    let active_keys = keys.iter().filter(|k| k.revoked_at.is_none()).count();
    let mut rows = Vec::new();
    for (mut connection, (health, runs)) in connections.into_iter().zip(states) {
        let Some(at) = summaries.iter().position(|s| s.connection == connection.id) else {
            continue;
        };
        let summary = summaries.swap_remove(at);
        connection.provider = provider_name(&state, &connection.provider);
        rows.push(Row {
            throughput: Chart::new(&summary.hours, &chrome.clock, "records synced", |h| {
                h.inbound + h.outbound
            }),
            errors: Chart::new(&summary.hours, &chrome.clock, "failures", |h| h.failed),
            summary,
            connection,
            health,
            runs,
        });
    }
    let needs_reauth = rows
        .iter()
        .filter(|r| r.connection.status == Status::NeedsReauth)
        .map(|r| r.connection.clone())
        .collect();
    let providers = state
        .providers
        .all()
        .map(|p| ProviderChoice {
            key: p.key().to_string(),
            name: p.display_name().to_string(),
        })
        .collect();
    render(&DashboardPage {
        chrome,
        rows,
        needs_reauth,
        alerts: open
            .into_iter()
            .map(|alert| AlertLine {
                label: label(&alert.kind).to_string(),
                alert,
            })
            .collect(),
        providers,
        users,
        keys,
        active_keys,
    })
}

fn provider_name(state: &AppState, key: &str) -> String {
    state
        .providers
        .get(key)
        .map(|p| p.display_name().to_string())
        .unwrap_or_else(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_busiest_hour() {
        let hours: Vec<Hour> = (0..24)
            .map(|i| Hour {
                inbound: if i == 23 { 10 } else { i64::from(i == 0) * 5 },
                ..Hour::default()
            })
            .collect();
        let clock = Clock::new(chrono_tz::Tz::UTC, chrono::Utc::now());
        let chart = Chart::new(&hours, &clock, "records synced", |h| h.inbound);
        assert_eq!(chart.max, 10);
        assert_eq!(chart.bars.len(), 24);
        assert_eq!(chart.bars[23].height, Chart::HEIGHT - 2);
        assert_eq!(chart.bars[0].height, (Chart::HEIGHT - 2) / 2);
        assert_eq!(chart.bars[5].height, 0);
        assert!(chart.label.contains("15 in all"));
    }

    #[test]
    fn bar_titles_name_the_hour_in_the_tenants_zone() {
        let start = chrono::DateTime::parse_from_rfc3339("2026-11-23T13:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let hours = [Hour {
            start: Some(start),
            inbound: 4,
            ..Hour::default()
        }];
        let clock = Clock::new(chrono_tz::Asia::Kolkata, start);
        let chart = Chart::new(&hours, &clock, "records synced", |h| h.inbound);
        assert_eq!(chart.bars[0].title, "18:30 IST: 4 records synced");
    }
}

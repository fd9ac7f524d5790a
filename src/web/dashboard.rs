//! `/`: the tenant at a glance: each connection's health over the last day (with small charts
//! drawn as plain SVG on the server), open alerts, a banner for connections that need
//! reconnecting, and the tenant's users and API keys.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use tower_sessions::Session;

use super::{Chrome, render};
use crate::alerts::delivery::label;
use crate::alerts::health::{self, Hour, Summary};
use crate::app::AppState;
use crate::connections::{self, Connection, Status, alerts};
use crate::error::Error;
use crate::tenancy::accounts::{self, User};
use crate::tenancy::api_keys::{self, ApiKey};
use crate::tenancy::login::CurrentUser;

/// A point in time, however many references deep (templates pass `&&DateTime`).
pub(crate) trait Moment {
    fn moment(&self) -> DateTime<Utc>;
}

impl Moment for DateTime<Utc> {
    fn moment(&self) -> DateTime<Utc> {
        *self
    }
}

impl<T: Moment + ?Sized> Moment for &T {
    fn moment(&self) -> DateTime<Utc> {
        (**self).moment()
    }
}

/// "3 min ago", "in 2 h", "just now": the relative hint shown next to (or instead of) a time.
pub(crate) fn ago(at: impl Moment) -> String {
    let seconds = (Utc::now() - at.moment()).num_seconds();
    let (span, future) = if seconds < 0 {
        (-seconds, true)
    } else {
        (seconds, false)
    };
    let amount = match span {
        0..=9 => return "just now".into(),
        10..=59 => format!("{span} s"),
        60..=3_599 => format!("{} min", span / 60),
        3_600..=86_399 => format!("{} h", span / 3_600),
        _ => format!("{} d", span / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

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

    fn new(hours: &[Hour], what: &str, value: impl Fn(&Hour) -> i64) -> Chart {
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
                let from = hour
                    .start
                    .map(|s| s.format("%H:00").to_string())
                    .unwrap_or_default();
                Bar {
                    x: i as u32 * step + (step - Self::BAR) / 2,
                    y: Self::HEIGHT - height,
                    height,
                    title: format!("{from} UTC: {v} {what}"),
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
    pub throughput: Chart,
    pub errors: Chart,
}

impl Row {
    pub fn charts(&self) -> [&Chart; 2] {
        [&self.throughput, &self.errors]
    }

    /// Token health in words.
    pub fn token(&self) -> String {
        match (self.connection.status, self.connection.expires_at) {
            (Status::NeedsReauth, _) => "Authorization lost".into(),
            (Status::Disconnected, _) | (_, None) => "No token".into(),
            (_, Some(at)) if at < Utc::now() => format!("Expired {}", ago(at)),
            (_, Some(at)) => format!("Valid, expires {}", ago(at)),
        }
    }

    pub fn token_ok(&self) -> bool {
        self.connection.status == Status::Active
            && self.summary.refresh_failures == 0
            && self.connection.expires_at.is_some_and(|at| at > Utc::now())
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
    let open = alerts::open(&mut tx).await?;
    tx.commit().await?;
    let active_keys = keys.iter().filter(|k| k.revoked_at.is_none()).count();
    let mut rows = Vec::new();
    for mut connection in connections {
        let Some(at) = summaries.iter().position(|s| s.connection == connection.id) else {
            continue;
        };
        let summary = summaries.swap_remove(at);
        connection.provider = provider_name(&state, &connection.provider);
        rows.push(Row {
            throughput: Chart::new(&summary.hours, "records synced", |h| h.inbound + h.outbound),
            errors: Chart::new(&summary.hours, "failures", |h| h.failed),
            summary,
            connection,
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
        chrome: Chrome::for_user(&session, &user, "Dashboard", "dashboard").await?,
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
    fn relative_times_read_naturally() {
        let now = Utc::now();
        assert_eq!(ago(now), "just now");
        assert_eq!(ago(now - chrono::Duration::minutes(3)), "3 min ago");
        assert_eq!(ago(now - chrono::Duration::hours(5)), "5 h ago");
        assert_eq!(
            ago(now + chrono::Duration::minutes(2) + chrono::Duration::seconds(5)),
            "in 2 min"
        );
        assert_eq!(ago(now - chrono::Duration::days(3)), "3 d ago");
    }

    #[test]
    fn bars_scale_to_the_busiest_hour() {
        let hours: Vec<Hour> = (0..24)
            .map(|i| Hour {
                inbound: if i == 23 { 10 } else { i64::from(i == 0) * 5 },
                ..Hour::default()
            })
            .collect();
        let chart = Chart::new(&hours, "records synced", |h| h.inbound);
        assert_eq!(chart.max, 10);
        assert_eq!(chart.bars.len(), 24);
        assert_eq!(chart.bars[23].height, Chart::HEIGHT - 2);
        assert_eq!(chart.bars[0].height, (Chart::HEIGHT - 2) / 2);
        assert_eq!(chart.bars[5].height, 0);
        assert!(chart.label.contains("15 in all"));
    }
}

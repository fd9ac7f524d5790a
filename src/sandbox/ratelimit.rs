//! HubSpot's limits for public apps: a rolling 10-second window per portal, a separate
//! per-second limit on search, and an optional daily budget that resets at midnight (UTC here).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;

use super::config::RateLimitConfig;
use super::error::{ApiError, correlation_id};
use super::model::lock;

const WINDOW: Duration = Duration::from_secs(10);
const SEARCH_WINDOW: Duration = Duration::from_secs(1);

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    TenSecondlyRolling,
    Secondly,
    Daily,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            // The contract names only two policies; a refused search is told to wait as well.
            Policy::TenSecondlyRolling | Policy::Secondly => "TEN_SECONDLY_ROLLING",
            Policy::Daily => "DAILY",
        }
    }

    /// HubSpot's 429 body.
    pub fn error(self) -> ApiError {
        let message = match self {
            Policy::Daily => "You have reached your daily limit.",
            Policy::Secondly => "You have reached your secondly limit.",
            Policy::TenSecondlyRolling => "You have reached your ten_secondly_rolling limit.",
        };
        ApiError::raw(
            StatusCode::TOO_MANY_REQUESTS,
            message,
            json!({
                "status": "error",
                "message": message,
                "errorType": "RATE_LIMIT",
                "correlationId": correlation_id(),
                "policyName": self.name(),
            }),
        )
    }
}

/// The `X-HubSpot-RateLimit-*` headers of an allowed request.
#[derive(Debug, Clone)]
pub struct LimitHeaders {
    max: u32,
    remaining: u32,
    daily: Option<(u64, u64)>,
}

impl LimitHeaders {
    pub fn apply(&self, headers: &mut HeaderMap) {
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set("x-hubspot-ratelimit-max", self.max.to_string());
        set("x-hubspot-ratelimit-remaining", self.remaining.to_string());
        set(
            "x-hubspot-ratelimit-interval-milliseconds",
            WINDOW.as_millis().to_string(),
        );
        if let Some((daily, left)) = self.daily {
            set("x-hubspot-ratelimit-daily", daily.to_string());
            set("x-hubspot-ratelimit-daily-remaining", left.to_string());
        }
    }
}

#[derive(Default)]
struct Usage {
    window: VecDeque<Instant>,
    search: VecDeque<Instant>,
    day: i64,
    daily_used: u64,
    refused: Refused,
}

/// The 429s a portal was answered since the sandbox started, by the limit that refused them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refused {
    pub ten_secondly_rolling: u64,
    pub secondly: u64,
    pub daily: u64,
}

impl Refused {
    pub fn total(&self) -> u64 {
        self.ten_secondly_rolling + self.secondly + self.daily
    }

    fn count(&mut self, policy: Policy) -> Policy {
        match policy {
            Policy::TenSecondlyRolling => self.ten_secondly_rolling += 1,
            Policy::Secondly => self.secondly += 1,
            Policy::Daily => self.daily += 1,
        }
        policy
    }
}

pub struct RateLimiter {
    config: RateLimitConfig,
    usage: Mutex<HashMap<u64, Usage>>,
}

fn trim(queue: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while queue
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        queue.pop_front();
    }
}

fn today() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(86_400)
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        RateLimiter {
            config,
            usage: Mutex::new(HashMap::new()),
        }
    }

    /// The 429s `portal` was answered so far.
    pub fn refused(&self, portal: u64) -> Refused {
        lock(&self.usage)
            .get(&portal)
            .map(|u| u.refused)
            .unwrap_or_default()
    }

    /// Counts one request of `portal`. Search requests are limited per second and carry no
    /// headers (`Ok(None)`); others get the headers to send. Refused requests do not spend the
    /// budget; they are counted apart (see [`RateLimiter::refused`]).
    pub fn check(&self, portal: u64, search: bool) -> Result<Option<LimitHeaders>, Policy> {
        let now = Instant::now();
        let mut usage = lock(&self.usage);
        let u = usage.entry(portal).or_default();
        Self::spend(&self.config, u, now, search).map_err(|policy| u.refused.count(policy))
    }

    fn spend(
        config: &RateLimitConfig,
        u: &mut Usage,
        now: Instant,
        search: bool,
    ) -> Result<Option<LimitHeaders>, Policy> {
        let day = today();
        if u.day != day {
            u.day = day;
            u.daily_used = 0;
        }
        if let Some(daily) = config.daily
            && u.daily_used >= daily
        {
            return Err(Policy::Daily);
        }
        if search {
            let max = config.search_per_second as usize;
            if max > 0 {
                trim(&mut u.search, now, SEARCH_WINDOW);
                if u.search.len() >= max {
                    return Err(Policy::Secondly);
                }
                u.search.push_back(now);
            }
            u.daily_used += 1;
            return Ok(None);
        }
        let max = config.per_ten_seconds;
        let remaining = if max > 0 {
            trim(&mut u.window, now, WINDOW);
            if u.window.len() >= max as usize {
                return Err(Policy::TenSecondlyRolling);
            }
            u.window.push_back(now);
            max.saturating_sub(u32::try_from(u.window.len()).unwrap_or(u32::MAX))
        } else {
            u32::MAX
        };
        u.daily_used += 1;
        Ok(Some(LimitHeaders {
            max: if max > 0 { max } else { u32::MAX },
            remaining,
            daily: config.daily.map(|d| (d, d.saturating_sub(u.daily_used))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_429_is_counted_per_portal_by_the_limit_that_refused_it() {
        let limits = RateLimiter::new(RateLimitConfig {
            per_ten_seconds: 2,
            search_per_second: 1,
            daily: None,
        });
        for _ in 0..3 {
            let _ = limits.check(7, false);
        }
        for _ in 0..4 {
            let _ = limits.check(7, true);
        }
        assert!(
            limits.check(8, true).is_ok(),
            "another portal has its own budget"
        );
        let refused = limits.refused(7);
        assert_eq!(
            (
                refused.ten_secondly_rolling,
                refused.secondly,
                refused.daily
            ),
            (1, 3, 0)
        );
        assert_eq!(refused.total(), 4);
        assert_eq!(limits.refused(8), Refused::default());
    }
}

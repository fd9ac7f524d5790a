//! One request budget per HubSpot account, shared by every Ferry process through Redis, so syncs,
//! pushes and webhook fetches together stay inside HubSpot's limits — and HubSpot's own 429s feed
//! back into it.
//!
//! HubSpot allows 110 requests per rolling 10 s per installing account and, separately, 5 search
//! requests per second. We budget a little under both (HubSpot wants errors under 5% of calls, so
//! we throttle before it has to). Each budget is a sliding-window log in a Redis sorted set,
//! checked and updated atomically by one Lua script using Redis's clock.

use std::time::Duration;

use chrono::{Datelike as _, TimeZone as _, Utc};

use crate::kv::Kv;

/// Which budget a call spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Every CRM call except search.
    General,
    /// `POST /crm/v3/objects/{object}/search`.
    Search,
}

/// The policy a HubSpot 429 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    TenSecondlyRolling,
    Daily,
    /// Search (which sends no rate-limit headers) or an unnamed policy.
    Other,
}

impl Policy {
    pub fn parse(name: Option<&str>) -> Policy {
        match name {
            Some("TEN_SECONDLY_ROLLING") => Policy::TenSecondlyRolling,
            Some("DAILY") => Policy::Daily,
            _ => Policy::Other,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub general: u32,
    pub general_window: Duration,
    pub search: u32,
    pub search_window: Duration,
}

impl Default for Limits {
    /// 100 per 10 s (HubSpot: 110) and 4 searches per second (HubSpot: 5).
    fn default() -> Limits {
        Limits {
            general: 100,
            general_window: Duration::from_secs(10),
            search: 4,
            search_window: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The account's daily budget is spent, or the wait would be longer than callers should block.
    #[error("rate limited for {0:?}")]
    Exhausted(Duration),
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
}

/// An account's budget use at one moment (read-only; see [`Limiter::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Calls in the current general window, and the budget of that window.
    pub general: u32,
    pub general_limit: u32,
    pub general_window: Duration,
    /// Searches in the current search window, and their budget.
    pub search: u32,
    pub search_limit: u32,
    pub search_window: Duration,
    /// How long calls stay paused after a 429 (zero when they are not).
    pub paused_for: Duration,
}

#[derive(Debug, Clone)]
pub struct Limiter {
    kv: Kv,
    limits: Limits,
}

/// Callers wait at most this long for a slot; longer waits are handed back as retry-later.
const MAX_WAIT: Duration = Duration::from_secs(15);

impl Limiter {
    pub fn new(kv: Kv, limits: Limits) -> Limiter {
        Limiter { kv, limits }
    }

    fn keys(&self, account: &str, bucket: Bucket) -> (String, String, u32, Duration) {
        let (name, limit, window) = match bucket {
            Bucket::General => ("general", self.limits.general, self.limits.general_window),
            Bucket::Search => ("search", self.limits.search, self.limits.search_window),
        };
        (
            format!("rl:hubspot:{account}:{name}"),
            format!("rl:hubspot:{account}:blocked"),
            limit,
            window,
        )
    }

    /// Waits for a slot in the account's budget and takes it.
    pub async fn acquire(&self, account: &str, bucket: Bucket) -> Result<(), LimitError> {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let wait = self.try_acquire(account, bucket).await?;
            if wait.is_zero() {
                return Ok(());
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(LimitError::Exhausted(wait));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a slot if one is free now; otherwise says how long until one is.
    pub async fn try_acquire(&self, account: &str, bucket: Bucket) -> Result<Duration, LimitError> {
        let (window_key, blocked_key, limit, window) = self.keys(account, bucket);
        let script = redis::Script::new(
            r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
            if blocked > now then return blocked - now end
            local limit = tonumber(ARGV[1])
            local window = tonumber(ARGV[2])
            redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
            if redis.call('ZCARD', KEYS[1]) < limit then
                redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
                redis.call('PEXPIRE', KEYS[1], window + 1000)
                return 0
            end
            local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
            return math.max(1, tonumber(oldest[2]) + window - now)
            ",
        );
        let mut conn = self.kv.connection();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let wait_ms: i64 = script
            .key(self.kv.key(&window_key))
            .key(self.kv.key(&blocked_key))
            .arg(limit)
            .arg(u64::try_from(window.as_millis()).unwrap_or(10_000))
            .arg(nonce)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        Ok(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)))
    }

    /// How much of the account's budget is spent right now, without spending any (for the
    /// connection page).
    pub async fn usage(&self, account: &str) -> Result<Usage, LimitError> {
        let (general_key, blocked_key, general_limit, general_window) =
            self.keys(account, Bucket::General);
        let (search_key, _, search_limit, search_window) = self.keys(account, Bucket::Search);
        let script = redis::Script::new(
            r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            local general = redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
            local search = redis.call('ZCOUNT', KEYS[2], now - tonumber(ARGV[2]), '+inf')
            local blocked = tonumber(redis.call('GET', KEYS[3]) or '0')
            return {general, search, math.max(0, blocked - now)}
            ",
        );
        let mut conn = self.kv.connection();
        let (general, search, blocked_ms): (u32, u32, i64) = script
            .key(self.kv.key(&general_key))
            .key(self.kv.key(&search_key))
            .key(self.kv.key(&blocked_key))
            .arg(u64::try_from(general_window.as_millis()).unwrap_or(10_000))
            .arg(u64::try_from(search_window.as_millis()).unwrap_or(1_000))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        Ok(Usage {
            general,
            general_limit,
            general_window,
            search,
            search_limit,
            search_window,
            paused_for: Duration::from_millis(u64::try_from(blocked_ms).unwrap_or(0)),
        })
    }

    /// HubSpot answered 429: stop this account's calls for the rest of the window, or, for the
    /// daily policy, until midnight. HubSpot resets the daily budget at the account's midnight and
    /// does not say which time zone that is; we wait for the next UTC midnight, and a further 429
    /// simply extends the pause.
    pub async fn penalize(
        &self,
        account: &str,
        policy: Policy,
        retry_after: Option<Duration>,
    ) -> Result<(), LimitError> {
        let pause = match (retry_after, policy) {
            (Some(after), _) => after,
            (None, Policy::Daily) => {
                let now = Utc::now();
                let tomorrow = now.date_naive().succ_opt().unwrap_or(now.date_naive());
                let midnight = Utc
                    .with_ymd_and_hms(tomorrow.year(), tomorrow.month(), tomorrow.day(), 0, 0, 0)
                    .single()
                    .unwrap_or(now);
                (midnight - now)
                    .to_std()
                    .unwrap_or(Duration::from_secs(3600))
            }
            (None, Policy::TenSecondlyRolling) => self.limits.general_window,
            (None, Policy::Other) => self.limits.search_window,
        };
        let (_, blocked_key, _, _) = self.keys(account, Bucket::General);
        let script = redis::Script::new(
            r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            local until_ms = now + tonumber(ARGV[1])
            local current = tonumber(redis.call('GET', KEYS[1]) or '0')
            if until_ms > current then
                redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
            end
            return until_ms
            ",
        );
        let mut conn = self.kv.connection();
        let _: i64 = script
            .key(self.kv.key(&blocked_key))
            .arg(u64::try_from(pause.as_millis()).unwrap_or(u64::MAX / 2))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        tracing::warn!(
            account,
            ?policy,
            pause_ms = pause.as_millis() as u64,
            "HubSpot rate limit hit; pausing calls"
        );
        Ok(())
    }
}

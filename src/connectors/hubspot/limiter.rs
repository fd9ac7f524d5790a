//! One request budget per HubSpot account, shared by every Ferry process through Redis, so syncs,
//! pushes and webhook fetches together stay inside HubSpot's limits — and HubSpot's own 429s feed
//! back into it.
//!
//! HubSpot allows 110 requests per rolling 10 s per installing account and, separately, 5 search
//! requests per second. We spend exactly those budgets. A call's slot is taken here a little
//! before the request reaches HubSpot, and that time varies, so the window is counted from when
//! the call could at the latest have reached HubSpot: the moment its answer came back, or, until
//! then (or when it came back later), [`Limits::margin`] after the slot was taken. Without that,
//! the sixth search of a second could arrive 999 ms after the first and be refused. (HubSpot wants
//! errors under 5% of calls: we throttle before it has to.) Each budget is a sliding-window log in
//! a Redis sorted set, checked and updated atomically by Lua scripts using Redis's clock.
//!
//! A 429 pauses what it names: the per-second search limit pauses searches for a second (other
//! calls go on), the ten-second one pauses every call for the window, the daily one until
//! midnight. See [`Policy::of_429`] for how a 429 is read.

use std::sync::{Arc, Mutex};
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

/// The limit a HubSpot 429 was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// 110 calls per rolling 10 s: every call waits out the window.
    TenSecondlyRolling,
    /// The search API's 5 requests per second: searches wait a second, other calls go on.
    Secondly,
    /// The account's daily budget: every call waits until midnight.
    Daily,
}

impl Policy {
    /// Reads a 429: `name` is the body's `policyName`, `search` whether the call was a search,
    /// `limit_headers` whether the answer carried `X-HubSpot-RateLimit-*` headers.
    ///
    /// The contract names two policies, `TEN_SECONDLY_ROLLING` and `DAILY`, and says search
    /// responses carry no rate-limit headers; it does not say what a refused search's body names.
    /// HubSpot has been seen answering `"policyName": "SECONDLY"` there (unconfirmed by the
    /// contract); the sandbox names `TEN_SECONDLY_ROLLING`. So: `DAILY` is daily; `SECONDLY` is
    /// the per-second limit; a search refused without rate-limit headers is the search's
    /// per-second limit, whatever the name (were it really the ten-second window, the next
    /// search is refused again and the pause grows, see [`Limiter::penalize`]); anything else —
    /// `TEN_SECONDLY_ROLLING`, a name we do not know, or none — is the ten-second window.
    pub fn of_429(name: Option<&str>, search: bool, limit_headers: bool) -> Policy {
        match name.map(str::trim) {
            Some(n) if n.eq_ignore_ascii_case("DAILY") => Policy::Daily,
            Some(n) if n.eq_ignore_ascii_case("SECONDLY") => Policy::Secondly,
            _ if search && !limit_headers => Policy::Secondly,
            _ => Policy::TenSecondlyRolling,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::TenSecondlyRolling => "ten_secondly_rolling",
            Policy::Secondly => "secondly",
            Policy::Daily => "daily",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub general: u32,
    pub general_window: Duration,
    pub search: u32,
    pub search_window: Duration,
    /// How long after its slot was taken a call is assumed to reach HubSpot, until its answer
    /// says sooner (see the module's docs).
    pub margin: Duration,
}

impl Default for Limits {
    /// HubSpot's: 110 per 10 s and 5 searches per second, each call counted from its answer or
    /// 40 ms after its slot was taken, whichever is sooner.
    fn default() -> Limits {
        Limits {
            general: 110,
            general_window: Duration::from_secs(10),
            search: 5,
            search_window: Duration::from_secs(1),
            margin: Duration::from_millis(40),
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
    /// How long every call stays paused after a 429 (zero when they are not).
    pub paused_for: Duration,
    /// How long searches stay paused after a per-second 429 (zero when they are not).
    pub search_paused_for: Duration,
}

/// What one limiter (and its clones) waited for, and the pauses it set. A client lives for one
/// job, so this is one job's account; jobs log it, tests count it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waits {
    /// Waits for a free slot in a window (pacing: the budget is being used as fast as allowed).
    pub for_slot: u32,
    pub slot_time: Duration,
    /// Waits because calls were paused after a 429.
    pub for_pause: u32,
    pub pause_time: Duration,
    /// The pauses set after HubSpot's 429s: the policy and how long (a 429 of a call sent before
    /// a pause began does not set another one).
    pub pauses: Vec<(Policy, Duration)>,
}

#[derive(Debug, Clone)]
pub struct Limiter {
    kv: Kv,
    limits: Limits,
    waits: Arc<Mutex<Waits>>,
}

/// Callers wait at most this long for a slot; longer waits are handed back as retry-later.
const MAX_WAIT: Duration = Duration::from_secs(15);
/// The most a margin is raised to after 429s (5 searches per 1.5 s at worst).
pub const MAX_MARGIN: Duration = Duration::from_millis(500);
/// How long a raised margin holds after its last raise.
pub const MARGIN_MEMORY: Duration = Duration::from_secs(10 * 60);

/// A slot taken in a window: tell the limiter when the call's answer came back
/// ([`Limiter::answered`]).
#[derive(Debug, Clone)]
pub struct Slot {
    key: String,
    member: String,
    /// Searches: the account's count of per-second 429s in a row.
    strikes: Option<String>,
}

/// Why `try_acquire` said to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Slot,
    Pause,
}

impl Limiter {
    pub fn new(kv: Kv, limits: Limits) -> Limiter {
        Limiter {
            kv,
            limits,
            waits: Arc::new(Mutex::new(Waits::default())),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What this limiter waited for so far.
    pub fn waits(&self) -> Waits {
        self.waits.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn note(&self, f: impl FnOnce(&mut Waits)) {
        f(&mut self.waits.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn window_key(&self, account: &str, bucket: Bucket) -> (String, u32, Duration) {
        match bucket {
            Bucket::General => (
                format!("rl:hubspot:{account}:general"),
                self.limits.general,
                self.limits.general_window,
            ),
            Bucket::Search => (
                format!("rl:hubspot:{account}:search"),
                self.limits.search,
                self.limits.search_window,
            ),
        }
    }

    /// Until when every call is paused (a ten-second or daily 429).
    fn blocked_key(account: &str) -> String {
        format!("rl:hubspot:{account}:blocked")
    }

    /// Until when searches are paused (a per-second 429).
    fn search_blocked_key(account: &str) -> String {
        format!("rl:hubspot:{account}:search-blocked")
    }

    /// Per-second 429s in a row, none answered in between (each doubles the next pause).
    fn strikes_key(account: &str) -> String {
        format!("rl:hubspot:{account}:search-strikes")
    }

    /// The account's margin, raised after 429s of paced calls (see [`Limiter::penalize`]).
    fn margin_key(account: &str) -> String {
        format!("rl:hubspot:{account}:margin")
    }

    /// The margin calls of `account` are counted with now: the configured one, or more after
    /// recent 429s.
    pub async fn margin(&self, account: &str) -> Result<Duration, LimitError> {
        let mut conn = self.kv.connection();
        let raised: Option<u64> = redis::cmd("GET")
            .arg(self.kv.key(&Self::margin_key(account)))
            .query_async(&mut conn)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        Ok(self
            .limits
            .margin
            .max(Duration::from_millis(raised.unwrap_or(0))))
    }

    /// A 429 although calls were paced: requests reach HubSpot later than the margin assumed
    /// (a slow or jittery network before HubSpot counts them). Doubles the account's margin, up
    /// to [`MAX_MARGIN`]; it falls back to the configured one [`MARGIN_MEMORY`] after the last
    /// raise.
    async fn raise_margin(&self, account: &str) -> Result<Duration, LimitError> {
        let script = redis::Script::new(
            r"
            local base = tonumber(ARGV[1])
            local m = math.max(base, tonumber(redis.call('GET', KEYS[1]) or '0'))
            m = math.min(math.max(m * 2, base, 20), tonumber(ARGV[2]))
            redis.call('SET', KEYS[1], m, 'PX', tonumber(ARGV[3]))
            return m
            ",
        );
        let mut conn = self.kv.connection();
        let margin_ms: i64 = script
            .key(self.kv.key(&Self::margin_key(account)))
            .arg(Self::millis(self.limits.margin))
            .arg(Self::millis(MAX_MARGIN))
            .arg(Self::millis(MARGIN_MEMORY))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        Ok(Duration::from_millis(u64::try_from(margin_ms).unwrap_or(0)))
    }

    fn millis(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// Waits for a slot in the account's budget and takes it.
    pub async fn acquire(&self, account: &str, bucket: Bucket) -> Result<Slot, LimitError> {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let (wait, reason, slot) = self.try_take(account, bucket).await?;
            if let Some(slot) = slot {
                return Ok(slot);
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(LimitError::Exhausted(wait));
            }
            self.note(|w| match reason {
                Reason::Slot => {
                    w.for_slot += 1;
                    w.slot_time += wait;
                }
                Reason::Pause => {
                    w.for_pause += 1;
                    w.pause_time += wait;
                }
            });
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a slot if one is free now; otherwise says how long until one is.
    pub async fn try_acquire(&self, account: &str, bucket: Bucket) -> Result<Duration, LimitError> {
        self.try_take(account, bucket).await.map(|(wait, ..)| wait)
    }

    /// The call holding `slot` was answered (`refused`: with a 429): HubSpot counted it by now
    /// at the latest, so its slot is counted from now if that is sooner than the margin assumed.
    /// A search HubSpot did not refuse ends a run of per-second 429s (the next one pauses for a
    /// second again, see [`Limiter::penalize`]).
    pub async fn answered(&self, slot: &Slot, refused: bool) -> Result<(), LimitError> {
        let script = redis::Script::new(
            r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
            if score and tonumber(score) > now then
                redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
            end
            if KEYS[2] and ARGV[2] == '0' then
                redis.call('DEL', KEYS[2])
            end
            return 0
            ",
        );
        let mut conn = self.kv.connection();
        let mut invocation = script.prepare_invoke();
        invocation.key(&slot.key);
        if let Some(strikes) = &slot.strikes {
            invocation.key(strikes);
        }
        let _: i64 = invocation
            .arg(&slot.member)
            .arg(if refused { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        Ok(())
    }

    async fn try_take(
        &self,
        account: &str,
        bucket: Bucket,
    ) -> Result<(Duration, Reason, Option<Slot>), LimitError> {
        let (window_key, limit, window) = self.window_key(account, bucket);
        // KEYS: the window's log, the account's pause, the account's raised margin, the searches'
        // pause (searches only). ARGV: the limit, HubSpot's window, the slot's member, the
        // margin. Each member's score is when the call reached HubSpot at the latest (taken +
        // margin, then its answer).
        // Returns {wait ms, 0 granted | 1 slot | 2 paused}.
        let script = redis::Script::new(
            r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
            if KEYS[4] then
                blocked = math.max(blocked, tonumber(redis.call('GET', KEYS[4]) or '0'))
            end
            if blocked > now then return {blocked - now, 2} end
            local limit = tonumber(ARGV[1])
            local window = tonumber(ARGV[2])
            local margin = math.max(tonumber(ARGV[4]), tonumber(redis.call('GET', KEYS[3]) or '0'))
            redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
            if redis.call('ZCARD', KEYS[1]) < limit then
                redis.call('ZADD', KEYS[1], now + margin, ARGV[3])
                redis.call('PEXPIRE', KEYS[1], window + margin + 1000)
                return {0, 0}
            end
            local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
            return {math.max(1, tonumber(oldest[2]) + window - now), 1}
            ",
        );
        let mut conn = self.kv.connection();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let key = self.kv.key(&window_key);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&key)
            .key(self.kv.key(&Self::blocked_key(account)))
            .key(self.kv.key(&Self::margin_key(account)));
        if bucket == Bucket::Search {
            invocation.key(self.kv.key(&Self::search_blocked_key(account)));
        }
        let (wait_ms, reason): (i64, i64) = invocation
            .arg(limit)
            .arg(Self::millis(window))
            .arg(&nonce)
            .arg(Self::millis(self.limits.margin))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        let reason = if reason == 2 {
            Reason::Pause
        } else {
            Reason::Slot
        };
        let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
        let slot = wait.is_zero().then(|| Slot {
            key,
            member: nonce,
            strikes: (bucket == Bucket::Search).then(|| self.kv.key(&Self::strikes_key(account))),
        });
        Ok((wait, reason, slot))
    }

    /// How much of the account's budget is spent right now, without spending any (for the
    /// connection page).
    pub async fn usage(&self, account: &str) -> Result<Usage, LimitError> {
        let (general_key, general_limit, general_window) =
            self.window_key(account, Bucket::General);
        let (search_key, search_limit, search_window) = self.window_key(account, Bucket::Search);
        let script = redis::Script::new(
            r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            local general = redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
            local search = redis.call('ZCOUNT', KEYS[2], now - tonumber(ARGV[2]), '+inf')
            local blocked = tonumber(redis.call('GET', KEYS[3]) or '0')
            local search_blocked = tonumber(redis.call('GET', KEYS[4]) or '0')
            return {general, search, math.max(0, blocked - now), math.max(0, search_blocked - now)}
            ",
        );
        let mut conn = self.kv.connection();
        let (general, search, blocked_ms, search_blocked_ms): (u32, u32, i64, i64) = script
            .key(self.kv.key(&general_key))
            .key(self.kv.key(&search_key))
            .key(self.kv.key(&Self::blocked_key(account)))
            .key(self.kv.key(&Self::search_blocked_key(account)))
            .arg(Self::millis(general_window))
            .arg(Self::millis(search_window))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
        Ok(Usage {
            general,
            general_limit,
            general_window,
            search,
            search_limit,
            search_window,
            paused_for: ms(blocked_ms),
            search_paused_for: ms(search_blocked_ms),
        })
    }

    /// HubSpot answered 429: pause what the policy limits and return how long calls now wait.
    /// A per-second or ten-second 429 also doubles the account's margin (see
    /// [`Limiter::raise_margin`]).
    ///
    /// - [`Policy::Secondly`]: searches only, for a second (`Retry-After` when given). A further
    ///   per-second 429 with no search answered since the last one (and within ten seconds of
    ///   its pause) doubles the pause (1, 2, 4, 8, then the 10 s window): a refusal of the first
    ///   search after a pause means the policy was misread, or something else spends the
    ///   account's searches. A 429 of a search sent before the pause began (while it lasts) sets
    ///   nothing new.
    /// - [`Policy::TenSecondlyRolling`]: every call, for the window (`Retry-After` when given).
    /// - [`Policy::Daily`]: every call, until midnight. HubSpot resets the daily budget at the
    ///   account's midnight and does not say which time zone that is; we wait for the next UTC
    ///   midnight, and a further 429 simply extends the pause.
    pub async fn penalize(
        &self,
        account: &str,
        policy: Policy,
        retry_after: Option<Duration>,
    ) -> Result<Duration, LimitError> {
        let pause = match policy {
            Policy::Secondly => self.pause_searches(account, retry_after).await?,
            Policy::TenSecondlyRolling | Policy::Daily => {
                let pause = match (retry_after, policy) {
                    (Some(after), _) => after,
                    (None, Policy::Daily) => until_utc_midnight(),
                    (None, _) => self.limits.general_window,
                };
                self.pause_all(account, pause).await?;
                Some(pause)
            }
        };
        let Some(pause) = pause else {
            return Ok(Duration::ZERO);
        };
        // Calls are paced to the budget, so a refusal means they reach HubSpot later than
        // assumed: count them longer from now on.
        let margin = match policy {
            Policy::Daily => None,
            Policy::Secondly | Policy::TenSecondlyRolling => {
                Some(self.raise_margin(account).await?)
            }
        };
        self.note(|w| w.pauses.push((policy, pause)));
        metrics::counter!("ferry_hubspot_rate_limited_total", "policy" => policy.as_str())
            .increment(1);
        tracing::warn!(
            account,
            policy = policy.as_str(),
            pause_ms = Self::millis(pause),
            margin_ms = margin.map(Self::millis),
            "HubSpot rate limit hit; pausing calls"
        );
        Ok(pause)
    }

    async fn pause_all(&self, account: &str, pause: Duration) -> Result<(), LimitError> {
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
            .key(self.kv.key(&Self::blocked_key(account)))
            .arg(Self::millis(pause))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        Ok(())
    }

    /// Pauses searches after a per-second 429; `None` when they already were (the refused call
    /// was sent before the pause began).
    async fn pause_searches(
        &self,
        account: &str,
        retry_after: Option<Duration>,
    ) -> Result<Option<Duration>, LimitError> {
        // KEYS: the searches' pause, the strike count. ARGV: base pause, cap, how long a strike
        // is remembered after its pause ends, a fixed pause (Retry-After) or 0. Returns the pause set, or 0 when one was running.
        let script = redis::Script::new(
            r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            local current = tonumber(redis.call('GET', KEYS[1]) or '0')
            if current > now then return 0 end
            local strikes = redis.call('INCR', KEYS[2])
            local pause = tonumber(ARGV[4])
            if pause <= 0 then
                pause = math.min(tonumber(ARGV[1]) * 2 ^ math.min(strikes - 1, 20), tonumber(ARGV[2]))
            end
            redis.call('PEXPIRE', KEYS[2], pause + tonumber(ARGV[3]))
            redis.call('SET', KEYS[1], now + pause, 'PX', pause + 1000)
            return pause
            ",
        );
        let mut conn = self.kv.connection();
        let pause_ms: i64 = script
            .key(self.kv.key(&Self::search_blocked_key(account)))
            .key(self.kv.key(&Self::strikes_key(account)))
            .arg(Self::millis(self.limits.search_window))
            .arg(Self::millis(self.limits.general_window))
            .arg(Self::millis(self.limits.general_window))
            .arg(retry_after.map(Self::millis).unwrap_or(0))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LimitError::Unavailable(e.to_string()))?;
        Ok(u64::try_from(pause_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis))
    }
}

fn until_utc_midnight() -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_is_read_as_the_policy_it_was_for() {
        use Policy::*;
        for (name, search, headers, policy) in [
            (Some("DAILY"), true, false, Daily),
            (Some("DAILY"), false, true, Daily),
            // HubSpot's name for the search limit (seen, not in the contract).
            (Some("SECONDLY"), true, false, Secondly),
            (Some("SECONDLY"), false, false, Secondly),
            // The sandbox's (and the contract's only) name, on a search: no headers, so search's.
            (Some("TEN_SECONDLY_ROLLING"), true, false, Secondly),
            (None, true, false, Secondly),
            // With the ten-second window's headers, the window it is.
            (Some("TEN_SECONDLY_ROLLING"), true, true, TenSecondlyRolling),
            (
                Some("TEN_SECONDLY_ROLLING"),
                false,
                false,
                TenSecondlyRolling,
            ),
            (
                Some("TEN_SECONDLY_ROLLING"),
                false,
                true,
                TenSecondlyRolling,
            ),
            (None, false, false, TenSecondlyRolling),
            (Some("SOMETHING_NEW"), false, true, TenSecondlyRolling),
        ] {
            assert_eq!(
                Policy::of_429(name, search, headers),
                policy,
                "{name:?} search={search} headers={headers}"
            );
        }
    }

    #[test]
    fn the_defaults_are_hubspots_budgets() {
        let limits = Limits::default();
        assert_eq!((limits.general, limits.general_window.as_secs()), (110, 10));
        assert_eq!((limits.search, limits.search_window.as_secs()), (5, 1));
        // At least 95% of the search budget: 5 per (1 s + margin) ≥ 4.75 per second.
        let per_second =
            f64::from(limits.search) / (limits.search_window + limits.margin).as_secs_f64();
        assert!(per_second >= 4.75, "{per_second}");
    }

    fn kv() -> Kv {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("limiter-test-{}", uuid::Uuid::new_v4().simple());
        Kv::connect_lazy(&secrecy::SecretString::from(url), &prefix).expect("redis url")
    }

    #[tokio::test]
    async fn a_per_second_429_pauses_searches_for_a_second_and_nothing_else() {
        let limiter = Limiter::new(kv(), Limits::default());
        let pause = limiter
            .penalize("1", Policy::Secondly, None)
            .await
            .expect("penalize");
        assert_eq!(pause, Duration::from_secs(1));
        let usage = limiter.usage("1").await.expect("usage");
        assert_eq!(usage.paused_for, Duration::ZERO, "other calls go on");
        assert!(usage.search_paused_for > Duration::ZERO);
        assert!(usage.search_paused_for <= Duration::from_secs(1));
        // Other calls take slots at once; searches are told to wait out the second.
        let general = limiter
            .try_acquire("1", Bucket::General)
            .await
            .expect("general");
        assert_eq!(general, Duration::ZERO);
        let search = limiter
            .try_acquire("1", Bucket::Search)
            .await
            .expect("search");
        assert!(
            search > Duration::ZERO && search <= Duration::from_secs(1),
            "{search:?}"
        );
        // A 429 of a search sent before the pause began sets nothing new.
        let again = limiter
            .penalize("1", Policy::Secondly, None)
            .await
            .expect("penalize");
        assert_eq!(again, Duration::ZERO);
        assert_eq!(
            limiter.waits().pauses,
            vec![(Policy::Secondly, Duration::from_secs(1))]
        );
        // Calls of the account are now counted with a doubled margin; another account's are not.
        assert_eq!(
            limiter.margin("1").await.expect("margin"),
            Duration::from_millis(80)
        );
        assert_eq!(
            limiter.margin("2").await.expect("margin"),
            Duration::from_millis(40)
        );
        // Another account is not paused at all.
        let other = limiter
            .try_acquire("2", Bucket::Search)
            .await
            .expect("other");
        assert_eq!(other, Duration::ZERO);
    }

    #[tokio::test]
    async fn repeated_per_second_429s_double_the_pause_up_to_the_window() {
        let limits = Limits {
            search_window: Duration::from_millis(20),
            general_window: Duration::from_millis(70),
            ..Limits::default()
        };
        let limiter = Limiter::new(kv(), limits);
        let mut pauses = vec![];
        for _ in 0..4 {
            let pause = limiter
                .penalize("1", Policy::Secondly, None)
                .await
                .expect("penalize");
            pauses.push(pause.as_millis());
            // Past the pause: the next 429 is a new one.
            tokio::time::sleep(pause + Duration::from_millis(5)).await;
        }
        assert_eq!(pauses, vec![20, 40, 70, 70]);
    }

    #[tokio::test]
    async fn a_raised_margin_doubles_up_to_its_cap_and_paces_calls() {
        let limits = Limits {
            search: 1,
            search_window: Duration::from_millis(100),
            ..Limits::default()
        };
        let limiter = Limiter::new(kv(), limits);
        let mut margins = vec![];
        for _ in 0..6 {
            margins.push(limiter.raise_margin("1").await.expect("raise").as_millis());
        }
        assert_eq!(margins, vec![80, 160, 320, 500, 500, 500]);
        // A slot is now held for the window and the raised margin.
        limiter.acquire("1", Bucket::Search).await.expect("take");
        let wait = limiter
            .try_acquire("1", Bucket::Search)
            .await
            .expect("full");
        assert!(wait > Duration::from_millis(300), "{wait:?}");
    }

    #[tokio::test]
    async fn a_search_answered_between_two_per_second_429s_keeps_the_pause_at_a_second() {
        let limits = Limits {
            search_window: Duration::from_millis(20),
            general_window: Duration::from_millis(500),
            ..Limits::default()
        };
        let limiter = Limiter::new(kv(), limits);
        let mut pauses = vec![];
        for answered in [true, true, false, false] {
            let pause = limiter
                .penalize("1", Policy::Secondly, None)
                .await
                .expect("penalize");
            pauses.push(pause.as_millis());
            // Past the pause, a search goes through (or is refused again).
            tokio::time::sleep(pause + Duration::from_millis(5)).await;
            let slot = limiter.acquire("1", Bucket::Search).await.expect("take");
            limiter.answered(&slot, !answered).await.expect("answered");
        }
        // Searches went through between the first three: each paused for the second alone.
        assert_eq!(pauses, vec![20, 20, 20, 40]);
    }

    #[tokio::test]
    async fn the_ten_second_policy_pauses_every_call_for_the_window() {
        let limiter = Limiter::new(kv(), Limits::default());
        let pause = limiter
            .penalize("1", Policy::TenSecondlyRolling, None)
            .await
            .expect("penalize");
        assert_eq!(pause, Duration::from_secs(10));
        for bucket in [Bucket::General, Bucket::Search] {
            let wait = limiter.try_acquire("1", bucket).await.expect("acquire");
            assert!(wait > Duration::from_secs(9), "{bucket:?}: {wait:?}");
        }
        // Retry-After, when HubSpot sends it, is what it says.
        let limiter = Limiter::new(kv(), Limits::default());
        let pause = limiter
            .penalize("1", Policy::Secondly, Some(Duration::from_secs(3)))
            .await
            .expect("penalize");
        assert_eq!(pause, Duration::from_secs(3));
    }

    #[tokio::test]
    async fn each_call_holds_its_slot_for_the_window_and_the_margin() {
        let limits = Limits {
            search: 2,
            search_window: Duration::from_millis(200),
            margin: Duration::from_millis(800),
            ..Limits::default()
        };
        let limiter = Limiter::new(kv(), limits);
        for _ in 0..2 {
            let wait = limiter
                .try_acquire("1", Bucket::Search)
                .await
                .expect("take");
            assert_eq!(wait, Duration::ZERO);
        }
        let wait = limiter
            .try_acquire("1", Bucket::Search)
            .await
            .expect("full");
        // Held past HubSpot's window: the margin counts.
        assert!(wait > Duration::from_millis(200), "{wait:?}");
        assert!(wait <= Duration::from_millis(1000), "{wait:?}");
        // acquire waits for it, and the wait is counted as pacing.
        limiter.acquire("1", Bucket::Search).await.expect("acquire");
        let waits = limiter.waits();
        assert!(waits.for_slot >= 1);
        assert_eq!(waits.for_pause, 0);
    }

    #[tokio::test]
    async fn an_answered_call_is_counted_from_its_answer_not_the_margin() {
        let limits = Limits {
            search: 1,
            search_window: Duration::from_millis(200),
            margin: Duration::from_millis(5_000),
            ..Limits::default()
        };
        let limiter = Limiter::new(kv(), limits);
        let slot = limiter.acquire("1", Bucket::Search).await.expect("take");
        let wait = limiter
            .try_acquire("1", Bucket::Search)
            .await
            .expect("full");
        assert!(
            wait > Duration::from_secs(4),
            "unanswered: the margin holds it: {wait:?}"
        );
        limiter.answered(&slot, false).await.expect("answered");
        let wait = limiter
            .try_acquire("1", Bucket::Search)
            .await
            .expect("full");
        assert!(
            wait <= Duration::from_millis(200),
            "answered: HubSpot's window from the answer: {wait:?}"
        );
        // An answer never moves a slot later (here: past its margin).
        let limits = Limits {
            search: 1,
            margin: Duration::ZERO,
            ..limits
        };
        let limiter = Limiter::new(kv(), limits);
        let slot = limiter.acquire("1", Bucket::Search).await.expect("take");
        tokio::time::sleep(Duration::from_millis(50)).await;
        limiter.answered(&slot, false).await.expect("answered");
        let wait = limiter
            .try_acquire("1", Bucket::Search)
            .await
            .expect("full");
        assert!(wait <= Duration::from_millis(150), "{wait:?}");
    }
}

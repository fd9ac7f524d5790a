//! Redis: queues, locks and rate-limit buckets only. Nothing here is durable state; losing Redis
//! loses no data (sessions, records and history live in Postgres).

use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;

/// Handle to Redis with every key under one prefix; cheap to clone.
#[derive(Clone)]
pub struct Kv {
    conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").field("prefix", &self.prefix).finish()
    }
}

/// The outcome of counting one event against a fixed-window limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    pub count: u64,
    /// Time until the window resets.
    pub resets_in: Duration,
}

impl Kv {
    /// Connects lazily (the process starts while Redis is down) and reconnects by itself.
    pub fn connect_lazy(url: &secrecy::SecretString, prefix: &str) -> redis::RedisResult<Kv> {
        let client = redis::Client::open(url.expose_secret())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Kv {
            conn,
            client,
            prefix: prefix.to_string(),
        })
    }

    /// The full key for a name, under this deployment's prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The shared, multiplexed connection (cheap to clone) for components that run their own
    /// scripts, such as the CRM rate limiter.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A fresh connection for components that manage their own (the job queues). It gives up
    /// within seconds while Redis is down, so the caller can say so and try again.
    pub async fn dedicated_connection(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        ConnectionManager::new_with_config(self.client.clone(), config).await
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Counts one event in the fixed window `name` (created with `window` on first use).
    pub async fn count_in_window(
        &self,
        name: &str,
        window: Duration,
    ) -> redis::RedisResult<WindowCount> {
        let script = redis::Script::new(
            r"
            local n = redis.call('INCR', KEYS[1])
            if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
            local ttl = redis.call('PTTL', KEYS[1])
            if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
            return {n, ttl}
            ",
        );
        let mut conn = self.conn.clone();
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let (count, ttl_ms): (u64, i64) = script
            .key(self.key(name))
            .arg(window_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(WindowCount {
            count,
            resets_in: Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0)),
        })
    }

    /// Reads a window's count without adding to it.
    pub async fn peek_window(&self, name: &str) -> redis::RedisResult<WindowCount> {
        let mut conn = self.conn.clone();
        let key = self.key(name);
        let (count, ttl_ms): (Option<u64>, i64) = redis::pipe()
            .get(&key)
            .pttl(&key)
            .query_async(&mut conn)
            .await?;
        Ok(WindowCount {
            count: count.unwrap_or(0),
            resets_in: Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0)),
        })
    }

    pub async fn delete(&self, name: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(self.key(name)).await?;
        Ok(())
    }

    /// Takes `name` for `ttl` if nobody holds it; true when this call took it.
    pub async fn claim(&self, name: &str, ttl: Duration) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.key(name))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(taken.is_some())
    }

    /// Takes the lock `name` for `ttl` if it is free; returns the holder's token to unlock with.
    pub async fn try_lock(&self, name: &str, ttl: Duration) -> redis::RedisResult<Option<String>> {
        let token = uuid::Uuid::new_v4().to_string();
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.key(name))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(taken.map(|_| token))
    }

    /// Releases a lock, only if `token` still holds it (a lock that expired and was taken by
    /// someone else is left alone).
    pub async fn unlock(&self, name: &str, token: &str) -> redis::RedisResult<()> {
        let script = redis::Script::new(
            r"
            if redis.call('GET', KEYS[1]) == ARGV[1] then
                return redis.call('DEL', KEYS[1])
            end
            return 0
            ",
        );
        let mut conn = self.conn.clone();
        let _: i64 = script
            .key(self.key(name))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes one of `cap` slots of the semaphore `name` for at most `ttl` (a holder that dies
    /// loses its slot when the ttl passes). Returns the slot's token, or None at the cap.
    pub async fn acquire_slot(
        &self,
        name: &str,
        cap: usize,
        ttl: Duration,
    ) -> redis::RedisResult<Option<String>> {
        let script = redis::Script::new(
            r"
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
            if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
                redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
                redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
                return 1
            end
            return 0
            ",
        );
        let token = uuid::Uuid::new_v4().to_string();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        let taken: i64 = script
            .key(self.key(name))
            .arg(cap)
            .arg(ttl_ms)
            .arg(&token)
            .invoke_async(&mut conn)
            .await?;
        Ok((taken == 1).then_some(token))
    }

    /// Extends a slot taken with [`Kv::acquire_slot`] to `ttl` from now. Returns false when the
    /// slot is gone (it expired, or Redis lost it): the holder runs on without it.
    pub async fn renew_slot(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let script = redis::Script::new(
            r"
            if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
            if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
                redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
            end
            return 1
            ",
        );
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.conn.clone();
        let renewed: i64 = script
            .key(self.key(name))
            .arg(ttl_ms)
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Gives a semaphore slot back.
    pub async fn release_slot(&self, name: &str, token: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(self.key(name), token).await?;
        Ok(())
    }

    /// Adds `member` to the set `name` (kept for `ttl` after its last addition).
    pub async fn add_to_set(
        &self,
        name: &str,
        member: &str,
        ttl: Duration,
    ) -> redis::RedisResult<()> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .sadd(self.key(name), member)
            .ignore()
            .pexpire(self.key(name), ttl_ms)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes and returns every member of the set `name`.
    pub async fn take_set(&self, name: &str) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let (members,): (Vec<String>,) = redis::pipe()
            .atomic()
            .smembers(self.key(name))
            .del(self.key(name))
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(members)
    }

    /// Whether anyone holds the lock `name`.
    pub async fn is_locked(&self, name: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let exists: i64 = conn.exists(self.key(name)).await?;
        Ok(exists > 0)
    }

    /// Takes one token from the bucket `name` (capacity `burst`, refilled at `per_second`), using
    /// Redis's clock so every process agrees. Returns whether the call may proceed, the tokens
    /// left, and how long until the next token when it may not.
    pub async fn take_token(
        &self,
        name: &str,
        per_second: u32,
        burst: u32,
    ) -> redis::RedisResult<TokenBucket> {
        let script = redis::Script::new(
            r"
            local cap = tonumber(ARGV[1])
            local rate = tonumber(ARGV[2])
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
            local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
            local tokens = tonumber(state[1]) or cap
            local at = tonumber(state[2]) or now
            tokens = math.min(cap, tokens + math.max(0, now - at) * rate / 1000)
            local allowed = 0
            local wait = 0
            if tokens >= 1 then
                tokens = tokens - 1
                allowed = 1
            else
                wait = math.ceil((1 - tokens) * 1000 / rate)
            end
            redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
            redis.call('PEXPIRE', KEYS[1], math.ceil(cap * 1000 / rate) + 1000)
            return {allowed, wait, math.floor(tokens)}
            ",
        );
        let mut conn = self.conn.clone();
        let (allowed, wait_ms, remaining): (i64, i64, i64) = script
            .key(self.key(name))
            .arg(burst.max(1))
            .arg(per_second.max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(TokenBucket {
            allowed: allowed == 1,
            remaining: u64::try_from(remaining).unwrap_or(0),
            retry_after: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)),
        })
    }
}

/// The outcome of [`Kv::take_token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    pub allowed: bool,
    pub remaining: u64,
    pub retry_after: Duration,
}

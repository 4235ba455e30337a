//! The provider's request budget, shared by every poller replica through PostgreSQL.
//!
//! GitHub limits what one App installation may ask (about 900 points a minute and 100
//! concurrent requests, 304s included), so requests to one installation — or one
//! GitLab token on one server — are paced to a budget of `limit` requests in any
//! window of 60 seconds, bursts included, and at most [`MAX_CONCURRENT`] at once,
//! whichever replica sends them.
//!
//! **Rate.** The row of a budget keeps a ring of [`RING`] per-bucket counts (a bucket
//! is 1/60 of the window). A request is granted when the counts of the last 62 buckets
//! plus its cost stay within the limit; one conditional `UPDATE` decides and records
//! it, so concurrent replicas serialise on the row. The check looks back at least the
//! window plus one bucket from every grant, so no window of the provider's — even one
//! judged by arrival, a little after our grant — ever holds more than the limit.
//!
//! **Priority.** Scheduled polls may use the budget minus a reserve (a tenth); polls
//! asked for by webhooks and `poll-vcs` may use all of it, so they go first when the
//! schedule has exhausted its share.
//!
//! **Concurrency.** Each request leases one of [`MAX_CONCURRENT`] slot rows until it
//! ends (or its timeout passes, should the replica die).
//!
//! **Provider blocks.** When the provider answers "rate limited" with a wait longer
//! than a retry waits, the budget is blocked until then for every replica, instead of
//! each poll finding out by asking.
//!
//! **Patience.** A request waits at most [`REQUESTED_PATIENCE`] (webhook and manual
//! polls) or two windows (the schedule) for room, then fails with a reason the poll
//! records; on shutdown every wait ends at once.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use diesel::sql_types::{BigInt, Bool, Double, Integer, Nullable, Text};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::RunQueryDsl;
use prometheus::HistogramVec;
use tokio::time::Instant;

use crate::db::DbPool;
use crate::domain::Provider;

/// Concurrent requests per budget, across replicas.
pub const MAX_CONCURRENT: i32 = 20;
/// The window the limit applies to.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Buckets kept: the window's 60 and two more (the one under way, and a margin).
pub const RING: i64 = 62;
/// The longest a requested poll's request waits for room.
pub const REQUESTED_PATIENCE: Duration = Duration::from_secs(30);

/// Whose budget a request spends: one GitHub App installation, or one GitLab token on
/// one server. Never holds a credential (a GitLab token is named by a digest prefix).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BudgetKey {
    pub provider: Provider,
    key: String,
}

impl BudgetKey {
    pub fn github_installation(origin: &str, installation_id: i64) -> Self {
        BudgetKey {
            provider: Provider::GitHub,
            key: format!("github {origin} installation {installation_id}"),
        }
    }

    pub fn gitlab_token(origin: &str, token_digest: &str) -> Self {
        BudgetKey {
            provider: Provider::GitLab,
            key: format!("gitlab {origin} token {token_digest}"),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }
}

/// Who asked for the poll a request belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Priority {
    /// The schedule: may use the budget minus the reserve.
    Scheduled,
    /// A webhook, `poll-vcs` or a link: may use the whole budget.
    Requested,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("the shared request budget is unavailable: {0}")]
    Unavailable(String),
    #[error("{provider} request budget of this installation or token had no room within {waited}s{}", blocked_hint(*.blocked_for))]
    Exhausted {
        provider: Provider,
        waited: u64,
        /// The provider's own block still runs this long.
        blocked_for: Option<u64>,
    },
    /// The process is shutting down: nothing is waited for any more.
    #[error("the poller is shutting down")]
    Stopped,
}

fn blocked_hint(blocked_for: Option<u64>) -> String {
    blocked_for.map_or_else(String::new, |seconds| {
        format!(" (the provider rate-limits it for {seconds}s more)")
    })
}

#[derive(Clone, Copy, Debug)]
pub struct BudgetLimits {
    pub github_per_window: u32,
    pub gitlab_per_window: u32,
    /// 60 seconds in production; tests shorten it.
    pub window: Duration,
}

impl BudgetLimits {
    fn limit(&self, provider: Provider, priority: Priority) -> i32 {
        let full = match provider {
            Provider::GitHub => self.github_per_window,
            Provider::GitLab => self.gitlab_per_window,
        } as i32;
        match priority {
            Priority::Requested => full,
            Priority::Scheduled => (full - (full / 10).max(1)).max(1),
        }
    }

    fn bucket_ms(&self) -> i64 {
        (self.window.as_millis() as i64 / 60).max(1)
    }
}

pub struct RequestBudget {
    pool: DbPool,
    limits: BudgetLimits,
    /// Budgets whose rows this process has made sure exist.
    known: Mutex<HashSet<String>>,
    wait_seconds: Option<HistogramVec>,
    /// Turns true on shutdown: waits end.
    stopped: tokio::sync::watch::Sender<bool>,
    /// Prefix of this process's lease holders, so its leases can all be given back
    /// at exit (a crashed process's leases expire at the end of their hold instead).
    process: String,
}

#[derive(QueryableByName)]
struct SpendOutcome {
    #[diesel(sql_type = Bool)]
    spent: bool,
    #[diesel(sql_type = Nullable<Integer>)]
    slot: Option<i32>,
}

enum Spent {
    NoRoom,
    /// Spent, but every concurrency slot is taken.
    NoSlot,
    AndLeased(i32),
}

#[derive(QueryableByName)]
struct Wait {
    #[diesel(sql_type = BigInt)]
    buckets: i64,
    /// Seconds the provider's block still runs (0 when none).
    #[diesel(sql_type = Double)]
    blocked: f64,
}

#[derive(QueryableByName)]
struct Slot {
    #[diesel(sql_type = Integer)]
    slot: i32,
}

/// A slot held for one request; give it back with [`Lease::release`] (dropping it
/// releases it in the background).
pub struct Lease {
    pool: DbPool,
    key: String,
    slot: i32,
    holder: String,
}

impl RequestBudget {
    /// `pool` should be the budget's own (small) pool: polls hold connections of their
    /// own while they wait for the budget.
    pub fn new(pool: DbPool, limits: BudgetLimits, wait_seconds: Option<HistogramVec>) -> Self {
        RequestBudget {
            pool,
            limits,
            known: Mutex::new(HashSet::new()),
            wait_seconds,
            stopped: tokio::sync::watch::channel(false).0,
            process: crate::ids::random_base58(12),
        }
    }

    /// Gives back every slot this process still holds (at exit, after its polls
    /// ended: background releases may not have run yet).
    pub async fn release_all(&self) {
        let Ok(mut conn) = self.pool.get().await else {
            return;
        };
        let _ = diesel::sql_query(
            "UPDATE provider_request_leases SET expires_at = '-infinity', holder = NULL
             WHERE holder LIKE $1 || '.%'",
        )
        .bind::<Text, _>(&self.process)
        .execute(&mut conn)
        .await;
    }

    /// Ends every wait, now and later (shutdown): they fail with [`BudgetError::Stopped`].
    pub fn stop_waiting(&self) {
        self.stopped.send_replace(true);
    }

    /// How long a request of `priority` waits for room at most.
    fn patience(&self, priority: Priority) -> Duration {
        match priority {
            Priority::Requested => REQUESTED_PATIENCE,
            Priority::Scheduled => self.limits.window * 2,
        }
    }

    /// Sleeps `wait` unless the budget is stopped first.
    async fn sleep(&self, wait: Duration) -> Result<(), BudgetError> {
        let mut stopped = self.stopped.subscribe();
        if *stopped.borrow() {
            return Err(BudgetError::Stopped);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = stopped.wait_for(|stop| *stop) => Err(BudgetError::Stopped),
        }
    }

    /// Waits until `cost` requests of `key`'s budget and a concurrency slot are free,
    /// records them, and returns the slot's lease (held at most `hold`).
    pub async fn acquire(
        &self,
        key: &BudgetKey,
        priority: Priority,
        cost: u32,
        hold: Duration,
    ) -> Result<Lease, BudgetError> {
        let started = Instant::now();
        let deadline = started + self.patience(priority);
        let limit = self.limits.limit(key.provider, priority);
        let cost = (cost as i32).min(limit);
        let holder = format!("{}.{}", self.process, crate::ids::random_base58(12));
        self.ensure_rows(key).await?;
        let slot = loop {
            match self
                .try_spend_and_lease(key, cost, limit, hold, &holder)
                .await?
            {
                Spent::AndLeased(slot) => break slot,
                // All slots taken (rare: 20 of them): wait for one.
                Spent::NoSlot => {
                    break loop {
                        if let Some(slot) = self.try_lease(key, hold, &holder).await? {
                            break slot;
                        }
                        self.sleep(jitter(Duration::from_millis(50))).await?;
                    }
                }
                Spent::NoRoom => {
                    // Rows someone deleted are made again.
                    self.known.lock().expect("budget lock").remove(&key.key);
                    self.ensure_rows(key).await?;
                    let (wait, blocked) = self.wait_for_capacity(key).await?;
                    if Instant::now() + wait > deadline {
                        return Err(BudgetError::Exhausted {
                            provider: key.provider,
                            waited: started.elapsed().as_secs(),
                            blocked_for: (blocked > 0.0).then(|| blocked.ceil() as u64),
                        });
                    }
                    self.sleep(wait).await?;
                    continue;
                }
            }
        };
        if let Some(histogram) = &self.wait_seconds {
            histogram
                .with_label_values(&[key.provider.as_str()])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(Lease {
            pool: self.pool.clone(),
            key: key.key.clone(),
            slot,
            holder,
        })
    }

    /// The provider refuses requests of `key` for `wait`: no replica asks before then.
    pub async fn block(&self, key: &BudgetKey, wait: Duration) -> Result<(), BudgetError> {
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        diesel::sql_query(
            "UPDATE provider_budgets
             SET blocked_until = greatest(coalesce(blocked_until, '-infinity'),
                                          clock_timestamp() + make_interval(secs => $2))
             WHERE budget_key = $1",
        )
        .bind::<Text, _>(&key.key)
        .bind::<Double, _>(wait.as_secs_f64())
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// Forgets budgets unused for a day (and their slots): GitLab tokens are rotated,
    /// installations removed. Returns how many went.
    pub async fn purge_stale(&self) -> Result<usize, BudgetError> {
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let purged = diesel::sql_query(
            "DELETE FROM provider_budgets WHERE updated_at < now() - interval '1 day'",
        )
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        diesel::sql_query(
            "DELETE FROM provider_request_leases l
             WHERE NOT EXISTS (SELECT 1 FROM provider_budgets b WHERE b.budget_key = l.budget_key)
               AND l.expires_at < clock_timestamp()",
        )
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        self.known.lock().expect("budget lock").clear();
        Ok(purged)
    }

    async fn ensure_rows(&self, key: &BudgetKey) -> Result<(), BudgetError> {
        if self.known.lock().expect("budget lock").contains(&key.key) {
            return Ok(());
        }
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        diesel::sql_query(
            "INSERT INTO provider_budgets (budget_key, counts, seconds)
             VALUES ($1, array_fill(0, ARRAY[62]), array_fill(0::bigint, ARRAY[62]))
             ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(&key.key)
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        diesel::sql_query(
            "INSERT INTO provider_request_leases (budget_key, slot)
             SELECT $1, g FROM generate_series(0, $2 - 1) AS g
             ON CONFLICT DO NOTHING",
        )
        .bind::<Text, _>(&key.key)
        .bind::<Integer, _>(MAX_CONCURRENT)
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
        self.known
            .lock()
            .expect("budget lock")
            .insert(key.key.clone());
        Ok(())
    }

    /// In one statement: records `cost` requests in the current bucket if the last
    /// [`RING`] buckets leave room, and if so leases a free concurrency slot.
    async fn try_spend_and_lease(
        &self,
        key: &BudgetKey,
        cost: i32,
        limit: i32,
        hold: Duration,
        holder: &str,
    ) -> Result<Spent, BudgetError> {
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let outcome: SpendOutcome = diesel::sql_query(
            "WITH now_bucket AS (
                 SELECT floor(extract(epoch FROM clock_timestamp()) * 1000 / $4)::bigint AS b),
             spent AS (
                 UPDATE provider_budgets SET
                     counts[(nb.b % 62) + 1] = CASE WHEN seconds[(nb.b % 62) + 1] = nb.b
                                                    THEN counts[(nb.b % 62) + 1] + $2 ELSE $2 END,
                     seconds[(nb.b % 62) + 1] = nb.b,
                     updated_at = now()
                 FROM now_bucket nb
                 WHERE budget_key = $1
                   AND coalesce(blocked_until, '-infinity') <= clock_timestamp()
                   AND (SELECT coalesce(sum(u.c), 0) FROM unnest(counts, seconds) AS u(c, s)
                        WHERE u.s > nb.b - 62) + $2 <= $3
                 RETURNING 1),
             free AS (
                 SELECT slot FROM provider_request_leases
                 WHERE budget_key = $1 AND expires_at < clock_timestamp()
                   AND EXISTS (SELECT 1 FROM spent)
                 ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED),
             leased AS (
                 UPDATE provider_request_leases l
                 SET holder = $6, expires_at = clock_timestamp() + make_interval(secs => $5)
                 FROM free WHERE l.budget_key = $1 AND l.slot = free.slot
                 RETURNING l.slot::integer AS slot)
             SELECT EXISTS (SELECT 1 FROM spent) AS spent, (SELECT slot FROM leased) AS slot",
        )
        .bind::<Text, _>(&key.key)
        .bind::<Integer, _>(cost)
        .bind::<Integer, _>(limit)
        .bind::<Double, _>(self.limits.bucket_ms() as f64)
        .bind::<Double, _>(hold.as_secs_f64())
        .bind::<Text, _>(holder)
        .get_result(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(match (outcome.spent, outcome.slot) {
            (false, _) => Spent::NoRoom,
            (true, None) => Spent::NoSlot,
            (true, Some(slot)) => Spent::AndLeased(slot),
        })
    }

    /// How long until the oldest bucket that still counts leaves the window, or the
    /// provider's block ends (whichever is later); and how long that block still runs.
    async fn wait_for_capacity(&self, key: &BudgetKey) -> Result<(Duration, f64), BudgetError> {
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let wait: Option<Wait> = diesel::sql_query(
            "WITH now_bucket AS (
                 SELECT floor(extract(epoch FROM clock_timestamp()) * 1000 / $2)::bigint AS b)
             SELECT coalesce((
                 SELECT min(u.s) FROM unnest(pb.counts, pb.seconds) AS u(c, s)
                 WHERE u.s > nb.b - 62 AND u.c > 0) + 62 - nb.b, 1)::bigint AS buckets,
                 greatest(0, coalesce(extract(epoch FROM pb.blocked_until - clock_timestamp()), 0))::float8
                     AS blocked
             FROM provider_budgets pb, now_bucket nb
             WHERE pb.budget_key = $1",
        )
        .bind::<Text, _>(&key.key)
        .bind::<Double, _>(self.limits.bucket_ms() as f64)
        .get_result(&mut conn)
        .await
        .optional()
        .map_err(unavailable)?;
        let Some(wait) = wait else {
            // The row is gone (it is made again): try again soon.
            return Ok((Duration::from_millis(50), 0.0));
        };
        let bucket = Duration::from_millis(self.limits.bucket_ms() as u64);
        let capacity = bucket * wait.buckets.clamp(1, RING) as u32;
        let blocked = Duration::from_secs_f64(wait.blocked);
        Ok((jitter(capacity.max(blocked)), wait.blocked))
    }

    async fn try_lease(
        &self,
        key: &BudgetKey,
        hold: Duration,
        holder: &str,
    ) -> Result<Option<i32>, BudgetError> {
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let slots: Vec<Slot> = diesel::sql_query(
            "UPDATE provider_request_leases
             SET holder = $3, expires_at = clock_timestamp() + make_interval(secs => $2)
             WHERE (budget_key, slot) = (
                 SELECT budget_key, slot FROM provider_request_leases
                 WHERE budget_key = $1 AND expires_at < clock_timestamp()
                 ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING slot::integer AS slot",
        )
        .bind::<Text, _>(&key.key)
        .bind::<Double, _>(hold.as_secs_f64())
        .bind::<Text, _>(holder)
        .load(&mut conn)
        .await
        .map_err(unavailable)?;
        Ok(slots.into_iter().next().map(|s| s.slot))
    }
}

impl Lease {
    /// Gives the slot back, in the background: the request that held it goes on at
    /// once (the slot would expire at the end of its hold time anyway).
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (pool, key, slot, holder) = (
                self.pool.clone(),
                std::mem::take(&mut self.key),
                self.slot,
                std::mem::take(&mut self.holder),
            );
            runtime.spawn(async move { release(&pool, &key, slot, &holder).await });
        }
    }
}

async fn release(pool: &DbPool, key: &str, slot: i32, holder: &str) {
    let Ok(mut conn) = pool.get().await else {
        return;
    };
    let _ = diesel::sql_query(
        "UPDATE provider_request_leases SET expires_at = '-infinity', holder = NULL
         WHERE budget_key = $1 AND slot = $2 AND holder = $3",
    )
    .bind::<Text, _>(key)
    .bind::<Integer, _>(slot)
    .bind::<Text, _>(holder)
    .execute(&mut conn)
    .await;
}

fn unavailable(err: impl std::fmt::Display) -> BudgetError {
    BudgetError::Unavailable(err.to_string())
}

/// `base` plus up to a quarter more, so waiters do not all wake at once.
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_polls_leave_a_reserve_for_requested_ones() {
        let limits = BudgetLimits {
            github_per_window: 800,
            gitlab_per_window: 1500,
            window: WINDOW,
        };
        assert_eq!(limits.limit(Provider::GitHub, Priority::Requested), 800);
        assert_eq!(limits.limit(Provider::GitHub, Priority::Scheduled), 720);
        assert_eq!(limits.limit(Provider::GitLab, Priority::Scheduled), 1350);
        let tiny = BudgetLimits {
            github_per_window: 1,
            ..limits
        };
        assert_eq!(tiny.limit(Provider::GitHub, Priority::Scheduled), 1);
        assert_eq!(limits.bucket_ms(), 1000);
    }

    #[test]
    fn budget_keys_never_hold_a_token() {
        let key = BudgetKey::gitlab_token("https://gitlab.com", "0123abcd");
        assert_eq!(key.as_str(), "gitlab https://gitlab.com token 0123abcd");
    }
}

//! [`RedisAdmission`]: per-user engine leases in one sorted set per user, reserved and released
//! by Lua scripts (atomic on the server however many nodes race) and renewed by a heartbeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use engine_core::UserId;
use engine_factory::{Admission, AdmissionError, BoxFuture};
use redis::aio::ConnectionManager;
use redis::Script;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::keys::Keys;

/// The server's clock in ms, so that no node's clock matters. Leases past their score are
/// purged before anything is counted.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
";

/// KEYS[1] leases; ARGV member, limit, ttl_ms. Returns {admitted (1/0), held after}.
const RESERVE: &str = r"
local ttl = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  return {1, redis.call('ZCARD', KEYS[1])}
end
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[2]) then
  return {0, held}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, held + 1}
";

/// KEYS[1] leases, KEYS[2] released; ARGV member, tombstone_ms. Returns the leases left. The
/// member is remembered as released for `tombstone_ms` (a renewal snapshot taken before this
/// release must not restore it).
const RELEASE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[1]) end
return left
";

/// KEYS[1] leases, KEYS[2] released; ARGV ttl_ms, limit, members... Renews each held lease; one
/// that expired (Redis lost it) is restored only while the user is under the limit, and one
/// released since the node's snapshot is never restored. Returns {renewed, restored, lost}.
const RENEW: &str = r"
local ttl = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local renewed, restored, lost = 0, 0, 0
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
    renewed = renewed + 1
  elseif redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 1 then
    -- released after the snapshot: gone for good
  elseif redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
    restored = restored + 1
  else
    lost = lost + 1
  end
end
if redis.call('ZCARD', KEYS[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return {renewed, restored, lost}
";

/// Users renewed by one pipeline of the heartbeat.
const RENEW_CHUNK: usize = 1_024;

/// Leases this node holds: user -> (member -> limit it was admitted under).
type Held = HashMap<UserId, HashMap<String, usize>>;

/// Cluster-wide per-user admission on Redis. Created by
/// [`RedisCluster::connect`](crate::RedisCluster::connect).
pub(crate) struct RedisAdmission {
    conn: ConnectionManager,
    keys: Keys,
    node: String,
    ttl: Duration,
    reserve: Script,
    release: Script,
    renew: Script,
    held: Mutex<Held>,
    health: Arc<Health>,
}

impl std::fmt::Debug for RedisAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdmission")
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn held(m: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedisAdmission {
    pub(crate) fn new(
        conn: ConnectionManager,
        keys: Keys,
        node: String,
        ttl: Duration,
        health: Arc<Health>,
    ) -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            conn,
            keys,
            node,
            ttl,
            reserve: script(RESERVE),
            release: script(RELEASE),
            renew: script(RENEW),
            held: Mutex::new(HashMap::new()),
            health,
        }
    }

    fn member(&self, engine_id: &str) -> String {
        format!("{}/{engine_id}", self.node)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Renews every lease this node holds once, all users in one pipeline (chunks of
    /// [`RENEW_CHUNK`] users), so a heartbeat costs one round trip, not one per user. Returns
    /// how many were renewed.
    pub(crate) async fn renew_all(&self) -> u64 {
        let snapshot: Vec<(UserId, Vec<String>, usize)> = held(&self.held)
            .iter()
            .map(|(u, m)| {
                let limit = m.values().copied().max().unwrap_or(1);
                (u.clone(), m.keys().cloned().collect(), limit)
            })
            .collect();
        let mut total = 0;
        for chunk in snapshot.chunks(RENEW_CHUNK) {
            let mut pipe = redis::pipe();
            // Loaded first in the same pipeline (a Redis restarted since has no scripts), so
            // the EVALSHAs behind it never meet NOSCRIPT.
            pipe.load_script(&self.renew).ignore();
            for (user, members, limit) in chunk {
                let mut inv = self.renew.key(self.keys.leases(user));
                inv.key(self.keys.released(user));
                inv.arg(self.ttl_ms()).arg(*limit);
                for m in members {
                    inv.arg(m);
                }
                pipe.invoke_script(&inv);
            }
            let mut conn = self.conn.clone();
            let answers = match pipe.query_async::<Vec<(u64, u64, u64)>>(&mut conn).await {
                Ok(a) => a,
                Err(e) => {
                    self.health.failed("renew leases", &e);
                    continue;
                }
            };
            self.health.ok();
            for ((user, _, _), (renewed, restored, lost)) in chunk.iter().zip(answers) {
                let h = &self.health;
                h.renewals
                    .fetch_add(renewed + restored, std::sync::atomic::Ordering::Relaxed);
                if lost > 0 {
                    h.leases_lost
                        .fetch_add(lost, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(user_id = %user, lost, "engine leases expired while Redis was unreachable and the user is at the limit elsewhere");
                }
                total += renewed + restored;
            }
        }
        total
    }

    /// Renews every third of the TTL until `stop`.
    pub(crate) fn spawn_heartbeat(self: &Arc<Self>, stop: CancellationToken) {
        let me = Arc::downgrade(self);
        let period = self.ttl / 3;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(me) = me.upgrade() else { break };
                me.renew_all().await;
            }
        });
    }

    /// Leases this node holds now.
    pub(crate) fn held_count(&self) -> usize {
        held(&self.held).values().map(HashMap::len).sum()
    }
}

impl Admission for RedisAdmission {
    fn reserve<'a>(
        &'a self,
        user: &'a UserId,
        engine_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<(), AdmissionError>> {
        Box::pin(async move {
            let member = self.member(engine_id);
            let mut conn = self.conn.clone();
            let answer = self
                .reserve
                .key(self.keys.leases(user))
                .arg(&member)
                .arg(limit)
                .arg(self.ttl_ms())
                .invoke_async::<(u8, usize)>(&mut conn)
                .await;
            match answer {
                Ok((1, _)) => {
                    self.health.ok();
                    held(&self.held)
                        .entry(user.clone())
                        .or_default()
                        .insert(member, limit);
                    Ok(())
                }
                Ok((_, held)) => {
                    self.health.ok();
                    Err(AdmissionError::LimitReached { held })
                }
                Err(e) => {
                    self.health.failed("reserve lease", &e);
                    Err(AdmissionError::Unavailable(e.to_string()))
                }
            }
        })
    }

    fn release<'a>(
        &'a self,
        user: &'a UserId,
        engine_id: &'a str,
    ) -> BoxFuture<'a, Result<(), AdmissionError>> {
        Box::pin(async move {
            let member = self.member(engine_id);
            {
                let mut all = held(&self.held);
                if let Some(mine) = all.get_mut(user) {
                    mine.remove(&member);
                    if mine.is_empty() {
                        all.remove(user);
                    }
                }
            }
            let mut conn = self.conn.clone();
            let answer = self
                .release
                .key(self.keys.leases(user))
                .key(self.keys.released(user))
                .arg(&member)
                .arg(self.ttl_ms().saturating_mul(2))
                .invoke_async::<u64>(&mut conn)
                .await;
            match answer {
                Ok(_) => {
                    self.health.ok();
                    Ok(())
                }
                Err(e) => {
                    self.health.failed("release lease", &e);
                    Err(AdmissionError::Unavailable(e.to_string()))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    async fn admission(redis: &RedisServer) -> (RedisAdmission, ConnectionManager) {
        let client = redis::Client::open(redis.url()).unwrap();
        let conn = ConnectionManager::new(client).await.unwrap();
        let admission = RedisAdmission::new(
            conn.clone(),
            Keys::new("t"),
            "node-a".into(),
            Duration::from_secs(30),
            Arc::new(Health::new()),
        );
        (admission, conn)
    }

    /// The heartbeat's snapshot is taken before a release and its renewal runs after it: the
    /// released lease must stay released (no phantom slot), 1,000 times over.
    #[tokio::test]
    async fn a_renewal_never_restores_a_released_lease() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let (admission, mut conn) = admission(&redis).await;
        let user = UserId::new("racer").unwrap();
        let leases = admission.keys.leases(&user);
        for i in 0..1_000 {
            let engine = format!("engine-{i}");
            admission.reserve(&user, &engine, 2).await.unwrap();
            // The renewal's snapshot, as `renew_all` takes it, before the release.
            let snapshot: Vec<String> = held(&admission.held)[&user].keys().cloned().collect();
            admission.release(&user, &engine).await.unwrap();
            let mut inv = admission.renew.key(&leases);
            inv.key(admission.keys.released(&user)).arg(30_000).arg(2);
            for m in &snapshot {
                inv.arg(m);
            }
            let (renewed, restored, lost): (u64, u64, u64) =
                inv.invoke_async(&mut conn).await.unwrap();
            assert_eq!((renewed, restored, lost), (0, 0, 0), "round {i}");
            let held: u64 = redis::cmd("ZCARD")
                .arg(&leases)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(held, 0, "round {i}: a phantom lease");
        }
    }

    /// A lease Redis lost (a restart without persistence) is still restored by the heartbeat.
    #[tokio::test]
    async fn a_lease_redis_lost_is_restored() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let (admission, mut conn) = admission(&redis).await;
        let user = UserId::new("survivor").unwrap();
        admission.reserve(&user, "engine-1", 2).await.unwrap();
        let _: () = redis::cmd("DEL")
            .arg(admission.keys.leases(&user))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(admission.renew_all().await, 1);
        let held: u64 = redis::cmd("ZCARD")
            .arg(admission.keys.leases(&user))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(held, 1);
    }

    /// Socket reads Redis has processed so far (`INFO stats`).
    async fn io_events(conn: &mut ConnectionManager) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(conn)
            .await
            .unwrap();
        info.lines()
            .filter_map(|l| l.strip_prefix("total_reads_processed:"))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum()
    }

    /// One heartbeat renews every user's leases in one round trip: Redis reads the whole
    /// renewal in a handful of socket reads, not one per user.
    #[tokio::test]
    async fn a_heartbeat_renews_all_users_in_one_round_trip() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let (admission, mut conn) = admission(&redis).await;
        let users: Vec<UserId> = (0..300)
            .map(|i| UserId::new(format!("user-{i}")).unwrap())
            .collect();
        for user in &users {
            admission.reserve(user, "engine-1", 2).await.unwrap();
        }
        let before = io_events(&mut conn).await;
        assert_eq!(admission.renew_all().await, 300);
        let reads = io_events(&mut conn).await - before;
        // The INFO calls themselves count one read each.
        assert!(
            reads < 30,
            "{reads} socket reads for one heartbeat of 300 users"
        );
        // Renewed for real: every lease is held with a fresh expiry.
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(admission.keys.leases(&users[299]))
            .arg(admission.member("engine-1"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(score.is_some());
        // After a restart (no scripts, no leases) one heartbeat still restores them all.
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        assert_eq!(admission.renew_all().await, 300);
    }
}

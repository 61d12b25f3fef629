//! Several gatekeeper nodes behind one TCP load balancer: what they share through Redis.
//!
//! PostgreSQL ([`crate::store::postgres`]) holds everything durable; Redis holds only what is
//! transient and can be rebuilt:
//!
//! | Redis key or channel | what | lost with Redis |
//! |---|---|---|
//! | `<prefix>lease:<account>:<device>` = `<token>@<node>` (expires, refreshed by heartbeat) | which node holds the device's live session, with its fencing token | re-taken by the holding nodes' next heartbeat |
//! | `<prefix>fence:<account>:<device>` (counter) | the last fencing token handed out | raised again to the tokens the nodes re-assert |
//! | channel `<prefix>node:<node>` | nudges ("a copy is stored for your device"), kicks ("a newer login took your device"), live-only stanzas (chat states) | the periodic queue re-check delivers; the heartbeat finds a lost lease; chat states are dropped (they are never stored anyway) |
//! | channel `<prefix>all` | cluster-wide events: an account's sessions must close, a provider changed | sessions of that account / provider end at their next token check |
//! | `<prefix>rate:<...>` | cluster-wide rate limits (token buckets) | buckets start full again |
//!
//! Routing: a node stores a copy in PostgreSQL first (the sender's ack depends only on that),
//! nudges the local session if the device is live here, else looks up the device's lease: the
//! holding node gets a nudge on its channel and its session reads the queue from PostgreSQL in
//! sequence order. No holder, a holder whose channel has no subscriber (the node died), or Redis
//! unreachable: the device is woken by push, and if it is in fact live somewhere, that node's
//! periodic re-check ([`ClusterConfig::recheck`]) delivers. A lost pub/sub message therefore
//! only delays a delivery; nothing acked is lost with Redis.
//!
//! One live session per device in the cluster: a login takes the device's lease with a fresh
//! fencing token (`INCR`) and tells the previous holder's node, which closes its session with
//! `conflict`; if that message is lost, the old node's heartbeat finds the lease taken and does
//! the same. Until then the old session is fenced: each message, receipt and ack it sends is
//! checked against the lease (one `GET`) and refused when another token holds it. This fence is
//! checked in Redis, not inside the PostgreSQL transaction: a stale write racing the check by
//! less than a round trip can still land. That costs nothing durable: a message from a
//! superseded session is as good as one from the new session (same device, same
//! de-duplication), and an ack is only ever sent by the device for a copy it persisted. When
//! Redis is unreachable the fence fails open (chat goes on; the lease is re-taken afterwards).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use interop_stanza::stanza::StreamCondition;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, RedisError, RedisResult, Script};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::chat::{LiveSessions, OfflineHook};
use crate::store::DeviceAddress;
use crate::{Error, Result};

/// Settings of a gatekeeper node in a cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub redis_url: String,
    /// This node's id (unique in the cluster): names its pub/sub channel and its leases.
    pub node_id: String,
    /// Prefix of every key and channel (several clusters, or tests, may share one Redis).
    pub key_prefix: String,
    /// How long a lease lives without a heartbeat: a node that dies holds its devices this
    /// long at most (messages for them are woken by push meanwhile).
    pub lease_ttl: Duration,
    /// How often a node refreshes its leases.
    pub heartbeat: Duration,
    /// How often a node re-reads every live session's queue (what makes lost nudges harmless).
    pub recheck: Duration,
    /// How long one Redis call may take before it counts as failed.
    pub command_timeout: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &redacted(&self.redis_url))
            .field("node_id", &self.node_id)
            .field("key_prefix", &self.key_prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("heartbeat", &self.heartbeat)
            .field("recheck", &self.recheck)
            .finish_non_exhaustive()
    }
}

impl ClusterConfig {
    /// Defaults: a random node id, prefix `interop:`, leases of 15 s refreshed every 5 s,
    /// queues re-read every 3 s, 2 s per Redis call.
    pub fn new(redis_url: impl Into<String>, node_id: Option<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            node_id: node_id.filter(|n| !n.is_empty()).unwrap_or_else(random_node_id),
            key_prefix: "interop:".to_owned(),
            lease_ttl: Duration::from_secs(15),
            heartbeat: Duration::from_secs(5),
            recheck: Duration::from_secs(3),
            command_timeout: Duration::from_secs(2),
        }
    }
}

/// A fresh node id: `node-` and 12 hex digits.
pub fn random_node_id() -> String {
    format!("node-{}", hex::encode(rand::random::<[u8; 6]>()))
}

/// `url` without its password, for error texts and logs.
pub fn redacted(url: &str) -> String {
    crate::config::url_without_secrets(url)
        .unwrap_or_else(|| "(a Redis URL that does not parse)".to_owned())
}

/// Takes a device's lease. KEYS: lease, fence. ARGV: node, ttl ms, mode (`force`: a login,
/// newest wins; `if-free`: only if nobody else holds it). Returns {token, previous value or ''};
/// token 0: not taken (`if-free` and another node holds it).
const ACQUIRE: &str = r"
local old = redis.call('GET', KEYS[1])
if ARGV[3] == 'if-free' and old and string.sub(old, -string.len(ARGV[1]) - 1) ~= '@' .. ARGV[1] then
  return {0, old}
end
local token = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 2592000000)
redis.call('SET', KEYS[1], token .. '@' .. ARGV[1], 'PX', ARGV[2])
return {token, old or ''}
";

/// Refreshes leases. KEYS: lease, fence pairs. ARGV: ttl ms, then the expected value of each
/// lease. Per lease: 1 still ours (extended), 2 gone (Redis lost it) and taken again with the
/// same token (the fence counter raised to it), 0 another node holds it.
const REFRESH: &str = r"
local out = {}
for i = 1, #KEYS, 2 do
  local want = ARGV[(i + 1) / 2 + 1]
  local v = redis.call('GET', KEYS[i])
  if v == want then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    out[#out + 1] = 1
  elseif not v then
    redis.call('SET', KEYS[i], want, 'PX', ARGV[1])
    local token = tonumber(string.match(want, '^(%d+)@'))
    local fence = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
    if token and fence < token then
      redis.call('SET', KEYS[i + 1], token, 'PX', 2592000000)
    end
    out[#out + 1] = 2
  else
    out[#out + 1] = 0
  end
end
return out
";

/// Deletes a lease if it is still the given one. KEYS: lease. ARGV: value.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A token bucket on Redis's clock. KEYS: bucket. ARGV: tokens per minute, burst. 1: allowed.
const BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1]) / 60000.0
local burst = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1]) or burst
local at = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / math.max(rate, 0.000001)) + 1000)
return ok
";

/// Leases refreshed per script call.
const REFRESH_CHUNK: usize = 256;
/// Devices routed per lookup.
const ROUTE_BATCH: usize = 256;
/// Devices waiting for the router before new ones are woken by push directly.
const ROUTE_QUEUE: usize = 10_000;

fn down() -> RedisError {
    RedisError::from((redis::ErrorKind::IoError, "Redis is unreachable; retrying shortly"))
}

/// One multiplexed connection, re-opened after a failure (at most every half second).
struct Connection {
    client: redis::Client,
    config: AsyncConnectionConfig,
    timeout: Duration,
    current: Mutex<Option<MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
    retry_at: Mutex<Option<Instant>>,
}

impl Connection {
    fn new(client: redis::Client, timeout: Duration) -> Self {
        Self {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout),
            timeout,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            retry_at: Mutex::new(None),
        }
    }

    async fn get(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current.lock().expect("redis lock").clone() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current.lock().expect("redis lock").clone() {
            return Ok(c);
        }
        if self.retry_at.lock().expect("redis lock").is_some_and(|at| Instant::now() < at) {
            return Err(down());
        }
        let opened = tokio::time::timeout(
            self.timeout,
            self.client.get_multiplexed_async_connection_with_config(&self.config),
        )
        .await;
        match opened {
            Ok(Ok(c)) => {
                *self.current.lock().expect("redis lock") = Some(c.clone());
                *self.retry_at.lock().expect("redis lock") = None;
                Ok(c)
            }
            Ok(Err(e)) => {
                *self.retry_at.lock().expect("redis lock") =
                    Some(Instant::now() + Duration::from_millis(500));
                Err(e)
            }
            Err(_) => {
                *self.retry_at.lock().expect("redis lock") =
                    Some(Instant::now() + Duration::from_millis(500));
                Err(down())
            }
        }
    }

    /// Runs `f` on the connection; any failure drops the connection (the next call re-opens).
    async fn call<T, F, Fut>(&self, f: F) -> RedisResult<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let c = self.get().await?;
        let result = match tokio::time::timeout(self.timeout, f(c)).await {
            Ok(r) => r,
            Err(_) => Err(RedisError::from((redis::ErrorKind::IoError, "Redis call timed out"))),
        };
        if result.is_err() {
            metrics::counter!("interop_cluster_redis_errors_total").increment(1);
            *self.current.lock().expect("redis lock") = None;
        }
        result
    }
}

/// A change another node announces to all.
pub type ProviderChanged = Arc<dyn Fn(String) + Send + Sync>;

/// This node's part of the cluster: leases, hand-off, rate limits. See the module docs.
pub struct Cluster {
    config: ClusterConfig,
    client: redis::Client,
    redis: Connection,
    live: Arc<LiveSessions>,
    offline: Option<OfflineHook>,
    route_tx: mpsc::Sender<DeviceAddress>,
    route_rx: Mutex<Option<mpsc::Receiver<DeviceAddress>>>,
    first_subscription: Mutex<Option<PubSub>>,
    subscribed: AtomicBool,
    heartbeat_now: Notify,
    provider_changed: Mutex<Option<ProviderChanged>>,
    acquire: Script,
    refresh: Script,
    release: Script,
    bucket: Script,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("config", &self.config).finish_non_exhaustive()
    }
}

fn condition_name(c: StreamCondition) -> &'static str {
    c.as_str()
}

impl Cluster {
    /// Connects to Redis and subscribes to this node's channels. Fails with a clear error
    /// (never showing the password) when Redis is unreachable. `live` is the registry the
    /// node's chat core uses; `offline` wakes devices live nowhere.
    pub async fn connect(
        config: ClusterConfig,
        live: Arc<LiveSessions>,
        offline: Option<OfflineHook>,
    ) -> Result<Arc<Self>> {
        let shown = redacted(&config.redis_url);
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| Error::Config(format!("Redis URL {shown} is not valid: {e}")))?;
        let unreachable =
            |why: String| Error::Storage(format!("cannot connect to Redis at {shown}: {why}"));
        let redis = Connection::new(client.clone(), config.command_timeout);
        let pong: String = redis
            .call(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if pong != "PONG" {
            return Err(unreachable(format!("unexpected answer to PING: {pong}")));
        }
        let (route_tx, route_rx) = mpsc::channel(ROUTE_QUEUE);
        let cluster = Self {
            redis,
            live,
            offline,
            route_tx,
            route_rx: Mutex::new(Some(route_rx)),
            first_subscription: Mutex::new(None),
            subscribed: AtomicBool::new(false),
            heartbeat_now: Notify::new(),
            provider_changed: Mutex::new(None),
            acquire: Script::new(ACQUIRE),
            refresh: Script::new(REFRESH),
            release: Script::new(RELEASE),
            bucket: Script::new(BUCKET),
            client,
            config,
        };
        let pubsub = cluster.subscribe().await.map_err(|e| unreachable(e.to_string()))?;
        *cluster.first_subscription.lock().expect("cluster lock") = Some(pubsub);
        cluster.subscribed.store(true, Ordering::Relaxed);
        tracing::info!(node = %cluster.config.node_id, redis = %shown, "joined the cluster");
        Ok(Arc::new(cluster))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Starts the node's background work (until `shutdown`): the subscriber, the lease
    /// heartbeat, the periodic queue re-check and the router. Call once.
    pub fn start(self: &Arc<Self>, shutdown: &CancellationToken) {
        let first = self.first_subscription.lock().expect("cluster lock").take();
        let rx = self.route_rx.lock().expect("cluster lock").take();
        let (Some(first), Some(rx)) = (first, rx) else { return };
        tokio::spawn(Arc::clone(self).subscriber(first, shutdown.clone()));
        tokio::spawn(Arc::clone(self).heartbeat(shutdown.clone()));
        tokio::spawn(Arc::clone(self).recheck(shutdown.clone()));
        tokio::spawn(Arc::clone(self).router(rx, shutdown.clone()));
    }

    /// Called with a provider's issuer when another node changed that provider.
    pub fn on_provider_changed(&self, hook: ProviderChanged) {
        *self.provider_changed.lock().expect("cluster lock") = Some(hook);
    }

    /// `Ok` when Redis answers and this node is subscribed to its channel.
    pub async fn health(&self) -> std::result::Result<(), String> {
        let pong: RedisResult<String> = self
            .redis
            .call(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await;
        match pong {
            Ok(_) if self.subscribed.load(Ordering::Relaxed) => Ok(()),
            Ok(_) => Err("not subscribed to this node's channel".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn key(&self, kind: &str, device: &DeviceAddress) -> String {
        format!("{}{kind}:{}:{}", self.config.key_prefix, device.account, device.device)
    }

    fn node_channel(&self, node: &str) -> String {
        format!("{}node:{node}", self.config.key_prefix)
    }

    fn all_channel(&self) -> String {
        format!("{}all", self.config.key_prefix)
    }

    fn lease_value(&self, token: u64) -> String {
        format!("{token}@{}", self.config.node_id)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    async fn subscribe(&self) -> RedisResult<PubSub> {
        let opened = tokio::time::timeout(self.config.command_timeout, async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.node_channel(&self.config.node_id)).await?;
            pubsub.subscribe(self.all_channel()).await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await;
        opened.unwrap_or_else(|_| Err(down()))
    }

    async fn take_lease(&self, device: &DeviceAddress, mode: &str) -> RedisResult<(u64, String)> {
        let invocation = {
            let mut i = self.acquire.prepare_invoke();
            i.key(self.key("lease", device))
                .key(self.key("fence", device))
                .arg(&self.config.node_id)
                .arg(self.ttl_ms())
                .arg(mode);
            i
        };
        self.redis.call(|mut c| async move { invocation.invoke_async(&mut c).await }).await
    }

    /// Takes `device`'s lease for a new login (the newest login wins): its fencing token, or
    /// `None` when Redis is unreachable (the heartbeat takes it later). The node that held it
    /// is told to close its session.
    pub(crate) async fn acquire(&self, device: &DeviceAddress) -> Option<u64> {
        match self.take_lease(device, "force").await {
            Ok((token, previous)) => {
                self.kick(device, &previous).await;
                Some(token)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: lease not taken at login; retried by heartbeat");
                None
            }
        }
    }

    /// Tells the node in lease value `previous` (`<token>@<node>`) that its session lost.
    async fn kick(&self, device: &DeviceAddress, previous: &str) {
        let Some((token, node)) = parse_lease(previous) else { return };
        if node == self.config.node_id {
            // This node: the chat core replaces its own session.
            return;
        }
        let message =
            json!({"t": "kick", "a": device.account, "d": device.device, "k": token}).to_string();
        let channel = self.node_channel(node);
        let sent: RedisResult<u64> = self
            .redis
            .call(|mut c| async move {
                redis::cmd("PUBLISH").arg(channel).arg(message).query_async(&mut c).await
            })
            .await;
        // Not heard (the node is gone, or the message lost): its heartbeat finds out.
        metrics::counter!("interop_cluster_kicks_total", "heard" => if matches!(sent, Ok(n) if n > 0) { "yes" } else { "no" })
            .increment(1);
    }

    /// Gives up `device`'s lease if it is still `token` (a session ended). In the background.
    pub(crate) fn release(self: &Arc<Self>, device: &DeviceAddress, token: u64) {
        let this = Arc::clone(self);
        let (key, value) = (self.key("lease", device), self.lease_value(token));
        tokio::spawn(async move {
            let invocation = {
                let mut i = this.release.prepare_invoke();
                i.key(key).arg(value);
                i
            };
            let released: RedisResult<i64> =
                this.redis.call(|mut c| async move { invocation.invoke_async(&mut c).await }).await;
            if let Err(e) = released {
                tracing::debug!(error = %e, "cluster: lease not released; it expires");
            }
        });
    }

    /// Whether this node's session with lease `token` may still write for `device`: false only
    /// when Redis says another session holds the lease. Fails open when Redis is unreachable.
    pub(crate) async fn holds(&self, device: &DeviceAddress, token: u64) -> bool {
        let key = self.key("lease", device);
        let current: RedisResult<Option<String>> = self
            .redis
            .call(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await;
        match current {
            Ok(Some(v)) if v != self.lease_value(token) => {
                metrics::counter!("interop_cluster_fenced_total").increment(1);
                false
            }
            // Ours; or nobody's (Redis lost it: the heartbeat re-takes it); or Redis is down.
            Ok(_) | Err(_) => true,
        }
    }

    /// Devices with a new copy that are not live on this node: nudged where they are live,
    /// woken by push where they are not. Never waits.
    pub(crate) fn route(&self, devices: Vec<DeviceAddress>) {
        for d in devices {
            if let Err(e) = self.route_tx.try_send(d) {
                // The router is behind: wake the device; its node's re-check delivers anyway.
                metrics::counter!("interop_cluster_route_dropped_total").increment(1);
                self.wake(vec![e.into_inner()]);
            }
        }
    }

    /// Hands a live-only stanza (a chat state) to the nodes where `devices` are live. Best
    /// effort, in the background: nothing is stored, nobody is woken.
    pub(crate) fn forward_live(self: &Arc<Self>, devices: Vec<DeviceAddress>, stanza: Vec<u8>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let keys: Vec<String> = devices.iter().map(|d| this.key("lease", d)).collect();
            let holders: RedisResult<Vec<Option<String>>> = this
                .redis
                .call(|mut c| async move { redis::cmd("MGET").arg(keys).query_async(&mut c).await })
                .await;
            let Ok(holders) = holders else { return };
            let mut by_node: HashMap<String, Vec<&DeviceAddress>> = HashMap::new();
            for (d, holder) in devices.iter().zip(holders) {
                if let Some((_, node)) = holder.as_deref().and_then(parse_lease)
                    && node != this.config.node_id
                {
                    by_node.entry(node.to_owned()).or_default().push(d);
                }
            }
            let encoded = base64::engine::general_purpose::STANDARD.encode(&stanza);
            for (node, devices) in by_node {
                let message = json!({
                    "t": "live",
                    "d": devices.iter().map(|d| json!([d.account, d.device])).collect::<Vec<_>>(),
                    "s": encoded,
                })
                .to_string();
                let channel = this.node_channel(&node);
                let _: RedisResult<u64> = this
                    .redis
                    .call(|mut c| async move {
                        redis::cmd("PUBLISH").arg(channel).arg(message).query_async(&mut c).await
                    })
                    .await;
            }
        });
    }

    fn wake(&self, devices: Vec<DeviceAddress>) {
        if let Some(hook) = &self.offline {
            for d in devices {
                hook(d);
            }
        }
    }

    /// Tells every node that `account`'s sessions must close with `condition`.
    pub(crate) fn broadcast_close_account(
        self: &Arc<Self>,
        account: &str,
        condition: StreamCondition,
    ) {
        let message =
            json!({"t": "close", "a": account, "c": condition_name(condition), "n": self.config.node_id})
                .to_string();
        self.broadcast(message);
    }

    /// Tells every other node that the provider with `issuer` changed (they reload it).
    pub fn broadcast_provider_changed(self: &Arc<Self>, issuer: &str) {
        let message = json!({"t": "provider", "i": issuer, "n": self.config.node_id}).to_string();
        self.broadcast(message);
    }

    fn broadcast(self: &Arc<Self>, message: String) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let channel = this.all_channel();
            let sent: RedisResult<u64> = this
                .redis
                .call(|mut c| async move {
                    redis::cmd("PUBLISH").arg(channel).arg(message).query_async(&mut c).await
                })
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "cluster: broadcast lost");
            }
        });
    }

    /// Takes one token from the cluster-wide bucket `name` (`per_minute`, `burst`). `None`
    /// when Redis is unreachable (the caller falls back to its own node's limiter).
    pub async fn allow(&self, name: &str, per_minute: f64, burst: f64) -> Option<bool> {
        let invocation = {
            let mut i = self.bucket.prepare_invoke();
            i.key(format!("{}rate:{name}", self.config.key_prefix)).arg(per_minute).arg(burst);
            i
        };
        let allowed: RedisResult<i64> =
            self.redis.call(|mut c| async move { invocation.invoke_async(&mut c).await }).await;
        allowed.ok().map(|a| a == 1)
    }

    async fn subscriber(self: Arc<Self>, first: PubSub, shutdown: CancellationToken) {
        let mut next = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            let pubsub = match next.take() {
                Some(p) => p,
                None => {
                    let opened = tokio::select! {
                        () = shutdown.cancelled() => return,
                        p = self.subscribe() => p,
                    };
                    match opened {
                        Ok(p) => {
                            tracing::info!("cluster: subscribed again");
                            backoff = Duration::from_millis(100);
                            // What was said meanwhile is lost: read every queue, check leases.
                            self.live.nudge_all();
                            self.heartbeat_now.notify_one();
                            p
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "cluster: subscribing failed");
                            tokio::select! {
                                () = shutdown.cancelled() => return,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    }
                }
            };
            self.subscribed.store(true, Ordering::Relaxed);
            let mut messages = pubsub.into_on_message();
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => return,
                    m = messages.next() => m,
                };
                let Some(message) = message else { break };
                match message.get_payload::<String>() {
                    Ok(payload) => self.on_message(&payload),
                    Err(e) => tracing::debug!(error = %e, "cluster: unreadable message"),
                }
            }
            self.subscribed.store(false, Ordering::Relaxed);
            metrics::counter!("interop_cluster_resubscribes_total").increment(1);
            tracing::warn!("cluster: lost the subscription to Redis; reconnecting");
        }
    }

    fn on_message(&self, payload: &str) {
        let Ok(m) = serde_json::from_str::<Value>(payload) else { return };
        let device = |a: &Value, d: &Value| {
            Some(DeviceAddress {
                account: a.as_str()?.to_owned(),
                device: u32::try_from(d.as_u64()?).ok()?,
            })
        };
        match m["t"].as_str() {
            Some("nudge") => {
                let mut gone = Vec::new();
                for pair in m["d"].as_array().into_iter().flatten() {
                    if let Some(d) = device(&pair[0], &pair[1])
                        && !self.live.nudge(&d)
                    {
                        gone.push(d);
                    }
                }
                metrics::counter!("interop_cluster_nudges_received_total").increment(1);
                // Routed here but no longer live here: wake it.
                self.wake(gone);
            }
            Some("live") => {
                let Some(stanza) = m["s"]
                    .as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                else {
                    return;
                };
                for pair in m["d"].as_array().into_iter().flatten() {
                    if let Some(d) = device(&pair[0], &pair[1]) {
                        self.live.send_live(&d, stanza.clone());
                    }
                }
            }
            Some("kick") => {
                let (Some(d), Some(token)) = (device(&m["a"], &m["d"]), m["k"].as_u64()) else {
                    return;
                };
                // Only the session that held that token (or none: leased later).
                if self.live.close_if(&d, StreamCondition::Conflict, |_, lease| {
                    lease.is_none_or(|l| l == token)
                }) {
                    metrics::counter!("interop_cluster_sessions_replaced_total").increment(1);
                }
            }
            Some("close") if m["n"].as_str() != Some(self.config.node_id.as_str()) => {
                let condition = m["c"].as_str().and_then(StreamCondition::parse);
                if let (Some(account), Some(c)) = (m["a"].as_str(), condition) {
                    self.live.close_account(account, c);
                }
            }
            Some("provider") if m["n"].as_str() != Some(self.config.node_id.as_str()) => {
                let hook = self.provider_changed.lock().expect("cluster lock").clone();
                if let (Some(hook), Some(issuer)) = (hook, m["i"].as_str()) {
                    hook(issuer.to_owned());
                }
            }
            _ => {}
        }
    }

    async fn heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.config.heartbeat) => {}
                () = self.heartbeat_now.notified() => {}
            }
            self.heartbeat_once().await;
        }
    }

    /// Refreshes every lease of this node; closes sessions whose lease another node took;
    /// takes the lease of sessions that have none yet (if nobody else has it).
    async fn heartbeat_once(&self) {
        let sessions = self.live.snapshot();
        let (leased, unleased): (Vec<_>, Vec<_>) =
            sessions.into_iter().partition(|s| s.lease.is_some());
        for chunk in leased.chunks(REFRESH_CHUNK) {
            let invocation = {
                let mut i = self.refresh.prepare_invoke();
                i.arg(self.ttl_ms());
                for s in chunk {
                    i.key(self.key("lease", &s.device)).key(self.key("fence", &s.device));
                    i.arg(self.lease_value(s.lease.unwrap_or_default()));
                }
                i
            };
            let outcome: RedisResult<Vec<i64>> =
                self.redis.call(|mut c| async move { invocation.invoke_async(&mut c).await }).await;
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: heartbeat failed");
                    return;
                }
            };
            for (s, r) in chunk.iter().zip(outcome) {
                if r == 2 {
                    tracing::debug!("cluster: a lease Redis had lost was taken again");
                }
                if r == 0 {
                    self.lost(s.id, &s.device);
                }
            }
        }
        for s in unleased {
            match self.take_lease(&s.device, "if-free").await {
                Ok((0, _)) => self.lost(s.id, &s.device),
                Ok((token, previous)) => {
                    self.live.set_lease(&s.device, s.id, token);
                    self.kick(&s.device, &previous).await;
                }
                Err(_) => return,
            }
        }
    }

    fn lost(&self, id: u64, device: &DeviceAddress) {
        if self.live.close_if(device, StreamCondition::Conflict, |session, _| session == id) {
            metrics::counter!("interop_cluster_sessions_replaced_total").increment(1);
        }
    }

    async fn recheck(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.config.recheck) => {}
            }
            self.live.nudge_all();
        }
    }

    async fn router(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<DeviceAddress>,
        shutdown: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return,
                d = rx.recv() => match d {
                    Some(d) => d,
                    None => return,
                },
            };
            let mut batch = vec![first];
            while batch.len() < ROUTE_BATCH {
                match rx.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            batch.sort();
            batch.dedup();
            self.route_batch(batch).await;
        }
    }

    async fn route_batch(&self, devices: Vec<DeviceAddress>) {
        let keys: Vec<String> = devices.iter().map(|d| self.key("lease", d)).collect();
        let holders: RedisResult<Vec<Option<String>>> = self
            .redis
            .call(|mut c| async move { redis::cmd("MGET").arg(keys).query_async(&mut c).await })
            .await;
        let Ok(holders) = holders else {
            // Unknown: wake them; a node where one is live delivers at its re-check.
            metrics::counter!("interop_cluster_handoffs_total", "outcome" => "redis-down")
                .increment(devices.len() as u64);
            self.wake(devices);
            return;
        };
        let mut by_node: HashMap<String, Vec<DeviceAddress>> = HashMap::new();
        let mut offline = Vec::new();
        for (d, holder) in devices.into_iter().zip(holders) {
            match holder.as_deref().and_then(parse_lease) {
                Some((_, node)) if node == self.config.node_id => {
                    // Connected here meanwhile, or a lease this node has not released yet.
                    if !self.live.nudge(&d) {
                        offline.push(d);
                    }
                }
                Some((_, node)) => by_node.entry(node.to_owned()).or_default().push(d),
                None => offline.push(d),
            }
        }
        for (node, devices) in by_node {
            let message = json!({
                "t": "nudge",
                "d": devices.iter().map(|d| json!([d.account, d.device])).collect::<Vec<_>>(),
            })
            .to_string();
            let channel = self.node_channel(&node);
            let heard: RedisResult<u64> = self
                .redis
                .call(|mut c| async move {
                    redis::cmd("PUBLISH").arg(channel).arg(message).query_async(&mut c).await
                })
                .await;
            match heard {
                Ok(n) if n > 0 => {
                    metrics::counter!("interop_cluster_handoffs_total", "outcome" => "nudged")
                        .increment(devices.len() as u64);
                }
                _ => {
                    // Nobody listens on that node's channel (it died) or Redis failed.
                    metrics::counter!("interop_cluster_handoffs_total", "outcome" => "unheard")
                        .increment(devices.len() as u64);
                    offline.extend(devices);
                }
            }
        }
        self.wake(offline);
    }
}

/// `<token>@<node>` → (token, node).
fn parse_lease(value: &str) -> Option<(u64, &str)> {
    let (token, node) = value.split_once('@')?;
    Some((token.parse().ok()?, node)).filter(|(_, n)| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_parse_and_urls_are_redacted() {
        assert_eq!(parse_lease("17@node-a"), Some((17, "node-a")));
        assert_eq!(parse_lease("17@node@b"), Some((17, "node@b")));
        assert_eq!(parse_lease(""), None);
        assert_eq!(parse_lease("x@n"), None);
        assert_eq!(parse_lease("3@"), None);
        assert_eq!(redacted("redis://:s3cret@127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redacted("redis://u:s3cret@r.example/"), "redis://u@r.example/");
        let config = ClusterConfig::new("redis://:s3cret@127.0.0.1:1/", None);
        assert!(config.node_id.starts_with("node-"));
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}

//! The gatekeeper: the chat listener (Noise over TCP), the HTTP listener (admin API, health,
//! metrics, its own media host, the media proxy), and the background work behind them (provider
//! key fetches, push wake-ups, queue expiry).
//!
//! ```text
//!  TCP ─▶ conn::serve ─ handshake ─ authenticate (JWT via the registry, or native device key)
//!                        │
//!                        ├─ not enlisted: enlistment iqs only (enlist::handle)
//!                        └─ enlisted: Chat::connect, then stanzas ⇄ Chat / IqService / enlist
//!  HTTP ─▶ /admin/providers, /healthz, /metrics, /media/{sha256}, /proxy/{integrator}/{*path}
//!  fetch loop ─▶ Registry::poll_fetch ─ GET discovery / JWKS ─▶ Registry::handle_fetch
//!  offline hook ─▶ push task ─ push token + provider ─▶ PushDispatcher
//! ```
//!
//! The storage backend is a type parameter ([`GatekeeperStore`]); SQLite is the default.
//! With [`GatekeeperConfig::cluster`] (PostgreSQL only) the node joins a cluster through Redis
//! ([`crate::cluster`]): leases, hand-off of deliveries between nodes, cluster-wide rate limits.

mod conn;
mod enlist;
mod http;
mod media_token;
mod ws;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use interop_enlist::cache::{FetchFailure, FetchRequest, FetchResponse, HttpResponse};
use interop_enlist::enlist::PendingCode;
use interop_enlist::{GatekeeperConfig as RegistryConfig, Registry, UnixTime, UrlPolicy};
use interop_media::{HostLimits, MediaBaseUrl, ProxyLimits, SchemePolicy};
use interop_noise::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::{Chat, ChatConfig, LiveSessions, OfflineHook};
use crate::cluster::{Cluster, ClusterConfig};
use crate::iq::{IqLimits, IqService};
use crate::media::{BlobStore, MediaProxy};
use crate::outbound::{OutboundClient, OutboundConfig};
use crate::push::{PushConfig, PushDispatcher, PushTarget, WakeUp};
use crate::ratelimit::{Rate, RateLimiter};
use crate::store::sqlite::SqliteStore;
use crate::store::{
    AccountKind, AccountStore, DeviceAddress, MessageStore, ProviderRecord, ProviderStore,
    QueueLimits,
};
use crate::{Result, keyfile};

/// What a gatekeeper's storage backend must provide.
pub trait GatekeeperStore: MessageStore + AccountStore + ProviderStore {}
impl<T: MessageStore + AccountStore + ProviderStore> GatekeeperStore for T {}

/// Gatekeeper settings. [`GatekeeperConfig::new`] gives the defaults.
#[derive(Clone)]
pub struct GatekeeperConfig {
    /// Address of the chat listener (port 0: the OS picks).
    pub listen: SocketAddr,
    /// Address of the HTTP listener (admin, health, metrics, media); `None`: no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// Where keys, the database and media live.
    pub data_dir: PathBuf,
    /// Where the gatekeeper's own media host keeps its blobs (default `<data_dir>/media`). The
    /// nodes of a cluster point this at one shared directory (a shared filesystem): a blob
    /// uploaded through one node is then served by all.
    pub media_dir: Option<PathBuf>,
    /// The gatekeeper's id in tokens' `aud`.
    pub audience: String,
    /// Development mode: providers may use plain http on loopback, verification codes are
    /// printed on standard output.
    pub dev: bool,
    /// Bearer token of the admin API (empty: the admin API is closed).
    pub admin_token: String,
    /// The base URL clients reach the HTTP listener at (for media uploads), e.g.
    /// `https://media.example`; default: `http://<http listener>` in dev mode.
    pub public_http_url: Option<String>,
    /// How long a client may take to complete its handshake.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed (`connection-timeout`);
    /// clients keep it open with `ping` iqs.
    pub idle_timeout: Duration,
    /// Connections per IP address that have not authenticated yet.
    pub max_unauthenticated_per_ip: u32,
    /// Stanzas a connection may send: burst and per minute.
    pub stanza_rate: Rate,
    /// Chat core settings.
    pub chat: ChatConfig,
    /// Offline queue caps.
    pub queue: QueueLimits,
    /// iq service limits.
    pub iq: IqLimits,
    /// Validity of media tokens handed out by the `media` iq.
    pub media_token_ttl: Duration,
    /// Messages a native account may send per minute (interop accounts: their provider's
    /// quota).
    pub native_messages_per_minute: u32,
    /// Where native verification codes go: called with (identifier, code). Stands in for an
    /// SMS gateway; `None` with `dev` prints them on standard output.
    pub code_sink: Option<CodeSink>,
    /// Several nodes on one PostgreSQL database: the Redis side of the cluster (leases,
    /// hand-off, cluster-wide rate limits). `None`: a single node, no Redis calls at all.
    pub cluster: Option<ClusterConfig>,
}

/// Receives native verification codes (identifier, code).
pub type CodeSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl std::fmt::Debug for GatekeeperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatekeeperConfig")
            .field("listen", &self.listen)
            .field("http_listen", &self.http_listen)
            .field("data_dir", &self.data_dir)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

impl GatekeeperConfig {
    /// Defaults: chat on `listen`, no HTTP listener, production mode.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            http_listen: None,
            data_dir,
            media_dir: None,
            audience: "gatekeeper".to_owned(),
            dev: false,
            admin_token: String::new(),
            public_http_url: None,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_unauthenticated_per_ip: 64,
            stanza_rate: Rate { burst: 500.0, per_minute: 6_000.0 },
            chat: ChatConfig::default(),
            queue: QueueLimits::default(),
            iq: IqLimits::default(),
            media_token_ttl: Duration::from_secs(3600),
            native_messages_per_minute: 600,
            code_sink: None,
            cluster: None,
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn unix_now() -> UnixTime {
    UnixTime::from_secs((now_ms() / 1000) as u64)
}

/// State every connection and endpoint shares.
pub(crate) struct Shared<S> {
    pub config: GatekeeperConfig,
    pub noise: ServerConfig,
    pub store: Arc<S>,
    pub chat: Chat<S>,
    pub iq: IqService,
    pub registry: Mutex<Registry>,
    /// Wakes the fetch loop (a provider changed, or a verification wants fresh keys).
    pub registry_changed: Notify,
    /// Signalled after every finished key fetch.
    pub keys_fetched: Notify,
    /// Tells live interop connections that a provider's registration changed (its issuer):
    /// a connection whose provider is now disabled closes.
    pub provider_changed: tokio::sync::broadcast::Sender<String>,
    /// Push targets by provider issuer.
    pub push_targets: RwLock<HashMap<String, PushTarget>>,
    /// Per-provider settings the connection handler needs, by issuer.
    pub providers: RwLock<HashMap<String, ProviderRecord>>,
    pub proxy: Arc<MediaProxy>,
    pub blobs: Arc<BlobStore>,
    /// Native registrations waiting for their code, by identifier (bounded).
    pub codes: Mutex<HashMap<String, PendingCode>>,
    pub register_limit: RateLimiter,
    /// Reports per account.
    pub report_limit: RateLimiter,
    /// Messages per account: one limiter per provider (its quota), one for native accounts.
    pub message_limits: Mutex<HashMap<String, Arc<RateLimiter>>>,
    /// Enlistments per provider and hour: issuer -> (hour, count).
    pub enlistments: Mutex<HashMap<String, (i64, u32)>>,
    /// Signs and checks media tokens (stateless: any node of a cluster checks any node's).
    pub media_tokens: media_token::MediaTokenKey,
    /// Unauthenticated connections per IP.
    pub unauthenticated: Mutex<HashMap<IpAddr, u32>>,
    pub shutdown: CancellationToken,
    /// Serialises appends to the reports file.
    pub reports_lock: tokio::sync::Mutex<()>,
    /// The base URL of the HTTP listener as clients reach it (media uploads and downloads).
    pub http_base: Option<String>,
}

/// Most native registrations waiting for a code.
pub(crate) const MAX_PENDING_CODES: usize = 10_000;

impl<S: GatekeeperStore> Shared<S> {
    /// Applies a provider's (new) registration to the registry, the proxy and push.
    fn apply_provider(&self, record: &ProviderRecord) {
        let entry = &record.entry;
        let scheme =
            if self.config.dev { SchemePolicy::AllowHttp } else { SchemePolicy::HttpsOnly };
        if let Err(e) =
            self.registry.lock().expect("registry lock").upsert(entry.clone(), unix_now())
        {
            tracing::warn!(error = %e, "provider not applied to the token registry");
        }
        self.registry.lock().expect("registry lock").set_enabled(&entry.issuer, entry.enabled);
        match (entry.enabled, MediaBaseUrl::parse(&entry.media_base_url, scheme)) {
            (true, Ok(base)) => self.proxy.set_provider(&entry.integrator_id, base),
            _ => self.proxy.remove_provider(&entry.integrator_id),
        }
        let target = match (
            url::Url::parse(&entry.push_endpoint),
            standardwebhooks::Webhook::new(&record.push_secret),
        ) {
            (Ok(endpoint), Ok(signer)) => Some(PushTarget { endpoint, signer: Arc::new(signer) }),
            _ => None,
        };
        {
            let mut targets = self.push_targets.write().expect("push lock");
            match target {
                Some(t) if entry.enabled => {
                    targets.insert(entry.issuer.clone(), t);
                }
                _ => {
                    targets.remove(&entry.issuer);
                }
            }
        }
        self.providers
            .write()
            .expect("providers lock")
            .insert(entry.issuer.clone(), record.clone());
        self.registry_changed.notify_one();
        // No receiver (no live connection) is fine.
        let _ = self.provider_changed.send(entry.issuer.clone());
    }

    /// Appends a report (reporter, reported account, and what the reporter's client chose to
    /// include, as the XML of the `report` element) to `reports.jsonl` in the data directory,
    /// synced to disk before the reporter is answered. Moderation tooling reads that file.
    pub(crate) async fn record_report(
        &self,
        reporter: &str,
        reported: &str,
        iq: &interop_stanza::Node,
    ) -> Result<()> {
        let content = iq
            .children()
            .first()
            .and_then(|c| interop_stanza::xml::to_string(c).ok())
            .unwrap_or_default();
        let line = serde_json::json!({
            "at_ms": now_ms(),
            "reporter": reporter,
            "reported": reported,
            "report": content,
        })
        .to_string();
        let path = self.config.data_dir.join("reports.jsonl");
        let _guard = self.reports_lock.lock().await;
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, format!("{line}\n").as_bytes()).await?;
        file.sync_data().await?;
        Ok(())
    }

    /// Takes one message from `account`'s allowance: its provider's `messages_per_minute`
    /// quota (burst of a tenth of a minute's worth, at least 10), or for native accounts
    /// [`GatekeeperConfig::native_messages_per_minute`].
    /// In a cluster the allowance is cluster-wide (a token bucket in Redis); while Redis is
    /// unreachable each node falls back to its own limiter.
    pub(crate) async fn message_allowed(&self, issuer: Option<&str>, account: &str) -> bool {
        let (key, per_minute) = match issuer {
            Some(i) => {
                let quota = self
                    .providers
                    .read()
                    .expect("providers lock")
                    .get(i)
                    .map_or(0, |r| r.entry.quotas.messages_per_minute);
                (i.to_owned(), quota)
            }
            None => (String::new(), self.config.native_messages_per_minute),
        };
        if let Some(cluster) = self.chat.cluster() {
            let burst = (f64::from(per_minute) / 10.0).max(10.0);
            let bucket = format!("msg:{}:{account}", if key.is_empty() { "native" } else { &key });
            if let Some(allowed) = cluster.allow(&bucket, f64::from(per_minute), burst).await {
                return allowed;
            }
        }
        let limiter = {
            let mut limits = self.message_limits.lock().expect("limits lock");
            let rate = Rate {
                burst: (f64::from(per_minute) / 10.0).max(10.0),
                per_minute: f64::from(per_minute),
            };
            match limits.get(&key) {
                Some(l) if l.rate() == rate => Arc::clone(l),
                _ => {
                    let l = Arc::new(RateLimiter::new(rate, 1_000_000));
                    limits.insert(key, Arc::clone(&l));
                    l
                }
            }
        };
        limiter.check(account, now_ms())
    }

    /// Whether the provider with this issuer is registered and enabled.
    pub(crate) fn provider_enabled(&self, issuer: &str) -> bool {
        self.providers.read().expect("providers lock").get(issuer).is_some_and(|r| r.entry.enabled)
    }

    /// Where clients upload media to and fetch it from (`None`: no HTTP listener).
    pub(crate) fn media_base(&self) -> Option<String> {
        self.http_base.clone()
    }

    /// Mints a media token for `account`: the token and its lifetime in seconds. Every node
    /// of a cluster accepts it (see [`media_token`]).
    pub(crate) fn media_token(&self, account: &str) -> (String, u32) {
        let ttl = self.config.media_token_ttl.as_secs().min(u64::from(u32::MAX)) as u32;
        let expiry = unix_now().as_secs().saturating_add(u64::from(ttl));
        (self.media_tokens.mint(account, expiry), ttl)
    }

    /// Whether `token` is a live media token issued by this gatekeeper (any of its nodes).
    pub(crate) fn media_token_valid(&self, token: &str) -> bool {
        self.media_tokens.verify(token, unix_now().as_secs()).is_some()
    }
}

/// A bound, not yet running gatekeeper.
pub struct Gatekeeper<S = SqliteStore> {
    listener: TcpListener,
    http: Option<TcpListener>,
    identity: keyfile::ServerIdentity,
    shared: Arc<Shared<S>>,
    offline_rx: mpsc::Receiver<DeviceAddress>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl<S> std::fmt::Debug for Gatekeeper<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gatekeeper").field("listener", &self.listener).finish_non_exhaustive()
    }
}

/// Wake-ups waiting for the push task before new ones are dropped (the messages themselves
/// are stored; only the wake-up is lost).
const OFFLINE_QUEUE: usize = 10_000;

impl Gatekeeper<SqliteStore> {
    /// Opens the SQLite database `gatekeeper.db` in the data directory and binds.
    pub async fn bind(config: GatekeeperConfig) -> Result<Self> {
        if config.cluster.is_some() {
            return Err(crate::Error::Config(
                "redis_url needs database_url: the nodes of a cluster share one PostgreSQL \
                 database (SQLite is single-node)"
                    .into(),
            ));
        }
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Arc::new(
            SqliteStore::open(&config.data_dir.join("gatekeeper.db"), config.queue).await?,
        );
        Self::bind_with_store(config, store).await
    }
}

impl<S: GatekeeperStore> Gatekeeper<S> {
    /// Loads (or creates) the server key, the root and intermediate keys and the certificate
    /// chain in the data directory (see [`keyfile`]), loads the provider registry from `store`
    /// and binds the listeners.
    pub async fn bind_with_store(config: GatekeeperConfig, store: Arc<S>) -> Result<Self> {
        let identity =
            keyfile::load_or_create_identity(&config.data_dir, (now_ms() / 1000) as u64)?;
        let listener = TcpListener::bind(config.listen).await?;
        let http = match config.http_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let outbound = OutboundClient::new(&if config.dev {
            OutboundConfig::dev()
        } else {
            OutboundConfig::strict()
        })?;
        let (offline_tx, offline_rx) = mpsc::channel(OFFLINE_QUEUE);
        let hook: OfflineHook = Arc::new(move |device| {
            if offline_tx.try_send(device).is_err() {
                metrics::counter!("interop_push_total", "outcome" => "dropped").increment(1);
            }
        });
        let mut registry_config = RegistryConfig::new(&config.audience);
        if config.dev {
            registry_config.url_policy = UrlPolicy::DevLoopbackHttp;
        }
        let http_base = match (&config.public_http_url, &http) {
            (Some(url), _) => Some(url.trim_end_matches('/').to_owned()),
            (None, Some(l)) if config.dev => Some(format!("http://{}", l.local_addr()?)),
            _ => None,
        };
        let media_dir = config.media_dir.clone().unwrap_or_else(|| config.data_dir.join("media"));
        let blobs = Arc::new(BlobStore::open(media_dir, HostLimits::default())?);
        let live = Arc::new(LiveSessions::default());
        let cluster = match &config.cluster {
            Some(c) => {
                Some(Cluster::connect(c.clone(), Arc::clone(&live), Some(Arc::clone(&hook))).await?)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            noise: ServerConfig::new(identity.keys.clone(), identity.chain.clone()),
            chat: Chat::clustered(
                Arc::clone(&store),
                config.chat.clone(),
                Some(hook),
                live,
                cluster.clone(),
            ),
            iq: IqService::new(config.iq),
            store,
            registry: Mutex::new(Registry::new(registry_config)),
            registry_changed: Notify::new(),
            keys_fetched: Notify::new(),
            provider_changed: tokio::sync::broadcast::channel(64).0,
            push_targets: RwLock::default(),
            providers: RwLock::default(),
            proxy: Arc::new(MediaProxy::new(outbound.clone(), ProxyLimits::default())),
            blobs,
            codes: Mutex::default(),
            register_limit: RateLimiter::new(Rate { burst: 5.0, per_minute: 1.0 }, 100_000),
            report_limit: RateLimiter::new(Rate { burst: 10.0, per_minute: 1.0 }, 100_000),
            message_limits: Mutex::default(),
            enlistments: Mutex::default(),
            media_tokens: media_token::MediaTokenKey::derive(&identity.keys.private),
            unauthenticated: Mutex::default(),
            shutdown: CancellationToken::new(),
            reports_lock: tokio::sync::Mutex::new(()),
            http_base,
            config,
        });
        for record in shared.store.providers().await? {
            shared.apply_provider(&record);
        }
        if let Some(cluster) = &cluster {
            // Another node changed a provider (admin API): reload it from the shared store.
            let weak = Arc::downgrade(&shared);
            cluster.on_provider_changed(Arc::new(move |issuer: String| {
                let Some(shared) = weak.upgrade() else { return };
                tokio::spawn(async move {
                    match shared.store.providers().await {
                        Ok(all) => {
                            for r in all.iter().filter(|r| r.entry.issuer == issuer) {
                                shared.apply_provider(r);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cluster: provider reload failed"),
                    }
                });
            }));
            cluster.start(&shared.shutdown);
        }
        // One recorder per process; a second gatekeeper in the same process (tests) has none.
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().ok();
        let gk = Self { listener, http, identity, shared, offline_rx, metrics };
        tokio::spawn(fetch_loop(Arc::clone(&gk.shared), outbound));
        Ok(gk)
    }

    /// The chat listener's address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The HTTP listener's address, if there is one.
    pub fn http_addr(&self) -> Result<Option<SocketAddr>> {
        Ok(match &self.http {
            Some(l) => Some(l.local_addr()?),
            None => None,
        })
    }

    /// The server's public static key (clients learn it in the handshake and cache it).
    pub fn public_key(&self) -> [u8; 32] {
        self.identity.keys.public
    }

    /// The root public key clients pin (`--root-key`).
    pub fn root_key(&self) -> [u8; 32] {
        self.identity.root_public
    }

    /// Registers (or replaces) a provider, as `PUT /admin/providers/{id}` does.
    pub async fn upsert_provider(&self, record: &ProviderRecord) -> Result<()> {
        self.shared.store.upsert_provider(record, now_ms()).await?;
        self.shared.apply_provider(record);
        if let Some(cluster) = self.shared.chat.cluster() {
            cluster.broadcast_provider_changed(&record.entry.issuer);
        }
        Ok(())
    }

    /// This node's id in the cluster (`None`: a single node).
    pub fn node_id(&self) -> Option<&str> {
        self.shared.chat.cluster().map(|c| c.node_id())
    }

    /// Serves until `shutdown` resolves, then stops accepting, closes every connection with
    /// `system-shutdown` and waits (bounded) for them to finish. Everything acked was stored
    /// before its ack was sent, so nothing acked is lost.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let Self { listener, http, shared, offline_rx, metrics, .. } = self;
        let outbound = OutboundClient::new(&if shared.config.dev {
            OutboundConfig::dev()
        } else {
            OutboundConfig::strict()
        })?;
        let push = PushDispatcher::spawn(outbound, PushConfig::default());
        tokio::spawn(push_loop(Arc::clone(&shared), offline_rx, push));
        tokio::spawn(expiry_loop(Arc::clone(&shared)));
        let tracker = TaskTracker::new();
        if let Some(http) = http {
            let router = http::router(Arc::clone(&shared), metrics);
            let token = shared.shutdown.clone();
            tracker.spawn(async move {
                let served =
                    axum::serve(http, router.into_make_service_with_connect_info::<SocketAddr>())
                        .with_graceful_shutdown(async move { token.cancelled().await })
                        .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "http listener failed");
                }
            });
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = socket.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    tracker.spawn(async move { conn::serve(shared, socket, peer).await });
                }
            }
        }
        drop(listener);
        shared.shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await.is_err() {
            tracing::warn!("some connections did not finish within 10 s of shutdown");
        }
        Ok(())
    }
}

/// Fetches provider discovery documents and JWKS as the registry asks.
async fn fetch_loop<S: GatekeeperStore>(shared: Arc<Shared<S>>, client: OutboundClient) {
    loop {
        let (request, next) = {
            let mut r = shared.registry.lock().expect("registry lock");
            (r.poll_fetch(unix_now()), r.poll_timeout())
        };
        if let Some(request) = request {
            let (shared, client) = (Arc::clone(&shared), client.clone());
            tokio::spawn(async move {
                let response = fetch(&client, &request).await;
                let handled = shared
                    .registry
                    .lock()
                    .expect("registry lock")
                    .handle_fetch(unix_now(), response);
                if let Err(e) = handled {
                    tracing::info!(error = %e, "provider key fetch failed");
                }
                shared.keys_fetched.notify_waiters();
                shared.registry_changed.notify_one();
            });
            continue;
        }
        let wait = next.map_or(Duration::from_secs(60), |at| {
            Duration::from_secs(at.as_secs().saturating_sub(unix_now().as_secs()).max(1))
        });
        tokio::select! {
            () = shared.registry_changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

async fn fetch(client: &OutboundClient, request: &FetchRequest) -> FetchResponse {
    let ticket = request.ticket;
    let fail = |f| FetchResponse { ticket, result: Err(f) };
    let Ok(url) = url::Url::parse(&request.url) else { return fail(FetchFailure::Network) };
    let Ok(builder) = client.get(&url) else { return fail(FetchFailure::Network) };
    let response = match builder.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return fail(FetchFailure::Timeout),
        Err(_) => return fail(FetchFailure::Network),
    };
    let status = response.status().as_u16();
    let cache_control = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    let mut response = response;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > request.max_body {
                    return fail(FetchFailure::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return fail(FetchFailure::Timeout),
            Err(_) => return fail(FetchFailure::Network),
        }
    }
    FetchResponse { ticket, result: Ok(HttpResponse { status, cache_control, body }) }
}

/// Turns "this device was sent something while offline" into a push wake-up.
async fn push_loop<S: GatekeeperStore>(
    shared: Arc<Shared<S>>,
    mut offline: mpsc::Receiver<DeviceAddress>,
    push: PushDispatcher,
) {
    while let Some(device) = offline.recv().await {
        let identity = match shared.store.identity_of(&device.account).await {
            Ok(Some(i)) if i.kind == AccountKind::Interop => i,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "push: account lookup failed");
                continue;
            }
        };
        let Some(target) =
            shared.push_targets.read().expect("push lock").get(&identity.issuer).cloned()
        else {
            continue;
        };
        match shared.store.push_token(&device).await {
            Ok(Some(push_token)) => {
                push.wake(WakeUp { device, push_token, target });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "push: token lookup failed"),
        }
    }
}

/// Drops expired queue entries every minute.
async fn expiry_loop<S: GatekeeperStore>(shared: Arc<Shared<S>>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = shared.shutdown.cancelled() => return,
        }
        match shared.store.expire(now_ms()).await {
            Ok(n) if n > 0 => {
                metrics::counter!("interop_copies_expired_total").increment(n);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "queue expiry failed"),
        }
    }
}

//! Several gatekeeper nodes in-process on one PostgreSQL database and one Redis (issue 13).
//!
//! Each node runs on a tokio runtime of its own, so that a test can stop one abruptly
//! (`Runtime::shutdown_background`: its sockets, database and Redis connections vanish without
//! a `stream:error`, a lease release or a committed transaction, as in a crash). Clients are
//! native users registered over the enlistment iqs, speaking Noise + binary stanzas through
//! `interop_noise::tokio::connect` directly.
//!
//! One test runs the nodes as real processes instead (the `interop-server gatekeeper` binary,
//! configured by file as an operator would) and SIGKILLs one of them under load
//! ([`a_node_process_sigkilled_under_load_loses_nothing_acked`]).
//!
//! Services: `cargo xtask services up` (or `INTEROP_TEST_DATABASE_URL` and
//! `INTEROP_TEST_REDIS_URL`). Without them the tests skip, unless `INTEROP_REQUIRE_SERVICES=1`,
//! under which they fail. The Redis-restart test starts a `redis-server` of its own.
//! Every wait has a time limit; the only sleeps are polling intervals while waiting for a
//! condition that has no event (a health endpoint turning, a key reappearing).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{init_tracing, key_bundle, now_secs};
use interop_enlist::enlist::{Address, Consent, Request, Response};
use interop_noise::proto::{ClientPayload, Product};
use interop_noise::tokio::NoiseStream;
use interop_noise::{ClientConfig, StaticKeypair, TrustAnchor};
use interop_server::chat::LiveSessions;
use interop_server::cluster::{Cluster, ClusterConfig};
use interop_server::gatekeeper::{CodeSink, Gatekeeper, GatekeeperConfig};
use interop_server::provider::{Provider, ProviderConfig};
use interop_server::store::QueueLimits;
use interop_server::store::postgres::PgStore;
use interop_stanza::Node;
use interop_stanza::binary::Codec;
use interop_stanza::stanza::{
    Ack, AckClass, ChatState, ChatStateKind, Enc, EncType, Iq, IqPayload, IqType, Message,
    MessageType, Participant, StreamCondition, StreamError,
};
use rand::SeedableRng;
use sqlx::Connection;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The nodes' admin token.
const ADMIN: &str = "cluster-admin-token";
/// The integrator id of the test provider.
const INTEGRATOR: &str = "example";

/// How long any single wait may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(15);

// --- services ----------------------------------------------------------------------------------

fn required() -> bool {
    std::env::var("INTEROP_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The directory cargo builds into: `CARGO_TARGET_DIR`, else the workspace root's `target/`.
fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or(manifest);
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// (PostgreSQL admin URL, Redis URL) from the environment or `services.env`; `None`: skip.
fn services() -> Option<(String, String)> {
    let env_file = target_dir().join("services").join("services.env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_default();
    let from = |var: &str, key: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| text.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned())))
    };
    let db = from("INTEROP_TEST_DATABASE_URL", "DATABASE_URL=");
    let redis = from("INTEROP_TEST_REDIS_URL", "REDIS_URL=");
    match (db, redis) {
        (Some(db), Some(redis)) => Some((db, redis)),
        _ => {
            assert!(
                !required(),
                "INTEROP_REQUIRE_SERVICES=1 but no PostgreSQL and Redis: run `cargo xtask \
                 services up` (no {})",
                env_file.display()
            );
            eprintln!("skipped: no PostgreSQL and Redis (run `cargo xtask services up`)");
            None
        }
    }
}

/// A database of its own for one test, dropped when this is dropped.
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create(admin_url: &str) -> Option<Self> {
        let mut admin = match sqlx::PgConnection::connect(admin_url).await {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    !required(),
                    "INTEROP_REQUIRE_SERVICES=1 but PostgreSQL is unreachable: {e}"
                );
                eprintln!(
                    "skipped: PostgreSQL is unreachable ({e}); run `cargo xtask services up`"
                );
                return None;
            }
        };
        let name = format!("cluster_{}", hex::encode(rand::random::<[u8; 8]>()));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let _ = admin.close().await;
        let mut url = url::Url::parse(admin_url).unwrap();
        url.set_path(&format!("/{name}"));
        Some(Self { admin_url: admin_url.to_owned(), name, url: url.into() })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot block on itself: use another.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

async fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let ping = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Ok(_)))
}

// --- nodes ---------------------------------------------------------------------------------------

/// Cluster timings for tests: short, so that lost messages are found quickly.
#[derive(Clone, Copy)]
struct Timing {
    heartbeat: Duration,
    lease_ttl: Duration,
    recheck: Duration,
}

impl Timing {
    /// A re-check so slow that a prompt delivery can only come from the hand-off.
    fn handoff_only() -> Self {
        Self {
            heartbeat: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(3),
            recheck: Duration::from_secs(120),
        }
    }

    /// Everything fast: for failures.
    fn fast() -> Self {
        Self {
            heartbeat: Duration::from_millis(300),
            lease_ttl: Duration::from_secs(2),
            recheck: Duration::from_millis(400),
        }
    }
}

/// One database, one Redis, a shared data directory (the nodes share the server identity, as
/// nodes behind one load balancer do), and the nodes started on them.
struct World {
    db: TestDb,
    redis_url: String,
    prefix: String,
    dir: tempfile::TempDir,
    codes: Arc<Mutex<HashMap<String, String>>>,
    timing: Timing,
    messages_per_minute: u32,
    root: Mutex<Option<[u8; 32]>>,
}

/// A running node; `kill` stops it abruptly.
struct NodeHandle {
    rt: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    http: SocketAddr,
    id: String,
    stop: CancellationToken,
}

impl NodeHandle {
    /// Stops the node without any graceful step: every task, socket and connection is dropped.
    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        self.kill();
    }
}

async fn world(redis_url: Option<String>, timing: Timing) -> Option<World> {
    init_tracing();
    let (db_url, shared_redis) = services()?;
    let redis_url = redis_url.unwrap_or(shared_redis);
    if !redis_answers(&redis_url).await {
        assert!(!required(), "INTEROP_REQUIRE_SERVICES=1 but Redis at {redis_url} does not answer");
        eprintln!("skipped: Redis does not answer; run `cargo xtask services up`");
        return None;
    }
    let db = TestDb::create(&db_url).await?;
    Some(World {
        db,
        redis_url,
        prefix: format!("test-{}:", hex::encode(rand::random::<[u8; 6]>())),
        dir: tempfile::tempdir().unwrap(),
        codes: Arc::default(),
        timing,
        messages_per_minute: 6000,
        root: Mutex::new(None),
    })
}

impl World {
    async fn node(&self, name: &str) -> NodeHandle {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("node-{name}"))
            .enable_all()
            .build()
            .unwrap();
        let sink_codes = Arc::clone(&self.codes);
        let sink: CodeSink = Arc::new(move |identifier: &str, code: &str| {
            sink_codes.lock().unwrap().insert(identifier.to_owned(), code.to_owned());
        });
        let mut config =
            GatekeeperConfig::new("127.0.0.1:0".parse().unwrap(), self.dir.path().to_path_buf());
        config.dev = true;
        config.http_listen = Some("127.0.0.1:0".parse().unwrap());
        config.code_sink = Some(sink);
        config.native_messages_per_minute = self.messages_per_minute;
        config.admin_token = ADMIN.to_owned();
        let mut cluster = ClusterConfig::new(self.redis_url.clone(), Some(format!("gk-{name}")));
        cluster.key_prefix.clone_from(&self.prefix);
        cluster.heartbeat = self.timing.heartbeat;
        cluster.lease_ttl = self.timing.lease_ttl;
        cluster.recheck = self.timing.recheck;
        cluster.command_timeout = Duration::from_millis(800);
        config.cluster = Some(cluster);
        let stop = CancellationToken::new();
        let url = self.db.url.clone();
        let run_stop = stop.clone();
        let started = rt.spawn(async move {
            let store = Arc::new(PgStore::connect(&url, QueueLimits::default()).await?);
            let gk = Gatekeeper::bind_with_store(config, store).await?;
            let info = (
                gk.local_addr()?,
                gk.http_addr()?.unwrap(),
                gk.root_key(),
                gk.node_id().unwrap().to_owned(),
            );
            tokio::spawn(gk.run(run_stop.cancelled_owned()));
            Ok::<_, interop_server::Error>(info)
        });
        let (addr, http, root, id) = started.await.unwrap().unwrap();
        let mut known = self.root.lock().unwrap();
        assert!(known.is_none_or(|r| r == root), "the nodes share one server identity");
        *known = Some(root);
        NodeHandle { rt: Some(rt), addr, http, id, stop }
    }

    fn root(&self) -> [u8; 32] {
        self.root.lock().unwrap().expect("a node started")
    }

    async fn connect(&self, node: &NodeHandle, keys: &StaticKeypair) -> Client {
        Client::connect(node.addr, self.root(), keys).await.expect("connects")
    }

    /// A native user registered through `node`: (device key, connection, address).
    async fn native(&self, node: &NodeHandle, identifier: &str, seed: u8) -> User {
        let keys = StaticKeypair::generate(&mut rand::rngs::StdRng::from_os_rng());
        let mut c = self.connect(node, &keys).await;
        let sent = c.enlist_iq(Request::Register { identifier: identifier.into() }).await;
        assert!(matches!(sent, Response::CodeSent { .. }), "{sent:?}");
        let code = self.codes.lock().unwrap().get(identifier).cloned().expect("a code was sent");
        let confirmed = c
            .enlist_iq(Request::Confirm {
                identifier: identifier.into(),
                code,
                keys: key_bundle(seed),
            })
            .await;
        let Response::Registered { address } = confirmed else { panic!("{confirmed:?}") };
        User { keys, address, client: Some(c) }
    }

    /// The Redis key of a device's lease.
    fn lease_key(&self, a: &Address) -> String {
        format!("{}lease:{}:{}", self.prefix, a.account, a.device)
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

struct User {
    keys: StaticKeypair,
    address: Address,
    client: Option<Client>,
}

impl User {
    fn jid(&self) -> String {
        format!("{}@s.interop", self.address.account)
    }

    fn device(&self) -> String {
        format!("{}:{}@s.interop", self.address.account, self.address.device)
    }

    fn c(&mut self) -> &mut Client {
        self.client.as_mut().expect("connected")
    }
}

/// A message to account `to` with one payload for `device`.
fn message(id: &str, to: &str, device: &str) -> Node {
    Message::new(id, MessageType::Text)
        .to(to)
        .with_participant(Participant::new(
            device,
            Enc::new(EncType::Msg, format!("ciphertext of {id}").into_bytes()),
        ))
        .into_node()
}

// --- clients -------------------------------------------------------------------------------------

/// One client connection, with the stanzas it read but nobody asked for yet.
struct Client {
    stream: NoiseStream<TcpStream>,
    codec: Codec,
    pending: VecDeque<Node>,
    next_id: u32,
}

impl Client {
    async fn connect(addr: SocketAddr, root: [u8; 32], keys: &StaticKeypair) -> Option<Self> {
        let payload = ClientPayload {
            product: Product::Native as i32,
            user_agent: "cluster-test".into(),
            ..Default::default()
        };
        Self::connect_as(addr, root, keys, &payload).await
    }

    async fn connect_as(
        addr: SocketAddr,
        root: [u8; 32],
        keys: &StaticKeypair,
        payload: &ClientPayload,
    ) -> Option<Self> {
        let config = ClientConfig::new(keys.clone(), TrustAnchor::new(root).unwrap());
        let payload = payload.clone();
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let handshake = async {
            let socket = TcpStream::connect(addr).await.ok()?;
            interop_noise::tokio::connect(socket, &config, &payload, None, now_secs(), &mut rng)
                .await
                .ok()
        };
        let (stream, _) = tokio::time::timeout(TIMEOUT, handshake).await.ok()??;
        Some(Self { stream, codec: Codec::default(), pending: VecDeque::new(), next_id: 0 })
    }

    /// Sends; false if the connection is gone.
    async fn send(&mut self, node: &Node) -> bool {
        let bytes = self.codec.encode(node).unwrap();
        self.stream.send(&bytes).await.is_ok()
    }

    /// The next stanza off the wire; `None` once the connection ended. Fails after [`TIMEOUT`].
    async fn recv_wire(&mut self) -> Option<Node> {
        match tokio::time::timeout(TIMEOUT, self.stream.recv()).await.expect("a stanza in time") {
            Ok(Some(bytes)) => Some(self.codec.decode(&bytes).expect("the server sends stanzas")),
            Ok(None) | Err(_) => None,
        }
    }

    /// The first stanza (buffered or new) for which `want` holds; `None`: connection ended.
    async fn try_next_where(&mut self, want: impl Fn(&Node) -> bool) -> Option<Node> {
        if let Some(i) = self.pending.iter().position(&want) {
            return self.pending.remove(i);
        }
        loop {
            let node = self.recv_wire().await?;
            if want(&node) {
                return Some(node);
            }
            self.pending.push_back(node);
        }
    }

    async fn next_where(&mut self, what: &str, want: impl Fn(&Node) -> bool) -> Node {
        match self.try_next_where(want).await {
            Some(n) => n,
            None => panic!("connection closed while waiting for {what}"),
        }
    }

    async fn next_message(&mut self) -> Message {
        Message::from_node(self.next_where("a message", |n| n.tag == "message").await).unwrap()
    }

    /// Sends a message and waits for its ack; `None` if the connection ended first.
    async fn try_send_message(&mut self, id: &str, to: &str, device: &str) -> Option<Ack> {
        if !self.send(&message(id, to, device)).await {
            return None;
        }
        let node = self.try_next_where(|n| n.tag == "ack" && n.attr("id") == Some(id)).await?;
        Some(Ack::from_node(node).unwrap())
    }

    async fn send_message(&mut self, id: &str, to: &str, device: &str) -> Ack {
        self.try_send_message(id, to, device).await.expect("the ack, not the end of the connection")
    }

    /// Acknowledges a received message (after "persisting" it).
    async fn ack(&mut self, m: &Message) -> bool {
        let mut ack = Ack::new(m.id.clone(), AckClass::Message);
        ack.to.clone_from(&m.from);
        self.send(&ack.into_node()).await
    }

    async fn enlist_iq(&mut self, request: Request) -> Response {
        self.next_id += 1;
        let id = format!("q{}", self.next_id);
        assert!(self.send(&request.to_node(&id)).await);
        let answer = self
            .next_where("an iq answer", |n| n.tag == "iq" && n.attr("id") == Some(id.as_str()))
            .await;
        let (got, response) = Response::from_node(&answer).unwrap();
        assert_eq!(got, id);
        response
    }

    /// Reads until a `stream:error`, which must be followed by the end of the connection.
    async fn stream_error_then_closed(&mut self) -> StreamError {
        let node = self.next_where("a stream:error", |n| n.tag == "stream:error").await;
        let error = StreamError::from_node(node).unwrap();
        assert!(self.recv_wire().await.is_none(), "the connection closes after a stream:error");
        error
    }

    /// Half-closes and reads until the server closed its side: by then the server handled
    /// every stanza sent before and ended the chat session.
    async fn close(mut self) {
        let _ = self.stream.shutdown().await;
        while self.recv_wire().await.is_some() {}
    }

    /// A media token and the media base URL (`media` iq).
    async fn media_conn(&mut self) -> (String, String) {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        let iq = Iq::new(id.clone(), IqType::Get, Some("media"), IqPayload::MediaUploadInfoRequest);
        assert!(self.send(&iq.into_node()).await);
        let answer = self
            .next_where("the media iq's answer", |n| {
                n.tag == "iq" && n.attr("id") == Some(id.as_str())
            })
            .await;
        match Iq::from_node(answer).unwrap().payload {
            IqPayload::MediaUploadInfo(info) => (info.auth, info.hosts[0].hostname.clone()),
            other => panic!("{other:?}"),
        }
    }

    /// Whether a ping is answered (the connection is alive and served).
    async fn ping(&mut self) -> bool {
        self.next_id += 1;
        let id = format!("p{}", self.next_id);
        let ping = Node::new("iq")
            .with_attr("id", id.as_str())
            .with_attr("type", "get")
            .with_attr("xmlns", "ping");
        if !self.send(&ping).await {
            return false;
        }
        self.try_next_where(|n| n.tag == "iq" && n.attr("id") == Some(id.as_str())).await.is_some()
    }
}

async fn healthz(http: SocketAddr) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{http}/healthz")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Polls `check` every 50 ms until it holds, for at most `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- tests ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_start_up_error_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = ClusterConfig::new(format!("redis://:s3cret-pw@127.0.0.1:{port}/"), None);
    config.command_timeout = Duration::from_secs(1);
    let err = Cluster::connect(config, Arc::new(LiveSessions::default()), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("cannot connect to Redis at redis://127.0.0.1:{port}/")),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    // A single SQLite node refuses a Redis configuration: a cluster needs shared storage.
    let dir = tempfile::tempdir().unwrap();
    let mut gk = GatekeeperConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    gk.cluster = Some(ClusterConfig::new(format!("redis://127.0.0.1:{port}/"), None));
    let err = Gatekeeper::bind(gk).await.unwrap_err().to_string();
    assert!(err.contains("database_url"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_nodes_message_each_other_promptly() {
    let Some(w) = world(None, Timing::handoff_only()).await else { return };
    let a = w.node("a").await;
    let b = w.node("b").await;
    assert_ne!(a.id, b.id);
    let mut alice = w.native(&a, "+15550001", 1).await;
    let mut bob = w.native(&b, "+15550002", 2).await;
    let (bob_jid, bob_device) = (bob.jid(), bob.device());
    let (alice_jid, alice_device) = (alice.jid(), alice.device());

    for i in 0..5 {
        let id = format!("ab{i}");
        let started = Instant::now();
        assert_eq!(alice.c().send_message(&id, &bob_jid, &bob_device).await.error, None);
        let m = bob.c().next_message().await;
        // The re-check runs every 120 s: only the hand-off delivers this fast.
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!((m.id.as_str(), m.from.as_deref()), (id.as_str(), Some(alice_device.as_str())));
        assert!(bob.c().ack(&m).await);
    }
    assert_eq!(bob.c().send_message("ba0", &alice_jid, &alice_device).await.error, None);
    let m = alice.c().next_message().await;
    assert_eq!((m.id.as_str(), m.from.as_deref()), ("ba0", Some(bob_device.as_str())));

    // Chat states (live only, never stored) cross nodes too.
    let typing = ChatState::new(bob_jid.clone(), ChatStateKind::Composing);
    assert!(alice.c().send(&typing.into_node()).await);
    let got = bob.c().next_where("a chat state", |n| n.tag == "chatstate").await;
    let got = ChatState::from_node(got).unwrap();
    assert_eq!(
        (got.state, got.from.as_deref()),
        (ChatStateKind::Composing, Some(alice_device.as_str()))
    );

    // Both nodes report storage and Redis healthy.
    for n in [&a, &b] {
        let (status, body) = healthz(n.http).await;
        assert_eq!((status, body["redis"].as_str()), (200, Some("ok")), "{body}");
    }
    // Each device's lease names the node it is connected to.
    let mut r = w.redis().await;
    let lease: String =
        redis::cmd("GET").arg(w.lease_key(&bob.address)).query_async(&mut r).await.unwrap();
    assert!(lease.ends_with(&format!("@{}", b.id)), "{lease}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_moving_between_three_nodes_closes_the_old_session_with_conflict() {
    let Some(w) = world(None, Timing::handoff_only()).await else { return };
    let a = w.node("a").await;
    let b = w.node("b").await;
    let c = w.node("c").await;
    let mut alice = w.native(&a, "+15550011", 1).await;
    let mut carol = w.native(&a, "+15550012", 3).await;
    let (alice_jid, alice_device) = (alice.jid(), alice.device());

    // Alice logs in on node B, then C, then A again: each time her old session ends with
    // `conflict`, and Carol (node A) reaches her where she is, promptly (no re-check here).
    for (i, node) in [&b, &c, &a].into_iter().enumerate() {
        let mut old = alice.client.take().unwrap();
        alice.client = Some(w.connect(node, &alice.keys).await);
        let error = old.stream_error_then_closed().await;
        assert_eq!(error.condition, StreamCondition::Conflict, "move {i}");
        let id = format!("c{i}");
        assert_eq!(carol.c().send_message(&id, &alice_jid, &alice_device).await.error, None);
        let m = alice.c().next_message().await;
        assert_eq!(m.id, id);
        assert!(alice.c().ack(&m).await);
        assert!(alice.c().ping().await, "the new session stays");
    }
    // Only one session is live in the cluster: the lease names node A.
    let mut r = w.redis().await;
    let lease: String =
        redis::cmd("GET").arg(w.lease_key(&alice.address)).query_async(&mut r).await.unwrap();
    assert!(lease.ends_with(&format!("@{}", a.id)), "{lease}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_lease_was_taken_is_fenced_and_closed() {
    let Some(w) = world(None, Timing::handoff_only()).await else { return };
    let a = w.node("a").await;
    let _b = w.node("b").await;
    let mut alice = w.native(&a, "+15550021", 1).await;
    let mut bob = w.native(&a, "+15550022", 2).await;
    let (bob_jid, bob_device) = (bob.jid(), bob.device());
    assert_eq!(alice.c().send_message("before", &bob_jid, &bob_device).await.error, None);
    assert_eq!(bob.c().next_message().await.id, "before");

    // A newer login of Alice's device on a node whose announcement was lost: only the lease
    // says so. Alice's next write on node A is refused and her session closed.
    let mut r = w.redis().await;
    let () = redis::cmd("SET")
        .arg(w.lease_key(&alice.address))
        .arg("999999@gk-elsewhere")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(alice.c().send(&message("stale", &bob_jid, &bob_device)).await);
    let error = alice.c().stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::Conflict);
    assert!(
        !alice.c().pending.iter().any(|n| n.tag == "ack"),
        "the stale write was not acknowledged"
    );
    // Not stored: Bob's next message is a fresh one from Carol.
    let mut carol = w.native(&a, "+15550023", 3).await;
    assert_eq!(carol.c().send_message("after", &bob_jid, &bob_device).await.error, None);
    assert_eq!(bob.c().next_message().await.id, "after");

    // A lease lost without a write is found by the heartbeat.
    let mut dave = w.native(&a, "+15550024", 4).await;
    assert!(dave.c().ping().await, "Dave's session (and lease) exists");
    let () = redis::cmd("SET")
        .arg(w.lease_key(&dave.address))
        .arg("999999@gk-elsewhere")
        .query_async(&mut r)
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(dave.c().stream_error_then_closed().await.condition, StreamCondition::Conflict);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_queue_is_drained_on_another_node() {
    let Some(w) = world(None, Timing::handoff_only()).await else { return };
    let a = w.node("a").await;
    let b = w.node("b").await;
    let mut alice = w.native(&a, "+15550031", 1).await;
    let mut bob = w.native(&b, "+15550032", 2).await;
    let (bob_jid, bob_device) = (bob.jid(), bob.device());
    bob.client.take().unwrap().close().await;

    let sent = ["m1", "m2", "m3"];
    for id in sent {
        assert_eq!(alice.c().send_message(id, &bob_jid, &bob_device).await.error, None);
    }
    // Bob comes back on node A: all three in order. No ack.
    let mut c = w.connect(&a, &bob.keys).await;
    for id in sent {
        assert_eq!(c.next_message().await.id, id);
    }
    c.close().await;
    // Then on node B: again, in order; now acked.
    let mut c = w.connect(&b, &bob.keys).await;
    for id in sent {
        let m = c.next_message().await;
        assert_eq!(m.id, id);
        assert!(c.ack(&m).await);
    }
    c.close().await;
    // Acked on node B, gone on node A: a new message is the first thing Bob gets there.
    let mut c = w.connect(&a, &bob.keys).await;
    assert_eq!(alice.c().send_message("m4", &bob_jid, &bob_device).await.error, None);
    assert_eq!(c.next_message().await.id, "m4", "acked copies are not delivered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_rate_is_cluster_wide() {
    let Some(mut w) = world(None, Timing::handoff_only()).await else { return };
    // 20 a minute: a burst of 10 (at least 10), then one every 3 s.
    w.messages_per_minute = 20;
    let a = w.node("a").await;
    let b = w.node("b").await;
    let mut alice = w.native(&a, "+15550041", 1).await;
    let bob = w.native(&b, "+15550042", 2).await;
    let (bob_jid, bob_device) = (bob.jid(), bob.device());
    let mut outcomes = Vec::new();
    for i in 0..6 {
        outcomes.push(alice.c().send_message(&format!("r{i}"), &bob_jid, &bob_device).await.error);
    }
    // The same account continues through the other node: the allowance is shared.
    alice.client.take().unwrap().close().await;
    let mut c = w.connect(&b, &alice.keys).await;
    for i in 6..12 {
        outcomes.push(c.send_message(&format!("r{i}"), &bob_jid, &bob_device).await.error);
    }
    let accepted = outcomes.iter().filter(|o| o.is_none()).count();
    let limited = outcomes.iter().filter(|o| o.as_deref() == Some("rate-limited")).count();
    // One token may come back during the run (one every 3 s).
    assert!((10..=11).contains(&accepted) && accepted + limited == 12, "{outcomes:?}");
}

/// What one receiver got: ids in arrival order (after de-duplication), duplicates seen.
#[derive(Default)]
struct Received {
    ids: Vec<String>,
    seen: HashSet<String>,
    duplicates: usize,
}

/// Receives (and acks) until `want` distinct ids arrived; reconnects to `fallback` when its
/// connection ends (its node died).
async fn receive_all(
    mut client: Client,
    keys: StaticKeypair,
    fallback: SocketAddr,
    root: [u8; 32],
    want: usize,
    got: Arc<Mutex<Received>>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if got.lock().unwrap().ids.len() >= want {
            return;
        }
        assert!(Instant::now() < deadline, "receiver did not get everything in time");
        match client.try_next_where(|n| n.tag == "message").await {
            Some(node) => {
                let m = Message::from_node(node).unwrap();
                {
                    // "Persist" (de-duplicating by id), then ack.
                    let mut g = got.lock().unwrap();
                    if g.seen.insert(m.id.clone()) {
                        g.ids.push(m.id.clone());
                    } else {
                        g.duplicates += 1;
                    }
                }
                let _ = client.ack(&m).await;
            }
            None => {
                client = Client::connect(fallback, root, &keys).await.expect("reconnects");
            }
        }
    }
}

/// Sends `ids` in order, each until acked; reconnects to `fallback` when its connection ends
/// and resends the unacknowledged one (`duplicate` counts as acked). Returns the acked ids.
async fn send_all(
    mut client: Client,
    keys: StaticKeypair,
    fallback: SocketAddr,
    root: [u8; 32],
    (to, device): (String, String),
    ids: Vec<String>,
    acked: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut done = Vec::new();
    for id in ids {
        loop {
            match client.try_send_message(&id, &to, &device).await {
                Some(ack) if ack.error.is_none() || ack.error.as_deref() == Some("duplicate") => {
                    done.push(id.clone());
                    acked.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Some(ack) => panic!("{id} refused: {:?}", ack.error),
                None => {
                    client = Client::connect(fallback, root, &keys).await.expect("reconnects");
                }
            }
        }
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_acked() {
    let Some(w) = world(None, Timing::fast()).await else { return };
    let mut a = w.node("a").await;
    let b = w.node("b").await;
    // Alice (node A) writes to Bob (node B); Carol (node B) writes to Dave (node A).
    let mut alice = w.native(&a, "+15550051", 1).await;
    let mut bob = w.native(&b, "+15550052", 2).await;
    let mut carol = w.native(&b, "+15550053", 3).await;
    let mut dave = w.native(&a, "+15550054", 4).await;
    const N: usize = 60;
    let root = w.root();
    let ids = |p: &str| (0..N).map(|i| format!("{p}{i:03}")).collect::<Vec<_>>();
    let (to_bob, to_dave) = (Received::default(), Received::default());
    let (to_bob, to_dave) = (Arc::new(Mutex::new(to_bob)), Arc::new(Mutex::new(to_dave)));
    let bob_rx = tokio::spawn(receive_all(
        bob.client.take().unwrap(),
        bob.keys.clone(),
        b.addr,
        root,
        N,
        Arc::clone(&to_bob),
    ));
    let dave_rx = tokio::spawn(receive_all(
        dave.client.take().unwrap(),
        dave.keys.clone(),
        b.addr,
        root,
        N,
        Arc::clone(&to_dave),
    ));
    let alice_acks = Arc::new(AtomicUsize::new(0));
    let alice_tx = tokio::spawn(send_all(
        alice.client.take().unwrap(),
        alice.keys.clone(),
        b.addr,
        root,
        (bob.jid(), bob.device()),
        ids("a"),
        Arc::clone(&alice_acks),
    ));
    let carol_tx = tokio::spawn(send_all(
        carol.client.take().unwrap(),
        carol.keys.clone(),
        b.addr,
        root,
        (dave.jid(), dave.device()),
        ids("c"),
        Arc::new(AtomicUsize::new(0)),
    ));
    // Mid-run, node A dies: no stream errors, no lease releases, connections just vanish.
    eventually(TIMEOUT, "Alice got 20 acks", || {
        let n = alice_acks.load(Ordering::SeqCst);
        async move { n >= 20 }
    })
    .await;
    a.kill();
    let alice_sent = alice_tx.await.unwrap();
    let carol_sent = carol_tx.await.unwrap();
    tokio::time::timeout(Duration::from_secs(150), bob_rx).await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(150), dave_rx).await.unwrap().unwrap();
    for (sent, got) in [(alice_sent, &to_bob), (carol_sent, &to_dave)] {
        let got = got.lock().unwrap();
        // Every acked message exactly once after de-duplication, in the order sent.
        assert_eq!(got.ids, sent);
        eprintln!("redelivered duplicates: {}", got.duplicates);
    }
}

// --- nodes as processes --------------------------------------------------------------------------

/// Verification codes the node processes print (`verification-code <identifier> <code>`), by
/// identifier, and a wake-up for whoever waits for one.
#[derive(Default)]
struct Codes {
    by_identifier: Mutex<HashMap<String, String>>,
    arrived: tokio::sync::Notify,
}

impl Codes {
    /// The code printed for `identifier`, waiting for it (bounded).
    async fn wait(&self, identifier: &str) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            // Registered before the look-up, so that a code arriving in between wakes it.
            let arrived = self.arrived.notified();
            if let Some(code) = self.by_identifier.lock().unwrap().get(identifier) {
                return code.clone();
            }
            let waited = tokio::time::timeout_at(deadline, arrived).await;
            assert!(waited.is_ok(), "no verification code for {identifier} within {TIMEOUT:?}");
        }
    }
}

/// A gatekeeper node as a process of its own: the real `interop-server gatekeeper` binary,
/// configured by file for the test's database and Redis. SIGKILLed on drop at the latest.
struct NodeProcess {
    child: Option<std::process::Child>,
    addr: SocketAddr,
    root: [u8; 32],
}

impl NodeProcess {
    /// SIGKILL (`Child::kill` on Unix): no stream errors, no lease releases, no graceful
    /// anything. Returns how the process ended.
    fn kill(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the node runs");
        child.kill().expect("SIGKILL delivered");
        child.wait().expect("the killed node is reaped")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl World {
    /// Starts `interop-server gatekeeper` as node `name` (a unique node id) on this world's
    /// database, Redis and data directory (shared: the nodes have one server identity), with
    /// the anti-abuse rate limits lifted, and waits for its `root-key` and `listening` lines.
    /// Its verification codes go to `codes`.
    async fn node_process(&self, name: &str, codes: &Arc<Codes>) -> NodeProcess {
        use std::io::BufRead;
        let config = self.dir.path().join(format!("node-{name}.toml"));
        let node_id = format!("gk-{name}-{}", hex::encode(rand::random::<[u8; 4]>()));
        std::fs::write(
            &config,
            format!(
                "dev = true\ndatabase_url = \"{}\"\nredis_url = \"{}\"\nnode_id = \"{node_id}\"\n\
                 stanzas_per_minute = 100000000\nnative_messages_per_minute = 100000000\n",
                self.db.url, self.redis_url
            ),
        )
        .unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_interop-server"));
        command
            .args(["gatekeeper", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(self.dir.path().join("gatekeeper"))
            // Set here so that two nodes do not race to generate it in the shared directory.
            .env("INTEROP_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for key in ["CONFIG", "DATABASE_URL", "REDIS_URL", "NODE_ID", "DEV", "DATA_DIR"] {
            command.env_remove(format!("INTEROP_{key}"));
        }
        let mut child = command.spawn().expect("interop-server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let codes = Arc::clone(codes);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let code = line.strip_prefix("verification-code ").and_then(|r| r.split_once(' '));
                if let Some((identifier, code)) = code {
                    codes.by_identifier.lock().unwrap().insert(identifier.into(), code.into());
                    codes.arrived.notify_waiters();
                } else {
                    let _ = lines_tx.send(line);
                }
            }
        });
        let mut node =
            NodeProcess { child: Some(child), addr: "0.0.0.0:0".parse().unwrap(), root: [0; 32] };
        let mut root = None;
        loop {
            let line = tokio::time::timeout(TIMEOUT, lines.recv()).await;
            let Ok(Some(line)) = line else {
                let status = node.child.as_mut().map(|c| c.try_wait());
                panic!("node {name} printed no `listening` line (exit status {status:?})")
            };
            match line.split_once(' ') {
                Some(("root-key", hex)) => {
                    root = Some(hex::decode(hex).unwrap().try_into().expect("a 32-byte key"));
                }
                Some(("listening", addr)) => {
                    node.addr = addr.parse().unwrap();
                    node.root = root.expect("`root-key` comes before `listening`");
                    return node;
                }
                _ => {}
            }
        }
    }
}

/// A native user registered through the node process at `addr`.
async fn native_on(node: &NodeProcess, codes: &Codes, identifier: &str, seed: u8) -> User {
    let keys = StaticKeypair::generate(&mut rand::rngs::StdRng::from_os_rng());
    let mut c = Client::connect(node.addr, node.root, &keys).await.expect("connects");
    let sent = c.enlist_iq(Request::Register { identifier: identifier.into() }).await;
    assert!(matches!(sent, Response::CodeSent { .. }), "{sent:?}");
    let code = codes.wait(identifier).await;
    let confirmed = c
        .enlist_iq(Request::Confirm { identifier: identifier.into(), code, keys: key_bundle(seed) })
        .await;
    let Response::Registered { address } = confirmed else { panic!("{confirmed:?}") };
    User { keys, address, client: Some(c) }
}

/// What one user of [`chat_under_load`] saw.
#[derive(Debug, Default)]
struct Traffic {
    /// Own message ids in the order the server acknowledged them.
    acked: Vec<String>,
    /// How many of them were acknowledged before the kill was announced.
    acked_before_kill: usize,
    /// Resends answered `duplicate`: stored before the crash, the ack lost with it.
    answered_duplicate: usize,
    /// The partner's message ids, first copies in arrival order (de-duplicated by id).
    received: Vec<String>,
    /// Copies that arrived again (redeliveries after the crash), dropped by the de-duplication.
    redelivered: usize,
    /// Connections lost and made again, to the surviving node.
    reconnects: usize,
    /// Messages sent again after a reconnect (unacknowledged when the connection was lost).
    resent: usize,
}

/// One user under load: sends `total` messages (`<prefix><n>`) to its partner `to`, `window`
/// unacknowledged at a time, while receiving (and acking) the partner's `total`; when the
/// connection ends (its node died) it connects to `fallback` and resends, in order, whatever
/// had not been acknowledged (the protocol's retry: `duplicate` counts as acknowledged).
/// `progress` counts acknowledgements; `killed` tells which came before the kill.
#[allow(clippy::too_many_arguments)]
async fn chat_under_load(
    mut client: Client,
    keys: StaticKeypair,
    (fallback, root): (SocketAddr, [u8; 32]),
    (prefix, total, window): (String, usize, usize),
    (to, device): (String, String),
    partner_prefix: String,
    progress: Arc<tokio::sync::watch::Sender<usize>>,
    killed: Arc<std::sync::atomic::AtomicBool>,
) -> Traffic {
    let mut t = Traffic::default();
    let mut seen = HashSet::new();
    let mut in_flight: VecDeque<String> = VecDeque::new();
    let mut next = 0;
    while t.acked.len() < total || t.received.len() < total {
        let mut alive = true;
        while alive && in_flight.len() < window && next < total {
            let id = format!("{prefix}{next:05}");
            alive = client.send(&message(&id, &to, &device)).await;
            // Sent or not, it waits for its ack: a lost one is resent after the reconnect.
            in_flight.push_back(id);
            next += 1;
        }
        let stanza = if !alive {
            None
        } else if let Some(buffered) = client.pending.pop_front() {
            Some(buffered)
        } else {
            client.recv_wire().await
        };
        let Some(stanza) = stanza else {
            client = Client::connect(fallback, root, &keys).await.expect("reconnects");
            t.reconnects += 1;
            t.resent += in_flight.len();
            for id in &in_flight {
                assert!(client.send(&message(id, &to, &device)).await, "the survivor is up");
            }
            continue;
        };
        match stanza.tag.as_str() {
            "ack" => {
                let ack = Ack::from_node(stanza).unwrap();
                if ack.class != AckClass::Message || !in_flight.contains(&ack.id) {
                    continue;
                }
                assert_eq!(in_flight.front(), Some(&ack.id), "acks come in sending order");
                match ack.error.as_deref() {
                    None => {}
                    Some("duplicate") => t.answered_duplicate += 1,
                    Some(other) => panic!("{} refused: {other}", ack.id),
                }
                t.acked.extend(in_flight.pop_front());
                if !killed.load(Ordering::SeqCst) {
                    t.acked_before_kill += 1;
                }
                progress.send_modify(|n| *n += 1);
            }
            "message" => {
                let m = Message::from_node(stanza).unwrap();
                assert!(m.id.starts_with(&partner_prefix), "{} is not from the partner", m.id);
                // "Persist" (de-duplicating by id), then ack; a failed ack shows as the end of
                // the connection at the next read.
                if seen.insert(m.id.clone()) {
                    t.received.push(m.id.clone());
                } else {
                    t.redelivered += 1;
                }
                let _ = client.ack(&m).await;
            }
            _ => {}
        }
    }
    client.close().await;
    t
}

/// Two `interop-server gatekeeper` processes on one database and one Redis; pairs of users, one
/// of each pair on each node, message each other with several messages in flight. Once a third
/// of node A's users' messages are acked, node A is SIGKILLed; its users reconnect to node B and
/// resend what was not acked. Every message acked (before or after the kill) reaches the partner
/// exactly once after de-duplication, in the order sent; node B's users never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_process_sigkilled_under_load_loses_nothing_acked() {
    /// Pairs of users; in pair `i`, user `a<i>` is on node A and `b<i>` on node B.
    const PAIRS: usize = 5;
    /// Messages each user sends.
    const TOTAL: usize = 150;
    /// Unacknowledged messages per sender.
    const WINDOW: usize = 8;
    /// A bound on the whole load phase (a hang bound, not synchronisation).
    const HANG: Duration = Duration::from_secs(60);
    let began = Instant::now();
    let Some(w) = world(None, Timing::fast()).await else { return };
    let codes = Arc::new(Codes::default());
    // One after the other: the first creates the server identity in the shared directory and
    // runs the database migrations.
    let mut a = w.node_process("a", &codes).await;
    let b = w.node_process("b", &codes).await;
    assert_eq!(a.root, b.root, "the nodes share one server identity");
    let mut users = Vec::new();
    for i in 0..PAIRS {
        let seed = u8::try_from(i).unwrap();
        let on_a = native_on(&a, &codes, &format!("+1555007{i:04}"), 2 * seed).await;
        let on_b = native_on(&b, &codes, &format!("+1555008{i:04}"), 2 * seed + 1).await;
        users.push((on_a, on_b));
    }
    let started = Instant::now();
    let acked_via_a = Arc::new(tokio::sync::watch::Sender::new(0usize));
    let acked_via_b = Arc::new(tokio::sync::watch::Sender::new(0usize));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (on_a, on_b)) in users.iter_mut().enumerate() {
        let (a_to, b_to) = ((on_b.jid(), on_b.device()), (on_a.jid(), on_a.device()));
        for (user, progress, prefix, partner, to) in [
            (&mut *on_a, &acked_via_a, format!("a{i}-"), format!("b{i}-"), a_to),
            (&mut *on_b, &acked_via_b, format!("b{i}-"), format!("a{i}-"), b_to),
        ] {
            tasks.push(tokio::spawn(chat_under_load(
                user.client.take().unwrap(),
                user.keys.clone(),
                (b.addr, b.root),
                (prefix, TOTAL, WINDOW),
                to,
                partner,
                Arc::clone(progress),
                Arc::clone(&killed),
            )));
        }
    }
    // Mid-load (a third of node A's senders' messages acked), node A is SIGKILLed.
    let third = PAIRS * TOTAL / 3;
    let mut via_a = acked_via_a.subscribe();
    // (The borrow `wait_for` returns is dropped at once: it holds the senders off.)
    let reached =
        tokio::time::timeout(HANG, via_a.wait_for(|n| *n >= third)).await.map(|r| r.is_ok());
    assert_eq!(reached, Ok(true), "node A's senders never got {third} acks");
    let status = a.kill();
    killed.store(true, Ordering::SeqCst);
    let killed_after = started.elapsed();
    let (acked_a_at_kill, acked_b_at_kill) = (*acked_via_a.borrow(), *acked_via_b.borrow());
    let mut traffic = Vec::new();
    for task in tasks {
        let done = tokio::time::timeout(HANG.saturating_sub(started.elapsed()), task).await;
        traffic.push(done.expect("the load finished in time").expect("no user task panicked"));
    }
    let load = started.elapsed();

    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "node A ended by SIGKILL");
    let sum = |f: fn(&Traffic) -> usize, side: usize| -> usize {
        traffic.iter().skip(side).step_by(2).map(f).sum()
    };
    eprintln!(
        "node process killed under load: {PAIRS} pairs across the two nodes, {TOTAL} messages \
         each way, window {WINDOW}; killed {killed_after:?} into the load ({acked_a_at_kill} \
         acks via node A, {acked_b_at_kill} via node B); load {load:?}, whole test {:?}",
        began.elapsed()
    );
    for (side, name) in [(0, "node A's users"), (1, "node B's users")] {
        eprintln!(
            "  {name}: acked before the kill {}, resent after reconnecting {}, answered \
             duplicate {}, redelivered copies dropped {}, reconnects {}",
            sum(|t| t.acked_before_kill, side),
            sum(|t| t.resent, side),
            sum(|t| t.answered_duplicate, side),
            sum(|t| t.redelivered, side),
            sum(|t| t.reconnects, side),
        );
    }
    for (i, pair) in traffic.chunks(2).enumerate() {
        let [on_a, on_b] = pair else { unreachable!("two users per pair") };
        // Everything was acked in the end (resent until acked); the acks came in sending
        // order, so `acked` is also the sending order.
        for (t, prefix) in [(on_a, 'a'), (on_b, 'b')] {
            let all: Vec<String> = (0..TOTAL).map(|n| format!("{prefix}{i}-{n:05}")).collect();
            assert_eq!(t.acked, all, "{prefix}{i}: every message acked, in order");
        }
        // Every acked message (before and after the kill) delivered exactly once after
        // de-duplication, in the sender's order.
        assert_eq!(on_b.received, on_a.acked, "b{i} got a{i}'s messages once, in order");
        assert_eq!(on_a.received, on_b.acked, "a{i} got b{i}'s messages once, in order");
        // Node A's users were mid-load at the kill and moved to node B; node B's stayed.
        assert!(on_a.acked_before_kill < TOTAL, "a{i} was still sending at the kill");
        assert!(on_a.reconnects >= 1, "a{i} reconnected to node B");
        assert_eq!(on_b.reconnects, 0, "b{i} kept its connection to node B");
    }
    assert!(sum(|t| t.acked_before_kill, 0) >= third, "the acks counted before the kill");
    assert!(sum(|t| t.resent, 0) > 0, "messages were in flight through node A at the kill");
}

/// A `redis-server` of this test's own, so that it can be killed and started again.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn binary() -> Option<PathBuf> {
        ["/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    }

    fn start() -> Option<Self> {
        let Some(_) = Self::binary() else {
            assert!(!required(), "INTEROP_REQUIRE_SERVICES=1 but redis-server is not installed");
            eprintln!("skipped: redis-server is not installed");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Self { port, dir: tempfile::tempdir().unwrap(), child: None };
        r.restart();
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn restart(&mut self) {
        let child = std::process::Command::new(Self::binary().unwrap())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: Redis loses everything (it keeps nothing on disk here).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_goes_on_while_redis_restarts() {
    let Some(mut redis) = OwnRedis::start() else { return };
    let Some(w) = world(Some(redis.url()), Timing::fast()).await else { return };
    let a = w.node("a").await;
    let b = w.node("b").await;
    let mut alice = w.native(&a, "+15550061", 1).await;
    let mut bob = w.native(&b, "+15550062", 2).await;
    let (bob_jid, bob_device) = (bob.jid(), bob.device());
    const N: usize = 45;
    let got = Arc::new(Mutex::new(Received::default()));
    let bob_rx = tokio::spawn(receive_all(
        bob.client.take().unwrap(),
        bob.keys.clone(),
        b.addr,
        w.root(),
        N,
        Arc::clone(&got),
    ));
    let mut sent = Vec::new();
    let delivered = || got.lock().unwrap().ids.len();
    for i in 0..N {
        if i == 15 {
            redis.kill();
            // Both nodes notice and say so on /healthz; chat goes on.
            for n in [&a, &b] {
                eventually(TIMEOUT, "healthz reports Redis down", || async {
                    healthz(n.http).await
                        == (503, serde_json::json!({"error": "redis-unavailable"}))
                })
                .await;
            }
        }
        if i == 30 {
            redis.restart();
            for n in [&a, &b] {
                eventually(TIMEOUT, "healthz reports Redis up again", || async {
                    healthz(n.http).await.0 == 200
                })
                .await;
            }
        }
        let id = format!("x{i:03}");
        let ack = alice.c().send_message(&id, &bob_jid, &bob_device).await;
        assert_eq!(ack.error, None, "{id}");
        sent.push(id);
        // Delivered before the next one (the re-check runs every 400 ms while Redis is away).
        eventually(TIMEOUT, "Bob got the message", || {
            let n = delivered();
            async move { n > i }
        })
        .await;
    }
    tokio::time::timeout(TIMEOUT, bob_rx).await.unwrap().unwrap();
    assert_eq!(got.lock().unwrap().ids, sent, "every message once, in order");
    // The heartbeat took the leases again after the restart (Redis had lost them): Alice's
    // (Bob's receiver has hung up by now, releasing his).
    let mut r = w.redis().await;
    let lease: Option<String> =
        redis::cmd("GET").arg(w.lease_key(&alice.address)).query_async(&mut r).await.unwrap();
    assert!(lease.as_ref().is_some_and(|l| l.ends_with(&format!("@{}", a.id))), "{lease:?}");
    // Bob comes back on node B; delivery to him there goes on.
    let mut bob_again = w.connect(&b, &bob.keys).await;
    assert_eq!(alice.c().send_message("after", &bob_jid, &bob_device).await.error, None);
    assert_eq!(bob_again.next_message().await.id, "after");
}

/// A reference provider on loopback: (issuer, push secret). Runs until `stop`.
async fn provider(dir: &Path, stop: &CancellationToken) -> (String, String) {
    use base64::Engine;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let push_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    );
    let provider = Provider::open(ProviderConfig {
        issuer: issuer.clone(),
        audience: "gatekeeper".into(),
        data_dir: dir.join("provider"),
        push_secret: push_secret.clone(),
        admin_token: String::new(),
        dev: true,
        wake_poll: TIMEOUT,
        token_lifetime: None,
    })
    .await
    .unwrap();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move { provider.serve(listener, shutdown).await });
    (issuer, push_secret)
}

/// A provider user's token and push token for `keys` (a new provider account `username`).
async fn provider_token(issuer: &str, username: &str, keys: &StaticKeypair) -> (String, String) {
    use base64::Engine;
    let http = reqwest::Client::new();
    let creds = serde_json::json!({"username": username, "password": "correct horse battery"});
    let created = http.post(format!("{issuer}/v1/accounts")).json(&creds).send().await.unwrap();
    assert!(created.status().is_success() || created.status().as_u16() == 409);
    let session: serde_json::Value = http
        .post(format!("{issuer}/v1/sessions"))
        .json(&creds)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(keys.public);
    let token: serde_json::Value = http
        .post(format!("{issuer}/v1/tokens"))
        .bearer_auth(session["session"].as_str().unwrap())
        .json(&serde_json::json!({ "device_key": device_key }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (token["token"].as_str().unwrap().to_owned(), token["push_token"].as_str().unwrap().to_owned())
}

/// A new device of provider user `username`, connected to `node` and enlisted: (connection,
/// whether the enlistment created the account). Retries while the node does not know the
/// provider yet (the registration reaches other nodes through Redis).
async fn interop_device(
    w: &World,
    node: &NodeHandle,
    issuer: &str,
    username: &str,
) -> (Client, bool) {
    let keys = StaticKeypair::generate(&mut rand::rngs::StdRng::from_os_rng());
    let (jwt, push_token) = provider_token(issuer, username, &keys).await;
    let payload = ClientPayload {
        product: Product::Interop as i32,
        user_agent: "cluster-test".into(),
        provider_jwt: jwt,
        read_receipts: true,
        ..Default::default()
    };
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut c = Client::connect_as(node.addr, w.root(), &keys, &payload).await.unwrap();
        let request = Request::Enlist {
            keys: key_bundle(7),
            consent: Consent { version: "2026-01".into(), read_receipts: true },
            push_token: push_token.clone().into_bytes(),
        };
        c.next_id += 1;
        let id = format!("q{}", c.next_id);
        if c.send(&request.to_node(&id)).await
            && let Some(answer) =
                c.try_next_where(|n| n.tag == "iq" && n.attr("id") == Some(id.as_str())).await
        {
            let (_, response) = Response::from_node(&answer).unwrap();
            let Response::Enlisted { created, .. } = response else { panic!("{response:?}") };
            return (c, created);
        }
        assert!(Instant::now() < deadline, "the node never accepted the provider's tokens");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_changes_and_opt_outs_reach_every_node() {
    let Some(w) = world(None, Timing::handoff_only()).await else { return };
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let (issuer, push_secret) = provider(w.dir.path(), &stop).await;
    let a = w.node("a").await;
    let b = w.node("b").await;
    // The provider is registered through node A's admin API only.
    let http = reqwest::Client::new();
    register_provider(&http, a.http, &issuer, &push_secret).await;

    // Node B learns it: Alice enlists there; her second device enlists on node A.
    let (mut alice_b, created) = interop_device(&w, &b, &issuer, "alice").await;
    assert!(created);
    let (mut alice_a, created) = interop_device(&w, &a, &issuer, "alice").await;
    assert!(!created, "the same account");
    assert!(alice_b.ping().await);
    // Opting out on node A ends the account's session on node B.
    assert_eq!(alice_a.enlist_iq(Request::OptOut).await, Response::OptedOut);
    assert_eq!(alice_b.stream_error_then_closed().await.condition, StreamCondition::NotAuthorized);

    // Disabling the provider on node A ends its users' sessions on node B.
    let (mut bob_b, _) = interop_device(&w, &b, &issuer, "bob").await;
    assert!(bob_b.ping().await);
    let disabled = http
        .post(format!("http://{}/admin/providers/{INTEGRATOR}/disable", a.http))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert!(disabled.status().is_success());
    let error = bob_b.stream_error_then_closed().await;
    assert_eq!(
        (error.condition, error.text.as_deref()),
        (StreamCondition::NotAuthorized, Some("provider_disabled"))
    );
}

/// Registers the test provider through `node`'s admin API.
async fn register_provider(http: &reqwest::Client, node: SocketAddr, issuer: &str, secret: &str) {
    let put = http
        .put(format!("http://{node}/admin/providers/{INTEGRATOR}"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({
            "issuer": issuer,
            "push_endpoint": format!("{issuer}/v1/push"),
            "push_secret": secret,
            "media_base_url": format!("{issuer}/media/"),
        }))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
}

/// A provider session of a new provider account `username` (for its media host).
async fn provider_session(issuer: &str, username: &str) -> String {
    let http = reqwest::Client::new();
    let creds = serde_json::json!({"username": username, "password": "correct horse battery"});
    let created = http.post(format!("{issuer}/v1/accounts")).json(&creds).send().await.unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    let session: serde_json::Value = http
        .post(format!("{issuer}/v1/sessions"))
        .json(&creds)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    session["session"].as_str().unwrap().to_owned()
}

/// Bytes that pass as an encrypted media file (16-byte blocks and a 10-byte MAC) and their
/// content address.
fn media_blob(seed: u8) -> (Vec<u8>, String) {
    use sha2::Digest;
    let blob: Vec<u8> = (0..16 * 4 + 10).map(|i: u8| i.wrapping_mul(31) ^ seed).collect();
    let address = hex::encode(sha2::Sha256::digest(&blob));
    (blob, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_token_from_one_node_is_accepted_by_the_others() {
    let Some(w) = world(None, Timing::handoff_only()).await else { return };
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let (issuer, push_secret) = provider(w.dir.path(), &stop).await;
    let a = w.node("a").await;
    let b = w.node("b").await;
    let http = reqwest::Client::new();
    // The provider is registered through node B (its media base URL is what B's proxy uses).
    register_provider(&http, b.http, &issuer, &push_secret).await;

    // Alice, on node A, asks node A for a media token.
    let mut alice = w.native(&a, "+15550091", 1).await;
    let (token, base) = alice.c().media_conn().await;
    assert_eq!(base, format!("http://{}", a.http), "node A names its own HTTP listener");

    // Node B's media host takes an upload with it.
    let (blob, address) = media_blob(1);
    let upload = |node: SocketAddr, auth: Option<&str>| {
        let mut r = http.put(format!("http://{node}/media/{address}")).body(blob.clone());
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(upload(b.http, Some(&token)).await.unwrap().status(), 201);
    // The nodes share the media directory here (`media_dir`; by default it is each node's
    // `<data_dir>/media`), so what went up through node B comes down through node A.
    let down = http.get(format!("http://{}/media/{address}", a.http)).send().await.unwrap();
    assert_eq!(down.status(), 200);
    assert_eq!(down.bytes().await.unwrap().as_ref(), blob.as_slice());

    // Node B's media proxy takes it too: a provider's file, fetched through node B.
    let session = provider_session(&issuer, "carol").await;
    let (their_blob, their_address) = media_blob(2);
    let stored = http
        .put(format!("{issuer}/media/{their_address}"))
        .bearer_auth(&session)
        .body(their_blob.clone())
        .send()
        .await
        .unwrap();
    assert!(stored.status().is_success(), "{}", stored.status());
    let proxied = http
        .get(format!("http://{}/proxy/{INTEGRATOR}/{their_address}", b.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
    assert_eq!(proxied.bytes().await.unwrap().as_ref(), their_blob.as_slice());

    // Without a token, or with a changed one, neither node takes anything.
    let (other_blob, other_address) = media_blob(3);
    let mut forged = token.clone();
    forged.replace_range(3..4, if &token[3..4] == "9" { "8" } else { "9" });
    for node in [a.http, b.http] {
        for auth in [None, Some(forged.as_str()), Some("v1.1.YQ.AA")] {
            let r =
                http.put(format!("http://{node}/media/{other_address}")).body(other_blob.clone());
            let r = match auth {
                Some(t) => r.bearer_auth(t),
                None => r,
            };
            assert_eq!(r.send().await.unwrap().status(), 401, "{auth:?}");
            let mut p = http.get(format!("http://{node}/proxy/{INTEGRATOR}/{their_address}"));
            if let Some(t) = auth {
                p = p.bearer_auth(t);
            }
            assert_eq!(p.send().await.unwrap().status(), 401, "{auth:?}");
        }
    }
}

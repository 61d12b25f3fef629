//! The gatekeeper in-process on loopback, over real sockets: a reference provider (issuing JWTs,
//! serving discovery, JWKS and the push receiver over HTTP), a gatekeeper that fetches the
//! provider's keys over HTTP, and clients speaking Noise + binary stanzas through
//! `interop_noise::tokio::connect` directly (the server must not link interop-client).
//!
//! Every wait is on a stanza (or an HTTP answer) with a 10 s timeout; nothing sleeps. Where a
//! test must know that the server dropped a connection's session, the client half-closes and
//! reads until the server closes its side: the gatekeeper ends the chat session before it drops
//! the socket, and handles a connection's stanzas in order before it sees the end of the stream.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{account_jid, consent, device_jid, init_tracing, key_bundle, new_keys, now_secs};
use interop_enlist::enlist::{Address, ErrorCode, Request, Response, Status};
use interop_enlist::{ProviderEntry, SigningKey, sign_compact};
use interop_noise::proto::{ClientPayload, Product};
use interop_noise::tokio::NoiseStream;
use interop_noise::{ClientConfig, StaticKeypair, TrustAnchor};
use interop_server::gatekeeper::{CodeSink, Gatekeeper, GatekeeperConfig};
use interop_server::provider::{Provider, ProviderConfig};
use interop_server::store::ProviderRecord;
use interop_stanza::Node;
use interop_stanza::binary::{self, Codec};
use interop_stanza::stanza::{
    Ack, AckClass, Enc, EncType, Iq, IqPayload, IqType, Message, MessageType, Participant,
    StreamCondition, StreamError,
};
use rand::SeedableRng;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long any single wait may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The integrator id the provider is registered under.
const INTEGRATOR: &str = "example";

/// A message to account `to` with one payload per device in `devices`.
fn message(id: &str, to: &str, devices: &[String]) -> Node {
    let mut m = Message::new(id, MessageType::Text).to(to);
    for d in devices {
        m = m.with_participant(Participant::new(d, Enc::new(EncType::Msg, ciphertext(id, d))));
    }
    m.into_node()
}

/// The opaque "ciphertext" a test sends for device `d` (the server never reads it).
fn ciphertext(id: &str, d: &str) -> Vec<u8> {
    format!("ciphertext of {id} for {d}").into_bytes()
}

/// The full XML form of a stanza, for failure messages (`Debug` redacts ids and identifiers).
fn show(node: &Node) -> String {
    interop_stanza::xml::to_string(node).unwrap_or_else(|_| format!("{node:?}"))
}

fn ping(id: &str) -> Node {
    Node::new("iq").with_attr("id", id).with_attr("type", "get").with_attr("xmlns", "ping")
}

/// One provider, one gatekeeper registered with it, both on loopback.
struct World {
    gk: SocketAddr,
    root: [u8; 32],
    /// The gatekeeper's Noise static key (what a client caches for IK resumption).
    gk_key: [u8; 32],
    issuer: String,
    http: reqwest::Client,
    codes: Arc<Mutex<HashMap<String, String>>>,
    stop: CancellationToken,
    /// The gatekeeper's HTTP listener and admin token.
    gk_http: SocketAddr,
    admin: String,
    gk_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A user of the provider with one device key, its token and push token.
#[derive(Clone)]
struct InteropUser {
    keys: StaticKeypair,
    jwt: String,
    push_token: String,
    session: String,
}

impl InteropUser {
    fn payload(&self) -> ClientPayload {
        ClientPayload {
            product: Product::Interop as i32,
            user_agent: "gatekeeper-test".into(),
            provider_jwt: self.jwt.clone(),
            read_receipts: true,
            ..Default::default()
        }
    }
}

fn native_payload() -> ClientPayload {
    ClientPayload {
        product: Product::Native as i32,
        user_agent: "gatekeeper-test".into(),
        ..Default::default()
    }
}

async fn world() -> World {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let push_secret = format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 32]>()));
    let provider = Provider::open(ProviderConfig {
        issuer: issuer.clone(),
        audience: "gatekeeper".into(),
        data_dir: dir.path().join("provider"),
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

    let codes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let sink_codes = Arc::clone(&codes);
    let sink: CodeSink = Arc::new(move |identifier: &str, code: &str| {
        sink_codes.lock().unwrap().insert(identifier.to_owned(), code.to_owned());
    });
    let mut config = GatekeeperConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("gk"));
    config.dev = true;
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    config.code_sink = Some(sink);
    let admin = hex::encode(rand::random::<[u8; 16]>());
    config.admin_token = admin.clone();
    let gk = Gatekeeper::bind(config).await.unwrap();
    let gk_http = gk.http_addr().unwrap().unwrap();
    gk.upsert_provider(&ProviderRecord {
        entry: ProviderEntry::new(
            &issuer,
            INTEGRATOR,
            &format!("{issuer}/v1/push"),
            &format!("{issuer}/media/"),
        ),
        push_secret,
    })
    .await
    .unwrap();
    let addr = gk.local_addr().unwrap();
    let root = gk.root_key();
    let gk_key = gk.public_key();
    tokio::spawn(gk.run(stop.clone().cancelled_owned()));
    World {
        gk: addr,
        root,
        gk_key,
        issuer,
        http: reqwest::Client::new(),
        codes,
        stop,
        gk_http,
        admin,
        gk_dir: dir.path().join("gk"),
        _dir: dir,
    }
}

impl World {
    async fn post(&self, path: &str, auth: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.issuer)).json(&body);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let r = tokio::time::timeout(TIMEOUT, req.send()).await.expect("provider answers").unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a provider account and logs in (PROTOCOL 7.2): the session.
    async fn provider_session(&self, username: &str) -> String {
        let creds = json!({"username": username, "password": "correct horse battery"});
        assert_eq!(self.post("/v1/accounts", None, creds.clone()).await.0, 201);
        let (status, body) = self.post("/v1/sessions", None, creds).await;
        assert_eq!(status, 200, "{body}");
        body["session"].as_str().unwrap().to_owned()
    }

    /// A token and push token for `key` (POST /v1/tokens).
    async fn provider_token(&self, session: &str, key: &[u8; 32]) -> (String, String) {
        let device_key = URL_SAFE_NO_PAD.encode(key);
        let (status, body) =
            self.post("/v1/tokens", Some(session), json!({ "device_key": device_key })).await;
        assert_eq!(status, 200, "{body}");
        (
            body["token"].as_str().unwrap().to_owned(),
            body["push_token"].as_str().unwrap().to_owned(),
        )
    }

    /// A provider user with a fresh device key and a token for it.
    async fn interop_user(&self, username: &str) -> InteropUser {
        let session = self.provider_session(username).await;
        let keys = new_keys();
        let (jwt, push_token) = self.provider_token(&session, &keys.public).await;
        InteropUser { keys, jwt, push_token, session }
    }

    /// Connects with `keys` and `payload` (Noise XX, the chain checked against the root key).
    async fn connect(&self, keys: &StaticKeypair, payload: &ClientPayload) -> Client {
        self.connect_with(keys, payload, None).await.0
    }

    /// Connects with IK when `cached` is the server key, else XX: the client and whether the
    /// connection resumed.
    async fn connect_with(
        &self,
        keys: &StaticKeypair,
        payload: &ClientPayload,
        cached: Option<&[u8; 32]>,
    ) -> (Client, bool) {
        let config = ClientConfig::new(keys.clone(), TrustAnchor::new(self.root).unwrap());
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let handshake = async {
            let socket = TcpStream::connect(self.gk).await?;
            interop_noise::tokio::connect(socket, &config, payload, cached, now_secs(), &mut rng)
                .await
                .map_err(std::io::Error::other)
        };
        let (stream, connected) =
            tokio::time::timeout(TIMEOUT, handshake).await.expect("handshake in time").unwrap();
        assert_eq!(connected.server_key, self.gk_key);
        let client =
            Client { stream, codec: Codec::default(), pending: VecDeque::new(), next_id: 0 };
        (client, connected.resumed)
    }

    async fn connect_interop(&self, user: &InteropUser) -> Client {
        self.connect(&user.keys, &user.payload()).await
    }

    /// A provider user, connected and enlisted: (user, connection, address).
    async fn enlisted(&self, username: &str, seed: u8) -> (InteropUser, Client, Address) {
        let user = self.interop_user(username).await;
        let mut c = self.connect_interop(&user).await;
        let address = c.enlist(&user, seed).await;
        (user, c, address)
    }

    /// The verification code the gatekeeper sent for `identifier`.
    fn code(&self, identifier: &str) -> String {
        self.codes.lock().unwrap().get(identifier).cloned().expect("a code was sent")
    }

    /// A native device registered as `identifier` (a new account, or a new device of it):
    /// (device key, connection, address). With `opt_in`, it turns interop on.
    async fn native(
        &self,
        identifier: &str,
        seed: u8,
        opt_in: bool,
    ) -> (StaticKeypair, Client, Address) {
        let keys = new_keys();
        let mut c = self.connect(&keys, &native_payload()).await;
        let sent = c.enlist_iq(Request::Register { identifier: identifier.into() }).await;
        assert!(matches!(sent, Response::CodeSent { .. }), "{sent:?}");
        let code = self.code(identifier);
        let confirmed = c
            .enlist_iq(Request::Confirm {
                identifier: identifier.into(),
                code,
                keys: key_bundle(seed),
            })
            .await;
        let Response::Registered { address } = confirmed else { panic!("{confirmed:?}") };
        if opt_in {
            let on = c.enlist_iq(Request::InteropOptIn { enabled: true }).await;
            assert_eq!(on, Response::InteropOptIn { enabled: true });
        }
        (keys, c, address)
    }
}

/// One client connection, with the stanzas it read but nobody asked for yet.
struct Client {
    stream: NoiseStream<TcpStream>,
    codec: Codec,
    pending: VecDeque<Node>,
    next_id: u32,
}

impl Client {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("q{}", self.next_id)
    }

    async fn send(&mut self, node: &Node) {
        let bytes = self.codec.encode(node).unwrap();
        self.stream.send(&bytes).await.unwrap();
    }

    /// The next stanza off the wire; `None` once the server closed the connection (cleanly or
    /// not). Fails the test after [`TIMEOUT`].
    async fn recv_wire(&mut self) -> Option<Node> {
        match tokio::time::timeout(TIMEOUT, self.stream.recv()).await.expect("a stanza in time") {
            Ok(Some(bytes)) => Some(self.codec.decode(&bytes).expect("the server sends stanzas")),
            Ok(None) | Err(_) => None,
        }
    }

    /// The first stanza (buffered or new) for which `want` holds; others are kept for later.
    async fn next_where(&mut self, what: &str, want: impl Fn(&Node) -> bool) -> Node {
        if let Some(i) = self.pending.iter().position(&want) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let Some(node) = self.recv_wire().await else {
                panic!(
                    "connection closed while waiting for {what}; unread: {:?}",
                    self.pending.iter().map(show).collect::<Vec<_>>()
                )
            };
            if want(&node) {
                return node;
            }
            self.pending.push_back(node);
        }
    }

    /// The next `message` stanza.
    async fn next_message(&mut self) -> Message {
        Message::from_node(self.next_where("a message", |n| n.tag == "message").await).unwrap()
    }

    /// The ack of message `id`.
    async fn ack_of(&mut self, id: &str) -> Ack {
        let node = self
            .next_where(&format!("the ack of {id}"), |n| n.tag == "ack" && n.attr("id") == Some(id))
            .await;
        Ack::from_node(node).unwrap()
    }

    /// Sends `node` (an iq) and returns the answer with the same id.
    async fn iq(&mut self, node: Node) -> Node {
        let id = node.attr("id").unwrap().to_owned();
        self.send(&node).await;
        self.next_where(&format!("the answer to iq {id}"), |n| {
            n.tag == "iq" && n.attr("id") == Some(id.as_str())
        })
        .await
    }

    async fn typed_iq(&mut self, xmlns: &str, payload: IqPayload) -> Iq {
        let id = self.id();
        let answer = self.iq(Iq::new(id, IqType::Get, Some(xmlns), payload).into_node()).await;
        Iq::from_node(answer).unwrap()
    }

    async fn enlist_iq(&mut self, request: Request) -> Response {
        let id = self.id();
        let answer = self.iq(request.to_node(&id)).await;
        let (got_id, response) = Response::from_node(&answer).unwrap();
        assert_eq!(got_id, id);
        response
    }

    async fn status(&mut self) -> Status {
        match self.enlist_iq(Request::Status).await {
            Response::Status(s) => s,
            other => panic!("status answered {other:?}"),
        }
    }

    /// Enlists `user` with this connection's device: the address (a new account expected).
    async fn enlist(&mut self, user: &InteropUser, seed: u8) -> Address {
        let response = self.enlist_iq(enlist_request(user, seed)).await;
        let Response::Enlisted { address, created } = response else { panic!("{response:?}") };
        assert!(created, "a first enlistment creates the account");
        address
    }

    /// Sends a message and returns its ack.
    async fn send_message(&mut self, id: &str, to: &str, devices: &[String]) -> Ack {
        self.send(&message(id, to, devices)).await;
        self.ack_of(id).await
    }

    /// Acknowledges a received message (after "persisting" it).
    async fn ack(&mut self, m: &Message) {
        let mut ack = Ack::new(m.id.clone(), AckClass::Message);
        ack.to.clone_from(&m.from);
        self.send(&ack.into_node()).await;
    }

    /// Reads until a `stream:error`, which must be followed by the end of the connection.
    async fn stream_error_then_closed(&mut self) -> StreamError {
        let node = self.next_where("a stream:error", |n| n.tag == "stream:error").await;
        let error = StreamError::from_node(node).unwrap();
        let after = self.recv_wire().await;
        assert!(
            after.is_none(),
            "the connection closes after a stream:error, got {:?}",
            after.as_ref().map(show)
        );
        error
    }

    /// Half-closes and reads until the server closed its side: by then the server handled every
    /// stanza sent before and ended the chat session.
    async fn close(mut self) {
        self.stream.shutdown().await.unwrap();
        while self.recv_wire().await.is_some() {}
    }

    async fn ping_ok(&mut self, id: &str) {
        let answer = self.iq(ping(id)).await;
        assert_eq!(answer.attr("type"), Some("result"), "{}", show(&answer));
        assert_eq!(answer.attr("xmlns"), Some("ping"));
    }
}

fn enlist_request(user: &InteropUser, seed: u8) -> Request {
    Request::Enlist {
        keys: key_bundle(seed),
        consent: consent(),
        push_token: user.push_token.clone().into_bytes(),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interop_user_enlists_inside_the_session_and_is_enlisted_on_reconnect() {
    let w = world().await;
    let alice = w.interop_user("alice").await;
    let mut c = w.connect_interop(&alice).await;
    assert_eq!(c.status().await, Status::NotEnlisted);

    // Before enlisting, chat is refused per stanza, and the connection stays up.
    let early = Message::new("early", MessageType::Text)
        .to("someone@s.interop")
        .with_enc(Enc::new(EncType::Msg, b"x".to_vec()));
    c.send(&early.into_node()).await;
    let ack = c.ack_of("early").await;
    assert_eq!((ack.class, ack.error.as_deref()), (AckClass::Message, Some("not-enlisted")));
    let id = c.id();
    let refused = c.iq(ping(&id)).await;
    assert_eq!(refused.attr("type"), Some("error"), "{}", show(&refused));
    assert_eq!(refused.attr("xmlns"), Some("interop:enlist"));
    assert_eq!(
        refused.child("error").and_then(|e| e.attr("code")),
        Some(ErrorCode::NotEnlisted.as_str())
    );

    let response = c.enlist_iq(enlist_request(&alice, 1)).await;
    let Response::Enlisted { address, created } = response else { panic!("{response:?}") };
    assert!(created);
    assert_eq!(address.integrator.as_deref(), Some(INTEGRATOR));
    assert!(address.device >= 1);
    assert_eq!(c.status().await, Status::Enlisted { address: address.clone(), consent: consent() });
    // The session is a chat session now.
    c.ping_ok("p1").await;
    c.close().await;

    // Same key, same token, a new connection (resuming with IK, as clients do): enlisted
    // right away.
    let (mut again, resumed) = w.connect_with(&alice.keys, &alice.payload(), Some(&w.gk_key)).await;
    assert!(resumed, "IK with the cached server key");
    assert_eq!(
        again.status().await,
        Status::Enlisted { address: address.clone(), consent: consent() }
    );
    again.ping_ok("p2").await;
    // Enlisting again is idempotent: same account and device, not created.
    let repeat = again.enlist_iq(enlist_request(&alice, 2)).await;
    assert_eq!(repeat, Response::Enlisted { address, created: false });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_a_key_the_provider_does_not_publish_is_refused() {
    let w = world().await;
    let alice = w.interop_user("alice").await;
    // The provider's published kid, so that the gatekeeper finds a key and checks the signature.
    let jwks: Value =
        w.http.get(format!("{}/jwks.json", w.issuer)).send().await.unwrap().json().await.unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD.decode(alice.jwt.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    let forger = SigningKey::ed25519_from_seed(&rand::random()).with_kid(kid).unwrap();
    let forged =
        sign_compact(&forger, &json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}), &claims).unwrap();
    let mut c =
        w.connect(&alice.keys, &InteropUser { jwt: forged, ..alice.clone() }.payload()).await;
    let error = c.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotAuthorized);
    assert_eq!(error.text.as_deref(), Some("bad_signature"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_modified_payload_is_refused() {
    let w = world().await;
    let alice = w.interop_user("alice").await;
    let parts: Vec<&str> = alice.jwt.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("mallory");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    let mut c =
        w.connect(&alice.keys, &InteropUser { jwt: tampered, ..alice.clone() }.payload()).await;
    let error = c.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotAuthorized);
    assert_eq!(error.text.as_deref(), Some("bad_signature"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_token_presented_from_another_device_key_is_refused() {
    let w = world().await;
    let alice = w.interop_user("alice").await;
    let thief = new_keys();
    let mut c = w.connect(&thief, &alice.payload()).await;
    let error = c.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotAuthorized);
    assert_eq!(error.text.as_deref(), Some("key_binding_mismatch"));
    // The rightful device still gets in with the same token.
    let mut ok = w.connect_interop(&alice).await;
    assert_eq!(ok.status().await, Status::NotEnlisted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_key_cannot_switch_to_another_account_or_product() {
    let w = world().await;
    let (alice, alice_conn, _) = w.enlisted("alice", 1).await;
    alice_conn.close().await;
    let (bob_keys, bob_conn, _) = w.native("+15550001", 2, true).await;
    bob_conn.close().await;

    // Alice's interop device key, presented as a native device.
    let mut c = w.connect(&alice.keys, &native_payload()).await;
    let error = c.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotAuthorized);

    // Bob's native device key, with a valid token for it from another provider user.
    let session = w.provider_session("bobby").await;
    let (jwt, push_token) = w.provider_token(&session, &bob_keys.public).await;
    let bobby = InteropUser { keys: bob_keys.clone(), jwt, push_token, session };
    let mut c = w.connect_interop(&bobby).await;
    let error = c.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotAuthorized);

    // A native connection carrying a token.
    let mut with_token = native_payload();
    with_token.provider_jwt = alice.jwt.clone();
    let mut c = w.connect(&alice.keys, &with_token).await;
    let error = c.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotAuthorized);

    // The rightful owners still get in.
    w.connect_interop(&alice).await.ping_ok("p1").await;
    w.connect(&bob_keys, &native_payload()).await.ping_ok("p2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_user_registers_with_a_code_and_opts_in() {
    let w = world().await;
    let keys = new_keys();
    let mut c = w.connect(&keys, &native_payload()).await;
    let sent = c.enlist_iq(Request::Register { identifier: "+15550001".into() }).await;
    assert!(
        matches!(sent, Response::CodeSent { expires_in } if expires_in > 0 && expires_in <= 600)
    );
    let code = w.code("+15550001");
    assert_eq!(code.len(), 6);
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let confirm = |code: String| Request::Confirm {
        identifier: "+15550001".into(),
        code,
        keys: key_bundle(7),
    };
    assert_eq!(c.enlist_iq(confirm(wrong)).await, Response::Error(ErrorCode::InvalidCode));
    let registered = c.enlist_iq(confirm(code)).await;
    let Response::Registered { address } = registered else { panic!("{registered:?}") };
    assert!(!address.account.is_empty() && address.device >= 1);
    assert_eq!(address.integrator, None, "native accounts have no integrator");
    assert_eq!(
        c.enlist_iq(Request::InteropOptIn { enabled: true }).await,
        Response::InteropOptIn { enabled: true }
    );
    // The registered connection is a chat session.
    c.ping_ok("p1").await;
    c.close().await;
    // The device key is now known: a reconnect is a session right away.
    let mut again = w.connect(&keys, &native_payload()).await;
    again.ping_ok("p2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_interop_users_message_each_other_through_the_routing() {
    let w = world().await;
    let (_, mut bob, bob_addr) = w.native("+15550001", 1, true).await;
    let (_, mut alice, alice_addr) = w.enlisted("alice", 2).await;

    // Alice finds Bob by his identifier, then his devices.
    let found =
        alice.typed_iq("contacts", IqPayload::ContactLookup(vec!["+15550001".into()])).await;
    let IqPayload::Contacts(contacts) = found.payload else { panic!("contacts answered an error") };
    assert_eq!(contacts.len(), 1);
    let bob_jid = contacts[0].jid.clone().expect("Bob is reachable");
    assert_eq!(bob_jid, account_jid(&bob_addr));
    let lists =
        alice.typed_iq("devices", IqPayload::DeviceListRequest(vec![bob_jid.clone()])).await;
    let IqPayload::DeviceLists(lists) = lists.payload else { panic!("devices answered an error") };
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].devices, vec![bob_addr.device]);
    let bob_devices: Vec<String> =
        lists[0].devices.iter().map(|d| format!("{}:{d}@s.interop", bob_addr.account)).collect();

    let ack = alice.send_message("m1", &bob_jid, &bob_devices).await;
    assert_eq!(
        (ack.class, ack.kind.as_deref(), ack.error.as_deref()),
        (AckClass::Message, Some("text"), None)
    );
    let got = bob.next_message().await;
    assert_eq!(got.id, "m1");
    assert_eq!(got.from.as_deref(), Some(device_jid(&alice_addr).as_str()));
    assert_eq!(got.to, None, "the server removes `to`");
    assert_eq!(got.encs.len(), 1);
    assert_eq!(got.encs[0].ciphertext, ciphertext("m1", &bob_devices[0]));
    bob.ack(&got).await;
    // A retry of the same id (the ack was lost, say) is recognised, and not delivered twice.
    let ack = alice.send_message("m1", &bob_jid, &bob_devices).await;
    assert_eq!(ack.error.as_deref(), Some("duplicate"));

    // Bob answers: native to interop.
    let alice_jid = account_jid(&alice_addr);
    let ack = bob.send_message("r1", &alice_jid, &[device_jid(&alice_addr)]).await;
    assert_eq!(ack.error, None);
    let reply = alice.next_message().await;
    assert_eq!(
        (reply.id.as_str(), reply.from.as_deref()),
        ("r1", Some(device_jid(&bob_addr).as_str()))
    );
    alice.ack(&reply).await;

    // A native account that has not opted in cannot be reached, nor found.
    let (_, _carol, carol_addr) = w.native("+15550002", 3, false).await;
    let found =
        alice.typed_iq("contacts", IqPayload::ContactLookup(vec!["+15550002".into()])).await;
    let IqPayload::Contacts(contacts) = found.payload else { panic!("contacts answered an error") };
    assert_eq!(contacts[0].jid, None);
    let ack = alice.send_message("m2", &account_jid(&carol_addr), &[device_jid(&carol_addr)]).await;
    assert_eq!(ack.error.as_deref(), Some("recipient-unavailable"));

    // Bob adds a second device: a message covering only the first is stale.
    let (_, mut bob2, bob2_addr) = w.native("+15550001", 4, false).await;
    assert_eq!(bob2_addr.account, bob_addr.account, "a second device of the same account");
    assert_ne!(bob2_addr.device, bob_addr.device);
    let ack = alice.send_message("m3", &bob_jid, &bob_devices).await;
    assert_eq!(ack.error.as_deref(), Some("stale-devices"));
    // Fetch the list again, resend with the same id: accepted, and each device gets its copy.
    let lists =
        alice.typed_iq("devices", IqPayload::DeviceListRequest(vec![bob_jid.clone()])).await;
    let IqPayload::DeviceLists(lists) = lists.payload else { panic!("devices answered an error") };
    let mut devices = lists[0].devices.clone();
    devices.sort_unstable();
    let mut want = vec![bob_addr.device, bob2_addr.device];
    want.sort_unstable();
    assert_eq!(devices, want);
    let both = vec![device_jid(&bob_addr), device_jid(&bob2_addr)];
    assert_eq!(alice.send_message("m3", &bob_jid, &both).await.error, None);
    for (conn, jid) in [(&mut bob, &both[0]), (&mut bob2, &both[1])] {
        let got = conn.next_message().await;
        assert_eq!(got.id, "m3");
        assert_eq!(got.encs[0].ciphertext, ciphertext("m3", jid), "only this device's payload");
        conn.ack(&got).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_arrive_in_order_and_again_until_acked() {
    let w = world().await;
    let (bob_keys, bob, bob_addr) = w.native("+15550001", 1, true).await;
    let (_, mut alice, alice_addr) = w.enlisted("alice", 2).await;
    let alice_device = device_jid(&alice_addr);
    let (bob_jid, bob_device) = (account_jid(&bob_addr), vec![device_jid(&bob_addr)]);
    bob.close().await;

    let sent = ["m1", "m2", "m3"];
    for id in sent {
        let ack = alice.send_message(id, &bob_jid, &bob_device).await;
        assert_eq!(ack.error, None, "{id} stored while Bob is offline");
    }

    // Reconnect: all three, in order, from Alice's device. No ack.
    let mut bob = w.connect(&bob_keys, &native_payload()).await;
    for id in sent {
        let m = bob.next_message().await;
        assert_eq!((m.id.as_str(), m.from.as_deref()), (id, Some(alice_device.as_str())));
    }
    bob.close().await;

    // Not acked: delivered again, in the same order, and nothing else before a new message.
    let mut bob = w.connect(&bob_keys, &native_payload()).await;
    let mut again = Vec::new();
    for _ in sent {
        again.push(bob.next_message().await);
    }
    assert_eq!(again.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), sent);
    assert_eq!(alice.send_message("m4", &bob_jid, &bob_device).await.error, None);
    let m4 = bob.next_message().await;
    assert_eq!(m4.id, "m4", "exactly the three queued copies came first");
    for m in again.iter().chain([&m4]) {
        bob.ack(m).await;
    }
    // Closing waits for the server to end the connection: the acks were handled before.
    bob.close().await;

    // Acked: gone. A new message is the first thing Bob gets.
    let mut bob = w.connect(&bob_keys, &native_payload()).await;
    assert_eq!(alice.send_message("m5", &bob_jid, &bob_device).await.error, None);
    assert_eq!(bob.next_message().await.id, "m5", "acked copies are not delivered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_of_the_same_device_replaces_the_first() {
    let w = world().await;
    let (alice, mut first, address) = w.enlisted("alice", 1).await;
    first.ping_ok("p1").await;
    let mut second = w.connect_interop(&alice).await;
    let error = first.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::Conflict);
    assert_eq!(second.status().await, Status::Enlisted { address, consent: consent() });
    second.ping_ok("p2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_stanza_ends_only_its_own_connection() {
    let w = world().await;
    let (_, mut alice, _) = w.enlisted("alice", 1).await;
    let (_, mut bob, _) = w.enlisted("bob", 2).await;
    let garbage = b"\xff\xfe\xfd this is not a binary stanza".to_vec();
    assert!(binary::decode(&garbage).is_err(), "the test sends bytes that do not decode");
    alice.stream.send(&garbage).await.unwrap();
    let error = alice.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotWellFormed);
    bob.ping_ok("p1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_opting_out_the_old_account_is_unreachable() {
    let w = world().await;
    let (_, mut bob, _) = w.native("+15550001", 1, true).await;
    let (alice_user, mut alice, alice_addr) = w.enlisted("alice", 2).await;
    let (alice_jid, alice_device) = (account_jid(&alice_addr), vec![device_jid(&alice_addr)]);
    assert_eq!(bob.send_message("before", &alice_jid, &alice_device).await.error, None);
    assert_eq!(alice.next_message().await.id, "before", "reachable before the opt-out");

    assert_eq!(alice.enlist_iq(Request::OptOut).await, Response::OptedOut);
    assert_eq!(alice.status().await, Status::NotEnlisted);
    assert_eq!(
        alice.enlist_iq(Request::OptOut).await,
        Response::Error(ErrorCode::NotEnlisted),
        "nothing left to remove"
    );
    let ack = bob.send_message("after", &alice_jid, &alice_device).await;
    assert_eq!(ack.error.as_deref(), Some("recipient-unavailable"));
    let found = bob.typed_iq("contacts", IqPayload::ContactLookup(vec!["alice".into()])).await;
    let IqPayload::Contacts(contacts) = found.payload else { panic!("contacts answered an error") };
    assert_eq!(contacts[0].jid, None, "an opted-out subject is not found");

    // Enlisting again (same token, same key) creates a new account; the old one stays gone.
    let response = alice.enlist_iq(enlist_request(&alice_user, 3)).await;
    let Response::Enlisted { address: renewed, created } = response else { panic!("{response:?}") };
    assert!(created, "a new account");
    assert_ne!(renewed.account, alice_addr.account);
    let found = bob.typed_iq("contacts", IqPayload::ContactLookup(vec!["alice".into()])).await;
    let IqPayload::Contacts(contacts) = found.payload else { panic!("contacts answered an error") };
    assert_eq!(contacts[0].jid.as_deref(), Some(account_jid(&renewed).as_str()));
    let ack = bob.send_message("again", &alice_jid, &alice_device).await;
    assert_eq!(ack.error.as_deref(), Some("recipient-unavailable"), "the old account stays gone");
    let ack = bob.send_message("fresh", &account_jid(&renewed), &[device_jid(&renewed)]).await;
    assert_eq!(ack.error, None);
    assert_eq!(alice.next_message().await.id, "fresh", "nothing from before the opt-out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opting_out_on_one_device_ends_the_sessions_of_the_others() {
    let w = world().await;
    let (alice, mut phone, phone_addr) = w.enlisted("alice", 1).await;
    // A second device of the same provider user: a new key, a token for it.
    let keys = new_keys();
    let (jwt, push_token) = w.provider_token(&alice.session, &keys.public).await;
    let laptop_user = InteropUser { keys, jwt, push_token, ..alice.clone() };
    let mut laptop = w.connect_interop(&laptop_user).await;
    let response = laptop.enlist_iq(enlist_request(&laptop_user, 2)).await;
    let Response::Enlisted { address, created } = response else { panic!("{response:?}") };
    assert!(!created, "the account exists");
    assert_eq!(address.account, phone_addr.account);
    assert_ne!(address.device, phone_addr.device);
    laptop.ping_ok("p1").await;

    assert_eq!(phone.enlist_iq(Request::OptOut).await, Response::OptedOut);
    let error = laptop.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotAuthorized);
    // The device that opted out stays connected, without a chat session.
    assert_eq!(phone.status().await, Status::NotEnlisted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_sender_is_told_the_recipient_is_unavailable() {
    let w = world().await;
    let (_, mut bob, bob_addr) = w.native("+15550001", 1, true).await;
    let (_, mut alice, alice_addr) = w.enlisted("alice", 2).await;
    let (bob_jid, bob_device) = (account_jid(&bob_addr), vec![device_jid(&bob_addr)]);
    assert_eq!(alice.send_message("m1", &bob_jid, &bob_device).await.error, None);

    let block = Node::new("iq")
        .with_attr("id", "b1")
        .with_attr("type", "set")
        .with_attr("xmlns", "blocklist")
        .with_children(vec![Node::new("block").with_attr("jid", account_jid(&alice_addr))]);
    let answer = bob.iq(block).await;
    assert_eq!(answer.attr("type"), Some("result"), "{}", show(&answer));

    let ack = alice.send_message("m2", &bob_jid, &bob_device).await;
    assert_eq!(ack.error.as_deref(), Some("recipient-unavailable"));

    let unblock = Node::new("iq")
        .with_attr("id", "b2")
        .with_attr("type", "set")
        .with_attr("xmlns", "blocklist")
        .with_children(vec![Node::new("unblock").with_attr("jid", account_jid(&alice_addr))]);
    let answer = bob.iq(unblock).await;
    assert_eq!(answer.attr("type"), Some("result"), "{}", show(&answer));
    assert_eq!(alice.send_message("m3", &bob_jid, &bob_device).await.error, None);
    // Bob got m1 and m3, never m2.
    assert_eq!(bob.next_message().await.id, "m1");
    assert_eq!(bob.next_message().await.id, "m3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_an_offline_interop_device_wakes_it_through_the_provider() {
    let w = world().await;
    let (_, mut bob, _) = w.native("+15550001", 1, true).await;
    let (alice, alice_conn, alice_addr) = w.enlisted("alice", 2).await;
    // Closed, and the server ended her session: she has no live connection now.
    alice_conn.close().await;

    let ack = bob.send_message("m1", &account_jid(&alice_addr), &[device_jid(&alice_addr)]).await;
    assert_eq!(ack.error, None);

    let url =
        format!("{}/v1/wake?device_key={}", w.issuer, URL_SAFE_NO_PAD.encode(alice.keys.public));
    let poll = w.http.get(url).bearer_auth(&alice.session).send();
    let answer = tokio::time::timeout(TIMEOUT + Duration::from_secs(5), poll)
        .await
        .expect("the long-poll answers")
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body, json!({"wake": true}), "the provider received a signed wake-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_provider_ends_its_users_live_sessions() {
    let w = world().await;
    let (_, mut alice, _) = w.enlisted("alice", 1).await;
    alice.ping_ok("p1").await;
    let url = format!("http://{}/admin/providers/{INTEGRATOR}/disable", w.gk_http);
    let r = w.http.post(url).bearer_auth(&w.admin).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let error = alice.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotAuthorized);
    assert_eq!(error.text.as_deref(), Some("provider_disabled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_is_stored_durably_and_rate_limited() {
    let w = world().await;
    let (_, mut alice, _) = w.enlisted("alice", 1).await;
    let (_, _bob, bob_address) = w.enlisted("bob", 2).await;
    let report = |id: &str| {
        Node::new("iq")
            .with_attr("id", id)
            .with_attr("type", "set")
            .with_attr("xmlns", "report")
            .with_children(vec![
                Node::new("report").with_attr("jid", account_jid(&bob_address)).with_children(
                    vec![Node::new("message").with_attr("id", "m1").with_bytes(b"spam".to_vec())],
                ),
            ])
    };
    let answer = alice.iq(report("r1")).await;
    assert_eq!(answer.attr("type"), Some("result"), "{}", show(&answer));
    let stored = std::fs::read_to_string(w.gk_dir.join("reports.jsonl")).unwrap();
    let line: Value = serde_json::from_str(stored.lines().next().unwrap()).unwrap();
    assert_eq!(line["reported"], bob_address.account.as_str());
    assert!(line["report"].as_str().unwrap().contains("m1"));
    // A burst of 10, then one a minute.
    let mut refused = 0;
    for i in 0..12 {
        let a = alice.iq(report(&format!("x{i}"))).await;
        if a.attr("type") == Some("error") {
            refused += 1;
        }
    }
    assert!(refused >= 2, "{refused} of 12 refused");
}

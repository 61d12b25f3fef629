//! The HTTP side over real sockets on 127.0.0.1: the provider registry's admin API taking effect
//! on chat connections, JWKS rotation end to end, the provider's push receiver, push endpoints
//! that fail or hang, media upload limits, the provider over HTTPS, `provider check`, and
//! `interop-server dev` as a process.
//!
//! Chat clients speak Noise + binary stanzas through `interop_noise::tokio::connect` directly
//! (the server must not link interop-client). Every wait has a deadline; nothing sleeps to
//! synchronise (the only sleeps are a slow upload's pauses, which are what is tested).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{account_jid, consent, device_jid, init_tracing, key_bundle, new_keys, now_secs};
use interop_enlist::ProviderEntry;
use interop_enlist::enlist::{Address, Request, Response, Status};
use interop_noise::proto::{ClientPayload, Product};
use interop_noise::tokio::NoiseStream;
use interop_noise::{ClientConfig, StaticKeypair, TrustAnchor};
use interop_server::check::{CheckConfig, Outcome};
use interop_server::gatekeeper::{CodeSink, Gatekeeper, GatekeeperConfig};
use interop_server::provider::{MediaLimits, Provider, ProviderConfig};
use interop_server::store::ProviderRecord;
use interop_stanza::Node;
use interop_stanza::binary::Codec;
use interop_stanza::stanza::{
    Ack, AckClass, Enc, EncType, Message, MessageType, Participant, StreamCondition, StreamError,
};
use rand::SeedableRng;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long any single wait may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The integrator id the provider is registered under.
const INTEGRATOR: &str = "example";
const ADMIN: &str = "gatekeeper-admin-token";
const PROVIDER_ADMIN: &str = "provider-admin-token";
const PASSWORD: &str = "correct horse battery";

fn push_secret() -> String {
    format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 32]>()))
}

fn message(id: &str, to: &str, devices: &[String]) -> Node {
    let mut m = Message::new(id, MessageType::Text).to(to);
    for d in devices {
        let ciphertext = format!("ciphertext of {id} for {d}").into_bytes();
        m = m.with_participant(Participant::new(d, Enc::new(EncType::Msg, ciphertext)));
    }
    m.into_node()
}

fn show(node: &Node) -> String {
    interop_stanza::xml::to_string(node).unwrap_or_else(|_| format!("{node:?}"))
}

fn native_payload() -> ClientPayload {
    ClientPayload {
        product: Product::Native as i32,
        user_agent: "http-test".into(),
        ..Default::default()
    }
}

/// The `kid` in a JWT's header.
fn kid_of(jwt: &str) -> String {
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').next().unwrap()).unwrap())
            .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

// --- a provider on its own ---------------------------------------------------------------------

/// A reference provider on 127.0.0.1 (dev mode, plain http).
struct ProviderServer {
    base: String,
    push_secret: String,
    http: reqwest::Client,
    stop: CancellationToken,
    dir: tempfile::TempDir,
}

impl Drop for ProviderServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn provider_server(limits: MediaLimits, wake_poll: Duration) -> ProviderServer {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let push_secret = push_secret();
    let provider = Provider::open_with(
        ProviderConfig {
            issuer: base.clone(),
            audience: "gatekeeper".into(),
            data_dir: dir.path().join("provider"),
            push_secret: push_secret.clone(),
            admin_token: PROVIDER_ADMIN.into(),
            dev: true,
            wake_poll,
            token_lifetime: None,
        },
        limits,
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move { provider.serve(listener, shutdown).await });
    ProviderServer { base, push_secret, http: reqwest::Client::new(), stop, dir }
}

impl ProviderServer {
    async fn post(&self, path: &str, auth: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        let r = tokio::time::timeout(TIMEOUT, req.send()).await.expect("provider answers").unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a provider account and logs in: the session.
    async fn session(&self, username: &str) -> String {
        let creds = json!({"username": username, "password": PASSWORD});
        assert_eq!(self.post("/v1/accounts", None, creds.clone()).await.0, 201);
        let (status, body) = self.post("/v1/sessions", None, creds).await;
        assert_eq!(status, 200, "{body}");
        body["session"].as_str().unwrap().to_owned()
    }

    /// A token and push token for `key`.
    async fn token(&self, session: &str, key: &[u8; 32]) -> (String, String) {
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
    async fn user(&self, username: &str) -> InteropUser {
        let session = self.session(username).await;
        let keys = new_keys();
        let (jwt, push_token) = self.token(&session, &keys.public).await;
        InteropUser { keys, jwt, push_token, session }
    }

    /// One long-poll on `/v1/wake` for `key`: whether a wake-up was pending.
    async fn poll_wake(&self, session: &str, key: &[u8; 32]) -> bool {
        let url = format!("{}/v1/wake?device_key={}", self.base, URL_SAFE_NO_PAD.encode(key));
        let r = tokio::time::timeout(TIMEOUT, self.http.get(url).bearer_auth(session).send())
            .await
            .expect("the long-poll answers")
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json::<Value>().await.unwrap()["wake"].as_bool().unwrap()
    }
}

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
            user_agent: "http-test".into(),
            provider_jwt: self.jwt.clone(),
            read_receipts: true,
            ..Default::default()
        }
    }

    fn enlist_request(&self, seed: u8) -> Request {
        Request::Enlist {
            keys: key_bundle(seed),
            consent: consent(),
            push_token: self.push_token.clone().into_bytes(),
        }
    }
}

// --- a gatekeeper with the provider registered -------------------------------------------------

/// A provider and a gatekeeper it is registered with (push wake-ups to the provider's own push
/// endpoint, or to another endpoint with another secret).
struct World {
    provider: ProviderServer,
    gk: SocketAddr,
    gk_http: String,
    root: [u8; 32],
    codes: Arc<Mutex<Vec<(String, String)>>>,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn world(push: Option<(&str, &str)>) -> World {
    let provider = provider_server(MediaLimits::default(), TIMEOUT).await;
    let codes: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink_codes = Arc::clone(&codes);
    let sink: CodeSink = Arc::new(move |identifier: &str, code: &str| {
        sink_codes.lock().unwrap().push((identifier.to_owned(), code.to_owned()));
    });
    let mut config =
        GatekeeperConfig::new("127.0.0.1:0".parse().unwrap(), provider.dir.path().join("gk"));
    config.dev = true;
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    config.admin_token = ADMIN.into();
    config.code_sink = Some(sink);
    let gk = Gatekeeper::bind(config).await.unwrap();
    let issuer = provider.base.clone();
    let (push, secret) = match push {
        Some((endpoint, secret)) => (endpoint.to_owned(), secret.to_owned()),
        None => (format!("{issuer}/v1/push"), provider.push_secret.clone()),
    };
    gk.upsert_provider(&ProviderRecord {
        entry: ProviderEntry::new(&issuer, INTEGRATOR, &push, &format!("{issuer}/media/")),
        push_secret: secret,
    })
    .await
    .unwrap();
    let addr = gk.local_addr().unwrap();
    let gk_http = format!("http://{}", gk.http_addr().unwrap().unwrap());
    let root = gk.root_key();
    let stop = CancellationToken::new();
    tokio::spawn(gk.run(stop.clone().cancelled_owned()));
    World { provider, gk: addr, gk_http, root, codes, http: reqwest::Client::new(), stop }
}

impl World {
    async fn connect(&self, keys: &StaticKeypair, payload: &ClientPayload) -> Client {
        connect(self.gk, self.root, keys, payload).await
    }

    async fn connect_interop(&self, user: &InteropUser) -> Client {
        self.connect(&user.keys, &user.payload()).await
    }

    /// A provider user, connected and enlisted.
    async fn enlisted(&self, username: &str, seed: u8) -> (InteropUser, Client, Address) {
        let user = self.provider.user(username).await;
        let mut c = self.connect_interop(&user).await;
        let response = c.enlist_iq(user.enlist_request(seed)).await;
        let Response::Enlisted { address, .. } = response else { panic!("{response:?}") };
        (user, c, address)
    }

    /// A native user, registered and opted in to interop.
    async fn native(&self, identifier: &str, seed: u8) -> (Client, Address) {
        let mut c = self.connect(&new_keys(), &native_payload()).await;
        let sent = c.enlist_iq(Request::Register { identifier: identifier.into() }).await;
        assert!(matches!(sent, Response::CodeSent { .. }), "{sent:?}");
        let code = self
            .codes
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(i, _)| i == identifier)
            .map(|(_, c)| c.clone())
            .expect("a code was sent");
        let confirmed = c
            .enlist_iq(Request::Confirm {
                identifier: identifier.into(),
                code,
                keys: key_bundle(seed),
            })
            .await;
        let Response::Registered { address } = confirmed else { panic!("{confirmed:?}") };
        let on = c.enlist_iq(Request::InteropOptIn { enabled: true }).await;
        assert_eq!(on, Response::InteropOptIn { enabled: true });
        (c, address)
    }

    /// `POST /admin/providers/{integrator}/{action}` with `token`: the status.
    async fn admin(&self, action: &str, token: &str) -> u16 {
        let url = format!("{}/admin/providers/{INTEGRATOR}/{action}", self.gk_http);
        let r = tokio::time::timeout(TIMEOUT, self.http.post(url).bearer_auth(token).send())
            .await
            .expect("the admin API answers")
            .unwrap();
        r.status().as_u16()
    }
}

async fn connect(
    gk: SocketAddr,
    root: [u8; 32],
    keys: &StaticKeypair,
    payload: &ClientPayload,
) -> Client {
    let config = ClientConfig::new(keys.clone(), TrustAnchor::new(root).unwrap());
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let handshake = async {
        let socket = TcpStream::connect(gk).await?;
        interop_noise::tokio::connect(socket, &config, payload, None, now_secs(), &mut rng)
            .await
            .map_err(std::io::Error::other)
    };
    let (stream, _) =
        tokio::time::timeout(TIMEOUT, handshake).await.expect("handshake in time").unwrap();
    Client { stream, codec: Codec::default(), pending: VecDeque::new(), next_id: 0 }
}

/// One chat connection, with the stanzas it read but nobody asked for yet.
struct Client {
    stream: NoiseStream<TcpStream>,
    codec: Codec,
    pending: VecDeque<Node>,
    next_id: u32,
}

impl Client {
    async fn send(&mut self, node: &Node) {
        let bytes = self.codec.encode(node).unwrap();
        self.stream.send(&bytes).await.unwrap();
    }

    async fn recv_wire(&mut self) -> Option<Node> {
        match tokio::time::timeout(TIMEOUT, self.stream.recv()).await.expect("a stanza in time") {
            Ok(Some(bytes)) => Some(self.codec.decode(&bytes).expect("the server sends stanzas")),
            Ok(None) | Err(_) => None,
        }
    }

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

    async fn enlist_iq(&mut self, request: Request) -> Response {
        self.next_id += 1;
        let id = format!("q{}", self.next_id);
        self.send(&request.to_node(&id)).await;
        let answer = self
            .next_where(&format!("the answer to iq {id}"), |n| {
                n.tag == "iq" && n.attr("id") == Some(id.as_str())
            })
            .await;
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

    async fn ack_of(&mut self, id: &str) -> Ack {
        let node = self
            .next_where(&format!("the ack of {id}"), |n| n.tag == "ack" && n.attr("id") == Some(id))
            .await;
        Ack::from_node(node).unwrap()
    }

    /// Reads until a `stream:error`, which must be followed by the end of the connection.
    async fn stream_error_then_closed(&mut self) -> StreamError {
        let node = self.next_where("a stream:error", |n| n.tag == "stream:error").await;
        let error = StreamError::from_node(node).unwrap();
        let after = self.recv_wire().await;
        assert!(after.is_none(), "the connection closes after a stream:error");
        error
    }

    /// Half-closes and reads until the server closed its side.
    async fn close(mut self) {
        self.stream.shutdown().await.unwrap();
        while self.recv_wire().await.is_some() {}
    }
}

// --- registry changes and key rotation ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_provider_refuses_its_users_until_it_is_enabled_again() {
    let w = world(None).await;
    let (alice, mut live, address) = w.enlisted("alice", 1).await;
    assert_eq!(w.admin("disable", "not-the-admin-token").await, 401);
    assert_eq!(w.admin("disable", ADMIN).await, 200);

    // The live connection is ended ...
    let error = live.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotAuthorized);
    assert_eq!(error.text.as_deref(), Some("provider_disabled"));
    // ... and a new one, with a token that is still valid, is refused.
    let mut refused = w.connect_interop(&alice).await;
    let error = refused.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::NotAuthorized);
    assert_eq!(error.text.as_deref(), Some("provider_disabled"));

    assert_eq!(w.admin("enable", ADMIN).await, 200);
    let mut back = w.connect_interop(&alice).await;
    assert_eq!(back.status().await, Status::Enlisted { address, consent: consent() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_under_a_rotated_key_is_accepted_by_the_gatekeeper() {
    let w = world(None).await;
    let (alice, first, address) = w.enlisted("alice", 1).await;
    first.close().await;
    let old_kid = kid_of(&alice.jwt);

    let rotate = |token: &'static str| {
        w.http.post(format!("{}/v1/admin/rotate-key", w.provider.base)).bearer_auth(token).send()
    };
    assert_eq!(rotate("wrong").await.unwrap().status().as_u16(), 401);
    assert_eq!(rotate(PROVIDER_ADMIN).await.unwrap().status().as_u16(), 204);

    // A new token for the same device is signed with the new key, which the gatekeeper has not
    // fetched yet: the unknown kid makes it fetch the JWKS again, and the token is accepted.
    let (jwt, _) = w.provider.token(&alice.session, &alice.keys.public).await;
    assert_ne!(kid_of(&jwt), old_kid, "signed with the new key");
    let rotated = InteropUser { jwt, ..alice.clone() };
    let mut c = w.connect_interop(&rotated).await;
    assert_eq!(c.status().await, Status::Enlisted { address: address.clone(), consent: consent() });
    c.close().await;
    // The old key stays published for the overlap: tokens it signed still work.
    let mut old = w.connect_interop(&alice).await;
    assert_eq!(old.status().await, Status::Enlisted { address, consent: consent() });
}

// --- the provider's push receiver --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_receiver_checks_signature_and_timestamp_and_ignores_replays() {
    let p = provider_server(MediaLimits::default(), Duration::from_millis(300)).await;
    let alice = p.user("alice").await;
    let body = interop_server::push::wake_body(&alice.push_token);
    let signer = standardwebhooks::Webhook::new(&p.push_secret).unwrap();
    let send = |id: &'static str, ts: i64, signature: String| {
        p.http
            .post(format!("{}/v1/push", p.base))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send()
    };
    let now = now_secs() as i64;
    let status = |r: reqwest::Result<reqwest::Response>| r.unwrap().status().as_u16();

    // Signed with another secret.
    let forged =
        standardwebhooks::Webhook::new(&push_secret()).unwrap().sign("msg_1", now, body.as_bytes());
    assert_eq!(status(send("msg_1", now, forged.unwrap()).await), 401);
    // Correctly signed, but ten minutes old (the tolerance is 5).
    let stale = signer.sign("msg_2", now - 600, body.as_bytes()).unwrap();
    assert_eq!(status(send("msg_2", now - 600, stale).await), 401);
    // A signature over another body.
    let other = signer.sign("msg_3", now, b"{}").unwrap();
    assert_eq!(status(send("msg_3", now, other).await), 401);
    assert!(!p.poll_wake(&alice.session, &alice.keys.public).await, "no refused one woke");

    let good = signer.sign("msg_4", now, body.as_bytes()).unwrap();
    assert_eq!(status(send("msg_4", now, good.clone()).await), 204);
    assert!(p.poll_wake(&alice.session, &alice.keys.public).await, "the signed one woke");
    // The same webhook-id again: acknowledged, and ignored.
    assert_eq!(status(send("msg_4", now, good).await), 204);
    assert!(!p.poll_wake(&alice.session, &alice.keys.public).await, "a replay does not wake");
    // An unknown push token, correctly signed: 410, so the gatekeeper stops trying.
    let unknown = interop_server::push::wake_body("no-such-token");
    let signature = signer.sign("msg_5", now, unknown.as_bytes()).unwrap();
    let r = p
        .http
        .post(format!("{}/v1/push", p.base))
        .header("webhook-id", "msg_5")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(unknown)
        .send()
        .await;
    assert_eq!(status(r), 410);
}

// --- push endpoints that fail or hang ----------------------------------------------------------

/// A fake push endpoint: answers each request as the script says (`None`: never answers) and
/// reports every request (when, webhook-id, signature valid).
async fn fake_push_endpoint(
    secret: String,
    script: Vec<Option<u16>>,
) -> (String, mpsc::UnboundedReceiver<(Instant, String, bool)>) {
    let (seen, rx) = mpsc::unbounded_channel();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let handler = move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let (seen, script, secret) = (seen.clone(), Arc::clone(&script), secret.clone());
        async move {
            let verified =
                standardwebhooks::Webhook::new(&secret).unwrap().verify(&body, &headers).is_ok();
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let _ = seen.send((Instant::now(), id, verified));
            let next = script.lock().unwrap().pop_front().unwrap_or(Some(204));
            match next {
                Some(code) => axum::http::StatusCode::from_u16(code).unwrap(),
                None => std::future::pending().await,
            }
        }
    };
    let app = axum::Router::new().route("/push", axum::routing::post(handler));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn next_push(
    rx: &mut mpsc::UnboundedReceiver<(Instant, String, bool)>,
    within: Duration,
) -> (Instant, String, bool) {
    tokio::time::timeout(within, rx.recv()).await.expect("a push request in time").unwrap()
}

/// Bob (native, online) sends `id` to Alice (interop, offline): the ack, and how long it took.
async fn send_timed(bob: &mut Client, id: &str, alice: &Address) -> (Ack, Duration) {
    let started = Instant::now();
    bob.send(&message(id, &account_jid(alice), &[device_jid(alice)])).await;
    let ack = bob.ack_of(id).await;
    (ack, started.elapsed())
}

/// Acks must not wait for push: far below the push timeout and back-offs.
const PROMPT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_endpoint_answering_500_is_retried_without_slowing_routing() {
    let secret = push_secret();
    let (endpoint, mut pushes) =
        fake_push_endpoint(secret.clone(), vec![Some(500), Some(500)]).await;
    let w = world(Some((&endpoint, &secret))).await;
    let (mut bob, _) = w.native("+15550001", 1).await;
    let (_, alice_conn, alice) = w.enlisted("alice", 2).await;
    alice_conn.close().await;

    let (ack, took) = send_timed(&mut bob, "m1", &alice).await;
    assert_eq!((ack.class, ack.error.as_deref()), (AckClass::Message, None));
    assert!(took < PROMPT, "acked in {took:?}");
    let (t1, id1, signed) = next_push(&mut pushes, TIMEOUT).await;
    assert!(signed, "wake-ups are signed with the registered secret");
    // More messages while the wake-up is being retried: acked at once, coalesced into it.
    for id in ["m2", "m3", "m4"] {
        let (ack, took) = send_timed(&mut bob, id, &alice).await;
        assert_eq!(ack.error, None);
        assert!(took < PROMPT, "{id} acked in {took:?}");
    }
    let (t2, id2, _) = next_push(&mut pushes, TIMEOUT).await;
    let (t3, id3, _) = next_push(&mut pushes, TIMEOUT).await;
    assert_eq!(
        (id2.as_str(), id3.as_str()),
        (id1.as_str(), id1.as_str()),
        "retries of one wake-up"
    );
    // Back-off: 0.5 s, then 1 s, each ±50%.
    assert!(t2 - t1 >= Duration::from_millis(200), "first back-off {:?}", t2 - t1);
    assert!(t3 - t2 >= Duration::from_millis(400), "second back-off {:?}", t3 - t2);
    // The third attempt was answered 204: done. The messages sent meanwhile did not queue
    // wake-ups of their own; the next message is a new wake-up.
    let (ack, took) = send_timed(&mut bob, "m5", &alice).await;
    assert_eq!(ack.error, None);
    assert!(took < PROMPT);
    let (_, id4, _) = next_push(&mut pushes, TIMEOUT).await;
    assert_ne!(id4, id1, "a new wake-up after the first was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_push_endpoint_does_not_slow_routing_and_is_retried_after_its_timeout() {
    let secret = push_secret();
    let (endpoint, mut pushes) = fake_push_endpoint(secret.clone(), vec![None]).await;
    let w = world(Some((&endpoint, &secret))).await;
    let (mut bob, _) = w.native("+15550001", 1).await;
    let (_, alice_conn, alice) = w.enlisted("alice", 2).await;
    alice_conn.close().await;

    let (ack, took) = send_timed(&mut bob, "m1", &alice).await;
    assert_eq!(ack.error, None);
    assert!(took < PROMPT, "acked in {took:?}");
    let (t1, id1, _) = next_push(&mut pushes, TIMEOUT).await;
    // The endpoint holds the request: routing goes on.
    for id in ["m2", "m3"] {
        let (ack, took) = send_timed(&mut bob, id, &alice).await;
        assert_eq!(ack.error, None);
        assert!(took < PROMPT, "{id} acked in {took:?} while the push endpoint hangs");
    }
    // The dispatcher gives up on the hanging request after its timeout (15 s) and retries.
    let (t2, id2, _) = next_push(&mut pushes, Duration::from_secs(40)).await;
    assert_eq!(id2, id1, "a retry of the same wake-up");
    assert!(t2 - t1 >= Duration::from_secs(10), "retried after the timeout, {:?}", t2 - t1);
}

// --- media upload limits -----------------------------------------------------------------------

/// Sends a raw `PUT /media/<address>` head with `content_length`, then `body`, then either
/// half-closes (`finish`) or keeps the connection open; returns the status line's code.
async fn raw_put(
    base: &str,
    session: &str,
    address: &str,
    content_length: u64,
    body: &[u8],
    finish: bool,
) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /media/{address} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {session}\r\n\
         content-length: {content_length}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body).await.unwrap();
    if finish {
        socket.shutdown().await.unwrap();
    }
    let mut reader = tokio::io::BufReader::new(socket);
    let mut line = String::new();
    tokio::time::timeout(TIMEOUT, reader.read_line(&mut line))
        .await
        .expect("an answer in time")
        .unwrap();
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn blob(len: usize, seed: u8) -> (Vec<u8>, String) {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    let address = hex::encode(sha2::Sha256::digest(&bytes));
    (bytes, address)
}

fn stored_and_temporary_files(dir: &Path) -> usize {
    fn count(d: &Path) -> usize {
        std::fs::read_dir(d)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 })
                    .sum()
            })
            .unwrap_or(0)
    }
    count(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_short_and_slow_uploads_are_refused_and_leave_nothing_behind() {
    let cap = 16 * 64 + 10;
    let limits = MediaLimits {
        host: interop_media::HostLimits { max_file_len: cap },
        upload_idle: Duration::from_secs(1),
        upload_total: Duration::from_secs(3),
    };
    let p = provider_server(limits, TIMEOUT).await;
    let session = p.session("alice").await;
    let media_dir = p.dir.path().join("provider/media");
    let base = p.base.clone();

    // Over the cap: refused from the head, before any body byte.
    let (big, big_address) = blob(cap as usize + 16, 1);
    assert_eq!(raw_put(&base, &session, &big_address, big.len() as u64, &[], false).await, 413);
    // And with the body sent (reqwest).
    let r = p
        .http
        .put(format!("{base}/media/{big_address}"))
        .bearer_auth(&session)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // The default cap (1 GiB) refuses a declared length above it the same way.
    let d = provider_server(MediaLimits::default(), TIMEOUT).await;
    let d_session = d.session("bob").await;
    let huge = (1u64 << 30) + 16 * 4 + 10 + 16;
    assert_eq!(raw_put(&d.base, &d_session, &big_address, huge, &[], false).await, 413);

    // A body shorter than declared: the client stops sending and half-closes.
    let (file, address) = blob(16 * 8 + 10, 2);
    assert_eq!(raw_put(&base, &session, &address, file.len() as u64, &file[..40], true).await, 400);
    // A body that stalls: refused after the idle limit, with the connection still open.
    let started = Instant::now();
    assert_eq!(
        raw_put(&base, &session, &address, file.len() as u64, &file[..40], false).await,
        408
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body that trickles (a byte every 200 ms: never idle for 1 s) hits the total limit.
    let addr = base.trim_start_matches("http://").to_owned();
    let mut socket = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /media/{address} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {session}\r\n\
         content-length: {}\r\n\r\n",
        file.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    for byte in &file {
        if socket.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        // Deliberate pacing of the slow client; an answer ends it.
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await
        {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
        assert!(started.elapsed() < TIMEOUT, "the trickling upload is cut off in time");
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());

    // Nothing of the refused uploads stayed, as a file or as a temporary.
    assert_eq!(stored_and_temporary_files(&media_dir), 0);
    let r = p.http.get(format!("{base}/media/{address}")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // A proper upload still works.
    let r = p
        .http
        .put(format!("{base}/media/{address}"))
        .bearer_auth(&session)
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(stored_and_temporary_files(&media_dir), 1);
}

// --- HTTPS -------------------------------------------------------------------------------------

/// A self-signed certificate for `names`, written as PEM files into `dir`: (cert, key, PEM).
fn certificate(dir: &Path, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = rcgen::generate_simple_self_signed(names).unwrap();
    let cert_pem = cert.cert.pem();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert_pem.into_bytes())
}

/// A provider serving HTTPS on 127.0.0.1 with a certificate for `names`.
async fn tls_provider(
    issuer_of: impl FnOnce(SocketAddr) -> String,
    names: &[&str],
    dev: bool,
) -> (Provider, SocketAddr, String, Vec<u8>, CancellationToken, tempfile::TempDir) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem) = certificate(dir.path(), names);
    let acceptor = interop_server::provider::tls::acceptor(&cert, &key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let issuer = issuer_of(addr);
    let provider = Provider::open(ProviderConfig {
        issuer: issuer.clone(),
        audience: "gatekeeper".into(),
        data_dir: dir.path().join("provider"),
        push_secret: push_secret(),
        admin_token: PROVIDER_ADMIN.into(),
        dev,
        wake_poll: TIMEOUT,
        token_lifetime: None,
    })
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let (p, shutdown) = (provider.clone(), stop.clone().cancelled_owned());
    tokio::spawn(async move { p.serve_tls(listener, acceptor, shutdown).await });
    (provider, addr, issuer, pem, stop, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_serves_https_with_its_certificate() {
    // Production mode: an https issuer at a DNS name (resolved to loopback for the test).
    let (_provider, addr, issuer, pem, stop, _dir) =
        tls_provider(|a| format!("https://provider.test:{}", a.port()), &["provider.test"], false)
            .await;
    // A client that opens a connection and never says anything does not hold up others.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .resolve("provider.test", addr)
        .build()
        .unwrap();
    let r = tokio::time::timeout(
        TIMEOUT,
        client.get(format!("{issuer}/.well-known/openid-configuration")).send(),
    )
    .await
    .expect("an answer over TLS")
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let discovery: Value = r.json().await.unwrap();
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/jwks.json").as_str());
    let jwks: Value =
        client.get(format!("{issuer}/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);

    // Plain http to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/.well-known/openid-configuration"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // A client that does not trust the certificate refuses the connection.
    let untrusting = reqwest::Client::builder().resolve("provider.test", addr).build().unwrap();
    assert!(untrusting.get(format!("{issuer}/jwks.json")).send().await.is_err());
    stop.cancel();
}

#[test]
fn bad_certificate_files_are_reported_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(dir.path(), &["localhost"]);
    let missing = dir.path().join("missing.pem");
    let e = interop_server::provider::tls::acceptor(&missing, &key).err().unwrap().to_string();
    assert!(e.contains("missing.pem"), "{e}");
    let e = interop_server::provider::tls::acceptor(&key, &key).err().unwrap().to_string();
    assert!(e.contains("no certificate"), "{e}");
    let e = interop_server::provider::tls::acceptor(&cert, &cert).err().unwrap().to_string();
    assert!(e.contains("no PEM private key"), "{e}");
    let other = tempfile::tempdir().unwrap();
    let (other_cert, _, _) = certificate(other.path(), &["localhost"]);
    let e = interop_server::provider::tls::acceptor(&other_cert, &key).err().unwrap().to_string();
    assert!(e.contains("do not fit"), "{e}");
}

// --- provider check ----------------------------------------------------------------------------

fn check_config(p: &ProviderServer, username: &str) -> CheckConfig {
    let mut c = CheckConfig::new(&p.base);
    c.dev = true;
    c.push_secret = Some(p.push_secret.clone());
    c.credentials = Some((username.to_owned(), "check-password".to_owned()));
    c.create_account = true;
    c
}

fn report(findings: &[interop_server::check::Finding]) -> String {
    findings.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_check_passes_against_the_reference_provider() {
    let p = provider_server(MediaLimits::default(), TIMEOUT).await;
    let findings = interop_server::check::run(&check_config(&p, "selfcheck")).await;
    let text = report(&findings);
    assert!(findings.iter().all(|f| f.outcome == Outcome::Ok), "{text}");
    for what in ["discovery document", "JWKS", "sample token", "push endpoint", "media Range"] {
        assert!(findings.iter().any(|f| f.what.contains(what)), "{what} checked:\n{text}");
    }
    assert!(findings.len() >= 12, "{text}");
    // Run again with the account existing: still all ok.
    let again = interop_server::check::run(&check_config(&p, "selfcheck")).await;
    assert!(interop_server::check::passed(&again), "{}", report(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_check_passes_over_https_with_a_private_root() {
    let (_provider, addr, issuer, pem, stop, _dir) =
        tls_provider(|a| format!("https://localhost:{}", a.port()), &["localhost"], true).await;
    let _ = addr;
    let mut c = CheckConfig::new(&issuer);
    c.dev = true;
    c.credentials = Some(("selfcheck".into(), "check-password".into()));
    c.create_account = true;
    c.extra_roots = vec![reqwest::Certificate::from_pem(&pem).unwrap()];
    let findings = interop_server::check::run(&c).await;
    let text = report(&findings);
    assert!(interop_server::check::passed(&findings), "{text}");
    assert!(findings.iter().any(|f| f.what.starts_with("sample token")), "{text}");
    // Without the root, the discovery document is unreachable, with a fix hint naming it.
    c.extra_roots.clear();
    let findings = interop_server::check::run(&c).await;
    let failed: Vec<_> = findings.iter().filter(|f| f.outcome == Outcome::Fail).collect();
    assert!(failed[0].what.contains("discovery document"), "{}", report(&findings));
    assert!(failed[0].what.contains("certificate"), "{}", failed[0]);
    assert!(failed[0].fix.as_deref().unwrap().contains("--ca-cert"));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_check_names_a_wrong_push_secret_and_how_to_fix_it() {
    let p = provider_server(MediaLimits::default(), TIMEOUT).await;
    let mut c = check_config(&p, "selfcheck");
    c.push_secret = Some(push_secret());
    let findings = interop_server::check::run(&c).await;
    let text = report(&findings);
    let failed: Vec<_> = findings.iter().filter(|f| f.outcome == Outcome::Fail).collect();
    assert_eq!(failed.len(), 1, "only the push finding fails:\n{text}");
    let line = failed[0].to_string();
    assert!(line.starts_with("FAIL: push endpoint"), "{line}");
    assert!(line.contains("401"), "{line}");
    assert!(line.contains("— the provider verifies with another secret"), "{line}");
    assert!(line.contains("add-provider"), "{line}");
    assert!(!interop_server::check::passed(&findings));

    // Without a push secret or an account, those checks are skipped, saying what to pass.
    let mut bare = CheckConfig::new(&p.base);
    bare.dev = true;
    let findings = interop_server::check::run(&bare).await;
    assert!(interop_server::check::passed(&findings), "{}", report(&findings));
    let skipped: Vec<_> = findings.iter().filter(|f| f.outcome == Outcome::Skip).collect();
    assert_eq!(skipped.len(), 3, "{}", report(&findings));
    assert!(skipped.iter().any(|f| f.fix.as_deref().unwrap().contains("INTEROP_PUSH_SECRET")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_check_reports_an_issuer_mismatch_and_insecure_urls() {
    let p = provider_server(MediaLimits::default(), TIMEOUT).await;
    // Registered with a trailing slash the provider does not put in its discovery document.
    let mut c = check_config(&p, "selfcheck");
    c.issuer = format!("{}/", p.base);
    let findings = interop_server::check::run(&c).await;
    let failed: Vec<_> = findings.iter().filter(|f| f.outcome == Outcome::Fail).collect();
    assert!(!failed.is_empty(), "{}", report(&findings));
    assert!(failed[0].what.contains("discovery document"), "{}", report(&findings));
    assert!(failed[0].fix.as_deref().unwrap().contains("exactly the registered issuer"));

    // Outside dev mode, plain http is refused before anything is fetched.
    let mut prod = check_config(&p, "selfcheck");
    prod.dev = false;
    let findings = interop_server::check::run(&prod).await;
    assert_eq!(findings.len(), 1, "{}", report(&findings));
    assert_eq!(findings[0].outcome, Outcome::Fail);
    assert!(findings[0].what.contains("not https"), "{}", findings[0]);
}

// --- interop-server dev ------------------------------------------------------------------------

/// Reads `interop-server dev` output lines until `ready`: the `key value` lines.
async fn dev_lines(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("dev starts in time")
            .unwrap()
            .expect("dev prints `ready`");
        if line == "ready" {
            return out;
        }
        if let Some((k, v)) = line.split_once(' ') {
            out.insert(k.to_owned(), v.to_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_both_roles_with_the_provider_registered_and_cleans_up_on_sigterm() {
    init_tracing();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_interop-server"))
        .args(["dev", "--listen-chat", "127.0.0.1:0", "--listen-http", "127.0.0.1:0"])
        .args(["--listen-provider", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let info = dev_lines(&mut lines).await;
    let chat: SocketAddr = info["listening"].parse().unwrap();
    let root: [u8; 32] = hex::decode(&info["root-key"]).unwrap().try_into().unwrap();
    let issuer = info["issuer"].clone();
    let data_dir = std::path::PathBuf::from(&info["data-dir"]);
    assert!(data_dir.join("gatekeeper").is_dir() && data_dir.join("provider").is_dir());
    assert_eq!(info["integrator"], INTEGRATOR);

    // The next-steps block follows, with the addresses and the root key filled in.
    let mut steps = Vec::new();
    while steps.len() < 25 {
        let line = tokio::time::timeout(TIMEOUT, lines.next_line()).await.unwrap().unwrap();
        let Some(line) = line else { break };
        let done = line.contains("alice listen");
        steps.push(line);
        if done {
            break;
        }
    }
    let steps = steps.join("\n");
    assert!(steps.contains(&format!("init --server {chat} --root-key {}", info["root-key"])));
    assert!(steps.contains(&format!("login --provider {issuer} --username alice --create")));
    assert!(steps.contains("register --identifier +15550001 --code"));

    // The gatekeeper is up and healthy; the provider answers and is registered: a provider
    // user's token is accepted on a chat connection.
    let http = reqwest::Client::new();
    let health = http.get(format!("http://{}/healthz", info["http"])).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let creds = json!({"username": "alice", "password": PASSWORD});
    let created = http.post(format!("{issuer}/v1/accounts")).json(&creds).send().await.unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let login: Value = http
        .post(format!("{issuer}/v1/sessions"))
        .json(&creds)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = new_keys();
    let issued: Value = http
        .post(format!("{issuer}/v1/tokens"))
        .bearer_auth(login["session"].as_str().unwrap())
        .json(&json!({"device_key": URL_SAFE_NO_PAD.encode(keys.public)}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = InteropUser {
        keys: keys.clone(),
        jwt: issued["token"].as_str().unwrap().to_owned(),
        push_token: issued["push_token"].as_str().unwrap().to_owned(),
        session: String::new(),
    };
    let mut c = connect(chat, root, &keys, &user.payload()).await;
    let response = c.enlist_iq(user.enlist_request(1)).await;
    let Response::Enlisted { address, .. } = response else { panic!("{response:?}") };
    assert_eq!(address.integrator.as_deref(), Some(INTEGRATOR));

    // A native user: the verification code appears on standard output.
    let mut bob = connect(chat, root, &new_keys(), &native_payload()).await;
    let sent = bob.enlist_iq(Request::Register { identifier: "+15550001".into() }).await;
    assert!(matches!(sent, Response::CodeSent { .. }), "{sent:?}");
    let code = loop {
        let line = tokio::time::timeout(TIMEOUT, lines.next_line()).await.unwrap().unwrap();
        let line = line.expect("a verification-code line");
        if let Some(rest) = line.strip_prefix("verification-code +15550001 ") {
            break rest.to_owned();
        }
    };
    let confirmed = bob
        .enlist_iq(Request::Confirm { identifier: "+15550001".into(), code, keys: key_bundle(2) })
        .await;
    assert!(matches!(confirmed, Response::Registered { .. }), "{confirmed:?}");

    // SIGTERM: connections are closed with system-shutdown, the process exits cleanly and the
    // temporary data directory is gone.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let error = c.stream_error_then_closed().await;
    assert_eq!(error.condition, StreamCondition::SystemShutdown);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("dev stops in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!data_dir.exists(), "the temporary data directory is removed");
}

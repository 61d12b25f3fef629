//! The interop story in small pieces over real sockets: a gatekeeper and a provider in-process
//! on loopback, clients through the client library (its connection layer, and the full client
//! with Signal sessions and a profile database).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use interop_client::{Body, Client, ConnectOptions, Connection, Event};
use interop_noise::TrustAnchor;
use interop_server::gatekeeper::{Gatekeeper, GatekeeperConfig};
use interop_stanza::Node;
use interop_stanza::stanza::ReceiptType;

struct Running {
    addr: String,
    root: [u8; 32],
    key: [u8; 32],
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<interop_server::Result<()>>,
    codes: Arc<Mutex<HashMap<String, String>>>,
}

impl Running {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, "127.0.0.1:0".parse().unwrap(), Arc::default()).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        listen: std::net::SocketAddr,
        codes: Arc<Mutex<HashMap<String, String>>>,
    ) -> Self {
        let sink = Arc::clone(&codes);
        let mut config = GatekeeperConfig::new(listen, dir.path().to_owned());
        config.dev = true;
        config.code_sink = Some(Arc::new(move |identifier: &str, code: &str| {
            sink.lock().unwrap().insert(identifier.to_owned(), code.to_owned());
        }));
        let gk = Gatekeeper::bind(config).await.unwrap();
        let addr = gk.local_addr().unwrap().to_string();
        let key = gk.public_key();
        let root = gk.root_key();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(gk.run(async move {
            let _ = stopped.await;
        }));
        Self { addr, root, key, _dir: dir, stop: Some(stop), task, codes }
    }

    /// Stops the gatekeeper (graceful) and starts a new one on the same data and address.
    async fn restart(mut self) -> Self {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap().unwrap();
        let addr = self.addr.parse().unwrap();
        let codes = Arc::clone(&self.codes);
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        Self::start_in(dir, addr, codes).await
    }

    fn options(&self, account: &str) -> ConnectOptions {
        let mut o = ConnectOptions::new(&self.addr, account);
        o.trust_anchor = Some(TrustAnchor::new(self.root).unwrap());
        o
    }

    /// A native user registered through the client library, with its own profile.
    async fn native(&self, dir: &std::path::Path, identifier: &str) -> Client {
        let mut c = Client::open(dir).await.unwrap();
        c.set_server(&self.addr, &self.root).await.unwrap();
        c.register(identifier).await.unwrap();
        let code = self.codes.lock().unwrap().get(identifier).cloned().expect("a code was sent");
        c.confirm(identifier, &code).await.unwrap();
        c
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn next_with_tag(conn: &mut Connection, tag: &str) -> Node {
    loop {
        let node = conn.recv().await.unwrap().expect("connection open");
        if node.tag == tag {
            return node;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn native_users_exchange_encrypted_messages_with_receipts_and_offline_delivery() {
    let gk = Running::start().await;
    let dirs = tempfile::tempdir().unwrap();
    let mut alice = gk.native(&dirs.path().join("alice"), "+15550101").await;
    let mut bob = gk.native(&dirs.path().join("bob"), "+15550102").await;

    // Live: Bob is connected when Alice sends.
    let id = alice.send_text("+15550102", "hello bob").await.unwrap();
    match bob.next_event().await.unwrap() {
        Event::Message(m) => {
            assert_eq!(m.id, id);
            assert_eq!(m.body, Body::Text("hello bob".into()));
        }
        other => panic!("bob got {other:?}"),
    }
    // Bob's client sent a delivery receipt after storing the message.
    match alice.next_event().await.unwrap() {
        Event::Receipt { ids, kind, .. } => {
            assert_eq!(ids, vec![id.clone()]);
            assert_eq!(kind, ReceiptType::Delivery);
        }
        other => panic!("alice got {other:?}"),
    }

    // Offline: Bob disconnects, Alice sends three, Bob reconnects and gets them in order.
    bob.disconnect().await.unwrap();
    let mut sent = Vec::new();
    for text in ["one", "two", "three"] {
        sent.push(alice.send_text("+15550102", text).await.unwrap());
    }
    bob.connect().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Event::Message(m) = bob.next_event().await.unwrap() {
            got.push(m.id);
        }
    }
    assert_eq!(got, sent);
    // Stored in Bob's history, exactly once each.
    let alice_account = alice.address().await.unwrap().unwrap().account;
    let history = bob.db().history(&alice_account, 100).await.unwrap();
    assert_eq!(history.len(), 4);
    gk.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_native_user_without_interop_cannot_be_reached_by_an_unknown_identifier() {
    let gk = Running::start().await;
    let dirs = tempfile::tempdir().unwrap();
    let mut alice = gk.native(&dirs.path().join("alice"), "+15550201").await;
    let err = alice.send_text("+15550299", "anyone?").await.unwrap_err();
    assert!(matches!(err, interop_client::Error::UnknownContact(_)), "{err}");
    gk.stop().await;
}

#[tokio::test]
async fn a_client_refuses_a_server_certified_under_another_root() {
    let gk = Running::start().await;
    let other = Running::start().await;
    let mut opts = gk.options("alice");
    opts.trust_anchor = Some(TrustAnchor::new(other.root).unwrap());
    let err = Connection::connect(&opts).await.unwrap_err();
    assert!(
        matches!(
            err,
            interop_client::Error::Transport(interop_noise::Error::BadCertificate(
                interop_noise::CertError::BadSignature
            ))
        ),
        "{err:?}"
    );
    gk.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn a_client_without_a_trust_anchor_refuses_to_connect() {
    let gk = Running::start().await;
    let mut opts = gk.options("alice");
    opts.trust_anchor = None;
    let err = Connection::connect(&opts).await.unwrap_err();
    assert!(matches!(err, interop_client::Error::NoTrustAnchor), "{err:?}");
    assert!(err.to_string().contains("--root-key"));
    gk.stop().await;
}

#[tokio::test]
async fn a_cached_server_key_resumes_with_ik_and_a_stale_one_falls_back_to_xx() {
    let gk = Running::start().await;
    let mut opts = gk.options("alice");
    let first = Connection::connect(&opts).await.unwrap();
    assert!(!first.resumed());
    assert_eq!(first.server_key(), gk.key);
    first.close().await.unwrap();

    opts.cached_server_key = Some(gk.key);
    let mut resumed = Connection::connect(&opts).await.unwrap();
    assert!(resumed.resumed());
    // The session works: an iq is answered (this device is not registered, so with
    // `not-enlisted`, as the protocol says).
    resumed
        .send(
            &Node::new("iq")
                .with_attr("id", "r")
                .with_attr("type", "get")
                .with_attr("xmlns", "ping"),
        )
        .await
        .unwrap();
    assert_eq!(next_with_tag(&mut resumed, "iq").await.attr("id"), Some("r"));

    // A key the server no longer has (say, before a rotation): XX on the same connection.
    opts.cached_server_key = Some(Running::start().await.key);
    let fallback = Connection::connect(&opts).await.unwrap();
    assert!(!fallback.resumed());
    assert_eq!(fallback.server_key(), gk.key);
    gk.stop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut opts = ConnectOptions::new(format!("127.0.0.1:{port}"), "a");
    // Any root will do: the connection fails before the handshake.
    opts.trust_anchor =
        Some(interop_noise::cert::RootKey::from_bytes(&[1; 32]).unwrap().trust_anchor());
    let err = Connection::connect(&opts).await.unwrap_err();
    assert!(matches!(err, interop_client::Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot reach the server"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_handles_work_from_a_multi_threaded_runtime() {
    let gk = Running::start().await;
    let dirs = tempfile::tempdir().unwrap();
    let mut handles = Vec::new();
    for (name, identifier) in [("alice", "+15550301"), ("bob", "+15550302")] {
        let (h, events) = interop_client::ClientHandle::spawn(&dirs.path().join(name)).unwrap();
        h.set_server(&gk.addr, gk.root).await.unwrap();
        h.register(identifier).await.unwrap();
        let code = gk.codes.lock().unwrap().get(identifier).cloned().unwrap();
        h.confirm(identifier, &code).await.unwrap();
        handles.push((h, events));
    }
    let (bob, mut bob_events) = handles.pop().unwrap();
    let (alice, mut alice_events) = handles.pop().unwrap();
    bob.connect().await.unwrap();
    // Requests from other tasks while the actor also reads the connection.
    let sender = tokio::spawn(async move {
        let id = alice.send_text("+15550302", "through the actor").await.unwrap();
        (alice, id)
    });
    let (alice, id) = sender.await.unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), bob_events.next_event())
        .await
        .unwrap()
        .unwrap();
    match event {
        Event::Message(m) => {
            assert_eq!(m.id, id);
            assert_eq!(m.body, Body::Text("through the actor".into()));
        }
        other => panic!("bob got {other:?}"),
    }
    // Alice's actor is connected since the send: Bob's delivery receipt reaches her events.
    let receipt =
        tokio::time::timeout(std::time::Duration::from_secs(10), alice_events.next_event())
            .await
            .unwrap()
            .unwrap();
    assert!(matches!(receipt, Event::Receipt { kind: ReceiptType::Delivery, .. }), "{receipt:?}");
    drop(alice);
    gk.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn replies_reactions_edits_and_deletes_shape_the_conversation() {
    let gk = Running::start().await;
    let dirs = tempfile::tempdir().unwrap();
    let mut alice = gk.native(&dirs.path().join("alice"), "+15550401").await;
    let mut bob = gk.native(&dirs.path().join("bob"), "+15550402").await;
    let alice_account = alice.address().await.unwrap().unwrap().account;

    let first = alice.send_text("+15550402", "lunch at noon?").await.unwrap();
    let typo = alice.send_text("+15550402", "at the usal place").await.unwrap();
    let oops = alice.send_text("+15550402", "wrong chat, ignore").await.unwrap();
    alice.send_edit("+15550402", &typo, "at the usual place").await.unwrap();
    alice.send_delete("+15550402", &oops).await.unwrap();
    let mut received = 0;
    while received < 5 {
        if let Event::Message(_) = bob.next_event().await.unwrap() {
            received += 1;
        }
    }
    bob.send_reaction("+15550401", &first, "👍").await.unwrap();
    bob.send_reply("+15550401", "yes!", &first, &alice_account).await.unwrap();

    // Bob's view of the conversation: the edit and the delete apply to their targets.
    let entries = bob.db().history(&alice_account, 100).await.unwrap();
    let lines = interop_client::client::conversation(&entries);
    let texts: Vec<String> = lines.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 4, "{texts:?}");
    assert_eq!(lines[1].text, "at the usual place");
    assert!(lines[1].edited);
    assert!(lines[2].deleted && lines[2].text.is_empty());
    assert_eq!(lines[0].reactions, vec!["👍".to_owned()]);
    assert_eq!(lines[3].reply_to.as_deref(), Some(first.as_str()));

    // Alice receives the reaction and the reply as such.
    let mut got = Vec::new();
    while got.len() < 2 {
        if let Event::Message(m) = alice.next_event().await.unwrap() {
            got.push(m);
        }
    }
    assert!(
        matches!(&got[0].body, Body::Reaction { target, emoji } if *target == first && emoji == "👍")
    );
    assert_eq!(got[1].reply_to.as_deref(), Some(first.as_str()));
    assert_eq!(got[1].body, Body::Text("yes!".into()));
    gk.stop().await;
}

async fn next(u: &mut interop_client::Events) -> interop_client::Update {
    tokio::time::timeout(std::time::Duration::from_secs(20), u.next()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_handle_reconnects_after_a_server_restart_and_reports_it() {
    use interop_client::{ConnectionState, Update};
    let gk = Running::start().await;
    let dirs = tempfile::tempdir().unwrap();
    let mut alice = gk.native(&dirs.path().join("alice"), "+15550501").await;
    let (bob, mut updates) = interop_client::ClientHandle::spawn(&dirs.path().join("bob")).unwrap();
    bob.set_server(&gk.addr, gk.root).await.unwrap();
    bob.register("+15550502").await.unwrap();
    let code = gk.codes.lock().unwrap().get("+15550502").cloned().unwrap();
    bob.confirm("+15550502", &code).await.unwrap();
    bob.connect().await.unwrap();
    assert!(matches!(
        next(&mut updates).await,
        Update::Connection(ConnectionState::Connected { .. })
    ));

    let gk = gk.restart().await;
    // The old connection ends (system-shutdown); the actor reports it and reconnects by itself.
    match next(&mut updates).await {
        Update::Connection(ConnectionState::Disconnected { retry_in, .. }) => {
            assert!(retry_in <= std::time::Duration::from_secs(2), "{retry_in:?}");
        }
        other => panic!("{other:?}"),
    }
    loop {
        match next(&mut updates).await {
            Update::Connection(ConnectionState::Connected { resumed }) => {
                assert!(resumed, "the cached server key resumes with IK");
                break;
            }
            // The server may not be listening at the first retry: another back-off.
            Update::Connection(ConnectionState::Disconnected { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    // Alice's plain Client does not reconnect by itself.
    alice.connect().await.unwrap();
    let id = alice.send_text("+15550502", "after the restart").await.unwrap();
    match next(&mut updates).await {
        Update::Event(Event::Message(m)) => assert_eq!(m.id, id),
        other => panic!("{other:?}"),
    }
    gk.stop().await;
}

async fn next_message(c: &mut Client) -> Event {
    loop {
        match c.next_event().await.unwrap() {
            Event::Receipt { .. } => {}
            other => return other,
        }
    }
}

/// Bob reinstalls (same device key, new Signal identity): Alice's next message cannot be
/// decrypted, Bob asks for a retry, Alice's client archives the session, and her next message
/// starts a fresh one from Bob's new bundle, reporting the identity change with the new safety
/// number.
#[tokio::test(flavor = "current_thread")]
async fn a_reinstall_is_detected_and_the_session_recovers_through_a_retry() {
    let gk = Running::start().await;
    let dirs = tempfile::tempdir().unwrap();
    let mut alice = gk.native(&dirs.path().join("alice"), "+15550601").await;
    let bob_dir = dirs.path().join("bob");
    let mut bob = gk.native(&bob_dir, "+15550602").await;
    alice.send_text("+15550602", "hello").await.unwrap();
    assert!(matches!(bob.next_event().await.unwrap(), Event::Message(_)));
    bob.send_text("+15550601", "hi").await.unwrap();
    loop {
        if let Event::Message(_) = alice.next_event().await.unwrap() {
            break;
        }
    }
    let old_number = alice.safety_number("+15550602").await.unwrap();

    // Reinstall: a new profile with the same device key, registered again.
    bob.disconnect().await.unwrap();
    drop(bob);
    let new_dir = dirs.path().join("bob-reinstalled");
    std::fs::create_dir_all(&new_dir).unwrap();
    std::fs::copy(bob_dir.join("device.key"), new_dir.join("device.key")).unwrap();
    let mut bob = gk.native(&new_dir, "+15550602").await;

    let lost = alice.send_text("+15550602", "lost in the reinstall").await.unwrap();
    loop {
        match bob.next_event().await.unwrap() {
            Event::Undecryptable { id, .. } => {
                assert_eq!(id, lost);
                break;
            }
            // Receipts queued for the device before the reinstall.
            Event::Receipt { .. } => {}
            other => panic!("bob got {other:?}"),
        }
    }
    loop {
        match alice.next_event().await.unwrap() {
            Event::Receipt { kind: ReceiptType::Retry, ids, .. } => {
                assert_eq!(ids, vec![lost.clone()]);
                break;
            }
            Event::Receipt { .. } => {}
            other => panic!("alice got {other:?}"),
        }
    }
    let again = alice.send_text("+15550602", "sent again").await.unwrap();
    match alice.next_event().await.unwrap() {
        Event::IdentityChanged { safety_number, .. } => assert_ne!(safety_number, old_number),
        other => panic!("alice got {other:?}"),
    }
    match next_message(&mut bob).await {
        Event::Message(m) => {
            assert_eq!(m.id, again);
            assert_eq!(m.body, Body::Text("sent again".into()));
        }
        other => panic!("bob got {other:?}"),
    }
    gk.stop().await;
}

//! The walking skeleton over real sockets: a gatekeeper in-process on loopback, clients through
//! the client library's connection layer.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use interop_client::{ConnectOptions, Connection};
use interop_noise::TrustAnchor;
use interop_server::gatekeeper::{Gatekeeper, GatekeeperConfig};
use interop_stanza::Node;

struct Running {
    addr: String,
    root: [u8; 32],
    key: [u8; 32],
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<interop_server::Result<()>>,
}

impl Running {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let gk = Gatekeeper::bind(&GatekeeperConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_owned(),
        })
        .await
        .unwrap();
        let addr = gk.local_addr().unwrap().to_string();
        let key = gk.public_key();
        let root = gk.root_key();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(gk.run(async move {
            let _ = stopped.await;
        }));
        Self { addr, root, key, _dir: dir, stop: Some(stop), task }
    }

    fn options(&self, account: &str) -> ConnectOptions {
        let mut o = ConnectOptions::new(&self.addr, account);
        o.trust_anchor = Some(TrustAnchor::new(self.root).unwrap());
        o
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

#[tokio::test]
async fn a_message_reaches_a_connected_recipient_and_the_sender_gets_an_ack() {
    let gk = Running::start().await;
    let mut bob = Connection::connect(&gk.options("bob")).await.unwrap();
    let mut alice = Connection::connect(&gk.options("alice")).await.unwrap();
    // Bob's session is registered once his handshake completed; prove it by a round trip:
    // a message from Bob to himself comes back.
    bob.send(&Node::new("message").with_attr("id", "p").with_attr("to", "bob")).await.unwrap();
    assert_eq!(next_with_tag(&mut bob, "message").await.attr("id"), Some("p"));

    let msg = Node::new("message")
        .with_attr("id", "m1")
        .with_attr("to", "bob")
        .with_bytes(b"ciphertext".to_vec());
    alice.send(&msg).await.unwrap();
    let ack = next_with_tag(&mut alice, "ack").await;
    assert_eq!(ack.attr("id"), Some("m1"));
    assert_eq!(ack.attr("error"), None);

    let got = next_with_tag(&mut bob, "message").await;
    assert_eq!(got.attr("from"), Some("alice"));
    assert_eq!(got.attr("id"), Some("m1"));
    assert_eq!(got.attr("to"), None, "the gatekeeper strips `to` and stamps `from`");
    assert_eq!(got.bytes(), Some(&b"ciphertext"[..]));
    gk.stop().await;
}

#[tokio::test]
async fn a_message_to_nobody_is_refused_with_a_reason() {
    let gk = Running::start().await;
    let mut alice = Connection::connect(&gk.options("alice")).await.unwrap();
    alice.send(&Node::new("message").with_attr("id", "x").with_attr("to", "carol")).await.unwrap();
    let ack = next_with_tag(&mut alice, "ack").await;
    assert_eq!(ack.attr("error"), Some("recipient-unavailable"));
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
    // The session works: a message to oneself comes back.
    resumed
        .send(&Node::new("message").with_attr("id", "r").with_attr("to", "alice"))
        .await
        .unwrap();
    assert_eq!(next_with_tag(&mut resumed, "message").await.attr("id"), Some("r"));

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

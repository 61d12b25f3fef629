//! An interop session is renewed with a fresh provider token before the token expires: the
//! client handle reconnects on its own a minute before expiry (here the provider issues
//! 62-second tokens, so the renewal comes about 2 s after connecting), and messages keep
//! flowing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use interop_client::{ClientHandle, ConnectionState, Event, Update};
use interop_enlist::ProviderEntry;
use interop_server::gatekeeper::{Gatekeeper, GatekeeperConfig};
use interop_server::provider::{Provider, ProviderConfig};
use interop_server::store::ProviderRecord;

async fn next(u: &mut interop_client::Events) -> Update {
    tokio::time::timeout(Duration::from_secs(30), u.next()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interop_session_is_renewed_before_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let push_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let provider = Provider::open(ProviderConfig {
        issuer: issuer.clone(),
        audience: "gatekeeper".into(),
        data_dir: dir.path().join("provider"),
        push_secret: push_secret.clone(),
        admin_token: String::new(),
        dev: true,
        wake_poll: Duration::from_secs(5),
        token_lifetime: Some(Duration::from_secs(62)),
    })
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let provider_stop = stop.clone();
    tokio::spawn(async move { provider.serve(listener, provider_stop.cancelled_owned()).await });

    let codes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let sink = Arc::clone(&codes);
    let mut config = GatekeeperConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("gk"));
    config.dev = true;
    config.code_sink = Some(Arc::new(move |identifier: &str, code: &str| {
        sink.lock().unwrap().insert(identifier.to_owned(), code.to_owned());
    }));
    let gk = Gatekeeper::bind(config).await.unwrap();
    gk.upsert_provider(&ProviderRecord {
        entry: ProviderEntry::new(
            &issuer,
            "example",
            &format!("{issuer}/v1/push"),
            &format!("{issuer}/media/"),
        ),
        push_secret,
    })
    .await
    .unwrap();
    let addr = gk.local_addr().unwrap().to_string();
    let root = gk.root_key();
    tokio::spawn(gk.run(stop.clone().cancelled_owned()));

    // Alice: a provider user, through the handle.
    let (alice, mut updates) = ClientHandle::spawn(&dir.path().join("alice")).unwrap();
    alice.set_server(&addr, root).await.unwrap();
    alice.provider_login(&issuer, "alice", "a long enough password", true).await.unwrap();
    alice.enlist().await.unwrap();
    alice.connect().await.unwrap();
    assert!(matches!(
        next(&mut updates).await,
        Update::Connection(ConnectionState::Connected { .. })
    ));
    // The renewal: a new connection, without a failure in between.
    match next(&mut updates).await {
        Update::Connection(ConnectionState::Connected { resumed }) => assert!(resumed),
        other => panic!("expected a renewed connection, got {other:?}"),
    }

    // Bob (native, opted in) reaches her on the renewed session.
    let mut bob = interop_client::Client::open(&dir.path().join("bob")).await.unwrap();
    bob.set_server(&addr, &root).await.unwrap();
    bob.register("+15550901").await.unwrap();
    let code = codes.lock().unwrap().get("+15550901").cloned().unwrap();
    bob.confirm("+15550901", &code).await.unwrap();
    bob.set_interop(true).await.unwrap();
    let id = bob.send_text("alice", "still there?").await.unwrap();
    loop {
        match next(&mut updates).await {
            Update::Event(Event::Message(m)) => {
                assert_eq!(m.id, id);
                break;
            }
            Update::Event(_) => {}
            other => panic!("{other:?}"),
        }
    }
    stop.cancel();
}

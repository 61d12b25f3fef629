//! `interop-client chat` under tmux (issue 10): the interactive chat is driven with `send-keys`
//! and judged by what `capture-pane` shows.
//!
//! - A reference provider and the gatekeeper run in-process on loopback (the provider is
//!   registered through the gatekeeper's admin API, as an operator would).
//! - Alice is a user of the provider, set up through the client library (login, enlist) and then
//!   handed to the real `interop-client` binary running `chat +15550001` in a detached tmux
//!   session, 120 × 30.
//! - Bob is a gatekeeper-native user with interop on, an in-process [`Client`].
//!
//! The screen must show the interop marker (Alice's account is an interop account), her sent
//! text with its ticks as they move (`✓✓` on Bob's delivery receipt, `✓✓ read` on his read
//! receipt), Bob's typing indicator and his reply; Bob must get Alice's typing notice, her text,
//! and a read receipt for his reply (the chat is open). Esc must end the program with status 0.
//!
//! Synchronisation is by polling the screen (every 100 ms, up to [`WAIT`]) and by waiting for
//! Bob's events (up to [`WAIT`]); nothing sleeps for a fixed time.
//!
//! Needs `tmux` (Debian package `tmux`): without it the test is skipped with a note, or fails
//! when `CI` or `INTEROP_REQUIRE_SERVICES` is set. Needs the `interop-client` binary built in
//! the same target directory (`cargo build -p interop-client`): the test fails when it is
//! missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interop_client::{Body, Client, Event};
use interop_server::gatekeeper::{Gatekeeper, GatekeeperConfig};
use interop_server::provider::{Provider, ProviderConfig};
use interop_stanza::stanza::ReceiptType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The longest any one wait may take (a screen to show something, an event to arrive).
const WAIT: Duration = Duration::from_secs(20);
/// How often the screen is captured while waiting.
const POLL: Duration = Duration::from_millis(100);
/// The integrator id the provider is registered under.
const INTEGRATOR: &str = "example";
/// The gatekeeper's admin token (in-process, loopback only).
const ADMIN_TOKEN: &str = "chat-tui-admin-token";
/// A Standard Webhooks secret: `whsec_` and the base64 of 32 fixed bytes.
const PUSH_SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const BOB: &str = "+15550001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_shows_the_interop_marker_ticks_typing_and_the_reply() {
    if !tmux_available() {
        return;
    }
    let cli = client_binary();

    let world = World::start().await;
    let dirs = tempfile::tempdir().unwrap();
    let mut bob = world.native(&dirs.path().join("bob"), BOB).await;
    bob.set_interop(true).await.unwrap();
    let alice_dir = dirs.path().join("alice");
    let alice = world.interop(&alice_dir, "alice").await;

    let tmux = Tmux::new();
    tmux.start(&format!(
        "'{}' --data-dir '{}' chat '{BOB}'; echo \"[exit $?]\"; sleep 600",
        cli.display(),
        alice_dir.display()
    ))
    .await;
    let screen = tmux.wait_for("the chat screen", |s| has_line(s, "chat with +15550001")).await;
    assert!(
        screen.contains("⚠ interop chat — messages leave example's network"),
        "the interop marker:\n{screen}"
    );
    assert!(screen.contains("end-to-end encrypted"), "{screen}");

    // Alice types and sends: Bob hears that she is typing, then gets the text.
    tmux.send_keys(&["-l", "hello bob"]).await;
    tmux.send_keys(&["Enter"]).await;
    let mut composing = false;
    let hello = loop {
        match next_event(&mut bob).await {
            Event::ChatState { state, .. } if state == "composing" => composing = true,
            Event::Message(m) => {
                assert_eq!(m.from_account, alice.account);
                assert_eq!(m.body, Body::Text("hello bob".into()));
                break m.id;
            }
            _ => {}
        }
    };
    assert!(composing, "Alice's typing notice came before her message");
    // Bob's client sent a delivery receipt on storing it: two ticks.
    tmux.wait_for("the delivered ticks", |s| has_line(s, "me: hello bob ✓✓")).await;

    // Bob reads it, types, and replies.
    bob.send_read(&alice.account, std::slice::from_ref(&hello)).await.unwrap();
    tmux.wait_for("the read ticks", |s| has_line(s, "me: hello bob ✓✓ read")).await;
    bob.send_typing(&alice.account_jid(), true).await.unwrap();
    tmux.wait_for("Bob's typing indicator", |s| has_line(s, "+15550001 is typing…")).await;
    let reply = bob.send_text(&alice.account_jid(), "hi alice").await.unwrap();
    let screen = tmux.wait_for("Bob's reply", |s| has_line(s, "+15550001: hi alice")).await;
    assert!(!screen.contains("is typing…"), "a message ends the typing indicator:\n{screen}");
    eprintln!("the chat screen:\n{screen}");

    // The chat is open, so Alice's client says she read the reply.
    loop {
        if let Event::Receipt { kind: ReceiptType::Read, ids, .. } = next_event(&mut bob).await {
            assert_eq!(ids, vec![reply.clone()]);
            break;
        }
    }

    // Esc leaves; the program ends well (the wrapper prints its status on the restored screen).
    tmux.send_keys(&["Escape"]).await;
    tmux.wait_for("the program to end", |s| has_line(s, "[exit 0]")).await;
}

/// Whether the screen has a line that is `want` (trailing blanks aside).
fn has_line(screen: &str, want: &str) -> bool {
    screen.lines().any(|l| l.trim_end() == want)
}

async fn next_event(client: &mut Client) -> Event {
    tokio::time::timeout(WAIT, client.next_event())
        .await
        .expect("an event in time")
        .expect("the connection stays up")
}

/// Whether tmux runs; `false` (skip, with a note) when it is missing and not required; panics
/// when it is missing and required (CI).
fn tmux_available() -> bool {
    let found =
        std::process::Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    let required = std::env::var_os("CI").is_some_and(|v| !v.is_empty())
        || std::env::var_os("INTEROP_REQUIRE_SERVICES").is_some_and(|v| v != "0");
    assert!(
        !required,
        "tmux is missing (install the Debian package: apt-get install -y tmux); CI or \
         INTEROP_REQUIRE_SERVICES requires this test to run"
    );
    eprintln!(
        "note: tmux is not installed: skipping the `chat` screen test (apt-get install tmux)"
    );
    false
}

/// The `interop-client` binary of this build: in the target directory's profile folder, next to
/// this test's `deps/` folder.
fn client_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let cli = profile_dir.join(format!("interop-client{}", std::env::consts::EXE_SUFFIX));
    assert!(
        cli.is_file(),
        "{} is missing: build it first (cargo build -p interop-client; `cargo xtask test` \
         builds the workspace's binaries before the tests)",
        cli.display()
    );
    cli
}

/// A tmux server of this test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        Self { socket: format!("interop-chat-tui-{}", std::process::id()) }
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("tmux");
        // Our own server and socket, no user configuration, UTF-8 whatever the locale.
        c.args(["-L", &self.socket, "-f", "/dev/null", "-u"])
            .env_remove("TMUX")
            .env("LANG", "C.UTF-8")
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().await.unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A detached 120 × 30 session running `shell_command`.
    async fn start(&self, shell_command: &str) {
        self.run(&["new-session", "-d", "-s", "chat", "-x", "120", "-y", "30", shell_command])
            .await;
    }

    async fn send_keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "chat"];
        args.extend_from_slice(keys);
        self.run(&args).await;
    }

    async fn capture(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "chat"]).await
    }

    /// Captures the screen until `done` holds; fails with the last screen after [`WAIT`].
    async fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.capture().await;
            if done(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} within {WAIT:?}; the screen:\n{screen}");
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .env_remove("TMUX")
            .output();
    }
}

/// The provider and the gatekeeper, in-process on loopback; stopped when dropped.
struct World {
    gk: String,
    root: [u8; 32],
    issuer: String,
    codes: Arc<Mutex<HashMap<String, String>>>,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// Alice's address (interop): her account and integrator.
struct InteropAddress {
    account: String,
    integrator: String,
}

impl InteropAddress {
    fn account_jid(&self) -> String {
        format!("{}.{}@s.interop", self.account, self.integrator)
    }
}

impl World {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (provider_stop, provider_stopped) = tokio::sync::oneshot::channel::<()>();
        let (gk_stop, gk_stopped) = tokio::sync::oneshot::channel::<()>();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let provider = Provider::open(ProviderConfig {
            issuer: issuer.clone(),
            audience: "gatekeeper".into(),
            data_dir: dir.path().join("provider"),
            push_secret: PUSH_SECRET.into(),
            admin_token: String::new(),
            dev: true,
            wake_poll: WAIT,
            token_lifetime: None,
        })
        .await
        .unwrap();
        tokio::spawn(async move {
            provider
                .serve(listener, async move {
                    let _ = provider_stopped.await;
                })
                .await
        });

        let codes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let sink = Arc::clone(&codes);
        let mut config =
            GatekeeperConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("gk"));
        config.dev = true;
        config.http_listen = Some("127.0.0.1:0".parse().unwrap());
        config.admin_token = ADMIN_TOKEN.into();
        config.code_sink = Some(Arc::new(move |identifier: &str, code: &str| {
            sink.lock().unwrap().insert(identifier.to_owned(), code.to_owned());
        }));
        let gk = Gatekeeper::bind(config).await.unwrap();
        let addr = gk.local_addr().unwrap().to_string();
        let http = gk.http_addr().unwrap().expect("an HTTP listener");
        let root = gk.root_key();
        tokio::spawn(gk.run(async move {
            let _ = gk_stopped.await;
        }));

        let body = serde_json::json!({
            "issuer": issuer,
            "push_endpoint": format!("{issuer}/v1/push"),
            "push_secret": PUSH_SECRET,
            "media_base_url": format!("{issuer}/media/"),
        });
        let status = http_put(
            &http.to_string(),
            &format!("/admin/providers/{INTEGRATOR}"),
            ADMIN_TOKEN,
            &body.to_string(),
        )
        .await;
        assert!((200..300).contains(&status), "registering the provider: HTTP {status}");

        Self { gk: addr, root, issuer, codes, _stop: vec![provider_stop, gk_stop], _dir: dir }
    }

    /// A native user registered through the client library, connected.
    async fn native(&self, dir: &Path, identifier: &str) -> Client {
        let mut c = Client::open(dir).await.unwrap();
        c.set_server(&self.gk, &self.root).await.unwrap();
        c.register(identifier).await.unwrap();
        let code = self.codes.lock().unwrap().get(identifier).cloned().expect("a code was sent");
        c.confirm(identifier, &code).await.unwrap();
        c
    }

    /// A provider user with a profile in `dir`, enlisted, then disconnected and closed (the
    /// `interop-client` process takes the profile over).
    async fn interop(&self, dir: &Path, username: &str) -> InteropAddress {
        let mut c = Client::open(dir).await.unwrap();
        c.set_server(&self.gk, &self.root).await.unwrap();
        c.provider_login(&self.issuer, username, "correct horse battery", true).await.unwrap();
        let (address, _) = c.enlist().await.unwrap();
        c.disconnect().await.unwrap();
        c.db().clone().close().await;
        InteropAddress {
            account: address.account,
            integrator: address.integrator.expect("an interop address has an integrator"),
        }
    }
}

/// `PUT path` with a bearer token and a JSON body over plain HTTP/1.1; the status code.
async fn http_put(addr: &str, path: &str, token: &str, body: &str) -> u16 {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut response))
        .await
        .expect("the admin API answers")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    status.unwrap_or_else(|| panic!("not an HTTP response: {response}"))
}

//! Crash durability (issue 8): the gatekeeper process is killed with SIGKILL again and again
//! while a native user sends, and restarted on the same data directory and port; every message
//! it acknowledged is delivered exactly once (after the client's de-duplication), in order.
//!
//! - The gatekeeper is `gatekeeper-under-test` (this crate's binary: the real
//!   [`interop_server::gatekeeper::Gatekeeper`] with its SQLite store, in a process of its own).
//! - Alice and Bob are native users, in-process [`Client`]s on this test's one thread. Alice
//!   sends messages with ids she chooses (`{n:032x}`, text `"<n> <attempt>"`); an id counts as
//!   acked only when `send_message` returned `Ok`. When a send fails (the server was killed),
//!   she reconnects once the server is back and, alternately, resends the same id (a new
//!   ciphertext, attempt + 1: the protocol's retry, answered `duplicate` when the first attempt
//!   had been stored) or abandons it (a sender that lost its outbox: the message may or may not
//!   have been stored). Bob receives all along (so his acks race with the kills too) and
//!   reconnects the same way.
//! - A supervisor thread kills the server once Alice has had at least [`ACKED_PER_LIFE`]
//!   messages acked on one connection to it, waits for it, restarts it and announces the new
//!   generation; after [`KILLS`] kills Alice sends [`ACKED_PER_LIFE`] more and an end marker.
//! - The checks: every acked id is in Bob's message store exactly once; every id there is acked
//!   or abandoned; Bob's client reported each message once and in sending order; no message was
//!   undecryptable; every process ended by SIGKILL.
//!
//! The text's attempt number shows which ciphertext the server kept: a message delivered with
//! an attempt before the acked one was stored although its ack was lost in the crash.
//!
//! Delivery is judged by Bob's message store, not by his events: when the connection breaks
//! right after Bob's client committed a message (its ack or delivery receipt cannot be sent),
//! `next_event` returns the error instead of the message, and the redelivery is de-duplicated
//! silently, so the message is stored but never reported (counted as "stored without an
//! event").

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use interop_client::{Body, Client, Event};
use interop_e2ee::proto;
use interop_e2ee::stanza::MessageType;
use tokio::sync::{mpsc as tokio_mpsc, watch};

/// How many times the gatekeeper is killed.
const KILLS: u32 = 10;
/// Messages acked by each gatekeeper process (on one connection of Alice's) before it is killed.
const ACKED_PER_LIFE: u64 = 100;
/// Bound on the whole send-and-receive phase (a hang bound, not synchronisation).
const HANG: Duration = Duration::from_secs(120);
/// Bound on one wait: a start-up line, a restart, a verification code.
const STEP: Duration = Duration::from_secs(30);
/// The end marker's number: Bob stops when it arrives (the server delivers in storage order,
/// so everything stored before it, redeliveries included, arrives before it).
const END: u128 = u128::MAX;
/// A bound on the number of messages, should the kills stop happening.
const MAX_MESSAGES: u128 = 20_000;

fn id_of(n: u128) -> String {
    format!("{n:032x}")
}

fn message(n: u128, attempt: u32) -> proto::Message {
    proto::Message {
        id: id_of(n),
        timestamp_ms: 1_700_000_000_000,
        content: Some(proto::message::Content::Text(proto::Text {
            body: format!("{n} {attempt}"),
        })),
        ..Default::default()
    }
}

// ---- the gatekeeper processes ----

/// The running gatekeeper process, shared by the supervisor and the guard.
#[derive(Default)]
struct Processes {
    current: Option<Child>,
    /// The test is over: start nothing more.
    stopped: bool,
}

/// Kills the current gatekeeper process when the test ends, also when it fails.
struct Guard(Arc<Mutex<Processes>>);

impl Drop for Guard {
    fn drop(&mut self) {
        let mut p = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        p.stopped = true;
        if let Some(mut child) = p.current.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A started gatekeeper.
struct Started {
    addr: String,
    root: [u8; 32],
    bind_retries: u32,
}

fn parse_key(hex: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().expect("a 32-byte key")
}

/// Starts `gatekeeper-under-test` and waits for its `listening` line. Verification codes it
/// prints later go to `codes`. `None` when the test is already over.
fn start(
    procs: &Mutex<Processes>,
    listen: &str,
    data_dir: &Path,
    codes: &tokio_mpsc::UnboundedSender<(String, String)>,
) -> Option<Started> {
    let (lines_tx, lines) = mpsc::channel::<String>();
    {
        let mut p = procs.lock().unwrap();
        if p.stopped {
            return None;
        }
        assert!(p.current.is_none(), "one gatekeeper at a time");
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatekeeper-under-test"))
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gatekeeper-under-test starts");
        let stdout = child.stdout.take().expect("piped stdout");
        p.current = Some(child);
        let codes = codes.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("verification-code ") {
                    if let Some((who, code)) = rest.split_once(' ') {
                        let _ = codes.send((who.to_owned(), code.to_owned()));
                    }
                } else {
                    // After start-up nobody listens; the server prints nothing else then.
                    let _ = lines_tx.send(line);
                }
            }
        });
    }
    let mut root = None;
    let mut bind_retries = 0;
    loop {
        let line = match lines.recv_timeout(STEP) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the gatekeeper printed no `listening` line within {STEP:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = procs.lock().unwrap().current.as_mut().map(Child::wait);
                panic!("the gatekeeper exited before listening: {status:?}")
            }
        };
        match line.split_once(' ') {
            Some(("root-key", hex)) => root = Some(parse_key(hex)),
            Some(("listening", addr)) => {
                let root = root.expect("`root-key` comes before `listening`");
                return Some(Started { addr: addr.to_owned(), root, bind_retries });
            }
            _ if line == "bind-retry" => bind_retries += 1,
            _ => {}
        }
    }
}

/// SIGKILLs the current gatekeeper and reaps it. `None` when the test is already over.
fn kill(procs: &Mutex<Processes>) -> Option<ExitStatus> {
    let mut child = procs.lock().unwrap().current.take()?;
    child.kill().expect("SIGKILL delivered"); // `Child::kill` is SIGKILL on Unix
    Some(child.wait().expect("the killed gatekeeper is reaped"))
}

/// Alice's progress, sent to the supervisor after every ack.
struct Progress {
    /// Alice's successful connections so far (0: the first).
    connection: u32,
    /// Messages acked on that connection.
    acked: u64,
    /// When the ack was seen.
    at: Instant,
}

/// One kill.
struct Kill {
    /// Messages acked on Alice's connection to the killed process when the kill was decided.
    acked_on_connection: u64,
    /// How long after that ack the process was killed.
    after_ack: Duration,
    status: ExitStatus,
    bind_retries: u32,
    restart: Duration,
}

/// Kills the gatekeeper whenever Alice has had [`ACKED_PER_LIFE`] messages acked on one
/// connection to it (once per connection), restarts it on the same data directory and port, and
/// publishes the number of restarts in `generation`.
///
/// Kill `k` (from 0) lands `k / KILLS` of one send cycle (the time between Alice's last two
/// acks) after her last ack, so that the kills hit every phase of a send: the device-list
/// lookups, the encryption, the message on its way, stored but not yet acked, and so on. That
/// pause chooses the crash point; nothing waits on it.
fn supervise(
    procs: &Mutex<Processes>,
    listen: &str,
    data_dir: &Path,
    codes: &tokio_mpsc::UnboundedSender<(String, String)>,
    progress: &mpsc::Receiver<Progress>,
    generation: &watch::Sender<u32>,
) -> Vec<Kill> {
    let mut kills = Vec::new();
    let mut killed_connection = None;
    let mut previous: Option<Progress> = None;
    while kills.len() < KILLS as usize {
        // Alice finished or stalled: the test reports the missing kills.
        let Ok(p) = progress.recv_timeout(STEP) else { return kills };
        let stale = killed_connection.is_some_and(|c| p.connection <= c);
        if p.acked < ACKED_PER_LIFE || stale {
            previous = Some(p);
            continue;
        }
        let cycle = previous
            .as_ref()
            .filter(|q| q.connection == p.connection)
            .map_or(Duration::ZERO, |q| p.at.saturating_duration_since(q.at));
        let after_ack = cycle.mul_f64(kills.len() as f64 / f64::from(KILLS));
        std::thread::sleep(after_ack.saturating_sub(p.at.elapsed()));
        #[allow(clippy::disallowed_methods)] // the test owns the clock
        let at = Instant::now();
        let Some(status) = kill(procs) else { return kills };
        let after_ack = at.saturating_duration_since(p.at);
        killed_connection = Some(p.connection);
        let Some(started) = start(procs, listen, data_dir, codes) else { return kills };
        assert_eq!(started.addr, listen, "restarted on the same port");
        kills.push(Kill {
            acked_on_connection: p.acked,
            after_ack,
            status,
            bind_retries: started.bind_retries,
            restart: at.elapsed(),
        });
        generation.send_replace(kills.len() as u32);
        previous = None;
    }
    kills
}

// ---- the clients ----

async fn native(
    dir: &Path,
    server: &Started,
    identifier: &str,
    codes: &mut tokio_mpsc::UnboundedReceiver<(String, String)>,
) -> Client {
    let mut c = Client::open(dir).await.unwrap();
    c.set_server(&server.addr, &server.root).await.unwrap();
    c.register(identifier).await.unwrap();
    let code = loop {
        let (who, code) = tokio::time::timeout(STEP, codes.recv())
            .await
            .expect("a verification code in time")
            .expect("the code channel is open");
        if who == identifier {
            break code;
        }
    };
    c.confirm(identifier, &code).await.unwrap();
    c
}

/// Connects again once the gatekeeper has been restarted since generation `seen` (the one in
/// which the failed connection was made); updates `seen`. `cause` is the error that lost the
/// connection, for the failure report.
async fn reconnect(
    who: &str,
    client: &mut Client,
    generation: &mut watch::Receiver<u32>,
    seen: &mut u32,
    connect_failures: &mut u32,
    cause: &str,
) {
    loop {
        let prev = *seen;
        let waited = tokio::time::timeout(STEP, generation.wait_for(|g| *g > prev)).await;
        *seen = match waited {
            Ok(Ok(g)) => *g,
            Ok(Err(_)) => panic!(
                "{who} lost the connection ({cause}) in generation {prev} and the supervisor has \
                 stopped (after the last kill, or it failed: see above)"
            ),
            Err(_) => panic!(
                "{who} lost the connection ({cause}) but the gatekeeper was not restarted \
                 within {STEP:?} (generation {prev})"
            ),
        };
        match client.connect().await {
            Ok(_) => return,
            Err(e) => {
                eprintln!("{who}: connect in generation {} failed: {e}", *seen);
                *connect_failures += 1;
            }
        }
    }
}

/// What Alice did.
#[derive(Default)]
struct Sent {
    /// Acked message numbers, with the attempt that was acked.
    acked: BTreeMap<u128, u32>,
    /// Numbers given up after a failed send.
    abandoned: BTreeSet<u128>,
    /// Sends that failed, by error.
    failures: BTreeMap<String, u32>,
    attempts: u64,
    resends: u32,
    reconnects: u32,
    connect_failures: u32,
    end_acked: bool,
}

impl Sent {
    fn failed(&self) -> u32 {
        self.failures.values().sum()
    }
}

/// Sends until the last restart has served [`ACKED_PER_LIFE`] acks, then the end marker.
async fn alice_sends(
    alice: &mut Client,
    to: &str,
    mut generation: watch::Receiver<u32>,
    progress: mpsc::Sender<Progress>,
    sent: &mut Sent,
) {
    let mut seen = 0;
    let mut connection = 0;
    let mut on_connection = 0;
    let mut n = 0;
    loop {
        let last = seen == KILLS && on_connection >= ACKED_PER_LIFE;
        n = if last { END } else { n + 1 };
        assert!(n <= MAX_MESSAGES || n == END, "{n} messages sent but only {seen} kills");
        let mut attempt = 1;
        loop {
            sent.attempts += 1;
            match alice.send_message(to, message(n, attempt), MessageType::Text).await {
                Ok(id) => {
                    assert_eq!(id, id_of(n));
                    on_connection += 1;
                    if n == END {
                        sent.end_acked = true;
                        return;
                    }
                    sent.acked.insert(n, attempt);
                    #[allow(clippy::disallowed_methods)] // the test owns the clock
                    let at = Instant::now();
                    let _ = progress.send(Progress { connection, acked: on_connection, at });
                    break;
                }
                Err(e) => {
                    let cause = e.to_string();
                    *sent.failures.entry(cause.clone()).or_default() += 1;
                    reconnect(
                        "alice",
                        alice,
                        &mut generation,
                        &mut seen,
                        &mut sent.connect_failures,
                        &cause,
                    )
                    .await;
                    sent.reconnects += 1;
                    connection += 1;
                    on_connection = 0;
                    // Every second failed message is given up (never the end marker).
                    if sent.failed().is_multiple_of(2) && n != END {
                        sent.abandoned.insert(n);
                        break;
                    }
                    sent.resends += 1;
                    attempt += 1;
                    assert!(attempt <= 5, "message {n}: {attempt} attempts");
                }
            }
        }
    }
}

/// What Bob's client reported.
#[derive(Default)]
struct Got {
    /// `Event::Message`s in arrival order: (number, attempt).
    messages: Vec<(u128, u32)>,
    undecryptable: Vec<String>,
    other_events: u32,
    errors: BTreeMap<String, u32>,
    reconnects: u32,
    connect_failures: u32,
}

/// Receives until the end marker is stored.
async fn bob_receives(
    bob: &mut Client,
    alice_account: &str,
    mut generation: watch::Receiver<u32>,
    got: &mut Got,
) {
    let mut seen = 0;
    loop {
        match bob.next_event().await {
            Ok(Event::Message(m)) => {
                assert_eq!(m.from_account, alice_account);
                let n = u128::from_str_radix(&m.id, 16).expect("an id of this test");
                let Body::Text(text) = &m.body else { panic!("not a text: {:?}", m.body) };
                let (number, attempt) = text.split_once(' ').expect("`<n> <attempt>`");
                assert_eq!(number, n.to_string(), "the text names the id");
                got.messages.push((n, attempt.parse().unwrap()));
                if n == END {
                    return;
                }
            }
            Ok(Event::Undecryptable { id, .. }) => got.undecryptable.push(id),
            Ok(_) => got.other_events += 1,
            Err(e) => {
                let cause = e.to_string();
                *got.errors.entry(cause.clone()).or_default() += 1;
                reconnect(
                    "bob",
                    bob,
                    &mut generation,
                    &mut seen,
                    &mut got.connect_failures,
                    &cause,
                )
                .await;
                got.reconnects += 1;
                // The end marker may have been stored with its event lost with the connection.
                if bob.db().has_message(alice_account, &id_of(END)).await.unwrap() {
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_acked_message_survives_repeated_sigkill_of_the_gatekeeper_exactly_once() {
    #[allow(clippy::disallowed_methods)] // the test owns the clock
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("gatekeeper");
    let procs = Arc::new(Mutex::new(Processes::default()));
    let _guard = Guard(Arc::clone(&procs));
    let (codes_tx, mut codes) = tokio_mpsc::unbounded_channel();

    let first = start(&procs, "127.0.0.1:0", &data_dir, &codes_tx).unwrap();
    let mut alice = native(&dir.path().join("alice"), &first, "+15550401", &mut codes).await;
    let mut bob = native(&dir.path().join("bob"), &first, "+15550402", &mut codes).await;
    let alice_account = alice.address().await.unwrap().unwrap().account;

    let (generation_tx, generation) = watch::channel(0u32);
    let (progress_tx, progress) = mpsc::channel();
    let supervisor = {
        let procs = Arc::clone(&procs);
        let (listen, data_dir) = (first.addr.clone(), data_dir.clone());
        std::thread::spawn(move || {
            supervise(&procs, &listen, &data_dir, &codes_tx, &progress, &generation_tx)
        })
    };

    let mut sent = Sent::default();
    let mut got = Got::default();
    let finished = tokio::time::timeout(HANG, async {
        tokio::join!(
            alice_sends(&mut alice, "+15550402", generation.clone(), progress_tx, &mut sent),
            bob_receives(&mut bob, &alice_account, generation.clone(), &mut got),
        )
    })
    .await;
    let kills = supervisor.join().expect("the supervisor thread did not panic");
    assert!(
        finished.is_ok(),
        "not finished within {HANG:?}: {} kills, {} acked, {} received, end acked: {}",
        kills.len(),
        sent.acked.len(),
        got.messages.len(),
        sent.end_acked,
    );

    // Bob's message store: what was delivered, after de-duplication by (sender, id).
    let history = bob.db().history(&alice_account, 1_000_000).await.unwrap();
    let stored: Vec<u128> = history
        .iter()
        .filter(|h| h.sender_account == alice_account)
        .map(|h| u128::from_str_radix(&h.message_id, 16).unwrap())
        .collect();
    let stored_set: BTreeSet<u128> = stored.iter().copied().collect();
    let reported: Vec<u128> = got.messages.iter().map(|(n, _)| *n).collect();
    let reported_set: BTreeSet<u128> = reported.iter().copied().collect();
    let mut acked: BTreeSet<u128> = sent.acked.keys().copied().collect();
    acked.insert(END);

    let missing: Vec<&u128> = acked.difference(&stored_set).collect();
    let unknown: Vec<&u128> =
        stored_set.iter().filter(|n| !acked.contains(n) && !sent.abandoned.contains(n)).collect();
    let abandoned_delivered = sent.abandoned.intersection(&stored_set).count();
    // Delivered with an earlier attempt than the acked one: the server stored the first
    // attempt, its ack was lost in the crash, and the resend was answered `duplicate`.
    let kept_earlier_attempt = got
        .messages
        .iter()
        .filter(|(n, attempt)| sent.acked.get(n).is_some_and(|acked| attempt < acked))
        .count();
    let stored_without_event: Vec<&u128> = stored_set.difference(&reported_set).collect();

    eprintln!("durability: {} kills (SIGKILL), {:?} total", kills.len(), began.elapsed());
    for (i, k) in kills.iter().enumerate() {
        eprintln!(
            "  kill {}: {} acked on Alice's connection to it, killed {:?} after the last ack, \
             exit {:?}, restart {:?}, bind retries {}",
            i + 1,
            k.acked_on_connection,
            k.after_ack,
            k.status,
            k.restart,
            k.bind_retries
        );
    }
    eprintln!(
        "  alice: {} messages acked (+ end marker), {} send attempts, {} failed sends {:?}, \
         {} resends with the same id, {} abandoned, {} reconnects, {} failed connects",
        sent.acked.len(),
        sent.attempts,
        sent.failed(),
        sent.failures,
        sent.resends,
        sent.abandoned.len(),
        sent.reconnects,
        sent.connect_failures,
    );
    eprintln!(
        "  bob: {} message events ({} distinct), {} messages stored ({} distinct), \
         {} reconnects {:?}, {} failed connects, {} undecryptable, {} other events",
        reported.len(),
        reported_set.len(),
        stored.len(),
        stored_set.len(),
        got.reconnects,
        got.errors,
        got.connect_failures,
        got.undecryptable.len(),
        got.other_events,
    );
    eprintln!(
        "  acked and delivered: {}/{}; resends answered `duplicate` (earlier attempt kept): {}; \
         abandoned and delivered anyway: {}/{}; stored without an event: {}",
        acked.len() - missing.len(),
        acked.len(),
        kept_earlier_attempt,
        abandoned_delivered,
        sent.abandoned.len(),
        stored_without_event.len(),
    );

    assert_eq!(kills.len(), KILLS as usize, "every kill happened");
    for (i, k) in kills.iter().enumerate() {
        assert_eq!(k.status.signal(), Some(9), "gatekeeper {} ended by SIGKILL", i + 1);
        assert!(k.acked_on_connection >= ACKED_PER_LIFE);
    }
    assert!(sent.end_acked);
    assert!(missing.is_empty(), "acked but never delivered: {missing:?}");
    assert!(unknown.is_empty(), "delivered but never sent: {unknown:?}");
    assert_eq!(stored.len(), stored_set.len(), "Bob stored a message twice");
    assert_eq!(reported.len(), reported_set.len(), "Bob's client reported a message twice");
    assert!(
        reported.windows(2).all(|w| w[0] < w[1]),
        "messages reported out of sending order: {reported:?}"
    );
    assert!(reported_set.is_subset(&stored_set), "reported but not stored");
    assert!(got.undecryptable.is_empty(), "undecryptable: {:?}", got.undecryptable);
    for (n, attempt) in &got.messages {
        if let Some(acked) = sent.acked.get(n) {
            assert!(attempt <= acked, "message {n}: attempt {attempt} delivered, {acked} acked");
        }
    }
}

//! [`ClientHandle`]: a [`Client`] run by an actor on a thread of its own, for applications on a
//! multi-threaded runtime. libsignal's futures are not `Send`, so the client itself stays on
//! one thread (a current-thread tokio runtime); the handle is `Send + Sync + Clone`, requests
//! are messages to the actor, and events arrive on an async channel.
//!
//! The actor races new requests against the connection with [`Client::readable`] (cancel-safe)
//! and handles what arrived with [`Client::pending_event`] to completion, so no stanza is lost
//! when a request interrupts the wait.
//!
//! After [`ClientHandle::connect`] the actor stays connected: when the connection breaks it
//! reports [`ConnectionState::Disconnected`] and reconnects with exponential back-off (1 s
//! doubling to 30 s, ±50% jitter), fetching a fresh provider token each time, until
//! [`ClientHandle::disconnect`]. An interop user's session is renewed with a fresh provider
//! token a minute before the current one expires (the gatekeeper would end it at expiry).

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::client::{Address, Client, Event};
use crate::{Error, Result};

type Reply<T> = oneshot::Sender<Result<T>>;

enum Request {
    SetServer(String, [u8; 32], Reply<()>),
    Register(String, Reply<u32>),
    Confirm(String, String, Reply<Address>),
    SetInterop(bool, Reply<()>),
    Login { url: String, username: String, password: String, create: bool, reply: Reply<()> },
    Enlist(Reply<(Address, bool)>),
    Connect(Reply<bool>),
    Disconnect(Reply<()>),
    SendText(String, String, Reply<String>),
    SendFile(String, PathBuf, String, Reply<String>),
    SendRead(String, Vec<String>, Reply<()>),
    Address(Reply<Option<Address>>),
}

/// A handle to a client actor. Cheap to clone; dropping every clone stops the actor.
#[derive(Clone, Debug)]
pub struct ClientHandle {
    tx: mpsc::UnboundedSender<Request>,
}

/// The connection as the actor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connected (`resumed`: with IK resumption).
    Connected {
        /// Whether the handshake resumed with the cached server key.
        resumed: bool,
    },
    /// The connection broke or could not be made; the actor tries again after `retry_in`.
    Disconnected {
        /// Why (no identifiers or content).
        reason: String,
        /// When the next attempt is made.
        retry_in: Duration,
    },
}

/// What the actor reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Something happened on the connection.
    Event(Event),
    /// The connection state changed.
    Connection(ConnectionState),
}

/// The updates of a [`ClientHandle`], in order.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Update>,
}

impl Events {
    /// The next update; `None` once the actor stopped.
    pub async fn next(&mut self) -> Option<Update> {
        self.rx.recv().await
    }

    /// The next [`Event`], skipping connection-state updates; `None` once the actor stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await? {
                Update::Event(e) => return Some(e),
                Update::Connection(_) => {}
            }
        }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long before its provider token expires a session is renewed.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `base` with ±50% jitter.
fn jittered(base: Duration) -> Duration {
    let factor = 0.5 + rand::random::<f64>();
    base.mul_f64(factor)
}

/// Events buffered for a slow consumer before the actor stops reading the connection (the
/// gatekeeper keeps what is not acked, so nothing is lost, only delayed).
const EVENT_BUFFER: usize = 1024;

impl ClientHandle {
    /// Opens the profile in `dir` on a new thread and returns the handle and its events.
    pub fn spawn(dir: &Path) -> Result<(Self, Events)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel::<Update>(EVENT_BUFFER);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let dir = dir.to_owned();
        thread::Builder::new().name("interop-client".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::Io(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let client = match Client::open(&dir).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                actor(client, rx, events_tx).await;
            });
        })?;
        ready_rx
            .recv()
            .map_err(|_| Error::Local("the client thread stopped during start-up".into()))??;
        Ok((Self { tx }, Events { rx: events_rx }))
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| Error::Local("the client actor has stopped".into()))?;
        answer.await.map_err(|_| Error::Local("the client actor has stopped".into()))?
    }

    /// See [`Client::set_server`].
    pub async fn set_server(&self, server: &str, root_key: [u8; 32]) -> Result<()> {
        let server = server.to_owned();
        self.ask(|r| Request::SetServer(server, root_key, r)).await
    }

    /// See [`Client::register`].
    pub async fn register(&self, identifier: &str) -> Result<u32> {
        let identifier = identifier.to_owned();
        self.ask(|r| Request::Register(identifier, r)).await
    }

    /// See [`Client::confirm`].
    pub async fn confirm(&self, identifier: &str, code: &str) -> Result<Address> {
        let (identifier, code) = (identifier.to_owned(), code.to_owned());
        self.ask(|r| Request::Confirm(identifier, code, r)).await
    }

    /// See [`Client::set_interop`].
    pub async fn set_interop(&self, on: bool) -> Result<()> {
        self.ask(|r| Request::SetInterop(on, r)).await
    }

    /// See [`Client::provider_login`].
    pub async fn provider_login(
        &self,
        url: &str,
        username: &str,
        password: &str,
        create: bool,
    ) -> Result<()> {
        let (url, username, password) = (url.to_owned(), username.to_owned(), password.to_owned());
        self.ask(|reply| Request::Login { url, username, password, create, reply }).await
    }

    /// See [`Client::enlist`].
    pub async fn enlist(&self) -> Result<(Address, bool)> {
        self.ask(Request::Enlist).await
    }

    /// Connects; events start flowing. See [`Client::connect`].
    pub async fn connect(&self) -> Result<bool> {
        self.ask(Request::Connect).await
    }

    /// Closes the connection.
    pub async fn disconnect(&self) -> Result<()> {
        self.ask(Request::Disconnect).await
    }

    /// See [`Client::send_text`].
    pub async fn send_text(&self, to: &str, text: &str) -> Result<String> {
        let (to, text) = (to.to_owned(), text.to_owned());
        self.ask(|r| Request::SendText(to, text, r)).await
    }

    /// See [`Client::send_file`] (no progress reports through the handle).
    pub async fn send_file(&self, to: &str, path: &Path, caption: &str) -> Result<String> {
        let (to, path, caption) = (to.to_owned(), path.to_owned(), caption.to_owned());
        self.ask(|r| Request::SendFile(to, path, caption, r)).await
    }

    /// See [`Client::send_read`].
    pub async fn send_read(&self, to_account: &str, ids: Vec<String>) -> Result<()> {
        let to = to_account.to_owned();
        self.ask(|r| Request::SendRead(to, ids, r)).await
    }

    /// See [`Client::address`].
    pub async fn address(&self) -> Result<Option<Address>> {
        self.ask(Request::Address).await
    }
}

/// The actor's connection intent and retry schedule.
struct Link {
    /// Whether the user asked to be connected (reconnect after failures).
    wanted: bool,
    backoff: Duration,
    retry_at: Option<tokio::time::Instant>,
}

impl Link {
    /// Records a failure and schedules the next attempt; returns the state to report.
    fn failed(&mut self, e: &Error) -> ConnectionState {
        let wait = jittered(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.retry_at = Some(tokio::time::Instant::now() + wait);
        ConnectionState::Disconnected { reason: e.to_string(), retry_in: wait }
    }

    fn connected(&mut self) {
        self.backoff = FIRST_BACKOFF;
        self.retry_at = None;
    }

    /// Connects; the state to report (and, on failure, the next attempt scheduled).
    async fn connect(&mut self, client: &mut Client) -> ConnectionState {
        match client.connect().await {
            Ok(resumed) => {
                self.connected();
                ConnectionState::Connected { resumed }
            }
            Err(e) => self.failed(&e),
        }
    }
}

async fn actor(
    mut client: Client,
    mut requests: mpsc::UnboundedReceiver<Request>,
    updates: mpsc::Sender<Update>,
) {
    let mut link = Link { wanted: false, backoff: FIRST_BACKOFF, retry_at: None };
    loop {
        let connected = client.is_connected();
        let retry_at = link.retry_at.filter(|_| link.wanted && !connected);
        let renew_at = client
            .token_expires()
            .filter(|_| connected)
            .map(|exp| exp.checked_sub(TOKEN_MARGIN).unwrap_or(exp));
        tokio::select! {
            () = async {
                match renew_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                // Renew before the token expires: a new connection with a fresh token.
                let _ = client.disconnect().await;
                let state = link.connect(&mut client).await;
                if updates.send(Update::Connection(state)).await.is_err() {
                    break;
                }
            }
            request = requests.recv() => {
                let Some(request) = request else { break };
                if let Some(state) = serve(&mut client, &mut link, request).await
                    && updates.send(Update::Connection(state)).await.is_err()
                {
                    break;
                }
            }
            () = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let state = link.connect(&mut client).await;
                if updates.send(Update::Connection(state)).await.is_err() {
                    break;
                }
            }
            arrived = client.readable(), if connected => {
                let mut failure = arrived.err();
                if failure.is_none() {
                    // Handle everything that arrived, to completion (not raced).
                    loop {
                        match client.pending_event().await {
                            Ok(Some(event)) => {
                                if updates.send(Update::Event(event)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                }
                if let Some(e) = failure {
                    let _ = client.disconnect().await;
                    let state = if link.wanted {
                        link.failed(&e)
                    } else {
                        ConnectionState::Disconnected { reason: e.to_string(), retry_in: Duration::MAX }
                    };
                    if updates.send(Update::Connection(state)).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    let _ = client.disconnect().await;
}

/// Serves one request; returns a connection state to report, if it changed one.
async fn serve(client: &mut Client, link: &mut Link, request: Request) -> Option<ConnectionState> {
    match request {
        Request::SetServer(server, root, reply) => {
            let _ = reply.send(client.set_server(&server, &root).await);
        }
        Request::Register(id, reply) => {
            let _ = reply.send(client.register(&id).await);
        }
        Request::Confirm(id, code, reply) => {
            let _ = reply.send(client.confirm(&id, &code).await);
        }
        Request::SetInterop(on, reply) => {
            let _ = reply.send(client.set_interop(on).await);
        }
        Request::Login { url, username, password, create, reply } => {
            let _ = reply.send(client.provider_login(&url, &username, &password, create).await);
        }
        Request::Enlist(reply) => {
            let _ = reply.send(client.enlist().await);
        }
        Request::Connect(reply) => {
            link.wanted = true;
            let result = client.connect().await;
            let state = match &result {
                Ok(resumed) => {
                    link.connected();
                    ConnectionState::Connected { resumed: *resumed }
                }
                Err(e) => link.failed(e),
            };
            let _ = reply.send(result);
            return Some(state);
        }
        Request::Disconnect(reply) => {
            link.wanted = false;
            link.retry_at = None;
            let _ = reply.send(client.disconnect().await);
        }
        Request::SendText(to, text, reply) => {
            let _ = reply.send(client.send_text(&to, &text).await);
        }
        Request::SendFile(to, path, caption, reply) => {
            let mut ignore = |_: u64, _: u64| {};
            let _ = reply.send(client.send_file(&to, &path, &caption, &mut ignore).await);
        }
        Request::SendRead(to, ids, reply) => {
            let _ = reply.send(client.send_read(&to, &ids).await);
        }
        Request::Address(reply) => {
            let _ = reply.send(client.address().await);
        }
    }
    None
}

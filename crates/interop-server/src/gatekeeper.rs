//! The gatekeeper's chat service: accepts Noise connections and routes message stanzas.
//!
//! Walking skeleton: identities are taken from the handshake payload as given, routing is to
//! live connections only (no offline queue yet), one connection per account.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use interop_noise::ServerConfig;
use interop_noise::tokio::{Accepted, NoiseStream};
use interop_stanza::{Node, binary};
use rand::SeedableRng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::{Error, Result, keyfile};

/// How many stanzas may wait for a slow connection before the router drops it.
const OUTBOX: usize = 256;

/// How long a client may take to complete its handshake (slow or silent peers are dropped).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Gatekeeper settings.
#[derive(Debug, Clone)]
pub struct GatekeeperConfig {
    /// Address of the chat listener (port 0: the OS picks).
    pub listen: SocketAddr,
    /// Where keys and state live.
    pub data_dir: PathBuf,
}

/// A bound, not yet running gatekeeper.
#[derive(Debug)]
pub struct Gatekeeper {
    listener: TcpListener,
    noise: Arc<ServerConfig>,
    identity: keyfile::ServerIdentity,
    router: Arc<Router>,
}

impl Gatekeeper {
    /// Loads (or creates) the server key, the root and intermediate keys and the certificate
    /// chain in the data directory (see [`keyfile`]) and binds the listener.
    pub async fn bind(config: &GatekeeperConfig) -> Result<Self> {
        let identity = keyfile::load_or_create_identity(&config.data_dir, now_ms() / 1000)?;
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            noise: Arc::new(ServerConfig::new(identity.keys.clone(), identity.chain.clone())),
            identity,
            router: Arc::default(),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The server's public static key (clients learn it in the handshake and cache it).
    pub fn public_key(&self) -> [u8; 32] {
        self.identity.keys.public
    }

    /// The root public key clients pin (`--root-key`).
    pub fn root_key(&self) -> [u8; 32] {
        self.identity.root_public
    }

    /// Accepts connections until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => {
                    let (socket, _peer) = accepted?;
                    let noise = Arc::clone(&self.noise);
                    let router = Arc::clone(&self.router);
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(socket, &noise, &router).await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
            }
        }
    }
}

/// Which live connection holds which account.
#[derive(Debug, Default)]
struct Router {
    live: Mutex<HashMap<String, (u64, mpsc::Sender<Node>)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Router {
    fn register(&self, account: &str, tx: mpsc::Sender<Node>) -> u64 {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut live = self.live.lock().expect("router lock is never poisoned");
        live.insert(account.to_owned(), (id, tx));
        id
    }

    fn unregister(&self, account: &str, id: u64) {
        let mut live = self.live.lock().expect("router lock is never poisoned");
        if live.get(account).is_some_and(|(i, _)| *i == id) {
            live.remove(account);
        }
    }

    /// Hands a stanza to the recipient's connection; false if it is not connected.
    fn route(&self, to: &str, node: Node) -> bool {
        let tx = {
            let live = self.live.lock().expect("router lock is never poisoned");
            live.get(to).map(|(_, tx)| tx.clone())
        };
        tx.is_some_and(|tx| tx.try_send(node).is_ok())
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn serve_connection(socket: TcpStream, noise: &ServerConfig, router: &Router) -> Result<()> {
    socket.set_nodelay(true)?;
    let mut rng = rand::rngs::StdRng::from_os_rng();
    // Returns only once the client is authenticated (for IK: after its key confirmation, so a
    // replayed first message creates no session).
    let accept = interop_noise::tokio::accept(socket, noise, now_ms(), &mut rng);
    let Accepted { mut stream, payload, .. } =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await.map_err(|_| {
            Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))
        })??;
    let account = payload.account_id;
    let (tx, mut rx) = mpsc::channel(OUTBOX);
    let id = router.register(&account, tx);
    tracing::debug!("session started");
    let result = session(&mut stream, &account, router, &mut rx).await;
    router.unregister(&account, id);
    result
}

async fn session(
    stream: &mut NoiseStream<TcpStream>,
    account: &str,
    router: &Router,
    rx: &mut mpsc::Receiver<Node>,
) -> Result<()> {
    loop {
        tokio::select! {
            incoming = stream.recv() => {
                let Some(bytes) = incoming? else { return Ok(()) };
                let node = binary::decode(&bytes)?;
                if let Some(reply) = handle_stanza(node, account, router) {
                    stream.send(&binary::encode(&reply)?).await?;
                }
            }
            Some(out) = rx.recv() => {
                stream.send(&binary::encode(&out)?).await?;
            }
        }
    }
}

/// Handles one stanza from `account`; returns the reply to send back, if any.
fn handle_stanza(mut node: Node, account: &str, router: &Router) -> Option<Node> {
    match node.tag.as_str() {
        "message" => {
            let id = node.attr("id").unwrap_or_default().to_owned();
            let Some(to) = node.attr("to").map(str::to_owned) else {
                return Some(ack(&id).with_attr("error", "bad-request"));
            };
            node.attrs.retain(|(k, _)| k != "to");
            node.set_attr("from", account);
            if router.route(&to, node) {
                Some(ack(&id))
            } else {
                Some(ack(&id).with_attr("error", "recipient-unavailable"))
            }
        }
        _ => Some(Node::new("stream:error").with_attr("condition", "unsupported-stanza-type")),
    }
}

fn ack(id: &str) -> Node {
    Node::new("ack").with_attr("class", "message").with_attr("id", id)
}

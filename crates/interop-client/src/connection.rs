//! The connection layer: TCP + Noise handshake + stanzas.

use std::time::{SystemTime, UNIX_EPOCH};

use interop_noise::proto::{ClientPayload, Product, ServerPayload};
use interop_noise::tokio::{Connected, NoiseStream};
use interop_noise::{ClientConfig, StaticKeypair, TrustAnchor};
use interop_stanza::{Node, binary};
use rand::SeedableRng;
use tokio::net::TcpStream;

use crate::{Error, Result};

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` of the gatekeeper's chat listener.
    pub server: String,
    /// The gatekeeper's root key (and revoked serials). Required: without it `connect` refuses,
    /// since the server could not be authenticated.
    pub trust_anchor: Option<TrustAnchor>,
    /// The server static key learned on an earlier connection ([`Connection::server_key`]):
    /// when set, the handshake is IK (falling back to XX if the server's key changed).
    pub cached_server_key: Option<[u8; 32]>,
    /// This device's Noise static key.
    pub device_key: StaticKeypair,
    /// Account identifier.
    pub account_id: String,
    /// Device number within the account.
    pub device_id: u32,
    /// Product (native or interop).
    pub product: Product,
    /// Free-form client name and version.
    pub user_agent: String,
    /// Interop users: the provider-signed token bound to `device_key`.
    pub provider_jwt: Option<String>,
    /// Whether the user sends read receipts.
    pub read_receipts: bool,
    /// The largest stanza this client sends or accepts (default: the protocol's 1 MiB).
    pub max_stanza: Option<usize>,
}

impl ConnectOptions {
    /// Options for a native account with a fresh device key.
    pub fn new(server: impl Into<String>, account_id: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            trust_anchor: None,
            cached_server_key: None,
            device_key: StaticKeypair::generate(&mut rand::rng()),
            account_id: account_id.into(),
            device_id: 1,
            product: Product::Native,
            user_agent: concat!("interop-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            provider_jwt: None,
            read_receipts: true,
            max_stanza: None,
        }
    }
}

/// An authenticated connection to the gatekeeper.
#[derive(Debug)]
pub struct Connection {
    stream: NoiseStream<TcpStream>,
    connected: Connected,
}

impl Connection {
    /// Connects and runs the handshake; the server must prove a certificate chain under
    /// `opts.trust_anchor`.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self> {
        let trust = opts.trust_anchor.clone().ok_or(Error::NoTrustAnchor)?;
        let socket = TcpStream::connect(&opts.server)
            .await
            .map_err(|source| Error::Unreachable { addr: opts.server.clone(), source })?;
        socket.set_nodelay(true)?;
        let mut config = ClientConfig::new(opts.device_key.clone(), trust);
        if let Some(max) = opts.max_stanza {
            config = config.max_stanza(max);
        }
        let payload = ClientPayload {
            product: opts.product as i32,
            account_id: opts.account_id.clone(),
            device_id: opts.device_id,
            user_agent: opts.user_agent.clone(),
            provider_jwt: opts.provider_jwt.clone().unwrap_or_default(),
            read_receipts: opts.read_receipts,
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let (stream, connected) = interop_noise::tokio::connect(
            socket,
            &config,
            &payload,
            opts.cached_server_key.as_ref(),
            now,
            &mut rng,
        )
        .await?;
        Ok(Self { stream, connected })
    }

    /// What the server said about itself in the handshake.
    pub fn server_payload(&self) -> &ServerPayload {
        &self.connected.server
    }

    /// The server's static key: cache it per server and pass it as
    /// [`ConnectOptions::cached_server_key`] next time.
    pub fn server_key(&self) -> [u8; 32] {
        self.connected.server_key
    }

    /// Whether this connection resumed with IK (one handshake message less).
    pub fn resumed(&self) -> bool {
        self.connected.resumed
    }

    /// Sends one stanza.
    pub async fn send(&mut self, node: &Node) -> Result<()> {
        self.stream.send(&binary::encode(node)?).await?;
        Ok(())
    }

    /// Receives the next stanza; `Ok(None)` when the server closed the connection.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Node>> {
        match self.stream.recv().await? {
            Some(bytes) => Ok(Some(binary::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Closes the connection.
    pub async fn close(mut self) -> Result<()> {
        self.stream.shutdown().await?;
        Ok(())
    }
}

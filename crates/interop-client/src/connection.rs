//! The connection layer: TCP + Noise handshake + stanzas.

use interop_noise::proto::{ClientPayload, Product, ServerPayload};
use interop_noise::tokio::NoiseStream;
use interop_noise::{ClientConfig, StaticKeypair};
use interop_stanza::{Node, binary};
use tokio::net::TcpStream;

use crate::{Error, Result};

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` of the gatekeeper's chat listener.
    pub server: String,
    /// The gatekeeper's static key; when set, any other server is refused.
    pub server_key: Option<[u8; 32]>,
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
}

impl ConnectOptions {
    /// Options for a native account with a fresh device key.
    pub fn new(server: impl Into<String>, account_id: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            server_key: None,
            device_key: StaticKeypair::generate(),
            account_id: account_id.into(),
            device_id: 1,
            product: Product::Native,
            user_agent: concat!("interop-client/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// An authenticated connection to the gatekeeper.
#[derive(Debug)]
pub struct Connection {
    stream: NoiseStream<TcpStream>,
    server: ServerPayload,
}

impl Connection {
    /// Connects and runs the handshake.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self> {
        let socket = TcpStream::connect(&opts.server)
            .await
            .map_err(|source| Error::Unreachable { addr: opts.server.clone(), source })?;
        socket.set_nodelay(true)?;
        let mut config = ClientConfig::new(opts.device_key.clone());
        if let Some(key) = opts.server_key {
            config = config.expect_server_key(key);
        }
        let payload = ClientPayload {
            product: opts.product as i32,
            account_id: opts.account_id.clone(),
            device_id: opts.device_id,
            user_agent: opts.user_agent.clone(),
            ..Default::default()
        };
        let (stream, server) = interop_noise::tokio::connect(socket, &config, &payload).await?;
        Ok(Self { stream, server })
    }

    /// What the server said about itself in the handshake.
    pub fn server_payload(&self) -> &ServerPayload {
        &self.server
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

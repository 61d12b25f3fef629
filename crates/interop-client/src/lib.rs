//! The interop client library.
//!
//! [`connection`] is the connection layer every tool builds on (the CLI, the gatekeeper's
//! integration tests, the load generator): connect over TCP, run the Noise handshake, then send
//! and receive stanzas.
//!
//! # What this crate does not do (yet)
//! - End-to-end encryption, storage and media arrive with the full client.

#![forbid(unsafe_code)]

pub mod client;
pub mod connection;
pub mod handle;
pub mod keyfile;
pub mod store;
pub mod tui;

pub use client::{Address, Body, Client, Event, Received, Role};
pub use connection::{ConnectOptions, Connection};
pub use handle::{ClientHandle, ConnectionState, Events, Update};

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server could not be reached.
    #[error("cannot reach the server at {addr}: {source}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No trust anchor (root key) is configured, so the server could not be authenticated.
    #[error(
        "no trust anchor configured: pass the gatekeeper's root key (--root-key or INTEROP_ROOT_KEY)"
    )]
    NoTrustAnchor,
    /// The transport failed (handshake refused, connection broken, bad frame).
    #[error("transport: {0}")]
    Transport(#[from] interop_noise::Error),
    /// The server sent a stanza that does not decode.
    #[error("stanza: {0}")]
    Stanza(#[from] interop_stanza::Error),
    /// A local file or setting is wrong.
    #[error("{0}")]
    Local(String),
    /// The profile database failed.
    #[error("{0}")]
    Store(#[from] store::StoreError),
    /// End-to-end encryption failed.
    #[error("end-to-end encryption: {0}")]
    E2ee(String),
    /// The provider refused or could not be reached.
    #[error("{0}")]
    Provider(String),
    /// A media upload or download failed (the reason names no file or address).
    #[error("media: {0}")]
    Media(String),
    /// Not connected to the gatekeeper.
    #[error("not connected to the gatekeeper")]
    NotConnected,
    /// This device is not enlisted (registered) yet.
    #[error("this device is not enlisted yet: run `enlist` (or `register`) first")]
    NotEnlisted,
    /// The gatekeeper closed the connection with a stream error.
    #[error("the gatekeeper closed the connection: {condition}{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Closed {
        /// The stream error condition.
        condition: String,
        /// Its text, if any.
        text: Option<String>,
    },
    /// The gatekeeper refused a request; the code says why (e.g. `recipient-unavailable`:
    /// the contact does not exist, has not opted in to interop, or blocks you).
    #[error("refused by the gatekeeper: {0}")]
    Refused(String),
    /// No user with this identifier can be reached (unknown, or not opted in to interop).
    #[error("no reachable user with this identifier (unknown, or not opted in to interop)")]
    UnknownContact(String),
    /// The gatekeeper answered something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("the gatekeeper did not answer in time")]
    Timeout,
    /// The operating system refused an operation.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn store(e: store::StoreError) -> Self {
        Self::Store(e)
    }
}

/// Result alias of the client library.
pub type Result<T> = std::result::Result<T, Error>;

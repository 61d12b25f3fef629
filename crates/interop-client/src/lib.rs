//! The interop client library.
//!
//! [`connection`] is the connection layer every tool builds on (the CLI, the gatekeeper's
//! integration tests, the load generator): connect over TCP, run the Noise handshake, then send
//! and receive stanzas.
//!
//! # What this crate does not do (yet)
//! - End-to-end encryption, storage and media arrive with the full client.

#![forbid(unsafe_code)]

pub mod connection;
pub mod keyfile;
pub mod store;

pub use connection::{ConnectOptions, Connection};

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
    /// A local file is wrong.
    #[error("{0}")]
    Local(String),
    /// The operating system refused an operation.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of the client library.
pub type Result<T> = std::result::Result<T, Error>;

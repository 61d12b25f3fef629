//! The reference gatekeeper and third-party provider servers of interop messaging.
//!
//! This crate owns all I/O of the server side: sockets, storage, clocks, tasks. The protocol
//! logic lives in the sans-IO crates (interop-noise, interop-stanza, interop-enlist,
//! interop-media). It never links interop-e2ee or libsignal: the gatekeeper routes ciphertext
//! it cannot read.
//!
//! # What this crate does not do
//! - No end-to-end cryptography (by design, see ARCHITECTURE.md).

#![forbid(unsafe_code)]

pub mod address;
pub mod admin;
pub mod chat;
pub mod check;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod gatekeeper;
pub mod iq;
pub mod keyfile;
pub mod media;
pub mod outbound;
pub mod provider;
pub mod push;
pub mod ratelimit;
pub mod store;

/// Errors of the server library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A client broke the transport protocol.
    #[error("transport: {0}")]
    Transport(#[from] interop_noise::Error),
    /// A client sent a stanza that does not decode.
    #[error("stanza: {0}")]
    Stanza(#[from] interop_stanza::Error),
    /// Configuration or a file in the data directory is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The request is not allowed (the reason is a fixed phrase, never user data).
    #[error("refused: {0}")]
    Refused(&'static str),
    /// A media upload or fetch broke a media rule.
    #[error("media: {0}")]
    Media(#[from] interop_media::Error),
    /// The database failed or refused an operation (no message content in the text).
    #[error("storage: {0}")]
    Storage(String),
    /// The operating system refused an operation.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of the server library.
pub type Result<T> = std::result::Result<T, Error>;

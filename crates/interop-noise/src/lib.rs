//! Noise transport of the interop chat protocol, sans-IO.
//!
//! Every client–server connection starts with a fixed [`ConnectionHeader`] (also the Noise
//! prologue), then a Noise handshake carried in length-prefixed frames, then encrypted
//! transport frames that each carry one stanza.
//!
//! ```text
//!   client                                         server
//!   ClientHandshake::start ── header + hello ──▶  ServerHandshake::handle_header
//!                                                 ExpectClientHello::handle_client_hello
//!   ExpectServerHello::handle_server_hello ◀─ hello ──
//!                          ── finish ──▶          ExpectClientFinish::handle_client_finish
//!   Transport  ◀══════ encrypted frames ══════▶   Transport
//! ```
//!
//! The handshake is a typestate: each step consumes the previous state, so a transport can only
//! exist after a completed handshake. Bytes in, bytes out: this crate opens no sockets, reads no
//! clock and spawns nothing. The optional `tokio` feature adds [`tokio::NoiseStream`], an adapter
//! over any `AsyncRead + AsyncWrite`.
//!
//! # Example
//! ```
//! use interop_noise::{ClientConfig, ClientHandshake, ServerConfig, ServerHandshake, StaticKeypair};
//! use interop_noise::proto::{ClientPayload, ServerPayload};
//!
//! let server_keys = StaticKeypair::generate();
//! let client_keys = StaticKeypair::generate();
//! let server = ServerConfig::new(server_keys.clone());
//! let client = ClientConfig::new(client_keys).expect_server_key(server_keys.public);
//!
//! let payload = ClientPayload { account_id: "alice".into(), device_id: 1, ..Default::default() };
//! let (expect_hello, first_bytes) = ClientHandshake::start(&client, &payload).unwrap();
//!
//! // The server reads the header, then the first frame.
//! let (header, frames) = first_bytes.split_at(interop_noise::ConnectionHeader::LEN);
//! let expect_client_hello = ServerHandshake::handle_header(&server, header).unwrap();
//! let hello = interop_noise::frame::decode_one(frames).unwrap();
//! let sp = ServerPayload { server_time_ms: 1 };
//! let (expect_finish, reply) = expect_client_hello.handle_client_hello(hello, &sp).unwrap();
//!
//! let reply = interop_noise::frame::decode_one(&reply).unwrap();
//! let (mut client_tx, server_payload, finish) = expect_hello.handle_server_hello(reply).unwrap();
//! assert_eq!(server_payload.server_time_ms, 1);
//! let finish = interop_noise::frame::decode_one(&finish).unwrap();
//! let done = expect_finish.handle_client_finish(finish).unwrap();
//! assert_eq!(done.payload.account_id, "alice");
//! let mut server_tx = done.transport;
//!
//! let frame = client_tx.encrypt_frame(b"<message/>").unwrap();
//! let body = interop_noise::frame::decode_one(&frame).unwrap();
//! assert_eq!(server_tx.decrypt(body).unwrap(), b"<message/>");
//! ```
//!
//! # What this crate does not do
//! - No I/O, timers or tasks (the tokio adapter is optional and thin).
//! - No stanza parsing: transport frames carry opaque bytes.
//! - No authorisation: it reports who the peer claims to be and which key it proved it holds;
//!   deciding whether that identity may connect is the server's job.

#![forbid(unsafe_code)]

pub mod frame;
mod handshake;
mod header;
mod keys;
mod transport;

#[cfg(feature = "tokio")]
pub mod tokio;

/// Generated protobuf types of `proto/interop/handshake.proto`.
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod proto {
    include!("generated/interop.handshake.v1.rs");
}

pub use handshake::{
    ClientConfig, ClientHandshake, ExpectClientFinish, ExpectClientHello, ExpectServerHello,
    ServerConfig, ServerDone, ServerHandshake,
};
pub use header::ConnectionHeader;
pub use keys::StaticKeypair;
pub use transport::Transport;

/// The Noise protocol name used for first contact.
pub const NOISE_XX: &str = "Noise_XX_25519_AESGCM_SHA256";

/// The largest Noise message (RFC: 65,535 bytes).
pub const MAX_NOISE_MESSAGE: usize = 65_535;

/// The largest plaintext one Noise transport message carries (65,535 minus the 16-byte tag).
pub const MAX_PLAINTEXT: usize = MAX_NOISE_MESSAGE - 16;

/// Errors of this crate, sorted by who is to blame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // -- the peer sent bad bytes --
    /// The connection did not start with the interop magic bytes.
    #[error("the peer did not send the interop connection header")]
    BadMagic,
    /// A frame declared a length larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    /// The input ended inside a frame.
    #[error("truncated frame")]
    Truncated,
    /// A handshake frame was not the message expected at this step.
    #[error("unexpected handshake message: {0}")]
    UnexpectedMessage(&'static str),
    /// A protobuf payload did not decode.
    #[error("malformed handshake payload")]
    MalformedPayload(#[source] prost::DecodeError),
    /// A Noise message failed to authenticate or decrypt.
    #[error("noise message failed to decrypt")]
    Decrypt,

    // -- the peer is incompatible --
    /// The peer speaks a protocol version this side does not.
    #[error("unsupported protocol version {got}; supported: {supported:?}")]
    UnsupportedVersion { got: u8, supported: &'static [u8] },
    /// The server's static key is not the expected one.
    #[error("the server's static key is not the expected one")]
    UnexpectedServerKey,

    // -- caller misuse --
    /// A message to send is larger than one transport frame carries.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge { len: usize, max: usize },

    // -- dependencies --
    /// The Noise library refused an operation.
    #[error("noise: {0}")]
    Noise(#[source] snow::Error),
    /// The underlying stream failed (tokio adapter).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

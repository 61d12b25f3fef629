//! Noise transport of the interop chat protocol, sans-IO.
//!
//! Every client–server connection starts with a fixed [`ConnectionHeader`] (also the Noise
//! prologue), then a Noise handshake carried in length-prefixed frames (XX on first contact, IK
//! when the client cached the server's static key), then encrypted transport frames carrying
//! stanzas (fragmented above [`MAX_WHOLE`] bytes). The server proves its static key with a
//! certificate chain ([`cert`]) rooted in a key the client pins.
//!
//! ```text
//!   client                                               server
//!   ClientHandshake::start_xx ── header + client_hello ─▶ ServerHandshake::handle_header
//!                                                        ExpectClientHello::handle_client_hello
//!   ExpectServerHello::handle_server_hello ◀ server_hello  (ServerStep::Xx)
//!     (checks the chain against `now`)  ── client_finish ▶ ExpectClientFinish::handle_client_finish
//!   ClientDone.transport ◀════════ encrypted frames ════▶ ServerDone.transport
//!
//!   ClientHandshake::start_ik ── header + ik_hello ────▶ handle_client_hello → ServerStep::Ik
//!   ExpectIkReply::handle_reply ◀──── ik_reply ─────────   (or ServerStep::RetryWithXx → XX)
//!     IkReply::Done ── key confirmation ───────────────▶ ExpectIkConfirm::handle_confirm
//! ```
//!
//! The handshake is a typestate: each step consumes the previous state, so a transport can only
//! exist after a completed handshake, and a server learns who an IK client is only after the
//! client's key confirmation decrypted (an IK hello can be replayed). Bytes in, bytes out: this
//! crate opens no sockets, reads no clock and spawns nothing; `now` and a `CryptoRng` are
//! parameters. The optional `tokio` feature adds [`tokio::NoiseStream`], an adapter over any
//! `AsyncRead + AsyncWrite`.
//!
//! # Example
//! ```
//! use interop_noise::cert::{IntermediateKey, RootKey, Validity};
//! use interop_noise::proto::{CertificateChain, ClientPayload};
//! use interop_noise::{
//!     ClientConfig, ClientHandshake, ServerConfig, ServerHandshake, ServerStep, StaticKeypair, frame,
//! };
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//!
//! let rng = &mut ChaCha20Rng::seed_from_u64(1);
//! let now = 1_700_000_000;
//! let window = Validity { not_before: now - 60, not_after: now + 86_400 };
//! // The gatekeeper's keys and chain (interop-server does this on first start).
//! let (root, inter) = (RootKey::generate(rng), IntermediateKey::generate(rng));
//! let server_keys = StaticKeypair::generate(rng);
//! let chain = CertificateChain {
//!     intermediate: Some(root.issue_intermediate(&inter, 1, window)),
//!     leaf: Some(inter.issue_leaf(1, &server_keys.public, 2, window)),
//! };
//! let server = ServerConfig::new(server_keys, chain);
//! let client = ClientConfig::new(StaticKeypair::generate(rng), root.trust_anchor());
//!
//! let payload = ClientPayload { account_id: "alice".into(), device_id: 1, ..Default::default() };
//! let (expect_hello, first_bytes) = ClientHandshake::start_xx(&client, &payload, rng).unwrap();
//!
//! // The server reads the header, then the first frame.
//! let (header, frames) = first_bytes.split_at(interop_noise::ConnectionHeader::LEN);
//! let expect_client_hello = ServerHandshake::handle_header(&server, header).unwrap();
//! let hello = frame::decode_one(frames).unwrap();
//! let ServerStep::Xx(expect_finish, reply) =
//!     expect_client_hello.handle_client_hello(hello, now * 1000, rng).unwrap()
//! else {
//!     unreachable!("an XX hello gets an XX answer")
//! };
//! let (client_done, finish) =
//!     expect_hello.handle_server_hello(frame::decode_one(&reply).unwrap(), now).unwrap();
//! let server_done = expect_finish.handle_client_finish(frame::decode_one(&finish).unwrap()).unwrap();
//! assert_eq!(server_done.payload.account_id, "alice");
//!
//! let (mut client_tx, mut server_tx) = (client_done.transport, server_done.transport);
//! let wire = client_tx.encrypt_stanza(b"<message/>").unwrap();
//! let body = frame::decode_one(&wire).unwrap();
//! assert_eq!(server_tx.decrypt(body).unwrap().unwrap(), b"<message/>");
//! ```
//!
//! # What this crate does not do
//! - No I/O, timers or tasks (the tokio adapter is optional and thin).
//! - No stanza parsing: transport frames carry opaque bytes.
//! - No authorisation: it reports who the peer claims to be and which key it proved it holds;
//!   deciding whether that identity (and its JWT) may connect is the server's job.
//! - No storage: the client caches the server key for IK and the server keeps its keys and
//!   chain wherever they like; the root private key belongs offline in a real deployment.
//! - No Noise of its own: patterns and primitives are snow's.

#![forbid(unsafe_code)]

pub mod cert;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod header;
mod keys;
mod resolver;
mod transport;

#[cfg(feature = "tokio")]
pub mod tokio;

/// Generated protobuf types of `proto/interop/handshake.proto`.
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod proto {
    include!("generated/interop.handshake.v1.rs");

    /// Written by hand (codegen skips it): the payload carries the provider JWT and the account
    /// id, which must never reach a log.
    impl std::fmt::Debug for ClientPayload {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ClientPayload")
                .field("product", &self.product)
                .field("account_id", &"<redacted>")
                .field("device_id", &self.device_id)
                .field("user_agent", &self.user_agent)
                .field(
                    "provider_jwt",
                    &if self.provider_jwt.is_empty() { "<none>" } else { "<redacted>" },
                )
                .field("read_receipts", &self.read_receipts)
                .finish()
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn client_payload_debug_shows_no_token_or_account() {
            let p = super::ClientPayload {
                account_id: "alice-account-7".into(),
                provider_jwt: "eyJhbGciOiJFZERTQSJ9.secret-claims.signature".into(),
                device_id: 3,
                ..Default::default()
            };
            let shown = format!("{p:?}");
            assert!(
                !shown.contains("alice-account-7")
                    && !shown.contains("eyJ")
                    && !shown.contains("secret"),
                "{shown}"
            );
            assert!(shown.contains("device_id: 3"));
        }
    }
}

pub use cert::{CertError, TrustAnchor};
pub use handshake::{
    ClientConfig, ClientDone, ClientHandshake, ExpectClientFinish, ExpectClientHello,
    ExpectIkConfirm, ExpectIkReply, ExpectServerHello, IkReply, ServerConfig, ServerDone,
    ServerHandshake, ServerStep,
};
pub use header::ConnectionHeader;
pub use keys::StaticKeypair;
pub use transport::{DEFAULT_MAX_STANZA, MAX_WHOLE, REKEY_INTERVAL, Sealed, Transport};

/// The Noise protocol name used for first contact.
pub const NOISE_XX: &str = "Noise_XX_25519_AESGCM_SHA256";

/// The Noise protocol name used for resumption with a cached server key.
pub const NOISE_IK: &str = "Noise_IK_25519_AESGCM_SHA256";

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
    /// The peer sent an all-zero or low-order X25519 public key.
    #[error("the peer sent a low-order X25519 key")]
    LowOrderKey,
    /// A transport message's fragment header is invalid or out of sequence.
    #[error("bad stanza fragment: {0}")]
    BadFragment(&'static str),
    /// A stanza declared a length above the receiver's maximum.
    #[error("stanza of {len} bytes exceeds the limit of {max}")]
    StanzaTooLarge { len: usize, max: usize },

    // -- the peer is incompatible --
    /// The peer speaks a protocol version this side does not.
    #[error("unsupported protocol version {got}; supported: {supported:?}")]
    UnsupportedVersion { got: u8, supported: Vec<u8> },
    /// The server's certificate chain is not acceptable under the pinned root.
    #[error("server certificate refused: {0}")]
    BadCertificate(CertError),

    // -- caller misuse --
    /// A message to send is larger than allowed.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge { len: usize, max: usize },
    /// The configured trust anchor is not a valid Ed25519 public key.
    #[error("the trust anchor is not a valid Ed25519 public key")]
    BadTrustAnchor,
    /// This direction of the connection used up its nonces; reconnect.
    #[error("transport nonces exhausted; the connection must be re-established")]
    NonceExhausted,

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

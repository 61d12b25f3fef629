//! Stanzas of the interop chat protocol, sans-IO.
//!
//! One model ([`Node`]: a tag, ordered attributes, and either child nodes or raw bytes) and its
//! codecs. The wire codec lives in [`binary`].
//!
//! ```
//! use interop_stanza::{Node, binary};
//!
//! let msg = Node::new("message").with_attr("to", "bob").with_bytes(b"ciphertext".to_vec());
//! let wire = binary::encode(&msg).unwrap();
//! assert_eq!(binary::decode(&wire).unwrap(), msg);
//! ```
//!
//! # What this crate does not do
//! - No I/O: bytes in, nodes out.
//! - No cryptography: `enc` payloads are opaque bytes here.

#![forbid(unsafe_code)]

pub mod binary;
mod node;

pub use node::{Content, Node};

/// Errors of this crate, sorted by who is to blame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    // -- the peer sent bad bytes --
    /// The input ended in the middle of a stanza.
    #[error("truncated stanza")]
    Truncated,
    /// Bytes remained after a complete stanza.
    #[error("{0} trailing bytes after the stanza")]
    TrailingBytes(usize),
    /// A string was not valid UTF-8.
    #[error("invalid UTF-8 in a string")]
    InvalidUtf8,
    /// An unknown content marker or token.
    #[error("unknown token 0x{0:02x}")]
    UnknownToken(u8),
    /// Nesting deeper than the limit.
    #[error("stanza nested deeper than {max} levels")]
    TooDeep { max: usize },

    // -- the peer is incompatible --
    /// The stanza was encoded with a format version this side does not know.
    #[error("unsupported stanza format version {0}")]
    UnsupportedVersion(u8),

    // -- caller misuse --
    /// A string or byte field longer than the format allows.
    #[error("field of {len} bytes exceeds the limit of {max}")]
    FieldTooLong { len: usize, max: usize },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

//! Stanzas of the interop chat protocol, sans-IO.
//!
//! One model ([`Node`]: a tag, ordered attributes, and either child nodes or raw bytes), two
//! codecs over it, and typed stanzas on top:
//!
//! ```text
//!   typed stanzas ([`stanza`]: Message, Enc, Receipt, Ack, Iq, Presence, ...)
//!        │ into_node / from_node (unknown attributes and children preserved)
//!        ▼
//!      Node  ◀──── xml::from_str ────  XML text (docs, logs, tests; base64 for bytes)
//!        │   ──── xml::to_string ───▶
//!        │
//!        ├── binary::encode ─▶ wire bytes (token dictionary, packed strings, raw bytes)
//!        ◀── binary::decode ── one whole stanza (one Noise transport message)
//!        ◀── StreamDecoder ─── a stream of concatenated stanzas, pushed in any chunks
//! ```
//!
//! The binary codec is the wire format. Its token dictionary is versioned; the version is the
//! stanza-dictionary byte of the connection header, so a server builds its codec with
//! [`binary::Codec::new`] from that byte and refuses a version it does not know.
//!
//! ```
//! use interop_stanza::stanza::{Enc, EncType, Message, MessageType};
//! use interop_stanza::{Node, binary, xml};
//!
//! let msg = Message::new("3eb0c4d1a2b3", MessageType::Text)
//!     .to("bob.7:2@s.interop")
//!     .with_enc(Enc::new(EncType::Msg, b"ciphertext".to_vec()));
//! let node: Node = msg.clone().into_node();
//! let wire = binary::encode(&node)?;
//! assert_eq!(binary::decode(&wire)?, node);
//! assert_eq!(Message::from_node(binary::decode(&wire)?)?, msg);
//! assert_eq!(
//!     xml::to_string(&node)?,
//!     r#"<message id="3eb0c4d1a2b3" to="bob.7:2@s.interop" type="text"><enc v="2" type="msg">Y2lwaGVydGV4dA==</enc></message>"#
//! );
//! # Ok::<(), interop_stanza::Error>(())
//! ```
//!
//! Decoding untrusted input never panics, never recurses (both decoders keep an explicit stack
//! bounded by [`Limits::max_depth`]) and never allocates beyond [`Limits`].
//!
//! # What this crate does not do
//! - No I/O, no clock, no tasks: bytes in, nodes out. Framing on the transport is
//!   interop-noise's; one transport message carries one stanza.
//! - No cryptography: `enc` payloads are opaque bytes here.
//! - No routing or delivery semantics: the gatekeeper decides what a stanza means.
//! - No XML namespaces, mixed content or comments-preservation: the XML form is a notation for
//!   the model, not a general XML document model.

#![forbid(unsafe_code)]

pub mod binary;
pub mod dict;
mod limits;
mod node;
pub mod stanza;
mod stream;
pub mod xml;

#[cfg(test)]
mod testutil;

pub use limits::Limits;
pub use node::{Content, Node};
pub use stream::StreamDecoder;

/// Errors of this crate, sorted by who is to blame.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum Error {
    // -- the peer sent bad bytes or text --
    /// The input ended in the middle of a stanza.
    #[error("truncated stanza")]
    Truncated,
    /// Bytes remained after a complete stanza.
    #[error("{0} trailing bytes after the stanza")]
    TrailingBytes(usize),
    /// A string was not valid UTF-8.
    #[error("invalid UTF-8 in a string")]
    InvalidUtf8,
    /// A byte that is not a token of the dictionary in use (`page` 0: a single byte; page 1: the
    /// byte after `0xF0`).
    #[error("unknown token 0x{token:02x} on dictionary page {page}")]
    UnknownToken {
        /// Dictionary page, 0 or 1.
        page: u8,
        /// The offending byte.
        token: u8,
    },
    /// A well-formed item where the grammar does not allow it (e.g. a list where a string is
    /// expected).
    #[error("unexpected item: expected {expected}")]
    UnexpectedItem {
        /// What the grammar expected at this point.
        expected: &'static str,
    },
    /// A packed string (nibbles, hex, address, varint) that is malformed.
    #[error("malformed packed {what}")]
    InvalidPacked {
        /// Which packing.
        what: &'static str,
    },
    /// Nesting deeper than the limit.
    #[error("stanza nested deeper than {max} levels")]
    TooDeep {
        /// The depth limit.
        max: usize,
    },
    /// A size, count or length beyond the configured [`Limits`].
    #[error("{limit} exceeds the limit of {max}")]
    LimitExceeded {
        /// Which limit.
        limit: &'static str,
        /// The limit's value.
        max: usize,
    },
    /// The same attribute name twice in one element.
    #[error("duplicate attribute")]
    DuplicateAttribute,
    /// Text that is not well-formed XML (or not in the subset this codec reads).
    #[error("malformed XML: {reason}")]
    InvalidXml {
        /// What is wrong.
        reason: &'static str,
    },
    /// A `<!DOCTYPE>` declaration: DTDs are refused (no entity expansion, no external fetch).
    #[error("XML DTDs are not allowed")]
    DtdForbidden,
    /// A DTD declaring entities (billion laughs, external entities): refused.
    #[error("XML entity declarations are not allowed")]
    EntityDeclarationForbidden,
    /// An XML processing instruction (other than the leading `<?xml ...?>` declaration).
    #[error("XML processing instructions are not allowed")]
    ProcessingInstructionForbidden,
    /// A reference to an entity that is not one of the five predefined ones or a character
    /// reference.
    #[error("unknown XML entity reference")]
    UnknownEntity,
    /// Bytes content in XML that is not base64.
    #[error("invalid base64 in XML bytes content")]
    InvalidBase64,
    /// A node is not the stanza the typed parser expects.
    #[error("expected a <{expected}> stanza")]
    UnexpectedTag {
        /// The tag the parser expected.
        expected: &'static str,
    },
    /// A required attribute is missing.
    #[error("missing attribute {0}")]
    MissingAttribute(&'static str),
    /// An attribute has a value outside its domain.
    #[error("invalid value of attribute {0}")]
    InvalidAttribute(&'static str),
    /// A required child element (or bytes content) is missing.
    #[error("missing child {0}")]
    MissingChild(&'static str),

    // -- the peer is incompatible --
    /// A stanza-dictionary version this side does not know.
    #[error("unsupported stanza dictionary version {0}")]
    UnsupportedVersion(u8),

    // -- caller misuse --
    /// A string, byte field or child list longer than the format allows.
    #[error("field of {len} bytes exceeds the limit of {max}")]
    FieldTooLong {
        /// The field's length.
        len: usize,
        /// The format's limit.
        max: usize,
    },
    /// The node cannot be written as XML (a name that is not an XML name, or a character XML
    /// 1.0 cannot carry).
    #[error("not representable in XML: {0}")]
    NotXmlRepresentable(&'static str),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

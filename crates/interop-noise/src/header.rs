//! The connection header: the first bytes a client sends, also the Noise prologue.

use crate::{Error, Result};

/// `"IOP"` + protocol version + stanza-dictionary version.
///
/// Both sides mix these exact bytes into the Noise handshake as the prologue, so a header that a
/// middlebox altered makes the handshake fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionHeader {
    /// Protocol version (this crate speaks [`ConnectionHeader::SUPPORTED_VERSIONS`]).
    pub protocol_version: u8,
    /// Version of the binary stanza dictionary the client will use.
    pub dictionary_version: u8,
}

impl ConnectionHeader {
    /// The magic bytes that start every connection.
    pub const MAGIC: [u8; 3] = *b"IOP";
    /// Length of the encoded header.
    pub const LEN: usize = 5;
    /// Protocol versions this implementation speaks.
    pub const SUPPORTED_VERSIONS: &'static [u8] = &[1];

    /// The header this implementation sends.
    pub const fn current(dictionary_version: u8) -> Self {
        Self { protocol_version: 1, dictionary_version }
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let [a, b, c] = Self::MAGIC;
        [a, b, c, self.protocol_version, self.dictionary_version]
    }

    /// The plain `version_rejected` frame a server sends (then closes) when the client's
    /// protocol version is not one of [`SUPPORTED_VERSIONS`](Self::SUPPORTED_VERSIONS).
    pub fn rejection_frame() -> Vec<u8> {
        use prost::Message;

        use crate::proto::{HandshakeMessage, VersionRejected, handshake_message};
        let body = HandshakeMessage {
            message: Some(handshake_message::Message::VersionRejected(VersionRejected {
                supported: Self::SUPPORTED_VERSIONS.to_vec().into(),
            })),
        }
        .encode_to_vec();
        let mut out = Vec::with_capacity(body.len() + crate::frame::LEN_PREFIX);
        crate::frame::encode(&body, &mut out).expect("a few bytes fit in a frame");
        out
    }

    /// Parses and checks a header: the magic and a supported protocol version.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < Self::LEN {
            return Err(Error::Truncated);
        }
        if bytes[..3] != Self::MAGIC {
            return Err(Error::BadMagic);
        }
        let header = Self { protocol_version: bytes[3], dictionary_version: bytes[4] };
        if !Self::SUPPORTED_VERSIONS.contains(&header.protocol_version) {
            return Err(Error::UnsupportedVersion {
                got: header.protocol_version,
                supported: Self::SUPPORTED_VERSIONS.to_vec(),
            });
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = ConnectionHeader::current(1);
        assert_eq!(ConnectionHeader::decode(&h.encode()).unwrap(), h);
        assert_eq!(h.encode(), *b"IOP\x01\x01");
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(ConnectionHeader::decode(b"IOP\x01"), Err(Error::Truncated)));
        assert!(matches!(ConnectionHeader::decode(b"XMP\x01\x01"), Err(Error::BadMagic)));
        assert!(matches!(
            ConnectionHeader::decode(b"IOP\x09\x01"),
            Err(Error::UnsupportedVersion { got: 9, .. })
        ));
    }
}

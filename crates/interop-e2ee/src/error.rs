//! The crate's one error type.

use libsignal_protocol::SignalProtocolError;

use crate::store::StorageError;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate, grouped by who is to blame.
///
/// Messages never contain keys, identifiers or content: libsignal's own errors name addresses,
/// so they are mapped to these variants and not kept as sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- the peer sent bad bytes ---
    /// The ciphertext or content is not well-formed (truncated, garbage, bad protobuf).
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The message is well-formed but does not authenticate or decrypt under any session
    /// (tampered, or encrypted for a session this device no longer has). The session is
    /// unchanged; ask the sender to retry.
    #[error("message does not decrypt: {0}")]
    Undecryptable(&'static str),
    /// This message was already decrypted once (its message key is used up).
    #[error("duplicate message")]
    Duplicate,
    /// A pre-key message names a one-time, signed or Kyber pre-key this device does not have
    /// (already used, or rotated away). Ask the sender to retry with a fresh bundle.
    #[error("unknown pre-key")]
    UnknownPreKey,
    /// A pre-key bundle's signature does not verify against its identity key.
    #[error("pre-key bundle signature does not verify")]
    BadSignature,

    // --- the peer is incompatible ---
    /// The message uses a protocol version this library does not speak (for example X3DH
    /// without Kyber).
    #[error("unsupported message version")]
    UnsupportedVersion,

    // --- trust decisions ---
    /// The peer's identity key differs from the one the user verified; the user must approve
    /// the new key ([`crate::Account::approve_identity`]) before messages flow again.
    #[error("peer identity key changed since the user verified it")]
    UntrustedIdentity,

    // --- caller misuse ---
    /// No session with this device: process a pre-key bundle first.
    #[error("no session with this device")]
    NoSession,
    /// No sender key for this group (sender side: create a distribution first; receiver
    /// side: the sender's distribution has not arrived).
    #[error("no sender key for this group")]
    NoSenderKey,
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The store holds no account: call [`crate::Account::create`] first.
    #[error("the store holds no account")]
    NoAccount,

    // --- a dependency failed ---
    /// The storage backend failed; nothing was committed.
    #[error("storage failed")]
    Storage(#[source] StorageError),
    /// A stored record does not parse (storage corruption or a foreign store).
    #[error("corrupt stored record: {0}")]
    CorruptRecord(&'static str),
    /// libsignal reported an error with no more specific mapping.
    #[error("signal protocol error: {0}")]
    Signal(&'static str),
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage(e)
    }
}

impl Error {
    /// The protocol's error code for this error (docs/PROTOCOL.md, "Decryption failures"),
    /// for retry receipts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Malformed(_) => "malformed",
            Error::Undecryptable(_) => "undecryptable",
            Error::Duplicate => "duplicate",
            Error::UnknownPreKey => "unknown-pre-key",
            Error::BadSignature => "bad-signature",
            Error::UnsupportedVersion => "unsupported-version",
            Error::UntrustedIdentity => "untrusted-identity",
            Error::NoSession => "no-session",
            Error::NoSenderKey => "no-sender-key",
            Error::InvalidArgument(_) | Error::NoAccount => "invalid-argument",
            Error::Storage(_) => "storage",
            Error::CorruptRecord(_) | Error::Signal(_) => "internal",
        }
    }
}

/// Maps libsignal's errors (whose messages name addresses) onto ours.
pub(crate) fn from_signal(e: SignalProtocolError) -> Error {
    use SignalProtocolError as S;
    match e {
        S::InvalidProtobufEncoding => Error::Malformed("bad protobuf in ciphertext"),
        S::CiphertextMessageTooShort(_) => Error::Malformed("ciphertext too short"),
        S::NoKeyTypeIdentifier | S::BadKeyType(_) | S::BadKeyLength(..) => {
            Error::Malformed("bad public key")
        }
        S::BadKEMKeyType(_)
        | S::WrongKEMKeyType(..)
        | S::BadKEMKeyLength(..)
        | S::BadKEMCiphertextLength(..) => Error::Malformed("bad Kyber key or ciphertext"),
        S::InvalidMacKeyLength(_) => Error::Malformed("bad MAC"),
        S::InvalidMessage(_, what) => Error::Undecryptable(what),
        S::DuplicatedMessage(..) => Error::Duplicate,
        S::InvalidPreKeyId | S::InvalidSignedPreKeyId | S::InvalidKyberPreKeyId => {
            Error::UnknownPreKey
        }
        S::SignatureValidationFailed => Error::BadSignature,
        S::LegacyCiphertextVersion(_)
        | S::UnrecognizedCiphertextVersion(_)
        | S::UnrecognizedMessageVersion(_) => Error::UnsupportedVersion,
        S::UntrustedIdentity(_) => Error::UntrustedIdentity,
        S::SessionNotFound(_) => Error::NoSession,
        S::NoSenderKeyState { .. } => Error::NoSenderKey,
        S::InvalidSenderKeySession { .. } => Error::Undecryptable("invalid sender key session"),
        S::InvalidSessionStructure(what) => Error::CorruptRecord(what),
        S::InvalidRegistrationId(..) => Error::Malformed("bad registration id"),
        S::InvalidProtocolAddress { .. } => Error::InvalidArgument("invalid address"),
        S::InvalidArgument(_) => Error::InvalidArgument("rejected by libsignal"),
        S::ApplicationCallbackError(..) => Error::Signal("store callback failed"),
        S::InvalidState(..) => Error::Signal("invalid state"),
        _ => Error::Signal("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libsignal_errors_map_to_codes_without_identifiers() {
        let address = libsignal_protocol::ProtocolAddress::new(
            "secret-account".into(),
            libsignal_protocol::DeviceId::new(1).unwrap(),
        );
        let cases = [
            (SignalProtocolError::DuplicatedMessage(1, 2), "duplicate"),
            (SignalProtocolError::UntrustedIdentity(address.clone()), "untrusted-identity"),
            (SignalProtocolError::SessionNotFound(address), "no-session"),
            (SignalProtocolError::InvalidPreKeyId, "unknown-pre-key"),
            (SignalProtocolError::InvalidKyberPreKeyId, "unknown-pre-key"),
            (SignalProtocolError::SignatureValidationFailed, "bad-signature"),
            (SignalProtocolError::InvalidProtobufEncoding, "malformed"),
            (SignalProtocolError::CiphertextMessageTooShort(3), "malformed"),
            (SignalProtocolError::UnrecognizedMessageVersion(9), "unsupported-version"),
            (
                SignalProtocolError::InvalidMessage(
                    libsignal_protocol::CiphertextMessageType::Whisper,
                    "MAC verification failed",
                ),
                "undecryptable",
            ),
        ];
        for (e, code) in cases {
            let ours = from_signal(e);
            assert_eq!(ours.code(), code);
            assert!(!ours.to_string().contains("secret-account"));
            assert!(!format!("{ours:?}").contains("secret-account"));
        }
    }
}

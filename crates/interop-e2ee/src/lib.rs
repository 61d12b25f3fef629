//! End-to-end encryption for interop messaging, on the official Signal library (libsignal).
//!
//! This crate is AGPL-3.0-only because libsignal is. It is sans-IO: callers pass randomness in
//! and drive libsignal's (non-`Send`) store futures on their own thread or `LocalSet`.
//!
//! ```
//! let mut rng = rand::rng();
//! let account = interop_e2ee::AccountKeys::generate(&mut rng);
//! assert_eq!(account.identity_public().len(), 33);
//! ```
//!
//! # What this crate does not do
//! - No cryptography of its own: every primitive is libsignal's.
//! - No storage engine: stores are traits with in-memory implementations; the persistent one
//!   lives in interop-client.

#![forbid(unsafe_code)]

use libsignal_protocol::IdentityKeyPair;
use rand::{CryptoRng, Rng};

/// The long-term keys of one account on one device.
pub struct AccountKeys {
    identity: IdentityKeyPair,
    registration_id: u32,
}

impl std::fmt::Debug for AccountKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKeys")
            .field("registration_id", &self.registration_id)
            .finish_non_exhaustive()
    }
}

impl AccountKeys {
    /// Fresh keys: an identity key pair and a registration id (1..=16380, as libsignal clients use).
    pub fn generate<R: CryptoRng + Rng>(rng: &mut R) -> Self {
        Self {
            identity: IdentityKeyPair::generate(rng),
            registration_id: rng.random_range(1..=16380),
        }
    }

    /// The serialized public identity key (type byte + 32 bytes).
    pub fn identity_public(&self) -> Vec<u8> {
        self.identity.identity_key().serialize().to_vec()
    }

    /// The registration id.
    pub fn registration_id(&self) -> u32 {
        self.registration_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_differ_and_registration_ids_are_in_range() {
        let mut rng = rand::rng();
        let a = AccountKeys::generate(&mut rng);
        let b = AccountKeys::generate(&mut rng);
        assert_ne!(a.identity_public(), b.identity_public());
        for k in [&a, &b] {
            assert!((1..=16380).contains(&k.registration_id()));
        }
    }
}

//! Pre-key material as it travels to and from the server: plain public bytes, no libsignal
//! types, so the gatekeeper (which never links libsignal) can store and serve it.

use std::fmt;

use libsignal_protocol::{DeviceId, IdentityKey, PreKeyBundle, PublicKey, kem};

use crate::{Error, Result};

/// A public key with a server-side id, signed by the account's identity key (signed
/// elliptic-curve pre-keys and Kyber pre-keys).
#[derive(Clone, PartialEq, Eq)]
pub struct SignedKey {
    /// The key id (1..=0xFF_FFFF).
    pub id: u32,
    /// The serialized public key: 33 bytes (`05` + X25519) or 1569 bytes (`08` + Kyber1024).
    pub public: Vec<u8>,
    /// XEdDSA signature (64 bytes) of `public` by the identity key.
    pub signature: Vec<u8>,
}

/// A one-time elliptic-curve pre-key.
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimeKey {
    /// The key id (1..=0xFF_FFFF).
    pub id: u32,
    /// The serialized public key (33 bytes, `05` + X25519).
    pub public: Vec<u8>,
}

/// What a device uploads to the server's pre-key service. Fields that did not change are
/// `None` / empty.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PreKeyUpload {
    /// The identity public key (33 bytes).
    pub identity: Vec<u8>,
    /// The registration id (1..=16380).
    pub registration_id: u32,
    /// A new signed pre-key, replacing the previous one.
    pub signed_prekey: Option<SignedKey>,
    /// A new last-resort Kyber pre-key, replacing the previous one.
    pub kyber_last_resort: Option<SignedKey>,
    /// One-time Kyber pre-keys to add.
    pub kyber_one_time: Vec<SignedKey>,
    /// One-time elliptic-curve pre-keys to add.
    pub one_time: Vec<OneTimeKey>,
}

/// What the server hands out for one device: a PQXDH pre-key bundle.
///
/// The server takes (and deletes) one one-time EC key and one one-time Kyber key per bundle;
/// when it has none left it omits the EC key and serves the last-resort Kyber key.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The device's registration id.
    pub registration_id: u32,
    /// The device id (1..=127).
    pub device: u8,
    /// The identity public key (33 bytes).
    pub identity: Vec<u8>,
    /// The current signed pre-key.
    pub signed_prekey: SignedKey,
    /// A one-time EC pre-key, if the server had one left.
    pub one_time: Option<OneTimeKey>,
    /// A one-time Kyber pre-key, or the last-resort one.
    pub kyber: SignedKey,
}

// Debug shows ids and counts only: keys identify a device.
impl fmt::Debug for SignedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl fmt::Debug for OneTimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimeKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl fmt::Debug for PreKeyUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreKeyUpload")
            .field("signed_prekey", &self.signed_prekey)
            .field("kyber_last_resort", &self.kyber_last_resort)
            .field("kyber_one_time", &self.kyber_one_time.len())
            .field("one_time", &self.one_time.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("device", &self.device)
            .field("signed_prekey", &self.signed_prekey)
            .field("one_time", &self.one_time)
            .field("kyber", &self.kyber)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    pub(crate) fn to_signal(&self) -> Result<PreKeyBundle> {
        let bad = |_| Error::Malformed("bad key in pre-key bundle");
        let device = DeviceId::new(self.device)
            .map_err(|_| Error::Malformed("bundle device id out of range"))?;
        let one_time = match &self.one_time {
            Some(k) => Some((k.id.into(), PublicKey::deserialize(&k.public).map_err(bad)?)),
            None => None,
        };
        PreKeyBundle::new(
            self.registration_id,
            device,
            one_time,
            self.signed_prekey.id.into(),
            PublicKey::deserialize(&self.signed_prekey.public).map_err(bad)?,
            self.signed_prekey.signature.clone(),
            self.kyber.id.into(),
            kem::PublicKey::deserialize(&self.kyber.public)
                .map_err(|_| Error::Malformed("bad Kyber key in pre-key bundle"))?,
            self.kyber.signature.clone(),
            IdentityKey::decode(&self.identity)
                .map_err(|_| Error::Malformed("bad identity key in pre-key bundle"))?,
        )
        .map_err(crate::error::from_signal)
    }
}

/// How many one-time pre-keys a device keeps on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreKeyPolicy {
    /// One-time EC keys to hold after a top-up.
    pub one_time_target: u32,
    /// Top up EC keys when the server holds fewer than this.
    pub one_time_threshold: u32,
    /// One-time Kyber keys to hold after a top-up.
    pub kyber_target: u32,
    /// Top up Kyber keys when the server holds fewer than this.
    pub kyber_threshold: u32,
}

impl Default for PreKeyPolicy {
    fn default() -> Self {
        Self { one_time_target: 100, one_time_threshold: 25, kyber_target: 50, kyber_threshold: 10 }
    }
}

/// The largest pre-key id; ids wrap around to 1 after it (as Signal clients do).
pub(crate) const MAX_PREKEY_ID: u32 = 0xFF_FFFF;

/// Returns the id to use and advances the counter.
pub(crate) fn next_id(counter: &mut u32) -> u32 {
    let id = if *counter == 0 || *counter > MAX_PREKEY_ID { 1 } else { *counter };
    *counter = id + 1;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_wrap() {
        let mut c = 0;
        assert_eq!((next_id(&mut c), next_id(&mut c)), (1, 2));
        let mut c = MAX_PREKEY_ID;
        assert_eq!((next_id(&mut c), next_id(&mut c)), (MAX_PREKEY_ID, 1));
    }
}

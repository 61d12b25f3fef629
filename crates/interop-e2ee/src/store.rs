//! The narrow storage trait under libsignal's stores, and its in-memory implementation.
//!
//! libsignal wants six store traits (sessions, identities, three kinds of pre-keys, sender
//! keys). This crate implements all of them once, over [`Storage`]: a key-value store of opaque
//! records with one write operation, [`Storage::commit`], that applies a [`Batch`]
//! atomically. Every operation of [`crate::Account`] reads what it needs, collects its writes in
//! one batch, and commits it once: one decrypt = one transaction that stores the new session
//! state together with the plaintext's [`Arrival`]. A crash before the commit leaves the store
//! as it was (the message decrypts again when it is redelivered); a crash after it leaves both.
//!
//! A persistent implementation needs one table, for example in SQLite:
//!
//! ```sql
//! CREATE TABLE signal_record (kind TEXT NOT NULL, id BLOB NOT NULL, value BLOB NOT NULL,
//!                             PRIMARY KEY (kind, id));
//! ```
//!
//! keyed by [`RecordKey::kind`] and [`RecordKey::id`], plus wherever it keeps arrivals, with
//! `commit` running in one SQL transaction. The `__test-suite` feature exposes
//! `test_suite::run_all`, which every implementation must pass.

use std::collections::HashMap;
use std::fmt;

use crate::{Error, Result};

/// One device of one account: the unit Signal sessions are kept for.
///
/// `Debug` does not show the account id (identifiers stay out of logs).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddress {
    account: String,
    device: u8,
}

impl DeviceAddress {
    /// The largest device id libsignal accepts.
    pub const MAX_DEVICE: u8 = 127;
    /// The longest account id accepted, in bytes.
    pub const MAX_ACCOUNT_LEN: usize = 256;

    /// An address; `device` must be in `1..=127` and `account` non-empty and at most
    /// [`Self::MAX_ACCOUNT_LEN`] bytes.
    pub fn new(account: impl Into<String>, device: u8) -> Result<Self> {
        let account = account.into();
        if account.is_empty() || account.len() > Self::MAX_ACCOUNT_LEN {
            return Err(Error::InvalidArgument("account id must be 1..=256 bytes"));
        }
        if device == 0 || device > Self::MAX_DEVICE {
            return Err(Error::InvalidArgument("device id must be in 1..=127"));
        }
        Ok(Self { account, device })
    }

    /// The account id.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The device id (1..=127).
    pub fn device(&self) -> u8 {
        self.device
    }

    pub(crate) fn to_signal(&self) -> libsignal_protocol::ProtocolAddress {
        let device = libsignal_protocol::DeviceId::new(self.device)
            .expect("DeviceAddress::new checked the range");
        libsignal_protocol::ProtocolAddress::new(self.account.clone(), device)
    }

    pub(crate) fn from_signal(address: &libsignal_protocol::ProtocolAddress) -> Self {
        Self { account: address.name().to_owned(), device: address.device_id().into() }
    }

    /// Stable binary form used in [`RecordKey::id`]: device byte, then the account bytes.
    fn id_bytes(&self, out: &mut Vec<u8>) {
        out.push(self.device);
        out.extend_from_slice(self.account.as_bytes());
    }
}

impl fmt::Debug for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAddress").field("device", &self.device).finish_non_exhaustive()
    }
}

/// The key of one stored record.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
#[non_exhaustive]
pub enum RecordKey {
    /// This device's own identity key pair, registration id and address.
    LocalIdentity,
    /// Pre-key bookkeeping: next ids, current signed and last-resort ids.
    PreKeyMeta,
    /// The session (current and archived states) with one remote device.
    Session(DeviceAddress),
    /// The identity key last seen for one remote device, and whether the user verified it.
    Identity(DeviceAddress),
    /// A one-time elliptic-curve pre-key.
    PreKey(u32),
    /// A signed elliptic-curve pre-key.
    SignedPreKey(u32),
    /// A Kyber pre-key (one-time or last resort).
    KyberPreKey(u32),
    /// A base key seen with a last-resort Kyber pre-key (replay protection).
    KyberBaseKeySeen {
        /// The Kyber pre-key id.
        kyber: u32,
        /// The signed pre-key id used with it.
        signed: u32,
        /// The sender's serialized base key.
        base_key: Vec<u8>,
    },
    /// A sender key (group chain) of one sender device for one group.
    SenderKey {
        /// The sending device.
        sender: DeviceAddress,
        /// The group's 16-byte distribution id.
        distribution: [u8; 16],
    },
}

impl RecordKey {
    /// A stable name for the kind of record (a table or column value for persistent stores).
    pub fn kind(&self) -> &'static str {
        match self {
            RecordKey::LocalIdentity => "local_identity",
            RecordKey::PreKeyMeta => "prekey_meta",
            RecordKey::Session(_) => "session",
            RecordKey::Identity(_) => "identity",
            RecordKey::PreKey(_) => "prekey",
            RecordKey::SignedPreKey(_) => "signed_prekey",
            RecordKey::KyberPreKey(_) => "kyber_prekey",
            RecordKey::KyberBaseKeySeen { .. } => "kyber_base_key_seen",
            RecordKey::SenderKey { .. } => "sender_key",
        }
    }

    /// A stable binary id, unique within [`Self::kind`].
    pub fn id(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            RecordKey::LocalIdentity | RecordKey::PreKeyMeta => {}
            RecordKey::Session(a) | RecordKey::Identity(a) => a.id_bytes(&mut out),
            RecordKey::PreKey(id) | RecordKey::SignedPreKey(id) | RecordKey::KyberPreKey(id) => {
                out.extend_from_slice(&id.to_be_bytes())
            }
            RecordKey::KyberBaseKeySeen { kyber, signed, base_key } => {
                out.extend_from_slice(&kyber.to_be_bytes());
                out.extend_from_slice(&signed.to_be_bytes());
                out.extend_from_slice(base_key);
            }
            RecordKey::SenderKey { sender, distribution } => {
                out.extend_from_slice(distribution);
                sender.id_bytes(&mut out);
            }
        }
        out
    }
}

/// A decrypted message handed to storage in the same transaction as the session state that
/// decrypted it.
#[derive(Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The sending device.
    pub sender: DeviceAddress,
    /// The application message id (`Message.id`); empty for a transport without a message.
    pub message_id: String,
    /// The encoded application-layer `Message` (padding removed).
    pub message: Vec<u8>,
    /// The group (16-byte distribution id) when the message came as sender-key group
    /// content (`skmsg`); `None` for a 1:1 message.
    pub group: Option<[u8; 16]>,
}

impl fmt::Debug for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arrival")
            .field("sender", &self.sender)
            .field("message_len", &self.message.len())
            .field("group", &self.group.is_some())
            .finish_non_exhaustive()
    }
}

/// Writes to apply atomically: all of them, or none.
#[derive(Default)]
pub struct Batch {
    /// Records to set (`Some`) or delete (`None`), in order; a later write to the same key
    /// wins.
    pub writes: Vec<(RecordKey, Option<Vec<u8>>)>,
    /// Messages that arrived with these state changes.
    pub arrivals: Vec<Arrival>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("writes", &self.writes.len())
            .field("arrivals", &self.arrivals.len())
            .finish()
    }
}

/// A storage backend's failure, opaque to this crate.
#[derive(Debug, thiserror::Error)]
#[error("storage backend error")]
pub struct StorageError(#[source] pub Box<dyn std::error::Error + Send + Sync + 'static>);

impl StorageError {
    /// Wraps a backend error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }
}

/// The narrow storage trait: opaque records by key, and an atomic batch commit.
///
/// Rules every implementation follows (checked by the `__test-suite`):
/// - `load` returns the value of the last committed write to the key, or `None`.
/// - `commit` applies all writes and records all arrivals, or (returning `Err`) none of them.
/// - Committed data survives dropping the value and opening the store again.
///
/// Single writer: one [`crate::Account`] owns its storage; no other writer may change the
/// records between an operation's loads and its commit.
///
/// The futures are not required to be `Send`, like libsignal's own store futures: drive the
/// account on one thread (see the crate documentation).
#[allow(async_fn_in_trait)] // libsignal's store futures are not Send either
pub trait Storage {
    /// Reads one record.
    async fn load(&self, key: &RecordKey) -> Result<Option<Vec<u8>>, StorageError>;

    /// Applies a batch atomically.
    async fn commit(&mut self, batch: Batch) -> Result<(), StorageError>;
}

/// An in-memory [`Storage`]: a hash map, plus the list of arrivals.
///
/// `Clone` copies the contents, which tests use as "the disk at this instant" to simulate a
/// crash. [`InMemoryStorage::fail_next_commits`] injects commit failures.
#[derive(Clone, Default)]
pub struct InMemoryStorage {
    records: HashMap<RecordKey, Vec<u8>>,
    arrivals: Vec<Arrival>,
    failing_commits: u32,
}

impl fmt::Debug for InMemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryStorage")
            .field("records", &self.records.len())
            .field("arrivals", &self.arrivals.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("injected commit failure")]
struct InjectedFailure;

impl InMemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages committed so far, in commit order.
    pub fn arrivals(&self) -> &[Arrival] {
        &self.arrivals
    }

    /// The number of stored records.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Makes the next `n` commits fail without applying anything.
    pub fn fail_next_commits(&mut self, n: u32) {
        self.failing_commits = n;
    }
}

impl Storage for InMemoryStorage {
    async fn load(&self, key: &RecordKey) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.records.get(key).cloned())
    }

    async fn commit(&mut self, batch: Batch) -> Result<(), StorageError> {
        if self.failing_commits > 0 {
            self.failing_commits -= 1;
            return Err(StorageError::new(InjectedFailure));
        }
        for (key, value) in batch.writes {
            match value {
                Some(v) => {
                    self.records.insert(key, v);
                }
                None => {
                    self.records.remove(&key);
                }
            }
        }
        self.arrivals.extend(batch.arrivals);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_address_bounds() {
        assert!(DeviceAddress::new("a", 0).is_err());
        assert!(DeviceAddress::new("a", 128).is_err());
        assert!(DeviceAddress::new("", 1).is_err());
        assert!(DeviceAddress::new("x".repeat(257), 1).is_err());
        let a = DeviceAddress::new("alice", 127).unwrap();
        assert_eq!((a.account(), a.device()), ("alice", 127));
        assert!(!format!("{a:?}").contains("alice"));
    }

    #[test]
    fn record_ids_are_distinct_within_a_kind() {
        let a = DeviceAddress::new("ab", 1).unwrap();
        let b = DeviceAddress::new("a", 1).unwrap();
        assert_ne!(RecordKey::Session(a.clone()).id(), RecordKey::Session(b).id());
        assert_eq!(RecordKey::Session(a.clone()).kind(), "session");
        assert_eq!(RecordKey::PreKey(7).id(), vec![0, 0, 0, 7]);
        let sk = RecordKey::SenderKey { sender: a, distribution: [9; 16] };
        assert_eq!(&sk.id()[..16], &[9; 16]);
    }
}

//! libsignal's store traits, implemented over one pending transaction on a [`Storage`].
//!
//! A [`Tx`] reads through to the storage and keeps every write in memory; nothing reaches the
//! storage until the caller turns the transaction into a [`Batch`] and commits it. libsignal's
//! functions take several `&mut dyn Store` at once, so the traits are implemented on [`View`],
//! a cheap handle of which each call gets as many as it needs.

use std::cell::RefCell;
use std::collections::HashMap;

use libsignal_protocol::{
    Direction, GenericSignedPreKey, IdentityChange, IdentityKey, IdentityKeyPair, IdentityKeyStore,
    KyberPreKeyId, KyberPreKeyRecord, KyberPreKeyStore, PreKeyId, PreKeyRecord, PreKeyStore,
    ProtocolAddress, PublicKey, SenderKeyRecord, SenderKeyStore, SessionRecord, SessionStore,
    SignalProtocolError, SignedPreKeyId, SignedPreKeyRecord, SignedPreKeyStore,
};

use crate::account::LocalIdentity;
use crate::records::{IdentityRecord, KyberKind, decode_kyber, encode_kyber};
use crate::store::{Batch, DeviceAddress, RecordKey, Storage, StorageError};
use crate::{Error, Event};

type SResult<T> = std::result::Result<T, SignalProtocolError>;

/// Pending writes over a storage.
pub(crate) struct Tx<'a, S> {
    storage: &'a S,
    local: &'a LocalIdentity,
    /// Pending writes in first-write order (a transaction writes a handful of records, so a
    /// scanned vector beats a map).
    writes: RefCell<Vec<(RecordKey, Option<Vec<u8>>)>>,
    events: RefCell<Vec<Event>>,
    failure: RefCell<Option<StorageError>>,
    /// Deserialized copies of the sessions written in this transaction.
    sessions: RefCell<HashMap<DeviceAddress, SessionRecord>>,
    /// Decoded copies of the identity records written in this transaction.
    identities: RefCell<HashMap<DeviceAddress, IdentityRecord>>,
}

/// A transaction's outcome: the batch to commit, the events it caused, and the sessions it
/// wrote (for the account's cache once the batch is committed).
#[derive(Default)]
pub(crate) struct Finished {
    pub batch: Batch,
    pub events: Vec<Event>,
    pub sessions: HashMap<DeviceAddress, SessionRecord>,
    pub identities: HashMap<DeviceAddress, IdentityRecord>,
}

impl<'a, S: Storage> Tx<'a, S> {
    pub(crate) fn new(storage: &'a S, local: &'a LocalIdentity) -> Self {
        Self {
            storage,
            local,
            writes: RefCell::default(),
            events: RefCell::default(),
            failure: RefCell::default(),
            sessions: RefCell::default(),
            identities: RefCell::default(),
        }
    }

    /// Continues a finished (not yet committed) transaction.
    pub(crate) fn resume(storage: &'a S, local: &'a LocalIdentity, finished: Finished) -> Self {
        let tx = Self::new(storage, local);
        for (key, value) in finished.batch.writes {
            tx.put(key, value);
        }
        *tx.events.borrow_mut() = finished.events;
        *tx.sessions.borrow_mut() = finished.sessions;
        *tx.identities.borrow_mut() = finished.identities;
        tx
    }

    /// A store handle for one argument of a libsignal call.
    pub(crate) fn view(&self) -> View<'_, 'a, S> {
        View(self)
    }

    pub(crate) fn put(&self, key: RecordKey, value: Option<Vec<u8>>) {
        let mut writes = self.writes.borrow_mut();
        match writes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => writes.push((key, value)),
        }
    }

    pub(crate) fn push_event(&self, event: Event) {
        self.events.borrow_mut().push(event);
    }

    /// Turns a libsignal error into ours, preferring a storage failure seen on the way.
    pub(crate) fn map_err(&self, e: SignalProtocolError) -> Error {
        match self.failure.borrow_mut().take() {
            Some(storage) => Error::Storage(storage),
            None => crate::error::from_signal(e),
        }
    }

    /// The pending writes (in first-write order), the events they caused, the sessions.
    pub(crate) fn finish(self) -> Finished {
        Finished {
            batch: Batch { writes: self.writes.into_inner(), arrivals: Vec::new() },
            events: self.events.into_inner(),
            sessions: self.sessions.into_inner(),
            identities: self.identities.into_inner(),
        }
    }

    /// The identity record of `peer`: this transaction's write, else the account's cache of
    /// committed records, else the storage (then cached).
    async fn identity(&self, peer: &DeviceAddress) -> SResult<Option<IdentityRecord>> {
        if let Some(rec) = self.identities.borrow().get(peer) {
            return Ok(Some(rec.clone()));
        }
        if let Some(rec) = self.local.identities.borrow().get(peer) {
            return Ok(Some(rec.clone()));
        }
        match self.get_sig(&RecordKey::Identity(peer.clone())).await? {
            None => Ok(None),
            Some(bytes) => {
                let rec = IdentityRecord::decode(&bytes).ok_or(corrupt("identity"))?;
                let mut cache = self.local.identities.borrow_mut();
                if cache.len() < crate::account::SESSION_CACHE_MAX {
                    cache.insert(peer.clone(), rec.clone());
                }
                Ok(Some(rec))
            }
        }
    }

    fn put_identity(&self, peer: DeviceAddress, rec: IdentityRecord) {
        self.put(RecordKey::Identity(peer.clone()), Some(rec.encode()));
        self.identities.borrow_mut().insert(peer, rec);
    }

    /// `get` for the libsignal adapters: a storage failure is remembered (so [`Tx::map_err`]
    /// reports it) and surfaced to libsignal as an opaque error.
    async fn get_sig(&self, key: &RecordKey) -> SResult<Option<Vec<u8>>> {
        if let Some((_, pending)) = self.writes.borrow().iter().find(|(k, _)| k == key) {
            return Ok(pending.clone());
        }
        match self.storage.load(key).await {
            Ok(v) => Ok(v),
            Err(e) => {
                *self.failure.borrow_mut() = Some(e);
                Err(SignalProtocolError::InvalidState("storage", "load failed".into()))
            }
        }
    }
}

fn corrupt(what: &'static str) -> SignalProtocolError {
    SignalProtocolError::InvalidSessionStructure(what)
}

/// One store handle over a [`Tx`]; implements all of libsignal's store traits.
pub(crate) struct View<'t, 'a, S>(&'t Tx<'a, S>);

#[async_trait::async_trait(?Send)]
impl<S: Storage> IdentityKeyStore for View<'_, '_, S> {
    async fn get_identity_key_pair(&self) -> SResult<IdentityKeyPair> {
        Ok(self.0.local.key_pair)
    }

    async fn get_local_registration_id(&self) -> SResult<u32> {
        Ok(self.0.local.registration_id)
    }

    async fn save_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> SResult<IdentityChange> {
        let peer = DeviceAddress::from_signal(address);
        let stored = self.0.identity(&peer).await?;
        let new_key = identity.serialize();
        match stored {
            Some(rec) if *rec.key == *new_key => Ok(IdentityChange::NewOrUnchanged),
            Some(_) => {
                let rec = IdentityRecord { key: new_key.to_vec(), verified: false };
                self.0.put_identity(peer.clone(), rec);
                self.0.push_event(Event::IdentityChanged { peer });
                Ok(IdentityChange::ReplacedExisting)
            }
            None => {
                self.0
                    .put_identity(peer, IdentityRecord { key: new_key.to_vec(), verified: false });
                Ok(IdentityChange::NewOrUnchanged)
            }
        }
    }

    async fn is_trusted_identity(
        &self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
        _direction: Direction,
    ) -> SResult<bool> {
        match self.0.identity(&DeviceAddress::from_signal(address)).await? {
            None => Ok(true),
            Some(rec) => {
                // Trust on first use; a changed key is accepted (and reported as an event by
                // save_identity) unless the user verified the old one.
                Ok(rec.key == identity.serialize().as_ref() || !rec.verified)
            }
        }
    }

    async fn get_identity(&self, address: &ProtocolAddress) -> SResult<Option<IdentityKey>> {
        match self.0.identity(&DeviceAddress::from_signal(address)).await? {
            None => Ok(None),
            Some(rec) => Ok(Some(IdentityKey::decode(&rec.key)?)),
        }
    }
}

#[async_trait::async_trait(?Send)]
impl<S: Storage> SessionStore for View<'_, '_, S> {
    async fn load_session(&self, address: &ProtocolAddress) -> SResult<Option<SessionRecord>> {
        let peer = DeviceAddress::from_signal(address);
        if let Some(record) = self.0.sessions.borrow().get(&peer) {
            return Ok(Some(record.clone()));
        }
        if let Some(record) = self.0.local.sessions.borrow().get(&peer) {
            return Ok(Some(record.clone()));
        }
        match self.0.get_sig(&RecordKey::Session(peer.clone())).await? {
            None => Ok(None),
            Some(bytes) => {
                let record = SessionRecord::deserialize(&bytes)?;
                let mut cache = self.0.local.sessions.borrow_mut();
                if cache.len() < crate::account::SESSION_CACHE_MAX {
                    cache.insert(peer, record.clone());
                }
                Ok(Some(record))
            }
        }
    }

    async fn store_session(
        &mut self,
        address: &ProtocolAddress,
        record: &SessionRecord,
    ) -> SResult<()> {
        let peer = DeviceAddress::from_signal(address);
        self.0.put(RecordKey::Session(peer.clone()), Some(record.serialize()?));
        self.0.sessions.borrow_mut().insert(peer, record.clone());
        Ok(())
    }
}

#[async_trait::async_trait(?Send)]
impl<S: Storage> PreKeyStore for View<'_, '_, S> {
    async fn get_pre_key(&self, id: PreKeyId) -> SResult<PreKeyRecord> {
        match self.0.get_sig(&RecordKey::PreKey(id.into())).await? {
            None => Err(SignalProtocolError::InvalidPreKeyId),
            Some(bytes) => PreKeyRecord::deserialize(&bytes),
        }
    }

    async fn save_pre_key(&mut self, id: PreKeyId, record: &PreKeyRecord) -> SResult<()> {
        self.0.put(RecordKey::PreKey(id.into()), Some(record.serialize()?));
        Ok(())
    }

    async fn remove_pre_key(&mut self, id: PreKeyId) -> SResult<()> {
        self.0.put(RecordKey::PreKey(id.into()), None);
        Ok(())
    }
}

#[async_trait::async_trait(?Send)]
impl<S: Storage> SignedPreKeyStore for View<'_, '_, S> {
    async fn get_signed_pre_key(&self, id: SignedPreKeyId) -> SResult<SignedPreKeyRecord> {
        match self.0.get_sig(&RecordKey::SignedPreKey(id.into())).await? {
            None => Err(SignalProtocolError::InvalidSignedPreKeyId),
            Some(bytes) => SignedPreKeyRecord::deserialize(&bytes),
        }
    }

    async fn save_signed_pre_key(
        &mut self,
        id: SignedPreKeyId,
        record: &SignedPreKeyRecord,
    ) -> SResult<()> {
        self.0.put(RecordKey::SignedPreKey(id.into()), Some(record.serialize()?));
        Ok(())
    }
}

#[async_trait::async_trait(?Send)]
impl<S: Storage> KyberPreKeyStore for View<'_, '_, S> {
    async fn get_kyber_pre_key(&self, id: KyberPreKeyId) -> SResult<KyberPreKeyRecord> {
        match self.0.get_sig(&RecordKey::KyberPreKey(id.into())).await? {
            None => Err(SignalProtocolError::InvalidKyberPreKeyId),
            Some(bytes) => {
                let (_, record) = decode_kyber(&bytes).ok_or(corrupt("kyber pre-key"))?;
                KyberPreKeyRecord::deserialize(record)
            }
        }
    }

    async fn save_kyber_pre_key(
        &mut self,
        id: KyberPreKeyId,
        record: &KyberPreKeyRecord,
    ) -> SResult<()> {
        // libsignal itself never saves Kyber pre-keys; treat a save as a one-time key.
        let value = encode_kyber(KyberKind::OneTime, &record.serialize()?);
        self.0.put(RecordKey::KyberPreKey(id.into()), Some(value));
        Ok(())
    }

    async fn mark_kyber_pre_key_used(
        &mut self,
        id: KyberPreKeyId,
        ec_prekey_id: SignedPreKeyId,
        base_key: &PublicKey,
    ) -> SResult<()> {
        let key = RecordKey::KyberPreKey(id.into());
        let Some(bytes) = self.0.get_sig(&key).await? else {
            return Err(SignalProtocolError::InvalidKyberPreKeyId);
        };
        let (kind, _) = decode_kyber(&bytes).ok_or(corrupt("kyber pre-key"))?;
        match kind {
            KyberKind::OneTime => self.0.put(key, None),
            KyberKind::LastResort => {
                // "A last-resort pre-key should check whether the same combination of
                // pre-keys was used with the given base key before, and produce an error if
                // so." (libsignal, KyberPreKeyStore::mark_kyber_pre_key_used)
                let seen = RecordKey::KyberBaseKeySeen {
                    kyber: id.into(),
                    signed: ec_prekey_id.into(),
                    base_key: base_key.serialize().to_vec(),
                };
                if self.0.get_sig(&seen).await?.is_some() {
                    return Err(SignalProtocolError::InvalidMessage(
                        libsignal_protocol::CiphertextMessageType::PreKey,
                        "reused base key",
                    ));
                }
                self.0.put(seen, Some(Vec::new()));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait(?Send)]
impl<S: Storage> SenderKeyStore for View<'_, '_, S> {
    async fn store_sender_key(
        &mut self,
        sender: &ProtocolAddress,
        distribution_id: uuid::Uuid,
        record: &SenderKeyRecord,
    ) -> SResult<()> {
        let key = RecordKey::SenderKey {
            sender: DeviceAddress::from_signal(sender),
            distribution: *distribution_id.as_bytes(),
        };
        self.0.put(key, Some(record.serialize()?));
        Ok(())
    }

    async fn load_sender_key(
        &mut self,
        sender: &ProtocolAddress,
        distribution_id: uuid::Uuid,
    ) -> SResult<Option<SenderKeyRecord>> {
        let key = RecordKey::SenderKey {
            sender: DeviceAddress::from_signal(sender),
            distribution: *distribution_id.as_bytes(),
        };
        match self.0.get_sig(&key).await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(SenderKeyRecord::deserialize(&bytes)?)),
        }
    }
}

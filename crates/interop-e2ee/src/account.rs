//! [`Account`]: one device's Signal state over a [`Storage`], and every operation on it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use libsignal_protocol::{
    CiphertextMessage, Fingerprint, GenericSignedPreKey, IdentityKey, IdentityKeyPair, KeyPair,
    KyberPreKeyRecord, PreKeyRecord, PreKeySignalMessage, SenderKeyDistributionMessage,
    SenderKeyMessage, SessionRecord, SessionUsabilityRequirements, SignalMessage,
    SignedPreKeyRecord, Timestamp, kem,
};
use rand::{CryptoRng, Rng};

use crate::prekeys::{OneTimeKey, PreKeyPolicy, PreKeyUpload, SignedKey, next_id};
use crate::records::{self, IdentityRecord, KyberKind, PreKeyMeta};
use crate::store::{Arrival, Batch, DeviceAddress, RecordKey, Storage};
use crate::tx::{Finished, Tx};
use crate::{Bundle, Error, Result};

/// Something the user should be told about, produced by an operation and committed with it.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Event {
    /// The peer device's identity key differs from the one seen before (reinstall, new
    /// phone, or an attack): show "safety number changed" and offer to compare again.
    IdentityChanged {
        /// The device whose key changed.
        peer: DeviceAddress,
    },
}

/// The kind of an `enc` payload.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum EncKind {
    /// A PreKeySignalMessage: the first messages of a session, until the peer answers
    /// (`pkmsg`).
    PreKey,
    /// A SignalMessage on an established session (`msg`).
    Message,
    /// A SenderKeyMessage, group content (`skmsg`).
    SenderKey,
}

impl EncKind {
    /// The `type` attribute value of the `enc` element.
    pub fn as_str(self) -> &'static str {
        match self {
            EncKind::PreKey => "pkmsg",
            EncKind::Message => "msg",
            EncKind::SenderKey => "skmsg",
        }
    }

    /// Parses the `type` attribute value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pkmsg" => Some(EncKind::PreKey),
            "msg" => Some(EncKind::Message),
            "skmsg" => Some(EncKind::SenderKey),
            _ => None,
        }
    }
}

/// One encrypted payload for one device (or, for `SenderKey`, for a whole group).
#[derive(Clone, PartialEq, Eq)]
pub struct Enc {
    /// What kind of Signal message `ciphertext` is.
    pub kind: EncKind,
    /// The serialized libsignal message.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Enc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enc")
            .field("kind", &self.kind)
            .field("len", &self.ciphertext.len())
            .finish()
    }
}

/// This device's identity, loaded once when the account opens, and a cache of committed
/// sessions (deserialized), valid because the account is the storage's single writer.
pub(crate) struct LocalIdentity {
    pub address: DeviceAddress,
    pub key_pair: IdentityKeyPair,
    pub registration_id: u32,
    pub sessions: SessionCache,
    pub identities: RefCell<HashMap<DeviceAddress, IdentityRecord>>,
}

/// Committed sessions by peer, kept deserialized so an operation does not decode its session
/// from bytes again. Bounded: cleared when it holds [`SESSION_CACHE_MAX`] entries.
pub(crate) type SessionCache = RefCell<HashMap<DeviceAddress, SessionRecord>>;
pub(crate) const SESSION_CACHE_MAX: usize = 512;

/// One device's end-to-end encryption state: identity, pre-keys, sessions, sender keys, over
/// a [`Storage`].
///
/// Every method that changes state commits exactly one [`Batch`] (or nothing, on error),
/// except [`Account::decrypt`], which hands the batch back inside a [`Pending`] so the caller
/// commits it together with the message ([`Pending::commit`]).
///
/// The futures are not `Send` (libsignal's are not): drive an account on one thread, for
/// example with `futures::executor::block_on`, or from a tokio `LocalSet` / a dedicated
/// thread that owns it and receives requests over a channel (an "account actor").
pub struct Account<S> {
    storage: S,
    local: LocalIdentity,
}

impl<S> fmt::Debug for Account<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("device", &self.local.address.device())
            .finish_non_exhaustive()
    }
}

fn millis(now: SystemTime) -> Timestamp {
    let ms = now.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    Timestamp::from_epoch_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn sig_err(e: impl Into<libsignal_protocol::SignalProtocolError>) -> Error {
    crate::error::from_signal(e.into())
}

impl<S: Storage> Account<S> {
    /// Creates a new device identity in `storage` (which must be empty): identity key,
    /// registration id, signed pre-key, last-resort Kyber pre-key and `policy`'s targets of
    /// one-time keys. Returns the account and everything to upload.
    pub async fn create<R: Rng + CryptoRng>(
        mut storage: S,
        address: DeviceAddress,
        policy: &PreKeyPolicy,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<(Self, PreKeyUpload)> {
        if storage.load(&RecordKey::LocalIdentity).await?.is_some() {
            return Err(Error::InvalidArgument("storage already holds an account"));
        }
        let key_pair = IdentityKeyPair::generate(rng);
        let registration_id = rng.random_range(1..=16380);
        let local_record = records::encode_local(&address, registration_id, &key_pair);
        let local = LocalIdentity {
            address,
            key_pair,
            registration_id,
            sessions: SessionCache::default(),
            identities: RefCell::default(),
        };
        let mut meta = PreKeyMeta::default();
        let mut upload = {
            let tx = Tx::new(&storage, &local);
            tx.put(RecordKey::LocalIdentity, Some(local_record));
            let mut upload = base_upload(&local);
            upload.signed_prekey = Some(gen_signed(&tx, &local, &mut meta, now, rng)?);
            upload.kyber_last_resort =
                Some(gen_kyber(&tx, &local, &mut meta, KyberKind::LastResort, now, rng)?);
            meta.last_resort = upload.kyber_last_resort.as_ref().map_or(0, |k| k.id);
            tx.put(RecordKey::PreKeyMeta, Some(meta.encode()));
            storage.commit(tx.finish().batch).await?;
            upload
        };
        let mut account = Self { storage, local };
        if let Some(more) = account.replenish(0, 0, policy, now, rng).await? {
            upload.one_time = more.one_time;
            upload.kyber_one_time = more.kyber_one_time;
        }
        Ok((account, upload))
    }

    /// Opens the account stored in `storage` (after a restart).
    pub async fn open(storage: S) -> Result<Self> {
        let bytes = storage.load(&RecordKey::LocalIdentity).await?.ok_or(Error::NoAccount)?;
        let (address, registration_id, key_pair) =
            records::decode_local(&bytes).ok_or(Error::CorruptRecord("local identity"))?;
        let sessions = SessionCache::default();
        let identities = RefCell::default();
        Ok(Self {
            storage,
            local: LocalIdentity { address, key_pair, registration_id, sessions, identities },
        })
    }

    /// This device's address.
    pub fn address(&self) -> &DeviceAddress {
        &self.local.address
    }

    /// Changes this device's own address (a client creates its keys before the server assigns
    /// its account id, then sets the address it was given). Sessions with peers are unaffected.
    pub async fn set_address(&mut self, address: DeviceAddress) -> Result<()> {
        let record =
            records::encode_local(&address, self.local.registration_id, &self.local.key_pair);
        let batch =
            Batch { writes: vec![(RecordKey::LocalIdentity, Some(record))], arrivals: vec![] };
        self.storage.commit(batch).await?;
        self.local.address = address;
        Ok(())
    }

    /// The serialized identity public key (33 bytes).
    pub fn identity_key(&self) -> Vec<u8> {
        self.local.key_pair.identity_key().serialize().to_vec()
    }

    /// The registration id.
    pub fn registration_id(&self) -> u32 {
        self.local.registration_id
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Gives the storage back (to simulate a restart, or to close it).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Commits a finished transaction (plus `arrival`); on success the sessions it wrote become
    /// the cached committed state.
    async fn commit_finished(
        &mut self,
        finished: Finished,
        arrival: Option<Arrival>,
    ) -> Result<Vec<Event>> {
        let Finished { mut batch, events, sessions, identities } = finished;
        batch.arrivals.extend(arrival);
        self.storage.commit(batch).await?;
        let mut cache = self.local.sessions.borrow_mut();
        if cache.len() + sessions.len() > SESSION_CACHE_MAX {
            cache.clear();
        }
        cache.extend(sessions);
        let mut cache = self.local.identities.borrow_mut();
        if cache.len() + identities.len() > SESSION_CACHE_MAX {
            cache.clear();
        }
        cache.extend(identities);
        Ok(events)
    }

    async fn meta(&self) -> Result<PreKeyMeta> {
        let bytes = self.storage.load(&RecordKey::PreKeyMeta).await?;
        match bytes {
            Some(b) => PreKeyMeta::decode(&b).ok_or(Error::CorruptRecord("pre-key meta")),
            None => Ok(PreKeyMeta::default()),
        }
    }

    /// Tops up one-time pre-keys: `server_one_time` and `server_kyber` are the counts the
    /// server reports it still holds. Returns the keys to upload, or `None` when both counts
    /// are at or above the policy's thresholds.
    pub async fn replenish<R: Rng + CryptoRng>(
        &mut self,
        server_one_time: u32,
        server_kyber: u32,
        policy: &PreKeyPolicy,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<Option<PreKeyUpload>> {
        let ec = if server_one_time < policy.one_time_threshold {
            policy.one_time_target.saturating_sub(server_one_time)
        } else {
            0
        };
        let pq = if server_kyber < policy.kyber_threshold {
            policy.kyber_target.saturating_sub(server_kyber)
        } else {
            0
        };
        if ec == 0 && pq == 0 {
            return Ok(None);
        }
        let mut meta = self.meta().await?;
        let tx = Tx::new(&self.storage, &self.local);
        let mut upload = base_upload(&self.local);
        for _ in 0..ec {
            let id = next_id(&mut meta.next_prekey);
            let pair = KeyPair::generate(rng);
            let record = PreKeyRecord::new(id.into(), &pair);
            tx.put(RecordKey::PreKey(id), Some(record.serialize().map_err(sig_err)?));
            upload.one_time.push(OneTimeKey { id, public: pair.public_key.serialize().to_vec() });
        }
        for _ in 0..pq {
            upload.kyber_one_time.push(gen_kyber(
                &tx,
                &self.local,
                &mut meta,
                KyberKind::OneTime,
                now,
                rng,
            )?);
        }
        tx.put(RecordKey::PreKeyMeta, Some(meta.encode()));
        self.commit_finished(tx.finish(), None).await?;
        Ok(Some(upload))
    }

    /// Replaces the signed pre-key and the last-resort Kyber pre-key (do this periodically,
    /// for example weekly). The previous pair stays usable for messages already in flight;
    /// the pair before it is deleted.
    pub async fn rotate_signed_prekey<R: Rng + CryptoRng>(
        &mut self,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<PreKeyUpload> {
        let mut meta = self.meta().await?;
        let tx = Tx::new(&self.storage, &self.local);
        if meta.previous_signed != 0 {
            tx.put(RecordKey::SignedPreKey(meta.previous_signed), None);
        }
        if meta.previous_last_resort != 0 {
            tx.put(RecordKey::KyberPreKey(meta.previous_last_resort), None);
        }
        meta.previous_signed = meta.signed;
        meta.previous_last_resort = meta.last_resort;
        let mut upload = base_upload(&self.local);
        let signed = gen_signed(&tx, &self.local, &mut meta, now, rng)?;
        let kyber = gen_kyber(&tx, &self.local, &mut meta, KyberKind::LastResort, now, rng)?;
        meta.last_resort = kyber.id;
        upload.signed_prekey = Some(signed);
        upload.kyber_last_resort = Some(kyber);
        tx.put(RecordKey::PreKeyMeta, Some(meta.encode()));
        self.commit_finished(tx.finish(), None).await?;
        Ok(upload)
    }

    /// When the current signed pre-key was created: rotate
    /// ([`Account::rotate_signed_prekey`]) once it is older than the rotation period.
    pub async fn signed_prekey_created(&self) -> Result<SystemTime> {
        let meta = self.meta().await?;
        let bytes = self
            .storage
            .load(&RecordKey::SignedPreKey(meta.signed))
            .await?
            .ok_or(Error::CorruptRecord("current signed pre-key missing"))?;
        let record = SignedPreKeyRecord::deserialize(&bytes)
            .map_err(|_| Error::CorruptRecord("signed pre-key"))?;
        let ts = record.timestamp().map_err(sig_err)?;
        Ok(UNIX_EPOCH + std::time::Duration::from_millis(ts.epoch_millis()))
    }

    /// Whether a session with `peer` exists and can send at `now` (established with PQXDH
    /// and not stale).
    pub async fn has_session(&self, peer: &DeviceAddress, now: SystemTime) -> Result<bool> {
        match self.storage.load(&RecordKey::Session(peer.clone())).await? {
            None => Ok(false),
            Some(bytes) => {
                let record = SessionRecord::deserialize(&bytes)
                    .map_err(|_| Error::CorruptRecord("session"))?;
                record
                    .has_usable_sender_chain(now, SessionUsabilityRequirements::all())
                    .map_err(|_| Error::CorruptRecord("session"))
            }
        }
    }

    /// Of `peers`, those without a session: fetch their bundles and call
    /// [`Account::process_bundle`] before encrypting to them.
    pub async fn missing_sessions(
        &self,
        peers: &[DeviceAddress],
        now: SystemTime,
    ) -> Result<Vec<DeviceAddress>> {
        let mut out = Vec::new();
        for p in peers {
            if !self.has_session(p, now).await? {
                out.push(p.clone());
            }
        }
        Ok(out)
    }

    /// Starts a session with `peer` from its pre-key bundle (PQXDH). The first messages to it
    /// are `pkmsg` until it answers. Returns [`Event::IdentityChanged`] if its identity key
    /// differs from the one seen before.
    pub async fn process_bundle<R: Rng + CryptoRng>(
        &mut self,
        peer: &DeviceAddress,
        bundle: &Bundle,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<Vec<Event>> {
        if bundle.device != peer.device() {
            return Err(Error::InvalidArgument("bundle is for another device"));
        }
        let bundle = bundle.to_signal()?;
        let tx = Tx::new(&self.storage, &self.local);
        let address = peer.to_signal();
        libsignal_protocol::process_prekey_bundle(
            &address,
            &mut tx.view(),
            &mut tx.view(),
            &bundle,
            now,
            rng,
        )
        .await
        .map_err(|e| tx.map_err(e))?;
        self.commit_finished(tx.finish(), None).await
    }

    /// Encrypts `plaintext` for each of `peers` (which must all have sessions) and commits
    /// the advanced chains in one batch before returning the ciphertexts: a ciphertext never
    /// leaves without its state stored, so a restart cannot reuse a message key.
    pub async fn encrypt<R: Rng + CryptoRng>(
        &mut self,
        peers: &[DeviceAddress],
        plaintext: &[u8],
        now: SystemTime,
        rng: &mut R,
    ) -> Result<Vec<(DeviceAddress, Enc)>> {
        let tx = Tx::new(&self.storage, &self.local);
        let mut out = Vec::with_capacity(peers.len());
        for peer in peers {
            let message = libsignal_protocol::message_encrypt(
                plaintext,
                &peer.to_signal(),
                &mut tx.view(),
                &mut tx.view(),
                now,
                rng,
            )
            .await
            .map_err(|e| tx.map_err(e))?;
            let enc = match message {
                CiphertextMessage::PreKeySignalMessage(m) => {
                    Enc { kind: EncKind::PreKey, ciphertext: m.serialized().to_vec() }
                }
                CiphertextMessage::SignalMessage(m) => {
                    Enc { kind: EncKind::Message, ciphertext: m.serialized().to_vec() }
                }
                _ => return Err(Error::Signal("unexpected ciphertext type")),
            };
            out.push((peer.clone(), enc));
        }
        self.commit_finished(tx.finish(), None).await?;
        Ok(out)
    }

    /// Decrypts one payload from `sender`. Nothing is stored yet: the returned [`Pending`]
    /// holds the plaintext and the new state, which [`Pending::commit`] stores together with
    /// the message's [`Arrival`]. Dropping the `Pending` discards both (the message decrypts
    /// again if redelivered).
    ///
    /// A failed decrypt changes nothing: bad input never corrupts a session.
    pub async fn decrypt<R: Rng + CryptoRng>(
        &mut self,
        sender: &DeviceAddress,
        enc: &Enc,
        rng: &mut R,
    ) -> Result<Pending<'_, S>> {
        let address = sender.to_signal();
        let tx = Tx::new(&self.storage, &self.local);
        let result = match enc.kind {
            EncKind::PreKey => {
                let m = PreKeySignalMessage::try_from(enc.ciphertext.as_slice())
                    .map_err(crate::error::from_signal)?;
                libsignal_protocol::message_decrypt_prekey(
                    &m,
                    &address,
                    &mut tx.view(),
                    &mut tx.view(),
                    &mut tx.view(),
                    &tx.view(),
                    &mut tx.view(),
                    rng,
                )
                .await
            }
            EncKind::Message => {
                let m = SignalMessage::try_from(enc.ciphertext.as_slice())
                    .map_err(crate::error::from_signal)?;
                libsignal_protocol::message_decrypt_signal(
                    &m,
                    &address,
                    &mut tx.view(),
                    &mut tx.view(),
                    rng,
                )
                .await
            }
            EncKind::SenderKey => {
                libsignal_protocol::group_decrypt(&enc.ciphertext, &mut tx.view(), &address).await
            }
        };
        let plaintext = result.map_err(|e| tx.map_err(e))?;
        let group = match enc.kind {
            EncKind::SenderKey => SenderKeyMessage::try_from(enc.ciphertext.as_slice())
                .map(|m| *m.distribution_id().as_bytes())
                .ok(),
            _ => None,
        };
        let finished = tx.finish();
        Ok(Pending { account: self, sender: sender.clone(), plaintext, group, finished })
    }

    /// Archives the current session with `peer` (on a retry receipt, or when the user resets
    /// it): the next send needs a fresh bundle. Old states still decrypt late messages.
    pub async fn reset_session(&mut self, peer: &DeviceAddress) -> Result<()> {
        let key = RecordKey::Session(peer.clone());
        let Some(bytes) = self.storage.load(&key).await? else {
            return Ok(());
        };
        let mut record =
            SessionRecord::deserialize(&bytes).map_err(|_| Error::CorruptRecord("session"))?;
        record.archive_current_state().map_err(sig_err)?;
        let value = record.serialize().map_err(sig_err)?;
        self.local.sessions.borrow_mut().remove(peer);
        self.storage.commit(Batch { writes: vec![(key, Some(value))], arrivals: vec![] }).await?;
        Ok(())
    }

    async fn identity_record(&self, peer: &DeviceAddress) -> Result<Option<IdentityRecord>> {
        match self.storage.load(&RecordKey::Identity(peer.clone())).await? {
            None => Ok(None),
            Some(b) => IdentityRecord::decode(&b).map(Some).ok_or(Error::CorruptRecord("identity")),
        }
    }

    /// The identity key last seen for `peer` (33 bytes), if any.
    pub async fn peer_identity(&self, peer: &DeviceAddress) -> Result<Option<Vec<u8>>> {
        Ok(self.identity_record(peer).await?.map(|r| r.key))
    }

    /// Records that the user compared safety numbers with `peer` and they matched for
    /// `identity`. From now on a change of that key blocks messages
    /// ([`Error::UntrustedIdentity`]) until [`Account::approve_identity`].
    pub async fn verify_identity(&mut self, peer: &DeviceAddress, identity: &[u8]) -> Result<()> {
        match self.identity_record(peer).await? {
            Some(r) if r.key == identity => {}
            _ => return Err(Error::InvalidArgument("not the identity key on record")),
        }
        let rec = IdentityRecord { key: identity.to_vec(), verified: true };
        let writes = vec![(RecordKey::Identity(peer.clone()), Some(rec.encode()))];
        self.local.identities.borrow_mut().remove(peer);
        self.storage.commit(Batch { writes, arrivals: vec![] }).await?;
        Ok(())
    }

    /// Whether the user marked `peer`'s current identity key as verified.
    pub async fn is_verified(&self, peer: &DeviceAddress) -> Result<bool> {
        Ok(self.identity_record(peer).await?.is_some_and(|r| r.verified))
    }

    /// The user accepts that `peer`'s identity changed: clears the verified mark so the new
    /// key is accepted (and reported as [`Event::IdentityChanged`]) on the next message.
    pub async fn approve_identity(&mut self, peer: &DeviceAddress) -> Result<()> {
        let Some(mut rec) = self.identity_record(peer).await? else {
            return Ok(());
        };
        rec.verified = false;
        let writes = vec![(RecordKey::Identity(peer.clone()), Some(rec.encode()))];
        self.local.identities.borrow_mut().remove(peer);
        self.storage.commit(Batch { writes, arrivals: vec![] }).await?;
        Ok(())
    }

    /// The safety number (60 digits, Signal's displayable fingerprint, version 2, 5200
    /// iterations) between this account and `peer_account` with identity key
    /// `peer_identity`. Both users see the same digits.
    pub fn safety_number(&self, peer_account: &str, peer_identity: &[u8]) -> Result<String> {
        let remote = IdentityKey::decode(peer_identity)
            .map_err(|_| Error::InvalidArgument("not an identity key"))?;
        let fp = Fingerprint::new(
            2,
            5200,
            self.local.address.account().as_bytes(),
            self.local.key_pair.identity_key(),
            peer_account.as_bytes(),
            &remote,
        )
        .map_err(|_| Error::InvalidArgument("fingerprint input"))?;
        fp.display_string().map_err(|_| Error::Signal("fingerprint"))
    }

    /// The sender-key distribution message for this device in group `distribution` (creating
    /// the sender key on first use). Send it to every member device inside a 1:1 transport
    /// (`Transport.sender_key_distribution`).
    pub async fn sender_key_distribution<R: Rng + CryptoRng>(
        &mut self,
        distribution: [u8; 16],
        rng: &mut R,
    ) -> Result<Vec<u8>> {
        let tx = Tx::new(&self.storage, &self.local);
        let skdm = libsignal_protocol::create_sender_key_distribution_message(
            &self.local.address.to_signal(),
            uuid::Uuid::from_bytes(distribution),
            &mut tx.view(),
            rng,
        )
        .await
        .map_err(|e| tx.map_err(e))?;
        self.commit_finished(tx.finish(), None).await?;
        Ok(skdm.serialized().to_vec())
    }

    /// Encrypts group content with this device's sender key for `distribution`: one `skmsg`
    /// that every member decrypts. Commits the advanced chain before returning.
    pub async fn group_encrypt<R: Rng + CryptoRng>(
        &mut self,
        distribution: [u8; 16],
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<Enc> {
        let tx = Tx::new(&self.storage, &self.local);
        let m = libsignal_protocol::group_encrypt(
            &mut tx.view(),
            &self.local.address.to_signal(),
            uuid::Uuid::from_bytes(distribution),
            plaintext,
            rng,
        )
        .await
        .map_err(|e| tx.map_err(e))?;
        self.commit_finished(tx.finish(), None).await?;
        Ok(Enc { kind: EncKind::SenderKey, ciphertext: m.serialized().to_vec() })
    }
}

fn base_upload(local: &LocalIdentity) -> PreKeyUpload {
    PreKeyUpload {
        identity: local.key_pair.identity_key().serialize().to_vec(),
        registration_id: local.registration_id,
        ..Default::default()
    }
}

fn gen_signed<S: Storage, R: Rng + CryptoRng>(
    tx: &Tx<'_, S>,
    local: &LocalIdentity,
    meta: &mut PreKeyMeta,
    now: SystemTime,
    rng: &mut R,
) -> Result<SignedKey> {
    let id = next_id(&mut meta.next_signed);
    let pair = KeyPair::generate(rng);
    let public = pair.public_key.serialize().to_vec();
    let signature =
        local.key_pair.private_key().calculate_signature(&public, rng).map_err(sig_err)?.to_vec();
    let record = SignedPreKeyRecord::new(id.into(), millis(now), &pair, &signature);
    tx.put(RecordKey::SignedPreKey(id), Some(record.serialize().map_err(sig_err)?));
    meta.signed = id;
    Ok(SignedKey { id, public, signature })
}

fn gen_kyber<S: Storage, R: Rng + CryptoRng>(
    tx: &Tx<'_, S>,
    local: &LocalIdentity,
    meta: &mut PreKeyMeta,
    kind: KyberKind,
    now: SystemTime,
    rng: &mut R,
) -> Result<SignedKey> {
    let id = next_id(&mut meta.next_kyber);
    let pair = kem::KeyPair::generate(kem::KeyType::Kyber1024, rng);
    let public = pair.public_key.serialize().to_vec();
    let signature =
        local.key_pair.private_key().calculate_signature(&public, rng).map_err(sig_err)?.to_vec();
    let record = KyberPreKeyRecord::new(id.into(), millis(now), &pair, &signature);
    let value = records::encode_kyber(kind, &record.serialize().map_err(sig_err)?);
    tx.put(RecordKey::KyberPreKey(id), Some(value));
    Ok(SignedKey { id, public, signature })
}

/// A decrypted message whose state change is not stored yet.
///
/// Call [`Pending::commit`] once the plaintext is safe to accept; dropping it discards the
/// decryption (nothing was stored).
pub struct Pending<'a, S> {
    account: &'a mut Account<S>,
    sender: DeviceAddress,
    plaintext: Vec<u8>,
    group: Option<[u8; 16]>,
    finished: Finished,
}

impl<S> fmt::Debug for Pending<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("plaintext_len", &self.plaintext.len())
            .field("events", &self.finished.events)
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Pending<'_, S> {
    /// The decrypted bytes.
    pub fn plaintext(&self) -> &[u8] {
        &self.plaintext
    }

    /// The sending device.
    pub fn sender(&self) -> &DeviceAddress {
        &self.sender
    }

    /// The group (distribution id) of a sender-key message; `None` for 1:1.
    pub fn group(&self) -> Option<[u8; 16]> {
        self.group
    }

    /// Events the decryption caused (committed with it).
    pub fn events(&self) -> &[Event] {
        &self.finished.events
    }

    /// Applies a sender-key distribution message that arrived in this plaintext, in the same
    /// transaction.
    pub async fn process_sender_key_distribution(&mut self, skdm: &[u8]) -> Result<()> {
        let m = SenderKeyDistributionMessage::try_from(skdm).map_err(crate::error::from_signal)?;
        let finished = std::mem::take(&mut self.finished);
        let account = &*self.account;
        let tx = Tx::resume(&account.storage, &account.local, finished);
        let result = libsignal_protocol::process_sender_key_distribution_message(
            &self.sender.to_signal(),
            &m,
            &mut tx.view(),
        )
        .await
        .map_err(|e| tx.map_err(e));
        self.finished = tx.finish();
        result
    }

    /// Stores the new state, the events and `arrival` in one transaction.
    pub async fn commit(self, arrival: Option<Arrival>) -> Result<Vec<Event>> {
        self.account.commit_finished(self.finished, arrival).await
    }
}

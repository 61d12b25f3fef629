//! Conformance tests every [`Storage`] implementation must pass, and test fixtures (a fake
//! pre-key server). Enabled by the test-only feature `__test-suite`; not a stable API.
//!
//! interop-client runs the suite against its SQLite store:
//!
//! ```text
//! struct Sqlite { dir: tempfile::TempDir }
//! impl interop_e2ee::test_suite::Harness for Sqlite { /* fresh, reopen, arrivals */ }
//! // on a current-thread runtime or LocalSet (the futures are not Send):
//! interop_e2ee::test_suite::run_all(&mut Sqlite::new()).await;
//! ```

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use rand::{CryptoRng, Rng};

use crate::proto;
use crate::{
    Account, Arrival, Batch, Bundle, DeviceAddress, Error, Event, InMemoryStorage, OneTimeKey,
    PreKeyPolicy, PreKeyUpload, RecordKey, SignedKey, Storage,
};

/// How the suite makes, reopens and inspects stores of one implementation.
#[allow(async_fn_in_trait)]
pub trait Harness {
    /// The storage under test.
    type S: Storage;
    /// A new, empty store.
    async fn fresh(&mut self) -> Self::S;
    /// Closes `store` (dropping it, as a process exit would) and opens the same data again.
    async fn reopen(&mut self, store: Self::S) -> Self::S;
    /// The arrivals committed so far, in commit order.
    async fn arrivals(&mut self, store: &Self::S) -> Vec<Arrival>;
}

/// [`Harness`] for [`InMemoryStorage`] (reopening keeps the value: "the disk").
#[derive(Debug, Default)]
pub struct InMemoryHarness;

impl Harness for InMemoryHarness {
    type S = InMemoryStorage;
    async fn fresh(&mut self) -> InMemoryStorage {
        InMemoryStorage::new()
    }
    async fn reopen(&mut self, store: InMemoryStorage) -> InMemoryStorage {
        store
    }
    async fn arrivals(&mut self, store: &InMemoryStorage) -> Vec<Arrival> {
        store.arrivals().to_vec()
    }
}

/// A fixed instant for tests (2027-01-15).
pub fn test_now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Runs every conformance test. Panics (with a message naming the test) on the first failure.
pub async fn run_all<H: Harness>(h: &mut H) {
    records_round_trip(h).await;
    batches_apply_in_order_and_survive_reopen(h).await;
    conversation_survives_reopen(h).await;
}

/// Every kind of record key stores and loads its value, including an empty one.
pub async fn records_round_trip<H: Harness>(h: &mut H) {
    let a = DeviceAddress::new("acct-\u{e9}", 127).expect("valid");
    let keys = vec![
        RecordKey::LocalIdentity,
        RecordKey::PreKeyMeta,
        RecordKey::Session(a.clone()),
        RecordKey::Identity(a.clone()),
        RecordKey::PreKey(0xFF_FFFF),
        RecordKey::SignedPreKey(1),
        RecordKey::KyberPreKey(2),
        RecordKey::KyberBaseKeySeen { kyber: 2, signed: 1, base_key: vec![5; 33] },
        RecordKey::SenderKey { sender: a.clone(), distribution: [7; 16] },
    ];
    let mut s = h.fresh().await;
    for k in &keys {
        assert_eq!(s.load(k).await.expect("load"), None, "records_round_trip: fresh store");
    }
    let writes =
        keys.iter().enumerate().map(|(i, k)| (k.clone(), Some(vec![i as u8; i * 100]))).collect();
    s.commit(Batch { writes, arrivals: vec![] }).await.expect("commit");
    let s = h.reopen(s).await;
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            s.load(k).await.expect("load"),
            Some(vec![i as u8; i * 100]),
            "records_round_trip: {}",
            k.kind()
        );
    }
    // Keys that differ only in one component are distinct records.
    let other = RecordKey::Session(DeviceAddress::new("acct-\u{e9}", 126).expect("valid"));
    assert_eq!(s.load(&other).await.expect("load"), None, "records_round_trip: other device");
}

/// A later write to the same key in one batch wins; deletes apply; arrivals are kept in order.
pub async fn batches_apply_in_order_and_survive_reopen<H: Harness>(h: &mut H) {
    let mut s = h.fresh().await;
    let k = RecordKey::PreKey(1);
    let sender = DeviceAddress::new("peer", 1).expect("valid");
    let arrival = |id: &str| Arrival {
        sender: sender.clone(),
        message_id: id.into(),
        message: id.as_bytes().to_vec(),
        group: (id == "m2").then_some([9; 16]),
    };
    s.commit(Batch {
        writes: vec![(k.clone(), Some(vec![1])), (k.clone(), Some(vec![2]))],
        arrivals: vec![arrival("m1")],
    })
    .await
    .expect("commit");
    assert_eq!(s.load(&k).await.expect("load"), Some(vec![2]), "later write wins");
    s.commit(Batch { writes: vec![(k.clone(), None)], arrivals: vec![arrival("m2")] })
        .await
        .expect("commit");
    let s = h.reopen(s).await;
    assert_eq!(s.load(&k).await.expect("load"), None, "delete applies");
    let got = h.arrivals(&s).await;
    assert_eq!(got.len(), 2, "arrivals kept");
    assert_eq!(got[0], arrival("m1"), "arrivals in commit order, all fields");
    assert_eq!(got[1], arrival("m2"), "arrivals in commit order, all fields");
}

/// A conversation over this storage survives a reopen in the middle, and a message delivered
/// again after the reopen is reported as a duplicate.
pub async fn conversation_survives_reopen<H: Harness>(h: &mut H) {
    let mut rng = rand::rng();
    let now = test_now();
    let mut server = KeyServer::default();
    let (a_addr, b_addr) = (addr("alice", 1), addr("bob", 2));
    let policy = PreKeyPolicy::default();
    let (mut alice, up) = Account::create(h.fresh().await, a_addr.clone(), &policy, now, &mut rng)
        .await
        .expect("create alice");
    server.upload(&a_addr, up);
    let (mut bob, up) = Account::create(h.fresh().await, b_addr.clone(), &policy, now, &mut rng)
        .await
        .expect("create bob");
    server.upload(&b_addr, up);
    let bundle = server.bundle(&b_addr).expect("bundle");
    alice.process_bundle(&b_addr, &bundle, now, &mut rng).await.expect("process bundle");

    let mut sent = Vec::new();
    for i in 0..30 {
        let (from, to, from_addr, to_addr) = if i % 3 == 2 {
            (&mut bob, &mut alice, &b_addr, &a_addr)
        } else {
            (&mut alice, &mut bob, &a_addr, &b_addr)
        };
        let id = format!("m{i}");
        let encs = from
            .send(std::slice::from_ref(to_addr), text_transport(&id, "hello"), now, &mut rng)
            .await
            .expect("send");
        let enc = encs.into_iter().next().expect("one enc").1;
        let received = to.receive(from_addr, &enc, &mut rng).await.expect("receive");
        assert_eq!(received.message().expect("message").id, id);
        received.commit().await.expect("commit");
        sent.push((from_addr.clone(), to_addr.clone(), enc));
        if i == 14 {
            // Restart both.
            let s = h.reopen(alice.into_storage()).await;
            alice = Account::open(s).await.expect("reopen alice");
            let s = h.reopen(bob.into_storage()).await;
            bob = Account::open(s).await.expect("reopen bob");
            assert_eq!(alice.address(), &a_addr);
            // The message just before the restart, delivered again after it.
            let (from, _, enc) = &sent[13];
            match bob.receive(from, enc, &mut rng).await {
                Err(Error::Duplicate) => {}
                other => panic!("conversation_survives_reopen: after reopen gave {other:?}"),
            }
        }
    }
    // The last messages again (older ones fall outside libsignal's five kept receiver
    // chains and no longer decrypt at all): each is a duplicate now.
    for (from, to, enc) in &sent[sent.len() - 4..] {
        let acct = if *to == a_addr { &mut alice } else { &mut bob };
        match acct.receive(from, enc, &mut rng).await {
            Err(Error::Duplicate) => {}
            other => panic!("conversation_survives_reopen: redelivery gave {other:?}"),
        }
    }
    let arrivals = h.arrivals(bob.storage()).await;
    assert_eq!(arrivals.len(), 20, "bob's arrivals");
    assert!(arrivals.iter().all(|a| a.sender == a_addr));
}

/// Shorthand for a valid address.
pub fn addr(account: &str, device: u8) -> DeviceAddress {
    DeviceAddress::new(account, device).expect("valid test address")
}

/// A transport carrying one text message.
pub fn text_transport(id: &str, body: &str) -> proto::Transport {
    proto::Transport {
        message: Some(proto::Message {
            id: id.into(),
            timestamp_ms: 1,
            content: Some(proto::message::Content::Text(proto::Text { body: body.into() })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The body of a received text message, or `None` if it is not text.
pub fn text_of(message: &proto::Message) -> Option<&str> {
    match crate::content(message) {
        crate::Content::Text(t) => Some(&t.body),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct DeviceKeys {
    registration_id: u32,
    identity: Vec<u8>,
    signed: Option<SignedKey>,
    last_resort: Option<SignedKey>,
    one_time: Vec<OneTimeKey>,
    kyber: Vec<SignedKey>,
}

/// A fake pre-key service with the gatekeeper's rules: one-time keys are handed out once;
/// when none are left the bundle has no EC one-time key and the last-resort Kyber key.
#[derive(Debug, Default)]
pub struct KeyServer {
    devices: HashMap<DeviceAddress, DeviceKeys>,
}

impl KeyServer {
    /// Stores an upload (a re-registration with a new identity replaces everything).
    pub fn upload(&mut self, device: &DeviceAddress, up: PreKeyUpload) {
        let d = self.devices.entry(device.clone()).or_default();
        if d.identity != up.identity {
            *d = DeviceKeys::default();
        }
        d.identity = up.identity;
        d.registration_id = up.registration_id;
        if up.signed_prekey.is_some() {
            d.signed = up.signed_prekey;
        }
        if up.kyber_last_resort.is_some() {
            d.last_resort = up.kyber_last_resort;
        }
        d.one_time.extend(up.one_time);
        d.kyber.extend(up.kyber_one_time);
    }

    /// Takes a bundle for `device`.
    pub fn bundle(&mut self, device: &DeviceAddress) -> Option<Bundle> {
        let d = self.devices.get_mut(device)?;
        let one_time = (!d.one_time.is_empty()).then(|| d.one_time.remove(0));
        let kyber = if d.kyber.is_empty() { d.last_resort.clone()? } else { d.kyber.remove(0) };
        Some(Bundle {
            registration_id: d.registration_id,
            device: device.device(),
            identity: d.identity.clone(),
            signed_prekey: d.signed.clone()?,
            one_time,
            kyber,
        })
    }

    /// How many one-time (EC, Kyber) keys the server still holds for `device`.
    pub fn counts(&self, device: &DeviceAddress) -> (u32, u32) {
        self.devices.get(device).map_or((0, 0), |d| {
            (
                u32::try_from(d.one_time.len()).unwrap_or(u32::MAX),
                u32::try_from(d.kyber.len()).unwrap_or(u32::MAX),
            )
        })
    }
}

/// Creates an account on an in-memory store and uploads its keys to `server`.
pub async fn new_party<R: Rng + CryptoRng>(
    server: &mut KeyServer,
    address: DeviceAddress,
    policy: &PreKeyPolicy,
    rng: &mut R,
) -> Account<InMemoryStorage> {
    let (account, up) =
        Account::create(InMemoryStorage::new(), address.clone(), policy, test_now(), rng)
            .await
            .expect("create account");
    server.upload(&address, up);
    account
}

/// Whether `events` reports an identity change of `peer`.
pub fn identity_changed(events: &[Event], peer: &DeviceAddress) -> bool {
    events.iter().any(|e| matches!(e, Event::IdentityChanged { peer: p } if p == peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_storage_passes_the_suite() {
        futures::executor::block_on(run_all(&mut InMemoryHarness));
    }
}

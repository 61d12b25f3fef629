//! Durable storage of the gatekeeper, behind traits so that a multi-node backend (PostgreSQL)
//! can be added without touching the chat core.
//!
//! Delivery semantics this layer provides (docs/PROTOCOL.md, "Delivery"):
//! - [`MessageStore::submit`] returns only after the message is durably stored (fsync'd), so the
//!   gatekeeper may ack the sender right after it. One submission carries every per-device copy of
//!   one message (one `enc` per recipient device) and is stored all-or-nothing.
//! - A sender's retry of the same message (same sender device, same message id) is recognised and
//!   reported as [`SubmitOutcome::Duplicate`] without storing it twice.
//! - A copy is deleted only by [`MessageStore::ack`] from its recipient device; [`MessageStore::pending`]
//!   returns a device's copies in submission order.
//! - Per-device queues are capped ([`SubmitOutcome::QueueFull`]) and copies expire.

pub(crate) mod accounts;
pub mod postgres;
mod providers;
pub mod sqlite;

pub use providers::{ProviderRecord, ProviderStore};

pub use accounts::{
    AccountKind, AccountStore, Bundle, Enlisted, Identity, NewDevice, PrekeyCounts, PrekeyUpload,
    SignedPrekey, UploadedPrekey,
};

use std::future::Future;

/// One device of one account, by the gatekeeper-internal account id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddress {
    /// Gatekeeper-internal account id.
    pub account: String,
    /// Device number within the account.
    pub device: u32,
}

impl DeviceAddress {
    /// Convenience constructor.
    pub fn new(account: impl Into<String>, device: u32) -> Self {
        Self { account: account.into(), device }
    }
}

/// One message as submitted by its sender: one stanza per recipient device.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's message id (unique per sender device).
    pub message_id: String,
    /// `(recipient device, stanza bytes for that device)`.
    pub copies: Vec<(DeviceAddress, Vec<u8>)>,
    /// When the copies are dropped if still undelivered (ms since the Unix epoch).
    pub expires_at_ms: i64,
}

/// What became of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Stored durably; the sequence number of each copy, in the order of `copies`.
    Stored(Vec<i64>),
    /// The same sender device already submitted this message id; nothing was stored again.
    Duplicate,
    /// The queue of this recipient device is full; nothing was stored.
    QueueFull(DeviceAddress),
}

/// A stored copy waiting for its recipient device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Position in the store; increases with submission order.
    pub seq: i64,
    /// Who sent it.
    pub sender: DeviceAddress,
    /// The sender's message id.
    pub message_id: String,
    /// The stanza bytes for this device.
    pub stanza: Vec<u8>,
    /// When it was stored (ms since the Unix epoch).
    pub stored_at_ms: i64,
}

/// Limits the store enforces.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Maximum copies waiting for one device.
    pub max_per_device: u64,
    /// How long a sender's message id is remembered for de-duplication (ms).
    pub dedupe_window_ms: i64,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self { max_per_device: 10_000, dedupe_window_ms: 7 * 24 * 3600 * 1000 }
    }
}

/// Receives each copy a store has just stored durably, with the device it is for (see
/// [`MessageStore::feed_commits`]). Called on the store's writer: it must not block.
pub type CommitFeed = std::sync::Arc<dyn Fn(&DeviceAddress, Queued) + Send + Sync>;

/// A store operation already in the store's commit order; completes when it is durable (see
/// [`MessageStore::store_copies_queued`]).
pub type Queuing = std::pin::Pin<Box<dyn Future<Output = crate::Result<SubmitOutcome>> + Send>>;

/// The durable offline queue.
pub trait MessageStore: Send + Sync + 'static {
    /// Stores every copy of a message durably, or none. Returns after the data is on disk.
    fn submit(
        &self,
        submission: Submission,
        now_ms: i64,
    ) -> impl Future<Output = crate::Result<SubmitOutcome>> + Send;

    /// Copies waiting for `recipient` with `seq > after_seq`, oldest first, at most `limit`.
    fn pending(
        &self,
        recipient: &DeviceAddress,
        after_seq: i64,
        limit: u32,
    ) -> impl Future<Output = crate::Result<Vec<Queued>>> + Send;

    /// Deletes the copy `seq` of `recipient` after the device acked it. False if it was not
    /// there (already acked, expired, or another device's).
    fn ack(
        &self,
        recipient: &DeviceAddress,
        seq: i64,
    ) -> impl Future<Output = crate::Result<bool>> + Send;

    /// Stores copies of a message that was already accepted (some of its copies were
    /// delivered without being stored): like [`submit`](Self::submit) without the
    /// de-duplication check or record.
    fn store_copies(
        &self,
        submission: Submission,
        now_ms: i64,
    ) -> impl Future<Output = crate::Result<SubmitOutcome>> + Send {
        self.submit(submission, now_ms)
    }

    /// Like [`store_copies`](Self::store_copies), but the copies take their place in the
    /// store's commit order during this call, not when the returned future is first polled:
    /// copies queued by successive calls commit (and get sequence numbers) in call order, after
    /// everything the store accepted before. `None`: the store cannot promise that (the chat
    /// core then stores every copy before acking, as in a cluster).
    fn store_copies_queued(&self, submission: Submission, now_ms: i64) -> Option<Queuing> {
        let _ = (submission, now_ms);
        None
    }

    /// Like [`ack`](Self::ack), without waiting for the deletion to be durable or reporting
    /// whether the copy was there. A deletion lost in a crash only means the copy is delivered
    /// again, which clients de-duplicate; the caller is spared a commit's wait.
    fn ack_soon(
        &self,
        recipient: &DeviceAddress,
        seq: i64,
    ) -> impl Future<Output = crate::Result<()>> + Send {
        async move { self.ack(recipient, seq).await.map(|_| ()) }
    }

    /// Waits until every operation this store accepted before the call is durable, the
    /// [`ack_soon`](Self::ack_soon) ones included. A new session settles before it reads its
    /// queue, so that a device reconnecting right after acking is not sent the copy again.
    fn settle(&self) -> impl Future<Output = crate::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Asks the store to hand every copy it stores to `feed` right after the commit, each
    /// device's copies in increasing sequence order, so that live sessions need not read them
    /// back. False when the backend cannot promise that order (or a feed is already set): the
    /// caller then reads the queues ([`pending`](Self::pending)) as usual.
    fn feed_commits(&self, feed: CommitFeed) -> bool {
        let _ = feed;
        false
    }

    /// How many copies wait for `recipient`.
    fn depth(&self, recipient: &DeviceAddress) -> impl Future<Output = crate::Result<u64>> + Send;

    /// Drops copies whose expiry has passed and forgets old de-duplication entries. Returns the
    /// number of copies dropped.
    fn expire(&self, now_ms: i64) -> impl Future<Output = crate::Result<u64>> + Send;
}

/// The behaviour every [`MessageStore`] backend must show; each backend's tests run it.
#[cfg(test)]
pub(crate) mod suite {
    use super::*;

    fn sub(sender: &DeviceAddress, id: &str, to: &[DeviceAddress]) -> Submission {
        Submission {
            sender: sender.clone(),
            message_id: id.to_owned(),
            copies: to
                .iter()
                .map(|d| (d.clone(), format!("{id}->{}", d.device).into_bytes()))
                .collect(),
            expires_at_ms: 10_000,
        }
    }

    pub async fn fan_out_order_ack(store: &impl MessageStore) {
        let alice = DeviceAddress::new("a", 1);
        let bob1 = DeviceAddress::new("b", 1);
        let bob2 = DeviceAddress::new("b", 2);
        for i in 0..5 {
            let out = store
                .submit(sub(&alice, &format!("m{i}"), &[bob1.clone(), bob2.clone()]), 0)
                .await
                .unwrap();
            assert!(matches!(out, SubmitOutcome::Stored(ref s) if s.len() == 2), "{out:?}");
        }
        let p1 = store.pending(&bob1, 0, 100).await.unwrap();
        let ids: Vec<_> = p1.iter().map(|q| q.message_id.as_str()).collect();
        assert_eq!(ids, ["m0", "m1", "m2", "m3", "m4"]);
        assert_eq!(p1[0].stanza, b"m0->1");
        assert_eq!(p1[0].sender, alice);
        assert!(p1.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(store.pending(&bob2, 0, 100).await.unwrap()[0].stanza, b"m0->2");
        // Paging.
        let page = store.pending(&bob1, p1[1].seq, 2).await.unwrap();
        assert_eq!(page.iter().map(|q| q.message_id.as_str()).collect::<Vec<_>>(), ["m2", "m3"]);
        // Ack deletes only that device's copy, once.
        assert!(store.ack(&bob1, p1[0].seq).await.unwrap());
        assert!(!store.ack(&bob1, p1[0].seq).await.unwrap());
        assert!(!store.ack(&bob2, p1[0].seq).await.unwrap(), "bob2's copies have other seqs");
        assert_eq!(store.depth(&bob1).await.unwrap(), 4);
        assert_eq!(store.depth(&bob2).await.unwrap(), 5);
    }

    pub async fn retries_are_deduplicated(store: &impl MessageStore) {
        let alice = DeviceAddress::new("a", 1);
        let alice2 = DeviceAddress::new("a", 2);
        let bob = DeviceAddress::new("b", 1);
        assert!(matches!(
            store.submit(sub(&alice, "x", std::slice::from_ref(&bob)), 0).await.unwrap(),
            SubmitOutcome::Stored(_)
        ));
        assert_eq!(
            store.submit(sub(&alice, "x", std::slice::from_ref(&bob)), 1).await.unwrap(),
            SubmitOutcome::Duplicate
        );
        // Still a duplicate after the recipient acked it: the sender may retry late.
        let seq = store.pending(&bob, 0, 10).await.unwrap()[0].seq;
        assert!(store.ack(&bob, seq).await.unwrap());
        assert_eq!(
            store.submit(sub(&alice, "x", std::slice::from_ref(&bob)), 2).await.unwrap(),
            SubmitOutcome::Duplicate
        );
        // The same id from another device of the same account is another message.
        assert!(matches!(
            store.submit(sub(&alice2, "x", std::slice::from_ref(&bob)), 3).await.unwrap(),
            SubmitOutcome::Stored(_)
        ));
        assert_eq!(store.depth(&bob).await.unwrap(), 1);
    }

    pub async fn full_queue_refuses_whole_submission(store: &impl MessageStore, cap: u64) {
        let alice = DeviceAddress::new("a", 1);
        let bob = DeviceAddress::new("b", 1);
        let carol = DeviceAddress::new("c", 1);
        for i in 0..cap {
            let out = store
                .submit(sub(&alice, &format!("f{i}"), std::slice::from_ref(&bob)), 0)
                .await
                .unwrap();
            assert!(matches!(out, SubmitOutcome::Stored(_)));
        }
        let out =
            store.submit(sub(&alice, "over", &[carol.clone(), bob.clone()]), 0).await.unwrap();
        assert_eq!(out, SubmitOutcome::QueueFull(bob.clone()));
        assert_eq!(store.depth(&carol).await.unwrap(), 0, "all-or-nothing");
        assert_eq!(store.depth(&bob).await.unwrap(), cap);
        // Not remembered as submitted: a retry after the queue drained is stored.
        let seq = store.pending(&bob, 0, 1).await.unwrap()[0].seq;
        store.ack(&bob, seq).await.unwrap();
        let out =
            store.submit(sub(&alice, "over", &[carol.clone(), bob.clone()]), 0).await.unwrap();
        assert!(matches!(out, SubmitOutcome::Stored(_)), "{out:?}");
    }

    pub async fn expiry_drops_old_copies(store: &impl MessageStore) {
        let alice = DeviceAddress::new("a", 1);
        let bob = DeviceAddress::new("b", 1);
        let mut early = sub(&alice, "early", std::slice::from_ref(&bob));
        early.expires_at_ms = 100;
        let mut late = sub(&alice, "late", std::slice::from_ref(&bob));
        late.expires_at_ms = 1_000;
        store.submit(early, 0).await.unwrap();
        store.submit(late, 0).await.unwrap();
        assert_eq!(store.expire(500).await.unwrap(), 1);
        let left = store.pending(&bob, 0, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].message_id, "late");
        assert_eq!(store.depth(&bob).await.unwrap(), 1);
    }
}

//! The gatekeeper's chat core: live sessions, message and receipt routing, durable delivery.
//!
//! No sockets here: a connection task authenticates a device, calls [`Chat::connect`], then
//! loops over two things, in any order (both are cancel-safe):
//!
//! ```text
//!   stanza from the device ──▶ Chat::handle(&mut session, node) ──▶ replies (acks) to send
//!   Chat::next(&mut session) ──▶ Outbound::Stanza(bytes) to send | Outbound::Close(condition)
//! ```
//!
//! Delivery semantics (docs/PROTOCOL.md, "Delivery"):
//! - A message is acked to its sender only after every per-device copy is stored durably
//!   ([`MessageStore::submit`]); a sender's retry of the same id is acked as `duplicate`.
//! - Every copy, live recipient or not, goes through the store: a device's session reads its
//!   queue in sequence order whenever it is nudged, so live and offline delivery are one path,
//!   in order, and everything not yet acked is sent again after a reconnect.
//! - A copy is deleted only when its device acks it (after persisting it); clients
//!   de-duplicate by message id.
//! - A device with no live session gets a wake-up through the offline hook (push).
//! - Chat states are live only, never stored.
//! - One live session per device: a new one closes the old one with `conflict`.
//!
//! Several nodes ([`crate::cluster`], when the gatekeeper has a `redis_url`): each node keeps
//! its own sessions here; a copy stored for a device live on another node is announced to that
//! node (Redis pub/sub), whose session then reads it from the shared store, so delivery stays
//! "from the store, in sequence order" and a lost announcement only delays it (every node
//! re-reads its live sessions' queues every few seconds). A device is live on one node of the
//! cluster at a time (a lease with a fencing token); a session that lost its lease writes
//! nothing more ([`Handled::Stale`]).

use std::collections::VecDeque;

/// The routing path's maps: foldhash, seeded randomly per process.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use interop_stanza::stanza::{
    Ack, AckClass, ChatState, Message, Presence, Receipt, ReceiptType, StreamCondition,
};
use interop_stanza::{Node, binary};
use tokio::sync::{Notify, mpsc};

use crate::address::Jid;
use crate::cluster::Cluster;
use crate::store::{
    AccountKind, AccountStore, DeviceAddress, MessageStore, Queued, Submission, SubmitOutcome,
};
use crate::{Error, Result};

/// Chat core settings.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// How long an undelivered copy is kept (ms).
    pub message_ttl_ms: i64,
    /// Copies read from the store per batch.
    pub fetch_batch: u32,
    /// Live-only stanzas (chat states) buffered per session before new ones are dropped.
    pub live_buffer: usize,
    /// Hand copies for live devices straight to their sessions, storing them only when they
    /// are not acked in time (single node with a store that feeds its commits; see
    /// [`Chat::handle`]). False: every copy is stored before the sender is acked.
    pub direct_delivery: bool,
    /// How long a copy handed straight to a live device waits for the device's ack before it is
    /// stored instead (the sender is acked once every copy is acked or stored).
    pub direct_ack_wait: std::time::Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            message_ttl_ms: 30 * 24 * 3600 * 1000,
            fetch_batch: 64,
            live_buffer: 64,
            direct_delivery: true,
            direct_ack_wait: std::time::Duration::from_secs(1),
        }
    }
}

/// Called for every device that was sent something while it had no live session.
pub type OfflineHook = Arc<dyn Fn(DeviceAddress) + Send + Sync>;

/// What a session's owner must send next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// An encoded stanza.
    Stanza(Vec<u8>),
    /// Send `stream:error` with this condition and close the connection.
    Close(StreamCondition),
}

/// The outcome of [`Chat::handle`].
#[derive(Debug)]
pub enum Handled {
    /// The chat core handled it; send these replies.
    Replies(Vec<Node>),
    /// Not a chat stanza (iq and others): another service handles it.
    NotMine(Node),
    /// Cluster mode: this session no longer holds its device's lease (a newer login elsewhere
    /// took it); the stanza was refused and the connection must close with `conflict`.
    Stale,
}

/// What reaches a session through its channel.
#[derive(Debug)]
enum Item {
    /// Live-only stanzas and close requests.
    Out(Outbound),
    /// A copy the store just committed for this device (the commit feed).
    Copy(Box<Queued>),
    /// A copy handed over without being stored.
    Direct(Arc<DirectCopy>),
}

// Boxed variants keep `Item` small: every session's channel allocates its first block of 32
// slots up front, and that is memory an idle connection holds.
const _: () = assert!(std::mem::size_of::<Item>() <= 32);

/// A copy handed to a live session without being stored. Shared by the session (channel, then
/// `inflight`), its device's [`Lane`] and the message's waiter; whichever of "the device acked
/// it" and "it must be stored" comes first decides its fate ([`DirectCopy::state`]).
#[derive(Debug)]
struct DirectCopy {
    recipient: DeviceAddress,
    sender: DeviceAddress,
    key: String,
    stanza: Vec<u8>,
    now_ms: i64,
    expires_at_ms: i64,
    /// [`PENDING`], [`ACKED`] or [`STORING`].
    state: std::sync::atomic::AtomicU8,
    /// In a session's channel already; false while its lane holds it back (see [`Lane`]).
    handed: std::sync::atomic::AtomicBool,
    message: Arc<Waiting>,
}

const PENDING: u8 = 0;
const ACKED: u8 = 1;
const STORING: u8 = 2;

impl DirectCopy {
    /// The device acked it: done, unless it is being stored already (then the store's commit
    /// completes it).
    fn acked(&self) {
        if self.state.compare_exchange(PENDING, ACKED, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.message.resolve();
        }
    }

    /// Claims it for storing; false when it was acked or claimed already.
    fn claim(&self) -> bool {
        self.state.compare_exchange(PENDING, STORING, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn pending(&self) -> bool {
        self.state.load(Ordering::Acquire) == PENDING
    }
}

/// One message on the direct path: how many of its copies are not yet acked or stored, and
/// whether storing one failed.
#[derive(Debug, Default)]
struct Waiting {
    left: AtomicUsize,
    /// [`STORED_OK`], [`STORE_FULL`] or [`STORE_FAILED`]: the worst outcome of its stores.
    outcome: std::sync::atomic::AtomicU8,
    notify: Notify,
}

const STORED_OK: u8 = 0;
const STORE_FULL: u8 = 1;
const STORE_FAILED: u8 = 2;

impl Waiting {
    fn resolve(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.notify.notify_one();
        }
    }

    fn done(&self) -> bool {
        self.left.load(Ordering::Acquire) == 0
    }
}

/// One device's direct copies, in the order they were handed to its sessions, until each is
/// acked or stored, and how many stores for the device are still on their way to disk.
///
/// Order: a device must get each sender's messages in send order, and the queue it reads after
/// a reconnect must hold them in that order too. Copies handed over sit in the session's
/// channel in hand-off order; a copy that has to be stored (not acked in time, session gone,
/// channel full) is stored together with every still-pending copy handed before it, in lane
/// order, through the store's commit order ([`MessageStore::store_copies_queued`]); while any
/// store for the device is on its way, later copies are held back in the lane and handed over
/// once those stores are durable (and fed to the session), so a copy handed over never
/// overtakes a stored one, and a device that needed one store is not kept on the stored path.
#[derive(Debug, Default)]
struct Lane {
    log: VecDeque<Arc<DirectCopy>>,
    /// Stores for the device queued and not yet durable.
    storing: usize,
    /// Copies of `log` held back (pending, not handed over).
    held: usize,
}

impl Lane {
    fn prune(&mut self) {
        while self.log.front().is_some_and(|c| !c.pending()) {
            self.log.pop_front();
        }
    }

    fn idle(&self) -> bool {
        self.log.is_empty() && self.storing == 0
    }
}

/// Direct copies a lane holds before further copies for its device are stored instead.
const MAX_LANE: usize = 1024;

/// What a session sent and its device has not acked yet.
#[derive(Debug)]
enum Unacked {
    /// A stored copy: its seq.
    Stored(i64),
    /// A copy handed over directly.
    Direct(Arc<DirectCopy>),
}

/// Messages of one session on the direct path at once, and their bytes: beyond either, a
/// message is refused with `rate-limited` (bounds what a fast sender makes the server hold).
const MAX_DIRECT_PER_SESSION: usize = 256;
const MAX_DIRECT_BYTES_PER_SESSION: usize = 8 << 20;

/// Sender message keys recently accepted on the direct path (which stores no de-duplication
/// record): a retry among them is answered `duplicate`. Bounded; a retry older than that (or
/// after a restart) is delivered again, and clients de-duplicate by message id.
#[derive(Debug, Default)]
struct Recent {
    set: HashSet<(DeviceAddress, String)>,
    order: VecDeque<(DeviceAddress, String)>,
}

const RECENT_KEYS: usize = 65_536;

impl Recent {
    /// False if `key` from `sender` is already there.
    fn insert(&mut self, sender: &DeviceAddress, key: &str) -> bool {
        let k = (sender.clone(), key.to_owned());
        if self.set.contains(&k) {
            return false;
        }
        if self.order.len() >= RECENT_KEYS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(k.clone());
        self.order.push_back(k);
        true
    }

    fn remove(&mut self, sender: &DeviceAddress, key: &str) {
        let k = (sender.clone(), key.to_owned());
        if self.set.remove(&k) {
            self.order.retain(|o| *o != k);
        }
    }
}

struct Live {
    id: u64,
    nudge: Arc<Notify>,
    tx: mpsc::Sender<Item>,
    /// A fed copy did not fit in the channel: later copies are not fed either (they would
    /// overtake it) until the session has read its queue from the store again.
    gap: bool,
    /// Cluster mode: the fencing token of this session's device lease (`None`: not leased, e.g.
    /// Redis was unreachable at login; the heartbeat takes the lease when it can).
    lease: Option<u64>,
}

/// This node's live sessions, by device. The chat core and the cluster layer
/// ([`crate::cluster`]) share it: the cluster layer nudges sessions on behalf of other nodes,
/// refreshes their leases and closes the ones whose lease another node took.
#[derive(Default)]
pub struct LiveSessions {
    map: Mutex<HashMap<DeviceAddress, Live>>,
}

impl std::fmt::Debug for LiveSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSessions").field("live", &self.len()).finish()
    }
}

/// A live session as the cluster layer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveEntry {
    pub device: DeviceAddress,
    pub id: u64,
    pub lease: Option<u64>,
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceAddress, Live>> {
        self.map.lock().expect("live lock is never poisoned")
    }

    /// How many sessions are live on this node.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is live on this node.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Wakes `device`'s session (it reads its queue). False if it has none here.
    pub(crate) fn nudge(&self, device: &DeviceAddress) -> bool {
        match self.lock().get(device) {
            Some(l) => {
                l.nudge.notify_one();
                true
            }
            None => false,
        }
    }

    /// Wakes every session: each reads its queue again.
    pub(crate) fn nudge_all(&self) {
        for l in self.lock().values() {
            l.nudge.notify_one();
        }
    }

    /// Every live session with its lease.
    pub(crate) fn snapshot(&self) -> Vec<LiveEntry> {
        self.lock()
            .iter()
            .map(|(d, l)| LiveEntry { device: d.clone(), id: l.id, lease: l.lease })
            .collect()
    }

    /// Records the lease of session `id` (if it is still the device's live session).
    pub(crate) fn set_lease(&self, device: &DeviceAddress, id: u64, token: u64) {
        if let Some(l) = self.lock().get_mut(device).filter(|l| l.id == id) {
            l.lease = Some(token);
        }
    }

    /// The lease of session `id`: `None` when it is no longer the device's live session here.
    pub(crate) fn lease_of(&self, device: &DeviceAddress, id: u64) -> Option<Option<u64>> {
        self.lock().get(device).filter(|l| l.id == id).map(|l| l.lease)
    }

    /// Tells `device`'s session to close with `condition` when `which` holds for it, and
    /// forgets it at once: from now on the device is not live here (copies for it are routed
    /// to where it is), even while the connection is still closing.
    pub(crate) fn close_if(
        &self,
        device: &DeviceAddress,
        condition: StreamCondition,
        which: impl Fn(u64, Option<u64>) -> bool,
    ) -> bool {
        let mut live = self.lock();
        if !live.get(device).is_some_and(|l| which(l.id, l.lease)) {
            return false;
        }
        if let Some(l) = live.remove(device) {
            // The connection may be stuck; it learns on its next `next`.
            let _ = l.tx.try_send(Item::Out(Outbound::Close(condition)));
            l.nudge.notify_one();
        }
        true
    }

    /// Hands a live-only stanza to `device`'s session, if it has one here and room for it.
    pub(crate) fn send_live(&self, device: &DeviceAddress, stanza: Vec<u8>) {
        if let Some(l) = self.lock().get(device) {
            let _ = l.tx.try_send(Item::Out(Outbound::Stanza(stanza)));
        }
    }

    /// Whether `device` has a live session here.
    fn contains(&self, device: &DeviceAddress) -> bool {
        self.lock().contains_key(device)
    }

    /// The commit feed: hands a just-stored copy to its device's live session, if it has one
    /// here. A copy that does not fit opens a gap: the session is nudged to read its queue, and
    /// copies are not fed to it until it has started that read (so none overtakes another).
    fn feed(&self, device: &DeviceAddress, copy: Queued) {
        let mut live = self.lock();
        let Some(l) = live.get_mut(device) else { return };
        if l.gap {
            return;
        }
        if l.tx.try_send(Item::Copy(Box::new(copy))).is_err() {
            l.gap = true;
            l.nudge.notify_one();
        }
    }

    /// Session `id` is about to read its queue: fed copies may flow again.
    fn close_gap(&self, device: &DeviceAddress, id: u64) {
        if let Some(l) = self.lock().get_mut(device).filter(|l| l.id == id) {
            l.gap = false;
        }
    }

    /// Tells every live session of `account` to close with `condition`.
    pub(crate) fn close_account(&self, account: &str, condition: StreamCondition) {
        for (_, l) in self.lock().iter().filter(|(d, _)| d.account == account) {
            let _ = l.tx.try_send(Item::Out(Outbound::Close(condition)));
            l.nudge.notify_one();
        }
    }
}

/// One device's live session.
pub struct Session {
    /// The device.
    pub device: DeviceAddress,
    /// Its address as peers see it.
    pub jid: Jid,
    id: u64,
    read_receipts: bool,
    nudge: Arc<Notify>,
    live: mpsc::Receiver<Item>,
    dirty: bool,
    last_sent: i64,
    buffer: VecDeque<Queued>,
    /// (sender device, stored key) -> what this session sent and the device has not acked yet.
    inflight: HashMap<(DeviceAddress, String), Unacked>,
    /// This session's own channel: deferred acks to its device come back through it.
    own: mpsc::Sender<Item>,
    /// Messages of this session on the direct path, and their bytes.
    direct: Arc<AtomicUsize>,
    direct_bytes: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The chat core, shared by all connections.
pub struct Chat<S> {
    store: Arc<S>,
    config: ChatConfig,
    live: Arc<LiveSessions>,
    next_id: AtomicU64,
    offline: Option<OfflineHook>,
    cluster: Option<Arc<Cluster>>,
    /// The store feeds committed copies to live sessions ([`MessageStore::feed_commits`]):
    /// a live recipient is not nudged to read them back, and copies for live devices are handed
    /// over directly (stored only if not acked in time).
    fed: bool,
    recent: Arc<Mutex<Recent>>,
    /// Messages whose sender ack waits on direct copies, over all sessions.
    direct_pending: Arc<AtomicUsize>,
    /// Per device, its direct copies not yet acked or stored (see [`Lane`]).
    lanes: Lanes<S>,
}

impl<S> std::fmt::Debug for Chat<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The key a stanza is stored under (unique per sender device): message ids as they are,
/// receipts prefixed with their type so that a delivery and a read receipt for the same message
/// are two stanzas.
fn receipt_key(kind: ReceiptType, id: &str) -> String {
    format!("r:{}:{id}", kind.as_str())
}

fn ack_to(id: &str, class: AckClass) -> Ack {
    Ack::new(id, class)
}

/// The per-device lanes and what storing from them needs (shared with the waiter tasks).
struct Lanes<S> {
    store: Arc<S>,
    live: Arc<LiveSessions>,
    offline: Option<OfflineHook>,
    /// Locked after `live` when both are needed.
    map: Arc<Mutex<HashMap<DeviceAddress, Lane>>>,
}

impl<S> Clone for Lanes<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            live: Arc::clone(&self.live),
            offline: self.offline.clone(),
            map: Arc::clone(&self.map),
        }
    }
}

impl<S: MessageStore> Lanes<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceAddress, Lane>> {
        self.map.lock().expect("lanes lock is never poisoned")
    }

    /// Stores `device`'s pending direct copies in lane order, up to and including `upto` (all
    /// of them when `None`), each through the store's commit order. `lanes` locked (which keeps
    /// hand-offs to the device out meanwhile).
    fn store_lane(
        &self,
        lanes: &mut HashMap<DeviceAddress, Lane>,
        device: &DeviceAddress,
        upto: Option<&Arc<DirectCopy>>,
        why: &'static str,
    ) {
        let Some(lane) = lanes.get_mut(device) else { return };
        let log = std::mem::take(&mut lane.log);
        let mut rest = VecDeque::new();
        let mut reached = false;
        for copy in log {
            if reached {
                rest.push_back(copy);
                continue;
            }
            reached = upto.is_some_and(|u| Arc::ptr_eq(u, &copy));
            if copy.claim() {
                if !copy.handed.load(Ordering::Acquire) {
                    lane.held -= 1;
                }
                metrics::counter!("interop_copies_direct_fallback_total", "reason" => why)
                    .increment(1);
                let submission = Submission {
                    sender: copy.sender.clone(),
                    message_id: copy.key.clone(),
                    copies: vec![(copy.recipient.clone(), copy.stanza.clone())],
                    expires_at_ms: copy.expires_at_ms,
                };
                let queued = self.store.store_copies_queued(submission, copy.now_ms);
                lane.storing += 1;
                self.complete_store(queued, device.clone(), Arc::clone(&copy.message));
            }
        }
        lane.log = rest;
        lane.prune();
        if lane.idle() {
            lanes.remove(device);
        }
    }

    /// Hands `device`'s held copies over in lane order, now that no store for it is on its way;
    /// what does not fit is stored (with everything still pending before it). `live` and the
    /// lanes locked.
    fn release(
        &self,
        live: &mut HashMap<DeviceAddress, Live>,
        map: &mut HashMap<DeviceAddress, Lane>,
        device: &DeviceAddress,
    ) {
        let Some(lane) = map.get_mut(device) else { return };
        let mut blocked = false;
        if let Some(l) = live.get_mut(device).filter(|l| !l.gap) {
            for copy in &lane.log {
                if !copy.pending() || copy.handed.load(Ordering::Acquire) {
                    continue;
                }
                if l.tx.try_send(Item::Direct(Arc::clone(copy))).is_err() {
                    l.gap = true;
                    l.nudge.notify_one();
                    blocked = true;
                    break;
                }
                copy.handed.store(true, Ordering::Release);
                lane.held -= 1;
            }
        } else {
            blocked = true;
        }
        if blocked {
            self.store_lane(map, device, None, "overflow");
        } else {
            lane.prune();
            if lane.idle() {
                map.remove(device);
            }
        }
    }

    /// Waits for a queued store of one copy (spawned), then tells its message, wakes the device
    /// if it has no session, and lets `device`'s lane hand copies over again.
    fn complete_store(
        &self,
        queued: Option<crate::store::Queuing>,
        device: DeviceAddress,
        message: Arc<Waiting>,
    ) {
        let lanes = self.clone();
        let live = Arc::clone(&self.live);
        let offline = self.offline.clone();
        tokio::spawn(async move {
            let outcome = match queued {
                Some(q) => q.await,
                None => Err(Error::Storage("the store cannot queue direct copies".into())),
            };
            let code = match outcome {
                Ok(SubmitOutcome::Stored(_)) => {
                    metrics::counter!("interop_copies_stored_total").increment(1);
                    if !live.contains(&device)
                        && let Some(hook) = &offline
                    {
                        hook(device.clone());
                    }
                    STORED_OK
                }
                Ok(SubmitOutcome::QueueFull(_)) => STORE_FULL,
                Ok(SubmitOutcome::Duplicate) => STORED_OK,
                Err(e) => {
                    tracing::warn!(error = %e, "storing a direct copy failed");
                    STORE_FAILED
                }
            };
            {
                let mut live = live.lock();
                let mut map = lanes.map.lock().expect("lanes lock");
                if let Some(lane) = map.get_mut(&device) {
                    lane.storing -= 1;
                    if lane.storing == 0 && lane.held > 0 {
                        lanes.release(&mut live, &mut map, &device);
                    } else if lane.idle() {
                        map.remove(&device);
                    }
                }
            }
            message.outcome.fetch_max(code, Ordering::AcqRel);
            message.resolve();
        });
    }
}

/// Whether `sender` may reach `recipient`: both accounts exist, both opted in when one is native
/// and the other interop, and the recipient does not block the sender. Callers answer a refusal
/// exactly like an unknown recipient (no enumeration; a blocked sender is not told).
pub(crate) async fn may_reach(
    store: &impl AccountStore,
    sender: &str,
    recipient: &str,
) -> Result<bool> {
    let (Some(from), Some(to)) =
        (store.identity_of(sender).await?, store.identity_of(recipient).await?)
    else {
        return Ok(false);
    };
    if from.kind != to.kind && !(store.opted_in(sender).await? && store.opted_in(recipient).await?)
    {
        return Ok(false);
    }
    Ok(!store.is_blocked(recipient, sender).await?)
}

impl<S: MessageStore + AccountStore> Chat<S> {
    /// A chat core over `store`.
    pub fn new(store: Arc<S>, config: ChatConfig, offline: Option<OfflineHook>) -> Self {
        Self::clustered(store, config, offline, Arc::default(), None)
    }

    /// A chat core that is one node of a cluster: `live` is the registry `cluster` was
    /// connected with. Devices live elsewhere are reached through `cluster`; without it this is
    /// [`Chat::new`] (no Redis at all).
    pub fn clustered(
        store: Arc<S>,
        config: ChatConfig,
        offline: Option<OfflineHook>,
        live: Arc<LiveSessions>,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        let feed_live = Arc::clone(&live);
        let fed = store.feed_commits(Arc::new(move |d: &DeviceAddress, q| feed_live.feed(d, q)));
        let lanes = Lanes {
            store: Arc::clone(&store),
            live: Arc::clone(&live),
            offline: offline.clone(),
            map: Arc::default(),
        };
        Self {
            store,
            config,
            live,
            next_id: AtomicU64::new(1),
            offline,
            cluster,
            fed,
            recent: Arc::default(),
            direct_pending: Arc::default(),
            lanes,
        }
    }

    /// The cluster layer, when this node is part of one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// This node's live sessions.
    pub fn live_sessions(&self) -> &Arc<LiveSessions> {
        &self.live
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Messages whose sender ack still waits on direct copies (acked by their devices, or
    /// stored after [`ChatConfig::direct_ack_wait`] or when their session goes away).
    pub fn direct_pending(&self) -> usize {
        self.direct_pending.load(Ordering::Relaxed)
    }

    /// Whether `device` has a live session.
    pub fn is_live(&self, device: &DeviceAddress) -> bool {
        self.live.lock().contains_key(device)
    }

    /// Starts the live session of an authenticated device. A session the device already had is
    /// told to close with `conflict`. The new session first sends everything queued.
    pub async fn connect(&self, device: DeviceAddress, read_receipts: bool) -> Result<Session> {
        let identity = self
            .store
            .identity_of(&device.account)
            .await?
            .ok_or(Error::Refused("unknown account"))?;
        let integrator =
            (identity.kind == AccountKind::Interop).then_some(identity.integrator.as_str());
        let jid = Jid::device(&device, integrator.filter(|i| !i.is_empty()));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Cluster mode: take the device's lease (a session on another node is told to close).
        let lease = match &self.cluster {
            Some(c) => c.acquire(&device).await,
            None => None,
        };
        let nudge = Arc::new(Notify::new());
        let (tx, live) = mpsc::channel(self.config.live_buffer.max(1));
        let own = tx.clone();
        {
            let mut live = self.live.lock();
            let old = live.insert(
                device.clone(),
                Live { id, nudge: Arc::clone(&nudge), tx, gap: false, lease },
            );
            if let Some(old) = old {
                // The old connection may be stuck; it learns on its next `next`.
                let _ = old.tx.try_send(Item::Out(Outbound::Close(StreamCondition::Conflict)));
                old.nudge.notify_one();
                // What the old session was handed and its device did not ack is stored now,
                // in order, before this session reads its queue.
                self.lanes.store_lane(&mut self.lanes.lock(), &device, None, "session_ended");
            }
        }
        // Acks of an earlier session, and its direct copies, may still be on their way to disk.
        if let Err(e) = self.store.settle().await {
            self.disconnect_id(&device, id);
            return Err(e);
        }
        Ok(Session {
            device,
            jid,
            id,
            read_receipts,
            nudge,
            live,
            dirty: true,
            last_sent: 0,
            buffer: VecDeque::new(),
            inflight: HashMap::default(),
            own,
            direct: Arc::default(),
            direct_bytes: Arc::default(),
        })
    }

    /// Ends a session (its connection closed). Nothing is lost: unacked copies stay queued.
    pub fn disconnect(&self, session: &Session) {
        self.disconnect_id(&session.device, session.id);
    }

    fn disconnect_id(&self, device: &DeviceAddress, id: u64) {
        let removed = {
            let mut live = self.live.lock();
            let removed = match live.get(device) {
                Some(l) if l.id == id => live.remove(device),
                _ => None,
            };
            if removed.is_some() {
                // Its direct copies not acked yet are stored, in the order they were handed.
                self.lanes.store_lane(&mut self.lanes.lock(), device, None, "session_ended");
            }
            removed
        };
        if let (Some(cluster), Some(Live { lease: Some(token), .. })) = (&self.cluster, removed) {
            cluster.release(device, token);
        }
    }

    /// Tells every live session of `account` to close with `condition` (the account was
    /// deleted, or its provider disabled).
    /// In a cluster, every node's sessions of the account are told.
    pub fn close_account(&self, account: &str, condition: StreamCondition) {
        self.live.close_account(account, condition);
        if let Some(cluster) = &self.cluster {
            cluster.broadcast_close_account(account, condition);
        }
    }

    /// The next thing to send on this session. Cancel-safe.
    pub async fn next(&self, session: &mut Session) -> Result<Outbound> {
        loop {
            if let Some(q) = session.buffer.pop_front() {
                if Self::sent_stored(session, q.sender, q.message_id, q.seq) {
                    return Ok(Outbound::Stanza(q.stanza));
                }
                continue;
            }
            if session.dirty {
                // Boxed: an idle session's future need not be as large as a store read.
                Box::pin(self.refill(session)).await?;
                continue;
            }
            tokio::select! {
                biased;
                item = session.live.recv() => {
                    match item {
                        None => return Ok(Outbound::Close(StreamCondition::Conflict)),
                        Some(item) => if let Some(out) = Self::take(session, item) {
                            return Ok(out);
                        }
                    }
                }
                () = session.nudge.notified() => session.dirty = true,
            }
        }
    }

    /// What [`next`](Self::next) would return without waiting for anything new: queued copies
    /// (after reading the store), a live stanza already waiting, or `None`.
    pub async fn try_next(&self, session: &mut Session) -> Result<Option<Outbound>> {
        loop {
            if let Some(q) = session.buffer.pop_front() {
                if Self::sent_stored(session, q.sender, q.message_id, q.seq) {
                    return Ok(Some(Outbound::Stanza(q.stanza)));
                }
                continue;
            }
            if session.dirty {
                // Boxed: an idle session's future need not be as large as a store read.
                Box::pin(self.refill(session)).await?;
                continue;
            }
            if let Ok(item) = session.live.try_recv() {
                match Self::take(session, item) {
                    Some(out) => return Ok(Some(out)),
                    None => continue,
                }
            }
            // A nudge that already happened is a stored permit: taking it does not wait.
            let notified = std::pin::pin!(session.nudge.notified());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if notified.poll(&mut cx).is_ready() {
                session.dirty = true;
                continue;
            }
            return Ok(None);
        }
    }

    /// What an item from the session's channel means to send: a fed copy the session already
    /// read from the store (its seq is not above the last one sent) is nothing.
    fn take(session: &mut Session, item: Item) -> Option<Outbound> {
        match item {
            Item::Out(out) => Some(out),
            Item::Copy(q) if q.seq > session.last_sent => {
                let q = *q;
                session.last_sent = q.seq;
                Self::sent_stored(session, q.sender, q.message_id, q.seq)
                    .then_some(Outbound::Stanza(q.stanza))
            }
            Item::Copy(_) => None,
            // Sent even when its message has stored it meanwhile: a later copy handed over may
            // follow it in the channel, and must not arrive first.
            Item::Direct(copy) => {
                let k = (copy.sender.clone(), copy.key.clone());
                match session.inflight.get(&k) {
                    // The stored copy of it went out already (read from the queue): that one is
                    // what the device acks.
                    Some(Unacked::Stored(_)) => None,
                    _ => {
                        let stanza = copy.stanza.clone();
                        session.inflight.insert(k, Unacked::Direct(copy));
                        Some(Outbound::Stanza(stanza))
                    }
                }
            }
        }
    }

    /// Records a stored copy as sent; false when it need not be sent: the device already has
    /// the same message from a direct copy it has not acked yet (that copy was stored, which is
    /// where this one comes from; its ack now deletes this one, and without it the next session
    /// sends it).
    fn sent_stored(session: &mut Session, sender: DeviceAddress, key: String, seq: i64) -> bool {
        !matches!(
            session.inflight.insert((sender, key), Unacked::Stored(seq)),
            Some(Unacked::Direct(_))
        )
    }

    async fn refill(&self, session: &mut Session) -> Result<()> {
        if self.fed {
            self.live.close_gap(&session.device, session.id);
        }
        let batch =
            self.store.pending(&session.device, session.last_sent, self.config.fetch_batch).await?;
        // Only now (the read completed) does the session's state change: cancel-safe.
        session.dirty = !batch.is_empty();
        if let Some(last) = batch.last() {
            session.last_sent = last.seq;
        }
        session.buffer.extend(batch);
        Ok(())
    }

    /// Handles one stanza from the session's device.
    pub async fn handle(&self, session: &mut Session, node: Node, now_ms: i64) -> Result<Handled> {
        if let Some(cluster) = &self.cluster
            && matches!(node.tag.as_str(), "message" | "receipt" | "ack")
        {
            // Fencing: a session whose lease another node took writes nothing more.
            match self.live.lease_of(&session.device, session.id) {
                None => return Ok(Handled::Stale),
                Some(Some(token)) if !cluster.holds(&session.device, token).await => {
                    let id = session.id;
                    self.live.close_if(&session.device, StreamCondition::Conflict, |s, _| s == id);
                    return Ok(Handled::Stale);
                }
                Some(_) => {}
            }
        }
        match node.tag.as_str() {
            "message" => Ok(Handled::Replies(
                self.message(session, node, now_ms)
                    .await?
                    .map(Ack::into_node)
                    .into_iter()
                    .collect(),
            )),
            "receipt" => Ok(Handled::Replies(
                self.receipt(session, node, now_ms)
                    .await?
                    .map(Ack::into_node)
                    .into_iter()
                    .collect(),
            )),
            "ack" => {
                self.ack(session, node).await?;
                Ok(Handled::Replies(Vec::new()))
            }
            "chatstate" | "presence" => {
                self.live_only(session, node).await?;
                Ok(Handled::Replies(Vec::new()))
            }
            _ => Ok(Handled::NotMine(node)),
        }
    }

    /// The sender's ack, or `None` when it comes later (through the session's channel).
    async fn message(&self, session: &mut Session, node: Node, now_ms: i64) -> Result<Option<Ack>> {
        let Ok(msg) = Message::from_node(node) else {
            return Ok(Some(ack_to("", AckClass::Message).error("bad-request")));
        };
        let refuse = |code: &str| Ok(Some(ack_to(&msg.id, AckClass::Message).error(code)));
        let Some(to) = msg.to.as_deref().and_then(Jid::parse) else {
            return refuse("bad-request");
        };
        if !may_reach(&*self.store, &session.device.account, &to.account).await? {
            return refuse("recipient-unavailable");
        }
        // The devices this message must cover: every device of the recipient and the sender's
        // other devices (multi-device sync), exactly.
        let mut expected: Vec<DeviceAddress> = self
            .store
            .devices(&to.account)
            .await?
            .into_iter()
            .map(|d| DeviceAddress { account: to.account.clone(), device: d })
            .collect();
        if to.account != session.device.account {
            expected.extend(
                self.store
                    .devices(&session.device.account)
                    .await?
                    .into_iter()
                    .filter(|d| *d != session.device.device)
                    .map(|d| DeviceAddress { account: session.device.account.clone(), device: d }),
            );
        } else {
            expected.retain(|d| *d != session.device);
        }
        if expected.is_empty() {
            return refuse("recipient-unavailable");
        }
        let mut per_device: Vec<(DeviceAddress, Vec<interop_stanza::stanza::Enc>)> = Vec::new();
        if !msg.encs.is_empty() {
            // A direct payload is for exactly one device, named by `to`.
            let (Some(dev), true) = (to.device_address(), msg.participants.is_empty()) else {
                return refuse("bad-request");
            };
            per_device.push((dev, msg.encs.clone()));
        }
        for p in &msg.participants {
            let Some(dev) = Jid::parse(&p.jid).and_then(|j| j.device_address()) else {
                return refuse("bad-request");
            };
            if per_device.iter().any(|(d, _)| *d == dev) || p.encs.is_empty() {
                return refuse("bad-request");
            }
            per_device.push((dev, p.encs.clone()));
        }
        let mut covered: Vec<&DeviceAddress> = per_device.iter().map(|(d, _)| d).collect();
        covered.sort();
        let mut wanted: Vec<&DeviceAddress> = expected.iter().collect();
        wanted.sort();
        if covered != wanted {
            return refuse("stale-devices");
        }
        let from = session.jid.to_string();
        let mut copies = Vec::with_capacity(per_device.len());
        for (dev, encs) in per_device {
            let mut copy = Message::new(msg.id.clone(), msg.kind).from(from.clone());
            copy.timestamp = msg.timestamp;
            copy.encs = encs;
            copy.extra_attrs.clone_from(&msg.extra_attrs);
            copy.extra_children.clone_from(&msg.extra_children);
            copies.push((dev, binary::encode(&copy.into_node())?));
        }
        let ack =
            Ack { kind: Some(msg.kind.as_str().to_owned()), ..ack_to(&msg.id, AckClass::Message) };
        self.submit(session, msg.id.clone(), copies, now_ms, ack).await
    }

    async fn receipt(&self, session: &mut Session, node: Node, now_ms: i64) -> Result<Option<Ack>> {
        let Ok(receipt) = Receipt::from_node(node) else {
            return Ok(Some(ack_to("", AckClass::Receipt).error("bad-request")));
        };
        let mut ack = ack_to(&receipt.id, AckClass::Receipt);
        if receipt.kind != ReceiptType::Delivery {
            ack.kind = Some(receipt.kind.as_str().to_owned());
        }
        let Some(to) = receipt.to.as_deref().and_then(Jid::parse) else {
            return Ok(Some(ack.error("bad-request")));
        };
        if receipt.kind == ReceiptType::Read && !session.read_receipts {
            // The user does not send read receipts: accepted and dropped.
            return Ok(Some(ack));
        }
        if !may_reach(&*self.store, &session.device.account, &to.account).await? {
            return Ok(Some(ack.error("recipient-unavailable")));
        }
        // Receipts are not end-to-end encrypted: every device of the recipient gets it.
        let devices: Vec<DeviceAddress> = match to.device_address() {
            Some(d) => vec![d],
            None => self
                .store
                .devices(&to.account)
                .await?
                .into_iter()
                .map(|d| DeviceAddress { account: to.account.clone(), device: d })
                .collect(),
        };
        if devices.is_empty() {
            return Ok(Some(ack.error("recipient-unavailable")));
        }
        let key = receipt_key(receipt.kind, &receipt.id);
        let mut copy = receipt.clone();
        copy.to = None;
        copy.from = Some(session.jid.to_string());
        let bytes = binary::encode(&copy.into_node())?;
        let copies = devices.into_iter().map(|d| (d, bytes.clone())).collect();
        self.submit(session, key, copies, now_ms, ack).await
    }

    /// Accepts one message's copies; `ack` is the sender's positive ack. Returns the ack to send
    /// now, or `None` when it is sent later through the session's channel (direct delivery).
    ///
    /// Cluster or no commit feed: every copy is stored, then the sender is acked. Single node
    /// with a commit feed: copies for devices live here are handed to their sessions at once,
    /// without being stored, and the others are queued for storing in the same step (see
    /// [`Lane`] for how that keeps each device's copies in order); the sender is acked once
    /// every copy is acked by its device or stored. A copy not acked within
    /// [`ChatConfig::direct_ack_wait`], or whose session goes away, is stored. When no copy can
    /// be handed over and no device has direct copies pending, the message is stored whole
    /// and de-duplicated by the store, as without direct delivery.
    async fn submit(
        &self,
        session: &mut Session,
        key: String,
        copies: Vec<(DeviceAddress, Vec<u8>)>,
        now_ms: i64,
        ack: Ack,
    ) -> Result<Option<Ack>> {
        let expires_at_ms = now_ms.saturating_add(self.config.message_ttl_ms);
        let direct = self.fed && self.config.direct_delivery && self.cluster.is_none();
        let bytes: usize = copies.iter().map(|(_, c)| c.len()).sum();
        let sender = session.device.clone();
        let waiting = {
            let mut live = self.live.lock();
            let mut lanes = self.lanes.lock();
            let on_direct_path =
                direct && copies.iter().any(|(d, _)| live.contains_key(d) || lanes.contains_key(d));
            if !on_direct_path {
                Err(copies)
            } else if session.direct.load(Ordering::Relaxed) >= MAX_DIRECT_PER_SESSION
                || session.direct_bytes.load(Ordering::Relaxed) + bytes
                    > MAX_DIRECT_BYTES_PER_SESSION
            {
                return Ok(Some(ack.error("rate-limited")));
            } else if !self.recent.lock().expect("recent lock").insert(&sender, &key) {
                return Ok(Some(ack.error("duplicate")));
            } else {
                let waiting = Arc::new(Waiting::default());
                waiting.left.store(copies.len(), Ordering::Release);
                let mut handed = Vec::new();
                for (dev, mut stanza) in copies {
                    let lane = lanes.entry(dev.clone()).or_default();
                    lane.prune();
                    if let Some(l) =
                        live.get_mut(&dev).filter(|l| !l.gap && lane.log.len() < MAX_LANE)
                    {
                        let copy = Arc::new(DirectCopy {
                            recipient: dev.clone(),
                            sender: sender.clone(),
                            key: key.clone(),
                            stanza,
                            now_ms,
                            expires_at_ms,
                            state: std::sync::atomic::AtomicU8::new(PENDING),
                            handed: std::sync::atomic::AtomicBool::new(true),
                            message: Arc::clone(&waiting),
                        });
                        if lane.storing > 0 || lane.held > 0 {
                            // Behind a store on its way: held back until it is durable.
                            copy.handed.store(false, Ordering::Release);
                            lane.held += 1;
                            lane.log.push_back(Arc::clone(&copy));
                            handed.push(copy);
                            continue;
                        }
                        match l.tx.try_send(Item::Direct(Arc::clone(&copy))) {
                            Ok(()) => {
                                lane.log.push_back(Arc::clone(&copy));
                                handed.push(copy);
                                continue;
                            }
                            Err(refused) => {
                                drop(refused);
                                // Full (or closing): read from the store from here on.
                                l.gap = true;
                                l.nudge.notify_one();
                                // Held here only (the refused item is gone): no copy of the bytes.
                                stanza = Arc::try_unwrap(copy)
                                    .map_or_else(|shared| shared.stanza.clone(), |c| c.stanza);
                            }
                        }
                    }
                    metrics::counter!(
                        "interop_copies_direct_bypassed_total",
                        "reason" => if live.contains_key(&dev) { "overflow" } else { "offline" }
                    )
                    .increment(1);
                    // Stored, behind the device's pending direct copies (stored first).
                    self.lanes.store_lane(&mut lanes, &dev, None, "overflow");
                    let submission = Submission {
                        sender: sender.clone(),
                        message_id: key.clone(),
                        copies: vec![(dev.clone(), stanza)],
                        expires_at_ms,
                    };
                    let queued = self.store.store_copies_queued(submission, now_ms);
                    lanes.entry(dev.clone()).or_default().storing += 1;
                    self.lanes.complete_store(queued, dev, Arc::clone(&waiting));
                }
                metrics::counter!("interop_copies_direct_total").increment(handed.len() as u64);
                Ok((waiting, handed))
            }
        };
        let (waiting, handed) = match waiting {
            Ok(w) => w,
            Err(copies) => {
                let submission = Submission { sender, message_id: key, copies, expires_at_ms };
                return self.store_copies(submission, now_ms, ack).await.map(Some);
            }
        };
        let counters = [
            (Arc::clone(&session.direct), 1),
            (Arc::clone(&session.direct_bytes), bytes),
            (Arc::clone(&self.direct_pending), 1),
        ];
        for (c, n) in &counters {
            c.fetch_add(*n, Ordering::Relaxed);
        }
        let wait = self.config.direct_ack_wait;
        let own = session.own.clone();
        let recent = Arc::clone(&self.recent);
        let lanes = self.lanes.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + wait;
            let mut timed_out = false;
            loop {
                let notified = waiting.notify.notified();
                if waiting.done() {
                    break;
                }
                if timed_out {
                    notified.await;
                    continue;
                }
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(deadline) => {
                        timed_out = true;
                        // Not acked in time: stored, with what was handed before them.
                        let mut map = lanes.lock();
                        for copy in handed.iter().filter(|c| c.pending()) {
                            lanes.store_lane(&mut map, &copy.recipient, Some(copy), "timeout");
                        }
                    }
                }
            }
            for (c, n) in &counters {
                c.fetch_sub(*n, Ordering::Relaxed);
            }
            let reply = match waiting.outcome.load(Ordering::Acquire) {
                STORED_OK => Some(ack),
                code => {
                    // Not stored everywhere: a retry must not be taken for a duplicate.
                    recent.lock().expect("recent lock").remove(&sender, &key);
                    (code == STORE_FULL).then(|| ack.error("recipient-unavailable"))
                }
            };
            // Gone: the sender sends again and is told `duplicate`.
            if let Some(reply) = reply
                && let Ok(bytes) = binary::encode(&reply.into_node())
            {
                let _ = own.send(Item::Out(Outbound::Stanza(bytes))).await;
            }
        });
        Ok(None)
    }

    /// Stores `submission` (de-duplicated) and answers with `ack` or its refusal.
    async fn store_copies(&self, submission: Submission, now_ms: i64, ack: Ack) -> Result<Ack> {
        let recipients: Vec<DeviceAddress> =
            submission.copies.iter().map(|(d, _)| d.clone()).collect();
        match self.store.submit(submission, now_ms).await? {
            SubmitOutcome::Stored(_) => {
                // Queue depth = stored - acked - expired (the three counters).
                metrics::counter!("interop_copies_stored_total").increment(recipients.len() as u64);
                self.notify(&recipients);
                Ok(ack)
            }
            SubmitOutcome::Duplicate => Ok(ack.error("duplicate")),
            SubmitOutcome::QueueFull(_) => Ok(ack.error("recipient-unavailable")),
        }
    }

    /// Nudges live sessions of `devices`; hands the others to the offline hook.
    /// In a cluster, devices not live here are handed to the cluster layer, which nudges the
    /// node that holds them or wakes them when none does.
    fn notify(&self, devices: &[DeviceAddress]) {
        // Fed copies reach live sessions without a nudge.
        let offline: Vec<DeviceAddress> = if self.fed {
            devices.iter().filter(|d| !self.live.contains(d)).cloned().collect()
        } else {
            devices.iter().filter(|d| !self.live.nudge(d)).cloned().collect()
        };
        if let Some(cluster) = &self.cluster {
            cluster.route(offline);
        } else if let Some(hook) = &self.offline {
            for d in offline {
                hook(d);
            }
        }
    }

    async fn ack(&self, session: &mut Session, node: Node) -> Result<()> {
        let Ok(ack) = Ack::from_node(node) else { return Ok(()) };
        let key = match ack.class {
            AckClass::Message => ack.id.clone(),
            AckClass::Receipt => {
                let kind = ack
                    .kind
                    .as_deref()
                    .and_then(ReceiptType::parse)
                    .unwrap_or(ReceiptType::Delivery);
                receipt_key(kind, &ack.id)
            }
            _ => return Ok(()),
        };
        // `to` names the stanza's sender; without it, the id alone must be unambiguous.
        let sender = ack.to.as_deref().and_then(Jid::parse).and_then(|j| j.device_address());
        let found = match sender {
            Some(s) => session.inflight.remove_entry(&(s, key)),
            None => {
                let mut matching = session.inflight.keys().filter(|(_, k)| *k == key);
                match (matching.next().cloned(), matching.next()) {
                    (Some(k), None) => session.inflight.remove_entry(&k),
                    _ => None,
                }
            }
        };
        match found {
            Some((_, Unacked::Stored(seq))) => {
                self.store.ack_soon(&session.device, seq).await?;
                metrics::counter!("interop_copies_acked_total").increment(1);
            }
            Some((_, Unacked::Direct(copy))) => {
                copy.acked();
                // Drop what the lane no longer needs.
                let mut lanes = self.lanes.lock();
                if let Some(lane) = lanes.get_mut(&session.device) {
                    lane.prune();
                    if lane.idle() {
                        lanes.remove(&session.device);
                    }
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Chat states and directed presence: to the recipient account's live devices only, never
    /// stored, never woken for; a stanza that is not a valid one of the two is dropped.
    async fn live_only(&self, session: &Session, node: Node) -> Result<()> {
        let node = if node.tag == "presence" {
            let Ok(mut p) = Presence::from_node(node) else { return Ok(()) };
            let Some(to) = p.to.take() else { return Ok(()) };
            p.from = Some(session.jid.to_string());
            (to, p.into_node())
        } else {
            let Ok(mut state) = ChatState::from_node(node) else { return Ok(()) };
            let Some(to) = state.to.take() else { return Ok(()) };
            state.from = Some(session.jid.to_string());
            (to, state.into_node())
        };
        let (to, node) = node;
        let Some(to) = Jid::parse(&to) else { return Ok(()) };
        if !may_reach(&*self.store, &session.device.account, &to.account).await? {
            return Ok(());
        }
        let bytes = binary::encode(&node)?;
        // Cluster mode: the account's devices, to hand the state to the nodes they are live on.
        let mut elsewhere = match &self.cluster {
            Some(_) => self.store.devices(&to.account).await?,
            None => Vec::new(),
        };
        {
            let live = self.live.lock();
            for (device, l) in live.iter().filter(|(d, _)| d.account == to.account) {
                elsewhere.retain(|d| *d != device.device);
                if *device != session.device {
                    // Live only: a full buffer drops it.
                    let _ = l.tx.try_send(Item::Out(Outbound::Stanza(bytes.clone())));
                }
            }
        }
        if let Some(cluster) = &self.cluster {
            let devices: Vec<DeviceAddress> = elsewhere
                .into_iter()
                .map(|d| DeviceAddress { account: to.account.clone(), device: d })
                .filter(|d| *d != session.device)
                .collect();
            if !devices.is_empty() {
                cluster.forward_live(devices, bytes);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use interop_stanza::stanza::{ChatStateKind, Enc, EncType, MessageType, Participant};

    use super::*;
    use crate::store::accounts::suite::{device, interop, native};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Identity, QueueLimits};

    struct World {
        _dir: tempfile::TempDir,
        chat: Chat<SqliteStore>,
        woken: Arc<Mutex<Vec<DeviceAddress>>>,
    }

    async fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("gk.db"), QueueLimits::default()).await.unwrap(),
        );
        let woken: Arc<Mutex<Vec<DeviceAddress>>> = Arc::default();
        let hook_woken = Arc::clone(&woken);
        let hook: OfflineHook = Arc::new(move |d| hook_woken.lock().unwrap().push(d));
        // These tests follow copies through the store; direct delivery has its own tests.
        let config = ChatConfig { direct_delivery: false, ..ChatConfig::default() };
        World { _dir: dir, chat: Chat::new(store, config, Some(hook)), woken }
    }

    impl World {
        async fn enlist(&self, who: &Identity, key: u8) -> DeviceAddress {
            self.chat.store().enlist(who, device(key, 0, 0), 0).await.unwrap().address
        }

        async fn jid(&self, account: &str) -> String {
            let i = self.chat.store().identity_of(account).await.unwrap().unwrap();
            let integrator = (!i.integrator.is_empty()).then_some(i.integrator);
            Jid { account: account.into(), integrator, device: None }.to_string()
        }
    }

    fn dev_jid(d: &DeviceAddress) -> String {
        Jid::device(d, None).to_string()
    }

    /// A text message with one payload per device in `to_devices`.
    fn message(id: &str, to: &str, to_devices: &[&DeviceAddress]) -> Node {
        let mut m = Message::new(id, MessageType::Text).to(to);
        for d in to_devices {
            m = m.with_participant(Participant::new(
                dev_jid(d),
                Enc::new(EncType::Msg, format!("ct-{id}-{}", d.device).into_bytes()),
            ));
        }
        m.into_node()
    }

    async fn send(chat: &Chat<SqliteStore>, s: &mut Session, node: Node) -> Ack {
        match chat.handle(s, node, 1_000).await.unwrap() {
            Handled::Replies(mut r) => Ack::from_node(r.remove(0)).unwrap(),
            Handled::NotMine(n) => panic!("not handled: {n:?}"),
            Handled::Stale => panic!("stale without a cluster"),
        }
    }

    async fn next_node(chat: &Chat<SqliteStore>, s: &mut Session) -> Node {
        match chat.next(s).await.unwrap() {
            Outbound::Stanza(bytes) => binary::decode(&bytes).unwrap(),
            Outbound::Close(c) => panic!("closed: {c:?}"),
        }
    }

    /// What `next` would return right now, without waiting for new input.
    async fn ready(chat: &Chat<SqliteStore>, s: &mut Session) -> Option<Outbound> {
        chat.try_next(s).await.unwrap()
    }

    async fn ack_it(chat: &Chat<SqliteStore>, s: &mut Session, got: &Node) {
        let from = got.attr("from").unwrap().to_owned();
        let mut ack = Ack::new(got.attr("id").unwrap(), AckClass::parse(&got.tag).unwrap());
        ack.kind = got.attr("type").filter(|_| got.tag == "receipt").map(str::to_owned);
        ack.to = Some(from);
        chat.handle(s, ack.into_node(), 2_000).await.unwrap();
        // Acks are deleted without waiting for the disk; the queue depth shows them once settled.
        chat.store().settle().await.unwrap();
    }

    #[tokio::test]
    async fn interop_to_native_fans_out_to_every_device_and_acks_delete() {
        let w = world().await;
        let alice = w.enlist(&interop("alice"), 1).await;
        let bob1 = w.enlist(&native("+1555"), 2).await;
        let bob2 = w.enlist(&native("+1555"), 3).await;
        w.chat.store().set_opt_in(&bob1.account, true).await.unwrap();
        let mut a = w.chat.connect(alice.clone(), true).await.unwrap();
        let mut b1 = w.chat.connect(bob1.clone(), true).await.unwrap();
        let mut b2 = w.chat.connect(bob2.clone(), true).await.unwrap();
        let bob_jid = w.jid(&bob1.account).await;

        let ack = send(&w.chat, &mut a, message("m1", &bob_jid, &[&bob1, &bob2])).await;
        assert_eq!(
            (ack.id.as_str(), ack.error.as_deref(), ack.kind.as_deref()),
            ("m1", None, Some("text"))
        );

        for (s, d) in [(&mut b1, &bob1), (&mut b2, &bob2)] {
            let got = next_node(&w.chat, s).await;
            let m = Message::from_node(got.clone()).unwrap();
            assert_eq!(m.id, "m1");
            assert_eq!(m.to, None, "the server removes `to`");
            assert_eq!(m.from.as_deref(), Some(a.jid.to_string().as_str()));
            assert!(
                m.from.as_deref().unwrap().contains(".acme:1@"),
                "interop addresses carry the integrator"
            );
            assert_eq!(m.encs.len(), 1, "each device gets only its own payload");
            assert_eq!(m.encs[0].ciphertext, format!("ct-m1-{}", d.device).into_bytes());
            assert_eq!(w.chat.store().depth(d).await.unwrap(), 1, "kept until the device acks");
            ack_it(&w.chat, s, &got).await;
            assert_eq!(w.chat.store().depth(d).await.unwrap(), 0);
        }
        assert!(w.woken.lock().unwrap().is_empty(), "everyone was live");
    }

    #[tokio::test]
    async fn a_stale_device_list_is_refused_and_nothing_is_stored() {
        let w = world().await;
        let alice = w.enlist(&interop("alice"), 1).await;
        let alice2 = w.enlist(&interop("alice"), 4).await;
        let bob1 = w.enlist(&interop("bob"), 2).await;
        let bob2 = w.enlist(&interop("bob"), 3).await;
        let mut a = w.chat.connect(alice.clone(), true).await.unwrap();
        let bob_jid = w.jid(&bob1.account).await;
        for (devices, code) in [
            (vec![&bob1], Some("stale-devices")), // misses bob2 and alice2
            (vec![&bob1, &bob2], Some("stale-devices")), // misses alice's other device
            (vec![&bob1, &bob2, &alice2, &alice], Some("stale-devices")), // includes itself
            (vec![&bob1, &bob2, &alice2], None),
        ] {
            let ack = send(&w.chat, &mut a, message("s1", &bob_jid, &devices)).await;
            assert_eq!(ack.error.as_deref(), code, "{devices:?}");
        }
        assert_eq!(w.chat.store().depth(&bob1).await.unwrap(), 1);
        assert_eq!(
            w.chat.store().depth(&alice2).await.unwrap(),
            1,
            "sender's other devices get a copy"
        );
        assert_eq!(w.chat.store().depth(&alice).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn offline_devices_are_woken_then_get_everything_in_order_exactly_once() {
        let w = world().await;
        let alice = w.enlist(&interop("alice"), 1).await;
        let bob = w.enlist(&interop("bob"), 2).await;
        let mut b = w.chat.connect(bob.clone(), true).await.unwrap();
        let alice_jid = w.jid(&alice.account).await;
        for i in 0..3 {
            let ack = send(&w.chat, &mut b, message(&format!("o{i}"), &alice_jid, &[&alice])).await;
            assert_eq!(ack.error, None);
        }
        // A retry of o1 is acknowledged as a duplicate and not stored again.
        let ack = send(&w.chat, &mut b, message("o1", &alice_jid, &[&alice])).await;
        assert_eq!(ack.error.as_deref(), Some("duplicate"));
        assert_eq!(*w.woken.lock().unwrap(), vec![alice.clone(); 3]);

        // Alice connects: the three arrive in order. She acks only the first, then drops.
        let mut a = w.chat.connect(alice.clone(), true).await.unwrap();
        let first = next_node(&w.chat, &mut a).await;
        assert_eq!(first.attr("id"), Some("o0"));
        ack_it(&w.chat, &mut a, &first).await;
        assert_eq!(next_node(&w.chat, &mut a).await.attr("id"), Some("o1"));
        assert_eq!(next_node(&w.chat, &mut a).await.attr("id"), Some("o2"));
        assert_eq!(ready(&w.chat, &mut a).await, None, "nothing more");
        w.chat.disconnect(&a);

        // Reconnect: what was not acked comes again, in order; the acked one does not.
        let mut a = w.chat.connect(alice.clone(), true).await.unwrap();
        for id in ["o1", "o2"] {
            let got = next_node(&w.chat, &mut a).await;
            assert_eq!(got.attr("id"), Some(id));
            ack_it(&w.chat, &mut a, &got).await;
        }
        assert_eq!(ready(&w.chat, &mut a).await, None);
        assert_eq!(w.chat.store().depth(&alice).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_live_session_is_nudged_by_new_messages() {
        let w = world().await;
        let alice = w.enlist(&interop("alice"), 1).await;
        let bob = w.enlist(&interop("bob"), 2).await;
        let mut a = w.chat.connect(alice.clone(), true).await.unwrap();
        let mut b = w.chat.connect(bob.clone(), true).await.unwrap();
        assert_eq!(ready(&w.chat, &mut b).await, None);
        let bob_jid = w.jid(&bob.account).await;
        // Bob waits first; Alice's message wakes his session.
        let waiter = async { next_node(&w.chat, &mut b).await };
        let sender = async {
            tokio::task::yield_now().await;
            send(&w.chat, &mut a, message("live", &bob_jid, &[&bob])).await
        };
        let (got, ack) = tokio::join!(waiter, sender);
        assert_eq!(ack.error, None);
        assert_eq!(got.attr("id"), Some("live"));
    }

    #[tokio::test]
    async fn opt_in_and_blocks_are_enforced_without_telling_why() {
        let w = world().await;
        let alice = w.enlist(&interop("alice"), 1).await;
        let bob = w.enlist(&native("+1555"), 2).await;
        let carol = w.enlist(&interop("carol"), 3).await;
        let mut a = w.chat.connect(alice.clone(), true).await.unwrap();
        let bob_jid = w.jid(&bob.account).await;
        let ack = send(&w.chat, &mut a, message("x1", &bob_jid, &[&bob])).await;
        assert_eq!(ack.error.as_deref(), Some("recipient-unavailable"), "Bob has not opted in");
        w.chat.store().set_opt_in(&bob.account, true).await.unwrap();
        assert_eq!(send(&w.chat, &mut a, message("x2", &bob_jid, &[&bob])).await.error, None);
        w.chat.store().set_blocked(&bob.account, &alice.account, true).await.unwrap();
        let ack = send(&w.chat, &mut a, message("x3", &bob_jid, &[&bob])).await;
        assert_eq!(ack.error.as_deref(), Some("recipient-unavailable"), "same answer as unknown");
        // Interop to interop needs no native opt-in; an unknown account is refused the same way.
        let carol_jid = w.jid(&carol.account).await;
        assert_eq!(send(&w.chat, &mut a, message("x4", &carol_jid, &[&carol])).await.error, None);
        let ack = send(&w.chat, &mut a, message("x5", "nobody@s.interop", &[])).await;
        assert_eq!(ack.error.as_deref(), Some("recipient-unavailable"));
        let ack = send(&w.chat, &mut a, message("x6", "not an address", &[])).await;
        assert_eq!(ack.error.as_deref(), Some("bad-request"));
        assert_eq!(w.chat.store().depth(&bob).await.unwrap(), 1, "only x2 reached Bob");
    }

    #[tokio::test]
    async fn receipts_reach_every_sender_device_and_read_receipts_follow_the_preference() {
        let w = world().await;
        let alice1 = w.enlist(&interop("alice"), 1).await;
        let alice2 = w.enlist(&interop("alice"), 2).await;
        let bob = w.enlist(&interop("bob"), 3).await;
        let carol = w.enlist(&interop("carol"), 4).await;
        let alice_jid = w.jid(&alice1.account).await;
        let mut b = w.chat.connect(bob.clone(), true).await.unwrap();
        let mut c = w.chat.connect(carol.clone(), false).await.unwrap();
        let mut delivery = Receipt::new("m1", ReceiptType::Delivery);
        delivery.to = Some(alice_jid.clone());
        let mut read = Receipt::new("m1", ReceiptType::Read);
        read.to = Some(alice_jid.clone());
        let ack = send(&w.chat, &mut b, delivery.clone().into_node()).await;
        assert_eq!((ack.class, ack.error.as_deref()), (AckClass::Receipt, None));
        let ack = send(&w.chat, &mut b, read.clone().into_node()).await;
        assert_eq!(
            (ack.kind.as_deref(), ack.error.as_deref()),
            (Some("read"), None),
            "a read receipt is not a duplicate of the delivery receipt"
        );
        // Carol does not send read receipts: accepted, not forwarded.
        assert_eq!(send(&w.chat, &mut c, read.clone().into_node()).await.error, None);
        assert_eq!(send(&w.chat, &mut c, delivery.into_node()).await.error, None);
        for d in [&alice1, &alice2] {
            assert_eq!(w.chat.store().depth(d).await.unwrap(), 3, "2 from Bob, 1 from Carol");
        }
        let mut a = w.chat.connect(alice1.clone(), true).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let got = next_node(&w.chat, &mut a).await;
            let r = Receipt::from_node(got.clone()).unwrap();
            seen.push((r.from.unwrap(), r.kind));
            ack_it(&w.chat, &mut a, &got).await;
        }
        assert_eq!(
            seen,
            [
                (b.jid.to_string(), ReceiptType::Delivery),
                (b.jid.to_string(), ReceiptType::Read),
                (c.jid.to_string(), ReceiptType::Delivery)
            ]
        );
        assert_eq!(w.chat.store().depth(&alice1).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_new_login_replaces_the_old_session() {
        let w = world().await;
        let alice = w.enlist(&interop("alice"), 1).await;
        let mut old = w.chat.connect(alice.clone(), true).await.unwrap();
        let mut new = w.chat.connect(alice.clone(), true).await.unwrap();
        assert_eq!(
            w.chat.next(&mut old).await.unwrap(),
            Outbound::Close(StreamCondition::Conflict)
        );
        w.chat.disconnect(&old);
        assert!(w.chat.is_live(&alice), "the old session's disconnect does not remove the new one");
        assert_eq!(ready(&w.chat, &mut new).await, None);
    }

    #[tokio::test]
    async fn chat_states_are_live_only() {
        let w = world().await;
        let alice = w.enlist(&interop("alice"), 1).await;
        let bob = w.enlist(&interop("bob"), 2).await;
        let mut a = w.chat.connect(alice.clone(), true).await.unwrap();
        let bob_jid = w.jid(&bob.account).await;
        let typing = || ChatState::new(bob_jid.clone(), ChatStateKind::Composing).into_node();
        // Bob offline: dropped, not queued, nobody woken.
        assert!(
            matches!(w.chat.handle(&mut a, typing(), 0).await.unwrap(), Handled::Replies(r) if r.is_empty())
        );
        assert_eq!(w.chat.store().depth(&bob).await.unwrap(), 0);
        assert!(w.woken.lock().unwrap().is_empty());
        let mut b = w.chat.connect(bob.clone(), true).await.unwrap();
        w.chat.handle(&mut a, typing(), 0).await.unwrap();
        let got = ChatState::from_node(next_node(&w.chat, &mut b).await).unwrap();
        assert_eq!((got.state, got.from), (ChatStateKind::Composing, Some(a.jid.to_string())));
    }

    #[tokio::test]
    async fn directed_presence_is_live_only() {
        use interop_stanza::stanza::PresenceType;
        let w = world().await;
        let alice = w.enlist(&interop("alice"), 1).await;
        let bob = w.enlist(&interop("bob"), 2).await;
        let mut a = w.chat.connect(alice.clone(), true).await.unwrap();
        let bob_jid = w.jid(&bob.account).await;
        let online = || {
            let mut p = Presence::new(PresenceType::Available);
            p.to = Some(bob_jid.clone());
            p.into_node()
        };
        w.chat.handle(&mut a, online(), 0).await.unwrap();
        assert_eq!(w.chat.store().depth(&bob).await.unwrap(), 0, "never stored");
        let mut b = w.chat.connect(bob.clone(), true).await.unwrap();
        w.chat.handle(&mut a, online(), 0).await.unwrap();
        let got = Presence::from_node(next_node(&w.chat, &mut b).await).unwrap();
        assert_eq!((got.kind, got.from), (PresenceType::Available, Some(a.jid.to_string())));
        // Undirected presence has nobody to go to: dropped.
        let undirected = Presence::new(PresenceType::Available).into_node();
        w.chat.handle(&mut a, undirected, 0).await.unwrap();
        assert!(w.chat.try_next(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn other_stanzas_are_left_to_other_services() {
        let w = world().await;
        let alice = w.enlist(&interop("alice"), 1).await;
        let mut a = w.chat.connect(alice, true).await.unwrap();
        let iq = Node::new("iq").with_attr("id", "1");
        assert!(
            matches!(w.chat.handle(&mut a, iq.clone(), 0).await.unwrap(), Handled::NotMine(n) if n == iq)
        );
    }

    /// Copies for a live session come from the store's commit feed; when they overflow its
    /// channel the session reads the rest from the store, and still gets each once, in order.
    #[tokio::test]
    async fn fed_copies_that_overflow_the_session_are_read_from_the_store_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("gk.db"), QueueLimits::default()).await.unwrap(),
        );
        let config = ChatConfig { live_buffer: 3, direct_delivery: false, ..ChatConfig::default() };
        let chat = Chat::new(store, config, None);
        assert!(chat.fed, "SQLite feeds commits");
        let alice = chat.store().enlist(&interop("alice"), device(1, 0, 0), 0).await.unwrap();
        let bob = chat.store().enlist(&native("+1555"), device(2, 0, 0), 0).await.unwrap();
        let (alice, bob) = (alice.address, bob.address);
        chat.store().set_opt_in(&bob.account, true).await.unwrap();
        let mut a = chat.connect(alice.clone(), true).await.unwrap();
        let mut b = chat.connect(bob.clone(), true).await.unwrap();
        assert_eq!(chat.try_next(&mut b).await.unwrap(), None);
        let bob_jid = Jid { account: bob.account.clone(), integrator: None, device: None };
        for i in 0..20 {
            let m = message(&format!("f{i}"), &bob_jid.to_string(), &[&bob]);
            match chat.handle(&mut a, m, 1_000).await.unwrap() {
                Handled::Replies(r) => assert_eq!(r[0].attr("error"), None),
                other => panic!("{other:?}"),
            }
        }
        let mut got = Vec::new();
        while let Some(Outbound::Stanza(bytes)) = chat.try_next(&mut b).await.unwrap() {
            let node = binary::decode(&bytes).unwrap();
            got.push(node.attr("id").unwrap().to_owned());
            ack_it(&chat, &mut b, &node).await;
        }
        let want: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        assert_eq!(got, want);
        assert_eq!(chat.store().depth(&bob).await.unwrap(), 0);
        // The gap closed: the next copy comes through the feed again.
        let m = message("after", &bob_jid.to_string(), &[&bob]);
        chat.handle(&mut a, m, 1_000).await.unwrap();
        let next = next_node(&chat, &mut b).await;
        assert_eq!(next.attr("id"), Some("after"));
    }

    /// A seeded simulation: random sends (with duplicate retries), connects, disconnects,
    /// partial reads with and without acks, and full restarts on the same database, with
    /// copies stored first and with direct delivery. Invariants: every message the sender saw
    /// acked reaches every device it was for; what a device receives is, per sender, in send
    /// order and, after the client's de-duplication by (sender, id), once; nothing stays queued
    /// at the end.
    #[tokio::test]
    async fn randomized_delivery_is_exactly_once_in_order_across_restarts() {
        for seed in 0..8u64 {
            randomized_run(seed, None).await;
        }
        // Direct delivery, with acks that come in time and with every direct copy stored at
        // once (the waiter's deadline has passed when it first runs).
        for wait_ms in [1_000, 0] {
            for seed in 0..16u64 {
                randomized_run(seed, Some(std::time::Duration::from_millis(wait_ms))).await;
            }
        }
    }

    /// Waits until no message waits on direct copies (their sessions are gone or acked).
    async fn settle_direct(chat: &Chat<SqliteStore>) {
        while chat.direct_pending() > 0 {
            tokio::task::yield_now().await;
        }
        chat.store().settle().await.unwrap();
    }

    /// `ack_wait`: direct delivery with this wait (`None`: every copy stored first).
    async fn randomized_run(seed: u64, ack_wait: Option<std::time::Duration>) {
        use rand::{Rng, SeedableRng};
        let direct = ack_wait.is_some();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gk.db");
        let open = || async {
            Chat::new(
                Arc::new(SqliteStore::open(&path, QueueLimits::default()).await.unwrap()),
                // Small buffers: fed and direct copies overflow the session channel.
                ChatConfig {
                    fetch_batch: 3,
                    live_buffer: 2,
                    direct_delivery: direct,
                    direct_ack_wait: ack_wait.unwrap_or_default(),
                    ..ChatConfig::default()
                },
                None,
            )
        };
        let mut chat = open().await;
        let mut users: Vec<DeviceAddress> = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let enlisted =
                chat.store().enlist(&interop(name), device(i as u8 + 1, 0, 0), 0).await.unwrap();
            users.push(enlisted.address);
        }
        let mut jids: Vec<String> = Vec::new();
        for u in &users {
            let i = chat.store().identity_of(&u.account).await.unwrap().unwrap();
            let jid =
                Jid { account: u.account.clone(), integrator: Some(i.integrator), device: None };
            jids.push(jid.to_string());
        }
        let mut sessions: Vec<Option<Session>> = vec![None, None, None];
        // Per recipient, per sender: every id accepted or pending, in send order; the ids the
        // sender saw acked; what the recipient got (de-duplicated).
        let mut sent_order: Vec<Vec<Vec<String>>> = vec![vec![Vec::new(); 3]; 3];
        let mut confirmed: Vec<Vec<Vec<String>>> = vec![vec![Vec::new(); 3]; 3];
        let mut received: Vec<Vec<Vec<String>>> = vec![vec![Vec::new(); 3]; 3];
        // Per sender: (id, recipient) of what it sent.
        let mut sent: Vec<Vec<(String, usize)>> = vec![Vec::new(); 3];
        let mut next_id = 0;
        // Reads what `who`'s session has ready: messages (acked if `ack_all`) and late acks.
        #[allow(clippy::too_many_arguments)]
        async fn drain(
            chat: &Chat<SqliteStore>,
            s: &mut Session,
            who: usize,
            ack_all: bool,
            users: &[DeviceAddress],
            sent: &[Vec<(String, usize)>],
            received: &mut [Vec<Vec<String>>],
            confirmed: &mut [Vec<Vec<String>>],
        ) {
            while let Some(Outbound::Stanza(bytes)) = chat.try_next(s).await.unwrap() {
                let node = binary::decode(&bytes).unwrap();
                let id = node.attr("id").unwrap().to_owned();
                if node.tag == "ack" {
                    // A deferred ack of something `who` sent.
                    let ack = Ack::from_node(node).unwrap();
                    match ack.error.as_deref() {
                        None => {}
                        // A retry accepted again after a restart, of an id the store has.
                        Some("duplicate") => continue,
                        Some(other) => panic!("deferred refusal {other}"),
                    }
                    let to = sent[who].iter().find(|(i, _)| *i == id).expect("sent it").1;
                    if !confirmed[to][who].contains(&id) {
                        confirmed[to][who].push(id);
                    }
                    continue;
                }
                let from = Jid::parse(node.attr("from").unwrap()).unwrap();
                let sender = users.iter().position(|u| u.account == from.account).unwrap();
                // The client persists, de-duplicates, then acks.
                if !received[who][sender].contains(&id) {
                    received[who][sender].push(id);
                }
                if ack_all {
                    ack_it(chat, s, &node).await;
                }
            }
        }
        for _step in 0..80 {
            let who = rng.random_range(0..3usize);
            match rng.random_range(0..10) {
                0..=3 => {
                    // Send (connecting first if needed), sometimes a retry of an old id.
                    if sessions[who].is_none() {
                        sessions[who] = Some(chat.connect(users[who].clone(), true).await.unwrap());
                    }
                    let retry = !sent[who].is_empty() && rng.random_bool(0.2);
                    let (id, to) = if retry {
                        sent[who][rng.random_range(0..sent[who].len())].clone()
                    } else {
                        next_id += 1;
                        (format!("m{next_id}"), (who + rng.random_range(1..3)) % 3)
                    };
                    let s = sessions[who].as_mut().unwrap();
                    let node = message(&id, &jids[to], &[&users[to]]);
                    let ack = match chat.handle(s, node, 1_000).await.unwrap() {
                        Handled::Replies(r) if r.is_empty() => None,
                        Handled::Replies(mut r) => Some(Ack::from_node(r.remove(0)).unwrap()),
                        other => panic!("{other:?}"),
                    };
                    let error = ack.as_ref().and_then(|a| a.error.clone());
                    match error.as_deref() {
                        None if retry => {
                            // Only direct delivery forgets ids (across a restart): a retry it
                            // accepts again is delivered again, which clients de-duplicate.
                            assert!(direct, "seed {seed}: a retry was accepted again");
                        }
                        None => {
                            sent[who].push((id.clone(), to));
                            sent_order[to][who].push(id.clone());
                            if ack.is_some() {
                                confirmed[to][who].push(id);
                            }
                        }
                        Some("duplicate") => assert!(retry, "seed {seed}"),
                        other => panic!("seed {seed}: unexpected refusal {other:?}"),
                    }
                }
                4..=6 => {
                    // Read what is ready; ack all or nothing (a crash before acking).
                    if sessions[who].is_none() {
                        sessions[who] = Some(chat.connect(users[who].clone(), true).await.unwrap());
                    }
                    let s = sessions[who].as_mut().unwrap();
                    let ack_all = rng.random_bool(0.7);
                    drain(&chat, s, who, ack_all, &users, &sent, &mut received, &mut confirmed)
                        .await;
                }
                7 | 8 => {
                    if let Some(s) = sessions[who].take() {
                        chat.disconnect(&s);
                    }
                }
                _ => {
                    // Restart: every session gone, the store reopened from disk. (Direct
                    // copies whose sessions went away are stored first: one store per file.)
                    for s in sessions.iter_mut().filter_map(Option::take) {
                        chat.disconnect(&s);
                    }
                    settle_direct(&chat).await;
                    drop(chat);
                    chat = open().await;
                }
            }
        }
        // Drain everyone, acking everything, until nothing moves.
        for s in sessions.iter_mut().filter_map(Option::take) {
            chat.disconnect(&s);
        }
        settle_direct(&chat).await;
        let mut all: Vec<Session> = Vec::new();
        for u in &users {
            all.push(chat.connect(u.clone(), true).await.unwrap());
        }
        for _round in 0..4 {
            for (who, s) in all.iter_mut().enumerate() {
                drain(&chat, s, who, true, &users, &sent, &mut received, &mut confirmed).await;
            }
            settle_direct(&chat).await;
        }
        for (who, u) in users.iter().enumerate() {
            assert_eq!(chat.store().depth(u).await.unwrap(), 0, "seed {seed} direct {direct}");
            for sender in 0..3 {
                let got = &received[who][sender];
                let order = &sent_order[who][sender];
                // In send order: `got` is a subsequence of `order`.
                let mut it = order.iter();
                assert!(
                    got.iter().all(|g| it.any(|o| o == g)),
                    "seed {seed} direct {direct}: {got:?} not in the order of {order:?}"
                );
                for c in &confirmed[who][sender] {
                    assert!(got.contains(c), "seed {seed} direct {direct}: acked {c} lost");
                }
            }
        }
        let total: usize = received.iter().flatten().map(Vec::len).sum();
        let acked: usize = confirmed.iter().flatten().map(Vec::len).sum();
        assert!(total > 10 && acked > 5, "seed {seed} direct {direct}: {total} got, {acked} acked");
    }
}

//! The embedded SQLite backend (WAL, `synchronous=FULL`): the gatekeeper's default store.
//!
//! Writes go through one committer task that owns the only writing connection and commits
//! whatever arrived while the previous commit was on disk as one transaction (group commit):
//! one fsync covers many messages, and callers still get their answer only after it.
//! Reads use a small pool of read connections (WAL lets them run beside the writer).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};

mod accounts;
mod directory;
mod providers;

use super::{
    CommitFeed, DeviceAddress, MessageStore, QueueLimits, Queued, Queuing, Submission,
    SubmitOutcome,
};
use crate::{Error, Result};

/// How many operations one group commit takes at most.
const MAX_BATCH: usize = 2048;

/// Versioned schema migrations, applied in order at start-up. Never edit an applied one: add.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE queue (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_account TEXT    NOT NULL,
    recipient_device  INTEGER NOT NULL,
    sender_account    TEXT    NOT NULL,
    sender_device     INTEGER NOT NULL,
    message_id        TEXT    NOT NULL,
    stanza            BLOB    NOT NULL,
    stored_at_ms      INTEGER NOT NULL,
    expires_at_ms     INTEGER NOT NULL
);
CREATE INDEX queue_by_recipient ON queue (recipient_account, recipient_device, seq);
CREATE INDEX queue_by_expiry ON queue (expires_at_ms);

CREATE TABLE queue_depth (
    account TEXT    NOT NULL,
    device  INTEGER NOT NULL,
    depth   INTEGER NOT NULL,
    PRIMARY KEY (account, device)
) WITHOUT ROWID;
CREATE TRIGGER queue_depth_inc AFTER INSERT ON queue BEGIN
    INSERT INTO queue_depth (account, device, depth)
        VALUES (NEW.recipient_account, NEW.recipient_device, 1)
        ON CONFLICT (account, device) DO UPDATE SET depth = depth + 1;
END;
CREATE TRIGGER queue_depth_dec AFTER DELETE ON queue BEGIN
    UPDATE queue_depth SET depth = depth - 1
        WHERE account = OLD.recipient_account AND device = OLD.recipient_device;
END;

CREATE TABLE submitted (
    sender_account  TEXT    NOT NULL,
    sender_device   INTEGER NOT NULL,
    message_id      TEXT    NOT NULL,
    submitted_at_ms INTEGER NOT NULL,
    PRIMARY KEY (sender_account, sender_device, message_id)
) WITHOUT ROWID;
CREATE INDEX submitted_by_time ON submitted (submitted_at_ms);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE accounts (
    id            TEXT    PRIMARY KEY,
    kind          TEXT    NOT NULL,
    issuer        TEXT    NOT NULL,
    subject       TEXT    NOT NULL,
    integrator    TEXT    NOT NULL,
    opted_in      INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    UNIQUE (kind, issuer, subject)
);
CREATE TABLE devices (
    account_id      TEXT    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device_id       INTEGER NOT NULL,
    noise_key       BLOB    NOT NULL UNIQUE,
    registration_id INTEGER NOT NULL,
    identity_key    BLOB    NOT NULL,
    push_token      TEXT,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
-- kind: 'ec' (the signed EC prekey) or 'kyber-last-resort'
CREATE TABLE signed_prekeys (
    account_id TEXT    NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    key_id     INTEGER NOT NULL,
    public_key BLOB    NOT NULL,
    signature  BLOB    NOT NULL,
    PRIMARY KEY (account_id, device_id, kind),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id) ON DELETE CASCADE
);
-- kind: 'ec' or 'kyber'; signature only for kyber
CREATE TABLE one_time_prekeys (
    account_id TEXT    NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    key_id     INTEGER NOT NULL,
    public_key BLOB    NOT NULL,
    signature  BLOB,
    PRIMARY KEY (account_id, device_id, kind, key_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id) ON DELETE CASCADE
);
CREATE TABLE blocks (
    blocker TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    blocked TEXT NOT NULL,
    PRIMARY KEY (blocker, blocked)
) WITHOUT ROWID;
"#,
    ),
    (
        3,
        r#"
CREATE TABLE providers (
    integrator_id  TEXT    PRIMARY KEY,
    issuer         TEXT    NOT NULL UNIQUE,
    discovery_url  TEXT    NOT NULL,
    allowed_algs   TEXT    NOT NULL,
    push_endpoint  TEXT    NOT NULL,
    push_secret    TEXT    NOT NULL,
    media_base_url TEXT    NOT NULL,
    enlistments_per_hour    INTEGER NOT NULL,
    max_devices_per_account INTEGER NOT NULL,
    messages_per_minute     INTEGER NOT NULL,
    enabled        INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
"#,
    ),
    (
        4,
        r#"
ALTER TABLE accounts ADD COLUMN consent_version TEXT;
ALTER TABLE accounts ADD COLUMN read_receipts INTEGER;
"#,
    ),
];

pub(crate) fn storage(e: sqlx::Error) -> Error {
    Error::Storage(e.to_string())
}

/// The SQLite message store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    reads: SqlitePool,
    /// One connection for directory writes (accounts, prekeys); queue writes use the committer.
    writes: SqlitePool,
    /// Unbounded, so that an operation takes its place in commit order when it is called (see
    /// [`MessageStore::store_copies_queued`]). What can wait in it is bounded by its callers:
    /// `submit`, `ack` and `settle` callers each wait for their operation; `ack_soon` follows
    /// a device's ack of a copy it was sent, and queued stores are direct copies, both bounded
    /// by the chat core's per-session limits.
    ops: mpsc::UnboundedSender<Op>,
    commits: Arc<AtomicU64>,
    feed: Arc<OnceLock<CommitFeed>>,
    /// Accounts, devices, opt-ins and blocks as the router reads them.
    directory: directory::Directory,
}

#[derive(Debug)]
enum Op {
    /// The flag: check and record the message id for de-duplication.
    Submit(Submission, i64, bool, oneshot::Sender<Result<SubmitOutcome>>),
    /// `None`: the caller does not wait for the outcome.
    Ack(DeviceAddress, i64, Option<oneshot::Sender<Result<bool>>>),
    Expire(i64, oneshot::Sender<Result<u64>>),
    Backup(String, oneshot::Sender<Result<()>>),
    /// Answered once everything queued before it has committed.
    Barrier(oneshot::Sender<Result<()>>),
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("commits", &self.commit_count())
            .field("fed", &self.feed.get().is_some())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies pending migrations and starts
    /// the committer task. Must be called within a tokio runtime.
    pub async fn open(path: &Path, limits: QueueLimits) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            // A group commit touches many pages: with SQLite's default 2 MiB page cache it
            // spilled pages to disk in mid-transaction, and statement journals went to temporary
            // files (both showed as most of the committer's time under load).
            .pragma("cache_size", "-32768")
            .pragma("temp_store", "memory");
        let mut writer = SqliteConnection::connect_with(&options).await.map_err(storage)?;
        migrate(&mut writer, MIGRATIONS).await?;
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(storage)?;
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(storage)?;
        let (ops, rx) = mpsc::unbounded_channel();
        let commits = Arc::new(AtomicU64::new(0));
        let feed = Arc::new(OnceLock::new());
        // On a thread of its own: a group commit is a dozen awaits (statements on SQLite's
        // worker thread), and as a task of a saturated runtime each of them waited for a full
        // round of the runnable connection tasks (a commit took ~0.7 s under load).
        let committer = committer(writer, rx, limits, Arc::clone(&commits), Arc::clone(&feed));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Storage(format!("starting the store committer: {e}")))?;
        std::thread::Builder::new()
            .name("sqlite-committer".into())
            .spawn(move || runtime.block_on(committer))
            .map_err(|e| Error::Storage(format!("starting the store committer: {e}")))?;
        Ok(Self { reads, writes, ops, commits, feed, directory: Default::default() })
    }

    async fn call<T>(&self, op: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(op(tx)).map_err(|_| Error::Storage("store is closed".into()))?;
        rx.await.map_err(|_| Error::Storage("store committer stopped".into()))?
    }

    /// Writes a consistent copy of the live database to `dest` (online: the store keeps
    /// serving). `dest` must not exist.
    pub async fn backup(&self, dest: &Path) -> Result<()> {
        let dest = dest
            .to_str()
            .ok_or_else(|| Error::Config("backup path is not UTF-8".into()))?
            .to_owned();
        self.call(|tx| Op::Backup(dest, tx)).await
    }

    /// How many write transactions the committer has committed (one per group commit).
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The schema version in force.
    pub async fn schema_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
            .fetch_one(&self.reads)
            .await
            .map_err(storage)?;
        Ok(row.get("v"))
    }
}

/// Applies the migrations of `MIGRATIONS`-style lists newer than the database's version, each
/// in its own transaction; refuses a database newer than the list.
pub(crate) async fn migrate(conn: &mut SqliteConnection, migrations: &[(i64, &str)]) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(storage)?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        .fetch_one(&mut *conn)
        .await
        .map_err(storage)?
        .get("v");
    if let Some(&(newest, _)) = migrations.last()
        && current > newest
    {
        return Err(Error::Config(format!(
            "the database has schema version {current}, newer than this build knows ({newest}); \
             run a newer interop-server"
        )));
    }
    for (version, sql) in migrations.iter().filter(|(v, _)| *v > current) {
        let mut tx = conn.begin().await.map_err(storage)?;
        sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(storage)?;
        sqlx::query("INSERT INTO schema_version (version, applied_at) VALUES (?, datetime('now'))")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        tracing::info!(version, "applied storage migration");
    }
    Ok(())
}

/// Owns the writing connection; commits batches of operations.
async fn committer(
    mut conn: SqliteConnection,
    mut rx: mpsc::UnboundedReceiver<Op>,
    limits: QueueLimits,
    commits: Arc<AtomicU64>,
    feed: Arc<OnceLock<CommitFeed>>,
) {
    // The committer is the only writer of `queue` rows, so it numbers them itself (AUTOINCREMENT
    // semantics: never below anything ever used, deleted rows included).
    let mut last_seq: i64 = match sqlx::query(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'queue'), 0), \
         COALESCE((SELECT MAX(seq) FROM queue), 0)) AS s",
    )
    .fetch_one(&mut conn)
    .await
    {
        Ok(row) => row.get("s"),
        Err(e) => {
            tracing::error!(error = %e, "storage committer cannot read the queue's sequence");
            return;
        }
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // A backup cannot run inside a transaction: run it on its own.
        if let Some(pos) = batch.iter().position(|op| matches!(op, Op::Backup(..))) {
            let Op::Backup(dest, reply) = batch.remove(pos) else { unreachable!("matched above") };
            let result = sqlx::query("VACUUM INTO ?")
                .bind(dest)
                .execute(&mut conn)
                .await
                .map(|_| ())
                .map_err(storage);
            let _ = reply.send(result);
        }
        let mut barriers = Vec::new();
        batch.retain_mut(|op| match op {
            Op::Barrier(reply) => {
                let (dummy, _) = oneshot::channel();
                barriers.push(std::mem::replace(reply, dummy));
                false
            }
            _ => true,
        });
        if !batch.is_empty() {
            let started = std::time::Instant::now();
            metrics::histogram!("interop_store_batch_operations").record(batch.len() as f64);
            run_batch(&mut conn, std::mem::take(&mut batch), &limits, &mut last_seq, feed.get())
                .await;
            metrics::histogram!("interop_store_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            commits.fetch_add(1, Ordering::Relaxed);
        }
        for reply in barriers {
            let _ = reply.send(Ok(()));
        }
    }
}

/// Rows per multi-row statement (SQLite allows 32,766 bound values; a queue row binds 8).
const ROWS_PER_STATEMENT: usize = 1000;

type SubmitReply = oneshot::Sender<Result<SubmitOutcome>>;
/// A submission in a batch: what, when, whether it is de-duplicated, who waits.
type SubmitOp = (Submission, i64, bool, SubmitReply);
/// An ack to apply: the recipient, the copy's seq, and who waits for the outcome (if anyone).
type AckOp = (DeviceAddress, i64, Option<oneshot::Sender<Result<bool>>>);

/// One group commit: every operation of `ops` in one transaction, with a fixed number of
/// statements per kind of operation (not per message), so a batch costs a handful of round trips
/// to SQLite's worker thread whatever its size. Replies go out only after the commit.
async fn run_batch(
    conn: &mut SqliteConnection,
    ops: Vec<Op>,
    limits: &QueueLimits,
    last_seq: &mut i64,
    feed: Option<&CommitFeed>,
) {
    let mut submits: Vec<SubmitOp> = Vec::new();
    let mut acks: Vec<AckOp> = Vec::new();
    let mut expires: Vec<(i64, oneshot::Sender<Result<u64>>)> = Vec::new();
    for op in ops {
        match op {
            Op::Submit(s, now, dedupe, reply) => submits.push((s, now, dedupe, reply)),
            Op::Ack(addr, seq, reply) => acks.push((addr, seq, reply)),
            Op::Expire(now, reply) => expires.push((now, reply)),
            Op::Backup(..) | Op::Barrier(..) => {
                unreachable!("backups and barriers are taken out of the batch")
            }
        }
    }
    let result: std::result::Result<_, sqlx::Error> = async {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        // Acks first: they free room in the queues the submissions are checked against.
        let deleted = delete_acked(&mut tx, &acks).await?;
        let outcomes = decide(&mut tx, &submits, limits, last_seq).await?;
        insert_stored(&mut tx, &submits, &outcomes).await?;
        let mut dropped = Vec::with_capacity(expires.len());
        for (now, _) in &expires {
            let n = sqlx::query("DELETE FROM queue WHERE expires_at_ms <= ?")
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM submitted WHERE submitted_at_ms < ?")
                .bind(now.saturating_sub(limits.dedupe_window_ms))
                .execute(&mut *tx)
                .await?;
            dropped.push(n);
        }
        tx.commit().await?;
        Ok((deleted, outcomes, dropped))
    }
    .await;
    match result {
        Ok((deleted, outcomes, dropped)) => {
            for (_, seq, reply) in acks {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(deleted.contains(&seq)));
                }
            }
            for ((s, now, _, reply), outcome) in submits.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome.clone()));
                // Stored copies go to the feed in sequence order: `decide` numbered them in
                // batch order and batches commit one after the other.
                if let (Some(feed), SubmitOutcome::Stored(seqs)) = (feed, outcome) {
                    let Submission { sender, message_id, copies, .. } = s;
                    for ((dev, stanza), seq) in copies.into_iter().zip(seqs) {
                        let queued = Queued {
                            seq,
                            sender: sender.clone(),
                            message_id: message_id.clone(),
                            stanza,
                            stored_at_ms: now,
                        };
                        feed(&dev, queued);
                    }
                }
            }
            for ((_, reply), n) in expires.into_iter().zip(dropped) {
                let _ = reply.send(Ok(n));
            }
        }
        Err(e) => {
            // The transaction rolled back: nobody's operation took effect.
            tracing::warn!(error = %e, "storage batch failed");
            let fail = || Error::Storage(format!("batch failed: {e}"));
            for (_, _, reply) in acks {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(fail()));
                }
            }
            for (_, _, _, reply) in submits {
                let _ = reply.send(Err(fail()));
            }
            for (_, reply) in expires {
                let _ = reply.send(Err(fail()));
            }
        }
    }
}

/// Deletes the acked copies (each only from its own recipient's queue); the set of deleted seqs.
async fn delete_acked(
    tx: &mut SqliteConnection,
    acks: &[AckOp],
) -> std::result::Result<HashSet<i64>, sqlx::Error> {
    let mut deleted = HashSet::new();
    for chunk in acks.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "DELETE FROM queue WHERE (seq, recipient_account, recipient_device) IN (",
        );
        q.push_values(chunk, |mut row, (addr, seq, _)| {
            row.push_bind(*seq).push_bind(&addr.account).push_bind(i64::from(addr.device));
        });
        q.push(") RETURNING seq");
        for row in q.build().persistent(false).fetch_all(&mut *tx).await? {
            deleted.insert(row.get::<i64, _>("seq"));
        }
    }
    Ok(deleted)
}

/// Decides every submission of the batch as if they ran one after the other: duplicates (of
/// stored ids or of an earlier submission in the batch), full queues, or stored with new seqs.
async fn decide(
    tx: &mut SqliteConnection,
    submits: &[SubmitOp],
    limits: &QueueLimits,
    last_seq: &mut i64,
) -> std::result::Result<Vec<SubmitOutcome>, sqlx::Error> {
    let mut seen: HashSet<(String, u32, String)> = HashSet::new();
    for chunk in submits.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT sender_account, sender_device, message_id FROM submitted \
             WHERE (sender_account, sender_device, message_id) IN (",
        );
        q.push_values(chunk, |mut row, (s, _, _, _)| {
            row.push_bind(&s.sender.account)
                .push_bind(i64::from(s.sender.device))
                .push_bind(&s.message_id);
        });
        q.push(")");
        for row in q.build().persistent(false).fetch_all(&mut *tx).await? {
            seen.insert((
                row.get("sender_account"),
                device_of(&row, "sender_device"),
                row.get("message_id"),
            ));
        }
    }
    let mut recipients: Vec<&DeviceAddress> =
        submits.iter().flat_map(|(s, _, _, _)| s.copies.iter().map(|(d, _)| d)).collect();
    recipients.sort();
    recipients.dedup();
    let mut depth: HashMap<DeviceAddress, u64> = HashMap::with_capacity(recipients.len());
    for chunk in recipients.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT account, device, depth FROM queue_depth WHERE (account, device) IN (",
        );
        q.push_values(chunk, |mut row, d| {
            row.push_bind(&d.account).push_bind(i64::from(d.device));
        });
        q.push(")");
        for row in q.build().persistent(false).fetch_all(&mut *tx).await? {
            let d =
                DeviceAddress { account: row.get("account"), device: device_of(&row, "device") };
            depth.insert(d, u64::try_from(row.get::<i64, _>("depth")).unwrap_or(0));
        }
    }
    let mut outcomes = Vec::with_capacity(submits.len());
    for (s, _, dedupe, _) in submits {
        let key = (s.sender.account.clone(), s.sender.device, s.message_id.clone());
        if *dedupe && seen.contains(&key) {
            outcomes.push(SubmitOutcome::Duplicate);
            continue;
        }
        // Capacity of every recipient device first, so the submission is all-or-nothing.
        let mut wanted: Vec<(&DeviceAddress, u64)> = Vec::new();
        for (dev, _) in &s.copies {
            match wanted.iter_mut().find(|(d, _)| *d == dev) {
                Some((_, n)) => *n += 1,
                None => wanted.push((dev, 1)),
            }
        }
        let full = wanted
            .iter()
            .find(|(dev, n)| depth.get(*dev).copied().unwrap_or(0) + n > limits.max_per_device);
        if let Some((dev, _)) = full {
            outcomes.push(SubmitOutcome::QueueFull((*dev).clone()));
            continue;
        }
        for (dev, n) in wanted {
            *depth.entry(dev.clone()).or_insert(0) += n;
        }
        if *dedupe {
            seen.insert(key);
        }
        let seqs = s
            .copies
            .iter()
            .map(|_| {
                *last_seq += 1;
                *last_seq
            })
            .collect();
        outcomes.push(SubmitOutcome::Stored(seqs));
    }
    Ok(outcomes)
}

/// Writes the stored submissions: their ids for de-duplication and their copies.
async fn insert_stored(
    tx: &mut SqliteConnection,
    submits: &[SubmitOp],
    outcomes: &[SubmitOutcome],
) -> std::result::Result<(), sqlx::Error> {
    let stored: Vec<(&Submission, i64, bool, &[i64])> = submits
        .iter()
        .zip(outcomes)
        .filter_map(|((s, now, dedupe, _), o)| match o {
            SubmitOutcome::Stored(seqs) => Some((s, *now, *dedupe, seqs.as_slice())),
            _ => None,
        })
        .collect();
    let recorded: Vec<_> = stored.iter().filter(|(_, _, dedupe, _)| *dedupe).collect();
    for chunk in recorded.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO submitted (sender_account, sender_device, message_id, submitted_at_ms) ",
        );
        q.push_values(chunk, |mut row, (s, now, _, _)| {
            row.push_bind(&s.sender.account)
                .push_bind(i64::from(s.sender.device))
                .push_bind(&s.message_id)
                .push_bind(*now);
        });
        q.build().persistent(false).execute(&mut *tx).await?;
    }
    let rows: Vec<(&Submission, i64, i64, &DeviceAddress, &[u8])> = stored
        .iter()
        .flat_map(|(s, now, _, seqs)| {
            s.copies
                .iter()
                .zip(seqs.iter())
                .map(move |((dev, stanza), seq)| (*s, *now, *seq, dev, stanza.as_slice()))
        })
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO queue (seq, recipient_account, recipient_device, sender_account, \
             sender_device, message_id, stanza, stored_at_ms, expires_at_ms) ",
        );
        q.push_values(chunk, |mut row, (s, now, seq, dev, stanza)| {
            row.push_bind(*seq)
                .push_bind(&dev.account)
                .push_bind(i64::from(dev.device))
                .push_bind(&s.sender.account)
                .push_bind(i64::from(s.sender.device))
                .push_bind(&s.message_id)
                .push_bind(*stanza)
                .push_bind(*now)
                .push_bind(s.expires_at_ms);
        });
        q.build().persistent(false).execute(&mut *tx).await?;
    }
    Ok(())
}

fn device_of(row: &sqlx::sqlite::SqliteRow, col: &str) -> u32 {
    // Devices are written from u32 values only.
    u32::try_from(row.get::<i64, _>(col)).unwrap_or(u32::MAX)
}

impl MessageStore for SqliteStore {
    async fn submit(&self, submission: Submission, now_ms: i64) -> Result<SubmitOutcome> {
        if submission.copies.is_empty() {
            return Err(Error::Config("a submission needs at least one copy".into()));
        }
        self.call(|tx| Op::Submit(submission, now_ms, true, tx)).await
    }

    async fn store_copies(&self, submission: Submission, now_ms: i64) -> Result<SubmitOutcome> {
        if submission.copies.is_empty() {
            return Err(Error::Config("a submission needs at least one copy".into()));
        }
        self.call(|tx| Op::Submit(submission, now_ms, false, tx)).await
    }

    fn store_copies_queued(&self, submission: Submission, now_ms: i64) -> Option<Queuing> {
        let (tx, rx) = oneshot::channel();
        let sent = if submission.copies.is_empty() {
            Err(Error::Config("a submission needs at least one copy".into()))
        } else {
            self.ops
                .send(Op::Submit(submission, now_ms, false, tx))
                .map_err(|_| Error::Storage("store is closed".into()))
        };
        Some(Box::pin(async move {
            sent?;
            rx.await.map_err(|_| Error::Storage("store committer stopped".into()))?
        }))
    }

    async fn pending(
        &self,
        recipient: &DeviceAddress,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Queued>> {
        let rows = sqlx::query(
            "SELECT seq, sender_account, sender_device, message_id, stanza, stored_at_ms FROM queue \
             WHERE recipient_account = ? AND recipient_device = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(&recipient.account)
        .bind(i64::from(recipient.device))
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await
        .map_err(storage)?;
        Ok(rows
            .iter()
            .map(|r| Queued {
                seq: r.get("seq"),
                sender: DeviceAddress {
                    account: r.get("sender_account"),
                    device: device_of(r, "sender_device"),
                },
                message_id: r.get("message_id"),
                stanza: r.get("stanza"),
                stored_at_ms: r.get("stored_at_ms"),
            })
            .collect())
    }

    async fn ack(&self, recipient: &DeviceAddress, seq: i64) -> Result<bool> {
        let recipient = recipient.clone();
        self.call(|tx| Op::Ack(recipient, seq, Some(tx))).await
    }

    async fn ack_soon(&self, recipient: &DeviceAddress, seq: i64) -> Result<()> {
        self.ops
            .send(Op::Ack(recipient.clone(), seq, None))
            .map_err(|_| Error::Storage("store is closed".into()))
    }

    async fn settle(&self) -> Result<()> {
        self.call(Op::Barrier).await
    }

    fn feed_commits(&self, feed: CommitFeed) -> bool {
        // The committer is the only writer and numbers copies in commit order: it can promise
        // the feed sees each device's copies in sequence order.
        self.feed.set(feed).is_ok()
    }

    async fn depth(&self, recipient: &DeviceAddress) -> Result<u64> {
        let depth: Option<i64> =
            sqlx::query("SELECT depth FROM queue_depth WHERE account = ? AND device = ?")
                .bind(&recipient.account)
                .bind(i64::from(recipient.device))
                .fetch_optional(&self.reads)
                .await
                .map_err(storage)?
                .map(|r| r.get("depth"));
        Ok(depth.and_then(|d| u64::try_from(d).ok()).unwrap_or(0))
    }

    async fn expire(&self, now_ms: i64) -> Result<u64> {
        self.call(|tx| Op::Expire(now_ms, tx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite;

    async fn open(limits: QueueLimits) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("gk.db"), limits).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn suite_fan_out_order_ack() {
        let (_d, s) = open(QueueLimits::default()).await;
        suite::fan_out_order_ack(&s).await;
    }

    #[tokio::test]
    async fn suite_retries_are_deduplicated() {
        let (_d, s) = open(QueueLimits::default()).await;
        suite::retries_are_deduplicated(&s).await;
    }

    #[tokio::test]
    async fn suite_full_queue_refuses_whole_submission() {
        let (_d, s) = open(QueueLimits { max_per_device: 3, ..QueueLimits::default() }).await;
        suite::full_queue_refuses_whole_submission(&s, 3).await;
    }

    #[tokio::test]
    async fn suite_expiry_drops_old_copies() {
        let (_d, s) = open(QueueLimits::default()).await;
        suite::expiry_drops_old_copies(&s).await;
    }

    #[tokio::test]
    async fn data_survives_reopening_and_migrations_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gk.db");
        let bob = DeviceAddress::new("b", 1);
        {
            let s = SqliteStore::open(&path, QueueLimits::default()).await.unwrap();
            let sub = Submission {
                sender: DeviceAddress::new("a", 1),
                message_id: "keep".into(),
                copies: vec![(bob.clone(), b"x".to_vec())],
                expires_at_ms: i64::MAX,
            };
            assert!(matches!(s.submit(sub, 0).await.unwrap(), SubmitOutcome::Stored(_)));
        }
        let s = SqliteStore::open(&path, QueueLimits::default()).await.unwrap();
        assert_eq!(s.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
        let left = s.pending(&bob, 0, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].message_id, "keep");
    }

    #[tokio::test]
    async fn concurrent_submissions_are_group_committed_and_all_stored() {
        let (_d, s) = open(QueueLimits::default()).await;
        let s = std::sync::Arc::new(s);
        let bob = DeviceAddress::new("b", 1);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = std::sync::Arc::clone(&s);
            let bob = bob.clone();
            tasks.push(tokio::spawn(async move {
                let sub = Submission {
                    sender: DeviceAddress::new("a", 1),
                    message_id: format!("c{i}"),
                    copies: vec![(bob, vec![1])],
                    expires_at_ms: i64::MAX,
                };
                s.submit(sub, 0).await.unwrap()
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap(), SubmitOutcome::Stored(_)));
        }
        assert_eq!(s.depth(&bob).await.unwrap(), 200);
        assert_eq!(s.pending(&bob, 0, 1000).await.unwrap().len(), 200);
        // On this single-threaded test runtime all 200 submissions are queued before the
        // committer wakes, so they share very few transactions (one fsync each).
        assert!(s.commit_count() >= 1);
        assert!(s.commit_count() <= 3, "{} commits for 200 submissions", s.commit_count());
    }

    /// Submissions that share a group commit are decided as if they ran one after the other:
    /// the second of two with the same id is a duplicate, and queue capacity counts the earlier
    /// ones of the same batch.
    #[tokio::test]
    async fn one_group_commit_decides_like_one_after_the_other() {
        let (_d, s) = open(QueueLimits { max_per_device: 3, ..QueueLimits::default() }).await;
        let s = Arc::new(s);
        let bob = DeviceAddress::new("b", 1);
        let ids = ["same", "same", "x1", "x2", "x3"];
        let mut tasks = Vec::new();
        for id in ids {
            let (s, bob) = (Arc::clone(&s), bob.clone());
            tasks.push(tokio::spawn(async move {
                let sub = Submission {
                    sender: DeviceAddress::new("a", 1),
                    message_id: id.to_owned(),
                    copies: vec![(bob, id.as_bytes().to_vec())],
                    expires_at_ms: i64::MAX,
                };
                s.submit(sub, 0).await.unwrap()
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        assert_eq!(s.commit_count(), 1, "all five in one transaction");
        assert!(matches!(outcomes[0], SubmitOutcome::Stored(_)));
        assert_eq!(outcomes[1], SubmitOutcome::Duplicate);
        assert!(matches!(outcomes[2], SubmitOutcome::Stored(_)));
        assert!(matches!(outcomes[3], SubmitOutcome::Stored(_)));
        assert_eq!(outcomes[4], SubmitOutcome::QueueFull(bob.clone()));
        let seqs: Vec<i64> = outcomes
            .iter()
            .filter_map(|o| match o {
                SubmitOutcome::Stored(s) => Some(s[0]),
                _ => None,
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "numbered in submission order: {seqs:?}");
        let queued = s.pending(&bob, 0, 10).await.unwrap();
        assert_eq!(queued.iter().map(|q| q.seq).collect::<Vec<_>>(), seqs);
        assert_eq!(s.depth(&bob).await.unwrap(), 3);
    }

    /// Sequence numbers never go back, even after the newest copies were acked and the store
    /// reopened (AUTOINCREMENT semantics, kept by the committer's own numbering).
    #[tokio::test]
    async fn sequence_numbers_never_repeat_across_acks_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gk.db");
        let bob = DeviceAddress::new("b", 1);
        let sub = |id: &str| Submission {
            sender: DeviceAddress::new("a", 1),
            message_id: id.to_owned(),
            copies: vec![(bob.clone(), vec![1])],
            expires_at_ms: i64::MAX,
        };
        let first = {
            let s = SqliteStore::open(&path, QueueLimits::default()).await.unwrap();
            let SubmitOutcome::Stored(seqs) = s.submit(sub("one"), 0).await.unwrap() else {
                panic!("not stored")
            };
            assert!(s.ack(&bob, seqs[0]).await.unwrap());
            seqs[0]
        };
        let s = SqliteStore::open(&path, QueueLimits::default()).await.unwrap();
        let SubmitOutcome::Stored(seqs) = s.submit(sub("two"), 0).await.unwrap() else {
            panic!("not stored")
        };
        assert!(seqs[0] > first, "{} after {first}", seqs[0]);
    }

    #[tokio::test]
    async fn online_backup_is_a_consistent_copy() {
        let (dir, s) = open(QueueLimits::default()).await;
        let bob = DeviceAddress::new("b", 1);
        let sub = Submission {
            sender: DeviceAddress::new("a", 1),
            message_id: "b1".into(),
            copies: vec![(bob.clone(), b"payload".to_vec())],
            expires_at_ms: i64::MAX,
        };
        s.submit(sub, 0).await.unwrap();
        let dest = dir.path().join("backup.db");
        s.backup(&dest).await.unwrap();
        let copy = SqliteStore::open(&dest, QueueLimits::default()).await.unwrap();
        assert_eq!(copy.pending(&bob, 0, 10).await.unwrap()[0].stanza, b"payload");
        // A second backup onto an existing file is refused rather than overwriting it.
        assert!(s.backup(&dest).await.is_err());
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gk.db");
        drop(SqliteStore::open(&path, QueueLimits::default()).await.unwrap());
        let opts = SqliteConnectOptions::new().filename(&path);
        let mut c = SqliteConnection::connect_with(&opts).await.unwrap();
        sqlx::query("INSERT INTO schema_version VALUES (999, 'future')")
            .execute(&mut c)
            .await
            .unwrap();
        drop(c);
        let err = SqliteStore::open(&path, QueueLimits::default()).await.unwrap_err();
        assert!(err.to_string().contains("newer than this build"), "{err}");
    }
}

//! The embedded SQLite backend (WAL, `synchronous=FULL`): the gatekeeper's default store.
//!
//! Writes go through one committer task that owns the only writing connection and commits
//! whatever arrived while the previous commit was on disk as one transaction (group commit):
//! one fsync covers many messages, and callers still get their answer only after it.
//! Reads use a small pool of read connections (WAL lets them run beside the writer).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot};

mod accounts;
mod providers;

use super::{DeviceAddress, MessageStore, QueueLimits, Queued, Submission, SubmitOutcome};
use crate::{Error, Result};

/// How many operations one group commit takes at most.
const MAX_BATCH: usize = 512;

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
#[derive(Debug)]
pub struct SqliteStore {
    reads: SqlitePool,
    /// One connection for directory writes (accounts, prekeys); queue writes use the committer.
    writes: SqlitePool,
    ops: mpsc::Sender<Op>,
    commits: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Op {
    Submit(Submission, i64, oneshot::Sender<Result<SubmitOutcome>>),
    Ack(DeviceAddress, i64, oneshot::Sender<Result<bool>>),
    Expire(i64, oneshot::Sender<Result<u64>>),
    Backup(String, oneshot::Sender<Result<()>>),
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
            .foreign_keys(true);
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
        let (ops, rx) = mpsc::channel(4 * MAX_BATCH);
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(committer(writer, rx, limits, Arc::clone(&commits)));
        Ok(Self { reads, writes, ops, commits })
    }

    async fn call<T>(&self, op: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(op(tx)).await.map_err(|_| Error::Storage("store is closed".into()))?;
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
    mut rx: mpsc::Receiver<Op>,
    limits: QueueLimits,
    commits: Arc<AtomicU64>,
) {
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
        if !batch.is_empty() {
            run_batch(&mut conn, &mut batch, &limits).await;
            commits.fetch_add(1, Ordering::Relaxed);
        }
        batch.clear();
    }
}

/// Outcomes computed inside the transaction, delivered only after it committed.
enum Reply {
    Submit(oneshot::Sender<Result<SubmitOutcome>>, SubmitOutcome),
    Ack(oneshot::Sender<Result<bool>>, bool),
    Expire(oneshot::Sender<Result<u64>>, u64),
}

async fn run_batch(conn: &mut SqliteConnection, batch: &mut Vec<Op>, limits: &QueueLimits) {
    let mut replies = Vec::with_capacity(batch.len());
    let result: std::result::Result<(), sqlx::Error> = async {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        for op in batch.drain(..) {
            match op {
                Op::Submit(s, now, reply) => {
                    let outcome = submit_one(&mut tx, &s, now, limits).await?;
                    replies.push(Reply::Submit(reply, outcome));
                }
                Op::Ack(addr, seq, reply) => {
                    let done = sqlx::query(
                        "DELETE FROM queue WHERE seq = ? AND recipient_account = ? AND recipient_device = ?",
                    )
                    .bind(seq)
                    .bind(&addr.account)
                    .bind(i64::from(addr.device))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    replies.push(Reply::Ack(reply, done == 1));
                }
                Op::Expire(now, reply) => {
                    let dropped = sqlx::query("DELETE FROM queue WHERE expires_at_ms <= ?")
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    sqlx::query("DELETE FROM submitted WHERE submitted_at_ms < ?")
                        .bind(now.saturating_sub(limits.dedupe_window_ms))
                        .execute(&mut *tx)
                        .await?;
                    replies.push(Reply::Expire(reply, dropped));
                }
                Op::Backup(..) => unreachable!("backups are taken out of the batch"),
            }
        }
        tx.commit().await
    }
    .await;
    match result {
        Ok(()) => {
            for r in replies {
                match r {
                    Reply::Submit(tx, v) => drop(tx.send(Ok(v))),
                    Reply::Ack(tx, v) => drop(tx.send(Ok(v))),
                    Reply::Expire(tx, v) => drop(tx.send(Ok(v))),
                }
            }
        }
        Err(e) => {
            // The transaction rolled back: nobody's operation took effect.
            tracing::warn!(error = %e, "storage batch failed");
            let fail = || Error::Storage(format!("batch failed: {e}"));
            for r in replies {
                match r {
                    Reply::Submit(tx, _) => drop(tx.send(Err(fail()))),
                    Reply::Ack(tx, _) => drop(tx.send(Err(fail()))),
                    Reply::Expire(tx, _) => drop(tx.send(Err(fail()))),
                }
            }
            // Operations not reached yet are dropped with the batch; their callers see
            // "store committer stopped"-style errors through the closed oneshot.
        }
    }
}

async fn submit_one(
    tx: &mut SqliteConnection,
    s: &Submission,
    now: i64,
    limits: &QueueLimits,
) -> std::result::Result<SubmitOutcome, sqlx::Error> {
    let seen = sqlx::query(
        "SELECT 1 FROM submitted WHERE sender_account = ? AND sender_device = ? AND message_id = ?",
    )
    .bind(&s.sender.account)
    .bind(i64::from(s.sender.device))
    .bind(&s.message_id)
    .fetch_optional(&mut *tx)
    .await?;
    if seen.is_some() {
        return Ok(SubmitOutcome::Duplicate);
    }
    // Capacity of every recipient device first, so the submission is all-or-nothing.
    let mut wanted: Vec<(&DeviceAddress, u64)> = Vec::new();
    for (dev, _) in &s.copies {
        match wanted.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, n)) => *n += 1,
            None => wanted.push((dev, 1)),
        }
    }
    for (dev, n) in wanted {
        let depth: i64 =
            sqlx::query("SELECT depth FROM queue_depth WHERE account = ? AND device = ?")
                .bind(&dev.account)
                .bind(i64::from(dev.device))
                .fetch_optional(&mut *tx)
                .await?
                .map_or(0, |r| r.get("depth"));
        if u64::try_from(depth).unwrap_or(0) + n > limits.max_per_device {
            return Ok(SubmitOutcome::QueueFull(dev.clone()));
        }
    }
    sqlx::query(
        "INSERT INTO submitted (sender_account, sender_device, message_id, submitted_at_ms) VALUES (?, ?, ?, ?)",
    )
    .bind(&s.sender.account)
    .bind(i64::from(s.sender.device))
    .bind(&s.message_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let mut seqs = Vec::with_capacity(s.copies.len());
    for (dev, stanza) in &s.copies {
        let seq: i64 = sqlx::query(
            "INSERT INTO queue (recipient_account, recipient_device, sender_account, sender_device, \
             message_id, stanza, stored_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        )
        .bind(&dev.account)
        .bind(i64::from(dev.device))
        .bind(&s.sender.account)
        .bind(i64::from(s.sender.device))
        .bind(&s.message_id)
        .bind(stanza.as_slice())
        .bind(now)
        .bind(s.expires_at_ms)
        .fetch_one(&mut *tx)
        .await?
        .get("seq");
        seqs.push(seq);
    }
    Ok(SubmitOutcome::Stored(seqs))
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
        self.call(|tx| Op::Submit(submission, now_ms, tx)).await
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
        self.call(|tx| Op::Ack(recipient, seq, tx)).await
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

//! The client's profile database: one SQLite file, `profile.db`, in the profile's data
//! directory.
//!
//! ```text
//!  interop_e2ee::Account ── load / commit(Batch) ──▶ SignalStore ─┐
//!  CLI, listener ── history, status, contacts, settings ──────────┴▶ ProfileDb
//!                                                                     │ one connection
//!                                                                     ▼
//!                                          <dir>/profile.db (WAL, synchronous=FULL, mode 0600)
//! ```
//!
//! Tables: `signal_records` (libsignal's state as opaque records, see [`interop_e2ee::Storage`]),
//! `messages` (history, both directions), `contacts`, `settings` (the profile's own key-value
//! data) and `schema_migrations`. [`ProfileDb::open`] applies the pending migrations of
//! [`MIGRATIONS`], each in its own transaction, and refuses a file written by a newer build.
//!
//! Architecture invariant: a message is acked to the gatekeeper only after its plaintext and
//! the new session state are committed together. [`SignalStore::commit`] writes a batch's
//! records and inserts its arrivals into `messages` in one `BEGIN IMMEDIATE` transaction: all
//! or nothing.
//!
//! Architecture invariant: recipients de-duplicate by message id. `messages` is unique on
//! (sender account, message id); an arrival already stored is ignored, and the commit that
//! carries it still succeeds.
//!
//! ```no_run
//! # async fn demo() -> Result<(), interop_client::store::StoreError> {
//! use interop_client::store::{ProfileDb, SignalStore};
//!
//! let db = ProfileDb::open(std::path::Path::new("/tmp/alice")).await?;
//! let signal = SignalStore::new(db.clone()); // hand this to interop_e2ee::Account
//! for entry in db.incoming_since(0).await? {
//!     println!("#{} from device {}", entry.seq, entry.sender_device);
//! }
//! # drop(signal);
//! # Ok(())
//! # }
//! ```
//!
//! # What this module does not do
//! - Encrypt at rest: the file (and its directory, when this module creates it) is private to
//!   the user (modes 0600 and 0700 on Unix), nothing more.
//! - Lock out a second process: SQLite serialises writers, but [`SignalStore`] assumes it is
//!   the only writer of `signal_records` (see [`interop_e2ee::Storage`]); run one client per
//!   profile.
//! - Decode message content: `messages.content` holds the encoded application-layer message
//!   as interop-e2ee hands it over.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use interop_e2ee::{Batch, DeviceAddress, RecordKey, Storage, StorageError};
use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

/// The database file's name inside the data directory.
pub const FILE_NAME: &str = "profile.db";

/// Versioned schema migrations, applied in order when a database is opened. Never edit an
/// applied one: add a new version.
pub const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"
CREATE TABLE signal_records (
    kind  TEXT NOT NULL,
    id    BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;

CREATE TABLE messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    direction      TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
    peer_account   TEXT    NOT NULL,
    sender_account TEXT    NOT NULL,
    sender_device  INTEGER NOT NULL,
    message_id     TEXT    NOT NULL,
    content        BLOB    NOT NULL,
    group_id       BLOB,
    status         TEXT    NOT NULL
        CHECK (status IN ('received', 'sent', 'delivered', 'read', 'failed')),
    at_ms          INTEGER NOT NULL,
    UNIQUE (sender_account, message_id)
);
CREATE INDEX messages_by_peer ON messages (peer_account, seq);

CREATE TABLE contacts (
    identifier TEXT PRIMARY KEY,
    account    TEXT NOT NULL,
    integrator TEXT,
    added_ms   INTEGER NOT NULL
);
CREATE INDEX contacts_by_account ON contacts (account);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"#,
)];

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the profile database. Messages name no user data (no ids, no content, no paths).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A stored value does not have the form this code writes (the file is damaged or was
    /// edited by other software). Names the column.
    #[error("profile database: a stored {0} is malformed")]
    Malformed(&'static str),
    /// The file was written by a newer build: its schema version is past the newest this code
    /// knows.
    #[error(
        "profile database: schema version {found} is newer than this build knows ({known}); \
         use a newer interop-client"
    )]
    SchemaTooNew {
        /// The database's version.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// The data directory or the database file could not be created.
    #[error("profile database: cannot create the profile ({})", .0.kind())]
    Io(#[source] std::io::Error),
    /// SQLite failed.
    #[error("profile database: {}", describe(.0))]
    Sqlite(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Sqlite(e)
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A short description of an sqlx error without the parts that could carry data or paths.
fn describe(e: &sqlx::Error) -> Cow<'static, str> {
    use sqlx::Error as E;
    match e {
        // SQLite's own messages name tables and columns, never values.
        E::Database(d) => format!("sqlite: {}", d.message()).into(),
        E::Io(io) => format!("i/o error ({})", io.kind()).into(),
        E::PoolTimedOut => "timed out waiting for the database connection".into(),
        E::PoolClosed => "the database is closed".into(),
        E::WorkerCrashed => "the database worker stopped".into(),
        E::RowNotFound => "row not found".into(),
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. } => "a stored value has an unexpected type".into(),
        E::Configuration(_) => "bad connection configuration".into(),
        _ => "internal error".into(),
    }
}

/// The profile database. Cheap to clone: clones share one connection (a single writer).
#[derive(Clone, Debug)]
pub struct ProfileDb {
    pool: SqlitePool,
    dir: Arc<Path>,
}

impl ProfileDb {
    /// Opens `<dir>/profile.db`, creating the directory and the file if needed, and applies
    /// the pending migrations. Fails with [`StoreError::SchemaTooNew`] when the file was
    /// written by a newer build. Must be called within a tokio runtime.
    pub async fn open(dir: &Path) -> Result<Self> {
        let path = create_private(dir)?;
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_with(options)
            .await?;
        let mut conn = pool.acquire().await?;
        migrate(&mut conn, MIGRATIONS).await?;
        drop(conn);
        Ok(Self { pool, dir: Arc::from(dir) })
    }

    /// The data directory this database lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the database for this value and every clone, waiting until the connection is
    /// closed (the file can then be opened again, or copied).
    pub async fn close(self) {
        self.pool.close().await;
    }

    /// The schema version in force (the newest applied migration; 0 for none).
    pub async fn schema_version(&self) -> Result<i64> {
        let (v,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&self.pool)
                .await?;
        Ok(v)
    }

    // ---- messages ----

    /// Records a message this device (`from`) sent to `peer_account`, with status
    /// [`MessageStatus::Sent`]. `content` is the encoded application-layer message that was
    /// encrypted. Returns `false` (and changes nothing) when a message with the same
    /// (sender account, message id) is already stored.
    pub async fn record_outgoing(
        &self,
        from: &DeviceAddress,
        peer_account: &str,
        message_id: &str,
        content: &[u8],
        at_ms: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO messages (direction, peer_account, sender_account, sender_device, \
             message_id, content, group_id, status, at_ms) \
             VALUES ('out', ?, ?, ?, ?, ?, NULL, 'sent', ?) \
             ON CONFLICT (sender_account, message_id) DO NOTHING",
        )
        .bind(peer_account)
        .bind(from.account())
        .bind(i64::from(from.device()))
        .bind(message_id)
        .bind(content)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves the status of the message (`sender_account`, `message_id`) to `status` if that
    /// is a move forward (see [`MessageStatus::can_become`]). Returns whether it changed;
    /// `false` for an unknown message or a move backwards or sideways.
    pub async fn set_status(
        &self,
        sender_account: &str,
        message_id: &str,
        status: MessageStatus,
    ) -> Result<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let current: Option<(String,)> = sqlx::query_as(
            "SELECT status FROM messages WHERE sender_account = ? AND message_id = ?",
        )
        .bind(sender_account)
        .bind(message_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((current,)) = current else {
            return Ok(false);
        };
        let current = MessageStatus::parse(&current).ok_or(StoreError::Malformed("status"))?;
        if !current.can_become(status) {
            return Ok(false);
        }
        sqlx::query("UPDATE messages SET status = ? WHERE sender_account = ? AND message_id = ?")
            .bind(status.as_str())
            .bind(sender_account)
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The last `limit` messages of the conversation with `peer_account`, oldest first.
    pub async fn history(&self, peer_account: &str, limit: u32) -> Result<Vec<HistoryEntry>> {
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT * FROM (SELECT seq, direction, peer_account, sender_account, sender_device, \
             message_id, content, group_id, status, at_ms FROM messages \
             WHERE peer_account = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq ASC",
        )
        .bind(peer_account)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(HistoryEntry::from_row).collect()
    }

    /// Whether the message (`sender_account`, `message_id`) is stored, in either direction.
    pub async fn has_message(&self, sender_account: &str, message_id: &str) -> Result<bool> {
        let (found,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE sender_account = ? AND message_id = ?)",
        )
        .bind(sender_account)
        .bind(message_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(found)
    }

    /// The incoming messages stored after `seq` (pass 0 for all, then the last seen
    /// [`HistoryEntry::seq`]), oldest first.
    pub async fn incoming_since(&self, seq: i64) -> Result<Vec<HistoryEntry>> {
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT seq, direction, peer_account, sender_account, sender_device, message_id, \
             content, group_id, status, at_ms FROM messages \
             WHERE direction = 'in' AND seq > ? ORDER BY seq ASC",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(HistoryEntry::from_row).collect()
    }

    // ---- contacts ----

    /// Adds `contact`, or updates the account and integrator of the contact with its
    /// identifier (keeping the time it was first added).
    pub async fn upsert_contact(&self, contact: &Contact) -> Result<()> {
        sqlx::query(
            "INSERT INTO contacts (identifier, account, integrator, added_ms) VALUES (?, ?, ?, ?) \
             ON CONFLICT (identifier) DO UPDATE \
             SET account = excluded.account, integrator = excluded.integrator",
        )
        .bind(&contact.identifier)
        .bind(&contact.account)
        .bind(contact.integrator.as_deref())
        .bind(contact.added_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The contact with `identifier`, if any.
    pub async fn contact(&self, identifier: &str) -> Result<Option<Contact>> {
        let row: Option<ContactRow> = sqlx::query_as(
            "SELECT identifier, account, integrator, added_ms FROM contacts WHERE identifier = ?",
        )
        .bind(identifier)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Contact::from_row))
    }

    /// All contacts, by identifier.
    pub async fn contacts(&self) -> Result<Vec<Contact>> {
        let rows: Vec<ContactRow> = sqlx::query_as(
            "SELECT identifier, account, integrator, added_ms FROM contacts ORDER BY identifier",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Contact::from_row).collect())
    }

    /// A contact whose account is `account` (the first by identifier when several are).
    pub async fn contact_by_account(&self, account: &str) -> Result<Option<Contact>> {
        let row: Option<ContactRow> = sqlx::query_as(
            "SELECT identifier, account, integrator, added_ms FROM contacts WHERE account = ? \
             ORDER BY identifier LIMIT 1",
        )
        .bind(account)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Contact::from_row))
    }

    // ---- settings ----

    /// The value of the setting `key`, if set.
    pub async fn get_setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(v,)| v))
    }

    /// Sets the setting `key` to `value`.
    pub async fn set_setting(&self, key: &str, value: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes the setting `key`; returns whether it was set.
    pub async fn delete_setting(&self, key: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM settings WHERE key = ?").bind(key).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }
}

/// Creates `dir` (mode 0700 on Unix when created here) and `dir/profile.db` (mode 0600 when
/// created here; SQLite gives its `-wal` and `-shm` files the same mode). Returns the file's
/// path.
fn create_private(dir: &Path) -> Result<PathBuf> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(StoreError::Io)?;
    let path = dir.join(FILE_NAME);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(&path).map_err(StoreError::Io)?;
    Ok(path)
}

/// Applies the migrations newer than the database's version, one transaction each; refuses a
/// database newer than `migrations`. Each step re-reads the version inside its
/// `BEGIN IMMEDIATE` transaction, so two processes opening the same file do not both apply
/// one migration.
async fn migrate(conn: &mut SqliteConnection, migrations: &[(i64, &str)]) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let known = migrations.last().map_or(0, |&(v, _)| v);
    loop {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let (current,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await?;
        if current > known {
            return Err(StoreError::SchemaTooNew { found: current, known });
        }
        let Some(&(version, sql)) = migrations.iter().find(|(v, _)| *v > current) else {
            tx.commit().await?;
            return Ok(());
        };
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_ms) VALUES (?, ?)")
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "applied profile database migration");
    }
}

/// Milliseconds since the Unix epoch by the system clock (0 before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Which way a stored message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received from `sender_account`.
    In,
    /// Sent by this profile.
    Out,
}

impl Direction {
    /// The value stored in `messages.direction`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    /// Parses a stored value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "in" => Some(Direction::In),
            "out" => Some(Direction::Out),
            _ => None,
        }
    }
}

/// The status of a stored message.
///
/// ```text
/// incoming:  Received ──▶ Read
/// outgoing:  Sent ──▶ Delivered ──▶ Read
///              │            └──────────▲  (a read receipt may come without a delivery one)
///              └──▶ Failed
/// ```
///
/// A status only moves forward along these arrows (more than one step at a time is fine);
/// `Read` and `Failed` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageStatus {
    /// An incoming message, stored.
    Received,
    /// An outgoing message, handed to the gatekeeper.
    Sent,
    /// An outgoing message the recipient's device confirmed.
    Delivered,
    /// Read: by the recipient (outgoing) or by the user (incoming).
    Read,
    /// An outgoing message that could not be sent.
    Failed,
}

impl MessageStatus {
    /// Every status.
    pub const ALL: [MessageStatus; 5] = [
        MessageStatus::Received,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Failed,
    ];

    /// The value stored in `messages.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Received => "received",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
        }
    }

    /// Parses a stored value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether a message with this status may move to `next` (a move forward; see the
    /// diagram on the type).
    pub fn can_become(self, next: MessageStatus) -> bool {
        use MessageStatus::*;
        matches!(
            (self, next),
            (Received, Read) | (Sent, Delivered | Read | Failed) | (Delivered, Read)
        )
    }
}

/// One stored message.
///
/// `Debug` shows neither the content nor the account and message ids (no user content or
/// identifiers in logs).
#[derive(Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Position in the database (increasing in the order messages were stored).
    pub seq: i64,
    /// Incoming or outgoing.
    pub direction: Direction,
    /// The conversation: the other party's account id.
    pub peer_account: String,
    /// The sending account (the peer for incoming messages, this profile for outgoing ones).
    pub sender_account: String,
    /// The sending device.
    pub sender_device: u8,
    /// The application message id.
    pub message_id: String,
    /// The encoded application-layer message.
    pub content: Vec<u8>,
    /// The group's 16-byte distribution id, for group messages.
    pub group: Option<[u8; 16]>,
    /// Delivery status.
    pub status: MessageStatus,
    /// When it was stored (incoming) or sent (outgoing), in ms since the Unix epoch.
    pub at_ms: i64,
}

impl fmt::Debug for HistoryEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryEntry")
            .field("seq", &self.seq)
            .field("direction", &self.direction)
            .field("sender_device", &self.sender_device)
            .field("content_len", &self.content.len())
            .field("group", &self.group.is_some())
            .field("status", &self.status)
            .field("at_ms", &self.at_ms)
            .finish_non_exhaustive()
    }
}

/// A `messages` row as selected by this module (column order of the SELECTs).
type MessageRow = (i64, String, String, String, i64, String, Vec<u8>, Option<Vec<u8>>, String, i64);

impl HistoryEntry {
    fn from_row(row: MessageRow) -> Result<Self> {
        let (
            seq,
            direction,
            peer_account,
            sender_account,
            device,
            message_id,
            content,
            group,
            status,
            at_ms,
        ) = row;
        Ok(Self {
            seq,
            direction: Direction::parse(&direction).ok_or(StoreError::Malformed("direction"))?,
            peer_account,
            sender_account,
            sender_device: u8::try_from(device).map_err(|_| StoreError::Malformed("device"))?,
            message_id,
            content,
            group: group
                .map(|g| <[u8; 16]>::try_from(g.as_slice()))
                .transpose()
                .map_err(|_| StoreError::Malformed("group id"))?,
            status: MessageStatus::parse(&status).ok_or(StoreError::Malformed("status"))?,
            at_ms,
        })
    }
}

/// A contact: an identifier the user knows (phone number, e-mail, handle) and the account it
/// resolved to.
///
/// `Debug` shows neither the identifier nor the account.
#[derive(Clone, PartialEq, Eq)]
pub struct Contact {
    /// What the user typed to find the contact.
    pub identifier: String,
    /// The account id it resolved to.
    pub account: String,
    /// The integrator (provider) serving the account, when known.
    pub integrator: Option<String>,
    /// When the contact was first added, in ms since the Unix epoch.
    pub added_ms: i64,
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contact")
            .field("integrator", &self.integrator)
            .field("added_ms", &self.added_ms)
            .finish_non_exhaustive()
    }
}

type ContactRow = (String, String, Option<String>, i64);

impl Contact {
    fn from_row((identifier, account, integrator, added_ms): ContactRow) -> Self {
        Self { identifier, account, integrator, added_ms }
    }
}

/// The [`interop_e2ee::Storage`] of a profile: libsignal's records in `signal_records`, and
/// every [`Arrival`](interop_e2ee::Arrival) into `messages` in the same transaction as the records.
#[derive(Clone, Debug)]
pub struct SignalStore {
    db: ProfileDb,
    clock: fn() -> i64,
}

impl SignalStore {
    /// The store of `db`; arrivals are stamped with the system clock ([`now_ms`]).
    pub fn new(db: ProfileDb) -> Self {
        Self { db, clock: now_ms }
    }

    /// The store of `db`, stamping arrivals with `clock` (ms since the Unix epoch).
    pub fn with_clock(db: ProfileDb, clock: fn() -> i64) -> Self {
        Self { db, clock }
    }

    /// The profile database.
    pub fn db(&self) -> &ProfileDb {
        &self.db
    }

    /// Gives back the profile database.
    pub fn into_db(self) -> ProfileDb {
        self.db
    }

    async fn apply(&self, batch: Batch) -> Result<()> {
        let now = (self.clock)();
        let mut tx = self.db.pool.begin_with("BEGIN IMMEDIATE").await?;
        for (key, value) in &batch.writes {
            match value {
                Some(value) => {
                    sqlx::query(
                        "INSERT INTO signal_records (kind, id, value) VALUES (?, ?, ?) \
                         ON CONFLICT (kind, id) DO UPDATE SET value = excluded.value",
                    )
                    .bind(key.kind())
                    .bind(key.id())
                    .bind(value.as_slice())
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM signal_records WHERE kind = ? AND id = ?")
                        .bind(key.kind())
                        .bind(key.id())
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for arrival in &batch.arrivals {
            // A message already stored (same sender account and id) is ignored: recipients
            // de-duplicate by message id.
            sqlx::query(
                "INSERT INTO messages (direction, peer_account, sender_account, sender_device, \
                 message_id, content, group_id, status, at_ms) \
                 VALUES ('in', ?, ?, ?, ?, ?, ?, 'received', ?) \
                 ON CONFLICT (sender_account, message_id) DO NOTHING",
            )
            .bind(arrival.sender.account())
            .bind(arrival.sender.account())
            .bind(i64::from(arrival.sender.device()))
            .bind(arrival.message_id.as_str())
            .bind(arrival.message.as_slice())
            .bind(arrival.group.as_ref().map(|g| g.as_slice()))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Storage for SignalStore {
    async fn load(&self, key: &RecordKey) -> Result<Option<Vec<u8>>, StorageError> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT value FROM signal_records WHERE kind = ? AND id = ?")
                .bind(key.kind())
                .bind(key.id())
                .fetch_optional(&self.db.pool)
                .await
                .map_err(|e| StorageError::new(StoreError::from(e)))?;
        Ok(row.map(|(v,)| v))
    }

    async fn commit(&mut self, batch: Batch) -> Result<(), StorageError> {
        self.apply(batch).await.map_err(StorageError::new)
    }
}

#[cfg(test)]
mod tests {
    use interop_e2ee::Arrival;
    use interop_e2ee::test_suite::{self, Harness};
    use tempfile::TempDir;

    use super::*;

    /// The conformance harness: every fresh store gets its own directory.
    #[derive(Default)]
    struct Sqlite {
        dirs: Vec<TempDir>,
    }

    impl Harness for Sqlite {
        type S = SignalStore;

        async fn fresh(&mut self) -> SignalStore {
            let dir = tempfile::tempdir().unwrap();
            let db = ProfileDb::open(dir.path()).await.unwrap();
            self.dirs.push(dir);
            SignalStore::new(db)
        }

        async fn reopen(&mut self, store: SignalStore) -> SignalStore {
            let dir = store.db().dir().to_owned();
            store.into_db().close().await;
            SignalStore::new(ProfileDb::open(&dir).await.unwrap())
        }

        async fn arrivals(&mut self, store: &SignalStore) -> Vec<Arrival> {
            store.db().incoming_since(0).await.unwrap().into_iter().map(to_arrival).collect()
        }
    }

    fn to_arrival(e: HistoryEntry) -> Arrival {
        Arrival {
            sender: DeviceAddress::new(e.sender_account, e.sender_device).unwrap(),
            message_id: e.message_id,
            message: e.content,
            group: e.group,
        }
    }

    async fn fresh() -> (TempDir, ProfileDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = ProfileDb::open(dir.path()).await.unwrap();
        (dir, db)
    }

    async fn reopen(db: ProfileDb) -> ProfileDb {
        let dir = db.dir().to_owned();
        db.close().await;
        ProfileDb::open(&dir).await.unwrap()
    }

    fn arrival(account: &str, id: &str, body: &[u8]) -> Arrival {
        Arrival {
            sender: DeviceAddress::new(account, 3).unwrap(),
            message_id: id.into(),
            message: body.to_vec(),
            group: None,
        }
    }

    fn me() -> DeviceAddress {
        DeviceAddress::new("me", 1).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn passes_the_storage_conformance_suite() {
        test_suite::run_all(&mut Sqlite::default()).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn open_creates_the_directory_file_and_schema() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("profile");
        let db = ProfileDb::open(&dir).await.unwrap();
        assert_eq!(db.schema_version().await.unwrap(), MIGRATIONS.last().unwrap().0);
        assert!(dir.join(FILE_NAME).is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join(FILE_NAME)), 0o600);
        }
        let (mode,): (String,) =
            sqlx::query_as("PRAGMA journal_mode").fetch_one(&db.pool).await.unwrap();
        assert_eq!(mode, "wal");
        let (sync,): (i64,) =
            sqlx::query_as("PRAGMA synchronous").fetch_one(&db.pool).await.unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let (fk,): (i64,) =
            sqlx::query_as("PRAGMA foreign_keys").fetch_one(&db.pool).await.unwrap();
        assert_eq!(fk, 1);
        // Opening again applies nothing new.
        let db = reopen(db).await;
        assert_eq!(db.schema_version().await.unwrap(), MIGRATIONS.last().unwrap().0);
    }

    #[test]
    fn migration_versions_start_at_one_and_increase_by_one() {
        for (i, (v, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i64::try_from(i).unwrap() + 1);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_newer_schema_is_refused() {
        let (_dir, db) = fresh().await;
        sqlx::query("INSERT INTO schema_migrations (version, applied_ms) VALUES (99, 0)")
            .execute(&db.pool)
            .await
            .unwrap();
        let path = db.dir().to_owned();
        db.close().await;
        match ProfileDb::open(&path).await {
            Err(e @ StoreError::SchemaTooNew { found: 99, known }) => {
                assert_eq!(known, MIGRATIONS.last().unwrap().0);
                assert!(e.to_string().contains("newer"), "{e}");
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_repeated_arrival_is_stored_once_and_the_commit_succeeds() {
        let (_dir, db) = fresh().await;
        let mut store = SignalStore::with_clock(db.clone(), || 1234);
        let first = arrival("bob", "m1", b"first");
        // Same sender account and id from another device, in the same batch and in a later one.
        let mut again = arrival("bob", "m1", b"second");
        again.sender = DeviceAddress::new("bob", 4).unwrap();
        store
            .commit(Batch {
                writes: vec![(RecordKey::PreKey(1), Some(vec![1]))],
                arrivals: vec![first.clone(), again.clone()],
            })
            .await
            .unwrap();
        store
            .commit(Batch {
                writes: vec![(RecordKey::PreKey(2), Some(vec![2]))],
                arrivals: vec![again, arrival("carol", "m1", b"other sender")],
            })
            .await
            .unwrap();
        assert_eq!(store.load(&RecordKey::PreKey(2)).await.unwrap(), Some(vec![2]));
        let got = db.incoming_since(0).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(to_arrival(got[0].clone()), first);
        assert_eq!(
            (got[0].direction, got[0].status, got[0].at_ms),
            (Direction::In, MessageStatus::Received, 1234)
        );
        assert_eq!(got[0].peer_account, "bob");
        assert_eq!(got[1].sender_account, "carol");
        assert!(db.has_message("bob", "m1").await.unwrap());
        assert!(!db.has_message("bob", "m2").await.unwrap());
        assert_eq!(db.incoming_since(got[0].seq).await.unwrap(), vec![got[1].clone()]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_commit_leaves_nothing() {
        let (_dir, db) = fresh().await;
        let mut store = SignalStore::new(db.clone());
        store
            .commit(Batch { writes: vec![(RecordKey::PreKey(1), Some(vec![1]))], arrivals: vec![] })
            .await
            .unwrap();
        // Only in this test: the arrival with id "poison" cannot be inserted.
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.message_id = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        let err = store
            .commit(Batch {
                writes: vec![
                    (RecordKey::PreKey(1), None),
                    (RecordKey::PreKey(2), Some(vec![2])),
                    (RecordKey::LocalIdentity, Some(vec![3])),
                ],
                arrivals: vec![arrival("bob", "ok", b"x"), arrival("bob", "poison", b"y")],
            })
            .await
            .unwrap_err();
        let inner = std::error::Error::source(&err).unwrap().to_string();
        assert!(inner.contains("injected failure"), "{inner}");
        assert_eq!(store.load(&RecordKey::PreKey(1)).await.unwrap(), Some(vec![1]));
        assert_eq!(store.load(&RecordKey::PreKey(2)).await.unwrap(), None);
        assert_eq!(store.load(&RecordKey::LocalIdentity).await.unwrap(), None);
        assert!(db.incoming_since(0).await.unwrap().is_empty());
        // The connection is usable afterwards, and a good batch commits.
        store
            .commit(Batch {
                writes: vec![(RecordKey::PreKey(2), Some(vec![2]))],
                arrivals: vec![arrival("bob", "ok", b"x")],
            })
            .await
            .unwrap();
        assert_eq!(store.load(&RecordKey::PreKey(2)).await.unwrap(), Some(vec![2]));
        assert_eq!(db.incoming_since(0).await.unwrap().len(), 1);
    }

    #[test]
    fn status_transitions() {
        use MessageStatus::*;
        // (from, allowed next states); everything else is refused.
        let table: [(MessageStatus, &[MessageStatus]); 5] = [
            (Received, &[Read]),
            (Sent, &[Delivered, Read, Failed]),
            (Delivered, &[Read]),
            (Read, &[]),
            (Failed, &[]),
        ];
        for (from, allowed) in table {
            for to in MessageStatus::ALL {
                assert_eq!(from.can_become(to), allowed.contains(&to), "{from:?} -> {to:?}");
            }
        }
        for s in MessageStatus::ALL {
            assert_eq!(MessageStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(MessageStatus::parse("SENT"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn status_only_moves_forward() {
        let (_dir, db) = fresh().await;
        assert!(db.record_outgoing(&me(), "bob", "o1", b"hi", 10).await.unwrap());
        assert!(!db.record_outgoing(&me(), "bob", "o1", b"again", 11).await.unwrap());
        let status = |db: ProfileDb| async move { db.history("bob", 10).await.unwrap()[0].status };
        assert_eq!(status(db.clone()).await, MessageStatus::Sent);
        assert!(db.set_status("me", "o1", MessageStatus::Delivered).await.unwrap());
        assert!(!db.set_status("me", "o1", MessageStatus::Sent).await.unwrap());
        assert!(!db.set_status("me", "o1", MessageStatus::Failed).await.unwrap());
        assert!(!db.set_status("me", "o1", MessageStatus::Delivered).await.unwrap());
        assert_eq!(status(db.clone()).await, MessageStatus::Delivered);
        assert!(db.set_status("me", "o1", MessageStatus::Read).await.unwrap());
        assert!(!db.set_status("me", "o1", MessageStatus::Delivered).await.unwrap());
        assert_eq!(status(db.clone()).await, MessageStatus::Read);
        // Unknown message, or the right id under another sender.
        assert!(!db.set_status("me", "nope", MessageStatus::Read).await.unwrap());
        assert!(!db.set_status("bob", "o1", MessageStatus::Read).await.unwrap());
        // An incoming message can be marked read.
        SignalStore::new(db.clone())
            .commit(Batch { writes: vec![], arrivals: vec![arrival("bob", "i1", b"yo")] })
            .await
            .unwrap();
        assert!(!db.set_status("bob", "i1", MessageStatus::Delivered).await.unwrap());
        assert!(db.set_status("bob", "i1", MessageStatus::Read).await.unwrap());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn history_is_per_peer_oldest_first_and_limited() {
        let (_dir, db) = fresh().await;
        let mut store = SignalStore::with_clock(db.clone(), || 500);
        for i in 0..5 {
            db.record_outgoing(&me(), "bob", &format!("o{i}"), b"out", i).await.unwrap();
            store
                .commit(Batch {
                    writes: vec![],
                    arrivals: vec![arrival("bob", &format!("i{i}"), b"in")],
                })
                .await
                .unwrap();
            db.record_outgoing(&me(), "carol", &format!("c{i}"), b"out", i).await.unwrap();
        }
        let all = db.history("bob", 100).await.unwrap();
        let ids: Vec<&str> = all.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(ids, ["o0", "i0", "o1", "i1", "o2", "i2", "o3", "i3", "o4", "i4"]);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(all.iter().all(|e| e.peer_account == "bob"));
        let out = &all[0];
        assert_eq!(
            (out.direction, out.sender_account.as_str(), out.sender_device, out.group),
            (Direction::Out, "me", 1, None)
        );
        let last3 = db.history("bob", 3).await.unwrap();
        assert_eq!(last3, all[7..].to_vec());
        assert!(db.history("bob", 0).await.unwrap().is_empty());
        assert!(db.history("nobody", 10).await.unwrap().is_empty());
        assert_eq!(db.history("carol", 10).await.unwrap().len(), 5);
        // Only incoming messages are listed by incoming_since.
        assert_eq!(db.incoming_since(0).await.unwrap().len(), 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn contacts_and_settings() {
        let (_dir, db) = fresh().await;
        assert_eq!(db.contact("+15550001").await.unwrap(), None);
        let bob = Contact {
            identifier: "+15550001".into(),
            account: "acct-bob".into(),
            integrator: None,
            added_ms: 7,
        };
        db.upsert_contact(&bob).await.unwrap();
        let carol = Contact {
            identifier: "carol@example.org".into(),
            account: "acct-carol".into(),
            integrator: Some("example".into()),
            added_ms: 8,
        };
        db.upsert_contact(&carol).await.unwrap();
        assert_eq!(db.contact("+15550001").await.unwrap(), Some(bob.clone()));
        // An update changes the account and integrator, not when it was added.
        let moved = Contact {
            account: "acct-bob2".into(),
            integrator: Some("x".into()),
            added_ms: 99,
            ..bob
        };
        db.upsert_contact(&moved).await.unwrap();
        let got = db.contact("+15550001").await.unwrap().unwrap();
        assert_eq!(
            (got.account.as_str(), got.integrator.as_deref(), got.added_ms),
            ("acct-bob2", Some("x"), 7)
        );
        assert_eq!(db.contacts().await.unwrap().len(), 2);
        assert_eq!(db.contact_by_account("acct-carol").await.unwrap(), Some(carol.clone()));
        assert_eq!(db.contact_by_account("acct-bob").await.unwrap(), None);
        assert!(!format!("{got:?}").contains("1555"));
        assert!(!format!("{got:?}").contains("acct"));

        assert_eq!(db.get_setting("server").await.unwrap(), None);
        db.set_setting("server", b"gk:5222").await.unwrap();
        db.set_setting("token", b"").await.unwrap();
        db.set_setting("server", b"gk2:5222").await.unwrap();
        assert_eq!(db.get_setting("server").await.unwrap(), Some(b"gk2:5222".to_vec()));
        assert_eq!(db.get_setting("token").await.unwrap(), Some(vec![]));
        assert!(db.delete_setting("token").await.unwrap());
        assert!(!db.delete_setting("token").await.unwrap());
        assert_eq!(db.get_setting("token").await.unwrap(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reopen_keeps_everything() {
        let (_dir, db) = fresh().await;
        let mut store = SignalStore::with_clock(db.clone(), || 42);
        let mut grouped = arrival("bob", "g1", b"group");
        grouped.group = Some([5; 16]);
        store
            .commit(Batch {
                writes: vec![(RecordKey::Session(me()), Some(vec![9; 40]))],
                arrivals: vec![arrival("bob", "i1", b"one"), grouped.clone()],
            })
            .await
            .unwrap();
        db.record_outgoing(&me(), "bob", "o1", b"two", 43).await.unwrap();
        db.set_status("me", "o1", MessageStatus::Delivered).await.unwrap();
        let contact = Contact {
            identifier: "bob".into(),
            account: "bob".into(),
            integrator: None,
            added_ms: 1,
        };
        db.upsert_contact(&contact).await.unwrap();
        db.set_setting("k", b"v").await.unwrap();
        let before = db.history("bob", 10).await.unwrap();
        drop(store);

        let db = reopen(db).await;
        let store = SignalStore::new(db.clone());
        assert_eq!(store.load(&RecordKey::Session(me())).await.unwrap(), Some(vec![9; 40]));
        let after = db.history("bob", 10).await.unwrap();
        assert_eq!(after, before);
        assert_eq!(after.len(), 3);
        assert_eq!(to_arrival(after[1].clone()), grouped);
        assert_eq!(after[2].status, MessageStatus::Delivered);
        assert_eq!(db.contacts().await.unwrap(), vec![contact]);
        assert_eq!(db.get_setting("k").await.unwrap(), Some(b"v".to_vec()));
        // Sequence numbers keep increasing after a reopen.
        db.record_outgoing(&me(), "bob", "o2", b"three", 44).await.unwrap();
        let last = db.history("bob", 1).await.unwrap();
        assert!(last[0].seq > after[2].seq);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn debug_and_errors_show_no_user_data() {
        let (_dir, db) = fresh().await;
        db.record_outgoing(&me(), "secret-peer", "secret-id", b"secret-body", 1).await.unwrap();
        let entry = &db.history("secret-peer", 1).await.unwrap()[0];
        assert!(!format!("{entry:?}").contains("secret"), "{entry:?}");
        let e = StoreError::Malformed("status");
        assert_eq!(e.to_string(), "profile database: a stored status is malformed");
        let closed = db.clone();
        closed.close().await;
        let err = db.get_setting("secret-key").await.unwrap_err();
        assert_eq!(err.to_string(), "profile database: the database is closed");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_malformed_row_is_an_error_not_a_panic() {
        let (_dir, db) = fresh().await;
        db.record_outgoing(&me(), "bob", "o1", b"x", 1).await.unwrap();
        sqlx::query("UPDATE messages SET sender_device = 300, group_id = x'01'")
            .execute(&db.pool)
            .await
            .unwrap();
        assert!(matches!(db.history("bob", 1).await, Err(StoreError::Malformed("device"))));
        sqlx::query("UPDATE messages SET sender_device = 1").execute(&db.pool).await.unwrap();
        assert!(matches!(db.history("bob", 1).await, Err(StoreError::Malformed("group id"))));
    }
}

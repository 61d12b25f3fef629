//! The PostgreSQL backend: the store several gatekeeper nodes share (offline queues, accounts,
//! devices, prekeys, blocks, the provider registry), opened with [`PgStore::connect`] and a
//! `postgres://` URL. The embedded SQLite store stays the single-node default.
//!
//! How it keeps the store traits' promises when many nodes write at once:
//! - Every write is one transaction, and a call returns only after its `COMMIT`, which
//!   PostgreSQL acknowledges after the WAL is flushed (`synchronous_commit = on`, the default).
//!   There is no committer task as in the SQLite backend: PostgreSQL already shares one WAL
//!   flush among the transactions that commit together (its own group commit), and funnelling
//!   every write of a node through one connection would only serialise a database that
//!   several nodes share anyway.
//! - Each recipient device's queue has a row in `queue_depth`. Every transaction that adds or
//!   removes a device's copies first locks that row (several rows: in `(account, device)`
//!   order, so two transactions never wait on each other in a cycle). The cap check is
//!   therefore exact under concurrency, and a device's sequence numbers become visible in
//!   increasing order: a copy is numbered only after the lock is held, so a reader paging with
//!   `after_seq` never skips a copy that commits late.
//! - One-time prekeys are claimed with `DELETE ... WHERE key IN (SELECT ... FOR UPDATE SKIP
//!   LOCKED)`: concurrent claims take different keys, without waiting for each other.
//! - A transaction that loses a deadlock or a serialization race is retried a few times.
//!
//! Migrations are embedded and versioned ([`MIGRATIONS`]); each is applied in its own
//! transaction that holds a transaction-scoped advisory lock, so nodes starting at once apply
//! each migration exactly once.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};

mod accounts;
mod providers;

use super::{DeviceAddress, MessageStore, QueueLimits, Queued, Submission, SubmitOutcome};
use crate::{Error, Result};

/// Connections one node keeps to the database at most.
const MAX_CONNECTIONS: u32 = 16;

/// How long start-up waits for the database, and a call for a free connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a transaction that lost a deadlock or serialization race is tried in all.
const MAX_ATTEMPTS: u32 = 5;

/// The advisory lock key that serialises migrations ("interop" + schema-lock tag).
const MIGRATION_LOCK: i64 = 0x696e_7465_726f_7001;

/// Versioned schema migrations, applied in order at start-up. Never edit an applied one: add.
/// The versions follow the SQLite backend's (1 queue, 2 directory, 3 provider registry).
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE queue (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient_account TEXT   NOT NULL,
    recipient_device  BIGINT NOT NULL,
    sender_account    TEXT   NOT NULL,
    sender_device     BIGINT NOT NULL,
    message_id        TEXT   NOT NULL,
    stanza            BYTEA  NOT NULL,
    stored_at_ms      BIGINT NOT NULL,
    expires_at_ms     BIGINT NOT NULL
);
CREATE INDEX queue_by_recipient ON queue (recipient_account, recipient_device, seq);
CREATE INDEX queue_by_expiry ON queue (expires_at_ms);

-- One row per device that ever had a copy queued; the lock every queue writer takes first.
CREATE TABLE queue_depth (
    account TEXT   NOT NULL,
    device  BIGINT NOT NULL,
    depth   BIGINT NOT NULL,
    PRIMARY KEY (account, device)
);

CREATE TABLE submitted (
    sender_account  TEXT   NOT NULL,
    sender_device   BIGINT NOT NULL,
    message_id      TEXT   NOT NULL,
    submitted_at_ms BIGINT NOT NULL,
    PRIMARY KEY (sender_account, sender_device, message_id)
);
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
    opted_in      BOOLEAN NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    UNIQUE (kind, issuer, subject)
);
CREATE INDEX accounts_by_subject ON accounts (subject);
CREATE TABLE devices (
    account_id      TEXT   NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device_id       BIGINT NOT NULL,
    noise_key       BYTEA  NOT NULL UNIQUE,
    registration_id BIGINT NOT NULL,
    identity_key    BYTEA  NOT NULL,
    push_token      TEXT,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
-- kind: 'ec' (the signed EC prekey) or 'kyber-last-resort'
CREATE TABLE signed_prekeys (
    account_id TEXT   NOT NULL,
    device_id  BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    key_id     BIGINT NOT NULL,
    public_key BYTEA  NOT NULL,
    signature  BYTEA  NOT NULL,
    PRIMARY KEY (account_id, device_id, kind),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id) ON DELETE CASCADE
);
-- kind: 'ec' or 'kyber'; signature only for kyber
CREATE TABLE one_time_prekeys (
    account_id TEXT   NOT NULL,
    device_id  BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    key_id     BIGINT NOT NULL,
    public_key BYTEA  NOT NULL,
    signature  BYTEA,
    PRIMARY KEY (account_id, device_id, kind, key_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id) ON DELETE CASCADE
);
CREATE TABLE blocks (
    blocker TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    blocked TEXT NOT NULL,
    PRIMARY KEY (blocker, blocked)
);
CREATE INDEX blocks_by_blocked ON blocks (blocked);
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
    enlistments_per_hour    BIGINT NOT NULL,
    max_devices_per_account BIGINT NOT NULL,
    messages_per_minute     BIGINT NOT NULL,
    enabled        BOOLEAN NOT NULL,
    updated_at_ms  BIGINT  NOT NULL
);
"#,
    ),
    (
        4,
        r#"
ALTER TABLE accounts ADD COLUMN consent_version TEXT;
ALTER TABLE accounts ADD COLUMN read_receipts BOOLEAN;
"#,
    ),
];

pub(crate) fn storage(e: sqlx::Error) -> Error {
    Error::Storage(e.to_string())
}

/// Why a transaction did not produce its result.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The database failed; retried when it is a lost deadlock or serialization race.
    Db(sqlx::Error),
    /// A concurrent transaction changed what this one read; run it again.
    Retry,
    /// The request is not allowed.
    Refused(&'static str),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

/// Whether `e` is PostgreSQL saying "you lost a race, try again": `deadlock_detected` or
/// `serialization_failure`.
fn lost_race(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// Runs the transaction `op` makes, again when it lost a race, at most [`MAX_ATTEMPTS`] times.
pub(crate) async fn retrying<T, Fut>(mut op: impl FnMut() -> Fut) -> Result<T>
where
    Fut: Future<Output = std::result::Result<T, Failure>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(Failure::Refused(why)) => return Err(Error::Refused(why)),
            Err(Failure::Db(e)) if attempt < MAX_ATTEMPTS && lost_race(&e) => {
                tracing::debug!(attempt, error = %e, "storage transaction lost a race; retrying");
            }
            Err(Failure::Retry) if attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, "storage transaction saw a concurrent change; retrying");
            }
            Err(Failure::Retry) => {
                return Err(Error::Storage("too much contention; try again".into()));
            }
            Err(Failure::Db(e)) => return Err(storage(e)),
        }
        attempt += 1;
    }
}

/// `url` without its password or query (which may carry one), for error texts and logs.
fn redacted(url: &str) -> String {
    crate::config::url_without_secrets(url)
        .unwrap_or_else(|| "(a database URL that does not parse)".to_owned())
}

/// The PostgreSQL store. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    limits: QueueLimits,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/dbname`),
    /// applies pending migrations and opens a connection pool. Fails with a clear error (that
    /// never shows the password) when the database is unreachable or refuses the login, or when
    /// its schema is newer than this build.
    pub async fn connect(url: &str, limits: QueueLimits) -> Result<Self> {
        let shown = redacted(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("database URL {shown} is not valid: {e}")))?;
        // One direct connection first: the pool retries refused connections until its timeout
        // and then reports only "timed out", which hides why.
        let unreachable =
            |why: String| Error::Storage(format!("cannot connect to PostgreSQL at {shown}: {why}"));
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        migrate(&mut conn).await?;
        // Closing is a courtesy to the server; the connection is dropped either way.
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self { pool, limits })
    }

    /// The schema version in force.
    pub async fn schema_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
            .fetch_one(&self.pool)
            .await
            .map_err(storage)?;
        row.try_get("v").map_err(storage)
    }

    /// Closes every connection of the pool (waits for the ones in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn try_submit(
        &self,
        s: &Submission,
        now: i64,
    ) -> std::result::Result<SubmitOutcome, Failure> {
        let mut tx = self.pool.begin().await?;
        // Claiming the message id is the de-duplication check: a concurrent submission of the
        // same id waits here for this one and then sees it.
        let fresh = sqlx::query(
            "INSERT INTO submitted (sender_account, sender_device, message_id, submitted_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&s.sender.account)
        .bind(i64::from(s.sender.device))
        .bind(&s.message_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await?;
            return Ok(SubmitOutcome::Duplicate);
        }
        // Lock every recipient device's depth row (in key order) and count the new copies in;
        // the returned depths decide the cap check.
        let mut wanted: Vec<(&DeviceAddress, i64)> = Vec::new();
        for (dev, _) in &s.copies {
            match wanted.iter_mut().find(|(d, _)| *d == dev) {
                Some((_, n)) => *n += 1,
                None => wanted.push((dev, 1)),
            }
        }
        let accounts: Vec<&str> = wanted.iter().map(|(d, _)| d.account.as_str()).collect();
        let devices: Vec<i64> = wanted.iter().map(|(d, _)| i64::from(d.device)).collect();
        let counts: Vec<i64> = wanted.iter().map(|(_, n)| *n).collect();
        let depths = sqlx::query(
            "INSERT INTO queue_depth (account, device, depth) \
             SELECT a, d, n FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t (a, d, n) \
             ORDER BY a, d \
             ON CONFLICT (account, device) DO UPDATE SET depth = queue_depth.depth + EXCLUDED.depth \
             RETURNING account, device, depth",
        )
        .bind(&accounts)
        .bind(&devices)
        .bind(&counts)
        .fetch_all(&mut *tx)
        .await?;
        let mut full = Vec::new();
        for row in &depths {
            let depth: i64 = row.try_get("depth")?;
            if u64::try_from(depth).unwrap_or(0) > self.limits.max_per_device {
                let account: String = row.try_get("account")?;
                full.push((account, row.try_get::<i64, _>("device")?));
            }
        }
        // Report the first full device in the order of the copies, as the SQLite backend does.
        if let Some((dev, _)) = wanted
            .iter()
            .find(|(d, _)| full.iter().any(|(a, n)| *a == d.account && *n == i64::from(d.device)))
        {
            tx.rollback().await?;
            return Ok(SubmitOutcome::QueueFull((*dev).clone()));
        }
        let to_accounts: Vec<&str> = s.copies.iter().map(|(d, _)| d.account.as_str()).collect();
        let to_devices: Vec<i64> = s.copies.iter().map(|(d, _)| i64::from(d.device)).collect();
        let stanzas: Vec<&[u8]> = s.copies.iter().map(|(_, b)| b.as_slice()).collect();
        // Rows are inserted (and numbered) in the order of the copies; RETURNING's order is not
        // promised, so sorting the numbers gives them back in that order.
        let mut seqs = sqlx::query(
            "INSERT INTO queue (recipient_account, recipient_device, sender_account, sender_device, \
             message_id, stanza, stored_at_ms, expires_at_ms) \
             SELECT a, d, $4, $5, $6, st, $7, $8 \
             FROM unnest($1::text[], $2::bigint[], $3::bytea[]) WITH ORDINALITY AS t (a, d, st, i) \
             ORDER BY i RETURNING seq",
        )
        .bind(&to_accounts)
        .bind(&to_devices)
        .bind(&stanzas)
        .bind(&s.sender.account)
        .bind(i64::from(s.sender.device))
        .bind(&s.message_id)
        .bind(now)
        .bind(s.expires_at_ms)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>("seq"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
        seqs.sort_unstable();
        tx.commit().await?;
        Ok(SubmitOutcome::Stored(seqs))
    }

    async fn try_ack(
        &self,
        recipient: &DeviceAddress,
        seq: i64,
    ) -> std::result::Result<bool, Failure> {
        let mut tx = self.pool.begin().await?;
        let dev = i64::from(recipient.device);
        let locked =
            sqlx::query("SELECT 1 FROM queue_depth WHERE account = $1 AND device = $2 FOR UPDATE")
                .bind(&recipient.account)
                .bind(dev)
                .fetch_optional(&mut *tx)
                .await?;
        if locked.is_none() {
            return Ok(false);
        }
        let gone = sqlx::query(
            "DELETE FROM queue WHERE seq = $1 AND recipient_account = $2 AND recipient_device = $3",
        )
        .bind(seq)
        .bind(&recipient.account)
        .bind(dev)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if gone == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("UPDATE queue_depth SET depth = depth - 1 WHERE account = $1 AND device = $2")
            .bind(&recipient.account)
            .bind(dev)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn try_expire(&self, now: i64) -> std::result::Result<u64, Failure> {
        let mut tx = self.pool.begin().await?;
        let locked = sqlx::query(
            "SELECT account, device FROM queue_depth WHERE (account, device) IN \
             (SELECT recipient_account, recipient_device FROM queue WHERE expires_at_ms <= $1) \
             ORDER BY account, device FOR UPDATE",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut dropped = 0u64;
        if !locked.is_empty() {
            let mut accounts = Vec::with_capacity(locked.len());
            let mut devices = Vec::with_capacity(locked.len());
            for r in &locked {
                accounts.push(r.try_get::<String, _>("account")?);
                devices.push(r.try_get::<i64, _>("device")?);
            }
            // Only the locked devices' copies: one queued meanwhile for another device waits
            // for the next run.
            let counts = sqlx::query(
                "WITH gone AS ( \
                   DELETE FROM queue q USING unnest($2::text[], $3::bigint[]) AS l (a, d) \
                   WHERE q.recipient_account = l.a AND q.recipient_device = l.d AND q.expires_at_ms <= $1 \
                   RETURNING q.recipient_account, q.recipient_device), \
                 counted AS ( \
                   SELECT recipient_account, recipient_device, count(*) AS n FROM gone GROUP BY 1, 2) \
                 UPDATE queue_depth SET depth = depth - counted.n FROM counted \
                 WHERE account = counted.recipient_account AND device = counted.recipient_device \
                 RETURNING counted.n",
            )
            .bind(now)
            .bind(&accounts)
            .bind(&devices)
            .fetch_all(&mut *tx)
            .await?;
            for r in &counts {
                dropped += u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0);
            }
        }
        sqlx::query("DELETE FROM submitted WHERE submitted_at_ms < $1")
            .bind(now.saturating_sub(self.limits.dedupe_window_ms))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(dropped)
    }
}

/// Applies the migrations newer than the database's version, each in its own transaction under
/// the migration advisory lock; refuses a database newer than [`MIGRATIONS`].
async fn migrate(conn: &mut PgConnection) -> Result<()> {
    let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    loop {
        let mut tx = conn.begin().await.map_err(storage)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_version \
             (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(storage)?
            .try_get("v")
            .map_err(storage)?;
        if current > newest {
            return Err(Error::Config(format!(
                "the database has schema version {current}, newer than this build knows ({newest}); \
                 run a newer interop-server"
            )));
        }
        let Some(&(version, sql)) = MIGRATIONS.iter().find(|(v, _)| *v > current) else {
            tx.commit().await.map_err(storage)?;
            return Ok(());
        };
        // A plain string runs as a simple query (several statements at once). Not `raw_sql`:
        // its future is not provably `Send`, and `connect` must be spawnable.
        sqlx::Executor::execute(&mut *tx, sql).await.map_err(storage)?;
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        tracing::info!(version, "applied storage migration");
    }
}

fn device_of(row: &sqlx::postgres::PgRow, col: &str) -> std::result::Result<u32, sqlx::Error> {
    // Devices are written from u32 values only.
    Ok(u32::try_from(row.try_get::<i64, _>(col)?).unwrap_or(u32::MAX))
}

impl MessageStore for PgStore {
    async fn submit(&self, submission: Submission, now_ms: i64) -> Result<SubmitOutcome> {
        if submission.copies.is_empty() {
            return Err(Error::Config("a submission needs at least one copy".into()));
        }
        let s = &submission;
        retrying(move || self.try_submit(s, now_ms)).await
    }

    async fn pending(
        &self,
        recipient: &DeviceAddress,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Queued>> {
        // The chat core reads the queue inside a `select!` that drops this future when another
        // event wins (`Chat::next` is cancel-safe); sqlx gives up a connection whose query was
        // dropped mid-flight (PostgreSQL counts an abandoned session, the pool connects again).
        // In a task of its own the read always finishes and its connection goes back to the
        // pool; a dropped caller only discards the rows.
        let (pool, account) = (self.pool.clone(), recipient.account.clone());
        let device = i64::from(recipient.device);
        let rows = tokio::spawn(async move {
            sqlx::query(
                "SELECT seq, sender_account, sender_device, message_id, stanza, stored_at_ms \
                 FROM queue WHERE recipient_account = $1 AND recipient_device = $2 AND seq > $3 \
                 ORDER BY seq LIMIT $4",
            )
            .bind(account)
            .bind(device)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&pool)
            .await
        })
        .await
        .map_err(|e| Error::Storage(format!("the queue read stopped: {e}")))?
        .map_err(storage)?;
        rows.iter()
            .map(|r| {
                Ok(Queued {
                    seq: r.try_get("seq")?,
                    sender: DeviceAddress {
                        account: r.try_get("sender_account")?,
                        device: device_of(r, "sender_device")?,
                    },
                    message_id: r.try_get("message_id")?,
                    stanza: r.try_get("stanza")?,
                    stored_at_ms: r.try_get("stored_at_ms")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(storage)
    }

    async fn ack(&self, recipient: &DeviceAddress, seq: i64) -> Result<bool> {
        retrying(move || self.try_ack(recipient, seq)).await
    }

    async fn depth(&self, recipient: &DeviceAddress) -> Result<u64> {
        let depth: Option<i64> =
            sqlx::query("SELECT depth FROM queue_depth WHERE account = $1 AND device = $2")
                .bind(&recipient.account)
                .bind(i64::from(recipient.device))
                .fetch_optional(&self.pool)
                .await
                .map_err(storage)?
                .map(|r| r.try_get("depth"))
                .transpose()
                .map_err(storage)?;
        Ok(depth.and_then(|d| u64::try_from(d).ok()).unwrap_or(0))
    }

    async fn expire(&self, now_ms: i64) -> Result<u64> {
        retrying(move || self.try_expire(now_ms)).await
    }
}

/// Where the tests' PostgreSQL server is, and a fresh database per test.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    use rand::Rng;
    use sqlx::Connection;
    use sqlx::postgres::PgConnection;

    /// The directory cargo builds into: `CARGO_TARGET_DIR`, else the workspace root's `target/`.
    fn target_dir() -> PathBuf {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest
            .ancestors()
            .find(|d| {
                std::fs::read_to_string(d.join("Cargo.toml"))
                    .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
            })
            .unwrap_or(manifest);
        match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => root.join(dir),
            None => root.join("target"),
        }
    }

    fn required() -> bool {
        std::env::var("INTEROP_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
    }

    /// The URL of a PostgreSQL server the tests may create databases on:
    /// `INTEROP_TEST_DATABASE_URL`, else `DATABASE_URL` from `<target>/services/services.env`
    /// (written by `cargo xtask services up`). `None` (after saying so on stderr) when there is
    /// neither; panics instead when `INTEROP_REQUIRE_SERVICES=1`.
    pub(crate) fn test_database_url() -> Option<String> {
        if let Some(url) = std::env::var("INTEROP_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())
        {
            return Some(url);
        }
        let env = target_dir().join("services").join("services.env");
        let from_file = std::fs::read_to_string(&env).ok().and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix("DATABASE_URL=").map(|u| u.trim().to_owned()))
        });
        if from_file.is_some() {
            return from_file;
        }
        assert!(
            !required(),
            "INTEROP_REQUIRE_SERVICES=1 but no PostgreSQL: set INTEROP_TEST_DATABASE_URL or run \
             `cargo xtask services up` (no {})",
            env.display()
        );
        eprintln!("skipped: no PostgreSQL (run `cargo xtask services up`)");
        None
    }

    /// A database of its own for one test, dropped (with its connections) when this is dropped.
    #[derive(Debug)]
    pub(crate) struct TestDb {
        admin_url: String,
        name: String,
        /// The URL of the fresh database.
        pub(crate) url: String,
    }

    impl TestDb {
        /// Creates `test_<random>` on the test server. `None` when the test should skip.
        pub(crate) async fn create() -> Option<Self> {
            let admin_url = test_database_url()?;
            let mut admin = match PgConnection::connect(&admin_url).await {
                Ok(c) => c,
                Err(e) => {
                    // A stale services.env (the server is gone) is a skip unless required.
                    assert!(
                        !required(),
                        "INTEROP_REQUIRE_SERVICES=1 but PostgreSQL at {} is unreachable: {e}",
                        super::redacted(&admin_url)
                    );
                    eprintln!(
                        "skipped: PostgreSQL at {} is unreachable ({e}); run `cargo xtask services up`",
                        super::redacted(&admin_url)
                    );
                    return None;
                }
            };
            let name = format!("test_{}", hex::encode(rand::rng().random::<[u8; 8]>()));
            sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
            let _ = admin.close().await;
            let mut url = url::Url::parse(&admin_url).unwrap();
            url.set_path(&format!("/{name}"));
            Some(Self { admin_url, name, url: url.into() })
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
            // Drop runs inside the test's runtime, which cannot block on itself: use another.
            let done = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async {
                    let mut admin = PgConnection::connect(&admin_url).await?;
                    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await?;
                    admin.close().await
                })
                .map_err(std::io::Error::other)
            })
            .join();
            if !matches!(done, Ok(Ok(()))) {
                eprintln!("could not drop test database {}: {done:?}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::test_support::TestDb;
    use super::*;
    use crate::store::{AccountStore, accounts, suite};

    async fn open(limits: QueueLimits) -> Option<(TestDb, PgStore)> {
        let db = TestDb::create().await?;
        let store = PgStore::connect(&db.url, limits).await.unwrap();
        Some((db, store))
    }

    #[tokio::test]
    async fn suite_fan_out_order_ack() {
        let Some((_db, s)) = open(QueueLimits::default()).await else { return };
        suite::fan_out_order_ack(&s).await;
    }

    #[tokio::test]
    async fn suite_retries_are_deduplicated() {
        let Some((_db, s)) = open(QueueLimits::default()).await else { return };
        suite::retries_are_deduplicated(&s).await;
    }

    #[tokio::test]
    async fn suite_full_queue_refuses_whole_submission() {
        let limits = QueueLimits { max_per_device: 3, ..QueueLimits::default() };
        let Some((_db, s)) = open(limits).await else { return };
        suite::full_queue_refuses_whole_submission(&s, 3).await;
    }

    #[tokio::test]
    async fn suite_expiry_drops_old_copies() {
        let Some((_db, s)) = open(QueueLimits::default()).await else { return };
        suite::expiry_drops_old_copies(&s).await;
    }

    #[tokio::test]
    async fn suite_enlistment_is_idempotent_and_devices_are_keys() {
        let Some((_db, s)) = open(QueueLimits::default()).await else { return };
        accounts::suite::enlistment_is_idempotent_and_devices_are_keys(&s).await;
    }

    #[tokio::test]
    async fn suite_prekeys_are_consumed_once_then_last_resort() {
        let Some((_db, s)) = open(QueueLimits::default()).await else { return };
        accounts::suite::prekeys_are_consumed_once_then_last_resort(&s).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn suite_concurrent_claims_never_share_a_key() {
        let Some((_db, s)) = open(QueueLimits::default()).await else { return };
        accounts::suite::concurrent_claims_never_share_a_key(Arc::new(s)).await;
    }

    #[tokio::test]
    async fn suite_deleting_an_account_removes_everything() {
        let Some((_db, s)) = open(QueueLimits::default()).await else { return };
        accounts::suite::deleting_an_account_removes_everything(&s).await;
    }

    #[tokio::test]
    async fn suite_provider_registry() {
        let Some((_db, s)) = open(QueueLimits::default()).await else { return };
        providers::tests::provider_registry(&s).await;
    }

    /// Issue 13: 100 clients claiming the same user's bundle at once get exactly the stock of
    /// one-time keys, each once, and the rest the last-resort Kyber key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_concurrent_claims_hand_out_each_one_time_key_once() {
        let Some((_db, s)) = open(QueueLimits::default()).await else { return };
        let s = Arc::new(s);
        let bob = s
            .enlist(&accounts::suite::interop("bob"), accounts::suite::device(1, 40, 40), 0)
            .await
            .unwrap()
            .address;
        let barrier = Arc::new(tokio::sync::Barrier::new(100));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (s, bob, barrier) = (Arc::clone(&s), bob.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.claim_bundle(&bob).await.unwrap().unwrap()
                })
            })
            .collect();
        let (mut ec, mut kyber) = (Vec::new(), Vec::new());
        let (mut without_ec, mut last_resort) = (0, 0);
        for t in tasks {
            let b = t.await.unwrap();
            match b.one_time {
                Some(k) => ec.push(k.id),
                None => without_ec += 1,
            }
            if b.kyber_is_last_resort {
                assert_eq!(b.kyber.id, 999);
                last_resort += 1;
            } else {
                kyber.push(b.kyber.id);
            }
        }
        assert_eq!(ec.len(), 40);
        assert_eq!(ec.iter().collect::<HashSet<_>>().len(), 40, "no EC one-time key twice");
        assert_eq!(kyber.len(), 40);
        assert_eq!(kyber.iter().collect::<HashSet<_>>().len(), 40, "no Kyber one-time key twice");
        assert_eq!((without_ec, last_resort), (60, 60));
        assert_eq!(s.prekey_counts(&bob).await.unwrap(), crate::store::PrekeyCounts::default());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_submissions_respect_the_cap_and_keep_sequence_order() {
        let limits = QueueLimits { max_per_device: 50, ..QueueLimits::default() };
        let Some((_db, s)) = open(limits).await else { return };
        let s = Arc::new(s);
        let (bob, carol) = (DeviceAddress::new("b", 1), DeviceAddress::new("c", 1));
        let tasks: Vec<_> = (0..80)
            .map(|i| {
                let (s, bob, carol) = (Arc::clone(&s), bob.clone(), carol.clone());
                tokio::spawn(async move {
                    // Both lock orders, so the per-device locks are taken crosswise.
                    let copies = if i % 2 == 0 {
                        vec![(bob, vec![1]), (carol, vec![2])]
                    } else {
                        vec![(carol, vec![2]), (bob, vec![1])]
                    };
                    let sub = Submission {
                        sender: DeviceAddress::new("a", 1),
                        message_id: format!("c{i}"),
                        copies,
                        expires_at_ms: i64::MAX,
                    };
                    s.submit(sub, 0).await.unwrap()
                })
            })
            .collect();
        let mut stored = 0;
        for t in tasks {
            match t.await.unwrap() {
                SubmitOutcome::Stored(seqs) => {
                    assert_eq!(seqs.len(), 2);
                    stored += 1;
                }
                SubmitOutcome::QueueFull(_) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(stored, 50, "exactly the cap, never more");
        assert_eq!(s.depth(&bob).await.unwrap(), 50);
        assert_eq!(s.depth(&carol).await.unwrap(), 50);
        let queued = s.pending(&bob, 0, 1000).await.unwrap();
        assert_eq!(queued.len(), 50);
        assert!(queued.windows(2).all(|w| w[0].seq < w[1].seq));
        // Paging from the middle sees the rest.
        assert_eq!(s.pending(&bob, queued[24].seq, 1000).await.unwrap().len(), 25);
    }

    #[tokio::test]
    async fn submission_numbers_copies_in_their_order() {
        let Some((_db, s)) = open(QueueLimits::default()).await else { return };
        let bob = DeviceAddress::new("b", 1);
        let copies = (0..5u8).map(|i| (bob.clone(), vec![i])).collect();
        let sub = Submission {
            sender: DeviceAddress::new("a", 1),
            message_id: "multi".into(),
            copies,
            expires_at_ms: i64::MAX,
        };
        let SubmitOutcome::Stored(seqs) = s.submit(sub, 0).await.unwrap() else { panic!() };
        let queued = s.pending(&bob, 0, 10).await.unwrap();
        assert_eq!(queued.iter().map(|q| q.seq).collect::<Vec<_>>(), seqs);
        assert_eq!(queued.iter().map(|q| q.stanza[0]).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn data_survives_reconnecting_and_migrations_run_once() {
        let Some(db) = TestDb::create().await else { return };
        let bob = DeviceAddress::new("b", 1);
        {
            let s = PgStore::connect(&db.url, QueueLimits::default()).await.unwrap();
            let sub = Submission {
                sender: DeviceAddress::new("a", 1),
                message_id: "keep".into(),
                copies: vec![(bob.clone(), b"x".to_vec())],
                expires_at_ms: i64::MAX,
            };
            assert!(matches!(s.submit(sub, 0).await.unwrap(), SubmitOutcome::Stored(_)));
            s.close().await;
        }
        let s = PgStore::connect(&db.url, QueueLimits::default()).await.unwrap();
        assert_eq!(s.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
        let left = s.pending(&bob, 0, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].message_id, "keep");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_starting_at_once_migrate_once() {
        let Some(db) = TestDb::create().await else { return };
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = db.url.clone();
                tokio::spawn(async move { PgStore::connect(&url, QueueLimits::default()).await })
            })
            .collect();
        for t in starts {
            let s = t.await.unwrap().unwrap();
            assert_eq!(s.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
        }
        let mut c = PgConnection::connect(&db.url).await.unwrap();
        let n: i64 = sqlx::query("SELECT count(*) AS n FROM schema_version")
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get("n");
        assert_eq!(n, MIGRATIONS.len() as i64);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_with_a_clear_error() {
        let Some(db) = TestDb::create().await else { return };
        PgStore::connect(&db.url, QueueLimits::default()).await.unwrap().close().await;
        let mut c = PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("INSERT INTO schema_version (version) VALUES (999)")
            .execute(&mut c)
            .await
            .unwrap();
        let err = PgStore::connect(&db.url, QueueLimits::default()).await.unwrap_err();
        assert!(err.to_string().contains("newer than this build"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_database_is_a_clear_error_without_the_password() {
        // A port nobody listens on: bind one, then let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("postgres://gk:s3cret-pw@127.0.0.1:{port}/interop?password=s3cret-pw");
        let err = PgStore::connect(&url, QueueLimits::default()).await.unwrap_err().to_string();
        assert!(err.contains("cannot connect to PostgreSQL at postgres://gk@127.0.0.1"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = PgStore::connect(
            "postgres://gk:s3cret-pw@127.0.0.1:notaport/x",
            QueueLimits::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        assert_eq!(
            redacted("postgres://u:pw@db.example:5433/gk?sslmode=disable&password=pw"),
            "postgres://u@db.example:5433/gk"
        );
        assert_eq!(redacted("postgres://db.example/gk"), "postgres://db.example/gk");
        assert!(!redacted("postgres://u:pw@[::1/").contains("pw"));
    }
}

//! The provider's own records on SQLite: users (argon2 password hashes), login sessions (only
//! a SHA-256 of the session token is kept), and devices with the opaque push token issued to
//! each.

use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::store::sqlite::{migrate, storage};
use crate::{Error, Result};

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"
CREATE TABLE users (
    username      TEXT    PRIMARY KEY,
    password_hash TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE sessions (
    token_sha256  BLOB    PRIMARY KEY,
    username      TEXT    NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    expires_at_ms INTEGER NOT NULL
);
CREATE TABLE devices (
    username   TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    device_key BLOB NOT NULL,
    push_token TEXT NOT NULL UNIQUE,
    PRIMARY KEY (username, device_key)
);
"#,
)];

/// What can go wrong with credentials (kept apart so the HTTP layer answers precisely without
/// saying which half was wrong).
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// The session token for the user.
    Ok(String),
    /// Unknown user or wrong password (deliberately not distinguished).
    Refused,
}

/// The provider's store.
#[derive(Debug, Clone)]
pub struct ProviderStore {
    pool: SqlitePool,
}

fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A real hash of a random password, verified against for unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(&[7u8; 16]).expect("16 bytes encode as a salt");
        Argon2::default()
            .hash_password(random_token().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

fn random_token() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

impl ProviderStore {
    /// Opens (creating) the database at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(storage)?;
        let mut conn = pool.acquire().await.map_err(storage)?;
        migrate(&mut conn, MIGRATIONS).await?;
        Ok(Self { pool })
    }

    /// Creates a user; false if the name is taken.
    pub async fn create_user(&self, username: &str, password: &str, now_ms: i64) -> Result<bool> {
        let password = password.to_owned();
        // Hashing is deliberately slow: keep it off the async workers.
        let hash = tokio::task::spawn_blocking(move || {
            let salt = SaltString::encode_b64(&rand::rng().random::<[u8; 16]>())
                .map_err(|_| Error::Refused("salt encoding"))?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|_| Error::Refused("password hashing failed"))
        })
        .await
        .map_err(|_| Error::Refused("password hashing failed"))??;
        let done = sqlx::query(
            "INSERT OR IGNORE INTO users (username, password_hash, created_at_ms) VALUES (?, ?, ?)",
        )
        .bind(username)
        .bind(hash)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(done.rows_affected() == 1)
    }

    /// Checks a password and opens a session valid for `ttl_ms`.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Login> {
        let stored: Option<String> =
            sqlx::query("SELECT password_hash FROM users WHERE username = ?")
                .bind(username)
                .fetch_optional(&self.pool)
                .await
                .map_err(storage)?
                .map(|r| r.get("password_hash"));
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            // An unknown user costs a hash too, so timing does not tell which half was wrong.
            let hash = stored.clone().unwrap_or_else(|| dummy_hash().to_owned());
            let Ok(parsed) = PasswordHash::new(&hash) else { return false };
            Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
                && stored.is_some()
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Ok(Login::Refused);
        }
        let token = random_token();
        sqlx::query(
            "INSERT INTO sessions (token_sha256, username, expires_at_ms) VALUES (?, ?, ?)",
        )
        .bind(sha256(&token))
        .bind(username)
        .bind(now_ms.saturating_add(ttl_ms))
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(Login::Ok(token))
    }

    /// The user a session token belongs to, if it is valid at `now_ms`.
    pub async fn session_user(&self, token: &str, now_ms: i64) -> Result<Option<String>> {
        Ok(sqlx::query(
            "SELECT username FROM sessions WHERE token_sha256 = ? AND expires_at_ms > ?",
        )
        .bind(sha256(token))
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(storage)?
        .map(|r| r.get("username")))
    }

    /// The push token of a user's device, issued on first use and stable afterwards.
    pub async fn push_token(&self, username: &str, device_key: &[u8; 32]) -> Result<String> {
        sqlx::query(
            "INSERT OR IGNORE INTO devices (username, device_key, push_token) VALUES (?, ?, ?)",
        )
        .bind(username)
        .bind(&device_key[..])
        .bind(random_token())
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(sqlx::query("SELECT push_token FROM devices WHERE username = ? AND device_key = ?")
            .bind(username)
            .bind(&device_key[..])
            .fetch_one(&self.pool)
            .await
            .map_err(storage)?
            .get("push_token"))
    }

    /// Whether `device_key` is a device of `username` (one that was issued a token).
    pub async fn has_device(&self, username: &str, device_key: &[u8; 32]) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM devices WHERE username = ? AND device_key = ?")
            .bind(username)
            .bind(&device_key[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?
            .is_some())
    }

    /// The (user, device key) a push token was issued to.
    pub async fn device_of_push_token(
        &self,
        push_token: &str,
    ) -> Result<Option<(String, [u8; 32])>> {
        let row = sqlx::query("SELECT username, device_key FROM devices WHERE push_token = ?")
            .bind(push_token)
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?;
        Ok(row.and_then(|r| {
            let key: Vec<u8> = r.get("device_key");
            Some((r.get("username"), key.try_into().ok()?))
        }))
    }
}

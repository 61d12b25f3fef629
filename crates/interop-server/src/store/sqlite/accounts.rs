//! [`AccountStore`] on SQLite.

use rand::Rng;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Acquire, Row};

use std::sync::Arc;

use super::directory::{AccountFacts, Blocks, MAX_CACHED_BLOCKS};
use super::{SqliteStore, storage};
use crate::Result;
use crate::store::{
    AccountKind, AccountStore, Bundle, DeviceAddress, Enlisted, Identity, NewDevice, PrekeyCounts,
    PrekeyUpload, SignedPrekey, UploadedPrekey,
};

/// Highest device number an account may have.
const MAX_DEVICE: u32 = 127;

fn new_account_id() -> String {
    hex::encode(rand::rng().random::<[u8; 16]>())
}

fn u32_of(row: &SqliteRow, col: &str) -> u32 {
    // Written from u32 values only.
    u32::try_from(row.get::<i64, _>(col)).unwrap_or(u32::MAX)
}

fn signed_of(row: &SqliteRow) -> SignedPrekey {
    SignedPrekey {
        id: u32_of(row, "key_id"),
        public: row.get("public_key"),
        signature: row.get::<Option<Vec<u8>>, _>("signature").unwrap_or_default(),
    }
}

async fn put_prekeys(
    conn: &mut SqliteConnection,
    d: &DeviceAddress,
    up: &PrekeyUpload,
) -> std::result::Result<(), sqlx::Error> {
    let dev = i64::from(d.device);
    for (kind, key) in [("ec", &up.signed), ("kyber-last-resort", &up.kyber_last_resort)] {
        if let Some(k) = key {
            sqlx::query(
                "INSERT INTO signed_prekeys (account_id, device_id, kind, key_id, public_key, signature) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, device_id, kind) DO UPDATE SET \
                 key_id = excluded.key_id, public_key = excluded.public_key, signature = excluded.signature",
            )
            .bind(&d.account)
            .bind(dev)
            .bind(kind)
            .bind(i64::from(k.id))
            .bind(&k.public)
            .bind(&k.signature)
            .execute(&mut *conn)
            .await?;
        }
    }
    for k in &up.kyber_one_time {
        sqlx::query(
            "INSERT OR REPLACE INTO one_time_prekeys (account_id, device_id, kind, key_id, public_key, signature) \
             VALUES (?, ?, 'kyber', ?, ?, ?)",
        )
        .bind(&d.account)
        .bind(dev)
        .bind(i64::from(k.id))
        .bind(&k.public)
        .bind(&k.signature)
        .execute(&mut *conn)
        .await?;
    }
    for k in &up.one_time {
        sqlx::query(
            "INSERT OR REPLACE INTO one_time_prekeys (account_id, device_id, kind, key_id, public_key, signature) \
             VALUES (?, ?, 'ec', ?, ?, NULL)",
        )
        .bind(&d.account)
        .bind(dev)
        .bind(i64::from(k.id))
        .bind(&k.public)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Takes the lowest-numbered one-time prekey of `kind`, deleting it in the same statement.
async fn take_one_time(
    conn: &mut SqliteConnection,
    d: &DeviceAddress,
    kind: &str,
) -> std::result::Result<Option<SqliteRow>, sqlx::Error> {
    sqlx::query(
        "DELETE FROM one_time_prekeys WHERE rowid = (SELECT rowid FROM one_time_prekeys \
         WHERE account_id = ? AND device_id = ? AND kind = ? ORDER BY key_id LIMIT 1) \
         RETURNING key_id, public_key, signature",
    )
    .bind(&d.account)
    .bind(i64::from(d.device))
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await
}

impl AccountStore for SqliteStore {
    async fn enlist(
        &self,
        identity: &Identity,
        device: NewDevice,
        now_ms: i64,
    ) -> Result<Enlisted> {
        let mut tx = self.writes.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
        let existing: Option<String> =
            sqlx::query("SELECT id FROM accounts WHERE kind = ? AND issuer = ? AND subject = ?")
                .bind(identity.kind.as_str())
                .bind(&identity.issuer)
                .bind(&identity.subject)
                .fetch_optional(&mut *tx)
                .await
                .map_err(storage)?
                .map(|r| r.get("id"));
        let (account, new_account) = match existing {
            Some(id) => (id, false),
            None => {
                let id = new_account_id();
                // Interop users opt in by enlisting; native users opt in explicitly.
                let opted_in = identity.kind == AccountKind::Interop;
                sqlx::query(
                    "INSERT INTO accounts (id, kind, issuer, subject, integrator, opted_in, created_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&id)
                .bind(identity.kind.as_str())
                .bind(&identity.issuer)
                .bind(&identity.subject)
                .bind(&identity.integrator)
                .bind(opted_in)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
                (id, true)
            }
        };
        let by_key = sqlx::query("SELECT account_id, device_id FROM devices WHERE noise_key = ?")
            .bind(&device.noise_key[..])
            .fetch_optional(&mut *tx)
            .await
            .map_err(storage)?;
        let (address, new_device) = match by_key {
            Some(row) => {
                let owner: String = row.get("account_id");
                if owner != account {
                    return Err(crate::Error::Refused(
                        "this device key belongs to another account",
                    ));
                }
                let address =
                    DeviceAddress { account: account.clone(), device: u32_of(&row, "device_id") };
                // A repeated enlistment refreshes what the device sent.
                sqlx::query(
                    "UPDATE devices SET registration_id = ?, identity_key = ?, push_token = ? \
                     WHERE account_id = ? AND device_id = ?",
                )
                .bind(i64::from(device.registration_id))
                .bind(&device.identity_key)
                .bind(&device.push_token)
                .bind(&address.account)
                .bind(i64::from(address.device))
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
                // "Keys replaced by the new bundle": one-time prekeys of the previous bundle may
                // belong to an identity the device no longer has (a reinstall).
                sqlx::query("DELETE FROM one_time_prekeys WHERE account_id = ? AND device_id = ?")
                    .bind(&address.account)
                    .bind(i64::from(address.device))
                    .execute(&mut *tx)
                    .await
                    .map_err(storage)?;
                (address, false)
            }
            None => {
                let next: i64 = sqlx::query(
                    "SELECT COALESCE(MAX(device_id), 0) + 1 AS next FROM devices WHERE account_id = ?",
                )
                .bind(&account)
                .fetch_one(&mut *tx)
                .await
                .map_err(storage)?
                .get("next");
                let device_id = u32::try_from(next).ok().filter(|d| *d <= MAX_DEVICE).ok_or(
                    crate::Error::Refused("the account has the maximum number of devices"),
                )?;
                sqlx::query(
                    "INSERT INTO devices (account_id, device_id, noise_key, registration_id, identity_key, \
                     push_token, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&account)
                .bind(i64::from(device_id))
                .bind(&device.noise_key[..])
                .bind(i64::from(device.registration_id))
                .bind(&device.identity_key)
                .bind(&device.push_token)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
                (DeviceAddress { account: account.clone(), device: device_id }, true)
            }
        };
        put_prekeys(&mut tx, &address, &device.prekeys).await.map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        self.directory.forget_account(&account);
        Ok(Enlisted { address, new_account, new_device })
    }

    async fn device_by_key(&self, noise_key: &[u8; 32]) -> Result<Option<DeviceAddress>> {
        Ok(sqlx::query("SELECT account_id, device_id FROM devices WHERE noise_key = ?")
            .bind(&noise_key[..])
            .fetch_optional(&self.reads)
            .await
            .map_err(storage)?
            .map(|r| DeviceAddress {
                account: r.get("account_id"),
                device: u32_of(&r, "device_id"),
            }))
    }

    async fn account_of(&self, identity: &Identity) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT id FROM accounts WHERE kind = ? AND issuer = ? AND subject = ?")
            .bind(identity.kind.as_str())
            .bind(&identity.issuer)
            .bind(&identity.subject)
            .fetch_optional(&self.reads)
            .await
            .map_err(storage)?
            .map(|r| r.get("id")))
    }

    async fn interop_accounts_with_subject(&self, subject: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT id FROM accounts WHERE kind = 'interop' AND subject = ? LIMIT 2")
                .bind(subject)
                .fetch_all(&self.reads)
                .await
                .map_err(storage)?;
        Ok(rows.iter().map(|r| r.get("id")).collect())
    }

    async fn identity_of(&self, account: &str) -> Result<Option<Identity>> {
        Ok(self.facts(account).await?.identity.clone())
    }

    async fn devices(&self, account: &str) -> Result<Vec<u32>> {
        Ok(self.facts(account).await?.devices.clone())
    }

    async fn push_token(&self, device: &DeviceAddress) -> Result<Option<String>> {
        Ok(sqlx::query("SELECT push_token FROM devices WHERE account_id = ? AND device_id = ?")
            .bind(&device.account)
            .bind(i64::from(device.device))
            .fetch_optional(&self.reads)
            .await
            .map_err(storage)?
            .and_then(|r| r.get("push_token")))
    }

    async fn set_opt_in(&self, account: &str, opted_in: bool) -> Result<bool> {
        let n = sqlx::query("UPDATE accounts SET opted_in = ? WHERE id = ?")
            .bind(opted_in)
            .bind(account)
            .execute(&self.writes)
            .await
            .map_err(storage)?
            .rows_affected();
        self.directory.forget_account(account);
        Ok(n == 1)
    }

    async fn opted_in(&self, account: &str) -> Result<bool> {
        Ok(self.facts(account).await?.opted_in)
    }

    async fn set_consent(&self, account: &str, version: &str, read_receipts: bool) -> Result<()> {
        sqlx::query("UPDATE accounts SET consent_version = ?, read_receipts = ? WHERE id = ?")
            .bind(version)
            .bind(read_receipts)
            .bind(account)
            .execute(&self.writes)
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn consent(&self, account: &str) -> Result<Option<(String, bool)>> {
        let row = sqlx::query("SELECT consent_version, read_receipts FROM accounts WHERE id = ?")
            .bind(account)
            .fetch_optional(&self.reads)
            .await
            .map_err(storage)?;
        Ok(row.and_then(|r| {
            let version: Option<String> = r.get("consent_version");
            let receipts: Option<bool> = r.get("read_receipts");
            Some((version?, receipts.unwrap_or(false)))
        }))
    }

    async fn delete_account(&self, account: &str) -> Result<bool> {
        let mut tx = self.writes.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
        let n = sqlx::query("DELETE FROM accounts WHERE id = ?")
            .bind(account)
            .execute(&mut *tx)
            .await
            .map_err(storage)?
            .rows_affected();
        // Devices, prekeys and the account's own block list go by cascade.
        for sql in [
            "DELETE FROM blocks WHERE blocked = ?",
            "DELETE FROM queue WHERE recipient_account = ?",
        ] {
            sqlx::query(sql).bind(account).execute(&mut *tx).await.map_err(storage)?;
        }
        tx.commit().await.map_err(storage)?;
        self.directory.forget_everything_about(account);
        Ok(n == 1)
    }

    async fn upload_prekeys(&self, device: &DeviceAddress, upload: PrekeyUpload) -> Result<()> {
        let mut tx = self.writes.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
        let known = sqlx::query("SELECT 1 FROM devices WHERE account_id = ? AND device_id = ?")
            .bind(&device.account)
            .bind(i64::from(device.device))
            .fetch_optional(&mut *tx)
            .await
            .map_err(storage)?;
        if known.is_none() {
            return Err(crate::Error::Refused("unknown device"));
        }
        put_prekeys(&mut tx, device, &upload).await.map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        Ok(())
    }

    async fn prekey_counts(&self, device: &DeviceAddress) -> Result<PrekeyCounts> {
        let rows = sqlx::query(
            "SELECT kind, COUNT(*) AS n FROM one_time_prekeys WHERE account_id = ? AND device_id = ? GROUP BY kind",
        )
        .bind(&device.account)
        .bind(i64::from(device.device))
        .fetch_all(&self.reads)
        .await
        .map_err(storage)?;
        let mut counts = PrekeyCounts::default();
        for r in &rows {
            let n = u64::try_from(r.get::<i64, _>("n")).unwrap_or(0);
            match r.get::<&str, _>("kind") {
                "ec" => counts.one_time = n,
                "kyber" => counts.kyber_one_time = n,
                _ => {}
            }
        }
        Ok(counts)
    }

    async fn claim_bundle(&self, device: &DeviceAddress) -> Result<Option<Bundle>> {
        let mut tx = self.writes.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
        let conn = tx.acquire().await.map_err(storage)?;
        let Some(dev) = sqlx::query(
            "SELECT registration_id, identity_key FROM devices WHERE account_id = ? AND device_id = ?",
        )
        .bind(&device.account)
        .bind(i64::from(device.device))
        .fetch_optional(&mut *conn)
        .await
        .map_err(storage)?
        else {
            return Ok(None);
        };
        let signed = sqlx::query(
            "SELECT kind, key_id, public_key, signature FROM signed_prekeys WHERE account_id = ? AND device_id = ?",
        )
        .bind(&device.account)
        .bind(i64::from(device.device))
        .fetch_all(&mut *conn)
        .await
        .map_err(storage)?;
        let find =
            |kind: &str| signed.iter().find(|r| r.get::<&str, _>("kind") == kind).map(signed_of);
        let (Some(signed_ec), last_resort) = (find("ec"), find("kyber-last-resort")) else {
            return Ok(None);
        };
        let (kyber, kyber_is_last_resort) =
            match take_one_time(conn, device, "kyber").await.map_err(storage)? {
                Some(row) => (signed_of(&row), false),
                None => match last_resort {
                    Some(k) => (k, true),
                    None => return Ok(None),
                },
            };
        let one_time = take_one_time(conn, device, "ec")
            .await
            .map_err(storage)?
            .map(|r| UploadedPrekey { id: u32_of(&r, "key_id"), public: r.get("public_key") });
        let bundle = Bundle {
            address: device.clone(),
            registration_id: u32_of(&dev, "registration_id"),
            identity_key: dev.get("identity_key"),
            signed: signed_ec,
            kyber,
            kyber_is_last_resort,
            one_time,
        };
        tx.commit().await.map_err(storage)?;
        Ok(Some(bundle))
    }

    async fn set_blocked(&self, blocker: &str, blocked: &str, on: bool) -> Result<()> {
        let sql = if on {
            "INSERT OR IGNORE INTO blocks (blocker, blocked) VALUES (?, ?)"
        } else {
            "DELETE FROM blocks WHERE blocker = ? AND blocked = ?"
        };
        sqlx::query(sql)
            .bind(blocker)
            .bind(blocked)
            .execute(&self.writes)
            .await
            .map_err(storage)?;
        self.directory.forget_account(blocker);
        Ok(())
    }

    async fn is_blocked(&self, blocker: &str, blocked: &str) -> Result<bool> {
        if let Some(on) = self.facts(blocker).await?.blocks.contains(blocked) {
            return Ok(on);
        }
        // A block list too long to cache.
        Ok(sqlx::query("SELECT 1 FROM blocks WHERE blocker = ? AND blocked = ?")
            .bind(blocker)
            .bind(blocked)
            .fetch_optional(&self.reads)
            .await
            .map_err(storage)?
            .is_some())
    }
}

impl SqliteStore {
    /// An account's identity, opt-in, devices and block list: from the directory cache, or read
    /// and cached.
    async fn facts(&self, account: &str) -> Result<Arc<AccountFacts>> {
        let ticket = match self.directory.account(account) {
            Ok(facts) => return Ok(facts),
            Err(ticket) => ticket,
        };
        let row = sqlx::query(
            "SELECT kind, issuer, subject, integrator, opted_in FROM accounts WHERE id = ?",
        )
        .bind(account)
        .fetch_optional(&self.reads)
        .await
        .map_err(storage)?;
        let (devices, blocks) = match &row {
            Some(_) => {
                let devices = sqlx::query(
                    "SELECT device_id FROM devices WHERE account_id = ? ORDER BY device_id",
                )
                .bind(account)
                .fetch_all(&self.reads)
                .await
                .map_err(storage)?
                .iter()
                .map(|r| u32_of(r, "device_id"))
                .collect();
                let blocks = sqlx::query(
                    "SELECT blocked FROM blocks WHERE blocker = ? ORDER BY blocked LIMIT ?",
                )
                .bind(account)
                .bind((MAX_CACHED_BLOCKS + 1) as i64)
                .fetch_all(&self.reads)
                .await
                .map_err(storage)?
                .iter()
                .map(|r| r.get("blocked"))
                .collect();
                (devices, Blocks::from_sorted(blocks))
            }
            None => (Vec::new(), Blocks::Sorted(Vec::new())),
        };
        let facts = Arc::new(AccountFacts {
            opted_in: row.as_ref().is_some_and(|r| r.get::<bool, _>("opted_in")),
            identity: row.and_then(|r| {
                Some(Identity {
                    kind: AccountKind::parse(r.get("kind"))?,
                    issuer: r.get("issuer"),
                    subject: r.get("subject"),
                    integrator: r.get("integrator"),
                })
            }),
            devices,
            blocks,
        });
        self.directory.put_account(ticket, account, Arc::clone(&facts));
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::accounts::suite;
    use crate::store::{MessageStore, QueueLimits, Submission, SubmitOutcome};

    async fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("gk.db"), QueueLimits::default()).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn suite_enlistment_is_idempotent_and_devices_are_keys() {
        let (_d, s) = open().await;
        suite::enlistment_is_idempotent_and_devices_are_keys(&s).await;
    }

    #[tokio::test]
    async fn suite_prekeys_are_consumed_once_then_last_resort() {
        let (_d, s) = open().await;
        suite::prekeys_are_consumed_once_then_last_resort(&s).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn suite_concurrent_claims_never_share_a_key() {
        let (_d, s) = open().await;
        suite::concurrent_claims_never_share_a_key(Arc::new(s)).await;
    }

    #[tokio::test]
    async fn suite_deleting_an_account_removes_everything() {
        let (_d, s) = open().await;
        suite::deleting_an_account_removes_everything(&s).await;
    }

    #[tokio::test]
    async fn a_block_list_too_long_to_cache_is_asked_per_pair() {
        let (_d, s) = open().await;
        let bob = s.enlist(&suite::interop("bob"), suite::device(2, 0, 0), 0).await.unwrap();
        let bob = bob.address.account;
        let mut tx = s.writes.begin().await.unwrap();
        for i in 0..=MAX_CACHED_BLOCKS {
            sqlx::query("INSERT INTO blocks (blocker, blocked) VALUES (?, ?)")
                .bind(&bob)
                .bind(format!("acct-{i:05}"))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        s.directory.forget_account(&bob);
        assert!(s.is_blocked(&bob, "acct-00000").await.unwrap());
        assert!(s.is_blocked(&bob, &format!("acct-{MAX_CACHED_BLOCKS:05}")).await.unwrap());
        assert!(!s.is_blocked(&bob, "acct-x").await.unwrap());
        assert_eq!(s.facts(&bob).await.unwrap().blocks, Blocks::TooMany);
        s.set_blocked(&bob, "acct-x", true).await.unwrap();
        assert!(s.is_blocked(&bob, "acct-x").await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn opt_out_deletes_queued_messages_while_the_committer_writes() {
        let (_d, s) = open().await;
        let s = Arc::new(s);
        let alice =
            s.enlist(&suite::interop("alice"), suite::device(1, 0, 0), 0).await.unwrap().address;
        let bob = DeviceAddress::new("bob", 1);
        // Directory writes and queue writes interleave on two connections.
        let writer = {
            let (s, alice) = (Arc::clone(&s), alice.clone());
            tokio::spawn(async move {
                for i in 0..50 {
                    let sub = Submission {
                        sender: bob.clone(),
                        message_id: format!("q{i}"),
                        copies: vec![(alice.clone(), vec![0])],
                        expires_at_ms: i64::MAX,
                    };
                    assert!(matches!(s.submit(sub, 0).await.unwrap(), SubmitOutcome::Stored(_)));
                }
            })
        };
        for i in 0..20u8 {
            s.enlist(&suite::interop(&format!("u{i}")), suite::device(100 + i, 1, 1), 0)
                .await
                .unwrap();
        }
        writer.await.unwrap();
        assert_eq!(s.depth(&alice).await.unwrap(), 50);
        assert!(s.delete_account(&alice.account).await.unwrap());
        assert_eq!(s.pending(&alice, 0, 100).await.unwrap(), vec![]);
        assert_eq!(s.depth(&alice).await.unwrap(), 0);
    }
}

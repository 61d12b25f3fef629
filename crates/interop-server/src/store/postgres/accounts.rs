//! [`AccountStore`] on PostgreSQL.
//!
//! Enlistment locks the account row (`FOR UPDATE`, or holds it as the inserter), so device
//! numbers of one account are handed out one at a time across nodes. Claims take one-time
//! prekeys with `FOR UPDATE SKIP LOCKED`, so concurrent claims never get the same key and never
//! wait for each other.

use rand::Rng;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use super::{Failure, PgStore, retrying, storage};
use crate::Result;
use crate::store::{
    AccountKind, AccountStore, Bundle, DeviceAddress, Enlisted, Identity, NewDevice, PrekeyCounts,
    PrekeyUpload, SignedPrekey, UploadedPrekey,
};

/// Highest device number an account may have.
const MAX_DEVICE: u32 = 127;

type DbResult<T> = std::result::Result<T, sqlx::Error>;

fn new_account_id() -> String {
    hex::encode(rand::rng().random::<[u8; 16]>())
}

fn u32_of(row: &PgRow, col: &str) -> DbResult<u32> {
    // Written from u32 values only.
    Ok(u32::try_from(row.try_get::<i64, _>(col)?).unwrap_or(u32::MAX))
}

fn signed_of(row: &PgRow) -> DbResult<SignedPrekey> {
    Ok(SignedPrekey {
        id: u32_of(row, "key_id")?,
        public: row.try_get("public_key")?,
        signature: row.try_get::<Option<Vec<u8>>, _>("signature")?.unwrap_or_default(),
    })
}

/// Keeps the last of several keys with the same id, as repeated inserts would (one statement
/// may not upsert the same row twice).
fn last_per_id<T>(keys: &[T], id: impl Fn(&T) -> u32) -> Vec<&T> {
    let mut out: Vec<&T> = Vec::with_capacity(keys.len());
    for k in keys.iter().rev() {
        if !out.iter().any(|o| id(o) == id(k)) {
            out.push(k);
        }
    }
    out.reverse();
    out
}

async fn put_prekeys(
    conn: &mut PgConnection,
    d: &DeviceAddress,
    up: &PrekeyUpload,
) -> DbResult<()> {
    let dev = i64::from(d.device);
    for (kind, key) in [("ec", &up.signed), ("kyber-last-resort", &up.kyber_last_resort)] {
        if let Some(k) = key {
            sqlx::query(
                "INSERT INTO signed_prekeys (account_id, device_id, kind, key_id, public_key, signature) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account_id, device_id, kind) DO UPDATE SET \
                 key_id = EXCLUDED.key_id, public_key = EXCLUDED.public_key, signature = EXCLUDED.signature",
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
    let kyber = last_per_id(&up.kyber_one_time, |k| k.id);
    put_one_time(
        conn,
        d,
        "kyber",
        kyber.iter().map(|k| (k.id, k.public.as_slice(), Some(k.signature.as_slice()))),
    )
    .await?;
    let ec = last_per_id(&up.one_time, |k| k.id);
    put_one_time(conn, d, "ec", ec.iter().map(|k| (k.id, k.public.as_slice(), None))).await?;
    Ok(())
}

/// Adds (or replaces) one-time prekeys of `kind`: `(id, public key, signature)`, in one statement.
async fn put_one_time<'k>(
    conn: &mut PgConnection,
    d: &DeviceAddress,
    kind: &str,
    keys: impl Iterator<Item = (u32, &'k [u8], Option<&'k [u8]>)>,
) -> DbResult<()> {
    let (mut ids, mut publics, mut signatures) = (Vec::new(), Vec::new(), Vec::new());
    for (id, public, signature) in keys {
        ids.push(i64::from(id));
        publics.push(public);
        signatures.push(signature);
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO one_time_prekeys (account_id, device_id, kind, key_id, public_key, signature) \
         SELECT $1, $2, $3, k, p, s FROM unnest($4::bigint[], $5::bytea[], $6::bytea[]) AS t (k, p, s) \
         ON CONFLICT (account_id, device_id, kind, key_id) DO UPDATE SET \
         public_key = EXCLUDED.public_key, signature = EXCLUDED.signature",
    )
    .bind(&d.account)
    .bind(i64::from(d.device))
    .bind(kind)
    .bind(&ids)
    .bind(&publics)
    .bind(&signatures)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Takes the lowest-numbered one-time prekey of `kind` that no concurrent claim holds,
/// deleting it in the same statement.
async fn take_one_time(
    conn: &mut PgConnection,
    d: &DeviceAddress,
    kind: &str,
) -> DbResult<Option<PgRow>> {
    sqlx::query(
        "DELETE FROM one_time_prekeys WHERE (account_id, device_id, kind, key_id) IN ( \
           SELECT account_id, device_id, kind, key_id FROM one_time_prekeys \
           WHERE account_id = $1 AND device_id = $2 AND kind = $3 \
           ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING key_id, public_key, signature",
    )
    .bind(&d.account)
    .bind(i64::from(d.device))
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await
}

impl PgStore {
    async fn try_enlist(
        &self,
        identity: &Identity,
        device: &NewDevice,
        now_ms: i64,
    ) -> std::result::Result<Enlisted, Failure> {
        let mut tx = self.pool.begin().await?;
        // Interop users opt in by enlisting; native users opt in explicitly.
        let opted_in = identity.kind == AccountKind::Interop;
        let created: Option<String> = sqlx::query(
            "INSERT INTO accounts (id, kind, issuer, subject, integrator, opted_in, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (kind, issuer, subject) DO NOTHING RETURNING id",
        )
        .bind(new_account_id())
        .bind(identity.kind.as_str())
        .bind(&identity.issuer)
        .bind(&identity.subject)
        .bind(&identity.integrator)
        .bind(opted_in)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("id"))
        .transpose()?;
        let (account, new_account) = match created {
            Some(id) => (id, true),
            None => {
                // Lock the account: one enlistment at a time numbers its devices.
                let id: Option<String> = sqlx::query(
                    "SELECT id FROM accounts WHERE kind = $1 AND issuer = $2 AND subject = $3 FOR UPDATE",
                )
                .bind(identity.kind.as_str())
                .bind(&identity.issuer)
                .bind(&identity.subject)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("id"))
                .transpose()?;
                // Deleted between the two statements.
                (id.ok_or(Failure::Retry)?, false)
            }
        };
        let by_key = sqlx::query("SELECT account_id, device_id FROM devices WHERE noise_key = $1")
            .bind(&device.noise_key[..])
            .fetch_optional(&mut *tx)
            .await?;
        let (address, new_device) = match by_key {
            Some(row) => {
                let owner: String = row.try_get("account_id")?;
                if owner != account {
                    return Err(Failure::Refused("this device key belongs to another account"));
                }
                let address =
                    DeviceAddress { account: account.clone(), device: u32_of(&row, "device_id")? };
                // A repeated enlistment refreshes what the device sent.
                sqlx::query(
                    "UPDATE devices SET registration_id = $1, identity_key = $2, push_token = $3 \
                     WHERE account_id = $4 AND device_id = $5",
                )
                .bind(i64::from(device.registration_id))
                .bind(&device.identity_key)
                .bind(&device.push_token)
                .bind(&address.account)
                .bind(i64::from(address.device))
                .execute(&mut *tx)
                .await?;
                // "Keys replaced by the new bundle": one-time prekeys of the previous bundle may
                // belong to an identity the device no longer has (a reinstall).
                sqlx::query(
                    "DELETE FROM one_time_prekeys WHERE account_id = $1 AND device_id = $2",
                )
                .bind(&address.account)
                .bind(i64::from(address.device))
                .execute(&mut *tx)
                .await?;
                (address, false)
            }
            None => {
                let next: i64 = sqlx::query(
                    "SELECT COALESCE(MAX(device_id), 0) + 1 AS next FROM devices WHERE account_id = $1",
                )
                .bind(&account)
                .fetch_one(&mut *tx)
                .await?
                .try_get("next")?;
                let device_id = u32::try_from(next)
                    .ok()
                    .filter(|d| *d <= MAX_DEVICE)
                    .ok_or(Failure::Refused("the account has the maximum number of devices"))?;
                let inserted = sqlx::query(
                    "INSERT INTO devices (account_id, device_id, noise_key, registration_id, identity_key, \
                     push_token, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (noise_key) DO NOTHING",
                )
                .bind(&account)
                .bind(i64::from(device_id))
                .bind(&device.noise_key[..])
                .bind(i64::from(device.registration_id))
                .bind(&device.identity_key)
                .bind(&device.push_token)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    // The key was enlisted concurrently: run again to see where it went.
                    return Err(Failure::Retry);
                }
                (DeviceAddress { account: account.clone(), device: device_id }, true)
            }
        };
        put_prekeys(&mut tx, &address, &device.prekeys).await?;
        tx.commit().await?;
        Ok(Enlisted { address, new_account, new_device })
    }

    async fn try_delete_account(&self, account: &str) -> std::result::Result<bool, Failure> {
        let mut tx = self.pool.begin().await?;
        // Queue writers lock the depth rows first, in key order: so does this.
        sqlx::query("SELECT 1 FROM queue_depth WHERE account = $1 ORDER BY device FOR UPDATE")
            .bind(account)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM queue WHERE recipient_account = $1")
            .bind(account)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM queue_depth WHERE account = $1")
            .bind(account)
            .execute(&mut *tx)
            .await?;
        // Devices, prekeys and the account's own block list go by cascade.
        let n = sqlx::query("DELETE FROM accounts WHERE id = $1")
            .bind(account)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM blocks WHERE blocked = $1")
            .bind(account)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn try_upload_prekeys(
        &self,
        device: &DeviceAddress,
        upload: &PrekeyUpload,
    ) -> std::result::Result<(), Failure> {
        let mut tx = self.pool.begin().await?;
        let known = sqlx::query(
            "SELECT 1 FROM devices WHERE account_id = $1 AND device_id = $2 FOR KEY SHARE",
        )
        .bind(&device.account)
        .bind(i64::from(device.device))
        .fetch_optional(&mut *tx)
        .await?;
        if known.is_none() {
            return Err(Failure::Refused("unknown device"));
        }
        put_prekeys(&mut tx, device, upload).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn try_claim_bundle(
        &self,
        device: &DeviceAddress,
    ) -> std::result::Result<Option<Bundle>, Failure> {
        let mut tx = self.pool.begin().await?;
        let Some(dev) = sqlx::query(
            "SELECT registration_id, identity_key FROM devices WHERE account_id = $1 AND device_id = $2",
        )
        .bind(&device.account)
        .bind(i64::from(device.device))
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let signed = sqlx::query(
            "SELECT kind, key_id, public_key, signature FROM signed_prekeys \
             WHERE account_id = $1 AND device_id = $2",
        )
        .bind(&device.account)
        .bind(i64::from(device.device))
        .fetch_all(&mut *tx)
        .await?;
        let mut signed_ec = None;
        let mut last_resort = None;
        for r in &signed {
            match r.try_get::<&str, _>("kind")? {
                "ec" => signed_ec = Some(signed_of(r)?),
                "kyber-last-resort" => last_resort = Some(signed_of(r)?),
                _ => {}
            }
        }
        let Some(signed_ec) = signed_ec else { return Ok(None) };
        let (kyber, kyber_is_last_resort) = match take_one_time(&mut tx, device, "kyber").await? {
            Some(row) => (signed_of(&row)?, false),
            None => match last_resort {
                Some(k) => (k, true),
                None => return Ok(None),
            },
        };
        let one_time = match take_one_time(&mut tx, device, "ec").await? {
            Some(r) => {
                Some(UploadedPrekey { id: u32_of(&r, "key_id")?, public: r.try_get("public_key")? })
            }
            None => None,
        };
        let bundle = Bundle {
            address: device.clone(),
            registration_id: u32_of(&dev, "registration_id")?,
            identity_key: dev.try_get("identity_key")?,
            signed: signed_ec,
            kyber,
            kyber_is_last_resort,
            one_time,
        };
        tx.commit().await?;
        Ok(Some(bundle))
    }
}

impl AccountStore for PgStore {
    async fn enlist(
        &self,
        identity: &Identity,
        device: NewDevice,
        now_ms: i64,
    ) -> Result<Enlisted> {
        let device = &device;
        retrying(move || self.try_enlist(identity, device, now_ms)).await
    }

    async fn device_by_key(&self, noise_key: &[u8; 32]) -> Result<Option<DeviceAddress>> {
        sqlx::query("SELECT account_id, device_id FROM devices WHERE noise_key = $1")
            .bind(&noise_key[..])
            .fetch_optional(&self.pool)
            .await
            .and_then(|row| {
                row.map(|r| {
                    Ok(DeviceAddress {
                        account: r.try_get("account_id")?,
                        device: u32_of(&r, "device_id")?,
                    })
                })
                .transpose()
            })
            .map_err(storage)
    }

    async fn account_of(&self, identity: &Identity) -> Result<Option<String>> {
        sqlx::query("SELECT id FROM accounts WHERE kind = $1 AND issuer = $2 AND subject = $3")
            .bind(identity.kind.as_str())
            .bind(&identity.issuer)
            .bind(&identity.subject)
            .fetch_optional(&self.pool)
            .await
            .and_then(|r| r.map(|r| r.try_get("id")).transpose())
            .map_err(storage)
    }

    async fn interop_accounts_with_subject(&self, subject: &str) -> Result<Vec<String>> {
        sqlx::query("SELECT id FROM accounts WHERE kind = 'interop' AND subject = $1 LIMIT 2")
            .bind(subject)
            .fetch_all(&self.pool)
            .await
            .and_then(|rows| rows.iter().map(|r| r.try_get("id")).collect())
            .map_err(storage)
    }

    async fn identity_of(&self, account: &str) -> Result<Option<Identity>> {
        let row =
            sqlx::query("SELECT kind, issuer, subject, integrator FROM accounts WHERE id = $1")
                .bind(account)
                .fetch_optional(&self.pool)
                .await
                .map_err(storage)?;
        let Some(r) = row else { return Ok(None) };
        let read = || -> DbResult<Option<Identity>> {
            let Some(kind) = AccountKind::parse(r.try_get("kind")?) else { return Ok(None) };
            Ok(Some(Identity {
                kind,
                issuer: r.try_get("issuer")?,
                subject: r.try_get("subject")?,
                integrator: r.try_get("integrator")?,
            }))
        };
        read().map_err(storage)
    }

    async fn devices(&self, account: &str) -> Result<Vec<u32>> {
        sqlx::query("SELECT device_id FROM devices WHERE account_id = $1 ORDER BY device_id")
            .bind(account)
            .fetch_all(&self.pool)
            .await
            .and_then(|rows| rows.iter().map(|r| u32_of(r, "device_id")).collect())
            .map_err(storage)
    }

    async fn push_token(&self, device: &DeviceAddress) -> Result<Option<String>> {
        sqlx::query("SELECT push_token FROM devices WHERE account_id = $1 AND device_id = $2")
            .bind(&device.account)
            .bind(i64::from(device.device))
            .fetch_optional(&self.pool)
            .await
            .and_then(|r| r.map(|r| r.try_get::<Option<String>, _>("push_token")).transpose())
            .map(Option::flatten)
            .map_err(storage)
    }

    async fn set_opt_in(&self, account: &str, opted_in: bool) -> Result<bool> {
        let n = sqlx::query("UPDATE accounts SET opted_in = $1 WHERE id = $2")
            .bind(opted_in)
            .bind(account)
            .execute(&self.pool)
            .await
            .map_err(storage)?
            .rows_affected();
        Ok(n == 1)
    }

    async fn set_consent(&self, account: &str, version: &str, read_receipts: bool) -> Result<()> {
        sqlx::query("UPDATE accounts SET consent_version = $1, read_receipts = $2 WHERE id = $3")
            .bind(version)
            .bind(read_receipts)
            .bind(account)
            .execute(&self.pool)
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn consent(&self, account: &str) -> Result<Option<(String, bool)>> {
        let row = sqlx::query("SELECT consent_version, read_receipts FROM accounts WHERE id = $1")
            .bind(account)
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?;
        Ok(row.and_then(|r| {
            let version: Option<String> = r.get("consent_version");
            let receipts: Option<bool> = r.get("read_receipts");
            Some((version?, receipts.unwrap_or(false)))
        }))
    }

    async fn opted_in(&self, account: &str) -> Result<bool> {
        sqlx::query("SELECT opted_in FROM accounts WHERE id = $1")
            .bind(account)
            .fetch_optional(&self.pool)
            .await
            .and_then(|r| r.map(|r| r.try_get::<bool, _>("opted_in")).transpose())
            .map(|v| v.unwrap_or(false))
            .map_err(storage)
    }

    async fn delete_account(&self, account: &str) -> Result<bool> {
        retrying(move || self.try_delete_account(account)).await
    }

    async fn upload_prekeys(&self, device: &DeviceAddress, upload: PrekeyUpload) -> Result<()> {
        let upload = &upload;
        retrying(move || self.try_upload_prekeys(device, upload)).await
    }

    async fn prekey_counts(&self, device: &DeviceAddress) -> Result<PrekeyCounts> {
        let rows = sqlx::query(
            "SELECT kind, COUNT(*) AS n FROM one_time_prekeys \
             WHERE account_id = $1 AND device_id = $2 GROUP BY kind",
        )
        .bind(&device.account)
        .bind(i64::from(device.device))
        .fetch_all(&self.pool)
        .await
        .map_err(storage)?;
        let mut counts = PrekeyCounts::default();
        for r in &rows {
            let n = u64::try_from(r.try_get::<i64, _>("n").map_err(storage)?).unwrap_or(0);
            match r.try_get::<&str, _>("kind").map_err(storage)? {
                "ec" => counts.one_time = n,
                "kyber" => counts.kyber_one_time = n,
                _ => {}
            }
        }
        Ok(counts)
    }

    async fn claim_bundle(&self, device: &DeviceAddress) -> Result<Option<Bundle>> {
        retrying(move || self.try_claim_bundle(device)).await
    }

    async fn set_blocked(&self, blocker: &str, blocked: &str, on: bool) -> Result<()> {
        let sql = if on {
            "INSERT INTO blocks (blocker, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2"
        };
        sqlx::query(sql).bind(blocker).bind(blocked).execute(&self.pool).await.map_err(storage)?;
        Ok(())
    }

    async fn is_blocked(&self, blocker: &str, blocked: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2")
            .bind(blocker)
            .bind(blocked)
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?
            .is_some())
    }
}

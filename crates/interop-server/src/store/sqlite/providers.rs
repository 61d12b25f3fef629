//! [`ProviderStore`] on SQLite.

use interop_enlist::{Alg, ProviderEntry, Quotas};
use sqlx::Row;

use super::{SqliteStore, storage};
use crate::store::{ProviderRecord, ProviderStore};
use crate::{Error, Result};

impl ProviderStore for SqliteStore {
    async fn upsert_provider(&self, r: &ProviderRecord, now_ms: i64) -> Result<()> {
        let e = &r.entry;
        let algs: Vec<&str> = e.allowed_algs.iter().map(|a| a.as_str()).collect();
        let done = sqlx::query(
            "INSERT INTO providers (integrator_id, issuer, discovery_url, allowed_algs, push_endpoint, push_secret, \
             media_base_url, enlistments_per_hour, max_devices_per_account, messages_per_minute, enabled, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (integrator_id) DO UPDATE SET issuer = excluded.issuer, discovery_url = excluded.discovery_url, \
             allowed_algs = excluded.allowed_algs, push_endpoint = excluded.push_endpoint, push_secret = excluded.push_secret, \
             media_base_url = excluded.media_base_url, enlistments_per_hour = excluded.enlistments_per_hour, \
             max_devices_per_account = excluded.max_devices_per_account, messages_per_minute = excluded.messages_per_minute, \
             enabled = excluded.enabled, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&e.integrator_id)
        .bind(&e.issuer)
        .bind(&e.discovery_url)
        .bind(algs.join(","))
        .bind(&e.push_endpoint)
        .bind(&r.push_secret)
        .bind(&e.media_base_url)
        .bind(i64::from(e.quotas.enlistments_per_hour))
        .bind(i64::from(e.quotas.max_devices_per_account))
        .bind(i64::from(e.quotas.messages_per_minute))
        .bind(e.enabled)
        .bind(now_ms)
        .execute(&self.writes)
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                Err(Error::Refused("another provider is registered with this issuer"))
            }
            Err(e) => Err(storage(e)),
        }
    }

    async fn providers(&self) -> Result<Vec<ProviderRecord>> {
        let rows = sqlx::query("SELECT * FROM providers ORDER BY integrator_id")
            .fetch_all(&self.reads)
            .await
            .map_err(storage)?;
        let u32_of = |r: &sqlx::sqlite::SqliteRow, c: &str| {
            u32::try_from(r.get::<i64, _>(c)).unwrap_or(u32::MAX)
        };
        Ok(rows
            .iter()
            .map(|r| ProviderRecord {
                entry: ProviderEntry {
                    issuer: r.get("issuer"),
                    discovery_url: r.get("discovery_url"),
                    allowed_algs: r
                        .get::<&str, _>("allowed_algs")
                        .split(',')
                        .filter_map(Alg::from_name)
                        .collect(),
                    integrator_id: r.get("integrator_id"),
                    push_endpoint: r.get("push_endpoint"),
                    media_base_url: r.get("media_base_url"),
                    quotas: Quotas {
                        enlistments_per_hour: u32_of(r, "enlistments_per_hour"),
                        max_devices_per_account: u32_of(r, "max_devices_per_account"),
                        messages_per_minute: u32_of(r, "messages_per_minute"),
                    },
                    enabled: r.get("enabled"),
                },
                push_secret: r.get("push_secret"),
            })
            .collect())
    }

    async fn set_provider_enabled(&self, integrator_id: &str, enabled: bool) -> Result<bool> {
        let n = sqlx::query("UPDATE providers SET enabled = ? WHERE integrator_id = ?")
            .bind(enabled)
            .bind(integrator_id)
            .execute(&self.writes)
            .await
            .map_err(storage)?
            .rows_affected();
        Ok(n == 1)
    }
}

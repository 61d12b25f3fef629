//! [`ProviderStore`] on PostgreSQL.

use interop_enlist::{Alg, ProviderEntry, Quotas};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{PgStore, storage};
use crate::store::{ProviderRecord, ProviderStore};
use crate::{Error, Result};

fn record_of(r: &PgRow) -> std::result::Result<ProviderRecord, sqlx::Error> {
    let u32_of = |c: &str| -> std::result::Result<u32, sqlx::Error> {
        Ok(u32::try_from(r.try_get::<i64, _>(c)?).unwrap_or(u32::MAX))
    };
    Ok(ProviderRecord {
        entry: ProviderEntry {
            issuer: r.try_get("issuer")?,
            discovery_url: r.try_get("discovery_url")?,
            allowed_algs: r
                .try_get::<&str, _>("allowed_algs")?
                .split(',')
                .filter_map(Alg::from_name)
                .collect(),
            integrator_id: r.try_get("integrator_id")?,
            push_endpoint: r.try_get("push_endpoint")?,
            media_base_url: r.try_get("media_base_url")?,
            quotas: Quotas {
                enlistments_per_hour: u32_of("enlistments_per_hour")?,
                max_devices_per_account: u32_of("max_devices_per_account")?,
                messages_per_minute: u32_of("messages_per_minute")?,
            },
            enabled: r.try_get("enabled")?,
        },
        push_secret: r.try_get("push_secret")?,
    })
}

impl ProviderStore for PgStore {
    async fn upsert_provider(&self, r: &ProviderRecord, now_ms: i64) -> Result<()> {
        let e = &r.entry;
        let algs: Vec<&str> = e.allowed_algs.iter().map(|a| a.as_str()).collect();
        let done = sqlx::query(
            "INSERT INTO providers (integrator_id, issuer, discovery_url, allowed_algs, push_endpoint, push_secret, \
             media_base_url, enlistments_per_hour, max_devices_per_account, messages_per_minute, enabled, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (integrator_id) DO UPDATE SET issuer = EXCLUDED.issuer, discovery_url = EXCLUDED.discovery_url, \
             allowed_algs = EXCLUDED.allowed_algs, push_endpoint = EXCLUDED.push_endpoint, push_secret = EXCLUDED.push_secret, \
             media_base_url = EXCLUDED.media_base_url, enlistments_per_hour = EXCLUDED.enlistments_per_hour, \
             max_devices_per_account = EXCLUDED.max_devices_per_account, messages_per_minute = EXCLUDED.messages_per_minute, \
             enabled = EXCLUDED.enabled, updated_at_ms = EXCLUDED.updated_at_ms",
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
        .execute(&self.pool)
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
        sqlx::query("SELECT * FROM providers ORDER BY integrator_id")
            .fetch_all(&self.pool)
            .await
            .and_then(|rows| rows.iter().map(record_of).collect())
            .map_err(storage)
    }

    async fn set_provider_enabled(&self, integrator_id: &str, enabled: bool) -> Result<bool> {
        let n = sqlx::query("UPDATE providers SET enabled = $1 WHERE integrator_id = $2")
            .bind(enabled)
            .bind(integrator_id)
            .execute(&self.pool)
            .await
            .map_err(storage)?
            .rows_affected();
        Ok(n == 1)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn record(integrator: &str, issuer: &str) -> ProviderRecord {
        ProviderRecord {
            entry: ProviderEntry::new(
                issuer,
                integrator,
                &format!("{issuer}/push"),
                &format!("{issuer}/media/"),
            ),
            push_secret: format!("whsec_{integrator}"),
        }
    }

    /// The provider registry's behaviour (the SQLite backend shows it too; there is no shared
    /// suite for it in `store::providers` yet).
    pub(crate) async fn provider_registry(store: &impl ProviderStore) {
        assert_eq!(store.providers().await.unwrap(), vec![]);
        let acme = record("acme", "https://acme.example");
        store.upsert_provider(&acme, 1).await.unwrap();
        let mut beta = record("beta", "https://beta.example");
        beta.entry.allowed_algs = vec![Alg::EdDSA, Alg::ES256];
        beta.entry.quotas = Quotas {
            enlistments_per_hour: 7,
            max_devices_per_account: 3,
            messages_per_minute: u32::MAX,
        };
        store.upsert_provider(&beta, 2).await.unwrap();
        assert_eq!(store.providers().await.unwrap(), vec![acme.clone(), beta.clone()]);
        // Replacing by integrator id; an issuer belongs to one integrator id.
        let mut acme2 = record("acme", "https://acme2.example");
        acme2.push_secret = "whsec_rotated".into();
        store.upsert_provider(&acme2, 3).await.unwrap();
        assert!(matches!(
            store.upsert_provider(&record("gamma", "https://beta.example"), 4).await,
            Err(Error::Refused(_))
        ));
        assert_eq!(store.providers().await.unwrap(), vec![acme2.clone(), beta.clone()]);
        // The kill switch.
        assert!(store.set_provider_enabled("beta", false).await.unwrap());
        assert!(!store.set_provider_enabled("nobody", false).await.unwrap());
        let all = store.providers().await.unwrap();
        assert!(all[0].entry.enabled);
        assert!(!all[1].entry.enabled);
    }
}

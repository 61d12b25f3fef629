//! The gatekeeper's provider registry, persisted: every third-party provider it interoperates
//! with, and the secret it signs that provider's push wake-ups with.

use std::future::Future;

use interop_enlist::ProviderEntry;

/// A registered provider.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderRecord {
    /// Issuer, URLs, algorithms, integrator id, quotas, enabled flag.
    pub entry: ProviderEntry,
    /// The Standard Webhooks secret (`whsec_...`) for push wake-ups. Never logged or returned.
    pub push_secret: String,
}

impl std::fmt::Debug for ProviderRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRecord").field("entry", &self.entry).finish_non_exhaustive()
    }
}

/// Where the provider registry lives.
pub trait ProviderStore: Send + Sync + 'static {
    /// Adds a provider or replaces the one with the same integrator id. Fails if another
    /// integrator id already has this issuer.
    fn upsert_provider(
        &self,
        record: &ProviderRecord,
        now_ms: i64,
    ) -> impl Future<Output = crate::Result<()>> + Send;

    /// Every registered provider, by integrator id.
    fn providers(&self) -> impl Future<Output = crate::Result<Vec<ProviderRecord>>> + Send;

    /// Turns a provider on or off (the kill switch). False if it is not registered.
    fn set_provider_enabled(
        &self,
        integrator_id: &str,
        enabled: bool,
    ) -> impl Future<Output = crate::Result<bool>> + Send;
}

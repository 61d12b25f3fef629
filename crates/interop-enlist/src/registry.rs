//! The gatekeeper side: the provider registry, one JWKS cache per provider, and token
//! verification end to end.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{CacheConfig, FetchRequest, FetchResponse, JwksCache, KeyLookup};
use crate::keys::{Alg, Thumbprint, VerificationKey};
use crate::time::UnixTime;
use crate::token::{Refusal, TokenPolicy, UnverifiedToken, VerifiedToken};
use crate::url_policy::UrlPolicy;
use crate::{Error, Result};

/// Per-provider limits the gatekeeper enforces (the server applies them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Enlistments accepted per hour from this provider's users.
    pub enlistments_per_hour: u32,
    /// Devices per account.
    pub max_devices_per_account: u32,
    /// Messages per minute per account.
    pub messages_per_minute: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self { enlistments_per_hour: 10_000, max_devices_per_account: 5, messages_per_minute: 600 }
    }
}

/// One registered third-party provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEntry {
    /// The `iss` of its tokens (https URL).
    pub issuer: String,
    /// Its OpenID discovery document (usually `<issuer>/.well-known/openid-configuration`).
    pub discovery_url: String,
    /// Algorithms its tokens may use.
    pub allowed_algs: Vec<Alg>,
    /// The integrator id carried in its users' addresses: 1 to 32 of `a-z 0-9 -`, starting
    /// with a letter.
    pub integrator_id: String,
    /// Where push wake-ups are POSTed.
    pub push_endpoint: String,
    /// The only base URL the media proxy fetches this provider's media from.
    pub media_base_url: String,
    /// Limits.
    pub quotas: Quotas,
    /// Kill switch: a disabled provider's tokens are refused.
    pub enabled: bool,
}

impl ProviderEntry {
    /// An enabled entry with the conventional discovery URL, EdDSA only, default quotas.
    pub fn new(
        issuer: &str,
        integrator_id: &str,
        push_endpoint: &str,
        media_base_url: &str,
    ) -> Self {
        Self {
            issuer: issuer.to_owned(),
            discovery_url: format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            ),
            allowed_algs: vec![Alg::EdDSA],
            integrator_id: integrator_id.to_owned(),
            push_endpoint: push_endpoint.to_owned(),
            media_base_url: media_base_url.to_owned(),
            quotas: Quotas::default(),
            enabled: true,
        }
    }

    /// Checks every field (URLs against `policy`).
    pub fn validate(&self, policy: UrlPolicy) -> Result<()> {
        for url in [&self.issuer, &self.discovery_url, &self.push_endpoint, &self.media_base_url] {
            policy.check(url).map_err(Error::InsecureUrl)?;
        }
        if self.allowed_algs.is_empty() {
            return Err(Error::InvalidConfig("a provider needs at least one allowed algorithm"));
        }
        if !valid_integrator_id(&self.integrator_id) {
            return Err(Error::InvalidConfig(
                "integrator id must be 1-32 of a-z 0-9 -, starting with a letter",
            ));
        }
        Ok(())
    }
}

/// 1 to 32 of `a-z 0-9 -`, starting with a letter.
pub fn valid_integrator_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A token that passed every check, with the provider it belongs to.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The claims.
    pub token: VerifiedToken,
    /// The provider's integrator id.
    pub integrator_id: String,
}

impl VerifiedIdentity {
    /// The identity: (issuer, subject). Never the subject alone.
    pub fn key(&self) -> (&str, &str) {
        (&self.token.issuer, &self.token.subject)
    }
}

impl fmt::Debug for VerifiedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedIdentity")
            .field("integrator_id", &self.integrator_id)
            .finish_non_exhaustive()
    }
}

/// The key a token names, with its provider (see [`Registry::resolve`]).
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    /// The verification key.
    pub key: Arc<VerificationKey>,
    /// The provider's registered issuer.
    pub issuer: String,
    /// The provider's integrator id.
    pub integrator_id: String,
}

#[derive(Debug)]
struct Registered {
    entry: ProviderEntry,
    cache: JwksCache,
}

/// Gatekeeper configuration.
#[derive(Debug, Clone)]
pub struct GatekeeperConfig {
    /// Claim checks (audience, leeway, maximum lifetime).
    pub policy: TokenPolicy,
    /// Which URLs may be fetched.
    pub url_policy: UrlPolicy,
    /// JWKS cache bounds.
    pub cache: CacheConfig,
}

impl GatekeeperConfig {
    /// Production defaults for gatekeeper `audience`.
    pub fn new(audience: &str) -> Self {
        Self {
            policy: TokenPolicy::new(audience),
            url_policy: UrlPolicy::HttpsOnly,
            cache: CacheConfig::default(),
        }
    }
}

/// The provider registry with its JWKS caches: verifies tokens and tells the server what to
/// fetch. Same call order as [`JwksCache`], across all providers.
#[derive(Debug)]
pub struct Registry {
    config: GatekeeperConfig,
    providers: Vec<Registered>,
    next_base: u64,
}

/// Tickets of one cache stay below this many; each cache gets its own range.
const TICKETS_PER_CACHE: u64 = 1 << 40;

impl Registry {
    /// An empty registry.
    pub fn new(config: GatekeeperConfig) -> Self {
        Self { config, providers: Vec::new(), next_base: 0 }
    }

    /// The configuration.
    pub fn config(&self) -> &GatekeeperConfig {
        &self.config
    }

    /// Registers (or replaces) a provider; its keys are fetched from `now` on.
    pub fn upsert(&mut self, entry: ProviderEntry, now: UnixTime) -> Result<()> {
        entry.validate(self.config.url_policy)?;
        // Same discovery URL: keep the cache (and its keys), update the entry.
        if let Some(r) = self.providers.iter_mut().find(|r| r.entry.issuer == entry.issuer)
            && r.entry.discovery_url == entry.discovery_url
        {
            r.entry = entry;
            return Ok(());
        }
        self.providers.retain(|r| r.entry.issuer != entry.issuer);
        let cache = JwksCache::new(
            &entry.issuer,
            &entry.discovery_url,
            self.config.url_policy,
            self.config.cache.clone(),
            now,
        )?
        .with_ticket_base(self.next_base);
        self.next_base += TICKETS_PER_CACHE;
        self.providers.push(Registered { entry, cache });
        Ok(())
    }

    /// Removes a provider and its cached keys. Returns false if no such provider. A fetch
    /// in flight for it is then answered with [`Error::UnexpectedResponse`].
    pub fn remove(&mut self, issuer: &str) -> bool {
        let before = self.providers.len();
        self.providers.retain(|r| r.entry.issuer != issuer);
        self.providers.len() != before
    }

    /// The registered providers.
    pub fn providers(&self) -> impl Iterator<Item = &ProviderEntry> {
        self.providers.iter().map(|r| &r.entry)
    }

    /// Flips the kill switch. Returns false if no such provider.
    pub fn set_enabled(&mut self, issuer: &str, enabled: bool) -> bool {
        self.providers
            .iter_mut()
            .find(|r| r.entry.issuer == issuer)
            .map(|r| r.entry.enabled = enabled)
            .is_some()
    }

    /// The entry of `issuer`.
    pub fn provider(&self, issuer: &str) -> Option<&ProviderEntry> {
        self.providers.iter().find(|r| r.entry.issuer == issuer).map(|r| &r.entry)
    }

    /// The cache of `issuer`.
    pub fn cache(&self, issuer: &str) -> Option<&JwksCache> {
        self.providers.iter().find(|r| r.entry.issuer == issuer).map(|r| &r.cache)
    }

    /// The next fetch any provider's cache needs.
    pub fn poll_fetch(&mut self, now: UnixTime) -> Option<FetchRequest> {
        self.providers.iter_mut().find_map(|r| r.cache.poll_fetch(now))
    }

    /// The earliest time `poll_fetch` should be called again.
    pub fn poll_timeout(&self) -> Option<UnixTime> {
        self.providers.iter().filter_map(|r| r.cache.poll_timeout()).min()
    }

    /// Reports a fetch outcome to the cache that asked for it.
    pub fn handle_fetch(&mut self, now: UnixTime, response: FetchResponse) -> Result<()> {
        let r = self
            .providers
            .iter_mut()
            .find(|r| r.cache.owns(response.ticket))
            .ok_or(Error::UnexpectedResponse)?;
        r.cache.handle_fetch(now, response)
    }

    /// Verifies `token` presented on a connection whose Noise static key has thumbprint
    /// `binding`. On [`Refusal::UnknownKid`] a refresh may have been scheduled: the server
    /// may drive `poll_fetch`/`handle_fetch` and try once more.
    pub fn verify(
        &mut self,
        token: &str,
        binding: &Thumbprint,
        now: UnixTime,
    ) -> Result<VerifiedIdentity> {
        self.verify_inner(token, binding, now).map_err(Error::TokenRefused)
    }

    fn verify_inner(
        &mut self,
        token: &str,
        binding: &Thumbprint,
        now: UnixTime,
    ) -> std::result::Result<VerifiedIdentity, Refusal> {
        let parsed = UnverifiedToken::parse(token)?;
        let resolved = self.resolve_inner(&parsed, now)?;
        let token =
            self.config.policy.verify(&parsed, &resolved.issuer, &resolved.key, binding, now)?;
        Ok(VerifiedIdentity { token, integrator_id: resolved.integrator_id })
    }

    /// The provider checks and key lookup of [`Registry::verify`], without the signature
    /// and claim checks: a server that shares the registry behind a lock can hold the lock
    /// only for this, then run [`TokenPolicy::verify`] (on a clone of
    /// `config().policy`) outside it.
    pub fn resolve(&mut self, token: &UnverifiedToken<'_>, now: UnixTime) -> Result<ResolvedKey> {
        self.resolve_inner(token, now).map_err(Error::TokenRefused)
    }

    fn resolve_inner(
        &mut self,
        parsed: &UnverifiedToken<'_>,
        now: UnixTime,
    ) -> std::result::Result<ResolvedKey, Refusal> {
        let issuer = parsed.issuer_hint()?;
        let r = self
            .providers
            .iter_mut()
            .find(|r| r.entry.issuer == issuer)
            .ok_or(Refusal::UnknownIssuer)?;
        if !r.entry.enabled {
            return Err(Refusal::ProviderDisabled);
        }
        if !r.entry.allowed_algs.contains(&parsed.alg()) {
            return Err(Refusal::AlgNotAllowed);
        }
        let key = match r.cache.lookup(now, parsed.kid()) {
            KeyLookup::Found(k) => k,
            KeyLookup::UnknownKid { .. } => return Err(Refusal::UnknownKid),
            KeyLookup::Unavailable => return Err(Refusal::KeysUnavailable),
        };
        Ok(ResolvedKey {
            key,
            issuer: r.entry.issuer.clone(),
            integrator_id: r.entry.integrator_id.clone(),
        })
    }

    /// The leeway in force (for callers that schedule re-checks at `exp`).
    pub fn leeway(&self) -> Duration {
        self.config.policy.leeway
    }
}

//! The gatekeeper's per-provider JWKS cache: a state machine the server drives.
//!
//! # Call order
//!
//! 1. [`JwksCache::poll_fetch`]`(now)`: when it returns a [`FetchRequest`], perform the GET
//!    (no redirects, at most [`FetchRequest::max_body`] bytes, a timeout) and report the
//!    outcome with [`JwksCache::handle_fetch`]`(now, response)`. At most one fetch is in
//!    flight per cache.
//! 2. [`JwksCache::poll_timeout`]: when to call `poll_fetch` again.
//! 3. [`JwksCache::lookup`]`(now, kid)` while verifying tokens. An unknown `kid` schedules an
//!    immediate refresh unless one happened within the cooldown; call `poll_fetch` after it.
//!
//! # States of the fetch machinery
//!
//! ```text
//!               poll_fetch, due,            ok: discovery stored
//!              no fresh discovery ┌───────────────┐ ─────────────────▶ Idle{due: now}
//!       ┌────────────────────────▶│ AwaitDiscovery│
//!       │                         └───────────────┘ ── failed ──▶ Backoff
//!   ┌───┴───┐ poll_fetch, due,    ┌───────────────┐ ── ok ──▶ Idle{due: now + clamp(max-age)}
//!   │ Idle  │────────────────────▶│   AwaitJwks   │
//!   │Backoff│ (fresh discovery)   └───────────────┘ ── failed ──▶ Backoff{retry_at}
//!   └───────┘                                          (discovery forgotten: refetched next)
//! ```
//!
//! Independently of the fetch state, keys are served from the last good JWKS until
//! `last success + max_stale`; after that lookups fail closed ([`KeyLookup::Unavailable`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::keys::{JwkProblem, VerificationKey};
use crate::strict::parse_object;
use crate::time::UnixTime;
use crate::url_policy::UrlPolicy;
use crate::{Error, FetchProblem, Result};

/// Bounds of the cache. Defaults in [`CacheConfig::default`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Refresh interval when the response has no usable `Cache-Control: max-age` (1 h).
    pub default_refresh: Duration,
    /// Smallest refresh interval, whatever `max-age` says (5 min).
    pub min_refresh: Duration,
    /// Largest refresh interval, whatever `max-age` says (24 h).
    pub max_refresh: Duration,
    /// At most one unknown-`kid` refresh per this interval (60 s).
    pub unknown_kid_cooldown: Duration,
    /// First retry delay after a failed fetch, doubled per failure (10 s).
    pub retry_base: Duration,
    /// Largest retry delay (5 min).
    pub retry_max: Duration,
    /// Keys are served up to this long after the last successful fetch, then the cache
    /// fails closed (24 h).
    pub max_stale: Duration,
    /// Largest document accepted (64 KiB).
    pub max_body: usize,
    /// Most keys kept from one JWKS (16).
    pub max_keys: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            default_refresh: Duration::from_secs(3600),
            min_refresh: Duration::from_secs(300),
            max_refresh: Duration::from_secs(86_400),
            unknown_kid_cooldown: Duration::from_secs(60),
            retry_base: Duration::from_secs(10),
            retry_max: Duration::from_secs(300),
            max_stale: Duration::from_secs(86_400),
            max_body: 64 * 1024,
            max_keys: 16,
        }
    }
}

/// Identifies one fetch; echo it in the [`FetchResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(pub u64);

/// What is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    /// The OpenID discovery document.
    Discovery,
    /// The JWKS named by the discovery document's `jwks_uri`.
    Jwks,
}

/// A GET the server must perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Echo this back.
    pub ticket: Ticket,
    /// The provider (its registered issuer).
    pub issuer: String,
    /// Which document.
    pub kind: FetchKind,
    /// The URL, already checked against the [`UrlPolicy`].
    pub url: String,
    /// Stop reading after this many bytes and report [`FetchFailure::TooLarge`].
    pub max_body: usize,
}

/// An HTTP response as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// The `Cache-Control` header, if any.
    pub cache_control: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// A fetch that produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// Connection, TLS or DNS failure, or an address refused by the URL policy.
    Network,
    /// No complete response in time.
    Timeout,
    /// The body exceeded `max_body`.
    TooLarge,
}

/// The outcome of a [`FetchRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    /// From the request.
    pub ticket: Ticket,
    /// The response or why there is none.
    pub result: std::result::Result<HttpResponse, FetchFailure>,
}

/// The result of [`JwksCache::lookup`].
#[derive(Debug, Clone)]
pub enum KeyLookup {
    /// The key.
    Found(Arc<VerificationKey>),
    /// No such `kid`. `refresh_scheduled` says whether this lookup scheduled a refresh
    /// (call `poll_fetch`, then retry the token once the fetch was handled).
    UnknownKid { refresh_scheduled: bool },
    /// No keys, or keys older than `max_stale`: fail closed.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle { due: UnixTime },
    AwaitDiscovery { ticket: Ticket },
    AwaitJwks { ticket: Ticket },
    Backoff { retry_at: UnixTime },
}

#[derive(Debug, Clone)]
struct Discovered {
    jwks_uri: String,
    expires_at: UnixTime,
}

#[derive(Debug, Clone)]
struct KeySet {
    keys: Vec<Arc<VerificationKey>>,
    fetched_at: UnixTime,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Fetch requests handed out.
    pub fetches: u64,
    /// Fetches that failed (no response, bad status or bad document).
    pub failures: u64,
    /// Refreshes scheduled by unknown `kid`s.
    pub forced_refreshes: u64,
}

/// The JWKS cache of one provider. See the module documentation for the call order.
#[derive(Debug)]
pub struct JwksCache {
    issuer: String,
    discovery_url: String,
    policy: UrlPolicy,
    config: CacheConfig,
    phase: Phase,
    discovered: Option<Discovered>,
    keys: Option<KeySet>,
    last_forced: Option<UnixTime>,
    consecutive_failures: u32,
    next_ticket: u64,
    stats: CacheStats,
}

impl JwksCache {
    /// A cache for the provider `issuer` whose discovery document is at `discovery_url`.
    /// The first fetch is due at `now`.
    pub fn new(
        issuer: &str,
        discovery_url: &str,
        policy: UrlPolicy,
        config: CacheConfig,
        now: UnixTime,
    ) -> Result<Self> {
        policy.check(discovery_url).map_err(Error::InsecureUrl)?;
        if config.min_refresh > config.max_refresh || config.retry_base > config.retry_max {
            return Err(Error::InvalidConfig("cache bounds: minimum above maximum"));
        }
        if config.max_keys == 0 || config.max_body == 0 {
            return Err(Error::InvalidConfig("cache bounds: zero keys or zero body"));
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            discovery_url: discovery_url.to_owned(),
            policy,
            config,
            phase: Phase::Idle { due: now },
            discovered: None,
            keys: None,
            last_forced: None,
            consecutive_failures: 0,
            // Tickets of different caches differ in their upper bits (see `with_ticket_base`).
            next_ticket: 0,
            stats: CacheStats::default(),
        })
    }

    /// Makes tickets start at `base` (a registry gives each cache its own range).
    pub(crate) fn with_ticket_base(mut self, base: u64) -> Self {
        self.next_ticket = base;
        self
    }

    /// The registered issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// The next fetch to perform, if one is due and none is in flight.
    pub fn poll_fetch(&mut self, now: UnixTime) -> Option<FetchRequest> {
        let due = match self.phase {
            Phase::Idle { due } => due,
            Phase::Backoff { retry_at } => retry_at,
            Phase::AwaitDiscovery { .. } | Phase::AwaitJwks { .. } => return None,
        };
        if now < due {
            return None;
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.stats.fetches += 1;
        let (kind, url) = match &self.discovered {
            Some(d) if d.expires_at > now => {
                self.phase = Phase::AwaitJwks { ticket };
                (FetchKind::Jwks, d.jwks_uri.clone())
            }
            _ => {
                self.phase = Phase::AwaitDiscovery { ticket };
                (FetchKind::Discovery, self.discovery_url.clone())
            }
        };
        Some(FetchRequest {
            ticket,
            issuer: self.issuer.clone(),
            kind,
            url,
            max_body: self.config.max_body,
        })
    }

    /// When `poll_fetch` should be called next (`None` while a fetch is in flight).
    pub fn poll_timeout(&self) -> Option<UnixTime> {
        match self.phase {
            Phase::Idle { due } => Some(due),
            Phase::Backoff { retry_at } => Some(retry_at),
            Phase::AwaitDiscovery { .. } | Phase::AwaitJwks { .. } => None,
        }
    }

    /// Whether `ticket` is the fetch in flight.
    pub fn owns(&self, ticket: Ticket) -> bool {
        matches!(self.phase, Phase::AwaitDiscovery { ticket: t } | Phase::AwaitJwks { ticket: t } if t == ticket)
    }

    /// Reports the outcome of the fetch in flight. A document that fails validation counts
    /// as a failed fetch (the previous keys are kept); the error says why, for logging.
    pub fn handle_fetch(&mut self, now: UnixTime, response: FetchResponse) -> Result<()> {
        let kind = match self.phase {
            Phase::AwaitDiscovery { ticket } if ticket == response.ticket => FetchKind::Discovery,
            Phase::AwaitJwks { ticket } if ticket == response.ticket => FetchKind::Jwks,
            _ => return Err(Error::UnexpectedResponse),
        };
        let outcome = match response.result {
            Err(f) => Err(FetchProblem::Failed(f)),
            Ok(r) if r.status != 200 => Err(FetchProblem::Status(r.status)),
            Ok(r) if r.body.len() > self.config.max_body => {
                Err(FetchProblem::Failed(FetchFailure::TooLarge))
            }
            Ok(r) => {
                let interval = self.refresh_interval(r.cache_control.as_deref());
                match kind {
                    FetchKind::Discovery => self.accept_discovery(&r.body, now, interval),
                    FetchKind::Jwks => self.accept_jwks(&r.body, now, interval),
                }
            }
        };
        match outcome {
            Ok(()) => {
                self.consecutive_failures = 0;
                Ok(())
            }
            Err(problem) => {
                self.stats.failures += 1;
                // The JWKS may have moved: ask the discovery document again next time.
                self.discovered = None;
                let shift = self.consecutive_failures.min(16);
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let delay =
                    self.config.retry_base.saturating_mul(1 << shift).min(self.config.retry_max);
                self.phase = Phase::Backoff { retry_at: now.saturating_add(delay) };
                Err(Error::BadProviderDocument(problem))
            }
        }
    }

    fn accept_discovery(
        &mut self,
        body: &[u8],
        now: UnixTime,
        interval: Duration,
    ) -> std::result::Result<(), FetchProblem> {
        let doc = parse_object(body).map_err(|_| FetchProblem::BadJson)?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(FetchProblem::IssuerMismatch);
        }
        let jwks_uri =
            doc.get("jwks_uri").and_then(Value::as_str).ok_or(FetchProblem::MissingField)?;
        self.policy.check(jwks_uri).map_err(FetchProblem::InsecureUrl)?;
        self.discovered = Some(Discovered {
            jwks_uri: jwks_uri.to_owned(),
            expires_at: now.saturating_add(interval),
        });
        self.phase = Phase::Idle { due: now };
        Ok(())
    }

    fn accept_jwks(
        &mut self,
        body: &[u8],
        now: UnixTime,
        interval: Duration,
    ) -> std::result::Result<(), FetchProblem> {
        let doc = parse_object(body).map_err(|_| FetchProblem::BadJson)?;
        let entries =
            doc.get("keys").and_then(Value::as_array).ok_or(FetchProblem::MissingField)?;
        let mut keys: Vec<Arc<VerificationKey>> = Vec::new();
        for entry in entries {
            match VerificationKey::from_jwk(entry) {
                Ok(k) => {
                    if keys.iter().any(|o| o.kid() == k.kid()) {
                        return Err(FetchProblem::DuplicateKid);
                    }
                    if keys.len() == self.config.max_keys {
                        return Err(FetchProblem::TooManyKeys);
                    }
                    keys.push(Arc::new(k));
                }
                Err(JwkProblem::Foreign) => {}
                Err(JwkProblem::Invalid) => return Err(FetchProblem::InvalidKey),
                Err(JwkProblem::PrivateMaterial) => return Err(FetchProblem::PrivateKeyPublished),
            }
        }
        if keys.is_empty() {
            return Err(FetchProblem::NoUsableKeys);
        }
        self.keys = Some(KeySet { keys, fetched_at: now });
        self.phase = Phase::Idle { due: now.saturating_add(interval) };
        Ok(())
    }

    /// `Cache-Control: max-age` clamped into `[min_refresh, max_refresh]`; `no-cache`,
    /// `no-store` and `max-age=0` mean the minimum.
    fn refresh_interval(&self, cache_control: Option<&str>) -> Duration {
        let c = &self.config;
        let Some(cc) = cache_control else {
            return c.default_refresh.clamp(c.min_refresh, c.max_refresh);
        };
        let mut max_age = None;
        for directive in cc.split(',') {
            let d = directive.trim();
            let (name, value) =
                d.split_once('=').map_or((d, None), |(n, v)| (n.trim(), Some(v.trim())));
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
                return c.min_refresh;
            }
            if name.eq_ignore_ascii_case("max-age")
                && let Some(v) = value
            {
                let v = v.trim_matches('"');
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    // Over-long digit strings saturate (RFC 9111 §1.2.2).
                    max_age = Some(v.parse::<u64>().unwrap_or(u64::MAX));
                }
            }
        }
        max_age.map_or(c.default_refresh, Duration::from_secs).clamp(c.min_refresh, c.max_refresh)
    }

    /// The key `kid`, if the cache holds usable keys. See [`KeyLookup`].
    pub fn lookup(&mut self, now: UnixTime, kid: &str) -> KeyLookup {
        let Some(set) = &self.keys else { return KeyLookup::Unavailable };
        if now >= set.fetched_at.saturating_add(self.config.max_stale) {
            return KeyLookup::Unavailable;
        }
        if let Some(k) = set.keys.iter().find(|k| k.kid() == kid) {
            return KeyLookup::Found(Arc::clone(k));
        }
        let cooled = self
            .last_forced
            .is_none_or(|t| now >= t.saturating_add(self.config.unknown_kid_cooldown));
        let refresh_scheduled = match self.phase {
            Phase::Idle { due } if cooled => {
                if due > now {
                    self.phase = Phase::Idle { due: now };
                }
                self.last_forced = Some(now);
                self.stats.forced_refreshes += 1;
                true
            }
            _ => false,
        };
        KeyLookup::UnknownKid { refresh_scheduled }
    }

    /// Whether keys are held that are not older than `max_stale`.
    pub fn has_usable_keys(&self, now: UnixTime) -> bool {
        self.keys.as_ref().is_some_and(|s| now < s.fetched_at.saturating_add(self.config.max_stale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    const T: UnixTime = UnixTime::from_secs(1_000_000);
    const ISS: &str = "https://id.example.org";

    fn cache() -> JwksCache {
        let url = "https://id.example.org/.well-known/openid-configuration";
        JwksCache::new(ISS, url, UrlPolicy::HttpsOnly, CacheConfig::default(), T).expect("cache")
    }

    fn ok(body: String, cc: Option<&str>) -> std::result::Result<HttpResponse, FetchFailure> {
        Ok(HttpResponse {
            status: 200,
            cache_control: cc.map(str::to_owned),
            body: body.into_bytes(),
        })
    }

    fn discovery() -> String {
        format!(r#"{{"issuer":"{ISS}","jwks_uri":"https://id.example.org/jwks.json"}}"#)
    }

    fn jwks() -> String {
        let k = SigningKey::ed25519_from_seed(&[1; 32]);
        serde_json::json!({"keys": [k.verification_key().to_jwk()]}).to_string()
    }

    fn answer(
        c: &mut JwksCache,
        now: UnixTime,
        r: std::result::Result<HttpResponse, FetchFailure>,
    ) {
        let ticket = match c.phase {
            Phase::AwaitDiscovery { ticket } | Phase::AwaitJwks { ticket } => ticket,
            _ => panic!("nothing in flight"),
        };
        let _ = c.handle_fetch(now, FetchResponse { ticket, result: r });
    }

    /// Every transition of the fetch state machine, from the diagram in the module docs.
    #[test]
    fn transition_table() {
        let s = UnixTime::saturating_add;
        let secs = Duration::from_secs;
        // Idle, not yet due: nothing.
        let mut c = cache();
        assert!(c.poll_fetch(s(T, secs(0)).saturating_sub(secs(1))).is_none());
        assert_eq!(c.phase, Phase::Idle { due: T });
        // Idle, due, no discovery -> AwaitDiscovery; polling again while in flight: nothing.
        let req = c.poll_fetch(T).expect("due");
        assert_eq!(
            (req.kind, c.phase),
            (FetchKind::Discovery, Phase::AwaitDiscovery { ticket: req.ticket })
        );
        assert!(c.poll_fetch(T).is_none());
        // A stray ticket changes nothing.
        let stray = FetchResponse { ticket: Ticket(99), result: Err(FetchFailure::Network) };
        assert!(matches!(c.handle_fetch(T, stray), Err(Error::UnexpectedResponse)));
        assert_eq!(c.phase, Phase::AwaitDiscovery { ticket: req.ticket });
        // AwaitDiscovery + ok -> Idle{due: now}.
        answer(&mut c, T, ok(discovery(), None));
        assert_eq!(c.phase, Phase::Idle { due: T });
        // Idle, due, fresh discovery -> AwaitJwks.
        let req = c.poll_fetch(T).expect("due");
        assert_eq!((req.kind, c.phase), (FetchKind::Jwks, Phase::AwaitJwks { ticket: req.ticket }));
        assert!(c.poll_fetch(T).is_none());
        // AwaitJwks + ok -> Idle{due: now + clamp(max-age)}.
        answer(&mut c, T, ok(jwks(), Some("max-age=600")));
        assert_eq!(c.phase, Phase::Idle { due: s(T, secs(600)) });
        // Idle + unknown kid (cooled down) -> Idle{due: now}; again within the cooldown: no change.
        let t1 = s(T, secs(10));
        assert!(matches!(c.lookup(t1, "nope"), KeyLookup::UnknownKid { refresh_scheduled: true }));
        assert_eq!(c.phase, Phase::Idle { due: t1 });
        // AwaitJwks + failure -> Backoff{now + 10 s}, discovery forgotten.
        c.poll_fetch(t1).expect("forced refresh");
        answer(&mut c, t1, Err(FetchFailure::Timeout));
        assert_eq!(c.phase, Phase::Backoff { retry_at: s(t1, secs(10)) });
        assert!(c.discovered.is_none());
        // Backoff + unknown kid: no bypass of the backoff.
        assert!(matches!(
            c.lookup(s(t1, secs(1)), "nope"),
            KeyLookup::UnknownKid { refresh_scheduled: false }
        ));
        // Backoff, not yet: nothing; at retry_at -> AwaitDiscovery (discovery was forgotten).
        assert!(c.poll_fetch(s(t1, secs(9))).is_none());
        let req = c.poll_fetch(s(t1, secs(10))).expect("retry");
        assert_eq!(req.kind, FetchKind::Discovery);
        // AwaitDiscovery + failure -> Backoff with the doubled delay.
        let t2 = s(t1, secs(10));
        answer(&mut c, t2, ok(String::new(), None));
        assert_eq!(c.phase, Phase::Backoff { retry_at: s(t2, secs(20)) });
        // The keys from the successful fetch are still served throughout.
        assert!(matches!(
            c.lookup(t2, SigningKey::ed25519_from_seed(&[1; 32]).kid()),
            KeyLookup::Found(_)
        ));
    }
}

//! Identity proofs and enlistment for interop messaging, sans-IO.
//!
//! A third-party provider issues a short-lived JWT that proves its user owns their
//! user-visible identifier and binds it to the device's Noise static key (`cnf.jkt`); the
//! gatekeeper verifies it against keys it fetched from the provider (OpenID discovery +
//! JWKS), and the user then enlists inside the authenticated Noise session.
//!
//! ```text
//!  provider side                                   gatekeeper side
//!  ─────────────                                   ───────────────
//!  KeyRing ──jwks()──▶ JSON ─ ─ (server: HTTPS) ─ ─▶ Registry::handle_fetch ─▶ JwksCache
//!  DiscoveryDocument ──▶ JSON ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─▶        ▲ poll_fetch (what/when)
//!  TokenIssuer::issue ──▶ JWT ─▶ client ─▶ Noise handshake ─▶ Registry::verify(token,
//!                                                  Thumbprint::of_x25519(remote static), now)
//!                                                     └─▶ VerifiedIdentity (issuer, sub)
//!  client ── iq (EnlistRequest::to_node) ─▶ Noise session ─▶ EnlistRequest::from_node ─▶ server
//! ```
//!
//! ```
//! use std::time::Duration;
//! use interop_enlist::*;
//! use interop_enlist::cache::{FetchKind, FetchResponse, HttpResponse};
//!
//! let now = UnixTime::from_secs(1_800_000_000);
//! let mut rng = rand::rng();
//! // Provider: keys, discovery, tokens.
//! let issuer = "https://id.example.org";
//! let ring = KeyRing::new(SigningKey::generate_ed25519(&mut rng));
//! let discovery = DiscoveryDocument::for_issuer(issuer, vec![Alg::EdDSA]);
//! let device = Thumbprint::of_x25519(&[9u8; 32]); // the device's Noise static public key
//! let jwt = TokenIssuer::new(issuer, "gatekeeper", UrlPolicy::HttpsOnly)?
//!     .issue(&ring, "alice@id.example.org", &device, now, &mut rng)?;
//!
//! // Gatekeeper: registry, fetches driven by the server, verification.
//! let mut registry = Registry::new(GatekeeperConfig::new("gatekeeper"));
//! let entry = ProviderEntry::new(issuer, "example", "https://id.example.org/push",
//!     "https://media.example.org/");
//! registry.upsert(entry, now)?;
//! while let Some(req) = registry.poll_fetch(now) {
//!     let body = match req.kind {
//!         FetchKind::Discovery => discovery.to_json(),
//!         FetchKind::Jwks => ring.jwks(now),
//!     };
//!     let response = HttpResponse { status: 200, cache_control: None, body: body.to_string().into_bytes() };
//!     registry.handle_fetch(now, FetchResponse { ticket: req.ticket, result: Ok(response) })?;
//! }
//! let who = registry.verify(&jwt, &device, now + Duration::from_secs(5))?;
//! assert_eq!(who.key(), (issuer, "alice@id.example.org"));
//! # Ok::<(), interop_enlist::Error>(())
//! ```
//!
//! Verification order and refusal codes follow `docs/PROTOCOL.md` (identity section): strict
//! shape and JSON checks (duplicate member names, depth, size) come before any cryptography;
//! `jsonwebtoken` provides signing and ES256/RS256 signature checks, while every claim check
//! is done here with `now` passed in (jsonwebtoken's `Validation` reads the system clock).
//! Keys come only from the registered provider's JWKS, never from a token's `jku`/`x5u`/`jwk`.
//!
//! # What this crate does not do
//! - No HTTP, no sockets, no clock: the server performs the fetches [`Registry::poll_fetch`]
//!   asks for, serves the documents, and passes `now` in.
//! - No replay cache for `jti`: a token is bound to a device key whose possession the Noise
//!   handshake proves, so it may be presented on any number of connections until it expires.
//! - No storage and no iq handlers: [`enlist`] has the stanzas, validation and error codes;
//!   accounts, devices and prekeys live in interop-server.
//! - No RSA key generation (import PKCS#8 instead) and no token encryption (JWE).

#![forbid(unsafe_code)]

use std::ops::Add;
use std::time::Duration;

pub mod cache;
pub mod enlist;
mod keys;
mod provider;
mod registry;
mod strict;
mod time;
mod token;
mod url_policy;

pub use cache::{CacheConfig, JwksCache, KeyLookup};
pub use keys::{Alg, SigningKey, Thumbprint, VerificationKey};
pub use provider::{DiscoveryDocument, KeyRing, TokenIssuer, sign_compact, sign_raw};
pub use registry::{
    GatekeeperConfig, ProviderEntry, Quotas, Registry, ResolvedKey, VerifiedIdentity,
    valid_integrator_id,
};
pub use time::UnixTime;
pub use token::{
    Claim, MAX_SUBJECT_LEN, MAX_TOKEN_LEN, Refusal, TokenPolicy, UnverifiedToken, VerifiedToken,
    valid_subject,
};
pub use url_policy::{UrlPolicy, UrlProblem, is_public_ip};

impl Add<Duration> for UnixTime {
    type Output = UnixTime;

    fn add(self, d: Duration) -> UnixTime {
        self.saturating_add(d)
    }
}

/// Why a fetched provider document was refused (the previous keys stay in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchProblem {
    /// No response.
    Failed(cache::FetchFailure),
    /// A status other than 200.
    Status(u16),
    /// Not a JSON object (or duplicate member names).
    BadJson,
    /// `issuer` differs from the registered issuer.
    IssuerMismatch,
    /// `jwks_uri` or `keys` missing.
    MissingField,
    /// `jwks_uri` refused by the URL policy.
    InsecureUrl(UrlProblem),
    /// A key of the profile's types is malformed or weak.
    InvalidKey,
    /// A key carries private members.
    PrivateKeyPublished,
    /// Two usable keys share a `kid`.
    DuplicateKid,
    /// More usable keys than the cache keeps.
    TooManyKeys,
    /// No usable key at all.
    NoUsableKeys,
}

/// Errors of this crate, sorted by who is to blame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // -- the peer sent bad input --
    /// A token was refused; the reason is stable and safe to log.
    #[error("token refused: {0}")]
    TokenRefused(Refusal),
    /// An enlistment stanza was malformed or invalid.
    #[error("invalid enlistment stanza: {0}")]
    BadRequest(enlist::ErrorCode),
    /// A provider served a document that was refused.
    #[error("provider document refused: {0:?}")]
    BadProviderDocument(FetchProblem),

    // -- caller misuse --
    /// A configured URL violates the URL policy.
    #[error("URL refused: {0:?}")]
    InsecureUrl(UrlProblem),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// Key material that cannot be used.
    #[error("invalid key material")]
    InvalidKey,
    /// A fetch response whose ticket is not in flight.
    #[error("fetch response for no fetch in flight")]
    UnexpectedResponse,

    // -- a dependency failed --
    /// Signing or serialisation failed.
    #[error("cryptography failed")]
    Crypto(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// The refusal reason, if this is a refused token.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Error::TokenRefused(r) => Some(*r),
            _ => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

//! The provider side: issuing tokens, publishing keys (JWKS with rotation) and the OpenID
//! discovery document.

use std::time::Duration;

use rand_core::CryptoRng;
use serde_json::{Value, json};

use crate::keys::{Alg, SigningKey, Thumbprint, VerificationKey};
use crate::strict::b64url_encode;
use crate::time::UnixTime;
use crate::token::valid_subject;
use crate::url_policy::UrlPolicy;
use crate::{Error, Result};

/// A provider's signing keys across rotations.
///
/// ```text
///   stage(k) ──▶ next (published, not signing)
///   promote(now, overlap) ──▶ next becomes current; old current is published (retired)
///                             until now + overlap, then dropped by `prune`
///   rotate(k, now, overlap) = stage(k) + promote(now, overlap)
/// ```
///
/// Publish a staged key for at least the gatekeepers' JWKS refresh interval before promoting
/// it, and keep a retired key for at least the token lifetime plus leeway (the `overlap`), so
/// every token issued stays verifiable until it expires. Gatekeepers also refresh on an
/// unknown `kid`, so an immediate `rotate` works too, at the cost of one refetch.
#[derive(Debug)]
pub struct KeyRing {
    current: SigningKey,
    next: Option<SigningKey>,
    retired: Vec<(VerificationKey, UnixTime)>,
}

impl KeyRing {
    /// A ring signing with `current`.
    pub fn new(current: SigningKey) -> Self {
        Self { current, next: None, retired: Vec::new() }
    }

    /// The key tokens are signed with.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// Publishes `next` without signing with it yet (replacing an earlier staged key).
    pub fn stage(&mut self, next: SigningKey) {
        self.next = Some(next);
    }

    /// Signs with the staged key from now on; the old key stays published until
    /// `now + overlap`. Returns false (and changes nothing) when no key is staged.
    pub fn promote(&mut self, now: UnixTime, overlap: Duration) -> bool {
        let Some(next) = self.next.take() else { return false };
        let old = std::mem::replace(&mut self.current, next);
        self.retired.push((old.verification_key().clone(), now.saturating_add(overlap)));
        true
    }

    /// `stage(next)` then `promote(now, overlap)`.
    pub fn rotate(&mut self, next: SigningKey, now: UnixTime, overlap: Duration) {
        self.stage(next);
        self.promote(now, overlap);
    }

    /// Drops retired keys whose overlap has ended.
    pub fn prune(&mut self, now: UnixTime) {
        self.retired.retain(|(_, until)| *until > now);
    }

    /// The JWKS document (RFC 7517 §5): current, staged and still-overlapping retired keys.
    pub fn jwks(&self, now: UnixTime) -> Value {
        let mut keys = vec![self.current.verification_key().to_jwk()];
        if let Some(n) = &self.next {
            keys.push(n.verification_key().to_jwk());
        }
        keys.extend(self.retired.iter().filter(|(_, until)| *until > now).map(|(k, _)| k.to_jwk()));
        json!({ "keys": keys })
    }
}

/// Issues identity tokens for a provider's users.
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    issuer: String,
    audience: String,
    lifetime: Duration,
}

impl TokenIssuer {
    /// An issuer `issuer` (the provider's https issuer URL) for gatekeeper `audience`,
    /// issuing tokens valid for 10 minutes.
    pub fn new(issuer: &str, audience: &str, policy: UrlPolicy) -> Result<Self> {
        policy.check(issuer).map_err(|_| Error::InvalidConfig("issuer must be an https URL"))?;
        if audience.is_empty() {
            return Err(Error::InvalidConfig("audience must not be empty"));
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            lifetime: Duration::from_secs(600),
        })
    }

    /// Changes the lifetime (1 s to 1 h: gatekeepers refuse longer ones by default).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Result<Self> {
        if !(1..=3600).contains(&lifetime.as_secs()) {
            return Err(Error::InvalidConfig("token lifetime must be 1 s to 1 h"));
        }
        self.lifetime = lifetime;
        Ok(self)
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A token for `subject` bound to the device whose Noise static key has thumbprint
    /// `device` ([`Thumbprint::of_x25519`]), signed with the ring's current key.
    pub fn issue(
        &self,
        ring: &KeyRing,
        subject: &str,
        device: &Thumbprint,
        now: UnixTime,
        rng: &mut impl CryptoRng,
    ) -> Result<String> {
        if !valid_subject(subject) {
            return Err(Error::InvalidConfig("subject is not a well-formed identifier"));
        }
        let mut jti = [0u8; 16];
        rng.fill_bytes(&mut jti);
        let iat = now.as_secs();
        let claims = json!({
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience,
            "iat": iat,
            "nbf": iat,
            "exp": iat + self.lifetime.as_secs(),
            "jti": b64url_encode(&jti),
            "cnf": { "jkt": device.as_str() },
        });
        let key = ring.current();
        sign_compact(
            key,
            &json!({"alg": key.alg().as_str(), "typ": "JWT", "kid": key.kid()}),
            &claims,
        )
    }
}

/// Serialises and signs a compact JWS with `key`. The header's `alg` must be the key's.
pub fn sign_compact(key: &SigningKey, header: &Value, claims: &Value) -> Result<String> {
    let h = serde_json::to_vec(header).map_err(|e| Error::Crypto(Box::new(e)))?;
    let c = serde_json::to_vec(claims).map_err(|e| Error::Crypto(Box::new(e)))?;
    sign_raw(key, &h, &c)
}

/// Signs arbitrary header and claims bytes (tests use it to build hostile tokens).
pub fn sign_raw(key: &SigningKey, header_json: &[u8], claims_json: &[u8]) -> Result<String> {
    let input = format!("{}.{}", b64url_encode(header_json), b64url_encode(claims_json));
    let sig = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{sig}"))
}

/// The OpenID Provider Metadata a provider serves at
/// `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §3).
#[derive(Debug, Clone)]
pub struct DiscoveryDocument {
    /// `issuer`: exactly the `iss` of the tokens.
    pub issuer: String,
    /// `jwks_uri`: where the JWKS is served (https).
    pub jwks_uri: String,
    /// `authorization_endpoint`: where users log in (required by the specification).
    pub authorization_endpoint: String,
    /// `id_token_signing_alg_values_supported`.
    pub algs: Vec<Alg>,
}

impl DiscoveryDocument {
    /// The conventional document for `issuer`: `jwks_uri` = `<issuer>/jwks.json`,
    /// `authorization_endpoint` = `<issuer>/authorize`.
    pub fn for_issuer(issuer: &str, algs: Vec<Alg>) -> Self {
        let base = issuer.trim_end_matches('/');
        Self {
            issuer: issuer.to_owned(),
            jwks_uri: format!("{base}/jwks.json"),
            authorization_endpoint: format!("{base}/authorize"),
            algs,
        }
    }

    /// The JSON document.
    pub fn to_json(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "authorization_endpoint": self.authorization_endpoint,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported":
                self.algs.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "claims_supported": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "cnf"],
        })
    }
}

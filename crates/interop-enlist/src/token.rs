//! The token profile: parsing untrusted compact JWS, and the claim checks of the gatekeeper.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::keys::{Alg, Thumbprint, VerificationKey, valid_kid};
use crate::strict::{JsonProblem, b64url_decode, parse_object};
use crate::time::UnixTime;

/// Largest token accepted, in bytes. Checked before anything else is decoded.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest `sub` accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;

/// A registered claim name, for [`Refusal::MissingClaim`] and [`Refusal::InvalidClaim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Claim {
    Iss,
    Sub,
    Aud,
    Exp,
    Nbf,
    Iat,
    Jti,
    Cnf,
}

impl Claim {
    /// The JSON member name.
    pub fn as_str(self) -> &'static str {
        match self {
            Claim::Iss => "iss",
            Claim::Sub => "sub",
            Claim::Aud => "aud",
            Claim::Exp => "exp",
            Claim::Nbf => "nbf",
            Claim::Iat => "iat",
            Claim::Jti => "jti",
            Claim::Cnf => "cnf",
        }
    }
}

/// Exactly why a token was refused. [`Refusal::as_str`] is a stable code for metrics and logs;
/// it never contains any part of the token.
///
/// The checks run in the order of the table in the protocol (section "Verification by the
/// gatekeeper"), which mostly follows the order of the variants; the first failing one is
/// reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    // -- shape (before any cryptography) --
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLarge,
    /// Not three non-empty dot-separated parts.
    Malformed,
    /// A part is not unpadded base64url.
    BadBase64,
    /// The header or the claims are not a JSON object.
    BadJson,
    /// The header or the claims repeat a member name (at any depth).
    DuplicateKey,
    // -- header --
    /// `alg` is `none`.
    AlgNone,
    /// `alg` is an HMAC algorithm (a public key must never be used as an HMAC secret).
    AlgSymmetric,
    /// `alg` is missing or not an algorithm of the profile.
    AlgUnsupported,
    /// The header carries `crit`: no extension is understood.
    CriticalHeader,
    /// `typ` is present and not `JWT`.
    BadType,
    /// `kid` is missing or malformed.
    MissingKid,
    // -- provider --
    /// `iss` names no registered provider.
    UnknownIssuer,
    /// The provider is disabled (kill switch).
    ProviderDisabled,
    /// `alg` is not on the provider's allow-list.
    AlgNotAllowed,
    // -- keys --
    /// The provider's keys are unavailable: never fetched, or stale beyond the maximum age.
    KeysUnavailable,
    /// No key with this `kid` in the provider's JWKS (a refresh may have been scheduled).
    UnknownKid,
    /// The key with this `kid` is for another algorithm.
    KeyAlgMismatch,
    /// The signature does not verify.
    BadSignature,
    // -- claims (after the signature) --
    /// A required claim is absent.
    MissingClaim(Claim),
    /// A claim has the wrong type or form.
    InvalidClaim(Claim),
    /// `iss` is not the registered issuer of the key's provider.
    WrongIssuer,
    /// `aud` does not name this gatekeeper.
    WrongAudience,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    IssuedInFuture,
    /// `exp - iat` exceeds the maximum lifetime, or `exp <= iat`.
    LifetimeTooLong,
    /// `sub` is not a well-formed user-visible identifier.
    BadSubject,
    /// `cnf.jkt` is not the thumbprint of the Noise static key of this connection.
    KeyBindingMismatch,
}

impl Refusal {
    /// A stable code (`snake_case`), safe to log and to use as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::Malformed => "malformed",
            Refusal::BadBase64 => "bad_base64",
            Refusal::BadJson => "bad_json",
            Refusal::DuplicateKey => "duplicate_key",
            Refusal::AlgNone => "alg_none",
            Refusal::AlgSymmetric => "alg_symmetric",
            Refusal::AlgUnsupported => "alg_unsupported",
            Refusal::CriticalHeader => "critical_header",
            Refusal::BadType => "bad_type",
            Refusal::MissingKid => "missing_kid",
            Refusal::UnknownIssuer => "unknown_issuer",
            Refusal::ProviderDisabled => "provider_disabled",
            Refusal::AlgNotAllowed => "alg_not_allowed",
            Refusal::KeysUnavailable => "keys_unavailable",
            Refusal::UnknownKid => "unknown_kid",
            Refusal::KeyAlgMismatch => "key_alg_mismatch",
            Refusal::BadSignature => "bad_signature",
            Refusal::MissingClaim(c) => match c {
                Claim::Iss => "missing_iss",
                Claim::Sub => "missing_sub",
                Claim::Aud => "missing_aud",
                Claim::Exp => "missing_exp",
                Claim::Nbf => "missing_nbf",
                Claim::Iat => "missing_iat",
                Claim::Jti => "missing_jti",
                Claim::Cnf => "missing_cnf",
            },
            Refusal::InvalidClaim(c) => match c {
                Claim::Iss => "invalid_iss",
                Claim::Sub => "invalid_sub",
                Claim::Aud => "invalid_aud",
                Claim::Exp => "invalid_exp",
                Claim::Nbf => "invalid_nbf",
                Claim::Iat => "invalid_iat",
                Claim::Jti => "invalid_jti",
                Claim::Cnf => "invalid_cnf",
            },
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::IssuedInFuture => "issued_in_future",
            Refusal::LifetimeTooLong => "lifetime_too_long",
            Refusal::BadSubject => "bad_subject",
            Refusal::KeyBindingMismatch => "key_binding_mismatch",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token whose shape and header passed the checks; nothing in it is trusted yet.
///
/// Produced by [`UnverifiedToken::parse`]; the gatekeeper reads [`issuer_hint`]
/// (`iss`, unauthenticated) to pick the provider, then calls [`TokenPolicy::verify`].
///
/// [`issuer_hint`]: UnverifiedToken::issuer_hint
pub struct UnverifiedToken<'t> {
    signing_input: &'t str,
    signature: &'t str,
    alg: Alg,
    kid: String,
    claims: Map<String, Value>,
}

impl fmt::Debug for UnverifiedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnverifiedToken").field("alg", &self.alg).finish_non_exhaustive()
    }
}

fn json_refusal(p: JsonProblem) -> Refusal {
    match p {
        JsonProblem::DuplicateKey => Refusal::DuplicateKey,
        JsonProblem::Syntax | JsonProblem::TooDeep => Refusal::BadJson,
    }
}

impl<'t> UnverifiedToken<'t> {
    /// Checks size, shape, encoding and header of a compact JWS (RFC 7515 §7.1).
    ///
    /// Header members that point at keys (`jku`, `x5u`, `jwk`, `x5c`) are ignored: keys come
    /// only from the provider's registered JWKS, and nothing named in a token is ever fetched.
    pub fn parse(token: &'t str) -> Result<Self, Refusal> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Refusal::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Malformed);
        };
        if h.is_empty() || c.is_empty() || s.is_empty() {
            return Err(Refusal::Malformed);
        }
        let header_bytes = b64url_decode(h).ok_or(Refusal::BadBase64)?;
        let header = parse_object(&header_bytes).map_err(json_refusal)?;
        let alg = match header.get("alg").and_then(Value::as_str) {
            Some(a) if a.eq_ignore_ascii_case("none") => return Err(Refusal::AlgNone),
            Some(a) if a.starts_with("HS") => return Err(Refusal::AlgSymmetric),
            Some(a) => Alg::from_name(a).ok_or(Refusal::AlgUnsupported)?,
            None => return Err(Refusal::AlgUnsupported),
        };
        if header.contains_key("crit") {
            return Err(Refusal::CriticalHeader);
        }
        if let Some(typ) = header.get("typ")
            && typ.as_str() != Some("JWT")
        {
            return Err(Refusal::BadType);
        }
        let kid = match header.get("kid").and_then(Value::as_str) {
            Some(k) if valid_kid(k) => k.to_owned(),
            _ => return Err(Refusal::MissingKid),
        };
        let claims_bytes = b64url_decode(c).ok_or(Refusal::BadBase64)?;
        if b64url_decode(s).is_none() {
            return Err(Refusal::BadBase64);
        }
        let claims = parse_object(&claims_bytes).map_err(json_refusal)?;
        let signing_input = &token[..h.len() + 1 + c.len()];
        Ok(Self { signing_input, signature: s, alg, kid, claims })
    }

    /// The unauthenticated `iss`, to pick the provider whose keys verify the token.
    pub fn issuer_hint(&self) -> Result<&str, Refusal> {
        match self.claims.get("iss") {
            None => Err(Refusal::MissingClaim(Claim::Iss)),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(Refusal::InvalidClaim(Claim::Iss)),
        }
    }

    /// The `alg` header.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The `kid` header.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// What the gatekeeper checks beyond the signature.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// This gatekeeper's id: `aud` must be it, or an array containing it.
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Largest `exp - iat` accepted.
    pub max_lifetime: Duration,
}

impl TokenPolicy {
    /// A policy for gatekeeper `audience`: 30 s leeway, 1 h maximum lifetime.
    pub fn new(audience: impl Into<String>) -> Self {
        Self {
            audience: audience.into(),
            leeway: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(3600),
        }
    }

    /// Verifies the signature with `key`, then every claim. `issuer` is the registered
    /// issuer of the provider `key` belongs to; `binding` is the thumbprint of the Noise
    /// static key the connection proved it holds.
    pub fn verify(
        &self,
        token: &UnverifiedToken<'_>,
        issuer: &str,
        key: &VerificationKey,
        binding: &Thumbprint,
        now: UnixTime,
    ) -> Result<VerifiedToken, Refusal> {
        if key.alg() != token.alg {
            return Err(Refusal::KeyAlgMismatch);
        }
        if !key.verify(token.signing_input.as_bytes(), token.signature) {
            return Err(Refusal::BadSignature);
        }
        let c = &token.claims;
        let iss = string_claim(c, Claim::Iss)?;
        let sub = string_claim(c, Claim::Sub)?;
        let aud = c.get("aud").ok_or(Refusal::MissingClaim(Claim::Aud))?;
        let exp = time_claim(c, Claim::Exp)?.ok_or(Refusal::MissingClaim(Claim::Exp))?;
        let iat = time_claim(c, Claim::Iat)?.ok_or(Refusal::MissingClaim(Claim::Iat))?;
        let nbf = time_claim(c, Claim::Nbf)?;
        let jti = string_claim(c, Claim::Jti)?;
        if jti.is_empty() || jti.len() > 256 {
            return Err(Refusal::InvalidClaim(Claim::Jti));
        }
        let jkt = match c.get("cnf") {
            None => return Err(Refusal::MissingClaim(Claim::Cnf)),
            Some(Value::Object(cnf)) => match cnf.get("jkt") {
                Some(Value::String(j)) => {
                    Thumbprint::parse(j).ok_or(Refusal::InvalidClaim(Claim::Cnf))?
                }
                _ => return Err(Refusal::InvalidClaim(Claim::Cnf)),
            },
            Some(_) => return Err(Refusal::InvalidClaim(Claim::Cnf)),
        };
        if iss != issuer {
            return Err(Refusal::WrongIssuer);
        }
        let ours = match aud {
            Value::String(a) => *a == self.audience,
            Value::Array(list) if (1..=8).contains(&list.len()) => {
                if !list.iter().all(Value::is_string) {
                    return Err(Refusal::InvalidClaim(Claim::Aud));
                }
                list.iter().any(|a| a.as_str() == Some(self.audience.as_str()))
            }
            _ => return Err(Refusal::InvalidClaim(Claim::Aud)),
        };
        if !ours {
            return Err(Refusal::WrongAudience);
        }
        let leeway = self.leeway.as_secs();
        let now_s = now.as_secs();
        // RFC 7519 §4.1.4: the current time MUST be before `exp`.
        if now_s >= exp.saturating_add(leeway) {
            return Err(Refusal::Expired);
        }
        if let Some(nbf) = nbf
            && now_s.saturating_add(leeway) < nbf
        {
            return Err(Refusal::NotYetValid);
        }
        if iat > now_s.saturating_add(leeway) {
            return Err(Refusal::IssuedInFuture);
        }
        if exp <= iat || exp - iat > self.max_lifetime.as_secs() {
            return Err(Refusal::LifetimeTooLong);
        }
        if !valid_subject(sub) {
            return Err(Refusal::BadSubject);
        }
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            jkt.as_str().as_bytes(),
            binding.as_str().as_bytes(),
        )) {
            return Err(Refusal::KeyBindingMismatch);
        }
        Ok(VerifiedToken {
            issuer: iss.to_owned(),
            subject: sub.to_owned(),
            jti: jti.to_owned(),
            expires_at: UnixTime::from_secs(exp),
            key_binding: jkt,
        })
    }
}

fn string_claim(c: &Map<String, Value>, claim: Claim) -> Result<&str, Refusal> {
    match c.get(claim.as_str()) {
        None => Err(Refusal::MissingClaim(claim)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Refusal::InvalidClaim(claim)),
    }
}

/// NumericDate as an integer number of seconds (fractions are refused in this profile).
fn time_claim(c: &Map<String, Value>, claim: Claim) -> Result<Option<u64>, Refusal> {
    match c.get(claim.as_str()) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(Refusal::InvalidClaim(claim)),
    }
}

/// A user-visible identifier: 1 to [`MAX_SUBJECT_LEN`] bytes of UTF-8, no control or
/// whitespace characters other than inner spaces, no leading or trailing space, and no
/// invisible characters that could make two identifiers look alike (zero-width characters,
/// bidirectional controls, the byte-order mark).
pub fn valid_subject(sub: &str) -> bool {
    !sub.is_empty()
        && sub.len() <= MAX_SUBJECT_LEN
        && !sub.starts_with(' ')
        && !sub.ends_with(' ')
        && sub
            .chars()
            .all(|ch| ch == ' ' || !(ch.is_control() || ch.is_whitespace() || invisible(ch)))
}

fn invisible(ch: char) -> bool {
    matches!(ch, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// The checked contents of a token.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `iss`: identities are namespaced by issuer; (issuer, subject) is the identity.
    pub issuer: String,
    /// `sub`: the user-visible identifier.
    pub subject: String,
    /// `jti`.
    pub jti: String,
    /// `exp`: the session may rely on the token until then.
    pub expires_at: UnixTime,
    /// `cnf.jkt`: equal to the connection's key thumbprint.
    pub key_binding: Thumbprint,
}

impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

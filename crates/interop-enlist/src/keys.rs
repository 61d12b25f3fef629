//! Algorithms, JWKs (RFC 7517 / RFC 8037), RFC 7638 thumbprints, signing and verification keys.

use std::fmt;

use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{DecodingKey, EncodingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use rand_core::CryptoRng;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::strict::{b64url_decode, b64url_encode};
use crate::{Error, Result};

/// The signature algorithms of the token profile. Only asymmetric algorithms exist here:
/// `none` and the HMAC family cannot be expressed, so they cannot be allowed by mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    /// Ed25519 (RFC 8037). The default.
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (modulus of 2048 to 4096 bits).
    RS256,
}

impl Alg {
    /// Every algorithm of the profile.
    pub const ALL: [Alg; 3] = [Alg::EdDSA, Alg::ES256, Alg::RS256];

    /// The JOSE name (`alg` header value).
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
            Alg::RS256 => "RS256",
        }
    }

    /// Parses a JOSE name of an algorithm of the profile.
    pub fn from_name(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub(crate) fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Alg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Alg::ES256 => jsonwebtoken::Algorithm::ES256,
            Alg::RS256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An RFC 7638 JWK SHA-256 thumbprint: 43 characters of unpadded base64url.
///
/// Used as `cnf.jkt` (the device's Noise static key) and as the `kid` of keys this crate
/// generates.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Thumbprint(String);

impl Thumbprint {
    /// The thumbprint of a Noise static (X25519) public key written as the OKP JWK
    /// `{"crv":"X25519","kty":"OKP","x":"<base64url>"}` (RFC 8037 §2, RFC 7638 §3).
    pub fn of_x25519(public_key: &[u8; 32]) -> Self {
        Self::of_canonical(&format!(
            r#"{{"crv":"X25519","kty":"OKP","x":"{}"}}"#,
            b64url_encode(public_key)
        ))
    }

    /// Parses the base64url text of a SHA-256 thumbprint (exactly 32 bytes).
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 43 && b64url_decode(s).is_some_and(|b| b.len() == 32))
            .then(|| Self(s.to_owned()))
    }

    /// The base64url text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn of_canonical(json: &str) -> Self {
        Self(b64url_encode(&Sha256::digest(json.as_bytes())))
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A thumbprint identifies a device: keep it out of logs.
        f.write_str("Thumbprint(..)")
    }
}

/// The public parameters of a verification key.
#[derive(Clone, PartialEq, Eq)]
enum PublicParams {
    Ed25519 { x: [u8; 32] },
    P256 { x: [u8; 32], y: [u8; 32] },
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl PublicParams {
    fn alg(&self) -> Alg {
        match self {
            PublicParams::Ed25519 { .. } => Alg::EdDSA,
            PublicParams::P256 { .. } => Alg::ES256,
            PublicParams::Rsa { .. } => Alg::RS256,
        }
    }

    /// RFC 7638 §3.2: required members only, lexicographic order, no whitespace.
    fn thumbprint(&self) -> Thumbprint {
        let canonical = match self {
            PublicParams::Ed25519 { x } => {
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64url_encode(x))
            }
            PublicParams::P256 { x, y } => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                b64url_encode(x),
                b64url_encode(y)
            ),
            PublicParams::Rsa { n, e } => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64url_encode(e), b64url_encode(n))
            }
        };
        Thumbprint::of_canonical(&canonical)
    }

    fn jwk_members(&self) -> Map<String, Value> {
        let v = match self {
            PublicParams::Ed25519 { x } => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(x)})
            }
            PublicParams::P256 { x, y } => json!({
                "kty": "EC", "crv": "P-256", "x": b64url_encode(x), "y": b64url_encode(y)
            }),
            PublicParams::Rsa { n, e } => {
                json!({"kty": "RSA", "n": b64url_encode(n), "e": b64url_encode(e)})
            }
        };
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn decoding_key(&self) -> DecodingKey {
        match self {
            PublicParams::Ed25519 { x } => DecodingKey::from_ed_der(x),
            PublicParams::P256 { x, y } => {
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(0x04);
                sec1.extend_from_slice(x);
                sec1.extend_from_slice(y);
                DecodingKey::from_ec_der(&sec1)
            }
            PublicParams::Rsa { n, e } => DecodingKey::from_rsa_raw_components(n, e),
        }
    }
}

/// How a key checks signatures.
#[derive(Clone)]
enum Verifier {
    /// Ed25519 with the key decoded once: jsonwebtoken's `crypto::verify` would decompress
    /// the point on every call (≈ 10 % of a verification). The check itself is the one
    /// jsonwebtoken's EdDSA verifier makes (`ed25519_dalek::VerifyingKey::verify`).
    Ed25519(ed25519_dalek::VerifyingKey),
    /// ES256 and RS256: `jsonwebtoken::crypto::verify`.
    Jwt(DecodingKey),
}

/// A public key a gatekeeper verifies provider tokens with, parsed from a JWKS entry.
#[derive(Clone)]
pub struct VerificationKey {
    kid: String,
    params: PublicParams,
    verifier: Verifier,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey").field("alg", &self.params.alg()).finish_non_exhaustive()
    }
}

/// Why one JWKS entry was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwkProblem {
    /// Not for us (another `kty`/`crv`/`alg`, `use` other than `sig`): skipped silently.
    Foreign,
    /// Malformed or weak: the whole document is suspect.
    Invalid,
    /// Carries private key material: the provider leaked its key.
    PrivateMaterial,
}

impl VerificationKey {
    fn new(kid: String, params: PublicParams) -> Self {
        let verifier = match &params {
            PublicParams::Ed25519 { x } => match ed25519_dalek::VerifyingKey::from_bytes(x) {
                Ok(vk) => Verifier::Ed25519(vk),
                // Unreachable for keys from `from_jwk` (checked there) or from a signing key;
                // jsonwebtoken then refuses every signature, as it should.
                Err(_) => Verifier::Jwt(params.decoding_key()),
            },
            _ => Verifier::Jwt(params.decoding_key()),
        };
        Self { kid, params, verifier }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        self.params.alg()
    }

    /// The RFC 7638 thumbprint of this key.
    pub fn thumbprint(&self) -> Thumbprint {
        self.params.thumbprint()
    }

    /// The JWK (RFC 7517) of this key, with `kid`, `use` and `alg`.
    pub fn to_jwk(&self) -> Value {
        let mut m = self.params.jwk_members();
        m.insert("kid".into(), Value::String(self.kid.clone()));
        m.insert("use".into(), Value::String("sig".into()));
        m.insert("alg".into(), Value::String(self.alg().as_str().into()));
        Value::Object(m)
    }

    /// Verifies a JWS signature over `signing_input` (`base64url(header) "." base64url(claims)`).
    pub(crate) fn verify(&self, signing_input: &[u8], signature_b64: &str) -> bool {
        match &self.verifier {
            Verifier::Ed25519(vk) => {
                let Some(sig) = b64url_decode(signature_b64) else { return false };
                let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) else { return false };
                ed25519_dalek::Verifier::verify(vk, signing_input, &sig).is_ok()
            }
            Verifier::Jwt(key) => {
                jsonwebtoken::crypto::verify(signature_b64, signing_input, key, self.alg().jwt())
                    .unwrap_or(false)
            }
        }
    }

    /// Parses one JWKS entry strictly.
    pub(crate) fn from_jwk(jwk: &Value) -> std::result::Result<Self, JwkProblem> {
        let Value::Object(m) = jwk else { return Err(JwkProblem::Invalid) };
        let s = |name: &str| m.get(name).and_then(Value::as_str);
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            if m.contains_key(private) {
                return Err(JwkProblem::PrivateMaterial);
            }
        }
        if let Some(u) = m.get("use")
            && u.as_str() != Some("sig")
        {
            return Err(JwkProblem::Foreign);
        }
        if let Some(ops) = m.get("key_ops") {
            let verify =
                ops.as_array().is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
            if !verify {
                return Err(JwkProblem::Foreign);
            }
        }
        let b32 = |name: &str| -> std::result::Result<[u8; 32], JwkProblem> {
            let bytes = s(name).and_then(b64url_decode).ok_or(JwkProblem::Invalid)?;
            bytes.try_into().map_err(|_| JwkProblem::Invalid)
        };
        let params = match (s("kty"), s("crv")) {
            (Some("OKP"), Some("Ed25519")) => {
                let x = b32("x")?;
                ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| JwkProblem::Invalid)?;
                PublicParams::Ed25519 { x }
            }
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (b32("x")?, b32("y")?);
                let point =
                    p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
                p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| JwkProblem::Invalid)?;
                PublicParams::P256 { x, y }
            }
            (Some("RSA"), _) => {
                let n = s("n").and_then(b64url_decode).ok_or(JwkProblem::Invalid)?;
                let e = s("e").and_then(b64url_decode).ok_or(JwkProblem::Invalid)?;
                // Minimal encodings only (RFC 7518 §6.3.1.1): no leading zero octets.
                if n.is_empty() || e.is_empty() || n[0] == 0 || e[0] == 0 || e.len() > 4 {
                    return Err(JwkProblem::Invalid);
                }
                let bits = n.len() * 8 - n[0].leading_zeros() as usize;
                if !(2048..=4096).contains(&bits) {
                    return Err(JwkProblem::Invalid);
                }
                rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(&n),
                    rsa::BigUint::from_bytes_be(&e),
                )
                .map_err(|_| JwkProblem::Invalid)?;
                PublicParams::Rsa { n, e }
            }
            _ => return Err(JwkProblem::Foreign),
        };
        if let Some(alg) = m.get("alg")
            && alg.as_str() != Some(params.alg().as_str())
        {
            return Err(JwkProblem::Foreign);
        }
        let kid = match s("kid") {
            Some(k) if valid_kid(k) => k.to_owned(),
            _ => return Err(JwkProblem::Invalid),
        };
        Ok(Self::new(kid, params))
    }
}

/// A `kid` is 1 to 128 printable ASCII characters.
pub(crate) fn valid_kid(kid: &str) -> bool {
    (1..=128).contains(&kid.len()) && kid.bytes().all(|b| b.is_ascii_graphic())
}

enum SecretParams {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::SecretKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

/// A provider's private signing key, with its `kid` (by default its RFC 7638 thumbprint).
///
/// `Debug` shows only the algorithm and the `kid`; the secret is zeroized on drop by the
/// underlying key types.
pub struct SigningKey {
    public: VerificationKey,
    secret: SecretParams,
    encoding: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg())
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh Ed25519 key.
    pub fn generate_ed25519(rng: &mut impl CryptoRng) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::ed25519_from_seed(&seed)
    }

    /// The Ed25519 key with this 32-byte seed (RFC 8032 private key).
    pub fn ed25519_from_seed(seed: &[u8; 32]) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let params = PublicParams::Ed25519 { x: key.verifying_key().to_bytes() };
        let der =
            key.to_pkcs8_der().expect("encoding a 32-byte Ed25519 seed as PKCS#8 cannot fail");
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        Self::assemble(params, SecretParams::Ed25519(key), encoding)
    }

    /// A fresh P-256 key.
    pub fn generate_p256(rng: &mut impl CryptoRng) -> Self {
        loop {
            let mut scalar = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(scalar.as_mut());
            // Fails only for zero or a value >= the group order (probability ~2^-32).
            if let Ok(key) = Self::p256_from_scalar(&scalar) {
                return key;
            }
        }
    }

    /// The P-256 key with this big-endian scalar.
    pub fn p256_from_scalar(scalar: &[u8; 32]) -> Result<Self> {
        let key = p256::SecretKey::from_bytes(scalar.into()).map_err(|_| Error::InvalidKey)?;
        let point = key.public_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else { return Err(Error::InvalidKey) };
        let params = PublicParams::P256 { x: (*x).into(), y: (*y).into() };
        let der =
            p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&key).map_err(|_| Error::InvalidKey)?;
        let encoding = EncodingKey::from_ec_der(der.as_bytes());
        Ok(Self::assemble(params, SecretParams::P256(key), encoding))
    }

    /// An RSA key from PKCS#8 DER (`openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072
    /// | openssl pkcs8 -topk8 -nocrypt -outform DER`). RSA keys are not generated here: that is slow and belongs to an
    /// offline tool. The modulus must have 2048 to 4096 bits.
    pub fn rsa_from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let key = rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(|_| Error::InvalidKey)?;
        let bits = key.n().bits();
        if !(2048..=4096).contains(&bits) {
            return Err(Error::InvalidKey);
        }
        let params = PublicParams::Rsa { n: key.n().to_bytes_be(), e: key.e().to_bytes_be() };
        let pkcs1 = key.to_pkcs1_der().map_err(|_| Error::InvalidKey)?;
        let encoding = EncodingKey::from_rsa_der(pkcs1.as_bytes());
        Ok(Self::assemble(params, SecretParams::Rsa(Box::new(key)), encoding))
    }

    fn assemble(params: PublicParams, secret: SecretParams, encoding: EncodingKey) -> Self {
        let kid = params.thumbprint().0;
        Self { public: VerificationKey::new(kid, params), secret, encoding }
    }

    /// Replaces the `kid` (1 to 128 printable ASCII characters).
    pub fn with_kid(mut self, kid: &str) -> Result<Self> {
        if !valid_kid(kid) {
            return Err(Error::InvalidConfig("kid must be 1 to 128 printable ASCII characters"));
        }
        self.public.kid = kid.to_owned();
        Ok(self)
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        self.public.kid()
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Alg {
        self.public.alg()
    }

    /// The public half.
    pub fn verification_key(&self) -> &VerificationKey {
        &self.public
    }

    /// The private key as PKCS#8 DER, for the provider to store.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        let doc = match &self.secret {
            SecretParams::Ed25519(k) => k.to_pkcs8_der().map_err(|_| Error::InvalidKey)?,
            SecretParams::P256(k) => {
                p256::pkcs8::EncodePrivateKey::to_pkcs8_der(k).map_err(|_| Error::InvalidKey)?
            }
            SecretParams::Rsa(k) => rsa::pkcs8::EncodePrivateKey::to_pkcs8_der(k.as_ref())
                .map_err(|_| Error::InvalidKey)?,
        };
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// Signs `signing_input`, returning the base64url signature.
    pub(crate) fn sign(&self, signing_input: &[u8]) -> Result<String> {
        jsonwebtoken::crypto::sign(signing_input, &self.encoding, self.alg().jwt())
            .map_err(|e| Error::Crypto(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x25519_thumbprint_matches_rfc7638_construction() {
        // The vector itself is pinned in tests/vectors.rs against test-vectors/enlist.
        let t = Thumbprint::of_x25519(&[0u8; 32]);
        assert_eq!(t.as_str().len(), 43);
        assert!(Thumbprint::parse(t.as_str()).is_some());
        assert!(Thumbprint::parse("short").is_none());
    }

    #[test]
    fn jwk_round_trip_and_private_material_refused() {
        let k = SigningKey::ed25519_from_seed(&[7; 32]);
        let jwk = k.verification_key().to_jwk();
        let back = VerificationKey::from_jwk(&jwk).expect("own JWK parses");
        assert_eq!(back.kid(), k.kid());
        assert_eq!(back.thumbprint().as_str(), k.kid());
        let mut leaked = jwk.clone();
        leaked["d"] = Value::String("AAAA".into());
        assert_eq!(VerificationKey::from_jwk(&leaked).err(), Some(JwkProblem::PrivateMaterial));
        let mut enc = jwk;
        enc["use"] = Value::String("enc".into());
        assert_eq!(VerificationKey::from_jwk(&enc).err(), Some(JwkProblem::Foreign));
    }

    #[test]
    fn malformed_key_parameters_are_invalid_not_a_panic() {
        let cases = [
            json!({"kty":"RSA","kid":"r","n":"","e":"AQAB"}),
            json!({"kty":"RSA","kid":"r","n":"AQAB","e":""}),
            json!({"kty":"RSA","kid":"r","n":"AAEC","e":"AQAB"}),
            json!({"kty":"RSA","kid":"r","n":7,"e":"AQAB"}),
            // 1024-bit modulus: too weak.
            json!({"kty":"RSA","kid":"r","n":b64url_encode(&[0xff; 128]),"e":"AQAB"}),
            json!({"kty":"EC","crv":"P-256","kid":"e","x":"","y":""}),
            json!({"kty":"EC","crv":"P-256","kid":"e",
                   "x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                   "y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
            json!({"kty":"OKP","crv":"Ed25519","kid":"k"}),
            json!({"kty":"OKP","crv":"Ed25519","kid":"","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        ];
        for jwk in cases {
            assert_eq!(VerificationKey::from_jwk(&jwk).err(), Some(JwkProblem::Invalid), "{jwk}");
        }
        assert_eq!(VerificationKey::from_jwk(&json!([1])).err(), Some(JwkProblem::Invalid));
    }

    #[test]
    fn cached_ed25519_verifier_agrees_with_jsonwebtoken() {
        let k = SigningKey::ed25519_from_seed(&[7; 32]);
        let vk = k.verification_key();
        assert!(matches!(vk.verifier, Verifier::Ed25519(_)));
        let jwt_key = vk.params.decoding_key();
        let good = k.sign(b"a.b").expect("sign");
        let other = k.sign(b"a.c").expect("sign");
        for (input, sig) in [
            (&b"a.b"[..], good.as_str()),
            (b"a.b", other.as_str()),
            (b"a.b", "AAAA"),
            (b"a.b", "!"),
        ] {
            let theirs =
                jsonwebtoken::crypto::verify(sig, input, &jwt_key, jsonwebtoken::Algorithm::EdDSA)
                    .unwrap_or(false);
            assert_eq!(vk.verify(input, sig), theirs, "{sig}");
        }
        assert!(vk.verify(b"a.b", &good));
    }

    #[test]
    fn short_ed25519_x_is_invalid_not_a_panic() {
        // jsonwebtoken slices `[..32]` on the raw key bytes: a short `x` must never reach it.
        let jwk = json!({"kty":"OKP","crv":"Ed25519","kid":"k","x":"AAAA"});
        assert_eq!(VerificationKey::from_jwk(&jwk).err(), Some(JwkProblem::Invalid));
    }
}

//! Server certificates: root → intermediate → leaf, Ed25519 over protobuf.
//!
//! The client pins the root's Ed25519 public key ([`TrustAnchor`]). The server sends a
//! [`CertificateChain`] in its handshake payload: an intermediate certificate signed by the root
//! key, and a leaf certificate signed by the intermediate's key that names the server's X25519
//! Noise static key. [`TrustAnchor::verify`] checks signatures, roles, serial linkage, validity
//! windows against the `now` it is given, the revocation list, and that the leaf key is the key
//! the server proved it holds in the Noise handshake.
//!
//! The issuing side ([`RootKey`], [`IntermediateKey`]) is the tooling `interop-server` uses to
//! create its chain. A real deployment keeps the root private key offline.

use std::collections::BTreeSet;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use prost::Message;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::proto::{Certificate, CertificateChain, CertificateDetails, CertificateRole};
use crate::{Error, Result};

/// Domain separation: every certificate signature covers these bytes, then the details.
pub const SIGNATURE_CONTEXT: &[u8] = b"interop-cert-v1\0";

/// A certificate that is not (yet, or any more) acceptable. Carried by
/// [`Error::BadCertificate`]; never names key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertError {
    /// The server payload carried no chain, or the chain lacks a certificate.
    Missing,
    /// A certificate or its details did not decode, or a key/signature has the wrong length.
    Malformed,
    /// A signature does not verify under the issuer's key.
    BadSignature,
    /// A certificate has the wrong role for its position, or serials do not link up.
    WrongShape,
    /// `now` is before `not_before`.
    NotYetValid,
    /// `now` is after `not_after`.
    Expired,
    /// The serial is on the client's revocation list.
    Revoked,
    /// The leaf does not certify the static key of the Noise handshake.
    KeyMismatch,
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "missing certificate",
            Self::Malformed => "malformed certificate",
            Self::BadSignature => "certificate signature does not verify",
            Self::WrongShape => "certificate role or issuer serial is wrong",
            Self::NotYetValid => "certificate not yet valid",
            Self::Expired => "certificate expired",
            Self::Revoked => "certificate revoked",
            Self::KeyMismatch => "leaf certificate is for another key",
        })
    }
}

/// What a client trusts: the root public key and the serials it refuses.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustAnchor {
    root: [u8; 32],
    revoked: BTreeSet<u64>,
}

impl std::fmt::Debug for TrustAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchor").field("revoked", &self.revoked.len()).finish_non_exhaustive()
    }
}

impl TrustAnchor {
    /// Trusts chains rooted in the Ed25519 public key `root`. Refuses a key that is not a valid
    /// Ed25519 point.
    pub fn new(root: [u8; 32]) -> Result<Self> {
        VerifyingKey::from_bytes(&root).map_err(|_| Error::BadTrustAnchor)?;
        Ok(Self { root, revoked: BTreeSet::new() })
    }

    /// Also refuses any intermediate or leaf certificate with this serial.
    pub fn revoke(mut self, serial: u64) -> Self {
        self.revoked.insert(serial);
        self
    }

    /// The pinned root public key.
    pub fn root_key(&self) -> &[u8; 32] {
        &self.root
    }

    /// Checks `chain` at time `now` (seconds since the Unix epoch) for a server whose Noise
    /// static key is `server_static`.
    pub fn verify(
        &self,
        chain: Option<&CertificateChain>,
        server_static: &[u8],
        now: u64,
    ) -> Result<()> {
        let bad = Error::BadCertificate;
        let chain = chain.ok_or(bad(CertError::Missing))?;
        let root = VerifyingKey::from_bytes(&self.root).map_err(|_| Error::BadTrustAnchor)?;
        let inter = open(chain.intermediate.as_ref(), &root)?;
        if inter.role() != CertificateRole::Intermediate || inter.issuer_serial != 0 {
            return Err(bad(CertError::WrongShape));
        }
        self.check_common(&inter, now)?;
        let inter_key: [u8; 32] =
            inter.key[..].try_into().map_err(|_| bad(CertError::Malformed))?;
        let inter_key =
            VerifyingKey::from_bytes(&inter_key).map_err(|_| bad(CertError::Malformed))?;
        let leaf = open(chain.leaf.as_ref(), &inter_key)?;
        if leaf.role() != CertificateRole::Leaf || leaf.issuer_serial != inter.serial {
            return Err(bad(CertError::WrongShape));
        }
        self.check_common(&leaf, now)?;
        if leaf.key[..] != *server_static {
            return Err(bad(CertError::KeyMismatch));
        }
        Ok(())
    }

    fn check_common(&self, d: &CertificateDetails, now: u64) -> Result<()> {
        let bad = Error::BadCertificate;
        if d.serial == 0 || d.key.len() != 32 || d.not_before > d.not_after {
            return Err(bad(CertError::Malformed));
        }
        if now < d.not_before {
            return Err(bad(CertError::NotYetValid));
        }
        if now > d.not_after {
            return Err(bad(CertError::Expired));
        }
        if self.revoked.contains(&d.serial) {
            return Err(bad(CertError::Revoked));
        }
        Ok(())
    }
}

/// Checks the signature of `cert` under `issuer` and decodes its details.
fn open(cert: Option<&Certificate>, issuer: &VerifyingKey) -> Result<CertificateDetails> {
    let bad = Error::BadCertificate;
    let cert = cert.ok_or(bad(CertError::Missing))?;
    let sig: [u8; 64] = cert.signature[..].try_into().map_err(|_| bad(CertError::Malformed))?;
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    issuer
        .verify_strict(&signed_bytes(&cert.details), &sig)
        .map_err(|_| bad(CertError::BadSignature))?;
    CertificateDetails::decode(&cert.details[..]).map_err(|_| bad(CertError::Malformed))
}

fn signed_bytes(details: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + details.len());
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(details);
    m
}

fn sign(key: &SigningKey, details: &CertificateDetails) -> Certificate {
    let details = details.encode_to_vec();
    let signature = key.sign(&signed_bytes(&details)).to_bytes().to_vec();
    Certificate { details: details.into(), signature: signature.into() }
}

/// A validity window, seconds since the Unix epoch, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First second the certificate is valid.
    pub not_before: u64,
    /// Last second the certificate is valid.
    pub not_after: u64,
}

macro_rules! signing_key_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The ", $what, " Ed25519 signing key. Zeroed on drop, never printed.")]
        #[derive(Clone)]
        pub struct $name(SigningKey);

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $name {
            /// A fresh key from `rng`.
            pub fn generate(rng: &mut impl CryptoRng) -> Self {
                let mut seed = Zeroizing::new([0u8; 32]);
                rng.fill_bytes(&mut seed[..]);
                Self(SigningKey::from_bytes(&seed))
            }

            /// The 32-byte secret seed (storage form).
            pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
                Zeroizing::new(self.0.to_bytes())
            }

            /// Parses the storage form of [`to_bytes`](Self::to_bytes).
            pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
                let seed: Zeroizing<[u8; 32]> = Zeroizing::new(bytes.try_into().ok()?);
                Some(Self(SigningKey::from_bytes(&seed)))
            }

            /// The public half.
            pub fn public(&self) -> [u8; 32] {
                self.0.verifying_key().to_bytes()
            }
        }
    };
}

signing_key_type!(RootKey, "root");
signing_key_type!(IntermediateKey, "intermediate");

impl RootKey {
    /// Certifies `intermediate` under `serial` (non-zero) for `validity`.
    pub fn issue_intermediate(
        &self,
        intermediate: &IntermediateKey,
        serial: u64,
        validity: Validity,
    ) -> Certificate {
        sign(
            &self.0,
            &CertificateDetails {
                serial,
                issuer_serial: 0,
                role: CertificateRole::Intermediate.into(),
                key: intermediate.public().to_vec().into(),
                not_before: validity.not_before,
                not_after: validity.not_after,
            },
        )
    }

    /// The trust anchor clients pin for this root.
    pub fn trust_anchor(&self) -> TrustAnchor {
        TrustAnchor { root: self.public(), revoked: BTreeSet::new() }
    }
}

impl IntermediateKey {
    /// Certifies the Noise static key `server_static` under `serial` (non-zero), issued by the
    /// intermediate certificate with serial `issuer_serial`.
    pub fn issue_leaf(
        &self,
        issuer_serial: u64,
        server_static: &[u8; 32],
        serial: u64,
        validity: Validity,
    ) -> Certificate {
        sign(
            &self.0,
            &CertificateDetails {
                serial,
                issuer_serial,
                role: CertificateRole::Leaf.into(),
                key: server_static.to_vec().into(),
                not_before: validity.not_before,
                not_after: validity.not_after,
            },
        )
    }
}

/// The wire form of a certificate (for storing it).
pub fn encode_certificate(cert: &Certificate) -> Vec<u8> {
    cert.encode_to_vec()
}

/// Parses the wire form of a certificate; its signature is not checked here.
pub fn decode_certificate(bytes: &[u8]) -> Result<Certificate> {
    Certificate::decode(bytes).map_err(|_| Error::BadCertificate(CertError::Malformed))
}

/// The decoded details of a certificate whose signature is not checked (for tooling that reads
/// its own chain, e.g. to decide when to renew).
pub fn details_unverified(cert: &Certificate) -> Result<CertificateDetails> {
    CertificateDetails::decode(&cert.details[..])
        .map_err(|_| Error::BadCertificate(CertError::Malformed))
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    const WINDOW: Validity = Validity { not_before: 1_000, not_after: 2_000 };

    struct Fixture {
        root: RootKey,
        inter: IntermediateKey,
        chain: CertificateChain,
        server: [u8; 32],
    }

    fn fixture() -> Fixture {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let root = RootKey::generate(&mut rng);
        let inter = IntermediateKey::generate(&mut rng);
        let server = [0x42; 32];
        let chain = CertificateChain {
            intermediate: Some(root.issue_intermediate(&inter, 10, WINDOW)),
            leaf: Some(inter.issue_leaf(10, &server, 11, WINDOW)),
        };
        Fixture { root, inter, chain, server }
    }

    fn verdict(anchor: &TrustAnchor, chain: &CertificateChain, key: &[u8], now: u64) -> Result<()> {
        anchor.verify(Some(chain), key, now)
    }

    fn cert_err(r: Result<()>) -> CertError {
        match r {
            Err(Error::BadCertificate(e)) => e,
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    #[test]
    fn a_good_chain_verifies_at_both_ends_of_its_window() {
        let f = fixture();
        let anchor = f.root.trust_anchor();
        verdict(&anchor, &f.chain, &f.server, 1_000).unwrap();
        verdict(&anchor, &f.chain, &f.server, 2_000).unwrap();
    }

    #[test]
    fn every_failure_has_its_reason() {
        let f = fixture();
        let anchor = f.root.trust_anchor();
        type Case = (&'static str, TrustAnchor, CertificateChain, [u8; 32], u64, CertError);
        let cases: Vec<Case> = vec![
            ("before", anchor.clone(), f.chain.clone(), f.server, 999, CertError::NotYetValid),
            ("after", anchor.clone(), f.chain.clone(), f.server, 2_001, CertError::Expired),
            ("other key", anchor.clone(), f.chain.clone(), [1; 32], 1_500, CertError::KeyMismatch),
            (
                "wrong root",
                RootKey::generate(&mut ChaCha20Rng::seed_from_u64(8)).trust_anchor(),
                f.chain.clone(),
                f.server,
                1_500,
                CertError::BadSignature,
            ),
            (
                "revoked leaf",
                anchor.clone().revoke(11),
                f.chain.clone(),
                f.server,
                1_500,
                CertError::Revoked,
            ),
            (
                "revoked inter",
                anchor.clone().revoke(10),
                f.chain.clone(),
                f.server,
                1_500,
                CertError::Revoked,
            ),
            (
                "leaf as intermediate",
                anchor.clone(),
                CertificateChain { intermediate: f.chain.leaf.clone(), leaf: f.chain.leaf.clone() },
                f.server,
                1_500,
                CertError::BadSignature,
            ),
            (
                "issuer serial",
                anchor.clone(),
                CertificateChain {
                    intermediate: f.chain.intermediate.clone(),
                    leaf: Some(f.inter.issue_leaf(99, &f.server, 11, WINDOW)),
                },
                f.server,
                1_500,
                CertError::WrongShape,
            ),
            (
                "missing leaf",
                anchor.clone(),
                CertificateChain { intermediate: f.chain.intermediate.clone(), leaf: None },
                f.server,
                1_500,
                CertError::Missing,
            ),
        ];
        for (name, anchor, chain, key, now, want) in cases {
            assert_eq!(cert_err(verdict(&anchor, &chain, &key, now)), want, "{name}");
        }
        assert_eq!(cert_err(anchor.verify(None, &f.server, 1_500)), CertError::Missing);
    }

    #[test]
    fn every_flipped_bit_of_the_chain_is_refused() {
        let f = fixture();
        let anchor = f.root.trust_anchor();
        let wire = f.chain.encode_to_vec();
        for i in 0..wire.len() {
            for bit in [0x01u8, 0x80] {
                let mut bytes = wire.clone();
                bytes[i] ^= bit;
                let Ok(chain) = CertificateChain::decode(&bytes[..]) else { continue };
                assert!(
                    anchor.verify(Some(&chain), &f.server, 1_500).is_err(),
                    "byte {i} bit {bit:#x}"
                );
            }
        }
    }

    #[test]
    fn storage_forms_round_trip_and_debug_hides_secrets() {
        let f = fixture();
        let back = RootKey::from_bytes(&f.root.to_bytes()[..]).unwrap();
        assert_eq!(back.public(), f.root.public());
        assert!(RootKey::from_bytes(&[0; 31]).is_none());
        let seed_hex: String = f.root.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!format!("{:?}", f.root).contains(&seed_hex));
        assert!(TrustAnchor::new(f.root.public()).is_ok());
    }
}

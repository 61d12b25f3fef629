//! Static X25519 key pairs.

use rand_core::CryptoRng;
use zeroize::Zeroizing;

/// A Noise static key pair (X25519). The private half is zeroed on drop and never printed.
#[derive(Clone)]
pub struct StaticKeypair {
    /// The private key.
    pub private: Zeroizing<[u8; 32]>,
    /// The public key.
    pub public: [u8; 32],
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &Hex(&self.public))
            .field("private", &"<redacted>")
            .finish()
    }
}

struct Hex<'a>(&'a [u8]);

impl std::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl StaticKeypair {
    /// A fresh key pair from `rng`.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let kp = crate::resolver::generate_keypair(rng);
        Self::from_parts(&kp.private, &kp.public).expect("snow returns 32-byte X25519 keys")
    }

    /// The 64-byte storage form: private half, then public half.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(&self.private[..]);
        out[32..].copy_from_slice(&self.public);
        out
    }

    /// Parses the storage form of [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 64 {
            return None;
        }
        Self::from_parts(&bytes[..32], &bytes[32..])
    }

    /// Builds a key pair from its 32-byte private and public halves.
    pub fn from_parts(private: &[u8], public: &[u8]) -> Option<Self> {
        Some(Self {
            private: Zeroizing::new(private.try_into().ok()?),
            public: public.try_into().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn storage_form_round_trips_and_debug_hides_the_private_key() {
        let k = StaticKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
        let back = StaticKeypair::from_bytes(&k.to_bytes()[..]).unwrap();
        assert_eq!(back.public, k.public);
        assert_eq!(back.private, k.private);
        assert!(StaticKeypair::from_bytes(&[0u8; 63]).is_none());
        let shown = format!("{k:?}");
        assert!(shown.contains("redacted"));
        let private_hex: String = k.private.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&private_hex));
    }
}

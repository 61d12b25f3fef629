//! The snow crypto resolver of this crate: snow's own primitives, with two changes.
//!
//! - Randomness comes from the caller: each handshake state draws its ephemeral key from a
//!   ChaCha20 stream seeded with 32 bytes of the caller's `CryptoRng` (so a seeded rng makes a
//!   whole handshake deterministic).
//! - X25519 refuses low-order peer keys: a DH whose result is all zeros (which is exactly what
//!   the small-order points, including the all-zero key, produce) fails instead of mixing zeros
//!   into the handshake.

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

struct Resolver {
    seed: [u8; 32],
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// X25519 that refuses an all-zero shared secret.
struct CheckedDh(Box<dyn Dh>);

impl Dh for CheckedDh {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn pub_len(&self) -> usize {
        self.0.pub_len()
    }
    fn priv_len(&self) -> usize {
        self.0.priv_len()
    }
    fn set(&mut self, privkey: &[u8]) {
        self.0.set(privkey);
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        self.0.generate(rng)
    }
    fn pubkey(&self) -> &[u8] {
        self.0.pubkey()
    }
    fn privkey(&self) -> &[u8] {
        self.0.privkey()
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        if pubkey.len() < self.0.pub_len() {
            return Err(snow::Error::Dh);
        }
        self.0.dh(pubkey, out)?;
        let n = self.0.dh_len().min(out.len());
        // Constant-time enough: the result is secret, the branch only reveals "all zero".
        let acc = out[..n].iter().fold(0u8, |acc, b| acc | b);
        if acc == 0 {
            return Err(snow::Error::Dh);
        }
        Ok(())
    }
    fn dh_len(&self) -> usize {
        self.0.dh_len()
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice).map(|dh| Box::new(CheckedDh(dh)) as Box<dyn Dh>)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// A snow builder for `params` whose randomness is drawn from `rng`.
pub(crate) fn builder<'a>(params: NoiseParams, rng: &mut impl CryptoRng) -> snow::Builder<'a> {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    snow::Builder::with_resolver(params, Box::new(Resolver { seed }))
}

/// Generates an X25519 key pair (private, public) from `rng` through snow.
pub(crate) fn generate_keypair(rng: &mut impl CryptoRng) -> snow::Keypair {
    let params = crate::NOISE_XX.parse().expect("NOISE_XX is a valid pattern name");
    builder(params, rng)
        .generate_keypair()
        .expect("X25519 key generation from a seeded stream does not fail")
}

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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// The cacophony vectors for our two patterns, run through this resolver (so the low-order
    /// check is shown not to change any honest handshake).
    #[test]
    fn cacophony_vectors_for_xx_and_ik() {
        let file: Value =
            serde_json::from_str(include_str!("../../../test-vectors/noise/cacophony.json"))
                .expect("valid JSON");
        let vectors = file["vectors"].as_array().expect("a vectors array");
        let names: Vec<&str> =
            vectors.iter().map(|v| v["protocol_name"].as_str().unwrap()).collect();
        assert_eq!(names, [crate::NOISE_XX, crate::NOISE_IK]);
        for v in vectors {
            run_vector(v);
        }
    }

    fn h(v: &Value) -> Vec<u8> {
        hex::decode(v.as_str().expect("a hex string")).expect("valid hex")
    }

    fn run_vector(v: &Value) {
        let name = v["protocol_name"].as_str().unwrap();
        let params: NoiseParams = name.parse().unwrap();
        let rng = &mut rand_chacha::ChaCha20Rng::from_seed([0; 32]);
        let (ip, ie, is) = (h(&v["init_prologue"]), h(&v["init_ephemeral"]), h(&v["init_static"]));
        let (rp, re, rs) = (h(&v["resp_prologue"]), h(&v["resp_ephemeral"]), h(&v["resp_static"]));
        let remote = v.get("init_remote_static").map(h);
        let mut ib = builder(params.clone(), rng)
            .prologue(&ip)
            .unwrap()
            .local_private_key(&is)
            .unwrap()
            .fixed_ephemeral_key_for_testing_only(&ie);
        if let Some(remote) = &remote {
            ib = ib.remote_public_key(remote).unwrap();
        }
        let mut init = ib.build_initiator().unwrap();
        let mut resp = builder(params, rng)
            .prologue(&rp)
            .unwrap()
            .local_private_key(&rs)
            .unwrap()
            .fixed_ephemeral_key_for_testing_only(&re)
            .build_responder()
            .unwrap();
        let mut buf = [0u8; 1024];
        let mut out = [0u8; 1024];
        let messages = v["messages"].as_array().unwrap();
        let mut i = 0;
        while !init.is_handshake_finished() {
            let (tx, rx) = if i % 2 == 0 { (&mut init, &mut resp) } else { (&mut resp, &mut init) };
            let payload = h(&messages[i]["payload"]);
            let n = tx.write_message(&payload, &mut buf).unwrap();
            assert_eq!(buf[..n], h(&messages[i]["ciphertext"])[..], "{name} message {i}");
            let m = rx.read_message(&buf[..n], &mut out).unwrap();
            assert_eq!(out[..m], payload[..], "{name} message {i}");
            i += 1;
        }
        assert_eq!(init.get_handshake_hash(), &h(&v["handshake_hash"])[..], "{name}");
        assert_eq!(resp.get_handshake_hash(), &h(&v["handshake_hash"])[..], "{name}");
        let mut init = init.into_transport_mode().unwrap();
        let mut resp = resp.into_transport_mode().unwrap();
        for (k, msg) in messages.iter().enumerate().skip(i) {
            let (tx, rx) = if k % 2 == 0 { (&mut init, &mut resp) } else { (&mut resp, &mut init) };
            let payload = h(&msg["payload"]);
            let n = tx.write_message(&payload, &mut buf).unwrap();
            assert_eq!(buf[..n], h(&msg["ciphertext"])[..], "{name} message {k}");
            let m = rx.read_message(&buf[..n], &mut out).unwrap();
            assert_eq!(out[..m], payload[..], "{name} message {k}");
        }
    }
}

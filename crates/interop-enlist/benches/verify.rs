//! Token verification with a warm JWKS cache, next to bare signature verification of the
//! same bytes in the same run. The claim checks, parsing and key lookup should add at most
//! 30% to the signature verification.

use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::Verifier as _;
use interop_enlist::cache::{FetchKind, FetchResponse, HttpResponse};
use interop_enlist::*;
use rand::SeedableRng as _;

const ISSUER: &str = "https://id.example.org";
const AUD: &str = "gatekeeper.example";

/// A registry with warm keys for one provider signing with `key`, and a token of it.
fn setup(key: SigningKey) -> (Registry, String, Thumbprint, UnixTime) {
    let now = UnixTime::from_secs(1_800_000_000);
    let alg = key.alg();
    let ring = KeyRing::new(key);
    let device = Thumbprint::of_x25519(&[7; 32]);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let token = TokenIssuer::new(ISSUER, AUD, UrlPolicy::HttpsOnly)
        .expect("issuer")
        .issue(&ring, "alice@id.example.org", &device, now, &mut rng)
        .expect("token");
    let mut registry = Registry::new(GatekeeperConfig::new(AUD));
    let mut entry = ProviderEntry::new(
        ISSUER,
        "example",
        "https://id.example.org/push",
        "https://m.example.org/",
    );
    entry.allowed_algs = vec![alg];
    registry.upsert(entry, now).expect("entry");
    while let Some(req) = registry.poll_fetch(now) {
        let body = match req.kind {
            FetchKind::Discovery => DiscoveryDocument::for_issuer(ISSUER, vec![alg]).to_json(),
            FetchKind::Jwks => ring.jwks(now),
        };
        let ok =
            HttpResponse { status: 200, cache_control: None, body: body.to_string().into_bytes() };
        registry
            .handle_fetch(now, FetchResponse { ticket: req.ticket, result: Ok(ok) })
            .expect("fetch");
    }
    registry.verify(&token, &device, now).expect("warm cache verifies");
    (registry, token, device, now)
}

fn split(token: &str) -> (&[u8], Vec<u8>) {
    let (input, sig) = token.rsplit_once('.').expect("three parts");
    (input.as_bytes(), B64.decode(sig).expect("base64"))
}

fn eddsa(c: &mut Criterion) {
    let key = SigningKey::ed25519_from_seed(&[1; 32]);
    let x = B64.decode(key.verification_key().to_jwk()["x"].as_str().expect("x")).expect("b64");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&x.try_into().expect("32")).expect("key");
    let (mut registry, token, device, now) = setup(key);
    let (input, sig) = split(&token);
    let sig = ed25519_dalek::Signature::from_slice(&sig).expect("64 bytes");
    let mut g = c.benchmark_group("verify_eddsa");
    g.bench_function("bare_signature", |b| {
        b.iter(|| vk.verify(black_box(input), black_box(&sig)).is_ok())
    });
    g.bench_function("registry_verify_warm", |b| {
        b.iter(|| registry.verify(black_box(&token), &device, now).is_ok())
    });
    g.finish();
}

fn es256(c: &mut Criterion) {
    let key = SigningKey::p256_from_scalar(&[3; 32]).expect("scalar");
    let jwk = key.verification_key().to_jwk();
    let mut sec1 = vec![4u8];
    sec1.extend(B64.decode(jwk["x"].as_str().expect("x")).expect("b64"));
    sec1.extend(B64.decode(jwk["y"].as_str().expect("y")).expect("b64"));
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).expect("key");
    let (mut registry, token, device, now) = setup(key);
    let (input, sig) = split(&token);
    let sig = p256::ecdsa::Signature::from_slice(&sig).expect("64 bytes");
    let mut g = c.benchmark_group("verify_es256");
    g.bench_function("bare_signature", |b| {
        b.iter(|| {
            p256::ecdsa::signature::Verifier::verify(&vk, black_box(input), black_box(&sig)).is_ok()
        })
    });
    g.bench_function("registry_verify_warm", |b| {
        b.iter(|| registry.verify(black_box(&token), &device, now).is_ok())
    });
    g.finish();
}

criterion_group!(benches, eddsa, es256);
criterion_main!(benches);

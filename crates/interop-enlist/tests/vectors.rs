//! Known-answer vectors of test-vectors/enlist (see its README for their sources).

mod common;

use interop_enlist::*;
use serde_json::Value;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../test-vectors/enlist/thumbprints.json"
    ))
    .expect("vector file");
    serde_json::from_str(&text).expect("JSON")
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

#[test]
fn cnf_jkt_of_x25519_noise_keys() {
    let v = vectors();
    let list = v["x25519_jkt"].as_array().expect("list");
    assert!(!list.is_empty());
    for case in list {
        let key = hex32(case["public_key_hex"].as_str().expect("hex"));
        let jkt = Thumbprint::of_x25519(&key);
        assert_eq!(jkt.as_str(), case["jkt"].as_str().expect("jkt"), "{}", case["comment"]);
        assert_eq!(Thumbprint::parse(jkt.as_str()), Some(jkt));
    }
}

#[test]
fn ed25519_kid_is_the_rfc8037_thumbprint() {
    use base64::Engine as _;
    let v = vectors();
    let case = &v["ed25519_kid"][0];
    let seed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(case["seed_b64url"].as_str().expect("seed"))
        .expect("base64");
    let key = SigningKey::ed25519_from_seed(&seed.try_into().expect("32 bytes"));
    let jwk = key.verification_key().to_jwk();
    assert_eq!(jwk["x"], case["x_b64url"]);
    assert_eq!(key.kid(), case["thumbprint"].as_str().expect("thumbprint"));
}

#[test]
fn rsa_test_key_imports_and_round_trips() {
    let key = common::rsa_test_key();
    assert_eq!(key.alg(), Alg::RS256);
    let der = key.to_pkcs8_der().expect("export");
    let again = SigningKey::rsa_from_pkcs8_der(&der).expect("import");
    assert_eq!(again.kid(), key.kid());
    assert!(SigningKey::rsa_from_pkcs8_der(&der[..100]).is_err());
    let p256 = SigningKey::p256_from_scalar(&[3; 32]).expect("scalar");
    assert!(SigningKey::rsa_from_pkcs8_der(&p256.to_pkcs8_der().expect("der")).is_err());
    assert!(SigningKey::p256_from_scalar(&[0; 32]).is_err(), "zero scalar");
    assert!(SigningKey::p256_from_scalar(&[0xff; 32]).is_err(), "scalar above the order");
}

#[test]
fn provider_documents() {
    let d = DiscoveryDocument::for_issuer("https://id.example.org", vec![Alg::EdDSA, Alg::ES256]);
    let j = d.to_json();
    for field in [
        "issuer",
        "jwks_uri",
        "authorization_endpoint",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ] {
        assert!(j.get(field).is_some(), "{field}");
    }
    assert_eq!(j["jwks_uri"], "https://id.example.org/jwks.json");
    assert_eq!(j["id_token_signing_alg_values_supported"], serde_json::json!(["EdDSA", "ES256"]));

    let ring = KeyRing::new(SigningKey::p256_from_scalar(&[3; 32]).expect("scalar"));
    let jwks = ring.jwks(UnixTime::from_secs(0));
    let k = &jwks["keys"][0];
    assert_eq!(
        (k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str()),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    assert_eq!(k["use"], "sig");
    assert!(k.get("d").is_none(), "no private members");
    let dbg = format!("{:?}", ring.current());
    assert!(dbg.contains(ring.current().kid()) && dbg.contains("ES256"), "{dbg}");
}

#[test]
fn issuer_configuration_is_checked() {
    assert!(TokenIssuer::new("http://id.example.org", "gk", UrlPolicy::HttpsOnly).is_err());
    assert!(TokenIssuer::new("http://127.0.0.1:9000", "gk", UrlPolicy::DevLoopbackHttp).is_ok());
    let i = TokenIssuer::new("https://id.example.org", "gk", UrlPolicy::HttpsOnly).expect("issuer");
    assert!(i.clone().with_lifetime(std::time::Duration::from_secs(7200)).is_err());
    let ring = KeyRing::new(SigningKey::ed25519_from_seed(&[1; 32]));
    let dev = Thumbprint::of_x25519(&[1; 32]);
    let now = UnixTime::from_secs(1);
    assert!(i.issue(&ring, "", &dev, now, &mut common::rng(1)).is_err(), "empty subject");
    let t = i.issue(&ring, "bob", &dev, now, &mut common::rng(1)).expect("token");
    let parsed = UnverifiedToken::parse(&t).expect("parse");
    assert_eq!(
        (parsed.alg(), parsed.kid(), parsed.issuer_hint()),
        (Alg::EdDSA, ring.current().kid(), Ok("https://id.example.org"))
    );
}

#[test]
fn eddsa_token_vector() {
    use base64::Engine as _;
    use interop_enlist::cache::{FetchKind, FetchResponse, HttpResponse};
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../test-vectors/enlist/token-eddsa.json"
    ))
    .expect("vector file");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let s = |k: &str| v[k].as_str().expect("string").to_owned();
    let seed =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s("seed_b64url")).expect("b64");
    let key = SigningKey::ed25519_from_seed(&seed.try_into().expect("32 bytes"));
    assert_eq!(key.verification_key().to_jwk(), v["jwk"]);
    let token = sign_raw(&key, s("header").as_bytes(), s("claims").as_bytes()).expect("sign");
    assert_eq!(token, s("token"), "deterministic Ed25519 reproduces the token");

    let device = Thumbprint::of_x25519(&hex32(&s("device_public_key_hex")));
    let issuer = "https://id.example.org";
    // Keys fetched shortly before the token's times (they stay usable for 24 h).
    let fetched = UnixTime::from_secs(1_799_990_000);
    let mut registry = Registry::new(GatekeeperConfig::new(&s("audience")));
    let entry = ProviderEntry::new(
        issuer,
        "example",
        "https://id.example.org/push",
        "https://m.example.org/",
    );
    registry.upsert(entry, fetched).expect("entry");
    while let Some(req) = registry.poll_fetch(fetched) {
        let body = match req.kind {
            FetchKind::Discovery => {
                DiscoveryDocument::for_issuer(issuer, vec![Alg::EdDSA]).to_json()
            }
            FetchKind::Jwks => serde_json::json!({ "keys": [v["jwk"].clone()] }),
        };
        let ok =
            HttpResponse { status: 200, cache_control: None, body: body.to_string().into_bytes() };
        let response = FetchResponse { ticket: req.ticket, result: Ok(ok) };
        registry.handle_fetch(fetched, response).expect("fetch");
    }
    for at in v["accepted_at"].as_array().expect("list") {
        let now = UnixTime::from_secs(at.as_u64().expect("time"));
        let who = registry.verify(&token, &device, now).expect("accepted");
        assert_eq!(who.key(), (issuer, "alice@id.example.org"));
    }
    for case in v["refused_at"].as_array().expect("list") {
        let now = UnixTime::from_secs(case[0].as_u64().expect("time"));
        let err = registry.verify(&token, &device, now).expect_err("refused");
        assert_eq!(err.refusal().map(Refusal::as_str), case[1].as_str());
    }
}

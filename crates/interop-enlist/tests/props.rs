//! Untrusted tokens never panic, and any change to a signed token is refused.

mod common;

use common::*;
use interop_enlist::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
        let _ = UnverifiedToken::parse(&s);
    }

    #[test]
    fn arbitrary_dotted_base64_never_panics(parts in prop::collection::vec("[A-Za-z0-9_=+/-]{0,80}", 0..5)) {
        let t = parts.join(".");
        if let Ok(p) = UnverifiedToken::parse(&t) {
            let _ = p.issuer_hint();
        }
    }

    #[test]
    fn every_mutation_of_a_valid_token_is_refused(
        edits in prop::collection::vec((any::<prop::sample::Index>(), "[A-Za-z0-9_.=-]"), 1..4)
    ) {
        let mut w = World::ed25519();
        let token = w.token();
        let mut bytes = token.clone().into_bytes();
        for (at, ch) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = ch.as_bytes()[0];
        }
        let mutated = String::from_utf8(bytes).expect("ASCII");
        prop_assume!(mutated != token);
        prop_assert!(w.refusal(&mutated, &device()).is_some());
    }
}

fn jwk_strategy() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::sample::select(vec!["OKP", "EC", "RSA", "oct", "x"]),
        prop::sample::select(vec!["Ed25519", "X25519", "P-256", "P-384", ""]),
        prop::collection::vec("[A-Za-z0-9_-]{0,700}", 4),
        prop::option::of(prop::sample::select(vec!["EdDSA", "ES256", "RS256", "HS256"])),
        prop::option::of("[a-z]{0,8}"),
    )
        .prop_map(|(kty, crv, v, alg, kid)| {
            let mut j = serde_json::json!({"kty": kty, "crv": crv, "x": v[0], "y": v[1], "n": v[2], "e": v[3]});
            if let Some(a) = alg {
                j["alg"] = a.into();
            }
            if let Some(k) = kid {
                j["kid"] = k.into();
            }
            j
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_jwks_never_panic_and_never_lose_good_keys(keys in prop::collection::vec(jwk_strategy(), 0..6)) {
        use interop_enlist::cache::{FetchKind, FetchResponse, HttpResponse};
        let mut w = World::ed25519();
        w.advance(3600);
        while let Some(req) = w.registry.poll_fetch(w.now) {
            let body = match req.kind {
                FetchKind::Discovery => DiscoveryDocument::for_issuer(ISSUER, vec![Alg::EdDSA]).to_json(),
                FetchKind::Jwks => serde_json::json!({ "keys": keys.clone() }),
            };
            let ok = HttpResponse { status: 200, cache_control: None, body: body.to_string().into_bytes() };
            let now = w.now;
            let _ = w.registry.handle_fetch(now, FetchResponse { ticket: req.ticket, result: Ok(ok) });
        }
        // Either the random set replaced the keys (then the honest kid is unknown) or it was
        // refused and the last good keys still verify; never anything else.
        let t = w.token();
        let r = w.refusal(&t, &device());
        prop_assert!(r.is_none() || r == Some(Refusal::UnknownKid), "{r:?}");
    }
}

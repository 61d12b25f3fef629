//! The table of hostile tokens: each is refused, with exactly the right reason.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use interop_enlist::*;
use serde_json::{Value, json};

type Case = (&'static str, fn(&mut World) -> (String, Thumbprint), Refusal);

fn b64(s: &str) -> String {
    B64.encode(s)
}

/// `header.claims.signature` from raw JSON texts, signed with the world's current key.
fn raw(w: &World, header: &str, claims: &str) -> String {
    sign_raw(w.providers[0].ring.current(), header.as_bytes(), claims.as_bytes()).expect("sign")
}

fn with_claims(w: &mut World, f: fn(&mut Value)) -> (String, Thumbprint) {
    let mut c = w.claims();
    f(&mut c);
    (w.sign(&w.header(), &c), device())
}

fn with_header(w: &mut World, f: fn(&mut Value)) -> (String, Thumbprint) {
    let mut h = w.header();
    f(&mut h);
    (w.sign(&h, &w.claims()), device())
}

fn attacker() -> SigningKey {
    SigningKey::ed25519_from_seed(&[0xa7; 32])
}

fn cases() -> Vec<Case> {
    use Claim::*;
    use Refusal::*;
    vec![
        // -- shape --
        (
            "oversized token",
            |w| {
                let mut c = w.claims();
                c["pad"] = Value::String("x".repeat(MAX_TOKEN_LEN));
                (w.sign(&w.header(), &c), device())
            },
            TooLarge,
        ),
        (
            "two parts",
            |w| {
                let t = w.token();
                (t.rsplit_once('.').expect("3 parts").0.to_owned(), device())
            },
            Malformed,
        ),
        ("four parts", |w| (format!("{}.AAAA", w.token()), device()), Malformed),
        (
            "alg none with an empty signature",
            |w| {
                let h = b64(r#"{"alg":"none","typ":"JWT"}"#);
                (format!("{h}.{}.", b64(&w.claims().to_string())), device())
            },
            Malformed,
        ),
        (
            "padded base64 in the claims",
            |w| {
                let t = w.token();
                let mut p: Vec<&str> = t.split('.').collect();
                let padded = format!("{}==", p[1]);
                p[1] = &padded;
                (p.join("."), device())
            },
            BadBase64,
        ),
        (
            "standard-alphabet base64 in the signature",
            |w| {
                let t = w.token();
                let (rest, sig) = t.rsplit_once('.').expect("3 parts");
                (format!("{rest}.+/{}", &sig[2..]), device())
            },
            BadBase64,
        ),
        (
            "header is not JSON",
            |w| (format!("{}.{}.AAAA", b64("alg=EdDSA"), b64(&w.claims().to_string())), device()),
            BadJson,
        ),
        (
            "claims are a JSON array",
            |w| (raw(w, &w.header().to_string(), "[1,2]"), device()),
            BadJson,
        ),
        (
            "duplicate sub in the claims",
            |w| {
                let c =
                    w.claims().to_string().replacen('{', r#"{"sub":"mallory@id.example.org","#, 1);
                (raw(w, &w.header().to_string(), &c), device())
            },
            DuplicateKey,
        ),
        (
            "duplicate alg in the header",
            |w| {
                let h = w.header().to_string().replacen('{', r#"{"alg":"none","#, 1);
                (raw(w, &h, &w.claims().to_string()), device())
            },
            DuplicateKey,
        ),
        // -- header --
        (
            "alg none with a signature",
            |w| {
                let h = json!({"alg": "none", "typ": "JWT", "kid": w.header()["kid"]});
                (raw(w, &h.to_string(), &w.claims().to_string()), device())
            },
            AlgNone,
        ),
        ("alg NoNe", |w| with_header(w, |h| h["alg"] = "NoNe".into()), AlgNone),
        (
            "HS256 keyed with the public key",
            |w| {
                let k = w.providers[0].ring.current();
                let secret = k.verification_key().to_jwk().to_string();
                let mut h = w.header();
                h["alg"] = "HS256".into();
                let input = format!("{}.{}", b64(&h.to_string()), b64(&w.claims().to_string()));
                let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
                let sig = jsonwebtoken::crypto::sign(
                    input.as_bytes(),
                    &key,
                    jsonwebtoken::Algorithm::HS256,
                )
                .expect("hmac");
                (format!("{input}.{sig}"), device())
            },
            AlgSymmetric,
        ),
        (
            "PS256 is not in the profile",
            |w| with_header(w, |h| h["alg"] = "PS256".into()),
            AlgUnsupported,
        ),
        (
            "alg missing",
            |w| {
                with_header(w, |h| {
                    h.as_object_mut().expect("object").remove("alg");
                })
            },
            AlgUnsupported,
        ),
        ("crit header", |w| with_header(w, |h| h["crit"] = json!(["exp"])), CriticalHeader),
        ("typ at+jwt", |w| with_header(w, |h| h["typ"] = "at+jwt".into()), BadType),
        (
            "kid missing",
            |w| {
                with_header(w, |h| {
                    h.as_object_mut().expect("object").remove("kid");
                })
            },
            MissingKid,
        ),
        // -- provider --
        (
            "iss with a trailing slash",
            |w| with_claims(w, |c| c["iss"] = "https://id.example.org/".into()),
            UnknownIssuer,
        ),
        (
            "iss of another registered provider, signed with this one's key",
            |w| {
                w.add_provider(OTHER_ISSUER, "other", SigningKey::ed25519_from_seed(&[2; 32]));
                with_claims(w, |c| c["iss"] = OTHER_ISSUER.into())
            },
            UnknownKid,
        ),
        (
            "iss missing",
            |w| {
                with_claims(w, |c| {
                    c.as_object_mut().expect("object").remove("iss");
                })
            },
            MissingClaim(Iss),
        ),
        (
            "iss not a string",
            |w| with_claims(w, |c| c["iss"] = json!(["https://id.example.org"])),
            InvalidClaim(Iss),
        ),
        (
            "provider disabled",
            |w| {
                assert!(w.registry.set_enabled(ISSUER, false));
                (w.token(), device())
            },
            ProviderDisabled,
        ),
        (
            "ES256 not on the provider's allow-list",
            |w| {
                let es = SigningKey::p256_from_scalar(&[3; 32]).expect("scalar");
                let h = json!({"alg": "ES256", "typ": "JWT", "kid": es.kid()});
                (sign_compact(&es, &h, &w.claims()).expect("sign"), device())
            },
            AlgNotAllowed,
        ),
        // -- keys --
        ("unknown kid", |w| with_header(w, |h| h["kid"] = "no-such-key".into()), UnknownKid),
        (
            "jku to the attacker's keys (ignored, never fetched)",
            |w| {
                let a = attacker();
                let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": a.kid(), "jku": "https://evil.example/jwks.json"});
                (sign_compact(&a, &h, &w.claims()).expect("sign"), device())
            },
            UnknownKid,
        ),
        (
            "x5u to the attacker (ignored, never fetched)",
            |w| {
                let a = attacker();
                let h = json!({"alg": "EdDSA", "typ": "JWT", "kid": a.kid(), "x5u": "https://evil.example/cert.pem"});
                (sign_compact(&a, &h, &w.claims()).expect("sign"), device())
            },
            UnknownKid,
        ),
        (
            "embedded jwk of the attacker with the provider's kid (ignored)",
            |w| {
                let a = attacker();
                let mut h = w.header();
                h["jwk"] = a.verification_key().to_jwk();
                (sign_compact(&a, &h, &w.claims()).expect("sign"), device())
            },
            BadSignature,
        ),
        (
            "kid of another of the provider's keys (wrong kid)",
            |w| {
                let next = SigningKey::ed25519_from_seed(&[4; 32]);
                let kid = next.kid().to_owned();
                w.provider().ring.stage(next);
                w.advance(3600);
                w.pump();
                let mut h = w.header();
                h["kid"] = kid.into();
                (w.sign(&h, &w.claims()), device())
            },
            BadSignature,
        ),
        (
            "RS256 header with the kid of an Ed25519 key",
            |w| with_header(w, |h| h["alg"] = "RS256".into()),
            KeyAlgMismatch,
        ),
        (
            "claims changed after signing",
            |w| {
                let t = w.token();
                let p: Vec<&str> = t.split('.').collect();
                let mut c = w.claims();
                c["sub"] = "mallory@id.example.org".into();
                (format!("{}.{}.{}", p[0], b64(&c.to_string()), p[2]), device())
            },
            BadSignature,
        ),
        (
            "signature of 32 bytes",
            |w| {
                let t = w.token();
                let (rest, sig) = t.rsplit_once('.').expect("3 parts");
                let short = B64.decode(sig).expect("base64")[..32].to_vec();
                (format!("{rest}.{}", B64.encode(short)), device())
            },
            BadSignature,
        ),
        (
            "signed by the attacker with the provider's kid",
            |w| (sign_compact(&attacker(), &w.header(), &w.claims()).expect("sign"), device()),
            BadSignature,
        ),
        (
            "key removed from the JWKS",
            |w| {
                let old = w.token();
                let now = w.now;
                w.provider().ring.rotate(
                    SigningKey::ed25519_from_seed(&[5; 32]),
                    now,
                    std::time::Duration::from_secs(60),
                );
                w.advance(120);
                let now = w.now;
                w.provider().ring.prune(now);
                w.advance(3600);
                w.pump();
                (old, device())
            },
            UnknownKid,
        ),
        // -- claims --
        (
            "sub missing",
            |w| {
                with_claims(w, |c| {
                    c.as_object_mut().expect("object").remove("sub");
                })
            },
            MissingClaim(Sub),
        ),
        (
            "aud missing",
            |w| {
                with_claims(w, |c| {
                    c.as_object_mut().expect("object").remove("aud");
                })
            },
            MissingClaim(Aud),
        ),
        (
            "exp missing",
            |w| {
                with_claims(w, |c| {
                    c.as_object_mut().expect("object").remove("exp");
                })
            },
            MissingClaim(Exp),
        ),
        (
            "iat missing",
            |w| {
                with_claims(w, |c| {
                    c.as_object_mut().expect("object").remove("iat");
                })
            },
            MissingClaim(Iat),
        ),
        (
            "jti missing",
            |w| {
                with_claims(w, |c| {
                    c.as_object_mut().expect("object").remove("jti");
                })
            },
            MissingClaim(Jti),
        ),
        (
            "cnf missing",
            |w| {
                with_claims(w, |c| {
                    c.as_object_mut().expect("object").remove("cnf");
                })
            },
            MissingClaim(Cnf),
        ),
        (
            "exp as a string",
            |w| with_claims(w, |c| c["exp"] = json!("1800000600")),
            InvalidClaim(Exp),
        ),
        (
            "exp with a fraction",
            |w| with_claims(w, |c| c["exp"] = json!(1_800_000_600.5)),
            InvalidClaim(Exp),
        ),
        ("nbf negative", |w| with_claims(w, |c| c["nbf"] = json!(-1)), InvalidClaim(Nbf)),
        ("aud a number", |w| with_claims(w, |c| c["aud"] = json!(7)), InvalidClaim(Aud)),
        (
            "cnf without jkt",
            |w| with_claims(w, |c| c["cnf"] = json!({"jwk": {"kty": "OKP"}})),
            InvalidClaim(Cnf),
        ),
        (
            "cnf.jkt not a SHA-256 thumbprint",
            |w| with_claims(w, |c| c["cnf"] = json!({"jkt": "AAAA"})),
            InvalidClaim(Cnf),
        ),
        ("wrong aud", |w| with_claims(w, |c| c["aud"] = "other-gatekeeper".into()), WrongAudience),
        (
            "aud array without us",
            |w| with_claims(w, |c| c["aud"] = json!(["a", "b"])),
            WrongAudience,
        ),
        (
            "expired beyond the leeway",
            |w| {
                let t = w.token();
                w.advance(600 + 30);
                (t, device())
            },
            Expired,
        ),
        ("not yet valid", |w| with_claims(w, |c| c["nbf"] = json!(T0 + 31)), NotYetValid),
        (
            "issued in the future",
            |w| {
                with_claims(w, |c| {
                    c["iat"] = json!(T0 + 120);
                    c["exp"] = json!(T0 + 600);
                })
            },
            IssuedInFuture,
        ),
        (
            "lifetime of two hours",
            |w| with_claims(w, |c| c["exp"] = json!(T0 + 7200)),
            LifetimeTooLong,
        ),
        (
            "exp before iat",
            |w| {
                with_claims(w, |c| {
                    c["iat"] = json!(T0 + 20);
                    c["exp"] = json!(T0 + 10);
                })
            },
            LifetimeTooLong,
        ),
        (
            "sub with a control character",
            |w| with_claims(w, |c| c["sub"] = "alice\u{0}@x".into()),
            BadSubject,
        ),
        ("sub empty", |w| with_claims(w, |c| c["sub"] = "".into()), BadSubject),
        (
            "sub with a right-to-left override",
            |w| with_claims(w, |c| c["sub"] = "alice\u{202E}gro.elpmaxe".into()),
            BadSubject,
        ),
        (
            "sub with a zero-width space",
            |w| with_claims(w, |c| c["sub"] = "al\u{200B}ice".into()),
            BadSubject,
        ),
        (
            "sub with a trailing space",
            |w| with_claims(w, |c| c["sub"] = "alice ".into()),
            BadSubject,
        ),
        ("sub of 257 bytes", |w| with_claims(w, |c| c["sub"] = "a".repeat(257).into()), BadSubject),
        (
            "cnf.jkt of another device",
            |w| {
                with_claims(w, |c| {
                    c["cnf"] = json!({"jkt": Thumbprint::of_x25519(&OTHER_DEVICE).as_str()});
                })
            },
            KeyBindingMismatch,
        ),
        (
            "valid token presented with another device key",
            |w| (w.token(), Thumbprint::of_x25519(&OTHER_DEVICE)),
            KeyBindingMismatch,
        ),
    ]
}

#[test]
fn hostile_tokens_are_refused_with_the_right_reason() {
    let cases = cases();
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for (name, make, want) in cases {
        let mut w = World::ed25519();
        // The control: the same world accepts an honest token.
        let honest = w.token();
        assert!(w.verify(&honest, &device()).is_ok(), "{name}: control token refused");
        let (token, binding) = make(&mut w);
        let got = w.refusal(&token, &binding);
        if got != Some(want) {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
        // Nothing named in a token is ever fetched.
        w.pump();
        assert!(
            w.fetches.iter().all(|f| !f.url.contains("evil")),
            "{name}: fetched a URL from a token"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn boundaries_that_are_accepted() {
    let mut w = World::ed25519();
    let t = w.token();
    // Expired by the clock but within the 30 s leeway.
    w.advance(600 + 29);
    assert!(w.verify(&t, &device()).is_ok());

    let mut w = World::ed25519();
    let mut c = w.claims();
    c["aud"] = json!(["someone-else", AUD]);
    c["nbf"] = json!(T0 + 30);
    c["extra"] = json!({"nested": [1, 2, {"k": "v"}]});
    let mut h = w.header();
    h["jku"] = "https://evil.example/jwks.json".into();
    let t = w.sign(&h, &c);
    let who =
        w.verify(&t, &device()).expect("aud array containing us, nbf within leeway, jku ignored");
    assert_eq!(who.key(), (ISSUER, "alice@id.example.org"));
    assert_eq!(who.integrator_id, "example");
    w.pump();
    assert!(w.fetches.iter().all(|f| !f.url.contains("evil")));
}

#[test]
fn a_token_is_reusable_by_its_key_on_many_connections_until_it_expires() {
    let mut w = World::ed25519();
    let t = w.token();
    for _ in 0..5 {
        assert!(w.verify(&t, &device()).is_ok());
        w.advance(60);
    }
    assert_eq!(
        w.refusal(&t, &Thumbprint::of_x25519(&OTHER_DEVICE)),
        Some(Refusal::KeyBindingMismatch)
    );
    w.advance(600);
    assert_eq!(w.refusal(&t, &device()), Some(Refusal::Expired));
}

#[test]
fn identities_are_namespaced_by_issuer() {
    let mut w = World::ed25519();
    let other_key = SigningKey::ed25519_from_seed(&[2; 32]);
    w.add_provider(OTHER_ISSUER, "other", other_key);
    let a = w.verify(&w.token(), &device()).expect("first provider");
    let other = TokenIssuer::new(OTHER_ISSUER, AUD, UrlPolicy::HttpsOnly)
        .expect("issuer")
        .issue(&w.providers[1].ring, "alice@id.example.org", &device(), w.now, &mut rng(2))
        .expect("issue");
    let b = w.verify(&other, &device()).expect("second provider");
    assert_eq!(a.token.subject, b.token.subject);
    assert_ne!(a.key(), b.key());
    assert_eq!(b.integrator_id, "other");
}

#[test]
fn every_algorithm_of_the_profile_verifies() {
    let mut w = World::new(rsa_test_key());
    let t = w.token();
    assert_eq!(UnverifiedToken::parse(&t).expect("parse").alg(), Alg::RS256);
    assert!(w.verify(&t, &device()).is_ok());

    let es = SigningKey::p256_from_scalar(&[3; 32]).expect("scalar");
    let mut w = World::new(es);
    let mut entry = w.registry.provider(ISSUER).expect("registered").clone();
    entry.allowed_algs = vec![Alg::ES256];
    let now = w.now;
    w.registry.upsert(entry, now).expect("update");
    let t = w.token();
    assert!(w.verify(&t, &device()).is_ok());
}

#[test]
fn refusal_codes_are_distinct_and_content_free() {
    use std::collections::HashSet;
    let mut seen = HashSet::new();
    for (_, _, r) in cases() {
        let code = r.as_str();
        assert!(
            code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{code}"
        );
        seen.insert((code, r));
    }
    let codes: HashSet<&str> = seen.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes.len(), seen.len(), "two refusals share a code");
    let err = Error::TokenRefused(Refusal::Expired);
    assert_eq!(err.to_string(), "token refused: expired");
}

#[test]
fn split_resolve_then_verify_matches_verify() {
    let mut w = World::ed25519();
    let t = w.token();
    let parsed = UnverifiedToken::parse(&t).expect("parse");
    let now = w.now;
    let resolved = w.registry.resolve(&parsed, now).expect("resolve");
    let policy = w.registry.config().policy.clone();
    let v =
        policy.verify(&parsed, &resolved.issuer, &resolved.key, &device(), now).expect("verify");
    let whole = w.verify(&t, &device()).expect("verify");
    assert_eq!(v, whole.token);
    assert_eq!(resolved.integrator_id, whole.integrator_id);
    // The split path refuses the same way.
    let other = Thumbprint::of_x25519(&OTHER_DEVICE);
    let r = policy.verify(&parsed, &resolved.issuer, &resolved.key, &other, now);
    assert_eq!(r.err(), Some(Refusal::KeyBindingMismatch));
    let r = policy.verify(&parsed, "https://elsewhere.example", &resolved.key, &device(), now);
    assert_eq!(r.err(), Some(Refusal::WrongIssuer));
}

/// DER-encodes a raw `r ‖ s` ECDSA signature (what some libraries emit by mistake).
fn der(raw: &[u8]) -> Vec<u8> {
    let int = |x: &[u8]| {
        let x: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
        let mut v = if x.first().is_some_and(|b| b & 0x80 != 0) { vec![0] } else { vec![] };
        v.extend(x);
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let body = [int(&raw[..32]), int(&raw[32..])].concat();
    [vec![0x30, body.len() as u8], body].concat()
}

#[test]
fn ecdsa_and_rsa_specific_forgeries() {
    let es = SigningKey::p256_from_scalar(&[3; 32]).expect("scalar");
    let mut w = World::new(es);
    let mut entry = w.registry.provider(ISSUER).expect("registered").clone();
    entry.allowed_algs = vec![Alg::ES256];
    let now = w.now;
    w.registry.upsert(entry, now).expect("update");
    let t = w.token();
    assert!(w.verify(&t, &device()).is_ok());
    let (rest, sig) = t.rsplit_once('.').expect("three parts");
    let raw = B64.decode(sig).expect("base64");
    let der_token = format!("{rest}.{}", B64.encode(der(&raw)));
    assert_eq!(w.refusal(&der_token, &device()), Some(Refusal::BadSignature), "DER signature");
    let zero_token = format!("{rest}.{}", B64.encode([0u8; 64]));
    assert_eq!(w.refusal(&zero_token, &device()), Some(Refusal::BadSignature), "r = s = 0");
    // An RS256 token against this ES256-only provider.
    let rs = rsa_test_key();
    let h = json!({"alg": "RS256", "typ": "JWT", "kid": w.header()["kid"]});
    let t = sign_compact(&rs, &h, &w.claims()).expect("sign");
    assert_eq!(w.refusal(&t, &device()), Some(Refusal::AlgNotAllowed));
}

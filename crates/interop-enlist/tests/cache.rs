//! JWKS cache behaviour under a fake clock and a fake network: refresh, Cache-Control
//! bounds, stale-while-error then fail closed, unknown-kid cooldown, rotation.

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use interop_enlist::cache::{FetchFailure, FetchKind, FetchResponse, HttpResponse, Ticket};
use interop_enlist::*;
use serde_json::json;

const HOUR: u64 = 3600;

#[test]
fn first_fetch_goes_through_discovery_then_jwks() {
    let w = World::ed25519();
    let kinds: Vec<_> = w.fetches.iter().map(|f| (f.kind, f.url.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (FetchKind::Discovery, "https://id.example.org/.well-known/openid-configuration"),
            (FetchKind::Jwks, "https://id.example.org/jwks.json"),
        ]
    );
    assert_eq!(w.fetches[0].max_body, 64 * 1024);
}

#[test]
fn before_the_first_fetch_keys_are_unavailable() {
    let mut registry = Registry::new(GatekeeperConfig::new(AUD));
    let now = UnixTime::from_secs(T0);
    let entry = ProviderEntry::new(
        ISSUER,
        "example",
        "https://id.example.org/push",
        "https://m.example.org/",
    );
    registry.upsert(entry, now).expect("entry");
    let w = World::ed25519();
    let t = w.token();
    assert_eq!(
        registry.verify(&t, &device(), now).err().and_then(|e| e.refusal()),
        Some(Refusal::KeysUnavailable)
    );
    assert_eq!(registry.poll_timeout(), Some(now), "the first fetch is due immediately");
}

#[test]
fn periodic_refresh_honours_cache_control_within_bounds() {
    // (Cache-Control, expected interval in seconds): default 1 h, clamped to [5 min, 24 h].
    let cases: &[(Option<&str>, u64)] = &[
        (None, HOUR),
        (Some("max-age=7200"), 7200),
        (Some("public, max-age=600, must-revalidate"), 600),
        (Some("max-age=5"), 300),
        (Some("no-store"), 300),
        (Some("no-cache, max-age=9000"), 300),
        (Some("max-age=999999999999999999999999"), 86_400),
        (Some("max-age=\"900\""), 900),
        (Some("max-age=-1"), HOUR),
        (Some("max-age=abc"), HOUR),
        (Some("MAX-AGE=1200"), 1200),
    ];
    for (cc, want) in cases {
        let mut w = World::ed25519();
        w.provider().cache_control = cc.map(str::to_owned);
        // The first JWKS response was served without the header; force one more fetch.
        w.advance(HOUR);
        assert_eq!(w.pump(), 2, "{cc:?}: discovery and JWKS refreshed at +1 h");
        let last = w.now;
        assert_eq!(w.registry.poll_timeout(), Some(last + Duration::from_secs(*want)), "{cc:?}");
        w.advance(want - 1);
        assert_eq!(w.pump(), 0, "{cc:?}: nothing before the interval");
        w.advance(1);
        assert!(w.pump() >= 1, "{cc:?}: refresh at the interval");
    }
}

#[test]
fn stale_while_error_then_fail_closed() {
    let mut w = World::ed25519();
    let fetched_at = w.now;
    w.provider().serve = Serve::Down;
    // 23 h of failures: backoff grows 10 s, 20 s, ... capped at 5 min; keys still served.
    let mut attempts = 0;
    while w.now < fetched_at + Duration::from_secs(23 * HOUR) {
        attempts += w.pump();
        let t = w.token();
        assert!(
            w.verify(&t, &device()).is_ok(),
            "stale keys served at +{}s",
            w.now.since(fetched_at).as_secs()
        );
        w.advance(60);
    }
    // Bounded retries: one per 5 min at most once the backoff is capped.
    assert!(attempts <= 23 * 12 + 10, "{attempts} attempts");
    assert!(attempts >= 23 * 12 - 10, "{attempts} attempts");
    // At 24 h after the last success: fail closed.
    w.now = fetched_at + Duration::from_secs(24 * HOUR);
    w.pump();
    let t = w.token();
    assert_eq!(w.refusal(&t, &device()), Some(Refusal::KeysUnavailable));
    // The provider recovers: the next retry restores service.
    w.provider().serve = Serve::Ok;
    w.advance(300);
    w.pump();
    let t = w.token();
    assert!(w.verify(&t, &device()).is_ok());
}

#[test]
fn backoff_doubles_and_is_capped() {
    let mut w = World::ed25519();
    w.provider().serve = Serve::Status(503);
    w.advance(HOUR);
    let mut gaps = Vec::new();
    let mut last = w.now;
    for _ in 0..8 {
        assert_eq!(w.pump(), 1);
        let next = w.registry.poll_timeout().expect("a retry is scheduled");
        gaps.push(next.since(last).as_secs());
        w.now = next;
        last = next;
    }
    assert_eq!(gaps, [10, 20, 40, 80, 160, 300, 300, 300]);
}

#[test]
fn unknown_kid_flood_causes_a_handful_of_fetches() {
    let mut w = World::ed25519();
    let before = w.jwks_fetches();
    let mut refused = 0;
    // 10 minutes, 50 tokens with fresh unknown kids per second. The kid is looked up before
    // the signature is checked, so the flood needs no valid signatures.
    let claims = B64.encode(w.claims().to_string());
    for second in 0..600u64 {
        for i in 0..50u64 {
            let mut h = w.header();
            h["kid"] = json!(format!("flood-{second}-{i}"));
            let t = format!("{}.{claims}.AAAA", B64.encode(h.to_string()));
            assert_eq!(w.refusal(&t, &device()), Some(Refusal::UnknownKid));
            refused += 1;
            w.pump();
        }
        w.advance(1);
    }
    let forced = w.jwks_fetches() - before;
    assert_eq!(refused, 30_000);
    // One per 60 s cooldown, plus none periodic within 10 min (interval 1 h).
    assert!(forced <= 10, "{forced} fetches");
    assert!(forced >= 9, "{forced} fetches: the cooldown must still let refreshes through");
    let stats = w.registry.cache(ISSUER).expect("cache").stats();
    assert_eq!(stats.forced_refreshes as usize, forced);
}

#[test]
fn unknown_kid_refresh_picks_up_a_new_key_immediately() {
    let mut w = World::ed25519();
    let new_key = SigningKey::ed25519_from_seed(&[9; 32]);
    let now = w.now;
    w.provider().ring.rotate(new_key, now, Duration::from_secs(660));
    w.advance(5);
    let t = w.token();
    assert_eq!(w.refusal(&t, &device()), Some(Refusal::UnknownKid));
    assert_eq!(w.pump(), 1, "the unknown kid scheduled one JWKS fetch");
    assert!(w.verify(&t, &device()).is_ok(), "retry after the refresh succeeds");
}

#[test]
fn rotation_old_and_new_keys_both_verify_during_the_overlap() {
    let mut w = World::ed25519();
    let old_token = w.token();
    // Stage the next key: published before it signs anything.
    let next = SigningKey::ed25519_from_seed(&[8; 32]);
    w.provider().ring.stage(next);
    w.advance(HOUR);
    w.pump();
    // Promote it; the old key stays published for the token lifetime plus leeway.
    let now = w.now;
    assert!(w.provider().ring.promote(now, Duration::from_secs(630)));
    let old_token_late = {
        // A token the old key issued just before the switch.
        let mut c = w.claims();
        c["jti"] = json!("late");
        let old = SigningKey::ed25519_from_seed(&[1; 32]);
        sign_compact(&old, &json!({"alg": "EdDSA", "typ": "JWT", "kid": old.kid()}), &c)
            .expect("sign")
    };
    let new_token = w.token();
    let fetches = w.jwks_fetches();
    assert!(w.verify(&new_token, &device()).is_ok(), "new key known from staging");
    assert!(w.verify(&old_token_late, &device()).is_ok(), "old key still valid in the overlap");
    assert_eq!(w.jwks_fetches(), fetches, "no refetch needed: the key was staged");
    assert_eq!(w.refusal(&old_token, &device()), Some(Refusal::Expired));
    // After the overlap the provider drops the old key; the next refresh forgets it.
    w.advance(700);
    let now = w.now;
    w.provider().ring.prune(now);
    w.advance(HOUR);
    w.pump();
    let again = {
        let mut c = w.claims();
        c["jti"] = json!("after");
        let old = SigningKey::ed25519_from_seed(&[1; 32]);
        sign_compact(&old, &json!({"alg": "EdDSA", "typ": "JWT", "kid": old.kid()}), &c)
            .expect("sign")
    };
    assert_eq!(w.refusal(&again, &device()), Some(Refusal::UnknownKid));
    assert_eq!(w.provider().ring.jwks(now)["keys"].as_array().map(Vec::len), Some(1));
}

#[test]
fn refused_documents_keep_the_last_good_keys() {
    type Break = fn(&mut FakeProvider);
    let cases: &[(&str, Break, FetchProblem)] = &[
        (
            "private key in the JWKS",
            |p| {
                p.extra_keys.push(json!({"kty":"OKP","crv":"Ed25519","kid":"x","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}))
            },
            FetchProblem::PrivateKeyPublished,
        ),
        (
            "duplicate kid",
            |p| {
                let k = p.ring.current().verification_key().to_jwk();
                p.extra_keys.push(k);
            },
            FetchProblem::DuplicateKid,
        ),
        (
            "weak RSA key",
            |p| p.extra_keys.push(json!({"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"})),
            FetchProblem::InvalidKey,
        ),
        (
            "too many keys",
            |p| {
                for i in 0..16u8 {
                    let k = SigningKey::ed25519_from_seed(&[100 + i; 32]);
                    p.extra_keys.push(k.verification_key().to_jwk());
                }
            },
            FetchProblem::TooManyKeys,
        ),
    ];
    for (name, breaker, want) in cases {
        let mut w = World::ed25519();
        breaker(w.provider());
        w.advance(HOUR);
        w.pump();
        assert_eq!(w.problems, [*want], "{name}");
        let t = w.token();
        assert!(w.verify(&t, &device()).is_ok(), "{name}: last good keys kept");
    }
}

#[test]
fn foreign_keys_are_skipped_not_fatal() {
    let mut w = World::ed25519();
    w.provider().extra_keys.push(json!({"kty":"OKP","crv":"X25519","kid":"ecdh","x":"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}));
    w.provider().extra_keys.push(json!({"kty":"EC","crv":"P-384","kid":"p384","x":"AA","y":"AA"}));
    w.provider().extra_keys.push(json!({"kty":"oct","kid":"hmac","k":"c2VjcmV0"}));
    w.advance(HOUR);
    w.pump();
    let stats = w.registry.cache(ISSUER).expect("cache").stats();
    assert_eq!(stats.failures, 1, "a symmetric key ('k') is private material: refused");
    w.provider().extra_keys.pop();
    w.advance(300);
    w.pump();
    assert_eq!(
        w.registry.cache(ISSUER).expect("cache").stats().failures,
        1,
        "X25519 and P-384 skipped"
    );
}

#[test]
fn discovery_is_checked() {
    let now = UnixTime::from_secs(T0);
    let doc = |issuer: &str, jwks: &str| {
        json!({"issuer": issuer, "jwks_uri": jwks}).to_string().into_bytes()
    };
    let cases: &[(Vec<u8>, FetchProblem)] = &[
        (doc("https://evil.example", "https://id.example.org/jwks.json"), FetchProblem::IssuerMismatch),
        (doc(ISSUER, "http://id.example.org/jwks.json"), FetchProblem::InsecureUrl(UrlProblem::InsecureScheme)),
        (doc(ISSUER, "https://169.254.169.254/latest"), FetchProblem::InsecureUrl(UrlProblem::NonPublicHost)),
        (br#"{"issuer":"https://id.example.org"}"#.to_vec(), FetchProblem::MissingField),
        (br#"{"issuer":"https://id.example.org","issuer":"https://id.example.org","jwks_uri":"https://a.example/"}"#.to_vec(), FetchProblem::BadJson),
        (b"<html>".to_vec(), FetchProblem::BadJson),
    ];
    for (body, want) in cases {
        let mut cache = JwksCache::new(
            ISSUER,
            "https://id.example.org/.well-known/openid-configuration",
            UrlPolicy::HttpsOnly,
            CacheConfig::default(),
            now,
        )
        .expect("cache");
        let req = cache.poll_fetch(now).expect("due");
        let resp = FetchResponse {
            ticket: req.ticket,
            result: Ok(HttpResponse { status: 200, cache_control: None, body: body.clone() }),
        };
        match cache.handle_fetch(now, resp) {
            Err(Error::BadProviderDocument(p)) => assert_eq!(p, *want),
            other => panic!("{want:?}: {other:?}"),
        }
        assert!(cache.poll_fetch(now).is_none(), "backing off");
    }
}

#[test]
fn fetch_failures_and_protocol_misuse() {
    let now = UnixTime::from_secs(T0);
    let mut cache = JwksCache::new(
        ISSUER,
        "https://id.example.org/.well-known/openid-configuration",
        UrlPolicy::HttpsOnly,
        CacheConfig::default(),
        now,
    )
    .expect("cache");
    let req = cache.poll_fetch(now).expect("due");
    assert!(cache.poll_fetch(now).is_none(), "one fetch in flight");
    assert_eq!(cache.poll_timeout(), None);
    let stray =
        FetchResponse { ticket: Ticket(req.ticket.0 + 1), result: Err(FetchFailure::Timeout) };
    assert!(matches!(cache.handle_fetch(now, stray), Err(Error::UnexpectedResponse)));
    let big = FetchResponse {
        ticket: req.ticket,
        result: Ok(HttpResponse {
            status: 200,
            cache_control: None,
            body: vec![b' '; 64 * 1024 + 1],
        }),
    };
    assert!(matches!(
        cache.handle_fetch(now, big),
        Err(Error::BadProviderDocument(FetchProblem::Failed(FetchFailure::TooLarge)))
    ));
    assert!(!cache.has_usable_keys(now));
    // Plain http discovery only in dev mode, only to loopback.
    assert!(
        JwksCache::new(
            ISSUER,
            "http://id.example.org/",
            UrlPolicy::HttpsOnly,
            CacheConfig::default(),
            now
        )
        .is_err()
    );
    assert!(
        JwksCache::new(
            ISSUER,
            "http://127.0.0.1:8080/",
            UrlPolicy::DevLoopbackHttp,
            CacheConfig::default(),
            now
        )
        .is_ok()
    );
}

#[test]
fn registry_refuses_bad_entries() {
    let now = UnixTime::from_secs(T0);
    let mut r = Registry::new(GatekeeperConfig::new(AUD));
    let good = ProviderEntry::new(
        ISSUER,
        "example",
        "https://id.example.org/push",
        "https://m.example.org/",
    );
    let mut e = good.clone();
    e.push_endpoint = "http://id.example.org/push".into();
    assert!(matches!(r.upsert(e, now), Err(Error::InsecureUrl(UrlProblem::InsecureScheme))));
    let mut e = good.clone();
    e.integrator_id = "Example!".into();
    assert!(matches!(r.upsert(e, now), Err(Error::InvalidConfig(_))));
    let mut e = good.clone();
    e.allowed_algs.clear();
    assert!(matches!(r.upsert(e, now), Err(Error::InvalidConfig(_))));
    assert!(r.upsert(good, now).is_ok());
    assert!(!r.set_enabled("https://nobody.example", false));
}

#[test]
fn removing_a_provider_refuses_its_tokens_and_drops_its_fetches() {
    let mut w = World::ed25519();
    w.add_provider(OTHER_ISSUER, "other", SigningKey::ed25519_from_seed(&[2; 32]));
    assert_eq!(w.registry.providers().count(), 2);
    w.advance(HOUR);
    let req = w.registry.poll_fetch(w.now).expect("refresh due");
    assert_eq!(req.issuer, ISSUER, "providers are polled in registration order");
    assert!(w.registry.remove(&req.issuer));
    assert!(!w.registry.remove(&req.issuer));
    let now = w.now;
    let late = FetchResponse { ticket: req.ticket, result: Err(FetchFailure::Timeout) };
    assert!(matches!(w.registry.handle_fetch(now, late), Err(Error::UnexpectedResponse)));
    let t = w.token();
    assert_eq!(w.refusal(&t, &device()), Some(Refusal::UnknownIssuer));
    assert_eq!(w.registry.providers().count(), 1);
}

/// A seeded random schedule of outages (some longer than the maximum stale age), rotations
/// and clock jumps (each longer than the largest retry delay). Safety: a token is never
/// accepted from another device, and keys are never served beyond the maximum stale age.
/// Liveness: whenever the provider is up, an honest token is accepted, after at most one
/// refresh.
#[test]
fn random_schedules_keep_safety_and_liveness() {
    use rand::{Rng as _, SeedableRng as _};
    let (mut accepted, mut refreshed, mut closed) = (0, 0, 0);
    for seed in 0..6u64 {
        let mut r = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let mut w = World::ed25519();
        let mut last_success = w.now;
        let mut outage_left = 0u32;
        let mut next_seed = 50u8;
        for step in 0..300 {
            w.advance(r.random_range(301..7200));
            match r.random_range(0..12) {
                0 if outage_left == 0 => outage_left = r.random_range(1..50),
                1 => {
                    let now = w.now;
                    next_seed = next_seed.wrapping_add(1);
                    let k = SigningKey::ed25519_from_seed(&[next_seed; 32]);
                    w.provider().ring.rotate(k, now, Duration::from_secs(630));
                }
                2 => {
                    let now = w.now;
                    w.provider().ring.prune(now);
                }
                _ => {}
            }
            let up = outage_left == 0;
            w.provider().serve = if up { Serve::Ok } else { Serve::Down };
            outage_left = outage_left.saturating_sub(1);
            let (problems, fetches) = (w.problems.len(), w.fetches.len());
            w.pump();
            if up && w.fetches.len() > fetches && w.problems.len() == problems {
                last_success = w.now;
            }
            let t = w.token();
            let stale = w.now.since(last_success) >= Duration::from_secs(86_400);
            let other = Thumbprint::of_x25519(&OTHER_DEVICE);
            let ctx = format!("seed {seed} step {step}");
            assert!(w.refusal(&t, &other).is_some(), "{ctx}: accepted from another device");
            match w.refusal(&t, &device()) {
                None => {
                    assert!(!stale, "{ctx}: served keys beyond max stale");
                    accepted += 1;
                }
                Some(Refusal::UnknownKid) => {
                    w.pump();
                    if up {
                        assert_eq!(w.refusal(&t, &device()), None, "{ctx}: liveness");
                        last_success = w.now;
                        refreshed += 1;
                    }
                }
                Some(Refusal::KeysUnavailable) => {
                    assert!(stale && !up, "{ctx}: failed closed too early");
                    closed += 1;
                }
                Some(other) => panic!("{ctx}: honest token refused: {other:?}"),
            }
        }
    }
    // The schedule reached every branch.
    assert!(accepted > 100 && refreshed > 5 && closed > 5, "{accepted} {refreshed} {closed}");
}

#[test]
fn inconsistent_cache_bounds_are_refused() {
    let now = UnixTime::from_secs(T0);
    let url = "https://id.example.org/.well-known/openid-configuration";
    let bad = [
        CacheConfig {
            min_refresh: Duration::from_secs(10),
            max_refresh: Duration::from_secs(5),
            ..CacheConfig::default()
        },
        CacheConfig { retry_base: Duration::from_secs(600), ..CacheConfig::default() },
        CacheConfig { max_keys: 0, ..CacheConfig::default() },
    ];
    for config in bad {
        assert!(matches!(
            JwksCache::new(ISSUER, url, UrlPolicy::HttpsOnly, config, now),
            Err(Error::InvalidConfig(_))
        ));
    }
}

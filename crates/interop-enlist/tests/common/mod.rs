//! Shared fixtures: a provider (key ring, discovery) and a gatekeeper registry, joined by a
//! fake network and driven with a fake clock.
#![allow(dead_code)]

use std::time::Duration;

use interop_enlist::cache::{FetchKind, FetchRequest, FetchResponse, HttpResponse};
use interop_enlist::*;
use rand::SeedableRng as _;
use rand_chacha::ChaCha20Rng;
use serde_json::{Value, json};

pub const ISSUER: &str = "https://id.example.org";
pub const OTHER_ISSUER: &str = "https://other.example.net";
pub const AUD: &str = "gatekeeper.example";
pub const T0: u64 = 1_800_000_000;
pub const DEVICE: [u8; 32] = [0x11; 32];
pub const OTHER_DEVICE: [u8; 32] = [0x22; 32];

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn device() -> Thumbprint {
    Thumbprint::of_x25519(&DEVICE)
}

/// How the fake provider answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serve {
    Ok,
    Status(u16),
    Down,
}

/// One provider on the fake network.
pub struct FakeProvider {
    pub issuer: String,
    pub ring: KeyRing,
    pub extra_keys: Vec<Value>,
    pub serve: Serve,
    pub cache_control: Option<String>,
}

impl FakeProvider {
    pub fn new(issuer: &str, key: SigningKey) -> Self {
        Self {
            issuer: issuer.into(),
            ring: KeyRing::new(key),
            extra_keys: vec![],
            serve: Serve::Ok,
            cache_control: None,
        }
    }

    fn answer(
        &self,
        req: &FetchRequest,
        now: UnixTime,
    ) -> std::result::Result<HttpResponse, cache::FetchFailure> {
        match &self.serve {
            Serve::Down => return Err(cache::FetchFailure::Network),
            Serve::Status(s) => {
                return Ok(HttpResponse { status: *s, cache_control: None, body: vec![] });
            }
            Serve::Ok => {}
        }
        let body = match req.kind {
            FetchKind::Discovery => {
                DiscoveryDocument::for_issuer(&self.issuer, Alg::ALL.to_vec()).to_json()
            }
            FetchKind::Jwks => {
                let mut jwks = self.ring.jwks(now);
                if let Some(keys) = jwks["keys"].as_array_mut() {
                    keys.extend(self.extra_keys.iter().cloned());
                }
                jwks
            }
        };
        Ok(HttpResponse {
            status: 200,
            cache_control: self.cache_control.clone(),
            body: body.to_string().into_bytes(),
        })
    }
}

/// A gatekeeper registry and the providers it fetches from.
pub struct World {
    pub now: UnixTime,
    pub registry: Registry,
    pub providers: Vec<FakeProvider>,
    pub fetches: Vec<FetchRequest>,
    pub problems: Vec<FetchProblem>,
}

impl World {
    /// One provider (`ISSUER`, allowing EdDSA and RS256) signing with `key`; keys fetched.
    pub fn new(key: SigningKey) -> Self {
        let now = UnixTime::from_secs(T0);
        let mut w = Self {
            now,
            registry: Registry::new(GatekeeperConfig::new(AUD)),
            providers: vec![FakeProvider::new(ISSUER, key)],
            fetches: vec![],
            problems: vec![],
        };
        let mut entry = ProviderEntry::new(
            ISSUER,
            "example",
            "https://id.example.org/push",
            "https://media.example.org/",
        );
        entry.allowed_algs = vec![Alg::EdDSA, Alg::RS256];
        w.registry.upsert(entry, now).expect("valid entry");
        w.pump();
        w
    }

    pub fn ed25519() -> Self {
        Self::new(SigningKey::ed25519_from_seed(&[1; 32]))
    }

    pub fn add_provider(&mut self, issuer: &str, integrator: &str, key: SigningKey) {
        let entry = ProviderEntry::new(
            issuer,
            integrator,
            &format!("{issuer}/push"),
            &format!("{issuer}/media/"),
        );
        self.registry.upsert(entry, self.now).expect("valid entry");
        self.providers.push(FakeProvider::new(issuer, key));
        self.pump();
    }

    pub fn provider(&mut self) -> &mut FakeProvider {
        &mut self.providers[0]
    }

    /// Serves every fetch that is due now. Returns how many were served.
    pub fn pump(&mut self) -> usize {
        let mut n = 0;
        while let Some(req) = self.registry.poll_fetch(self.now) {
            let p = self
                .providers
                .iter()
                .find(|p| p.issuer == req.issuer)
                .expect("fetch for a known provider");
            let result = p.answer(&req, self.now);
            self.fetches.push(req.clone());
            let response = FetchResponse { ticket: req.ticket, result };
            match self.registry.handle_fetch(self.now, response) {
                Ok(()) => {}
                Err(Error::BadProviderDocument(p)) => self.problems.push(p),
                Err(e) => panic!("unexpected {e:?}"),
            }
            n += 1;
            assert!(n < 100, "fetch loop");
        }
        n
    }

    pub fn advance(&mut self, secs: u64) {
        self.now = self.now + Duration::from_secs(secs);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.fetches.iter().filter(|f| f.kind == FetchKind::Jwks).count()
    }

    pub fn verify(
        &mut self,
        token: &str,
        binding: &Thumbprint,
    ) -> std::result::Result<VerifiedIdentity, Error> {
        let now = self.now;
        self.registry.verify(token, binding, now)
    }

    pub fn refusal(&mut self, token: &str, binding: &Thumbprint) -> Option<Refusal> {
        match self.verify(token, binding) {
            Ok(_) => None,
            Err(e) => Some(e.refusal().expect("a refusal, not another error")),
        }
    }

    /// A valid token from the first provider's current key, issued now.
    pub fn token(&self) -> String {
        TokenIssuer::new(ISSUER, AUD, UrlPolicy::HttpsOnly)
            .expect("issuer")
            .issue(
                &self.providers[0].ring,
                "alice@id.example.org",
                &device(),
                self.now,
                &mut rng(1),
            )
            .expect("issue")
    }

    /// The claims of [`World::token`] as JSON, to mutate.
    pub fn claims(&self) -> Value {
        let t = self.now.as_secs();
        json!({
            "iss": ISSUER, "sub": "alice@id.example.org", "aud": AUD,
            "iat": t, "nbf": t, "exp": t + 600, "jti": "j1",
            "cnf": {"jkt": device().as_str()},
        })
    }

    /// The header of the current key.
    pub fn header(&self) -> Value {
        let k = self.providers[0].ring.current();
        json!({"alg": k.alg().as_str(), "typ": "JWT", "kid": k.kid()})
    }

    /// Signs `header` and `claims` with the first provider's current key.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        sign_compact(self.providers[0].ring.current(), header, claims).expect("sign")
    }
}

/// The RSA test key of test-vectors/enlist.
pub fn rsa_test_key() -> SigningKey {
    use base64::Engine as _;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../test-vectors/enlist/rsa2048-test-key.pk8.b64"
    ))
    .expect("test vector present");
    let der = base64::engine::general_purpose::STANDARD.decode(text.trim()).expect("base64");
    SigningKey::rsa_from_pkcs8_der(&der).expect("RSA test key")
}

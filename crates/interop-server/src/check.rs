//! `interop-server provider check`: the self-check a provider runs before going live.
//!
//! It looks at the provider from the outside, the way a gatekeeper will, and reports one
//! [`Finding`] per property, each failure with what to fix:
//!
//! | finding | passes when |
//! |---|---|
//! | URLs | the issuer, push endpoint and media base URL meet the gatekeeper's URL rules (https; plain http to loopback only with `--dev`) |
//! | addresses | (not in dev mode) every host resolves to public addresses only: the gatekeeper dials nothing else |
//! | discovery | `<issuer>/.well-known/openid-configuration` answers 200 with `application/json`, and interop-enlist's [`Registry`] accepts it (issuer equal, `jwks_uri` acceptable) |
//! | JWKS | the `jwks_uri` answers 200 with `application/json`, and the registry accepts the key set |
//! | sample token | a token issued for a throwaway device key verifies with [`Registry::verify`] and that key's thumbprint, exactly as the gatekeeper verifies tokens (needs a test account: reference provider API, section 7.2) |
//! | push | a wake-up signed with the push secret registered at the gatekeeper is answered 2xx (or `410` when the push token is unknown to the provider); one signed with another secret, and one with a timestamp an hour old, are refused with 4xx |
//! | media | a test blob uploaded with the session downloads byte for byte with `Content-Type: application/octet-stream`, `Accept-Ranges: bytes`, `Cache-Control: ... immutable`; `Range: bytes=0-15` gives `206` with `Content-Range`; an unknown address is `404` |
//!
//! **What "the push endpoint answers" means.** The gatekeeper treats `2xx` as delivered and any
//! other `4xx` than `408`/`429` as a permanent refusal (PROTOCOL 7.1). So a signed wake-up must
//! get `2xx`, except that `410` is the right answer for a push token the provider does not
//! know (the check invents one when it has no session to get a real one). `401`/`403` mean the
//! signature was refused: the provider verifies with a different secret than the one the
//! gatekeeper signs with. Anything else, or nothing within 15 s (the gatekeeper's own timeout),
//! fails.
//!
//! Checks that need something the operator did not give (a test account, the push secret) are
//! reported as skipped, with what to pass to run them.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use interop_enlist::cache::{FetchFailure, FetchKind, FetchRequest, FetchResponse, HttpResponse};
use interop_enlist::{
    Error as EnlistError, FetchProblem, GatekeeperConfig, ProviderEntry, Refusal, Registry,
    Thumbprint, UnixTime, UrlPolicy, UrlProblem,
};
use interop_media::{AddressGuard, MediaBaseUrl, SchemePolicy};
use rand::Rng;
use sha2::Digest;

/// What to check and with which credentials.
#[derive(Clone)]
pub struct CheckConfig {
    /// The provider's issuer URL exactly as registered at the gatekeeper.
    pub issuer: String,
    /// The gatekeeper's audience id (tokens' `aud`).
    pub audience: String,
    /// The push endpoint registered at the gatekeeper (default `<issuer>/v1/push`).
    pub push_endpoint: Option<String>,
    /// The media base URL registered at the gatekeeper (default `<issuer>/media/`).
    pub media_base_url: Option<String>,
    /// The push secret registered at the gatekeeper (`whsec_...`); `None` skips the push checks.
    pub push_secret: Option<String>,
    /// A test account of the provider (username, password); `None` skips the sample token and
    /// the media checks.
    pub credentials: Option<(String, String)>,
    /// Create the test account first (reference provider API); an existing account is fine.
    pub create_account: bool,
    /// Extra trust anchors (PEM), e.g. a private CA of a staging setup.
    pub extra_roots: Vec<reqwest::Certificate>,
    /// Dev mode: plain http to loopback is acceptable, as for a gatekeeper in dev mode.
    pub dev: bool,
    /// Timeout of each request (the gatekeeper's is 15 s).
    pub timeout: Duration,
}

impl fmt::Debug for CheckConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

impl CheckConfig {
    /// Checks of `issuer` for the gatekeeper audience `gatekeeper`, with nothing else given.
    pub fn new(issuer: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: "gatekeeper".to_owned(),
            push_endpoint: None,
            media_base_url: None,
            push_secret: None,
            credentials: None,
            create_account: false,
            extra_roots: Vec::new(),
            dev: false,
            timeout: Duration::from_secs(15),
        }
    }

    fn base(&self) -> &str {
        self.issuer.trim_end_matches('/')
    }

    fn push_url(&self) -> String {
        self.push_endpoint.clone().unwrap_or_else(|| format!("{}/v1/push", self.base()))
    }

    fn media_url(&self) -> String {
        self.media_base_url.clone().unwrap_or_else(|| format!("{}/media/", self.base()))
    }

    fn policy(&self) -> UrlPolicy {
        if self.dev { UrlPolicy::DevLoopbackHttp } else { UrlPolicy::HttpsOnly }
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// As the gatekeeper needs it.
    Ok,
    /// Broken: the finding says what to fix.
    Fail,
    /// Not checked: the finding says what to pass to check it.
    Skip,
}

/// One property of the provider, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How it came out.
    pub outcome: Outcome,
    /// What was checked (and what was seen).
    pub what: String,
    /// What to fix (failures) or what to pass to check it (skips).
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Self {
        Self { outcome: Outcome::Ok, what: what.into(), fix: None }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { outcome: Outcome::Fail, what: what.into(), fix: Some(fix.into()) }
    }

    fn skip(what: impl Into<String>, why: impl Into<String>) -> Self {
        Self { outcome: Outcome::Skip, what: what.into(), fix: Some(why.into()) }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        };
        write!(f, "{label}: {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, " — {fix}")?;
        }
        Ok(())
    }
}

/// Whether no finding failed.
pub fn passed(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.outcome != Outcome::Fail)
}

fn unix_now() -> UnixTime {
    UnixTime::from(SystemTime::now())
}

fn unix_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Runs every check against the provider and returns the findings in order.
pub async fn run(config: &CheckConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(config.timeout);
    for root in &config.extra_roots {
        builder = builder.add_root_certificate(root.clone());
    }
    let http = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fail(
                format!("HTTP client: {e}"),
                "check the --ca-cert file (PEM certificates)",
            ));
            return out;
        }
    };
    let checker = Checker { config, http };

    if !checker.urls(&mut out) {
        return out;
    }
    let registry = checker.keys(&mut out).await;
    let session = checker.session(&mut out).await;
    let logged_in_needed = config.credentials.is_some();
    let push_token = match (&session, registry) {
        (Some(s), Some(mut registry)) => checker.sample_token(&mut out, &mut registry, s).await,
        (Some(_), None) => {
            out.push(Finding::skip(
                "sample token",
                "it can only be verified once the discovery document and the JWKS pass",
            ));
            None
        }
        (None, _) if logged_in_needed => {
            out.push(Finding::skip("sample token", "needs the login that failed above"));
            None
        }
        (None, _) => {
            out.push(Finding::skip(
                "sample token",
                "pass --username (and the password in INTEROP_PASSWORD) of a test account to \
                 check that issued tokens verify",
            ));
            None
        }
    };
    checker.push(&mut out, push_token.as_deref()).await;
    match &session {
        Some(s) => checker.media(&mut out, s).await,
        None if logged_in_needed => {
            out.push(Finding::skip("media host", "needs the login that failed above"));
        }
        None => out.push(Finding::skip(
            "media host",
            "pass --username (and INTEROP_PASSWORD) of a test account to upload a test blob",
        )),
    }
    out
}

struct Checker<'a> {
    config: &'a CheckConfig,
    http: reqwest::Client,
}

fn url_problem(p: UrlProblem) -> &'static str {
    match p {
        UrlProblem::Unparsable => "not an absolute URL",
        UrlProblem::InsecureScheme => "not https (plain http only to loopback in dev mode)",
        UrlProblem::Credentials => "carries a user name, password or fragment",
        UrlProblem::NonPublicHost => "names a loopback, private or otherwise non-public address",
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".to_owned()
    } else if e.is_connect() {
        // The source chain carries the interesting part (refused, TLS, DNS).
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    } else {
        e.to_string()
    }
}

impl Checker<'_> {
    /// The registered URLs against the gatekeeper's rules; false when nothing else can run.
    fn urls(&self, out: &mut Vec<Finding>) -> bool {
        let c = self.config;
        let policy = c.policy();
        let mut fine = true;
        if let Err(p) = policy.check(&c.issuer) {
            out.push(Finding::fail(
                format!("issuer {} is refused by the gatekeeper: {}", c.issuer, url_problem(p)),
                "serve the provider over https at a public DNS name (--dev accepts plain http \
                 on loopback, as a gatekeeper in dev mode does)",
            ));
            return false;
        }
        if let Err(p) = policy.check(&c.push_url()) {
            fine = false;
            out.push(Finding::fail(
                format!("push endpoint {} is refused: {}", c.push_url(), url_problem(p)),
                "register an https push endpoint at a public DNS name",
            ));
        }
        let scheme = if c.dev { SchemePolicy::AllowHttp } else { SchemePolicy::HttpsOnly };
        if let Err(e) = MediaBaseUrl::parse(&c.media_url(), scheme) {
            fine = false;
            out.push(Finding::fail(
                format!("media base URL {} is refused: {e}", c.media_url()),
                "register an https media base URL ending in `/`, without query or fragment",
            ));
        }
        if fine {
            out.push(Finding::ok(format!(
                "URLs: issuer {}, push endpoint {}, media base {}",
                c.issuer,
                c.push_url(),
                c.media_url()
            )));
        }
        true
    }

    /// Outside dev mode: every host must resolve to public addresses only (the gatekeeper's
    /// outbound client refuses the others).
    async fn addresses(&self, out: &mut Vec<Finding>, urls: &[String]) {
        if self.config.dev {
            return;
        }
        let guard = AddressGuard::strict();
        let mut hosts: Vec<(String, u16)> = urls
            .iter()
            .filter_map(|u| url::Url::parse(u).ok())
            .filter_map(|u| Some((u.host_str()?.to_owned(), u.port_or_known_default()?)))
            .collect();
        hosts.sort();
        hosts.dedup_by(|a, b| a.0 == b.0);
        for (host, port) in hosts {
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => {
                    let ips: Vec<_> = addrs.map(|a| a.ip()).collect();
                    match guard.check_resolved(&ips) {
                        Ok(()) => out.push(Finding::ok(format!(
                            "{host} resolves to public addresses only ({})",
                            ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                        ))),
                        Err(e) => out.push(Finding::fail(
                            format!("{host} resolves to a non-public address: {e}"),
                            "the gatekeeper dials public addresses only: publish public DNS \
                             records for the provider's hosts",
                        )),
                    }
                }
                Err(e) => out.push(Finding::fail(
                    format!("{host} does not resolve: {e}"),
                    "publish DNS records for the provider's hosts",
                )),
            }
        }
    }

    /// One GET as the gatekeeper performs it, plus what the report needs: the Content-Type, or
    /// why there was no response.
    async fn fetch(&self, request: &FetchRequest) -> (FetchResponse, Fetched) {
        let ticket = request.ticket;
        let fail = |f, why: String| {
            (
                FetchResponse { ticket, result: Err(f) },
                Fetched { content_type: None, error: Some(why) },
            )
        };
        let response = match self.http.get(&request.url).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return fail(FetchFailure::Timeout, describe(&e)),
            Err(e) => return fail(FetchFailure::Network, describe(&e)),
        };
        let status = response.status().as_u16();
        let header =
            |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let cache_control = header(reqwest::header::CACHE_CONTROL);
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let mut body = Vec::new();
        let mut response = response;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > request.max_body {
                        return fail(FetchFailure::TooLarge, "larger than 64 KiB".to_owned());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return fail(FetchFailure::Timeout, describe(&e)),
                Err(e) => return fail(FetchFailure::Network, describe(&e)),
            }
        }
        (
            FetchResponse { ticket, result: Ok(HttpResponse { status, cache_control, body }) },
            Fetched { content_type, error: None },
        )
    }

    /// Discovery and JWKS through interop-enlist's registry, as the gatekeeper fetches them.
    async fn keys(&self, out: &mut Vec<Finding>) -> Option<Registry> {
        let c = self.config;
        let mut gk = GatekeeperConfig::new(&c.audience);
        gk.url_policy = c.policy();
        let mut registry = Registry::new(gk);
        let entry = ProviderEntry::new(&c.issuer, "selfcheck", &c.push_url(), &c.media_url());
        if let Err(e) = registry.upsert(entry, unix_now()) {
            out.push(Finding::fail(
                format!("the gatekeeper would refuse to register this provider: {e}"),
                "fix the registered URLs (https, public hosts)",
            ));
            return None;
        }
        let mut jwks_url = None;
        let mut good = true;
        let mut rounds = 0;
        while let Some(request) = registry.poll_fetch(unix_now()) {
            rounds += 1;
            if rounds > 4 {
                break;
            }
            let (response, fetched) = self.fetch(&request).await;
            let content_type = fetched.content_type;
            let seen = match &response.result {
                Ok(r) => format!(
                    "{} answered {}{}",
                    request.url,
                    r.status,
                    r.cache_control
                        .as_ref()
                        .map(|cc| format!(", Cache-Control: {cc}"))
                        .unwrap_or_default()
                ),
                Err(f) => format!(
                    "{} {}: {}",
                    request.url,
                    failure(*f),
                    fetched.error.as_deref().unwrap_or("")
                ),
            };
            let name = match request.kind {
                FetchKind::Discovery => "discovery document",
                FetchKind::Jwks => "JWKS",
            };
            let ok_status = matches!(&response.result, Ok(r) if r.status == 200);
            match registry.handle_fetch(unix_now(), response) {
                Ok(()) => {
                    out.push(Finding::ok(format!("{name}: {seen}, accepted")));
                    if request.kind == FetchKind::Jwks {
                        jwks_url = Some(request.url.clone());
                    }
                }
                Err(e) => {
                    good = false;
                    let what = match &e {
                        EnlistError::BadProviderDocument(FetchProblem::Failed(_)) => {
                            format!("{name}: {seen}")
                        }
                        _ => format!("{name}: {seen}, refused: {e}"),
                    };
                    out.push(Finding::fail(what, fix_for(&e)));
                }
            }
            if ok_status && !content_type.as_deref().is_some_and(is_json) {
                good = false;
                out.push(Finding::fail(
                    format!(
                        "{name} is served as {}",
                        content_type.as_deref().unwrap_or("(no Content-Type)")
                    ),
                    "serve it with `Content-Type: application/json` (PROTOCOL 3.4)",
                ));
            }
        }
        let mut hosts = vec![c.issuer.clone(), c.push_url(), c.media_url()];
        hosts.extend(jwks_url);
        self.addresses(out, &hosts).await;
        if good && registry.cache(&c.issuer).is_some_and(|k| k.has_usable_keys(unix_now())) {
            Some(registry)
        } else {
            if good {
                out.push(Finding::fail(
                    "no usable signing keys after fetching discovery and JWKS",
                    "publish at least one Ed25519, P-256 or RSA verification key with a kid",
                ));
            }
            None
        }
    }

    async fn post_json(
        &self,
        path: &str,
        session: Option<&str>,
        body: serde_json::Value,
    ) -> Result<(u16, serde_json::Value), String> {
        let mut request = self.http.post(format!("{}{path}", self.config.base())).json(&body);
        if let Some(s) = session {
            request = request.bearer_auth(s);
        }
        let response = request.send().await.map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(serde_json::Value::Null)))
    }

    /// Logs in to the test account (creating it first on request): the session.
    async fn session(&self, out: &mut Vec<Finding>) -> Option<String> {
        let (username, password) = self.config.credentials.as_ref()?;
        let creds = serde_json::json!({ "username": username, "password": password });
        if self.config.create_account {
            match self.post_json("/v1/accounts", None, creds.clone()).await {
                Ok((201 | 409, _)) => {}
                Ok((status, body)) => out.push(Finding::fail(
                    format!(
                        "creating the test account: POST /v1/accounts answered {status} {body}"
                    ),
                    "pass an existing test account without --create",
                )),
                Err(e) => out.push(Finding::fail(
                    format!("creating the test account: {e}"),
                    "check that the provider is reachable",
                )),
            }
        }
        match self.post_json("/v1/sessions", None, creds).await {
            Ok((200, body)) => match body["session"].as_str() {
                Some(s) => Some(s.to_owned()),
                None => {
                    out.push(Finding::fail(
                        "login: POST /v1/sessions answered 200 without a session",
                        "answer {\"session\", \"expires_in\"} (PROTOCOL 7.2)",
                    ));
                    None
                }
            },
            Ok((status, body)) => {
                out.push(Finding::fail(
                    format!(
                        "login as the test account: POST /v1/sessions answered {status} {body}"
                    ),
                    "pass the username and password (INTEROP_PASSWORD) of an existing test \
                     account, or --create",
                ));
                None
            }
            Err(e) => {
                out.push(Finding::fail(
                    format!("login: {e}"),
                    "check that the provider is reachable",
                ));
                None
            }
        }
    }

    /// A token for a throwaway device key, verified as the gatekeeper verifies tokens: the
    /// push token issued with it.
    async fn sample_token(
        &self,
        out: &mut Vec<Finding>,
        registry: &mut Registry,
        session: &str,
    ) -> Option<String> {
        use base64::Engine;
        let device_key: [u8; 32] = rand::rng().random();
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(device_key);
        let body = serde_json::json!({ "device_key": encoded });
        let (jwt, push_token) = match self.post_json("/v1/tokens", Some(session), body).await {
            Ok((200, body)) => match (body["token"].as_str(), body["push_token"].as_str()) {
                (Some(t), p) => (t.to_owned(), p.map(str::to_owned)),
                (None, _) => {
                    out.push(Finding::fail(
                        "sample token: POST /v1/tokens answered 200 without a token",
                        "answer {\"token\", \"push_token\", \"expires_in\"} (PROTOCOL 7.2)",
                    ));
                    return None;
                }
            },
            Ok((status, body)) => {
                out.push(Finding::fail(
                    format!("sample token: POST /v1/tokens answered {status} {body}"),
                    "issue tokens to logged-in users for their device key (PROTOCOL 7.2)",
                ));
                return None;
            }
            Err(e) => {
                out.push(Finding::fail(
                    format!("sample token: {e}"),
                    "check that the provider is reachable",
                ));
                return None;
            }
        };
        let binding = Thumbprint::of_x25519(&device_key);
        let mut verified = registry.verify(&jwt, &binding, unix_now());
        // As the gatekeeper does: an unknown kid (or missing keys) refetches once.
        if matches!(
            verified.as_ref().err().and_then(EnlistError::refusal),
            Some(Refusal::UnknownKid | Refusal::KeysUnavailable)
        ) {
            while let Some(request) = registry.poll_fetch(unix_now()) {
                let (response, _) = self.fetch(&request).await;
                if registry.handle_fetch(unix_now(), response).is_err() {
                    break;
                }
            }
            verified = registry.verify(&jwt, &binding, unix_now());
        }
        match verified {
            Ok(who) => {
                let left = who.token.expires_at.as_secs().saturating_sub(unix_now().as_secs());
                out.push(Finding::ok(format!(
                    "sample token verifies as the gatekeeper verifies it (bound to the device \
                     key, audience {}, expires in {left} s)",
                    self.config.audience
                )));
                if push_token.is_none() {
                    out.push(Finding::fail(
                        "sample token: no push_token issued with it",
                        "issue an opaque push token per device with the token; clients enlist \
                         with it and the gatekeeper wakes the device with it",
                    ));
                }
                push_token
            }
            Err(e) => {
                let refusal = e.refusal();
                out.push(Finding::fail(
                    format!(
                        "sample token refused: {}",
                        refusal.map_or_else(|| e.to_string(), |r| r.as_str().to_owned())
                    ),
                    refusal.map_or("see the error", token_fix),
                ));
                None
            }
        }
    }

    async fn send_wake(
        &self,
        signer: &standardwebhooks::Webhook,
        push_token: &str,
        timestamp: i64,
    ) -> Result<(u16, String), Unanswered> {
        let body = crate::push::wake_body(push_token);
        let id = format!("msg_{}", hex::encode(rand::rng().random::<[u8; 12]>()));
        let signature = signer
            .sign(&id, timestamp, body.as_bytes())
            .map_err(|e| Unanswered { timeout: false, text: e.to_string() })?;
        let response = self
            .http
            .post(self.config.push_url())
            .header("content-type", "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &id)
            .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string())
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| Unanswered { timeout: e.is_timeout(), text: describe(&e) })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((status, text.chars().take(200).collect()))
    }

    /// Signed, forged and stale wake-ups at the push endpoint.
    async fn push(&self, out: &mut Vec<Finding>, known_token: Option<&str>) {
        let url = self.config.push_url();
        let Some(secret) = &self.config.push_secret else {
            out.push(Finding::skip(
                "push endpoint",
                "set INTEROP_PUSH_SECRET to the push secret registered at the gatekeeper to \
                 send signed test wake-ups",
            ));
            return;
        };
        let signer = match standardwebhooks::Webhook::new(secret) {
            Ok(s) => s,
            Err(_) => {
                out.push(Finding::fail(
                    "INTEROP_PUSH_SECRET is not a Standard Webhooks secret",
                    "use the secret as registered at the gatekeeper: `whsec_` + base64",
                ));
                return;
            }
        };
        let invented = format!("selfcheck-{}", hex::encode(rand::rng().random::<[u8; 16]>()));
        let token = known_token.unwrap_or(&invented);
        let now = unix_secs();
        match self.send_wake(&signer, token, now).await {
            Ok((status, _)) if (200..300).contains(&status) => out.push(Finding::ok(format!(
                "push endpoint {url} accepted a signed test wake-up ({status})"
            ))),
            Ok((410, _)) if known_token.is_none() => out.push(Finding::ok(format!(
                "push endpoint {url} answered a signed test wake-up for an unknown push token \
                 with 410 (the gatekeeper stops waking that device)"
            ))),
            Ok((410, _)) => out.push(Finding::fail(
                format!("push endpoint {url} answered 410 for the push token it just issued"),
                "look push tokens up where /v1/tokens stores them; 410 makes the gatekeeper \
                 stop waking the device",
            )),
            Ok((status @ (401 | 403), body)) => out.push(Finding::fail(
                format!("push endpoint {url} refused a correctly signed wake-up ({status} {body})"),
                "the provider verifies with another secret than the one registered at the \
                 gatekeeper (INTEROP_PUSH_SECRET): register the provider's secret again \
                 (`interop-server add-provider`), or give the provider the registered one; \
                 also check the provider's clock (timestamps more than 5 minutes off are refused)",
            )),
            Ok((status @ (404 | 405), _)) => out.push(Finding::fail(
                format!("push endpoint {url} answered {status}"),
                "serve POST at the registered push endpoint, or register the right \
                 --push-endpoint",
            )),
            Ok((status, body)) if (400..500).contains(&status) && status != 408 && status != 429 => {
                out.push(Finding::fail(
                    format!("push endpoint {url} refused a signed test wake-up ({status} {body})"),
                    "accept the wake-up body {\"type\":\"interop.wake.v1\",\"data\":{\"push_token\"}} \
                     with 2xx: the gatekeeper treats this answer as permanent and drops wake-ups",
                ))
            }
            Ok((status, body)) => out.push(Finding::fail(
                format!("push endpoint {url} failed a signed test wake-up ({status} {body})"),
                "answer 2xx once the wake-up is handled: the gatekeeper retries other answers \
                 and the device wakes late",
            )),
            Err(e) => {
                out.push(Finding::fail(format!("push endpoint {url}: {}", e.text), e.fix()));
                // The forged and stale wake-ups would go unanswered the same way.
                return;
            }
        }

        // A wake-up signed with another secret must be refused.
        let forger = standardwebhooks::Webhook::new(&format!("whsec_{}", {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(rand::rng().random::<[u8; 32]>())
        }));
        if let Ok(forger) = forger {
            match self.send_wake(&forger, token, now).await {
                Ok((status, _)) if (400..500).contains(&status) => out.push(Finding::ok(format!(
                    "push endpoint refuses a wake-up signed with another secret ({status})"
                ))),
                Ok((status, _)) => out.push(Finding::fail(
                    format!("push endpoint answered {status} to a wake-up with a wrong signature"),
                    "verify webhook-signature (HMAC-SHA256 over id.timestamp.body with the \
                     shared secret) and refuse a mismatch with 401",
                )),
                Err(e) => out.push(Finding::fail(
                    format!("push endpoint (forged wake-up): {}", e.text),
                    e.fix(),
                )),
            }
        }
        // A correctly signed but stale wake-up must be refused.
        match self.send_wake(&signer, token, now - 3600).await {
            Ok((status, _)) if (400..500).contains(&status) => out.push(Finding::ok(format!(
                "push endpoint refuses a wake-up timestamped an hour ago ({status})"
            ))),
            Ok((status, _)) => out.push(Finding::fail(
                format!("push endpoint answered {status} to a wake-up timestamped an hour ago"),
                "refuse webhook-timestamps more than 5 minutes off with 401 (replay protection)",
            )),
            Err(e) => out
                .push(Finding::fail(format!("push endpoint (stale wake-up): {}", e.text), e.fix())),
        }
    }

    /// Uploads a test blob with the session and fetches it as the gatekeeper's proxy and
    /// clients do.
    async fn media(&self, out: &mut Vec<Finding>, session: &str) {
        let base = self.config.media_url();
        // A valid encrypted-file length: whole 16-byte blocks plus the 10-byte MAC.
        let blob: Vec<u8> = (0..16 * 8 + 10).map(|_| rand::rng().random()).collect();
        let address = hex::encode(sha2::Sha256::digest(&blob));
        let url = format!("{base}{address}");
        match self.http.put(&url).bearer_auth(session).body(blob.clone()).send().await {
            Ok(r) if matches!(r.status().as_u16(), 200 | 201) => {
                out.push(Finding::ok(format!("media upload of a test blob ({})", r.status())));
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                out.push(Finding::fail(
                    format!("media upload: PUT {url} answered {status} {body}"),
                    "accept PUT <media base>/<sha256> with the user's session (PROTOCOL 6.6)",
                ));
                return;
            }
            Err(e) => {
                out.push(Finding::fail(
                    format!("media upload: {}", describe(&e)),
                    "check the media base URL",
                ));
                return;
            }
        }
        let whole = match self.http.get(&url).send().await {
            Ok(r) => r,
            Err(e) => {
                out.push(Finding::fail(
                    format!("media download: {}", describe(&e)),
                    "serve GET <media base>/<sha256> without authorisation",
                ));
                return;
            }
        };
        let status = whole.status().as_u16();
        let headers = whole.headers().clone();
        let bytes = whole.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        if status == 200 && bytes == blob {
            out.push(Finding::ok("media download returns the uploaded bytes (200)"));
        } else {
            out.push(Finding::fail(
                format!("media download answered {status} with {} bytes", bytes.len()),
                "serve the stored bytes unchanged at <media base>/<sha256>, without authorisation",
            ));
        }
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        let content_type = header(reqwest::header::CONTENT_TYPE);
        if content_type.eq_ignore_ascii_case("application/octet-stream") {
            out.push(Finding::ok("media Content-Type: application/octet-stream"));
        } else {
            out.push(Finding::fail(
                format!("media Content-Type is {content_type:?}"),
                "serve media as `Content-Type: application/octet-stream`",
            ));
        }
        let ranges = header(reqwest::header::ACCEPT_RANGES);
        if ranges.eq_ignore_ascii_case("bytes") {
            out.push(Finding::ok("media Accept-Ranges: bytes"));
        } else {
            out.push(Finding::fail(
                format!("media Accept-Ranges is {ranges:?}"),
                "send `Accept-Ranges: bytes` and honour one byte range",
            ));
        }
        let cache = header(reqwest::header::CACHE_CONTROL);
        if cache.split(',').any(|d| d.trim().eq_ignore_ascii_case("immutable")) {
            out.push(Finding::ok(format!("media Cache-Control: {cache}")));
        } else {
            out.push(Finding::fail(
                format!("media Cache-Control is {cache:?}"),
                "send `Cache-Control: public, max-age=31536000, immutable` (objects never change)",
            ));
        }
        match self.http.get(&url).header("range", "bytes=0-15").send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let range = r
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let part = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                let want = format!("bytes 0-15/{}", blob.len());
                if status == 206 && range == want && part == blob[..16] {
                    out.push(Finding::ok(format!("media Range request: 206, {range}")));
                } else {
                    out.push(Finding::fail(
                        format!(
                            "media Range `bytes=0-15` answered {status}, Content-Range {range:?}, \
                             {} bytes",
                            part.len()
                        ),
                        format!(
                            "answer one byte range with 206 and `Content-Range: {want}` (the \
                             gatekeeper's proxy passes ranges on; clients resume with them)"
                        ),
                    ));
                }
            }
            Err(e) => out.push(Finding::fail(
                format!("media Range request: {}", describe(&e)),
                "honour one byte range",
            )),
        }
        let unknown = format!("{base}{}", hex::encode(rand::rng().random::<[u8; 32]>()));
        match self.http.get(&unknown).send().await {
            Ok(r) if r.status().as_u16() == 404 => {
                out.push(Finding::ok("media: an unknown address is 404"));
            }
            Ok(r) => out.push(Finding::fail(
                format!("media: an unknown address answered {}", r.status()),
                "answer 404 for addresses that are not stored",
            )),
            Err(e) => out.push(Finding::fail(
                format!("media (unknown address): {}", describe(&e)),
                "answer 404 for addresses that are not stored",
            )),
        }
    }
}

/// A request that got no HTTP answer.
struct Unanswered {
    timeout: bool,
    text: String,
}

impl Unanswered {
    fn fix(&self) -> &'static str {
        if self.timeout {
            "answer within 15 s (the gatekeeper's timeout)"
        } else {
            "make the push endpoint reachable from the gatekeeper (connection, TLS certificate, DNS)"
        }
    }
}

/// What [`Checker::fetch`] saw besides the response.
struct Fetched {
    content_type: Option<String>,
    error: Option<String>,
}

fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn failure(f: FetchFailure) -> &'static str {
    match f {
        FetchFailure::Network => "could not be reached (connection, TLS or DNS failure)",
        FetchFailure::Timeout => "did not answer in time",
        FetchFailure::TooLarge => "is larger than 64 KiB",
    }
}

fn fix_for(e: &EnlistError) -> &'static str {
    let EnlistError::BadProviderDocument(problem) = e else {
        return "see the error";
    };
    match problem {
        FetchProblem::Failed(FetchFailure::Network) => {
            "make the URL reachable over https with a certificate from a public CA (or pass \
             --ca-cert for a private one)"
        }
        FetchProblem::Failed(FetchFailure::Timeout) => "answer within 15 s",
        FetchProblem::Failed(FetchFailure::TooLarge) => "keep the document under 64 KiB",
        FetchProblem::Status(s) if (300..400).contains(s) => {
            "serve the document at this URL: the gatekeeper does not follow redirects"
        }
        FetchProblem::Status(_) => "answer 200 with the document",
        FetchProblem::BadJson => "serve one JSON object without duplicate member names",
        FetchProblem::IssuerMismatch => {
            "make `issuer` in the discovery document exactly the registered issuer URL (same \
             scheme, host, port and trailing slash)"
        }
        FetchProblem::MissingField => "include `jwks_uri` (discovery) or `keys` (JWKS)",
        FetchProblem::InsecureUrl(_) => "make jwks_uri an https URL at a public host",
        FetchProblem::InvalidKey => {
            "fix the malformed or weak key (RSA keys need 2048-4096 bits, EC keys a point on \
             P-256, Ed25519 keys 32 bytes)"
        }
        FetchProblem::PrivateKeyPublished => {
            "remove private members (d, p, q, ...) from the JWKS now, and rotate the key: it \
             has been public"
        }
        FetchProblem::DuplicateKid => "give every key a unique kid",
        FetchProblem::TooManyKeys => "publish at most 16 usable keys",
        FetchProblem::NoUsableKeys => {
            "publish at least one Ed25519, P-256 or RSA key with a kid, `use` sig (if present)"
        }
        _ => "see PROTOCOL 3.4",
    }
}

fn token_fix(r: Refusal) -> &'static str {
    match r {
        Refusal::UnknownKid | Refusal::KeysUnavailable => {
            "publish the signing key in the JWKS before signing with it (and keep the old key \
             published until its tokens expire)"
        }
        Refusal::BadSignature | Refusal::KeyAlgMismatch => {
            "sign with the private key of the published key that has this kid, with its alg"
        }
        Refusal::WrongAudience | Refusal::MissingClaim(interop_enlist::Claim::Aud) => {
            "put the gatekeeper's audience id in `aud` (see --audience)"
        }
        Refusal::WrongIssuer | Refusal::UnknownIssuer => {
            "put exactly the registered issuer URL in `iss`"
        }
        Refusal::Expired | Refusal::NotYetValid | Refusal::IssuedInFuture => {
            "synchronise the provider's clock (NTP); set iat/nbf to now and exp a few minutes later"
        }
        Refusal::LifetimeTooLong => "issue tokens valid for at most 10 minutes",
        Refusal::KeyBindingMismatch | Refusal::MissingClaim(interop_enlist::Claim::Cnf) => {
            "set cnf.jkt to the RFC 7638 thumbprint of the device key sent to /v1/tokens"
        }
        Refusal::BadSubject => "use a user-visible identifier as `sub` (PROTOCOL 3.3)",
        Refusal::AlgNotAllowed | Refusal::AlgUnsupported | Refusal::AlgNone => {
            "sign with EdDSA, ES256 or RS256"
        }
        _ => "issue tokens as PROTOCOL 3.3 describes",
    }
}

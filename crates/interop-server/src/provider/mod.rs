//! The reference third-party provider server (`interop-server provider`): what a provider must
//! run next to its clients, small but real.
//!
//! | method and path | auth | what |
//! |---|---|---|
//! | `POST /v1/accounts` `{username, password}` | none | create a user (201; 409 taken) |
//! | `POST /v1/sessions` `{username, password}` | none | log in: `{session, expires_in}` (401 refused) |
//! | `POST /v1/tokens` `{device_key}` | session | the gatekeeper JWT for this device (`cnf.jkt` = thumbprint of the device's Noise key) and the device's opaque push token |
//! | `GET /.well-known/openid-configuration`, `GET /jwks.json` | none | discovery and keys |
//! | `POST /v1/admin/rotate-key` | admin token | rotate the signing key (old key stays published for the overlap) |
//! | `POST /v1/push` | Standard Webhooks signature | the gatekeeper's wake-ups (`interop.wake.v1`) |
//! | `GET /v1/wake?device_key=..` | session | long-poll: answers when the device has a pending wake-up (or after the poll time, with `false`) |
//! | `PUT /media/{sha256}` | session | upload an encrypted media file (content-addressed, immutable; see [`crate::media`]) |
//! | `GET /media/{sha256}` | none | download it (byte ranges) |
//!
//! Clients keep a long-poll open on `/v1/wake` while they have no gatekeeper connection; a
//! wake-up arriving while nobody polls stays pending until the next poll.
//!
//! The service runs over HTTPS ([`Provider::serve_tls`], rustls from PEM files, see [`tls`]);
//! plain http ([`Provider::serve`]) is for dev mode on loopback. Media uploads are bounded in
//! size ([`MediaLimits::host`]) and in time: a body that sends nothing for
//! [`MediaLimits::upload_idle`] is refused with `400`, one that takes longer than
//! [`MediaLimits::upload_total`] with `408`; nothing of either is stored.

pub mod store;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use interop_enlist::{
    Alg, DiscoveryDocument, KeyRing, SigningKey, Thumbprint, TokenIssuer, UnixTime, UrlPolicy,
};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

use self::store::{Login, ProviderStore};
use crate::{Error, Result};

/// Provider server settings.
#[derive(Clone)]
pub struct ProviderConfig {
    /// The issuer URL (`iss` of the tokens; the discovery document lives below it).
    pub issuer: String,
    /// The gatekeeper's audience id (`aud`).
    pub audience: String,
    /// Data directory (database, signing key).
    pub data_dir: PathBuf,
    /// Secret shared with the gatekeeper for push signatures (Standard Webhooks `whsec_...`).
    pub push_secret: String,
    /// Bearer token for the admin endpoints.
    pub admin_token: String,
    /// Plain http on loopback (dev mode).
    pub dev: bool,
    /// How long a long-poll waits before answering `false`.
    pub wake_poll: Duration,
    /// Lifetime of the gatekeeper tokens issued (default 600 s; the gatekeeper accepts at most
    /// one hour).
    pub token_lifetime: Option<Duration>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("data_dir", &self.data_dir)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

/// Limits of the provider's media host ([`Provider::open_with`]).
#[derive(Debug, Clone)]
pub struct MediaLimits {
    /// The host rules (size cap: 1 GiB by default).
    pub host: interop_media::HostLimits,
    /// An upload whose body sends nothing for this long is refused (default 30 s).
    pub upload_idle: Duration,
    /// An upload must be complete within this time (default 1 h).
    pub upload_total: Duration,
}

impl Default for MediaLimits {
    fn default() -> Self {
        Self {
            host: interop_media::HostLimits::default(),
            upload_idle: Duration::from_secs(30),
            upload_total: Duration::from_secs(3600),
        }
    }
}

/// How long a login session lasts.
const SESSION_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long push ids are remembered for replay protection (twice the signature tolerance).
const PUSH_ID_MEMORY: Duration = Duration::from_secs(10 * 60);
/// Most push ids remembered (bounded memory).
const MAX_PUSH_IDS: usize = 100_000;

fn now() -> SystemTime {
    SystemTime::now()
}

fn now_ms() -> i64 {
    now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Whether a wake-up is pending, and the waiters to notify.
type WakeSlot = (bool, Arc<Notify>);

struct Inner {
    config: ProviderConfig,
    media_limits: MediaLimits,
    store: ProviderStore,
    blobs: Arc<crate::media::BlobStore>,
    ring: Mutex<KeyRing>,
    issuer: TokenIssuer,
    signer: standardwebhooks::Webhook,
    /// Pending wake-ups and waiters per device key.
    wakes: Mutex<HashMap<[u8; 32], WakeSlot>>,
    /// Push ids seen recently, oldest first.
    seen: Mutex<VecDeque<(String, SystemTime)>>,
}

/// A running provider's shared state; build the HTTP service with [`Provider::router`].
#[derive(Clone)]
pub struct Provider(Arc<Inner>);

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("config", &self.0.config).finish_non_exhaustive()
    }
}

fn load_signing_key(path: &std::path::Path) -> Result<SigningKey> {
    let seed: [u8; 32] = match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| Error::Config(format!("{} is not a key file", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            write_secret(path, &seed)?;
            seed
        }
        Err(e) => return Err(e.into()),
    };
    Ok(SigningKey::ed25519_from_seed(&seed))
}

fn write_secret(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl Provider {
    /// Opens the provider's data directory (creating the database and the signing key on first
    /// start), with the default media limits.
    pub async fn open(config: ProviderConfig) -> Result<Self> {
        Self::open_with(config, MediaLimits::default()).await
    }

    /// [`open`](Self::open) with other media limits.
    pub async fn open_with(config: ProviderConfig, media_limits: MediaLimits) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let store = ProviderStore::open(&config.data_dir.join("provider.db")).await?;
        let blobs = Arc::new(crate::media::BlobStore::open(
            config.data_dir.join("media"),
            media_limits.host,
        )?);
        let key = load_signing_key(&config.data_dir.join("signing.key"))?;
        let policy = if config.dev { UrlPolicy::DevLoopbackHttp } else { UrlPolicy::HttpsOnly };
        let mut issuer = TokenIssuer::new(&config.issuer, &config.audience, policy)
            .map_err(|e| Error::Config(format!("issuer: {e}")))?;
        if let Some(lifetime) = config.token_lifetime {
            issuer = issuer
                .with_lifetime(lifetime)
                .map_err(|e| Error::Config(format!("token lifetime: {e}")))?;
        }
        let signer = standardwebhooks::Webhook::new(&config.push_secret).map_err(|_| {
            Error::Config("the push secret is not a Standard Webhooks secret".into())
        })?;
        Ok(Self(Arc::new(Inner {
            config,
            media_limits,
            store,
            blobs,
            ring: Mutex::new(KeyRing::new(key)),
            issuer,
            signer,
            wakes: Mutex::default(),
            seen: Mutex::default(),
        })))
    }

    /// Rotates the signing key: new tokens are signed with a fresh key; the old one stays in
    /// the JWKS for a token lifetime plus leeway so tokens already issued keep verifying.
    pub fn rotate_key(&self) -> Result<()> {
        let seed: [u8; 32] = rand::random();
        write_secret(&self.0.config.data_dir.join("signing.key"), &seed)?;
        let mut ring = self.0.ring.lock().expect("ring lock is never poisoned");
        ring.rotate(
            SigningKey::ed25519_from_seed(&seed),
            UnixTime::from(now()),
            Duration::from_secs(15 * 60),
        );
        Ok(())
    }

    /// The HTTP service.
    pub fn router(&self) -> axum::Router {
        // Media uploads need a login session of this provider; downloads are public (the bytes
        // are encrypted and the address is the hash of the encrypted file).
        let store = self.0.store.clone();
        let authorize: crate::media::Authorize = Arc::new(move |headers: HeaderMap| {
            let store = store.clone();
            Box::pin(async move {
                let Some(token) = bearer(&headers) else { return false };
                matches!(store.session_user(token, now_ms()).await, Ok(Some(_)))
            })
        });
        let limits = self.0.media_limits.clone();
        let media = crate::media::host_router(Arc::clone(&self.0.blobs), authorize).layer(
            axum::middleware::from_fn(move |request, next| {
                upload_time_limits(limits.clone(), request, next)
            }),
        );
        axum::Router::new()
            .route("/v1/accounts", post(create_account))
            .route("/v1/sessions", post(login))
            .route("/v1/tokens", post(token))
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks.json", get(jwks))
            .route("/v1/admin/rotate-key", post(rotate))
            .route("/v1/push", post(push))
            .route("/v1/wake", get(wake))
            .layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024))
            .with_state(self.clone())
            // After the 64 KiB body limit: media bodies are capped by the media host itself.
            .merge(media)
    }

    /// Serves the HTTP service on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        axum::serve(listener, self.router().into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }

    /// Serves the HTTP service over TLS on `listener` until `shutdown` resolves (see [`tls`]).
    pub async fn serve_tls(
        &self,
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let listener = tls::TlsListener::new(listener, acceptor)?;
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await?;
        Ok(())
    }

    fn wake_slot(&self, key: [u8; 32]) -> Arc<Notify> {
        let mut wakes = self.0.wakes.lock().expect("wake lock is never poisoned");
        Arc::clone(&wakes.entry(key).or_insert_with(|| (false, Arc::new(Notify::new()))).1)
    }

    /// Takes the device's pending wake-up, if any.
    fn take_wake(&self, key: &[u8; 32]) -> bool {
        let mut wakes = self.0.wakes.lock().expect("wake lock is never poisoned");
        wakes.get_mut(key).is_some_and(|(pending, _)| std::mem::take(pending))
    }

    fn set_wake(&self, key: [u8; 32]) {
        let notify = {
            let mut wakes = self.0.wakes.lock().expect("wake lock is never poisoned");
            let slot = wakes.entry(key).or_insert_with(|| (false, Arc::new(Notify::new())));
            slot.0 = true;
            Arc::clone(&slot.1)
        };
        notify.notify_waiters();
    }

    /// Records a push id; false if it was seen within the replay window.
    fn first_sighting(&self, id: &str) -> bool {
        let mut seen = self.0.seen.lock().expect("seen lock is never poisoned");
        let now = now();
        while seen
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at).unwrap_or_default() > PUSH_ID_MEMORY)
            || seen.len() >= MAX_PUSH_IDS
        {
            seen.pop_front();
        }
        if seen.iter().any(|(s, _)| s == id) {
            return false;
        }
        seen.push_back((id.to_owned(), now));
        true
    }
}

/// Bounds media uploads in time: the body may pause at most `upload_idle` between chunks and
/// must be complete within `upload_total`. Either way the body fails, the media host discards
/// the upload (nothing of it stays on disk), and the answer becomes `408 upload-timeout`.
/// Downloads pass untouched (their handler answers at once and streams).
async fn upload_time_limits(
    limits: MediaLimits,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use futures::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    if request.method() != axum::http::Method::PUT {
        return next.run(request).await;
    }
    let deadline = tokio::time::Instant::now() + limits.upload_total;
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&timed_out);
    let request = request.map(move |body| {
        let chunks = futures::stream::unfold(
            (body.into_data_stream(), flag, false),
            move |(mut chunks, flag, failed)| async move {
                if failed {
                    return None;
                }
                let wait = limits
                    .upload_idle
                    .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                match tokio::time::timeout(wait, chunks.next()).await {
                    Ok(Some(Ok(chunk))) => Some((Ok(chunk), (chunks, flag, false))),
                    Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), (chunks, flag, true))),
                    Ok(None) => None,
                    Err(_) => {
                        flag.store(true, Ordering::Relaxed);
                        let e =
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "upload too slow");
                        Some((Err(e), (chunks, flag, true)))
                    }
                }
            },
        );
        axum::body::Body::from_stream(chunks)
    });
    let response = next.run(request).await;
    if timed_out.load(Ordering::Relaxed) {
        return problem(StatusCode::REQUEST_TIMEOUT, "upload-timeout");
    }
    response
}

fn problem(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

async fn session_user(p: &Provider, headers: &HeaderMap) -> std::result::Result<String, Response> {
    let Some(token) = bearer(headers) else {
        return Err(problem(StatusCode::UNAUTHORIZED, "missing-session"));
    };
    match p.0.store.session_user(token, now_ms()).await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(problem(StatusCode::UNAUTHORIZED, "invalid-session")),
        Err(e) => Err(internal(&e)),
    }
}

fn internal(e: &Error) -> Response {
    tracing::warn!(error = %e, "provider request failed");
    problem(StatusCode::INTERNAL_SERVER_ERROR, "internal")
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

async fn create_account(State(p): State<Provider>, Json(c): Json<Credentials>) -> Response {
    if !interop_enlist::valid_subject(&c.username) || c.username.len() > 64 {
        return problem(StatusCode::BAD_REQUEST, "invalid-username");
    }
    if !(8..=1024).contains(&c.password.len()) {
        return problem(StatusCode::BAD_REQUEST, "password-length");
    }
    match p.0.store.create_user(&c.username, &c.password, now_ms()).await {
        Ok(true) => (StatusCode::CREATED, Json(json!({ "username": c.username }))).into_response(),
        Ok(false) => problem(StatusCode::CONFLICT, "username-taken"),
        Err(e) => internal(&e),
    }
}

async fn login(State(p): State<Provider>, Json(c): Json<Credentials>) -> Response {
    match p.0.store.login(&c.username, &c.password, now_ms(), SESSION_TTL_MS).await {
        Ok(Login::Ok(session)) => {
            Json(json!({ "session": session, "expires_in": SESSION_TTL_MS / 1000 })).into_response()
        }
        Ok(Login::Refused) => problem(StatusCode::UNAUTHORIZED, "invalid-credentials"),
        Err(e) => internal(&e),
    }
}

#[derive(Deserialize)]
struct TokenRequest {
    /// The device's Noise static public key, base64url without padding.
    device_key: String,
}

fn device_key(text: &str) -> Option<[u8; 32]> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

async fn token(
    State(p): State<Provider>,
    headers: HeaderMap,
    Json(req): Json<TokenRequest>,
) -> Response {
    let user = match session_user(&p, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(key) = device_key(&req.device_key) else {
        return problem(StatusCode::BAD_REQUEST, "invalid-device-key");
    };
    let jwt = {
        let ring = p.0.ring.lock().expect("ring lock is never poisoned");
        p.0.issuer.issue(
            &ring,
            &user,
            &Thumbprint::of_x25519(&key),
            UnixTime::from(now()),
            &mut rand::rng(),
        )
    };
    let jwt = match jwt {
        Ok(t) => t,
        Err(e) => return internal(&Error::Config(e.to_string())),
    };
    match p.0.store.push_token(&user, &key).await {
        Ok(push_token) => {
            Json(json!({ "token": jwt, "push_token": push_token, "expires_in": p.0.config.token_lifetime.map_or(600, |l| l.as_secs()) }))
                .into_response()
        }
        Err(e) => internal(&e),
    }
}

async fn discovery(State(p): State<Provider>) -> Response {
    Json(DiscoveryDocument::for_issuer(p.0.issuer.issuer(), vec![Alg::EdDSA]).to_json())
        .into_response()
}

async fn jwks(State(p): State<Provider>) -> Response {
    let mut ring = p.0.ring.lock().expect("ring lock is never poisoned");
    let now = UnixTime::from(now());
    ring.prune(now);
    ([("cache-control", "max-age=300")], Json(ring.jwks(now))).into_response()
}

async fn rotate(State(p): State<Provider>, headers: HeaderMap) -> Response {
    let authorised = bearer(&headers).is_some_and(|t| {
        use subtle::ConstantTimeEq;
        bool::from(t.as_bytes().ct_eq(p.0.config.admin_token.as_bytes()))
            && !p.0.config.admin_token.is_empty()
    });
    if !authorised {
        return problem(StatusCode::UNAUTHORIZED, "admin-token");
    }
    match p.rotate_key() {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(&e),
    }
}

async fn push(State(p): State<Provider>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if p.0.signer.verify(&body, &headers).is_err() {
        return problem(StatusCode::UNAUTHORIZED, "invalid-signature");
    }
    let id = headers
        .get(standardwebhooks::HEADER_WEBHOOK_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !p.first_sighting(id) {
        // A replay (or a retry of one already handled): done, nothing to do again.
        return StatusCode::NO_CONTENT.into_response();
    }
    let token = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .filter(|v| v["type"] == crate::push::WAKE_TYPE)
        .and_then(|v| v["data"]["push_token"].as_str().map(str::to_owned));
    let Some(token) = token else {
        return problem(StatusCode::BAD_REQUEST, "invalid-body");
    };
    match p.0.store.device_of_push_token(&token).await {
        Ok(Some((_, key))) => {
            p.set_wake(key);
            StatusCode::NO_CONTENT.into_response()
        }
        // The gatekeeper stops retrying on 4xx: the device is gone.
        Ok(None) => problem(StatusCode::GONE, "unknown-push-token"),
        Err(e) => internal(&e),
    }
}

#[derive(Deserialize)]
struct WakeQuery {
    device_key: String,
}

async fn wake(
    State(p): State<Provider>,
    headers: HeaderMap,
    Query(q): Query<WakeQuery>,
) -> Response {
    let user = match session_user(&p, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(key) = device_key(&q.device_key) else {
        return problem(StatusCode::BAD_REQUEST, "invalid-device-key");
    };
    match p.0.store.has_device(&user, &key).await {
        Ok(true) => {}
        Ok(false) => return problem(StatusCode::NOT_FOUND, "unknown-device"),
        Err(e) => return internal(&e),
    }
    let notify = p.wake_slot(key);
    let waited = tokio::time::timeout(p.0.config.wake_poll, async {
        loop {
            let notified = notify.notified();
            if p.take_wake(&key) {
                return;
            }
            notified.await;
        }
    })
    .await;
    Json(json!({ "wake": waited.is_ok() })).into_response()
}

#[cfg(test)]
mod tests {
    use interop_enlist::cache::{FetchResponse, HttpResponse};
    use interop_enlist::{GatekeeperConfig, ProviderEntry, Registry};

    use super::*;
    use crate::outbound::{OutboundClient, OutboundConfig};
    use crate::push::{Delivery, PushConfig, PushDispatcher, PushTarget, WakeUp};
    use crate::store::DeviceAddress;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    struct Running {
        base: String,
        provider: Provider,
        http: reqwest::Client,
        _dir: tempfile::TempDir,
    }

    async fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let provider = Provider::open(ProviderConfig {
            issuer: base.clone(),
            audience: "gatekeeper".into(),
            data_dir: dir.path().to_owned(),
            push_secret: SECRET.into(),
            admin_token: "admin-secret".into(),
            dev: true,
            wake_poll: Duration::from_secs(30),
            token_lifetime: None,
        })
        .await
        .unwrap();
        let p = provider.clone();
        tokio::spawn(async move { p.serve(listener, std::future::pending()).await.unwrap() });
        Running { base, provider, http: reqwest::Client::new(), _dir: dir }
    }

    impl Running {
        async fn post(
            &self,
            path: &str,
            auth: Option<&str>,
            body: serde_json::Value,
        ) -> (u16, serde_json::Value) {
            let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
            if let Some(a) = auth {
                req = req.bearer_auth(a);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(serde_json::Value::Null))
        }

        async fn session(&self, user: &str) -> String {
            let creds = json!({"username": user, "password": "correct horse battery"});
            assert_eq!(self.post("/v1/accounts", None, creds.clone()).await.0, 201);
            let (status, body) = self.post("/v1/sessions", None, creds).await;
            assert_eq!(status, 200);
            body["session"].as_str().unwrap().to_owned()
        }

        async fn token(&self, session: &str, key: &[u8; 32]) -> serde_json::Value {
            let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
            let (status, body) =
                self.post("/v1/tokens", Some(session), json!({ "device_key": k })).await;
            assert_eq!(status, 200, "{body}");
            body
        }

        /// A gatekeeper-side registry that fetched this provider's discovery and JWKS over HTTP.
        async fn registry(&self) -> Registry {
            let mut config = GatekeeperConfig::new("gatekeeper");
            config.url_policy = UrlPolicy::DevLoopbackHttp;
            let mut registry = Registry::new(config);
            let now = UnixTime::from(now());
            let entry = ProviderEntry::new(
                &self.base,
                "acme",
                &format!("{}/v1/push", self.base),
                &format!("{}/media/", self.base),
            );
            registry.upsert(entry, now).unwrap();
            while let Some(req) = registry.poll_fetch(now) {
                let r = self.http.get(&req.url).send().await.unwrap();
                let status = r.status().as_u16();
                let cache_control =
                    r.headers().get("cache-control").map(|v| v.to_str().unwrap().to_owned());
                let body = r.bytes().await.unwrap().to_vec();
                let response = HttpResponse { status, cache_control, body };
                registry
                    .handle_fetch(now, FetchResponse { ticket: req.ticket, result: Ok(response) })
                    .unwrap();
            }
            registry
        }
    }

    #[tokio::test]
    async fn accounts_and_logins_refuse_clearly_without_telling_which_half_was_wrong() {
        let p = start().await;
        let creds = json!({"username": "alice", "password": "correct horse battery"});
        assert_eq!(p.post("/v1/accounts", None, creds.clone()).await.0, 201);
        assert_eq!(
            p.post("/v1/accounts", None, creds.clone()).await,
            (409, json!({"error": "username-taken"}))
        );
        let short = json!({"username": "bob", "password": "short"});
        assert_eq!(p.post("/v1/accounts", None, short).await.0, 400);
        let wrong_pw = p
            .post("/v1/sessions", None, json!({"username": "alice", "password": "wrong password!"}))
            .await;
        let no_user = p
            .post(
                "/v1/sessions",
                None,
                json!({"username": "nobody", "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(wrong_pw, (401, json!({"error": "invalid-credentials"})));
        assert_eq!(no_user, wrong_pw);
        assert_eq!(p.post("/v1/sessions", None, creds).await.0, 200);
        assert_eq!(
            p.post("/v1/tokens", Some("not-a-session"), json!({"device_key": "AAAA"})).await.0,
            401
        );
    }

    #[tokio::test]
    async fn issued_tokens_verify_as_a_gatekeeper_verifies_them_and_survive_key_rotation() {
        let p = start().await;
        let session = p.session("alice").await;
        let key = [9u8; 32];
        let issued = p.token(&session, &key).await;
        let jwt = issued["token"].as_str().unwrap().to_owned();
        let push_token = issued["push_token"].as_str().unwrap().to_owned();
        assert_eq!(
            p.token(&session, &key).await["push_token"],
            push_token.as_str(),
            "stable per device"
        );
        assert_ne!(p.token(&session, &[8u8; 32]).await["push_token"], push_token.as_str());

        let mut registry = p.registry().await;
        let now = UnixTime::from(now());
        let who = registry.verify(&jwt, &Thumbprint::of_x25519(&key), now).unwrap();
        assert_eq!(who.key(), (p.base.as_str(), "alice"));
        assert!(
            registry.verify(&jwt, &Thumbprint::of_x25519(&[1u8; 32]), now).is_err(),
            "bound to the device key"
        );

        // Rotation: new tokens use a new key; the old token still verifies during the overlap.
        let (status, _) = p.post("/v1/admin/rotate-key", Some("wrong"), json!({})).await;
        assert_eq!(status, 401);
        assert_eq!(p.post("/v1/admin/rotate-key", Some("admin-secret"), json!({})).await.0, 204);
        let jwks: serde_json::Value =
            p.http.get(format!("{}/jwks.json", p.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "old and new key published");
        let fresh = p.token(&session, &key).await["token"].as_str().unwrap().to_owned();
        let mut registry = p.registry().await;
        assert!(registry.verify(&jwt, &Thumbprint::of_x25519(&key), now).is_ok());
        assert!(registry.verify(&fresh, &Thumbprint::of_x25519(&key), now).is_ok());
    }

    #[tokio::test]
    async fn media_uploads_need_a_session_and_downloads_are_public() {
        use sha2::Digest;
        let p = start().await;
        let session = p.session("alice").await;
        let file: Vec<u8> = (0..16 * 100 + 10).map(|i| (i % 251) as u8).collect();
        let address = hex::encode(sha2::Sha256::digest(&file));
        let url = format!("{}/media/{address}", p.base);
        let anonymous = p.http.put(&url).body(file.clone()).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        let forged =
            p.http.put(&url).bearer_auth("not-a-session").body(file.clone()).send().await.unwrap();
        assert_eq!(forged.status(), 401);
        let up = p.http.put(&url).bearer_auth(&session).body(file.clone()).send().await.unwrap();
        assert_eq!(up.status(), 201);
        let down = p.http.get(&url).send().await.unwrap();
        assert_eq!(down.status(), 200);
        assert_eq!(down.bytes().await.unwrap().to_vec(), file);
        let big: Vec<u8> = (0..16 * 8192 + 10).map(|i| (i % 241) as u8).collect();
        let big_url = format!("{}/media/{}", p.base, hex::encode(sha2::Sha256::digest(&big)));
        let up = p.http.put(&big_url).bearer_auth(&session).body(big.clone()).send().await.unwrap();
        assert_eq!(up.status(), 201, "media is not held to the API's 64 KiB body limit");
        assert_eq!(
            p.http.get(&big_url).send().await.unwrap().bytes().await.unwrap().len(),
            big.len()
        );
    }

    #[tokio::test]
    async fn signed_wake_ups_reach_the_long_poll_once_and_bad_ones_are_refused() {
        let p = start().await;
        let session = p.session("alice").await;
        let key = [9u8; 32];
        let push_token = p.token(&session, &key).await["push_token"].as_str().unwrap().to_owned();
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
        let poll = {
            let (http, url, session) =
                (p.http.clone(), format!("{}/v1/wake?device_key={k}", p.base), session.clone());
            tokio::spawn(async move {
                http.get(url)
                    .bearer_auth(session)
                    .send()
                    .await
                    .unwrap()
                    .json::<serde_json::Value>()
                    .await
                    .unwrap()
            })
        };
        // The gatekeeper's own dispatcher sends the wake-up.
        let client = OutboundClient::new(&OutboundConfig::dev()).unwrap();
        let (push, mut done) = PushDispatcher::spawn_observed(client, PushConfig::default());
        let target = PushTarget {
            endpoint: format!("{}/v1/push", p.base).parse().unwrap(),
            signer: Arc::new(standardwebhooks::Webhook::new(SECRET).unwrap()),
        };
        let wake = |token: &str| WakeUp {
            device: DeviceAddress::new("x", 1),
            push_token: token.into(),
            target: target.clone(),
        };
        push.wake(wake(&push_token));
        assert_eq!(done.recv().await.unwrap().1, Delivery::Delivered);
        assert_eq!(poll.await.unwrap(), json!({"wake": true}));
        // Consumed: a wake-up while nobody polls stays pending for the next poll.
        assert!(!p.provider.take_wake(&key));
        push.wake(wake(&push_token));
        assert_eq!(done.recv().await.unwrap().1, Delivery::Delivered);
        let r: serde_json::Value = p
            .http
            .get(format!("{}/v1/wake?device_key={k}", p.base))
            .bearer_auth(&session)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r, json!({"wake": true}));
        // An unknown token is a permanent refusal: the dispatcher stops.
        push.wake(wake("unknown"));
        assert_eq!(done.recv().await.unwrap().1, Delivery::Rejected);

        // Forged, stale and replayed requests.
        let body = crate::push::wake_body(&push_token);
        let signer = standardwebhooks::Webhook::new(SECRET).unwrap();
        let send = |id: &str, ts: i64, sig: String| {
            p.http
                .post(format!("{}/v1/push", p.base))
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig)
                .body(body.clone())
                .send()
        };
        let ts = now_ms() / 1000;
        let forged = standardwebhooks::Webhook::new("whsec_c2VjcmV0LWJ1dC13cm9uZw==")
            .unwrap()
            .sign("m1", ts, body.as_bytes())
            .unwrap();
        assert_eq!(send("m1", ts, forged).await.unwrap().status().as_u16(), 401);
        let stale = signer.sign("m2", ts - 3600, body.as_bytes()).unwrap();
        assert_eq!(send("m2", ts - 3600, stale).await.unwrap().status().as_u16(), 401);
        let good = signer.sign("m3", ts, body.as_bytes()).unwrap();
        assert_eq!(send("m3", ts, good.clone()).await.unwrap().status().as_u16(), 204);
        assert!(p.provider.take_wake(&key));
        assert_eq!(
            send("m3", ts, good).await.unwrap().status().as_u16(),
            204,
            "a replay is acknowledged"
        );
        assert!(!p.provider.take_wake(&key), "but does not wake again");
    }
}

//! The gatekeeper's administration HTTP API: the provider registry (add, update, disable) behind
//! an admin token, and `/healthz`.
//!
//! | request | answer |
//! |---|---|
//! | `GET /admin/providers` | every provider (push secrets omitted) |
//! | `PUT /admin/providers/{integrator_id}` + JSON | add or replace; `400` with the reason when a field is invalid |
//! | `POST /admin/providers/{integrator_id}/disable` and `/enable` | the kill switch |
//! | `GET /healthz` | `200 {"status":"ok"}` while the store (and, on a cluster node, Redis: `"redis":"ok"`) answers, else `503` with `storage-unavailable` or `redis-unavailable` |
//!
//! Every change is stored first, then handed to the change hook, which applies it to the live
//! gatekeeper (JWKS registry, media proxy, push targets): a disabled provider's users are
//! refused from then on.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use interop_enlist::{Alg, ProviderEntry, Quotas, UrlPolicy};
use interop_media::{MediaBaseUrl, SchemePolicy};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::store::{ProviderRecord, ProviderStore};

/// The integrator id naming the gatekeeper's own media host in media descriptors; no provider
/// may take it.
pub const RESERVED_INTEGRATOR: &str = "gatekeeper";

/// Called with every provider after it changed.
pub type ProviderHook = Arc<dyn Fn(&ProviderRecord) + Send + Sync>;

/// A dependency `/healthz` checks besides the store: its name and a check (`Err`: why not).
pub type HealthCheck = (
    &'static str,
    Arc<
        dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
            + Send
            + Sync,
    >,
);

/// Settings of the admin API.
#[derive(Clone)]
pub struct AdminConfig {
    /// The bearer token admins present (empty: the API is closed).
    pub token: String,
    /// Which provider URLs are acceptable (https only outside dev mode).
    pub url_policy: UrlPolicy,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig").field("url_policy", &self.url_policy).finish_non_exhaustive()
    }
}

struct AdminState<S> {
    store: Arc<S>,
    config: AdminConfig,
    hook: ProviderHook,
    health: Option<HealthCheck>,
}

impl<S> Clone for AdminState<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            config: self.config.clone(),
            hook: Arc::clone(&self.hook),
            health: self.health.clone(),
        }
    }
}

/// The admin routes over `store`.
pub fn router<S: ProviderStore>(
    store: Arc<S>,
    config: AdminConfig,
    hook: ProviderHook,
) -> axum::Router {
    router_with_health(store, config, hook, None)
}

/// The admin routes, with `/healthz` also checking `health` (a cluster node: Redis).
pub fn router_with_health<S: ProviderStore>(
    store: Arc<S>,
    config: AdminConfig,
    hook: ProviderHook,
    extra_health: Option<HealthCheck>,
) -> axum::Router {
    axum::Router::new()
        .route("/admin/providers", get(list::<S>))
        .route("/admin/providers/{integrator}", put(upsert::<S>))
        .route("/admin/providers/{integrator}/disable", post(disable::<S>))
        .route("/admin/providers/{integrator}/enable", post(enable::<S>))
        .route("/healthz", get(health::<S>))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024))
        .with_state(AdminState { store, config, hook, health: extra_health })
}

fn problem(status: StatusCode, code: &str, detail: Option<&str>) -> Response {
    let mut body = json!({ "error": code });
    if let Some(d) = detail {
        body["detail"] = Value::from(d);
    }
    (status, Json(body)).into_response()
}

fn authorised<S>(s: &AdminState<S>, headers: &HeaderMap) -> bool {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    !s.config.token.is_empty() && bool::from(presented.as_bytes().ct_eq(s.config.token.as_bytes()))
}

fn redacted(r: &ProviderRecord) -> Value {
    let e = &r.entry;
    json!({
        "integrator_id": e.integrator_id,
        "issuer": e.issuer,
        "discovery_url": e.discovery_url,
        "allowed_algs": e.allowed_algs.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "push_endpoint": e.push_endpoint,
        "media_base_url": e.media_base_url,
        "quotas": {
            "enlistments_per_hour": e.quotas.enlistments_per_hour,
            "max_devices_per_account": e.quotas.max_devices_per_account,
            "messages_per_minute": e.quotas.messages_per_minute,
        },
        "enabled": e.enabled,
    })
}

async fn list<S: ProviderStore>(State(s): State<AdminState<S>>, headers: HeaderMap) -> Response {
    if !authorised(&s, &headers) {
        return problem(StatusCode::UNAUTHORIZED, "admin-token", None);
    }
    match s.store.providers().await {
        Ok(all) => Json(json!({ "providers": all.iter().map(redacted).collect::<Vec<_>>() }))
            .into_response(),
        Err(e) => internal(&e),
    }
}

fn internal(e: &crate::Error) -> Response {
    tracing::warn!(error = %e, "admin request failed");
    problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderBody {
    issuer: String,
    #[serde(default)]
    discovery_url: Option<String>,
    #[serde(default)]
    allowed_algs: Option<Vec<String>>,
    push_endpoint: String,
    push_secret: String,
    media_base_url: String,
    #[serde(default)]
    enlistments_per_hour: Option<u32>,
    #[serde(default)]
    max_devices_per_account: Option<u32>,
    #[serde(default)]
    messages_per_minute: Option<u32>,
    #[serde(default)]
    enabled: Option<bool>,
}

/// Builds and checks a record; the error is a fixed phrase naming the bad field.
fn record(
    integrator: &str,
    b: ProviderBody,
    policy: UrlPolicy,
) -> Result<ProviderRecord, &'static str> {
    let mut entry = ProviderEntry::new(&b.issuer, integrator, &b.push_endpoint, &b.media_base_url);
    if let Some(d) = b.discovery_url {
        entry.discovery_url = d;
    }
    if let Some(algs) = b.allowed_algs {
        entry.allowed_algs = algs
            .iter()
            .map(|a| Alg::from_name(a))
            .collect::<Option<Vec<_>>>()
            .ok_or("allowed_algs: unknown algorithm")?;
    }
    let defaults = Quotas::default();
    entry.quotas = Quotas {
        enlistments_per_hour: b.enlistments_per_hour.unwrap_or(defaults.enlistments_per_hour),
        max_devices_per_account: b
            .max_devices_per_account
            .unwrap_or(defaults.max_devices_per_account),
        messages_per_minute: b.messages_per_minute.unwrap_or(defaults.messages_per_minute),
    };
    entry.enabled = b.enabled.unwrap_or(true);
    entry.validate(policy).map_err(
        |_| "a URL is not allowed (https outside dev mode), no algorithm, or a bad integrator id",
    )?;
    let scheme = match policy {
        UrlPolicy::HttpsOnly => SchemePolicy::HttpsOnly,
        _ => SchemePolicy::AllowHttp,
    };
    MediaBaseUrl::parse(&entry.media_base_url, scheme)
        .map_err(|_| "media_base_url: not a valid media base URL")?;
    standardwebhooks::Webhook::new(&b.push_secret)
        .map_err(|_| "push_secret: not a Standard Webhooks secret (whsec_<base64>)")?;
    Ok(ProviderRecord { entry, push_secret: b.push_secret })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn upsert<S: ProviderStore>(
    State(s): State<AdminState<S>>,
    Path(integrator): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorised(&s, &headers) {
        return problem(StatusCode::UNAUTHORIZED, "admin-token", None);
    }
    if integrator == RESERVED_INTEGRATOR {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-provider",
            Some("integrator_id: reserved for the gatekeeper's own media host"),
        );
    }
    let body: ProviderBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-provider",
                Some("the body is not a provider object"),
            );
        }
    };
    let record = match record(&integrator, body, s.config.url_policy) {
        Ok(r) => r,
        Err(why) => return problem(StatusCode::BAD_REQUEST, "invalid-provider", Some(why)),
    };
    match s.store.upsert_provider(&record, now_ms()).await {
        Ok(()) => {
            (s.hook)(&record);
            Json(redacted(&record)).into_response()
        }
        Err(crate::Error::Refused(why)) => problem(StatusCode::CONFLICT, "conflict", Some(why)),
        Err(e) => internal(&e),
    }
}

async fn switch<S: ProviderStore>(
    s: AdminState<S>,
    integrator: &str,
    headers: &HeaderMap,
    on: bool,
) -> Response {
    if !authorised(&s, headers) {
        return problem(StatusCode::UNAUTHORIZED, "admin-token", None);
    }
    match s.store.set_provider_enabled(integrator, on).await {
        Ok(false) => problem(StatusCode::NOT_FOUND, "unknown-provider", None),
        Ok(true) => match s.store.providers().await {
            Ok(all) => match all.iter().find(|r| r.entry.integrator_id == integrator) {
                Some(r) => {
                    (s.hook)(r);
                    Json(redacted(r)).into_response()
                }
                None => problem(StatusCode::NOT_FOUND, "unknown-provider", None),
            },
            Err(e) => internal(&e),
        },
        Err(e) => internal(&e),
    }
}

async fn disable<S: ProviderStore>(
    State(s): State<AdminState<S>>,
    Path(i): Path<String>,
    headers: HeaderMap,
) -> Response {
    switch(s, &i, &headers, false).await
}

async fn enable<S: ProviderStore>(
    State(s): State<AdminState<S>>,
    Path(i): Path<String>,
    headers: HeaderMap,
) -> Response {
    switch(s, &i, &headers, true).await
}

async fn health<S: ProviderStore>(State(s): State<AdminState<S>>) -> Response {
    if s.store.providers().await.is_err() {
        return problem(StatusCode::SERVICE_UNAVAILABLE, "storage-unavailable", None);
    }
    match &s.health {
        None => Json(json!({ "status": "ok" })).into_response(),
        Some((name, check)) => match check().await {
            Ok(()) => Json(json!({ "status": "ok", *name: "ok" })).into_response(),
            Err(_) => {
                problem(StatusCode::SERVICE_UNAVAILABLE, &format!("{name}-unavailable"), None)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::QueueLimits;
    use crate::store::sqlite::SqliteStore;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    async fn start(
        policy: UrlPolicy,
    ) -> (tempfile::TempDir, String, Arc<Mutex<Vec<ProviderRecord>>>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("gk.db"), QueueLimits::default()).await.unwrap(),
        );
        let seen: Arc<Mutex<Vec<ProviderRecord>>> = Arc::default();
        let hook_seen = Arc::clone(&seen);
        let hook: ProviderHook = Arc::new(move |r| hook_seen.lock().unwrap().push(r.clone()));
        let app = router(store, AdminConfig { token: "t0ken".into(), url_policy: policy }, hook);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (dir, base, seen)
    }

    fn body(issuer: &str) -> Value {
        json!({
            "issuer": issuer,
            "push_endpoint": format!("{issuer}/v1/push"),
            "push_secret": SECRET,
            "media_base_url": format!("{issuer}/media/"),
        })
    }

    #[tokio::test]
    async fn providers_are_validated_stored_switched_and_never_echo_secrets() {
        let (_d, base, seen) = start(UrlPolicy::HttpsOnly).await;
        let http = reqwest::Client::new();
        let put = |id: &str, b: Value, token: &str| {
            http.put(format!("{base}/admin/providers/{id}")).bearer_auth(token).json(&b).send()
        };
        assert_eq!(
            put("acme", body("https://id.acme.example"), "wrong").await.unwrap().status(),
            401
        );
        for (id, b) in [
            ("acme", body("http://id.acme.example")),
            ("Acme!", body("https://id.acme.example")),
            ("acme", json!({"issuer": "https://id.acme.example"})),
            ("acme", {
                let mut b = body("https://id.acme.example");
                b["push_secret"] = json!("not a secret");
                b
            }),
            ("acme", {
                let mut b = body("https://id.acme.example");
                b["allowed_algs"] = json!(["HS256"]);
                b
            }),
        ] {
            let r = put(id, b.clone(), "t0ken").await.unwrap();
            assert_eq!(r.status(), 400, "{id} {b}");
        }
        assert!(seen.lock().unwrap().is_empty(), "nothing invalid reached the gatekeeper");
        let r = put("acme", body("https://id.acme.example"), "t0ken").await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(!text.contains("whsec"), "the secret is never returned: {text}");
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(
            put("other", body("https://id.acme.example"), "t0ken").await.unwrap().status(),
            409,
            "issuer taken"
        );

        let r = http
            .post(format!("{base}/admin/providers/acme/disable"))
            .bearer_auth("t0ken")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            !seen.lock().unwrap().last().unwrap().entry.enabled,
            "the hook learns of the kill switch"
        );
        let list: Value = http
            .get(format!("{base}/admin/providers"))
            .bearer_auth("t0ken")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["providers"][0]["enabled"], json!(false));
        assert!(!list.to_string().contains("whsec"));
        let r = http
            .post(format!("{base}/admin/providers/nobody/enable"))
            .bearer_auth("t0ken")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let health: Value =
            http.get(format!("{base}/healthz")).send().await.unwrap().json().await.unwrap();
        assert_eq!(health, json!({"status": "ok"}));
    }

    #[tokio::test]
    async fn dev_mode_allows_loopback_http_and_the_registry_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gk.db");
        {
            let store = SqliteStore::open(&path, QueueLimits::default()).await.unwrap();
            let b: ProviderBody = serde_json::from_value(body("http://127.0.0.1:8443")).unwrap();
            let r = record("acme", b, UrlPolicy::DevLoopbackHttp).unwrap();
            store.upsert_provider(&r, 0).await.unwrap();
            let b: ProviderBody = serde_json::from_value(body("http://10.0.0.1:8443")).unwrap();
            assert!(
                record("lan", b, UrlPolicy::DevLoopbackHttp).is_err(),
                "dev mode allows loopback only"
            );
        }
        let store = SqliteStore::open(&path, QueueLimits::default()).await.unwrap();
        let all = store.providers().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].entry.issuer, "http://127.0.0.1:8443");
        assert_eq!(all[0].push_secret, SECRET);
        assert_eq!(all[0].entry.allowed_algs, vec![Alg::EdDSA]);
    }
}

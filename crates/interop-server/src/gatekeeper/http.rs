//! The gatekeeper's HTTP listener: the admin API and `/healthz` ([`crate::admin`]), `/metrics`
//! (Prometheus text format), the chat over WebSocket (`GET /chat`, see [`super::ws`]), the
//! gatekeeper's own media host for its native users
//! (`/media/{sha256}`) and the media proxy (`/proxy/{integrator}/{*path}`). Media endpoints
//! take `Authorization: Bearer <token>` with a token from the `media` iq (uploads, proxy);
//! downloads from the host are public (encrypted, content-addressed).

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::routing::get;
use interop_enlist::UrlPolicy;

use super::{GatekeeperStore, Shared};
use crate::admin::{self, AdminConfig, HealthCheck, ProviderHook};
use crate::media::{self, Authorize};

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

/// The routes of the HTTP listener.
pub(super) fn router<S: GatekeeperStore>(
    shared: Arc<Shared<S>>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> axum::Router {
    let hook_shared = Arc::clone(&shared);
    let hook: ProviderHook = Arc::new(move |record| {
        hook_shared.apply_provider(record);
        if let Some(cluster) = hook_shared.chat.cluster() {
            cluster.broadcast_provider_changed(&record.entry.issuer);
        }
        if !record.entry.enabled {
            tracing::info!("provider disabled: its sessions end at their next token check");
        }
    });
    let health: Option<HealthCheck> = shared.chat.cluster().map(|cluster| {
        let cluster = Arc::clone(cluster);
        let check: HealthCheck = (
            "redis",
            Arc::new(move || {
                let cluster = Arc::clone(&cluster);
                Box::pin(async move { cluster.health().await })
            }),
        );
        check
    });
    let admin = admin::router_with_health(
        Arc::clone(&shared.store),
        AdminConfig {
            token: shared.config.admin_token.clone(),
            url_policy: if shared.config.dev {
                UrlPolicy::DevLoopbackHttp
            } else {
                UrlPolicy::HttpsOnly
            },
        },
        hook,
        health,
    );
    let auth_shared = Arc::clone(&shared);
    let authorize: Authorize = Arc::new(move |headers: HeaderMap| {
        let ok = bearer(&headers).is_some_and(|t| auth_shared.media_token_valid(t));
        Box::pin(async move { ok })
    });
    let mut router = admin
        .merge(media::host_router(Arc::clone(&shared.blobs), Arc::clone(&authorize)))
        .merge(media::proxy_router(Arc::clone(&shared.proxy), authorize));
    let ws_shared = Arc::clone(&shared);
    router = router.route(
        "/chat",
        get(
            move |upgrade: axum::extract::WebSocketUpgrade,
                  axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                std::net::SocketAddr,
            >| {
                let shared = Arc::clone(&ws_shared);
                async move {
                    upgrade.max_message_size(2 << 20).on_upgrade(move |socket| {
                        super::conn::serve(shared, super::ws::WsIo::new(socket), peer)
                    })
                }
            },
        ),
    );
    if let Some(handle) = metrics {
        router = router.route("/metrics", get(move || std::future::ready(handle.render())));
    }
    router
}

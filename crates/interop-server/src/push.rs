//! Push wake-ups to third-party providers.
//!
//! When an interop recipient has no live connection, the gatekeeper asks the recipient's
//! provider to wake the device: a content-free POST to the provider's push endpoint carrying
//! only the opaque push token the provider issued for that device (no account id, no sender, no
//! count), signed Standard-Webhooks style (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`, HMAC-SHA256 with the provider's push secret).
//!
//! [`PushDispatcher::wake`] never waits: routing calls it inline. Wake-ups for a device that
//! already has one queued or in flight are coalesced (one wake-up makes the client fetch
//! everything). Failed deliveries are retried with exponential back-off and jitter; a provider
//! that is down only costs its own retries. Each outcome is a metric
//! (`interop_push_total{outcome}`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::{Semaphore, mpsc};

use crate::outbound::OutboundClient;
use crate::store::DeviceAddress;

/// The wake-up body's `type`.
pub const WAKE_TYPE: &str = "interop.wake.v1";

/// Where and how to reach one provider's push receiver.
#[derive(Clone)]
pub struct PushTarget {
    /// The provider's push endpoint (https outside dev mode).
    pub endpoint: url::Url,
    /// The signing key shared with the provider.
    pub signer: Arc<standardwebhooks::Webhook>,
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTarget")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// One wake-up to send.
#[derive(Clone)]
pub struct WakeUp {
    /// The device to wake (used for coalescing only; never sent).
    pub device: DeviceAddress,
    /// The opaque token the provider issued for the device.
    pub push_token: String,
    /// The device's provider.
    pub target: PushTarget,
}

impl std::fmt::Debug for WakeUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeUp").field("target", &self.target).finish_non_exhaustive()
    }
}

/// What [`PushDispatcher::wake`] did with a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Queued for delivery.
    Queued,
    /// The device already has a wake-up queued or in flight.
    Coalesced,
    /// The dispatcher's queue is full; dropped (the message itself is safely queued).
    Dropped,
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The provider answered 2xx.
    Delivered,
    /// The provider refused it for good (4xx other than 408/429), or the URL was refused.
    Rejected,
    /// Every attempt failed.
    GaveUp,
}

/// Dispatcher settings.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Wake-ups waiting for a sender before new ones are dropped.
    pub queue: usize,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Attempts per wake-up, the first included.
    pub max_attempts: u32,
    /// Back-off before the second attempt; doubles each time, with jitter of ±50%.
    pub first_backoff: Duration,
    /// Upper bound of the back-off.
    pub max_backoff: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            queue: 10_000,
            concurrency: 64,
            max_attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Sends wake-ups in the background. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PushDispatcher {
    tx: mpsc::Sender<WakeUp>,
    pending: Arc<Mutex<HashSet<DeviceAddress>>>,
    done: Option<mpsc::UnboundedSender<(DeviceAddress, Delivery)>>,
}

impl PushDispatcher {
    /// Starts the dispatcher on the current tokio runtime.
    pub fn spawn(client: OutboundClient, config: PushConfig) -> Self {
        Self::spawn_inner(client, config, None)
    }

    /// Like [`spawn`](Self::spawn), also reporting each finished delivery (for tests and tools).
    pub fn spawn_observed(
        client: OutboundClient,
        config: PushConfig,
    ) -> (Self, mpsc::UnboundedReceiver<(DeviceAddress, Delivery)>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        (Self::spawn_inner(client, config, Some(done_tx)), done_rx)
    }

    fn spawn_inner(
        client: OutboundClient,
        config: PushConfig,
        done: Option<mpsc::UnboundedSender<(DeviceAddress, Delivery)>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let this = Self { tx, pending: Arc::default(), done };
        tokio::spawn(run(rx, this.clone(), client, config));
        this
    }

    /// Schedules a wake-up; never waits.
    pub fn wake(&self, wake: WakeUp) -> Wake {
        {
            let mut pending = self.pending.lock().expect("push lock is never poisoned");
            if !pending.insert(wake.device.clone()) {
                metrics::counter!("interop_push_total", "outcome" => "coalesced").increment(1);
                return Wake::Coalesced;
            }
        }
        let device = wake.device.clone();
        match self.tx.try_send(wake) {
            Ok(()) => Wake::Queued,
            Err(_) => {
                self.pending.lock().expect("push lock is never poisoned").remove(&device);
                metrics::counter!("interop_push_total", "outcome" => "dropped").increment(1);
                Wake::Dropped
            }
        }
    }

    fn finish(&self, device: DeviceAddress, outcome: Delivery) {
        self.pending.lock().expect("push lock is never poisoned").remove(&device);
        let label = match outcome {
            Delivery::Delivered => "delivered",
            Delivery::Rejected => "rejected",
            Delivery::GaveUp => "gave_up",
        };
        metrics::counter!("interop_push_total", "outcome" => label).increment(1);
        if let Some(done) = &self.done {
            let _ = done.send((device, outcome));
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<WakeUp>,
    this: PushDispatcher,
    client: OutboundClient,
    config: PushConfig,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    while let Some(wake) = rx.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
        let (this, client, config) = (this.clone(), client.clone(), config.clone());
        tokio::spawn(async move {
            let outcome = deliver(&client, &config, &wake).await;
            this.finish(wake.device, outcome);
            drop(permit);
        });
    }
}

/// The JSON body of a wake-up: only the opaque token.
pub fn wake_body(push_token: &str) -> String {
    serde_json::json!({ "type": WAKE_TYPE, "data": { "push_token": push_token } }).to_string()
}

fn backoff(config: &PushConfig, attempt: u32) -> Duration {
    let base = config.first_backoff.saturating_mul(1u32 << attempt.min(20)).min(config.max_backoff);
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}

async fn deliver(client: &OutboundClient, config: &PushConfig, wake: &WakeUp) -> Delivery {
    let body = wake_body(&wake.push_token);
    let id = format!("msg_{}", hex::encode(rand::rng().random::<[u8; 12]>()));
    for attempt in 0..config.max_attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(backoff(config, attempt - 1)).await;
            metrics::counter!("interop_push_total", "outcome" => "retried").increment(1);
        }
        let timestamp =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let Ok(signature) = wake.target.signer.sign(&id, timestamp, body.as_bytes()) else {
            return Delivery::Rejected;
        };
        let Ok(request) = client.post(&wake.target.endpoint) else {
            return Delivery::Rejected;
        };
        let sent = request
            .header("content-type", "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &id)
            .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string())
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Delivery::Delivered,
            Ok(r) if r.status().is_client_error() && r.status() != 408 && r.status() != 429 => {
                tracing::debug!(status = %r.status(), "push endpoint refused a wake-up");
                return Delivery::Rejected;
            }
            Ok(r) => tracing::debug!(status = %r.status(), attempt, "push endpoint failed"),
            Err(e) => tracing::debug!(error = %e, attempt, "push request failed"),
        }
    }
    Delivery::GaveUp
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};

    use super::*;
    use crate::outbound::OutboundConfig;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// What the receiver does with each request, in order; `None` hangs forever.
    #[derive(Clone)]
    struct Receiver {
        script: Arc<Mutex<VecDeque<Option<u16>>>>,
        seen: mpsc::UnboundedSender<(bool, serde_json::Value)>,
    }

    async fn handle(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let verified =
            standardwebhooks::Webhook::new(SECRET).unwrap().verify(&body, &headers).is_ok();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let _ = r.seen.send((verified, json));
        let next = r.script.lock().unwrap().pop_front().unwrap_or(Some(200));
        match next {
            Some(code) => StatusCode::from_u16(code).unwrap(),
            None => std::future::pending().await,
        }
    }

    async fn receiver(
        script: &[Option<u16>],
    ) -> (url::Url, mpsc::UnboundedReceiver<(bool, serde_json::Value)>) {
        let (seen, rx) = mpsc::unbounded_channel();
        let state =
            Receiver { script: Arc::new(Mutex::new(script.iter().copied().collect())), seen };
        let app = axum::Router::new().route("/push", axum::routing::post(handle)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/push", listener.local_addr().unwrap()).parse().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, rx)
    }

    fn fast() -> PushConfig {
        PushConfig {
            queue: 16,
            concurrency: 4,
            max_attempts: 3,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        }
    }

    fn client(timeout: Duration) -> OutboundClient {
        OutboundClient::new(&OutboundConfig { timeout, ..OutboundConfig::dev() }).unwrap()
    }

    fn wake(endpoint: &url::Url, device: u32) -> WakeUp {
        WakeUp {
            device: DeviceAddress::new("acct", device),
            push_token: format!("opaque-token-{device}"),
            target: PushTarget {
                endpoint: endpoint.clone(),
                signer: Arc::new(standardwebhooks::Webhook::new(SECRET).unwrap()),
            },
        }
    }

    #[tokio::test]
    async fn a_wake_up_is_signed_and_carries_only_the_token() {
        let (url, mut seen) = receiver(&[Some(204)]).await;
        let (push, mut done) =
            PushDispatcher::spawn_observed(client(Duration::from_secs(5)), fast());
        assert_eq!(push.wake(wake(&url, 1)), Wake::Queued);
        assert_eq!(done.recv().await.unwrap().1, Delivery::Delivered);
        let (verified, body) = seen.recv().await.unwrap();
        assert!(verified, "signature verifies with the provider's secret");
        assert_eq!(
            body,
            serde_json::json!({"type": WAKE_TYPE, "data": {"push_token": "opaque-token-1"}})
        );
    }

    #[tokio::test]
    async fn a_wrong_secret_does_not_verify() {
        let (url, mut seen) = receiver(&[Some(200)]).await;
        let (push, mut done) =
            PushDispatcher::spawn_observed(client(Duration::from_secs(5)), fast());
        let mut w = wake(&url, 1);
        w.target.signer =
            Arc::new(standardwebhooks::Webhook::new("whsec_c2VjcmV0LWJ1dC13cm9uZw==").unwrap());
        push.wake(w);
        done.recv().await.unwrap();
        assert!(!seen.recv().await.unwrap().0);
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_delivered() {
        let (url, mut seen) = receiver(&[Some(500), Some(503), Some(200)]).await;
        let (push, mut done) =
            PushDispatcher::spawn_observed(client(Duration::from_secs(5)), fast());
        push.wake(wake(&url, 1));
        assert_eq!(done.recv().await.unwrap().1, Delivery::Delivered);
        let mut requests = 0;
        while seen.try_recv().is_ok() {
            requests += 1;
        }
        assert_eq!(requests, 3);
    }

    #[tokio::test]
    async fn a_permanent_refusal_is_not_retried_and_persistent_failure_gives_up() {
        let (url, mut seen) = receiver(&[Some(403), Some(500), Some(500), Some(500)]).await;
        let (push, mut done) =
            PushDispatcher::spawn_observed(client(Duration::from_secs(5)), fast());
        push.wake(wake(&url, 1));
        assert_eq!(done.recv().await.unwrap().1, Delivery::Rejected);
        assert!(seen.try_recv().is_ok() && seen.try_recv().is_err(), "exactly one request");
        push.wake(wake(&url, 1));
        assert_eq!(done.recv().await.unwrap().1, Delivery::GaveUp);
        let mut requests = 0;
        while seen.try_recv().is_ok() {
            requests += 1;
        }
        assert_eq!(requests, 3, "max_attempts");
    }

    #[tokio::test]
    async fn a_hanging_provider_never_blocks_and_wake_ups_coalesce_per_device() {
        let (url, _seen) = receiver(&[None, None, None, None, None, None]).await;
        let mut config = fast();
        config.max_attempts = 2;
        let (push, mut done) =
            PushDispatcher::spawn_observed(client(Duration::from_millis(200)), config);
        // `wake` is synchronous: it cannot wait for the provider.
        assert_eq!(push.wake(wake(&url, 1)), Wake::Queued);
        assert_eq!(push.wake(wake(&url, 1)), Wake::Coalesced);
        assert_eq!(push.wake(wake(&url, 2)), Wake::Queued);
        let mut outcomes = [done.recv().await.unwrap(), done.recv().await.unwrap()];
        outcomes.sort_by_key(|(d, _)| d.device);
        assert_eq!(
            outcomes.iter().map(|(d, o)| (d.device, *o)).collect::<Vec<_>>(),
            [(1, Delivery::GaveUp), (2, Delivery::GaveUp)]
        );
        // Once finished, the device can be woken again.
        assert_eq!(push.wake(wake(&url, 1)), Wake::Queued);
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let (url, _seen) = receiver(&[]).await;
        let mut config = fast();
        config.queue = 1;
        let push = PushDispatcher::spawn(client(Duration::from_secs(5)), config);
        // Nothing is awaited between these calls, so the dispatcher task cannot drain the queue
        // on this single-threaded runtime: the second device finds it full.
        assert_eq!(push.wake(wake(&url, 1)), Wake::Queued);
        assert_eq!(push.wake(wake(&url, 2)), Wake::Dropped);
        // A dropped device is not left marked as pending.
        assert_eq!(push.wake(wake(&url, 2)), Wake::Dropped);
    }

    #[tokio::test]
    async fn the_strict_guard_never_reaches_a_loopback_push_endpoint() {
        let (url, mut seen) = receiver(&[]).await;
        let strict =
            OutboundClient::new(&OutboundConfig { allow_http: true, ..OutboundConfig::strict() })
                .unwrap();
        let (push, mut done) = PushDispatcher::spawn_observed(strict, fast());
        push.wake(wake(&url, 1));
        assert_eq!(done.recv().await.unwrap().1, Delivery::Rejected);
        assert!(seen.try_recv().is_err(), "no request reached the receiver");
    }
}

//! One client connection: handshake, authentication, then stanzas until either side closes.
//!
//! Nothing happens for a connection before its handshake completes. After it:
//! - an interop client's provider token is verified (bound to the Noise key it proved);
//!   a native client is known by its registered device key;
//! - an identity that is not enlisted (registered) may only run the enlistment iqs;
//! - an enlisted device gets a chat session: its queue is delivered, its stanzas routed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use interop_enlist::enlist::{self as wire, ErrorCode, Response};
use interop_enlist::{Error as EnlistError, Refusal, Thumbprint, UnverifiedToken};
use interop_noise::proto::Product;
use interop_noise::tokio::{Accepted, NoiseStream};
use interop_stanza::Node;
use interop_stanza::binary::Codec;
use interop_stanza::stanza::{
    Ack, AckClass, Condition, ErrorType, Iq, IqPayload, IqType, MediaHost, MediaUploadInfo,
    StreamCondition, StreamError,
};
use rand::SeedableRng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::{GatekeeperStore, Shared, enlist, now_ms, unix_now};
use crate::address::Jid;
use crate::chat::{Handled, Outbound, Session};
use crate::ratelimit::RateLimiter;
use crate::store::{AccountKind, DeviceAddress, Identity};

/// Counts a connection against its IP's unauthenticated allowance until dropped.
struct Unauthenticated<'a, S> {
    shared: &'a Shared<S>,
    ip: IpAddr,
}

impl<'a, S> Unauthenticated<'a, S> {
    fn enter(shared: &'a Shared<S>, ip: IpAddr) -> Option<Self> {
        let mut map = shared.unauthenticated.lock().expect("ip lock");
        let n = map.entry(ip).or_insert(0);
        if *n >= shared.config.max_unauthenticated_per_ip {
            return None;
        }
        *n += 1;
        Some(Self { shared, ip })
    }
}

impl<S> Drop for Unauthenticated<'_, S> {
    fn drop(&mut self) {
        let mut map = self.shared.unauthenticated.lock().expect("ip lock");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Who is on the other end, as far as the gatekeeper knows.
pub(super) struct Auth {
    /// Native or interop (from the handshake payload, checked).
    pub kind: AccountKind,
    /// Interop: the verified (issuer, subject) and the provider's integrator id.
    pub identity: Option<Identity>,
    /// When the provider token stops being valid (interop).
    pub token_expires: Option<u64>,
    /// The device, once enlisted or registered.
    pub device: Option<DeviceAddress>,
    /// The device's Noise static key.
    pub key: [u8; 32],
    /// Whether the user sends read receipts.
    pub read_receipts: bool,
}

/// Why a connection is refused or closed, as the stream error says it.
type Refused = (StreamCondition, &'static str);

/// A transport a client connection runs over: TCP, or a WebSocket adapted to a byte stream.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

pub(super) async fn serve<S: GatekeeperStore, T: Transport>(
    shared: Arc<Shared<S>>,
    socket: T,
    peer: SocketAddr,
) {
    let Some(guard) = Unauthenticated::enter(&shared, peer.ip()) else {
        metrics::counter!("interop_connections_refused_total", "reason" => "per_ip_limit")
            .increment(1);
        return;
    };
    metrics::counter!("interop_connections_total").increment(1);
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let started = Instant::now();
    // Boxed here and below: a task's future is as large as its largest await point, and every
    // idle connection keeps its task; the handshake, authentication and stanza handling are
    // only alive briefly.
    let accept =
        Box::pin(interop_noise::tokio::accept(socket, &shared.noise, now_ms() as u64, &mut rng));
    let accepted = tokio::select! {
        r = tokio::time::timeout(shared.config.handshake_timeout, accept) => r,
        () = shared.shutdown.cancelled() => return,
    };
    let Accepted { stream, payload, client_key, resumed, header } = match accepted {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            metrics::counter!("interop_handshakes_total", "outcome" => "failed").increment(1);
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!("interop_handshakes_total", "outcome" => "timeout").increment(1);
            return;
        }
    };
    metrics::counter!("interop_handshakes_total", "outcome" => if resumed { "ik" } else { "xx" })
        .increment(1);
    metrics::histogram!("interop_handshake_seconds").record(started.elapsed().as_secs_f64());
    let codec = Codec::new(header.dictionary_version);
    let known = codec.is_ok();
    let mut conn = Conn {
        // An unknown dictionary: the default one carries the stream error.
        codec: codec.unwrap_or_default(),
        stream,
        limiter: RateLimiter::new(shared.config.stanza_rate, 1),
        shared: Arc::clone(&shared),
    };
    if !known {
        conn.close(StreamCondition::UnsupportedVersion, "unknown dictionary version").await;
        return;
    }
    let auth = Box::pin(conn.authenticate(&payload, client_key)).await;
    drop(guard);
    match auth {
        Ok(auth) => {
            metrics::gauge!("interop_connections_live").increment(1.0);
            let result = conn.run(auth).await;
            metrics::gauge!("interop_connections_live").decrement(1.0);
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        Err((condition, text)) => {
            metrics::counter!("interop_auth_refused_total", "reason" => text).increment(1);
            conn.close(condition, text).await;
        }
    }
}

struct Conn<S, T> {
    shared: Arc<Shared<S>>,
    stream: NoiseStream<T>,
    codec: Codec,
    limiter: RateLimiter,
}

/// What woke the connection loop.
enum Event {
    ProviderChanged,
    Incoming(Result<Option<Vec<u8>>, interop_noise::Error>),
    Outgoing(crate::Result<Outbound>),
    Idle,
    TokenExpired,
    Shutdown,
}

/// The text of a `stream:error` the chat core asked for.
fn close_text(condition: StreamCondition) -> &'static str {
    match condition {
        StreamCondition::Conflict => "replaced by a newer connection",
        _ => "closed by the server",
    }
}

async fn next_outbound<S: GatekeeperStore>(
    shared: &Shared<S>,
    session: Option<&mut Session>,
) -> crate::Result<Outbound> {
    match session {
        Some(s) => shared.chat.next(s).await,
        None => std::future::pending().await,
    }
}

impl<S: GatekeeperStore, T: Transport> Conn<S, T> {
    async fn send(&mut self, node: &Node) -> crate::Result<()> {
        let bytes = self.codec.encode(node)?;
        self.stream.send(&bytes).await?;
        Ok(())
    }

    /// Writes what is queued together with what the session has ready to send (up to a batch):
    /// one write for many stanzas under load. `Some(condition)`: the session must close.
    async fn flush_with_ready(
        &mut self,
        shared: &Shared<S>,
        session: Option<&mut Session>,
    ) -> crate::Result<Option<StreamCondition>> {
        /// Stanzas gathered into one write at most (bounds the write buffer and the time other
        /// events wait).
        const MAX_GATHER: usize = 64;
        let mut close = None;
        if let Some(session) = session {
            for _ in 0..MAX_GATHER {
                match shared.chat.try_next(session).await? {
                    Some(Outbound::Stanza(bytes)) => {
                        metrics::counter!("interop_stanzas_delivered_total").increment(1);
                        self.stream.queue(&bytes)?;
                    }
                    Some(Outbound::Close(condition)) => {
                        close = Some(condition);
                        break;
                    }
                    None => break,
                }
            }
        }
        self.stream.flush().await?;
        Ok(close)
    }

    /// Sends `stream:error` and closes.
    async fn close(&mut self, condition: StreamCondition, text: &str) {
        let mut error = StreamError::new(condition);
        error.text = Some(text.to_owned());
        if let Ok(bytes) = self.codec.encode(&error.into_node()) {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.send(&bytes)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
        // Lingering close: read what the client is still sending (bounded in time and bytes)
        // so that the socket is not reset before the client has read the error.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.drain(8 << 20)).await;
    }

    async fn authenticate(
        &mut self,
        payload: &interop_noise::proto::ClientPayload,
        key: [u8; 32],
    ) -> Result<Auth, Refused> {
        let internal = |_| (StreamCondition::InternalServerError, "storage failed");
        match Product::try_from(payload.product) {
            Ok(Product::Interop) => {
                let verified = self.verify_token(&payload.provider_jwt, &key).await?;
                let identity = Identity {
                    kind: AccountKind::Interop,
                    issuer: verified.token.issuer.clone(),
                    subject: verified.token.subject.clone(),
                    integrator: verified.integrator_id.clone(),
                };
                let store = &self.shared.store;
                let account = store.account_of(&identity).await.map_err(internal)?;
                let device = store.device_by_key(&key).await.map_err(internal)?;
                let device = match (account, device) {
                    (Some(a), Some(d)) if d.account == a => Some(d),
                    (_, Some(_)) => {
                        return Err((
                            StreamCondition::NotAuthorized,
                            "device key belongs to another account",
                        ));
                    }
                    _ => None,
                };
                Ok(Auth {
                    kind: AccountKind::Interop,
                    identity: Some(identity),
                    token_expires: Some(verified.token.expires_at.as_secs()),
                    device,
                    key,
                    read_receipts: payload.read_receipts,
                })
            }
            Ok(Product::Native) => {
                if !payload.provider_jwt.is_empty() {
                    return Err((StreamCondition::NotAuthorized, "native sessions carry no token"));
                }
                let store = &self.shared.store;
                let device = store.device_by_key(&key).await.map_err(internal)?;
                if let Some(d) = &device {
                    let kind =
                        store.identity_of(&d.account).await.map_err(internal)?.map(|i| i.kind);
                    if kind != Some(AccountKind::Native) {
                        return Err((StreamCondition::NotAuthorized, "not a native device"));
                    }
                }
                Ok(Auth {
                    kind: AccountKind::Native,
                    identity: None,
                    token_expires: None,
                    device,
                    key,
                    read_receipts: payload.read_receipts,
                })
            }
            _ => Err((StreamCondition::NotAuthorized, "unknown product")),
        }
    }

    /// Verifies a provider token, fetching the provider's keys once when they are missing or
    /// the key id is unknown. The signature is checked outside the registry lock.
    async fn verify_token(
        &mut self,
        jwt: &str,
        key: &[u8; 32],
    ) -> Result<interop_enlist::VerifiedIdentity, Refused> {
        let binding = Thumbprint::of_x25519(key);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let fetched = self.shared.keys_fetched.notified();
            tokio::pin!(fetched);
            fetched.as_mut().enable();
            let parsed = UnverifiedToken::parse(jwt).map_err(refused)?;
            let resolved = {
                let mut registry = self.shared.registry.lock().expect("registry lock");
                registry.resolve(&parsed, unix_now()).map(|r| (r, registry.config().policy.clone()))
            };
            let retry = match resolved {
                Ok((resolved, policy)) => {
                    let token = policy
                        .verify(&parsed, &resolved.issuer, &resolved.key, &binding, unix_now())
                        .map_err(refused)?;
                    return Ok(interop_enlist::VerifiedIdentity {
                        token,
                        integrator_id: resolved.integrator_id,
                    });
                }
                Err(EnlistError::TokenRefused(
                    r @ (Refusal::UnknownKid | Refusal::KeysUnavailable),
                )) => r,
                Err(e) => return Err(refusal_of(&e)),
            };
            // Keys missing or rotated: let the fetch loop run, wait for a fetch, try again.
            self.shared.registry_changed.notify_one();
            if tokio::time::timeout_at(deadline, fetched).await.is_err() {
                return Err(refused(retry));
            }
        }
    }

    async fn run(&mut self, mut auth: Auth) -> crate::Result<()> {
        let shared = Arc::clone(&self.shared);
        let mut session = match &auth.device {
            Some(d) => Some(shared.chat.connect(d.clone(), auth.read_receipts).await?),
            None => None,
        };
        let idle = shared.config.idle_timeout;
        let mut idle_deadline = Instant::now() + idle;
        let issuer = auth.identity.as_ref().map(|i| i.issuer.clone());
        let mut provider_changes = shared.provider_changed.subscribe();
        let token_deadline = auth.token_expires.map(|exp| {
            let leeway = 30;
            let left = exp.saturating_add(leeway).saturating_sub(unix_now().as_secs());
            Instant::now() + Duration::from_secs(left)
        });
        let result = loop {
            // Not biased: under load a connection always has something to send, and a fixed
            // order would starve its reading (the acks its peers' messages wait for).
            let event = tokio::select! {
                () = shared.shutdown.cancelled() => Event::Shutdown,
                changed = provider_changes.recv(), if issuer.is_some() => match changed {
                    // Missed some changes: check anyway.
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        Event::ProviderChanged
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => Event::Shutdown,
                },
                out = next_outbound(&shared, session.as_mut()) => Event::Outgoing(out),
                incoming = self.stream.recv() => Event::Incoming(incoming),
                () = tokio::time::sleep_until(idle_deadline) => Event::Idle,
                () = async {
                    match token_deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => Event::TokenExpired,
            };
            match event {
                Event::ProviderChanged => {
                    if let Some(i) = &issuer
                        && !shared.provider_enabled(i)
                    {
                        self.close(StreamCondition::NotAuthorized, "provider_disabled").await;
                        break Ok(());
                    }
                }
                Event::Shutdown => {
                    self.close(StreamCondition::SystemShutdown, "server shutting down").await;
                    break Ok(());
                }
                Event::Idle => {
                    self.close(StreamCondition::ConnectionTimeout, "idle").await;
                    break Ok(());
                }
                Event::TokenExpired => {
                    self.close(StreamCondition::NotAuthorized, "token expired").await;
                    break Ok(());
                }
                Event::Outgoing(Ok(Outbound::Stanza(bytes))) => {
                    metrics::counter!("interop_stanzas_delivered_total").increment(1);
                    if let Err(e) = self.stream.queue(&bytes) {
                        break Err(e.into());
                    }
                    match self.flush_with_ready(&shared, session.as_mut()).await {
                        Ok(None) => {}
                        Ok(Some(condition)) => {
                            self.close(condition, close_text(condition)).await;
                            break Ok(());
                        }
                        Err(e) => {
                            self.close(StreamCondition::InternalServerError, "server error").await;
                            break Err(e);
                        }
                    }
                }
                Event::Outgoing(Ok(Outbound::Close(condition))) => {
                    self.close(condition, close_text(condition)).await;
                    break Ok(());
                }
                Event::Outgoing(Err(e)) => {
                    self.close(StreamCondition::InternalServerError, "storage failed").await;
                    break Err(e);
                }
                Event::Incoming(Ok(None)) => break Ok(()),
                Event::Incoming(Err(interop_noise::Error::StanzaTooLarge { .. })) => {
                    metrics::counter!("interop_stanzas_refused_total", "reason" => "too_large")
                        .increment(1);
                    self.close(StreamCondition::PolicyViolation, "stanza too large").await;
                    break Ok(());
                }
                Event::Incoming(Err(e)) => break Err(e.into()),
                Event::Incoming(Ok(Some(bytes))) => {
                    idle_deadline = Instant::now() + idle;
                    if !self.limiter.check("", now_ms()) {
                        metrics::counter!("interop_stanzas_refused_total", "reason" => "rate")
                            .increment(1);
                        self.close(StreamCondition::PolicyViolation, "too many stanzas").await;
                        break Ok(());
                    }
                    let node = match self.codec.decode(&bytes) {
                        Ok(n) => n,
                        Err(_) => {
                            metrics::counter!("interop_stanzas_refused_total", "reason" => "undecodable")
                                .increment(1);
                            self.close(StreamCondition::NotWellFormed, "stanza does not decode")
                                .await;
                            break Ok(());
                        }
                    };
                    let flow = match Box::pin(self.handle(&mut auth, &mut session, node)).await {
                        Ok(Flow::Continue) => {
                            // Replies were queued: out with whatever else is ready.
                            match self.flush_with_ready(&shared, session.as_mut()).await {
                                Ok(None) => Ok(Flow::Continue),
                                Ok(Some(condition)) => {
                                    Ok(Flow::Close(condition, close_text(condition)))
                                }
                                Err(e) => Err(e),
                            }
                        }
                        other => other,
                    };
                    match flow {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Close(condition, text)) => {
                            self.close(condition, text).await;
                            break Ok(());
                        }
                        Err(e) => {
                            self.close(StreamCondition::InternalServerError, "server error").await;
                            break Err(e);
                        }
                    }
                }
            }
        };
        if let Some(s) = &session {
            shared.chat.disconnect(s);
        }
        result
    }

    async fn handle(
        &mut self,
        auth: &mut Auth,
        session: &mut Option<Session>,
        node: Node,
    ) -> crate::Result<Flow> {
        let shared = Arc::clone(&self.shared);
        if node.tag == "iq" && node.attr("xmlns") == Some(wire::NS) {
            let (reply, change) = enlist::handle(&shared, auth, &node).await?;
            self.send(&reply).await?;
            match change {
                Some(enlist::Change::Enlisted(device))
                    if session.as_ref().is_none_or(|s| s.device != device) =>
                {
                    if let Some(old) = session.take() {
                        shared.chat.disconnect(&old);
                    }
                    *session = Some(shared.chat.connect(device, auth.read_receipts).await?);
                }
                Some(enlist::Change::OptedOut(account)) => {
                    if let Some(old) = session.take() {
                        shared.chat.disconnect(&old);
                    }
                    shared.chat.close_account(&account, StreamCondition::NotAuthorized);
                }
                Some(enlist::Change::Enlisted(_)) | None => {}
            }
            return Ok(Flow::Continue);
        }
        let Some(s) = session.as_mut() else {
            return self.refuse_unenlisted(node).await;
        };
        if node.tag == "iq"
            && let Some(reply) = self.gatekeeper_iq(s, &node).await?
        {
            self.send(&reply).await?;
            return Ok(Flow::Continue);
        }
        if node.tag == "message" {
            let issuer = auth.identity.as_ref().map(|i| i.issuer.as_str());
            if !shared.message_allowed(issuer, &s.device.account).await {
                metrics::counter!("interop_messages_total", "outcome" => "rate-limited")
                    .increment(1);
                let id = node.attr("id").unwrap_or_default().to_owned();
                self.send(&Ack::new(id, AckClass::Message).error("rate-limited").into_node())
                    .await?;
                return Ok(Flow::Continue);
            }
        }
        let is_message = node.tag == "message";
        let started = Instant::now();
        match shared.chat.handle(s, node, now_ms()).await? {
            Handled::Replies(replies) => {
                if is_message {
                    metrics::histogram!("interop_message_ack_seconds")
                        .record(started.elapsed().as_secs_f64());
                    let outcome = replies.first().and_then(|r| r.attr("error")).unwrap_or("stored");
                    let outcome = match outcome {
                        "stored"
                        | "duplicate"
                        | "stale-devices"
                        | "recipient-unavailable"
                        | "bad-request" => outcome.to_owned(),
                        _ => "other".to_owned(),
                    };
                    metrics::counter!("interop_messages_total", "outcome" => outcome).increment(1);
                }
                for r in &replies {
                    // Flushed by the loop, with whatever else is ready to go.
                    self.stream.queue(&self.codec.encode(r)?)?;
                }
                Ok(Flow::Continue)
            }
            Handled::NotMine(node) if node.tag == "iq" => {
                let reply = shared.iq.handle(&*shared.store, &s.device, node, now_ms()).await?;
                self.send(&reply).await?;
                Ok(Flow::Continue)
            }
            Handled::NotMine(_) => {
                Ok(Flow::Close(StreamCondition::UnsupportedStanzaType, "unknown stanza"))
            }
            Handled::Stale => {
                metrics::counter!("interop_stanzas_refused_total", "reason" => "stale_lease")
                    .increment(1);
                Ok(Flow::Close(StreamCondition::Conflict, "replaced by a newer connection"))
            }
        }
    }

    /// A stanza from a connection that is not enlisted yet.
    async fn refuse_unenlisted(&mut self, node: Node) -> crate::Result<Flow> {
        let id = node.attr("id").unwrap_or_default().to_owned();
        match node.tag.as_str() {
            "iq" => {
                let reply = Response::Error(ErrorCode::NotEnlisted).to_node(&id);
                self.send(&reply).await?;
            }
            "message" | "receipt" => {
                let class =
                    if node.tag == "message" { AckClass::Message } else { AckClass::Receipt };
                self.send(&Ack::new(id, class).error("not-enlisted").into_node()).await?;
            }
            "ack" | "chatstate" | "presence" => {}
            _ => return Ok(Flow::Close(StreamCondition::UnsupportedStanzaType, "unknown stanza")),
        }
        Ok(Flow::Continue)
    }

    /// The iqs the gatekeeper answers itself: `ping`, `media`, `blocklist`. `None`: not one.
    async fn gatekeeper_iq(
        &mut self,
        session: &Session,
        node: &Node,
    ) -> crate::Result<Option<Node>> {
        let shared = &self.shared;
        match node.attr("xmlns") {
            Some("ping") => {
                let id = node.attr("id").unwrap_or_default();
                Ok(Some(Iq::new(id, IqType::Result, Some("ping"), IqPayload::None).into_node()))
            }
            Some("media") => {
                let Ok(iq) = Iq::from_node(node.clone()) else { return Ok(None) };
                let Some(base) = shared.media_base() else {
                    return Ok(Some(iq_error(
                        &iq,
                        ErrorType::Cancel,
                        Condition::FeatureNotImplemented,
                    )));
                };
                let (auth, ttl) = shared.media_token(&session.device.account);
                let info = MediaUploadInfo { auth, ttl, hosts: vec![MediaHost { hostname: base }] };
                Ok(Some(iq.result(IqPayload::MediaUploadInfo(info)).into_node()))
            }
            Some("report") => {
                let id = node.attr("id").unwrap_or_default().to_owned();
                let request = Iq::new(id.clone(), IqType::Set, Some("report"), IqPayload::None);
                let target = node
                    .children()
                    .first()
                    .filter(|c| c.tag == "report")
                    .and_then(|c| c.attr("jid"))
                    .and_then(Jid::parse);
                let (Some(target), Some("set")) = (target, node.attr("type")) else {
                    return Ok(Some(iq_error(&request, ErrorType::Modify, Condition::BadRequest)));
                };
                if !shared.report_limit.check(&session.device.account, now_ms()) {
                    return Ok(Some(iq_error(
                        &request,
                        ErrorType::Wait,
                        Condition::PolicyViolation,
                    )));
                }
                shared.record_report(&session.device.account, &target.account, node).await?;
                metrics::counter!("interop_reports_total").increment(1);
                Ok(Some(Iq::new(id, IqType::Result, Some("report"), IqPayload::None).into_node()))
            }
            Some("blocklist") => {
                let id = node.attr("id").unwrap_or_default().to_owned();
                let request = Iq::new(id.clone(), IqType::Set, Some("blocklist"), IqPayload::None);
                let bad = || iq_error(&request, ErrorType::Modify, Condition::BadRequest);
                if node.attr("type") != Some("set") || node.children().len() != 1 {
                    return Ok(Some(bad()));
                }
                let child = &node.children()[0];
                let on = match child.tag.as_str() {
                    "block" => true,
                    "unblock" => false,
                    _ => return Ok(Some(bad())),
                };
                let Some(target) = child.attr("jid").and_then(Jid::parse) else {
                    return Ok(Some(bad()));
                };
                shared.store.set_blocked(&session.device.account, &target.account, on).await?;
                Ok(Some(
                    Iq::new(id, IqType::Result, Some("blocklist"), IqPayload::None).into_node(),
                ))
            }
            _ => Ok(None),
        }
    }
}

fn iq_error(iq: &Iq, kind: ErrorType, condition: Condition) -> Node {
    iq.error(interop_stanza::stanza::StanzaError::new(kind, condition)).into_node()
}

/// What the connection does after a stanza.
pub(super) enum Flow {
    Continue,
    Close(StreamCondition, &'static str),
}

fn refused(r: Refusal) -> Refused {
    metrics::counter!("interop_tokens_refused_total", "reason" => r.as_str()).increment(1);
    (StreamCondition::NotAuthorized, r.as_str())
}

fn refusal_of(e: &EnlistError) -> Refused {
    match e.refusal() {
        Some(r) => refused(r),
        None => (StreamCondition::NotAuthorized, "token refused"),
    }
}

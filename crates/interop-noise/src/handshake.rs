//! The handshake typestates. Each `handle_*` consumes the state it is called on.
//!
//! XX (first contact), and IK (resumption with a cached server key):
//! ```text
//!   XX  -> e                   client_hello   (empty payload)
//!       <- e, ee, s, es        server_hello   (ServerPayload)
//!       -> s, se               client_finish  (ClientPayload)          => authenticated
//!
//!   IK  -> e, es, s, ss        ik_hello       (ClientPayload)
//!       <- e, ee, se           ik_reply       (ServerPayload)
//!       -> transport #0        empty plaintext (key confirmation)      => authenticated
//!
//!   IK, stale key:
//!       -> e, es, s, ss        ik_hello       (server cannot decrypt)
//!       <- retry_with_xx       (plain)
//!       then XX from client_hello, on the same connection
//! ```
//!
//! Client states: [`ClientHandshake`] → [`ExpectServerHello`] | [`ExpectIkReply`] →
//! [`ClientDone`]. Server states: [`ServerHandshake`] → [`ExpectClientHello`] →
//! ([`ExpectClientFinish`] | [`ExpectIkConfirm`] | back to [`ExpectClientHello`] after a retry)
//! → [`ServerDone`].

use prost::Message;
use rand_core::CryptoRng;

use crate::cert::TrustAnchor;
use crate::proto::{
    CertificateChain, ClientPayload, HandshakeMessage, RetryWithXx, ServerPayload,
    handshake_message::Message as Hs,
};
use crate::transport::DEFAULT_MAX_STANZA;
use crate::{
    ConnectionHeader, Error, MAX_NOISE_MESSAGE, NOISE_IK, NOISE_XX, Result, StaticKeypair,
    Transport, frame, resolver,
};

/// What a client needs to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    keys: StaticKeypair,
    trust: TrustAnchor,
    header: ConnectionHeader,
    max_stanza: usize,
}

impl ClientConfig {
    /// A client with the given device key, trusting servers certified under `trust`.
    pub fn new(keys: StaticKeypair, trust: TrustAnchor) -> Self {
        Self { keys, trust, header: ConnectionHeader::current(1), max_stanza: DEFAULT_MAX_STANZA }
    }

    /// Sets the largest stanza this client sends or accepts (default 1 MiB).
    pub fn max_stanza(mut self, max: usize) -> Self {
        self.max_stanza = max;
        self
    }

    /// Sends `header` instead of the current one (testing, or a newer protocol version).
    pub fn header(mut self, header: ConnectionHeader) -> Self {
        self.header = header;
        self
    }

    /// The client's public device key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.keys.public
    }
}

/// What a server needs to accept connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    keys: StaticKeypair,
    chain: CertificateChain,
    max_stanza: usize,
}

impl ServerConfig {
    /// A server with the given static key and the certificate chain that certifies it.
    pub fn new(keys: StaticKeypair, chain: CertificateChain) -> Self {
        Self { keys, chain, max_stanza: DEFAULT_MAX_STANZA }
    }

    /// Sets the largest stanza this server sends or accepts (default 1 MiB).
    pub fn max_stanza(mut self, max: usize) -> Self {
        self.max_stanza = max;
        self
    }

    /// The server's public static key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.keys.public
    }
}

fn encode_handshake(message: Hs, out: &mut Vec<u8>) -> Result<()> {
    let body = HandshakeMessage { message: Some(message) }.encode_to_vec();
    frame::encode(&body, out)
}

fn handshake_frame(message: Hs) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_handshake(message, &mut out)?;
    Ok(out)
}

fn decode_handshake(frame_body: &[u8]) -> Result<Hs> {
    HandshakeMessage::decode(frame_body)
        .map_err(Error::MalformedPayload)?
        .message
        .ok_or(Error::UnexpectedMessage("empty handshake message"))
}

/// Decodes a server's answer; a `version_rejected` becomes the error naming what it speaks.
fn decode_server_answer(config: &ClientConfig, frame_body: &[u8]) -> Result<Hs> {
    match decode_handshake(frame_body)? {
        Hs::VersionRejected(v) => Err(Error::UnsupportedVersion {
            got: config.header.protocol_version,
            supported: v.supported.to_vec(),
        }),
        other => Ok(other),
    }
}

fn noise_err(e: snow::Error) -> Error {
    match e {
        snow::Error::Decrypt | snow::Error::Input => Error::Decrypt,
        snow::Error::Dh => Error::LowOrderKey,
        other => Error::Noise(other),
    }
}

fn build(
    pattern: &str,
    keys: &StaticKeypair,
    prologue: &[u8],
    remote: Option<&[u8; 32]>,
    initiator: bool,
    rng: &mut impl CryptoRng,
) -> Result<snow::HandshakeState> {
    let params = pattern.parse().expect("NOISE_XX and NOISE_IK are valid pattern names");
    let mut b = resolver::builder(params, rng)
        .local_private_key(&keys.private[..])
        .and_then(|b| b.prologue(prologue))
        .map_err(Error::Noise)?;
    if let Some(key) = remote {
        b = b.remote_public_key(key).map_err(Error::Noise)?;
    }
    if initiator { b.build_initiator() } else { b.build_responder() }.map_err(Error::Noise)
}

fn remote_static(state: &snow::HandshakeState) -> Result<[u8; 32]> {
    state
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(Error::UnexpectedMessage("peer sent no static key"))
}

fn scratch() -> Vec<u8> {
    vec![0u8; MAX_NOISE_MESSAGE]
}

/// Entry point of the client side.
#[derive(Debug)]
pub struct ClientHandshake;

impl ClientHandshake {
    /// Starts an XX handshake (first contact). Returns the next state and the bytes to send:
    /// the connection header followed by the `client_hello` frame.
    pub fn start_xx(
        config: &ClientConfig,
        payload: &ClientPayload,
        rng: &mut impl CryptoRng,
    ) -> Result<(ExpectServerHello, Vec<u8>)> {
        let mut out = config.header.encode().to_vec();
        let state = Self::xx_hello(config, payload, rng, &mut out)?;
        Ok((state, out))
    }

    fn xx_hello(
        config: &ClientConfig,
        payload: &ClientPayload,
        rng: &mut impl CryptoRng,
        out: &mut Vec<u8>,
    ) -> Result<ExpectServerHello> {
        let mut state = build(NOISE_XX, &config.keys, &config.header.encode(), None, true, rng)?;
        let mut buf = scratch();
        let n = state.write_message(&[], &mut buf).map_err(noise_err)?;
        buf.truncate(n);
        encode_handshake(Hs::ClientHello(buf.into()), out)?;
        Ok(ExpectServerHello { state, payload: payload.encode_to_vec(), config: config.clone() })
    }

    /// Starts an IK handshake with the server static key cached from an earlier connection.
    /// Returns the next state and the bytes to send: the header and the `ik_hello` frame.
    ///
    /// The payload in `ik_hello` is encrypted to the cached key only: a server that lost that
    /// key cannot read it (and answers `retry_with_xx`); a recorded `ik_hello` can be replayed,
    /// which is why the server waits for the key confirmation before acting on it.
    pub fn start_ik(
        config: &ClientConfig,
        server_key: &[u8; 32],
        payload: &ClientPayload,
        rng: &mut impl CryptoRng,
    ) -> Result<(ExpectIkReply, Vec<u8>)> {
        let prologue = config.header.encode();
        let mut state = build(NOISE_IK, &config.keys, &prologue, Some(server_key), true, rng)?;
        let mut buf = scratch();
        let n = state.write_message(&payload.encode_to_vec(), &mut buf).map_err(noise_err)?;
        buf.truncate(n);
        let mut out = prologue.to_vec();
        encode_handshake(Hs::IkHello(buf.into()), &mut out)?;
        Ok((ExpectIkReply { state, payload: payload.clone(), config: config.clone() }, out))
    }
}

/// A completed client handshake.
pub struct ClientDone {
    /// The transport for the rest of the connection.
    pub transport: Transport,
    /// What the server said about itself (its chain verified).
    pub server: ServerPayload,
    /// The server's static key, worth caching for IK next time.
    pub server_key: [u8; 32],
    /// Whether this was an IK resumption.
    pub resumed: bool,
}

/// Client state: XX hello sent, waiting for `server_hello`.
pub struct ExpectServerHello {
    state: snow::HandshakeState,
    payload: Vec<u8>,
    config: ClientConfig,
}

impl ExpectServerHello {
    /// Handles the `server_hello` frame body at time `now` (seconds since the Unix epoch):
    /// checks the server's certificate chain, then returns the finished handshake and the
    /// `client_finish` frame to send.
    pub fn handle_server_hello(
        mut self,
        frame_body: &[u8],
        now: u64,
    ) -> Result<(ClientDone, Vec<u8>)> {
        let Hs::ServerHello(noise) = decode_server_answer(&self.config, frame_body)? else {
            return Err(Error::UnexpectedMessage("expected server_hello"));
        };
        let mut buf = scratch();
        let n = self.state.read_message(&noise, &mut buf).map_err(noise_err)?;
        let server = ServerPayload::decode(&buf[..n]).map_err(Error::MalformedPayload)?;
        let server_key = remote_static(&self.state)?;
        self.config.trust.verify(server.chain.as_ref(), &server_key, now)?;
        let n = self.state.write_message(&self.payload, &mut buf).map_err(noise_err)?;
        buf.truncate(n);
        let finish = handshake_frame(Hs::ClientFinish(buf.into()))?;
        let transport = Transport::new(
            self.state.into_transport_mode().map_err(Error::Noise)?,
            self.config.max_stanza,
        );
        Ok((ClientDone { transport, server, server_key, resumed: false }, finish))
    }
}

/// Client state: IK hello sent, waiting for `ik_reply` or `retry_with_xx`.
pub struct ExpectIkReply {
    state: snow::HandshakeState,
    payload: ClientPayload,
    config: ClientConfig,
}

/// What the server answered to an IK hello.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved once per connection; boxing buys nothing
pub enum IkReply {
    /// Resumed: the handshake is done; send these bytes (the key confirmation) first.
    Done(ClientDone, Vec<u8>),
    /// The server's key changed: send these bytes (an XX `client_hello`) and continue with XX.
    RetryWithXx(ExpectServerHello, Vec<u8>),
}

impl ExpectIkReply {
    /// Handles the server's answer at time `now` (seconds since the Unix epoch). `rng` supplies
    /// the new ephemeral key if the server asks for XX.
    pub fn handle_reply(
        mut self,
        frame_body: &[u8],
        now: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<IkReply> {
        match decode_server_answer(&self.config, frame_body)? {
            Hs::IkReply(noise) => {
                let mut buf = scratch();
                let n = self.state.read_message(&noise, &mut buf).map_err(noise_err)?;
                let server = ServerPayload::decode(&buf[..n]).map_err(Error::MalformedPayload)?;
                let server_key = remote_static(&self.state)?;
                self.config.trust.verify(server.chain.as_ref(), &server_key, now)?;
                let mut transport = Transport::new(
                    self.state.into_transport_mode().map_err(Error::Noise)?,
                    self.config.max_stanza,
                );
                let mut confirm = Vec::new();
                transport.seal(&[], &[], &mut confirm)?;
                Ok(IkReply::Done(
                    ClientDone { transport, server, server_key, resumed: true },
                    confirm,
                ))
            }
            Hs::RetryWithXx(RetryWithXx {}) => {
                let mut out = Vec::new();
                let next = ClientHandshake::xx_hello(&self.config, &self.payload, rng, &mut out)?;
                Ok(IkReply::RetryWithXx(next, out))
            }
            _ => Err(Error::UnexpectedMessage("expected ik_reply or retry_with_xx")),
        }
    }
}

/// Entry point of the server side.
#[derive(Debug)]
pub struct ServerHandshake;

impl ServerHandshake {
    /// Checks the connection header (its first [`ConnectionHeader::LEN`] bytes).
    pub fn handle_header(config: &ServerConfig, bytes: &[u8]) -> Result<ExpectClientHello> {
        let header = ConnectionHeader::decode(bytes)?;
        Ok(ExpectClientHello { config: config.clone(), header, ik_allowed: true })
    }
}

/// Server state: header checked, waiting for `client_hello` or `ik_hello`.
#[derive(Debug)]
pub struct ExpectClientHello {
    config: ServerConfig,
    header: ConnectionHeader,
    ik_allowed: bool,
}

/// What the server does after the client's first handshake message.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved once per connection; boxing buys nothing
pub enum ServerStep {
    /// XX: send these bytes (`server_hello`), then wait for `client_finish`.
    Xx(ExpectClientFinish, Vec<u8>),
    /// IK: send these bytes (`ik_reply`), then wait for the key confirmation.
    Ik(ExpectIkConfirm, Vec<u8>),
    /// The IK hello did not decrypt under our key: send these bytes (`retry_with_xx`) and wait
    /// for an XX `client_hello`.
    RetryWithXx(ExpectClientHello, Vec<u8>),
}

impl ExpectClientHello {
    /// The header the client sent.
    pub fn header(&self) -> ConnectionHeader {
        self.header
    }

    /// Handles the client's first handshake frame. `server_time_ms` goes into the server payload
    /// with the certificate chain; `rng` supplies the ephemeral key.
    pub fn handle_client_hello(
        self,
        frame_body: &[u8],
        server_time_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<ServerStep> {
        let payload = ServerPayload { server_time_ms, chain: Some(self.config.chain.clone()) }
            .encode_to_vec();
        let prologue = self.header.encode();
        let mut buf = scratch();
        match decode_handshake(frame_body)? {
            Hs::ClientHello(noise) => {
                let mut state = build(NOISE_XX, &self.config.keys, &prologue, None, false, rng)?;
                state.read_message(&noise, &mut buf).map_err(noise_err)?;
                let n = state.write_message(&payload, &mut buf).map_err(noise_err)?;
                buf.truncate(n);
                let reply = handshake_frame(Hs::ServerHello(buf.into()))?;
                Ok(ServerStep::Xx(
                    ExpectClientFinish { state, config: self.config, header: self.header },
                    reply,
                ))
            }
            Hs::IkHello(noise) if self.ik_allowed => {
                let mut state = build(NOISE_IK, &self.config.keys, &prologue, None, false, rng)?;
                let n = match state.read_message(&noise, &mut buf) {
                    Ok(n) => n,
                    Err(snow::Error::Decrypt) => {
                        let retry = handshake_frame(Hs::RetryWithXx(RetryWithXx {}))?;
                        let next = ExpectClientHello { ik_allowed: false, ..self };
                        return Ok(ServerStep::RetryWithXx(next, retry));
                    }
                    Err(e) => return Err(noise_err(e)),
                };
                let client = ClientPayload::decode(&buf[..n]).map_err(Error::MalformedPayload)?;
                let client_key = remote_static(&state)?;
                let n = state.write_message(&payload, &mut buf).map_err(noise_err)?;
                buf.truncate(n);
                let reply = handshake_frame(Hs::IkReply(buf.into()))?;
                let transport = Transport::new(
                    state.into_transport_mode().map_err(Error::Noise)?,
                    self.config.max_stanza,
                );
                let next = ExpectIkConfirm { transport, client, client_key, header: self.header };
                Ok(ServerStep::Ik(next, reply))
            }
            Hs::IkHello(_) => Err(Error::UnexpectedMessage("ik_hello after retry_with_xx")),
            _ => Err(Error::UnexpectedMessage("expected client_hello or ik_hello")),
        }
    }
}

/// Server state (XX): waiting for `client_finish`.
#[derive(Debug)]
pub struct ExpectClientFinish {
    state: snow::HandshakeState,
    config: ServerConfig,
    header: ConnectionHeader,
}

impl ExpectClientFinish {
    /// Handles the `client_finish` frame body.
    pub fn handle_client_finish(mut self, frame_body: &[u8]) -> Result<ServerDone> {
        let Hs::ClientFinish(noise) = decode_handshake(frame_body)? else {
            return Err(Error::UnexpectedMessage("expected client_finish"));
        };
        let mut buf = scratch();
        let n = self.state.read_message(&noise, &mut buf).map_err(noise_err)?;
        let payload = ClientPayload::decode(&buf[..n]).map_err(Error::MalformedPayload)?;
        let client_key = remote_static(&self.state)?;
        let transport = Transport::new(
            self.state.into_transport_mode().map_err(Error::Noise)?,
            self.config.max_stanza,
        );
        Ok(ServerDone { transport, payload, client_key, resumed: false, header: self.header })
    }
}

/// Server state (IK): the reply is sent; nothing about this client is trusted yet, because an
/// `ik_hello` can be replayed. Waits for the client's first transport message.
pub struct ExpectIkConfirm {
    transport: Transport,
    client: ClientPayload,
    client_key: [u8; 32],
    header: ConnectionHeader,
}

impl ExpectIkConfirm {
    /// Handles the first transport frame: it must decrypt and be empty. Only then is the
    /// client authenticated.
    pub fn handle_confirm(mut self, frame_body: &[u8]) -> Result<ServerDone> {
        let plain = self.transport.open(frame_body)?;
        if !plain.is_empty() {
            return Err(Error::UnexpectedMessage("key confirmation must be empty"));
        }
        Ok(ServerDone {
            transport: self.transport,
            payload: self.client,
            client_key: self.client_key,
            resumed: true,
            header: self.header,
        })
    }
}

/// A completed server handshake: the client is authenticated.
pub struct ServerDone {
    /// The transport for the rest of the connection.
    pub transport: Transport,
    /// Who the client says it is.
    pub payload: ClientPayload,
    /// The static key the client proved it holds.
    pub client_key: [u8; 32],
    /// Whether this was an IK resumption.
    pub resumed: bool,
    /// The connection header the client sent (its stanza-dictionary version).
    pub header: ConnectionHeader,
}

/// Debug without payloads (they hold identifiers and the provider JWT).
macro_rules! opaque_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).finish_non_exhaustive()
            }
        }
    )*};
}

opaque_debug!(ExpectServerHello, ExpectIkReply, ExpectIkConfirm, ServerDone, ClientDone);

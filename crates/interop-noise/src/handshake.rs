//! The handshake typestates. Each `handle_*` consumes the state it is called on.
//!
//! XX (first contact):
//! ```text
//!   -> e                      ClientHello  (empty payload)
//!   <- e, ee, s, es           ServerHello  (ServerPayload)
//!   -> s, se                  ClientFinish (ClientPayload)
//! ```

use prost::Message;

use crate::proto::{ClientPayload, HandshakeMessage, ServerPayload, handshake_message};
use crate::{
    ConnectionHeader, Error, MAX_NOISE_MESSAGE, NOISE_XX, Result, StaticKeypair, Transport, frame,
};

/// What a client needs to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    keys: StaticKeypair,
    expected_server_key: Option<[u8; 32]>,
    header: ConnectionHeader,
}

impl ClientConfig {
    /// A client with the given device key.
    pub fn new(keys: StaticKeypair) -> Self {
        Self { keys, expected_server_key: None, header: ConnectionHeader::current(1) }
    }

    /// Refuse any server whose static key is not `key`.
    pub fn expect_server_key(mut self, key: [u8; 32]) -> Self {
        self.expected_server_key = Some(key);
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
}

impl ServerConfig {
    /// A server with the given static key.
    pub fn new(keys: StaticKeypair) -> Self {
        Self { keys }
    }

    /// The server's public static key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.keys.public
    }
}

fn encode_handshake(message: handshake_message::Message) -> Result<Vec<u8>> {
    let body = HandshakeMessage { message: Some(message) }.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + frame::LEN_PREFIX);
    frame::encode(&body, &mut out)?;
    Ok(out)
}

fn decode_handshake(frame_body: &[u8]) -> Result<handshake_message::Message> {
    HandshakeMessage::decode(frame_body)
        .map_err(Error::MalformedPayload)?
        .message
        .ok_or(Error::UnexpectedMessage("empty handshake message"))
}

fn noise_err(e: snow::Error) -> Error {
    match e {
        snow::Error::Decrypt => Error::Decrypt,
        other => Error::Noise(other),
    }
}

/// Entry point of the client side.
#[derive(Debug)]
pub struct ClientHandshake;

impl ClientHandshake {
    /// Starts an XX handshake. Returns the next state and the bytes to send: the connection
    /// header followed by the ClientHello frame.
    pub fn start(
        config: &ClientConfig,
        payload: &ClientPayload,
    ) -> Result<(ExpectServerHello, Vec<u8>)> {
        let prologue = config.header.encode();
        let params = NOISE_XX.parse().expect("NOISE_XX is a valid pattern name");
        let mut state = snow::Builder::new(params)
            .local_private_key(&config.keys.private[..])
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .map_err(Error::Noise)?;
        let mut msg = vec![0u8; MAX_NOISE_MESSAGE];
        let n = state.write_message(&[], &mut msg).map_err(noise_err)?;
        msg.truncate(n);
        let mut out = prologue.to_vec();
        out.extend(encode_handshake(handshake_message::Message::ClientHello(msg.into()))?);
        Ok((
            ExpectServerHello {
                state,
                payload: payload.encode_to_vec(),
                expected_server_key: config.expected_server_key,
            },
            out,
        ))
    }
}

/// Client state: waiting for the server's hello.
#[derive(Debug)]
pub struct ExpectServerHello {
    state: snow::HandshakeState,
    payload: Vec<u8>,
    expected_server_key: Option<[u8; 32]>,
}

impl ExpectServerHello {
    /// Handles the ServerHello frame body. Returns the transport, what the server said about
    /// itself, and the ClientFinish frame to send.
    pub fn handle_server_hello(
        mut self,
        frame_body: &[u8],
    ) -> Result<(Transport, ServerPayload, Vec<u8>)> {
        let handshake_message::Message::ServerHello(noise) = decode_handshake(frame_body)? else {
            return Err(Error::UnexpectedMessage("expected ServerHello"));
        };
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        let n = self.state.read_message(&noise, &mut buf).map_err(noise_err)?;
        let server_payload = ServerPayload::decode(&buf[..n]).map_err(Error::MalformedPayload)?;
        let server_key = self
            .state
            .get_remote_static()
            .ok_or(Error::UnexpectedMessage("server sent no static key"))?;
        if self.expected_server_key.is_some_and(|expected| server_key != expected) {
            return Err(Error::UnexpectedServerKey);
        }
        let n = self.state.write_message(&self.payload, &mut buf).map_err(noise_err)?;
        let finish =
            encode_handshake(handshake_message::Message::ClientFinish(buf[..n].to_vec().into()))?;
        let transport = Transport::new(self.state.into_transport_mode().map_err(Error::Noise)?);
        Ok((transport, server_payload, finish))
    }
}

/// Entry point of the server side.
#[derive(Debug)]
pub struct ServerHandshake;

impl ServerHandshake {
    /// Checks the connection header (its first [`ConnectionHeader::LEN`] bytes).
    pub fn handle_header(config: &ServerConfig, bytes: &[u8]) -> Result<ExpectClientHello> {
        let header = ConnectionHeader::decode(bytes)?;
        let prologue = header.encode();
        let params = NOISE_XX.parse().expect("NOISE_XX is a valid pattern name");
        let state = snow::Builder::new(params)
            .local_private_key(&config.keys.private[..])
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .map_err(Error::Noise)?;
        Ok(ExpectClientHello { state, header })
    }
}

/// Server state: header checked, waiting for the client's hello.
#[derive(Debug)]
pub struct ExpectClientHello {
    state: snow::HandshakeState,
    header: ConnectionHeader,
}

impl ExpectClientHello {
    /// The header the client sent.
    pub fn header(&self) -> ConnectionHeader {
        self.header
    }

    /// Handles the ClientHello frame body; returns the ServerHello frame to send.
    pub fn handle_client_hello(
        mut self,
        frame_body: &[u8],
        payload: &ServerPayload,
    ) -> Result<(ExpectClientFinish, Vec<u8>)> {
        let handshake_message::Message::ClientHello(noise) = decode_handshake(frame_body)? else {
            return Err(Error::UnexpectedMessage("expected ClientHello"));
        };
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        self.state.read_message(&noise, &mut buf).map_err(noise_err)?;
        let n = self.state.write_message(&payload.encode_to_vec(), &mut buf).map_err(noise_err)?;
        let reply =
            encode_handshake(handshake_message::Message::ServerHello(buf[..n].to_vec().into()))?;
        Ok((ExpectClientFinish { state: self.state }, reply))
    }
}

/// Server state: waiting for the client's finish.
#[derive(Debug)]
pub struct ExpectClientFinish {
    state: snow::HandshakeState,
}

/// A completed server handshake.
#[derive(Debug)]
pub struct ServerDone {
    /// The transport for the rest of the connection.
    pub transport: Transport,
    /// Who the client says it is.
    pub payload: ClientPayload,
    /// The static key the client proved it holds.
    pub client_key: [u8; 32],
}

impl ExpectClientFinish {
    /// Handles the ClientFinish frame body.
    pub fn handle_client_finish(mut self, frame_body: &[u8]) -> Result<ServerDone> {
        let handshake_message::Message::ClientFinish(noise) = decode_handshake(frame_body)? else {
            return Err(Error::UnexpectedMessage("expected ClientFinish"));
        };
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        let n = self.state.read_message(&noise, &mut buf).map_err(noise_err)?;
        let payload = ClientPayload::decode(&buf[..n]).map_err(Error::MalformedPayload)?;
        let client_key: [u8; 32] = self
            .state
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(Error::UnexpectedMessage("client sent no static key"))?;
        let transport = Transport::new(self.state.into_transport_mode().map_err(Error::Noise)?);
        Ok(ServerDone { transport, payload, client_key })
    }
}

//! Tokio adapter: a framed, encrypted stream over any `AsyncRead + AsyncWrite`.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::FrameDecoder;
use crate::proto::{ClientPayload, ServerPayload};
use crate::{
    ClientConfig, ClientHandshake, ConnectionHeader, Error, Result, ServerConfig, ServerHandshake,
    Transport,
};

const READ_CHUNK: usize = 16 * 1024;

/// An established connection: send and receive whole messages (stanza bytes).
#[derive(Debug)]
pub struct NoiseStream<S> {
    io: S,
    transport: Transport,
    decoder: FrameDecoder,
    chunk: Box<[u8]>,
    out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> NoiseStream<S> {
    fn new(io: S, transport: Transport, decoder: FrameDecoder) -> Self {
        Self { io, transport, decoder, chunk: vec![0u8; READ_CHUNK].into(), out: Vec::new() }
    }

    /// Encrypts and writes one message.
    pub async fn send(&mut self, message: &[u8]) -> Result<()> {
        self.out.clear();
        self.transport.encrypt_frame_into(message, &mut self.out)?;
        self.io.write_all(&self.out).await?;
        Ok(())
    }

    /// Reads and decrypts the next message; `Ok(None)` when the peer closed the stream cleanly
    /// between messages.
    ///
    /// Cancel-safe: bytes already read stay buffered, so it may be used in `tokio::select!`.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(body) = self.decoder.next_frame()? {
                return self.transport.decrypt(&body).map(Some);
            }
            let n = self.io.read(&mut self.chunk).await?;
            if n == 0 {
                return if self.decoder.buffered() == 0 { Ok(None) } else { Err(Error::Truncated) };
            }
            self.decoder.push(&self.chunk[..n]);
        }
    }

    /// Flushes and shuts down the write half.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.io.shutdown().await?;
        Ok(())
    }
}

async fn read_frame<S: AsyncRead + Unpin>(
    io: &mut S,
    decoder: &mut FrameDecoder,
) -> Result<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(body) = decoder.next_frame()? {
            return Ok(body);
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::Truncated);
        }
        decoder.push(&chunk[..n]);
    }
}

/// Runs the client side of the handshake on `io`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    config: &ClientConfig,
    payload: &ClientPayload,
) -> Result<(NoiseStream<S>, ServerPayload)> {
    let (expect_hello, first) = ClientHandshake::start(config, payload)?;
    io.write_all(&first).await?;
    let mut decoder = FrameDecoder::default();
    let hello = read_frame(&mut io, &mut decoder).await?;
    let (transport, server_payload, finish) = expect_hello.handle_server_hello(&hello)?;
    io.write_all(&finish).await?;
    Ok((NoiseStream::new(io, transport, decoder), server_payload))
}

/// A connection the server accepted, with who the client said it is.
#[derive(Debug)]
pub struct Accepted<S> {
    /// The established stream.
    pub stream: NoiseStream<S>,
    /// The client's handshake payload.
    pub payload: ClientPayload,
    /// The static key the client proved it holds.
    pub client_key: [u8; 32],
}

/// Runs the server side of the handshake on `io`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    config: &ServerConfig,
    server_payload: &ServerPayload,
) -> Result<Accepted<S>> {
    let mut header = [0u8; ConnectionHeader::LEN];
    io.read_exact(&mut header).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::Truncated,
        _ => Error::Io(e),
    })?;
    let expect_client_hello = ServerHandshake::handle_header(config, &header)?;
    let mut decoder = FrameDecoder::default();
    let hello = read_frame(&mut io, &mut decoder).await?;
    let (expect_finish, reply) = expect_client_hello.handle_client_hello(&hello, server_payload)?;
    io.write_all(&reply).await?;
    let finish = read_frame(&mut io, &mut decoder).await?;
    let done = expect_finish.handle_client_finish(&finish)?;
    Ok(Accepted {
        stream: NoiseStream::new(io, done.transport, decoder),
        payload: done.payload,
        client_key: done.client_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticKeypair;

    #[tokio::test]
    async fn handshake_and_messages_over_a_duplex_pipe() {
        // Large enough for the messages below: the test writes before it reads.
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server_keys = StaticKeypair::generate();
        let server = ServerConfig::new(server_keys.clone());
        let client =
            ClientConfig::new(StaticKeypair::generate()).expect_server_key(server_keys.public);
        let client_pub = *client.public_key();
        let payload =
            ClientPayload { account_id: "bob".into(), device_id: 2, ..Default::default() };
        let (client_side, server_side) = tokio::join!(
            connect(a, &client, &payload),
            accept(b, &server, &ServerPayload { server_time_ms: 42 })
        );
        let (mut c, sp) = client_side.unwrap();
        let mut s = server_side.unwrap();
        assert_eq!(sp.server_time_ms, 42);
        assert_eq!(s.payload.account_id, "bob");
        assert_eq!(s.client_key, client_pub);
        c.send(b"one").await.unwrap();
        c.send(&[7u8; 5000]).await.unwrap();
        assert_eq!(s.stream.recv().await.unwrap().unwrap(), b"one");
        assert_eq!(s.stream.recv().await.unwrap().unwrap(), vec![7u8; 5000]);
        s.stream.send(b"back").await.unwrap();
        assert_eq!(c.recv().await.unwrap().unwrap(), b"back");
        c.shutdown().await.unwrap();
        drop(c);
        assert!(s.stream.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn wrong_server_key_is_refused() {
        let (a, b) = tokio::io::duplex(1024);
        let server = ServerConfig::new(StaticKeypair::generate());
        let client = ClientConfig::new(StaticKeypair::generate())
            .expect_server_key(StaticKeypair::generate().public);
        let payload = ClientPayload::default();
        let server_payload = ServerPayload::default();
        let (client_side, _server_side) =
            tokio::join!(connect(a, &client, &payload), accept(b, &server, &server_payload));
        assert!(matches!(client_side, Err(Error::UnexpectedServerKey)));
    }
}

//! Tokio adapter: a framed, encrypted stream over any `AsyncRead + AsyncWrite`.
//!
//! [`connect`] runs the client side (IK when a server key is cached, falling back to XX when the
//! server asks), [`accept`] the server side. Both return only once the peer is authenticated.
//!
//! Every handshake message and every stanza is written with one `write_all` followed by a
//! flush, so over a message-oriented transport adapted to `AsyncWrite` (a WebSocket carrying
//! one binary message per write) each stanza travels as one message.

use rand_core::CryptoRng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::FrameDecoder;
use crate::proto::{ClientPayload, ServerPayload};
use crate::{
    ClientConfig, ClientDone, ClientHandshake, ConnectionHeader, Error, IkReply, Result,
    ServerConfig, ServerHandshake, ServerStep, Transport,
};

/// Room reserved per `read` call beyond the rest of a pending frame: small, because every idle
/// connection holds this much while it waits (the frame decoder gathers larger frames across
/// reads, reserving room for the whole frame once its length is in).
const READ_CHUNK: usize = 2 * 1024;

/// An established connection: send and receive whole messages (stanza bytes).
///
/// Bytes are read straight into the frame decoder's buffer and decrypted from there, and a
/// message's frames are written from the transport's buffer ([`Transport::seal_stanza`]): no
/// copies beyond the socket's and snow's own.
#[derive(Debug)]
pub struct NoiseStream<S> {
    io: S,
    transport: Transport,
    decoder: FrameDecoder,
    /// Frames of messages queued with [`queue`](NoiseStream::queue), not written yet.
    out: Vec<u8>,
}

/// A write buffer grown beyond this is released after it was written, so that a connection
/// that once sent a burst does not keep its memory while idle.
const KEEP_OUT: usize = 16 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin> NoiseStream<S> {
    fn new(io: S, transport: Transport, decoder: FrameDecoder) -> Self {
        Self { io, transport, decoder, out: Vec::new() }
    }

    /// Encrypts and writes one message (fragmented if large).
    pub async fn send(&mut self, message: &[u8]) -> Result<()> {
        // Anything queued goes first, in order.
        if !self.out.is_empty() {
            self.queue(message)?;
            return self.flush().await;
        }
        let frames = self.transport.seal_stanza(message)?;
        self.io.write_all(&frames).await?;
        drop(frames);
        self.io.flush().await?;
        Ok(())
    }

    /// Encrypts `message` (fragmented if large) into the outgoing buffer without writing it:
    /// [`flush`](Self::flush) writes everything queued with one write where the socket takes it,
    /// which saves a system call (and, on loopback, a wake-up of the peer) per message.
    pub fn queue(&mut self, message: &[u8]) -> Result<()> {
        self.transport.encrypt_stanza_into(message, &mut self.out)
    }

    /// Writes what [`queue`](Self::queue) buffered. Not cancel-safe (a cancelled write may
    /// have sent part of it).
    pub async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
            if self.out.capacity() > KEEP_OUT {
                self.out = Vec::new();
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Reads and decrypts the next message; `Ok(None)` when the peer closed the stream cleanly
    /// between messages.
    ///
    /// Cancel-safe: bytes already read stay buffered, so it may be used in `tokio::select!`.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            while let Some(body) = self.decoder.next_frame_ref()? {
                if let Some(message) = self.transport.decrypt(body)? {
                    return Ok(Some(message));
                }
            }
            // Cancel-safe too: a cancelled `read_buf` read nothing.
            let n = self.io.read_buf(self.decoder.read_buffer(READ_CHUNK)).await?;
            if n == 0 {
                return if self.decoder.buffered() == 0 { Ok(None) } else { Err(Error::Truncated) };
            }
        }
    }

    /// Reads and discards whatever the peer still sends, up to `max` bytes or its end of
    /// stream. A server calls it after shutting down its write half on an error, so that
    /// closing the socket with unread input does not reset the connection before the peer has
    /// read the error (a "lingering close").
    pub async fn drain(&mut self, max: usize) -> Result<()> {
        let mut sink = [0u8; READ_CHUNK];
        let mut left = max;
        while left > 0 {
            let n = self.io.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok(())
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

/// What the client learned in the handshake.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The server's payload (its chain already verified).
    pub server: ServerPayload,
    /// The server's static key: cache it and pass it to the next [`connect`] for IK.
    pub server_key: [u8; 32],
    /// Whether IK resumption succeeded.
    pub resumed: bool,
}

/// Runs the client side of the handshake on `io`: IK with `cached_server_key` when given
/// (falling back to XX if the server asks), XX otherwise. `now` is seconds since the Unix
/// epoch, for the certificate checks.
pub async fn connect<S, R>(
    mut io: S,
    config: &ClientConfig,
    payload: &ClientPayload,
    cached_server_key: Option<&[u8; 32]>,
    now: u64,
    rng: &mut R,
) -> Result<(NoiseStream<S>, Connected)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: CryptoRng,
{
    let mut decoder = FrameDecoder::default();
    let (done, last) = match cached_server_key {
        Some(key) => {
            let (expect, first) = ClientHandshake::start_ik(config, key, payload, rng)?;
            io.write_all(&first).await?;
            io.flush().await?;
            let reply = read_frame(&mut io, &mut decoder).await?;
            match expect.handle_reply(&reply, now, rng)? {
                IkReply::Done(done, confirm) => (done, confirm),
                IkReply::RetryWithXx(expect, hello) => {
                    io.write_all(&hello).await?;
                    io.flush().await?;
                    let reply = read_frame(&mut io, &mut decoder).await?;
                    expect.handle_server_hello(&reply, now)?
                }
            }
        }
        None => {
            let (expect, first) = ClientHandshake::start_xx(config, payload, rng)?;
            io.write_all(&first).await?;
            io.flush().await?;
            let reply = read_frame(&mut io, &mut decoder).await?;
            expect.handle_server_hello(&reply, now)?
        }
    };
    io.write_all(&last).await?;
    io.flush().await?;
    let ClientDone { transport, server, server_key, resumed } = done;
    Ok((NoiseStream::new(io, transport, decoder), Connected { server, server_key, resumed }))
}

/// A connection the server accepted, with who the client said it is.
pub struct Accepted<S> {
    /// The established stream.
    pub stream: NoiseStream<S>,
    /// The client's handshake payload.
    pub payload: ClientPayload,
    /// The static key the client proved it holds.
    pub client_key: [u8; 32],
    /// Whether the client resumed with IK.
    pub resumed: bool,
    /// The connection header the client sent (its stanza-dictionary version).
    pub header: ConnectionHeader,
}

impl<S> std::fmt::Debug for Accepted<S> {
    /// Leaves out the payload: it holds identifiers and the provider JWT.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("resumed", &self.resumed)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// Runs the server side of the handshake on `io`. Returns once the client is authenticated
/// (after `client_finish` for XX, after the key confirmation for IK).
pub async fn accept<S, R>(
    mut io: S,
    config: &ServerConfig,
    server_time_ms: u64,
    rng: &mut R,
) -> Result<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: CryptoRng,
{
    let mut header = [0u8; ConnectionHeader::LEN];
    io.read_exact(&mut header).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::Truncated,
        _ => Error::Io(e),
    })?;
    let mut expect_hello = match ServerHandshake::handle_header(config, &header) {
        Ok(next) => next,
        Err(e @ Error::UnsupportedVersion { .. }) => {
            // Tell the client which versions we speak, then give up on the connection.
            io.write_all(&ConnectionHeader::rejection_frame()).await?;
            io.flush().await?;
            io.shutdown().await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let mut decoder = FrameDecoder::default();
    let done = loop {
        let hello = read_frame(&mut io, &mut decoder).await?;
        match expect_hello.handle_client_hello(&hello, server_time_ms, rng)? {
            ServerStep::Xx(expect_finish, reply) => {
                io.write_all(&reply).await?;
                io.flush().await?;
                let finish = read_frame(&mut io, &mut decoder).await?;
                break expect_finish.handle_client_finish(&finish)?;
            }
            ServerStep::Ik(expect_confirm, reply) => {
                io.write_all(&reply).await?;
                io.flush().await?;
                let confirm = read_frame(&mut io, &mut decoder).await?;
                break expect_confirm.handle_confirm(&confirm)?;
            }
            ServerStep::RetryWithXx(next, retry) => {
                io.write_all(&retry).await?;
                io.flush().await?;
                expect_hello = next;
            }
        }
    };
    Ok(Accepted {
        stream: NoiseStream::new(io, done.transport, decoder),
        payload: done.payload,
        client_key: done.client_key,
        resumed: done.resumed,
        header: done.header,
    })
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::StaticKeypair;
    use crate::cert::{IntermediateKey, RootKey, Validity};
    use crate::proto::CertificateChain;

    const NOW: u64 = 1_700_000_000;

    fn server(rng: &mut ChaCha20Rng, root: &RootKey) -> ServerConfig {
        let window = Validity { not_before: NOW - 10, not_after: NOW + 10 };
        let inter = IntermediateKey::generate(rng);
        let keys = StaticKeypair::generate(rng);
        let chain = CertificateChain {
            intermediate: Some(root.issue_intermediate(&inter, 1, window)),
            leaf: Some(inter.issue_leaf(1, &keys.public, 2, window)),
        };
        ServerConfig::new(keys, chain)
    }

    type Pipe = NoiseStream<tokio::io::DuplexStream>;

    /// A client and a server stream after an XX handshake over a pipe of `buffer` bytes; keys
    /// and randomness from `seed`.
    async fn established(seed: u64, buffer: usize) -> (Pipe, Pipe) {
        let rng = &mut ChaCha20Rng::seed_from_u64(seed);
        let root = RootKey::generate(rng);
        let server_cfg = server(rng, &root);
        let client = ClientConfig::new(StaticKeypair::generate(rng), root.trust_anchor());
        let (a, b) = tokio::io::duplex(buffer);
        let mut crng = ChaCha20Rng::seed_from_u64(seed + 1);
        let mut srng = ChaCha20Rng::seed_from_u64(seed + 2);
        let payload = ClientPayload::default();
        let (client_side, server_side) = tokio::join!(
            connect(a, &client, &payload, None, NOW, &mut crng),
            accept(b, &server_cfg, 0, &mut srng)
        );
        (client_side.unwrap().0, server_side.unwrap().stream)
    }

    #[tokio::test]
    async fn xx_then_ik_then_stale_ik_over_a_duplex_pipe() {
        let rng = &mut ChaCha20Rng::seed_from_u64(3);
        let root = RootKey::generate(rng);
        let server_cfg = server(rng, &root);
        let client = ClientConfig::new(StaticKeypair::generate(rng), root.trust_anchor());
        let client_pub = *client.public_key();
        let payload =
            ClientPayload { account_id: "bob".into(), device_id: 2, ..Default::default() };

        let mut cached = None;
        for (round, server_cfg, want_resumed) in [
            (0, server_cfg.clone(), false),
            (1, server_cfg.clone(), true),
            // The server rotated its key: the cached key is stale, IK falls back to XX.
            (2, server(rng, &root), false),
        ] {
            let (a, b) = tokio::io::duplex(1 << 20);
            let mut crng = ChaCha20Rng::seed_from_u64(100 + round);
            let mut srng = ChaCha20Rng::seed_from_u64(200 + round);
            let (client_side, server_side) = tokio::join!(
                connect(a, &client, &payload, cached.as_ref(), NOW, &mut crng),
                accept(b, &server_cfg, 42, &mut srng)
            );
            let (mut c, connected) = client_side.unwrap();
            let mut s = server_side.unwrap();
            assert_eq!(connected.resumed, want_resumed, "round {round}");
            assert_eq!(s.resumed, want_resumed, "round {round}");
            assert_eq!(connected.server.server_time_ms, 42);
            assert_eq!(&connected.server_key, server_cfg.public_key());
            assert_eq!(s.payload.account_id, "bob");
            assert_eq!(s.client_key, client_pub);
            assert_eq!(s.header, ConnectionHeader::current(1));
            assert!(!format!("{s:?}").contains("bob"), "Debug leaves out the payload");
            cached = Some(connected.server_key);

            c.send(b"one").await.unwrap();
            c.send(&[7u8; 200_000]).await.unwrap();
            assert_eq!(s.stream.recv().await.unwrap().unwrap(), b"one");
            assert_eq!(s.stream.recv().await.unwrap().unwrap(), vec![7u8; 200_000]);
            s.stream.send(b"back").await.unwrap();
            assert_eq!(c.recv().await.unwrap().unwrap(), b"back");
            c.shutdown().await.unwrap();
            drop(c);
            assert!(s.stream.recv().await.unwrap().is_none());
        }
    }

    /// A pipe that moves a few bytes at a time: every message arrives over many reads, frames
    /// split anywhere, and the writer waits for the reader.
    #[tokio::test]
    async fn messages_survive_reads_of_a_few_bytes() {
        let (mut c, mut s) = established(10, 7).await;
        let message = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 241) as u8).collect() };
        let sizes = [0, 1, 3, 2_000, 5_000, crate::MAX_WHOLE, crate::MAX_WHOLE + 1, 200_000, 10];
        let sender = async {
            for n in sizes {
                c.send(&message(n)).await.unwrap();
            }
        };
        let receiver = async {
            for n in sizes {
                assert_eq!(s.recv().await.unwrap().unwrap(), message(n), "{n} bytes");
            }
        };
        tokio::join!(sender, receiver);
    }

    /// Queued messages go out with one flush, in order, mixed with sends, and the buffer a
    /// burst grew is released afterwards.
    #[tokio::test]
    async fn queued_messages_arrive_in_order_with_sends() {
        let (mut c, mut s) = established(20, 1 << 20).await;
        s.queue(b"one").unwrap();
        s.queue(&[7u8; 100_000]).unwrap();
        s.send(b"three").await.unwrap(); // flushes what was queued first
        s.queue(b"four").unwrap();
        s.flush().await.unwrap();
        assert!(s.out.capacity() <= KEEP_OUT, "a burst's buffer is not kept");
        assert_eq!(c.recv().await.unwrap().unwrap(), b"one");
        assert_eq!(c.recv().await.unwrap().unwrap(), vec![7u8; 100_000]);
        assert_eq!(c.recv().await.unwrap().unwrap(), b"three");
        assert_eq!(c.recv().await.unwrap().unwrap(), b"four");
    }

    #[tokio::test]
    async fn a_server_under_another_root_is_refused() {
        let rng = &mut ChaCha20Rng::seed_from_u64(4);
        let other_root = RootKey::generate(rng);
        let server_cfg = server(rng, &other_root);
        let client =
            ClientConfig::new(StaticKeypair::generate(rng), RootKey::generate(rng).trust_anchor());
        let (a, b) = tokio::io::duplex(4096);
        let mut crng = ChaCha20Rng::seed_from_u64(5);
        let mut srng = ChaCha20Rng::seed_from_u64(6);
        let payload = ClientPayload::default();
        let (client_side, _server_side) = tokio::join!(
            connect(a, &client, &payload, None, NOW, &mut crng),
            accept(b, &server_cfg, 0, &mut srng)
        );
        assert!(matches!(client_side, Err(Error::BadCertificate(crate::CertError::BadSignature))));
    }

    #[tokio::test]
    async fn an_unsupported_version_is_answered_with_the_supported_ones() {
        let rng = &mut ChaCha20Rng::seed_from_u64(7);
        let root = RootKey::generate(rng);
        let server_cfg = server(rng, &root);
        let client = ClientConfig::new(StaticKeypair::generate(rng), root.trust_anchor())
            .header(ConnectionHeader { protocol_version: 2, dictionary_version: 1 });
        let (a, b) = tokio::io::duplex(4096);
        let mut crng = ChaCha20Rng::seed_from_u64(8);
        let mut srng = ChaCha20Rng::seed_from_u64(9);
        let payload = ClientPayload::default();
        let (client_side, server_side) = tokio::join!(
            connect(a, &client, &payload, None, NOW, &mut crng),
            accept(b, &server_cfg, 0, &mut srng)
        );
        let want = |r: &Error| matches!(r, Error::UnsupportedVersion { got: 2, supported } if supported == &[1]);
        assert!(client_side.as_ref().is_err_and(want), "{:?}", client_side.map(|_| ()));
        assert!(server_side.as_ref().is_err_and(want), "{:?}", server_side.map(|_| ()));
    }
}

//! The chat over WebSocket (`GET /chat` on the gatekeeper's HTTP listener): the same Noise
//! handshake and stanzas as over TCP, one binary WebSocket message per handshake message or
//! stanza. A native user registers and is then known by its device key over WebSocket too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Sink, Stream};
use interop_enlist::enlist::{Request, Response};
use interop_noise::proto::{ClientPayload, Product};
use interop_noise::tokio::NoiseStream;
use interop_noise::{ClientConfig, StaticKeypair, TrustAnchor};
use interop_server::gatekeeper::{CodeSink, Gatekeeper, GatekeeperConfig};
use interop_stanza::{Node, binary};
use rand::SeedableRng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The client side of the adapter: binary messages in, one binary message per write out.
struct WsIo {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    read: Vec<u8>,
    messages_sent: Arc<Mutex<u32>>,
}

impl AsyncRead for WsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read.is_empty() {
                let n = this.read.len().min(buf.remaining());
                buf.put_slice(&this.read[..n]);
                this.read.drain(..n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => this.read = b.to_vec(),
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(buf.to_vec().into()))
            .map_err(io::Error::other)?;
        *this.messages_sent.lock().unwrap() += 1;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_close(cx).map_err(io::Error::other)
    }
}

async fn connect(
    http: std::net::SocketAddr,
    root: [u8; 32],
    keys: &StaticKeypair,
    sent: Arc<Mutex<u32>>,
) -> NoiseStream<WsIo> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/chat")).await.unwrap();
    let io = WsIo { ws, read: Vec::new(), messages_sent: sent };
    let config = ClientConfig::new(keys.clone(), TrustAnchor::new(root).unwrap());
    let payload = ClientPayload { product: Product::Native as i32, ..Default::default() };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let (stream, _) =
        interop_noise::tokio::connect(io, &config, &payload, None, now, &mut rng).await.unwrap();
    stream
}

async fn request(stream: &mut NoiseStream<WsIo>, node: &Node) -> Node {
    stream.send(&binary::encode(node).unwrap()).await.unwrap();
    let id = node.attr("id").unwrap().to_owned();
    loop {
        let bytes = tokio::time::timeout(TIMEOUT, stream.recv()).await.unwrap().unwrap().unwrap();
        let reply = binary::decode(&bytes).unwrap();
        if reply.attr("id") == Some(id.as_str()) {
            return reply;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_user_registers_and_chats_over_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let codes: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let sink_codes = Arc::clone(&codes);
    let sink: CodeSink = Arc::new(move |identifier: &str, code: &str| {
        sink_codes.lock().unwrap().insert(identifier.to_owned(), code.to_owned());
    });
    let mut config = GatekeeperConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
    config.dev = true;
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    config.code_sink = Some(sink);
    let gk = Gatekeeper::bind(config).await.unwrap();
    let http = gk.http_addr().unwrap().unwrap();
    let root = gk.root_key();
    let stop = CancellationToken::new();
    tokio::spawn(gk.run(stop.clone().cancelled_owned()));

    let keys = StaticKeypair::generate(&mut rand::rng());
    let sent = Arc::new(Mutex::new(0u32));
    let mut ws = connect(http, root, &keys, Arc::clone(&sent)).await;
    // Header + first handshake message were written once each: one message per write.
    let after_handshake = *sent.lock().unwrap();
    assert!(after_handshake >= 1, "{after_handshake}");

    let answer =
        request(&mut ws, &Request::Register { identifier: "+15550777".into() }.to_node("r1")).await;
    let (_, response) = Response::from_node(&answer).unwrap();
    assert!(matches!(response, Response::CodeSent { .. }), "{response:?}");
    assert_eq!(*sent.lock().unwrap(), after_handshake + 1, "one stanza, one WebSocket message");
    let code = codes.lock().unwrap().get("+15550777").cloned().unwrap();
    let confirm =
        Request::Confirm { identifier: "+15550777".into(), code, keys: common::key_bundle(7) };
    let (_, response) =
        Response::from_node(&request(&mut ws, &confirm.to_node("r2")).await).unwrap();
    assert!(matches!(response, Response::Registered { .. }), "{response:?}");
    ws.shutdown().await.unwrap();

    // A new WebSocket connection with the same key is the registered device: iqs are served.
    let mut again = connect(http, root, &keys, Arc::new(Mutex::new(0))).await;
    let ping =
        Node::new("iq").with_attr("id", "p").with_attr("type", "get").with_attr("xmlns", "ping");
    let pong = request(&mut again, &ping).await;
    assert_eq!(pong.attr("type"), Some("result"));
    stop.cancel();
}

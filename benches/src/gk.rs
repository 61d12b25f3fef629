//! The gatekeeper side: native users registered with verification codes, connections through
//! interop-client's [`Connection`] (Noise XX or IK + binary stanzas), messages with
//! participants, acks.
//!
//! The load generator speaks the protocol directly on `Connection` (PROTOCOL.md sections 3.6
//! "Native users" and 4 "Delivery") instead of using the full `Client`, whose Signal state and
//! SQLite profile would make thousands of connections in one process too heavy: the payloads
//! are opaque bytes of the size of a real Signal message, which is all the gatekeeper sees.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use interop_client::connection::{ConnectOptions, Connection};
use interop_enlist::enlist::{KeyBundle, Prekey, Request, Response, SignedPrekey};
use interop_noise::proto::Product;
use interop_noise::{StaticKeypair, TrustAnchor};
use interop_stanza::Node;
use interop_stanza::stanza::{Ack, AckClass, Enc, EncType, Message, MessageType, Participant};
use serde::{Deserialize, Serialize};

/// One registered native device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// The device's Noise static key (private ‖ public), hex. Throw-away benchmark keys.
    pub key: String,
    /// Internal account id.
    pub account: String,
    /// Device id.
    pub device: u32,
}

impl User {
    /// `account@s.interop`: where messages to this user are addressed.
    pub fn account_jid(&self) -> String {
        format!("{}@s.interop", self.account)
    }

    /// `account:device@s.interop`: the device's address (one `participants/to`).
    pub fn device_jid(&self) -> String {
        format!("{}:{}@s.interop", self.account, self.device)
    }

    fn keypair(&self) -> Result<StaticKeypair> {
        let bytes = hex::decode(&self.key).context("user key is not hex")?;
        StaticKeypair::from_bytes(&bytes).context("user key is not a key pair")
    }
}

/// What `loadgen prepare` leaves for `loadgen run`: the server's keys and the users.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The gatekeeper's root key (trust anchor), hex.
    pub root_key: String,
    /// The gatekeeper's Noise static key (for IK resumption), hex.
    pub server_key: String,
    /// Registered users, in order.
    pub users: Vec<User>,
}

impl State {
    /// Reads a state file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {} (run `loadgen prepare` first)", path.display()))?;
        serde_json::from_str(&text).context("parsing the state file")
    }
}

/// Where the gatekeeper is and how to trust it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Chat listener, `host:port` (loopback).
    pub server: String,
    /// Root key.
    pub root: [u8; 32],
    /// The server's static key, once known: connections resume with IK.
    pub server_key: Option<[u8; 32]>,
}

impl Target {
    fn options(
        &self,
        server: &str,
        keys: StaticKeypair,
        account: &str,
        resume: bool,
    ) -> Result<ConnectOptions> {
        let mut opts = ConnectOptions::new(server.to_owned(), account);
        opts.trust_anchor = Some(TrustAnchor::new(self.root).context("bad root key")?);
        opts.device_key = keys;
        opts.product = Product::Native;
        opts.user_agent = "interop-loadgen".into();
        opts.cached_server_key = if resume { self.server_key } else { None };
        Ok(opts)
    }

    /// Connects as `user` (IK when `resume` and the server key is known, else XX).
    pub async fn connect(&self, user: &User, resume: bool) -> Result<GkConn> {
        self.connect_via(&self.server, user, resume).await
    }

    /// Connects as `user` to `server`, one node of a cluster sharing this target's keys.
    pub async fn connect_via(&self, server: &str, user: &User, resume: bool) -> Result<GkConn> {
        let opts = self.options(server, user.keypair()?, &user.account, resume)?;
        let conn = Connection::connect(&opts).await?;
        Ok(GkConn::new(conn))
    }
}

/// Parses 32 bytes of hex.
pub fn key32(hex_text: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(hex_text.trim()).context("not hex")?;
    bytes.try_into().map_err(|_| anyhow!("not 32 bytes"))
}

/// Verification codes the gatekeeper printed (`verification-code <identifier> <code>` lines
/// of its standard output, which the xtask sends to a file).
#[derive(Debug)]
pub struct Codes {
    path: PathBuf,
    inner: RefCell<(u64, String, HashMap<String, String>)>,
}

impl Codes {
    /// Watches `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path, inner: RefCell::default() }
    }

    fn refresh(&self) -> Result<()> {
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        let mut inner = self.inner.borrow_mut();
        let (offset, partial, codes) = &mut *inner;
        file.seek(SeekFrom::Start(*offset))?;
        let mut text = String::new();
        let n = file.read_to_string(&mut text)?;
        *offset += n as u64;
        partial.push_str(&text);
        while let Some(end) = partial.find('\n') {
            let line: String = partial.drain(..=end).collect();
            let mut words = line.split_whitespace();
            if let (Some("verification-code"), Some(id), Some(code)) =
                (words.next(), words.next(), words.next())
            {
                codes.insert(id.to_owned(), code.to_owned());
            }
        }
        Ok(())
    }

    /// The code sent for `identifier`, waiting up to `timeout` for the line to appear.
    pub async fn wait(&self, identifier: &str, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(code) = self.inner.borrow_mut().2.remove(identifier) {
                return Ok(code);
            }
            self.refresh()?;
            if let Some(code) = self.inner.borrow_mut().2.remove(identifier) {
                return Ok(code);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no verification code for a registration within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Syntactically valid Signal key material: the gatekeeper checks shapes, not signatures.
fn key_bundle(seed: u32) -> KeyBundle {
    let s = seed.to_le_bytes();
    let ec = |tag: u8| {
        let mut k = vec![0x05];
        k.extend((0..32u8).map(|i| s[usize::from(i % 4)] ^ tag ^ i));
        k
    };
    let mut kyber = vec![0x08];
    kyber.extend((0..1568u32).map(|i| s[(i % 4) as usize] ^ (i as u8)));
    KeyBundle {
        identity_key: ec(0x11),
        registration_id: 1 + seed % 16_000,
        signed_prekey: SignedPrekey { id: 1, public: ec(0x22), signature: vec![s[0]; 64] },
        kyber_prekey: SignedPrekey { id: 2, public: kyber, signature: vec![s[1]; 64] },
        prekeys: (10..13u8).map(|id| Prekey { id: u32::from(id), public: ec(id) }).collect(),
    }
}

/// Registers one native user (PROTOCOL.md 3.6, "Native users"): connect with a fresh key
/// (XX), `register`, the code from the gatekeeper's output, `confirm`. Returns the user and
/// the server's static key.
pub async fn register(
    target: &Target,
    identifier: &str,
    seed: u32,
    codes: &Codes,
    timeout: Duration,
) -> Result<(User, [u8; 32])> {
    let keys = StaticKeypair::generate(&mut rand::rng());
    let key_hex = hex::encode(keys.to_bytes().as_slice());
    let opts = target.options(&target.server, keys, "", false)?;
    let mut conn = Connection::connect(&opts).await?;
    let server_key = conn.server_key();
    let sent = enlist_iq(
        &mut conn,
        Request::Register { identifier: identifier.to_owned() },
        "r1",
        timeout,
    )
    .await?;
    if !matches!(sent, Response::CodeSent { .. }) {
        bail!("register answered {sent:?}");
    }
    let code = codes.wait(identifier, timeout).await?;
    let confirm =
        Request::Confirm { identifier: identifier.to_owned(), code, keys: key_bundle(seed) };
    let Response::Registered { address } = enlist_iq(&mut conn, confirm, "r2", timeout).await?
    else {
        bail!("confirm was refused");
    };
    let _ = conn.close().await;
    Ok((User { key: key_hex, account: address.account, device: address.device }, server_key))
}

async fn enlist_iq(
    conn: &mut Connection,
    request: Request,
    id: &str,
    timeout: Duration,
) -> Result<Response> {
    conn.send(&request.to_node(id)).await?;
    let answer = tokio::time::timeout(timeout, async {
        loop {
            match conn.recv().await? {
                Some(node) if node.tag == "iq" && node.attr("id") == Some(id) => {
                    return Ok::<_, anyhow::Error>(node);
                }
                Some(_) => {}
                None => bail!("the gatekeeper closed the connection during registration"),
            }
        }
    })
    .await
    .context("no answer to an enlistment iq in time")??;
    let (_, response) = Response::from_node(&answer).context("bad enlistment answer")?;
    Ok(response)
}

/// What arrived on a gatekeeper connection.
#[derive(Debug)]
pub enum GkEvent {
    /// A message for this device, whose payload starts with the send time.
    Delivered {
        /// Nanoseconds since the run's clock base, from the payload.
        sent_ns: u64,
    },
    /// The server stored one of our messages.
    Accepted,
    /// The server refused one of our messages (`ack` with `error`).
    Refused(String),
    /// An iq answer (ping).
    Iq,
    /// `stream:error` (the server closes the connection after it).
    StreamError(String),
    /// Anything else (receipts, notifications).
    Other,
}

/// A gatekeeper connection with the acks it owes.
#[derive(Debug)]
pub struct GkConn {
    conn: Connection,
    owed_acks: Vec<Node>,
}

impl GkConn {
    fn new(conn: Connection) -> Self {
        Self { conn, owed_acks: Vec::new() }
    }

    /// Whether the handshake was IK.
    pub fn resumed(&self) -> bool {
        self.conn.resumed()
    }

    /// Sends a text message of `size` payload bytes to `to` (one device).
    pub async fn send_message(
        &mut self,
        to: &User,
        id: &str,
        sent_ns: u64,
        size: usize,
    ) -> Result<()> {
        let enc = Enc::new(EncType::Msg, payload(sent_ns, size));
        let message = Message::new(id, MessageType::Text)
            .to(to.account_jid())
            .with_participant(Participant::new(to.device_jid(), enc));
        self.conn.send(&message.into_node()).await?;
        Ok(())
    }

    /// Sends `<iq type="get" xmlns="ping"/>`.
    pub async fn send_ping(&mut self, id: &str) -> Result<()> {
        let ping =
            Node::new("iq").with_attr("id", id).with_attr("type", "get").with_attr("xmlns", "ping");
        self.conn.send(&ping).await?;
        Ok(())
    }

    /// The next event; `None` when the server closed the connection. Cancel-safe: a delivered
    /// message's ack is queued, and sent by [`GkConn::flush`].
    pub async fn next_event(&mut self) -> Result<Option<GkEvent>> {
        let Some(node) = self.conn.recv().await? else { return Ok(None) };
        Ok(Some(match node.tag.as_str() {
            "message" => {
                let sent_ns = node
                    .child("enc")
                    .and_then(Node::bytes)
                    .and_then(|b| b.get(..8))
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                let mut ack = Ack::new(node.attr("id").unwrap_or_default(), AckClass::Message);
                ack.to = node.attr("from").map(str::to_owned);
                self.owed_acks.push(ack.into_node());
                GkEvent::Delivered { sent_ns }
            }
            "ack" if node.attr("class") == Some("message") => match node.attr("error") {
                Some(e) => GkEvent::Refused(e.to_owned()),
                None => GkEvent::Accepted,
            },
            "iq" => GkEvent::Iq,
            "stream:error" => {
                let condition = node.attr("condition").unwrap_or("?");
                let text = node.attr("text").unwrap_or("");
                GkEvent::StreamError(format!("{condition} {text}"))
            }
            _ => GkEvent::Other,
        }))
    }

    /// Acks owed (one per delivered message); sends them.
    pub async fn flush(&mut self) -> Result<usize> {
        let n = self.owed_acks.len();
        for ack in std::mem::take(&mut self.owed_acks) {
            self.conn.send(&ack).await?;
        }
        Ok(n)
    }

    /// Closes the connection (half-close; the server ends the session on end of stream).
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// `size` opaque bytes starting with `sent_ns` (little-endian), like a Signal ciphertext in
/// length only.
pub fn payload(sent_ns: u64, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(8));
    p.extend_from_slice(&sent_ns.to_le_bytes());
    p.extend((8..size).map(|i| (i as u8).wrapping_mul(167)));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_the_send_time() {
        let p = payload(0x0102_0304_0506_0708, 180);
        assert_eq!(p.len(), 180);
        assert_eq!(u64::from_le_bytes(p[..8].try_into().unwrap()), 0x0102_0304_0506_0708);
        assert_eq!(payload(1, 4).len(), 8, "never shorter than the timestamp");
    }

    #[test]
    fn dummy_keys_have_the_shapes_the_gatekeeper_checks() {
        let k = key_bundle(7);
        assert_eq!((k.identity_key.len(), k.identity_key[0]), (33, 0x05));
        assert_eq!((k.signed_prekey.public.len(), k.signed_prekey.signature.len()), (33, 64));
        assert_eq!((k.kyber_prekey.public.len(), k.kyber_prekey.public[0]), (1569, 0x08));
        assert!((1..=16_380).contains(&k.registration_id));
    }

    #[test]
    fn codes_are_read_from_appended_lines() {
        let dir = std::env::temp_dir().join(format!("loadgen-codes-{}", std::process::id()));
        std::fs::write(&dir, "root-key ab\nverification-code +1 123456\nverifica").unwrap();
        let codes = Codes::new(dir.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(codes.wait("+1", Duration::from_secs(1))).unwrap();
        assert_eq!(got, "123456");
        std::fs::write(
            &dir,
            "root-key ab\nverification-code +1 123456\nverification-code +2 654321\n",
        )
        .unwrap();
        let got = rt.block_on(codes.wait("+2", Duration::from_secs(1))).unwrap();
        assert_eq!(got, "654321");
        assert!(rt.block_on(codes.wait("+3", Duration::from_millis(50))).is_err());
        let _ = std::fs::remove_file(dir);
    }
}

//! A minimal XMPP client for the baseline (RFC 6120 over plain TCP): stream open, SASL PLAIN,
//! resource binding, initial presence, `<message>` with a `<body>`, XEP-0199 ping. No TLS, no
//! stream management, no roster: only what the load pattern needs.
//!
//! Incoming XML is split into top-level elements by a small scanner, not a full parser: it
//! relies on what a server sends (quoted attribute values never contain `>` unescaped, and a
//! `message` never nests another `message`), which holds for ejabberd and costs the generator
//! far less than building a DOM per stanza, so the baseline is not slowed by its client.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the XMPP server is and how users are named.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` of the client listener (loopback).
    pub server: String,
    /// The XMPP domain (`localhost` in the xtask's configuration).
    pub domain: String,
    /// User names are `<prefix><index>`.
    pub prefix: String,
    /// Every user's password.
    pub password: String,
}

impl Target {
    /// The bare JID of user `index`.
    pub fn jid(&self, index: usize) -> String {
        format!("{}{index}@{}", self.prefix, self.domain)
    }

    /// Logs in as user `index`: stream, SASL PLAIN, bind; with `presence`, sends initial
    /// presence too (an online client).
    pub async fn login(&self, index: usize, presence: bool, timeout: Duration) -> Result<XmppConn> {
        let stream = TcpStream::connect(&self.server)
            .await
            .with_context(|| format!("cannot reach {}", self.server))?;
        stream.set_nodelay(true)?;
        let mut c = XmppConn { stream, buf: Vec::with_capacity(4096), start: 0 };
        tokio::time::timeout(timeout, c.handshake(self, index, presence))
            .await
            .context("login timed out")??;
        Ok(c)
    }
}

/// What arrived on an XMPP connection.
#[derive(Debug, PartialEq)]
pub enum XmppEvent {
    /// A message with a body that starts with the send time (16 hex digits).
    Delivered {
        /// Nanoseconds since the run's clock base.
        sent_ns: u64,
    },
    /// An iq result (ping answer).
    IqResult,
    /// `stream:error`, or the end of the stream.
    StreamError(String),
    /// Anything else (presence...).
    Other,
}

/// One XMPP client connection.
#[derive(Debug)]
pub struct XmppConn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl XmppConn {
    async fn handshake(&mut self, t: &Target, index: usize, presence: bool) -> Result<()> {
        self.open_stream(&t.domain).await?;
        self.expect("stream:features").await?;
        let user = format!("{}{index}", t.prefix);
        let creds = STANDARD.encode(format!("\0{user}\0{}", t.password));
        self.write(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"
        ))
        .await?;
        let (name, _) = self.element().await?;
        if name != "success" {
            bail!("SASL PLAIN refused ({name})");
        }
        self.open_stream(&t.domain).await?;
        self.expect("stream:features").await?;
        self.write(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>lg</resource></bind></iq>",
        )
        .await?;
        let (name, element) = self.element().await?;
        if name != "iq" || attr(&element, "type") != Some("result") {
            bail!("resource binding refused");
        }
        if presence {
            self.write("<presence/>").await?;
        }
        Ok(())
    }

    async fn open_stream(&mut self, domain: &str) -> Result<()> {
        self.write(&format!(
            "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
        ))
        .await?;
        // The server's stream header (and XML declaration) come first.
        loop {
            let (name, _) = self.element().await?;
            if name == "stream:stream" {
                return Ok(());
            }
        }
    }

    async fn expect(&mut self, want: &str) -> Result<Vec<u8>> {
        let (name, element) = self.element().await?;
        if name != want {
            bail!("expected <{want}>, got <{name}>");
        }
        Ok(element)
    }

    /// The next top-level element (its name and bytes), reading as needed. Cancel-safe.
    async fn element(&mut self) -> Result<(String, Vec<u8>)> {
        loop {
            if let Some((len, name)) = split_element(&self.buf[self.start..]) {
                let element = self.buf[self.start..self.start + len].to_vec();
                self.consume(len);
                return Ok((name, element));
            }
            self.fill().await?;
        }
    }

    fn consume(&mut self, len: usize) {
        self.start += len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    async fn fill(&mut self) -> Result<()> {
        self.buf.reserve(16 * 1024);
        // `read_buf` is cancel-safe: when another select branch wins, nothing was read.
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }

    async fn write(&mut self, text: &str) -> Result<()> {
        self.stream.write_all(text.as_bytes()).await?;
        Ok(())
    }

    /// Sends a chat message to `to` (a bare JID) whose body is `size` bytes starting with the
    /// send time.
    pub async fn send_message(
        &mut self,
        to: &str,
        id: &str,
        sent_ns: u64,
        size: usize,
    ) -> Result<()> {
        let body = body(sent_ns, size);
        self.write(&format!(
            "<message to='{to}' type='chat' id='{id}'><body>{body}</body></message>"
        ))
        .await
    }

    /// Sends an XEP-0199 ping to the server.
    pub async fn send_ping(&mut self, domain: &str, id: &str) -> Result<()> {
        self.write(&format!(
            "<iq type='get' id='{id}' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await
    }

    /// The next event; `None` at the end of the stream. Cancel-safe.
    pub async fn next_event(&mut self) -> Result<Option<XmppEvent>> {
        loop {
            if let Some((len, name)) = split_element(&self.buf[self.start..]) {
                let event = classify(&name, &self.buf[self.start..self.start + len]);
                self.consume(len);
                return Ok(Some(event));
            }
            self.buf.reserve(16 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Ends the stream and closes.
    pub async fn close(mut self) {
        let _ = self.write("</stream:stream>").await;
        let _ = self.stream.shutdown().await;
    }
}

fn classify(name: &str, element: &[u8]) -> XmppEvent {
    match name {
        "message" => {
            let sent_ns = find(element, b"<body>")
                .and_then(|i| element.get(i + 6..i + 22))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u64::from_str_radix(h, 16).ok());
            match sent_ns {
                Some(sent_ns) => XmppEvent::Delivered { sent_ns },
                None => XmppEvent::Other,
            }
        }
        "iq" if attr(element, "type") == Some("result") => XmppEvent::IqResult,
        "stream:error" | "/stream:stream" => {
            XmppEvent::StreamError(String::from_utf8_lossy(element).into_owned())
        }
        _ => XmppEvent::Other,
    }
}

/// A body of `size` bytes: 16 hex digits of `sent_ns`, then filler.
pub fn body(sent_ns: u64, size: usize) -> String {
    let mut b = format!("{sent_ns:016x}");
    b.extend(std::iter::repeat_n('x', size.saturating_sub(16)));
    b
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of attribute `name` in an element's start tag.
fn attr<'a>(element: &'a [u8], name: &str) -> Option<&'a str> {
    let end = element.iter().position(|&b| b == b'>')?;
    let tag = std::str::from_utf8(&element[..end]).ok()?;
    for quote in ['\'', '"'] {
        let key = format!(" {name}={quote}");
        if let Some(i) = tag.find(&key) {
            let rest = &tag[i + key.len()..];
            return rest.find(quote).map(|j| &rest[..j]);
        }
    }
    None
}

/// The length and name of the first complete top-level element of `buf` (leading whitespace
/// and the XML declaration count as part of it). The stream header `<stream:stream ...>` and
/// its end `</stream:stream>` count as elements.
fn split_element(buf: &[u8]) -> Option<(usize, String)> {
    let lt = buf.iter().position(|&b| b == b'<')?;
    let rest = &buf[lt..];
    if rest.starts_with(b"<?") {
        let end = find(rest, b"?>")?;
        return Some((lt + end + 2, "?xml".to_owned()));
    }
    let gt = rest.iter().position(|&b| b == b'>')?;
    let inside = &rest[1..gt];
    // The name ends at whitespace or at the `/` of `<x/>` (a `/` first is an end tag's).
    let name_end = inside
        .iter()
        .enumerate()
        .position(|(i, &b)| b.is_ascii_whitespace() || (b == b'/' && i > 0))
        .unwrap_or(inside.len());
    let name = String::from_utf8_lossy(&inside[..name_end]).into_owned();
    if name == "stream:stream" || name.starts_with('/') || rest[gt - 1] == b'/' {
        return Some((lt + gt + 1, name));
    }
    let close = format!("</{name}>");
    let end = find(&rest[gt..], close.as_bytes())?;
    Some((lt + gt + end + close.len(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_split_when_complete() {
        let input = b"<?xml version='1.0'?><stream:stream id='1' xmlns='jabber:client'>\
            <stream:features><mechanisms><mechanism>PLAIN</mechanism></mechanisms></stream:features>\
            <presence from='a'/> <message to='b'><body>0000000000000010xx</body></message><iq type='res";
        let mut at = 0;
        let mut names = Vec::new();
        while let Some((len, name)) = split_element(&input[at..]) {
            if name == "message" {
                assert_eq!(
                    classify(&name, &input[at..at + len]),
                    XmppEvent::Delivered { sent_ns: 16 }
                );
            }
            names.push(name);
            at += len;
        }
        assert_eq!(names, ["?xml", "stream:stream", "stream:features", "presence", "message"]);
        assert!(input[at..].starts_with(b"<iq"), "the incomplete iq waits for more bytes");
    }

    #[test]
    fn stream_end_and_errors() {
        let (len, name) = split_element(b"</stream:stream>").unwrap();
        assert_eq!((len, name.as_str()), (16, "/stream:stream"));
        let e =
            b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>";
        let (len, name) = split_element(e).unwrap();
        assert_eq!((len, name.as_str()), (e.len(), "stream:error"));
        assert!(matches!(classify(&name, e), XmppEvent::StreamError(_)));
    }

    #[test]
    fn attributes_and_bodies() {
        let iq = b"<iq type='result' id=\"b\"><bind/></iq>";
        assert_eq!(attr(iq, "type"), Some("result"));
        assert_eq!(attr(iq, "id"), Some("b"));
        assert_eq!(attr(iq, "to"), None);
        assert_eq!(classify("iq", iq), XmppEvent::IqResult);
        let b = body(255, 40);
        assert_eq!(b.len(), 40);
        assert!(b.starts_with("00000000000000ff"));
    }
}

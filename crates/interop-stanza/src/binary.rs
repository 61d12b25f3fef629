//! The binary wire codec: dictionary tokens, packed strings, raw bytes, list headers.
//!
//! ```text
//! stanza   = node                         ; no version byte: the dictionary version is the
//!                                         ; connection header's byte 4
//! node     = list(n) string(tag) (string(name) string(value)){(n-1)/2} [content]
//!                                         ; n >= 1; content present iff n is even
//! content  = list(m) node{m}              ; children (m may be 0)
//!          | bin                          ; raw bytes
//! string   = token | page1 | bin | nibble | hex | address
//! list(n)  = D0+n                         ; n <= 15
//!          | F1 u8 | F2 u16
//! token    = 01..CF                       ; page 0 of the dictionary
//! page1    = F0 u8                        ; page 1 of the dictionary
//! bin      = F3 len:u8 octets | F4 len:u16 octets | F5 len:u32 octets
//! nibble   = F7 h:u8 octets               ; h = odd<<7 | count (1..=127); digits - .
//! hex      = F8 h:u8 octets               ; same header; 0-9 a-f
//! address  = F6 flags [varint integrator] [varint device] string(user) string(server)
//! ```
//!
//! All integers are big-endian; varints are LEB128 (u32, shortest form). Bytes `00`, `E0..=EF`
//! and `F9..=FF` are not used by version 1 and are refused as unknown tokens. The full byte
//! table and the dictionary are in the protocol document (`docs/PROTOCOL.md`, "Binary
//! stanzas").
//!
//! The encoder chooses, for every string, the first that applies: a dictionary token; nibble
//! packing (1..=254 characters of `0-9 - .`); hex packing (1..=254 characters of `0-9 a-f`);
//! an address (`user[.integrator][:device]@server` with a server in the dictionary and
//! shortest-form decimal numbers); raw UTF-8 bytes. The decoder accepts any of these forms
//! wherever a string is allowed (an address inside an address excepted).

use crate::dict::{DICTIONARY_VERSION, Dictionary, Token};
use crate::{Content, Error, Limits, Node, Result};

/// First short list header: `D0 + n` is a list of `n <= 15` items.
pub const LIST_SHORT: u8 = 0xD0;
/// Page-1 token: `F0 index`.
pub const PAGE1: u8 = 0xF0;
/// List with a one-byte count.
pub const LIST_8: u8 = 0xF1;
/// List with a two-byte count.
pub const LIST_16: u8 = 0xF2;
/// Raw bytes with a one-byte length.
pub const BIN_8: u8 = 0xF3;
/// Raw bytes with a two-byte length.
pub const BIN_16: u8 = 0xF4;
/// Raw bytes with a four-byte length.
pub const BIN_32: u8 = 0xF5;
/// Packed address.
pub const ADDR: u8 = 0xF6;
/// Nibble-packed numeric string.
pub const NIBBLE: u8 = 0xF7;
/// Nibble-packed lowercase hex string.
pub const HEX: u8 = 0xF8;

/// Deepest nesting a decoder will ever build, whatever [`Limits::max_depth`] says: dropping a
/// deeper tree would recurse that deep.
pub const DEPTH_CEILING: usize = 1024;

/// Encodes one stanza with the current dictionary and default limits.
pub fn encode(node: &Node) -> Result<Vec<u8>> {
    Codec::default().encode(node)
}

/// Decodes exactly one stanza with the current dictionary and default limits.
pub fn decode(bytes: &[u8]) -> Result<Node> {
    Codec::default().decode(bytes)
}

/// A binary codec bound to one dictionary version and a set of limits.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    dict: &'static Dictionary,
    limits: Limits,
}

impl Default for Codec {
    fn default() -> Self {
        Self { dict: Dictionary::current(), limits: Limits::DEFAULT }
    }
}

impl Codec {
    /// The codec of dictionary `version` (the connection header's byte 4), or
    /// [`Error::UnsupportedVersion`]: a server refuses the connection then.
    pub fn new(version: u8) -> Result<Self> {
        Ok(Self { dict: Dictionary::for_version(version)?, limits: Limits::DEFAULT })
    }

    /// The same codec with other decoder limits (the encoder checks depth against them too).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The dictionary version.
    pub fn version(&self) -> u8 {
        self.dict.version()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Encodes one stanza.
    pub fn encode(&self, node: &Node) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64 + node.bytes().map_or(0, <[u8]>::len));
        self.encode_into(node, &mut out)?;
        Ok(out)
    }

    /// Appends the encoding of one stanza to `out` (on error, `out` holds a partial stanza).
    pub fn encode_into(&self, node: &Node, out: &mut Vec<u8>) -> Result<()> {
        let max_depth = self.max_depth();
        let mut w = Writer { dict: self.dict, out };
        w.head(node)?;
        let mut stack: Vec<std::slice::Iter<'_, Node>> = Vec::new();
        if !node.children().is_empty() {
            if max_depth < 2 {
                return Err(Error::TooDeep { max: max_depth });
            }
            stack.push(node.children().iter());
        }
        while let Some(siblings) = stack.last_mut() {
            let Some(child) = siblings.next() else {
                stack.pop();
                continue;
            };
            w.head(child)?;
            if !child.children().is_empty() {
                if stack.len() + 2 > max_depth {
                    return Err(Error::TooDeep { max: max_depth });
                }
                stack.push(child.children().iter());
            }
        }
        Ok(())
    }

    /// Decodes exactly one stanza: all of `bytes`, nothing more.
    pub fn decode(&self, bytes: &[u8]) -> Result<Node> {
        if bytes.len() > self.limits.max_size {
            return Err(Error::LimitExceeded { limit: "stanza size", max: self.limits.max_size });
        }
        let mut state = DecodeState::default();
        match state.advance(self, bytes)? {
            None => Err(Error::Truncated),
            Some((node, used)) if used == bytes.len() => Ok(node),
            Some((_, used)) => Err(Error::TrailingBytes(bytes.len() - used)),
        }
    }

    fn max_depth(&self) -> usize {
        self.limits.max_depth.min(DEPTH_CEILING)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoder

struct Writer<'o> {
    dict: &'static Dictionary,
    out: &'o mut Vec<u8>,
}

impl Writer<'_> {
    /// Writes a node's list header, tag, attributes and content header (bytes content in full;
    /// children are written by the caller).
    fn head(&mut self, node: &Node) -> Result<()> {
        let has_content = !matches!(node.content, Content::Empty);
        let n = node
            .attrs
            .len()
            .checked_mul(2)
            .and_then(|a| a.checked_add(1 + usize::from(has_content)))
            .ok_or(Error::FieldTooLong { len: node.attrs.len(), max: usize::from(u16::MAX) })?;
        self.list(n)?;
        self.string(&node.tag, true)?;
        for (k, v) in &node.attrs {
            self.string(k, true)?;
            self.string(v, true)?;
        }
        match &node.content {
            Content::Empty => {}
            Content::Nodes(children) => self.list(children.len())?,
            Content::Bytes(b) => self.bin(b)?,
        }
        Ok(())
    }

    fn list(&mut self, n: usize) -> Result<()> {
        if n <= 15 {
            self.out.push(LIST_SHORT + n as u8);
        } else if let Ok(n) = u8::try_from(n) {
            self.out.extend_from_slice(&[LIST_8, n]);
        } else if let Ok(n) = u16::try_from(n) {
            self.out.push(LIST_16);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            return Err(Error::FieldTooLong { len: n, max: usize::from(u16::MAX) });
        }
        Ok(())
    }

    fn bin(&mut self, b: &[u8]) -> Result<()> {
        if let Ok(n) = u8::try_from(b.len()) {
            self.out.extend_from_slice(&[BIN_8, n]);
        } else if let Ok(n) = u16::try_from(b.len()) {
            self.out.push(BIN_16);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else if let Ok(n) = u32::try_from(b.len()) {
            self.out.push(BIN_32);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            return Err(Error::FieldTooLong { len: b.len(), max: u32::MAX as usize });
        }
        self.out.extend_from_slice(b);
        Ok(())
    }

    fn string(&mut self, s: &str, allow_addr: bool) -> Result<()> {
        match self.dict.token(s) {
            Some(Token::Page0(b)) => {
                self.out.push(b);
                return Ok(());
            }
            Some(Token::Page1(b)) => {
                self.out.extend_from_slice(&[PAGE1, b]);
                return Ok(());
            }
            None => {}
        }
        let b = s.as_bytes();
        if (1..=254).contains(&b.len()) {
            if b.iter().all(|&c| nibble_of(c).is_some()) {
                self.packed(NIBBLE, b, nibble_of, 0xF);
                return Ok(());
            }
            if b.iter().all(|&c| hex_of(c).is_some()) {
                self.packed(HEX, b, hex_of, 0);
                return Ok(());
            }
        }
        if allow_addr
            && let Some(a) = Address::parse(s)
            && self.dict.token(a.server).is_some()
        {
            let flags = u8::from(a.integrator.is_some()) | (u8::from(a.device.is_some()) << 1);
            self.out.extend_from_slice(&[ADDR, flags]);
            for n in [a.integrator, a.device].into_iter().flatten() {
                put_varint(n, self.out);
            }
            self.string(a.user, false)?;
            return self.string(a.server, false);
        }
        self.bin(b)
    }

    fn packed(&mut self, marker: u8, s: &[u8], map: fn(u8) -> Option<u8>, pad: u8) {
        let odd = s.len() % 2;
        let count = s.len().div_ceil(2);
        self.out.extend_from_slice(&[marker, ((odd as u8) << 7) | count as u8]);
        for pair in s.chunks(2) {
            let hi = map(pair[0]).expect("checked by the caller");
            let lo = match pair.get(1) {
                Some(&c) => map(c).expect("checked by the caller"),
                None => pad,
            };
            self.out.push((hi << 4) | lo);
        }
    }
}

fn nibble_of(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'-' => Some(0xA),
        b'.' => Some(0xB),
        _ => None,
    }
}

/// Nibble values of [`NIBBLE`] strings as ASCII; 0 marks values that are not characters.
const NIBBLE_CHARS: &[u8; 16] = b"0123456789-.\0\0\0\0";

fn hex_of(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Nibble values of [`HEX`] strings as ASCII.
const HEX_CHARS: &[u8; 16] = b"0123456789abcdef";

fn put_varint(mut n: u32, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A parsed `user[.integrator][:device]@server` address, as the codec packs it.
#[derive(Debug, PartialEq, Eq)]
struct Address<'a> {
    user: &'a str,
    integrator: Option<u32>,
    device: Option<u32>,
    server: &'a str,
}

impl<'a> Address<'a> {
    /// Parses `s` if it has the address shape with shortest-form decimal numbers, so that
    /// formatting the parts gives `s` back exactly.
    fn parse(s: &'a str) -> Option<Self> {
        let (local, server) = s.rsplit_once('@')?;
        let (rest, device) = match local.rsplit_once(':') {
            Some((rest, d)) if let Some(d) = canonical_u32(d) => (rest, Some(d)),
            _ => (local, None),
        };
        let (user, integrator) = match rest.rsplit_once('.') {
            Some((user, i)) if let Some(i) = canonical_u32(i) => (user, Some(i)),
            _ => (rest, None),
        };
        if user.is_empty() || server.is_empty() {
            return None;
        }
        Some(Self { user, integrator, device, server })
    }
}

fn canonical_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Decoder

/// Where a decoding stopped: a resumable state, so the stream decoder can wait for more bytes
/// and continue at the last node boundary.
#[derive(Debug, Default)]
pub(crate) struct DecodeState {
    /// Open parents: the node, its children so far, how many it declared.
    stack: Vec<(Node, Vec<Node>, usize)>,
    /// Offset of the next node head in the stanza's bytes.
    pos: usize,
    /// Decoded string and bytes content so far.
    decoded: usize,
    /// Nodes so far.
    nodes: usize,
    /// The input length needed before another attempt can progress.
    pub(crate) need: usize,
}

enum Pending {
    Complete,
    Children(usize),
}

impl DecodeState {
    /// Decodes node heads from `input` (the stanza's bytes from its first byte, possibly
    /// followed by more). Returns the stanza and the bytes it used, or `None` when `input`
    /// ends before the stanza does (call again with more input: decoding resumes at the last
    /// complete node head).
    pub(crate) fn advance(&mut self, codec: &Codec, input: &[u8]) -> Result<Option<(Node, usize)>> {
        let max_depth = codec.max_depth();
        loop {
            let mut r = Reader {
                dict: codec.dict,
                limits: &codec.limits,
                buf: input,
                pos: self.pos,
                decoded: self.decoded,
                need: 0,
            };
            let (mut node, pending) = match read_head(&mut r) {
                Ok(head) => head,
                Err(Error::Truncated) => {
                    self.need = r.need;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            self.pos = r.pos;
            self.decoded = r.decoded;
            self.nodes += 1;
            if self.nodes > codec.limits.max_nodes {
                return Err(Error::LimitExceeded {
                    limit: "node count",
                    max: codec.limits.max_nodes,
                });
            }
            if let Pending::Children(m) = pending {
                if self.stack.len() + 2 > max_depth {
                    return Err(Error::TooDeep { max: max_depth });
                }
                // Every child takes at least two bytes: never reserve more than the input holds.
                let cap = m.min(input.len().saturating_sub(self.pos) / 2);
                self.stack.push((node, Vec::with_capacity(cap), m));
                continue;
            }
            loop {
                let Some((_, children, declared)) = self.stack.last_mut() else {
                    return Ok(Some((node, self.pos)));
                };
                children.push(node);
                if children.len() < *declared {
                    break;
                }
                let (mut parent, children, _) = self.stack.pop().expect("last_mut was Some");
                parent.content = Content::Nodes(children);
                node = parent;
            }
        }
    }
}

struct Reader<'a, 'l> {
    dict: &'static Dictionary,
    limits: &'l Limits,
    buf: &'a [u8],
    pos: usize,
    decoded: usize,
    need: usize,
}

impl<'a> Reader<'a, '_> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let max = self.limits.max_size;
        let end = self.pos.checked_add(n).filter(|&e| e <= max);
        let Some(end) = end else {
            return Err(Error::LimitExceeded { limit: "stanza size", max });
        };
        let Some(head) = self.buf.get(self.pos..end) else {
            self.need = end;
            return Err(Error::Truncated);
        };
        self.pos = end;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn spend(&mut self, n: usize) -> Result<()> {
        let max = self.limits.max_size;
        match self.decoded.checked_add(n).filter(|&d| d <= max) {
            Some(d) => {
                self.decoded = d;
                Ok(())
            }
            None => Err(Error::LimitExceeded { limit: "decoded size", max }),
        }
    }

    fn varint(&mut self) -> Result<u32> {
        let mut n: u32 = 0;
        for i in 0..5 {
            let b = self.u8()?;
            if i == 4 && b > 0x0F {
                return Err(Error::InvalidPacked { what: "varint" });
            }
            n |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(Error::InvalidPacked { what: "varint" });
                }
                return Ok(n);
            }
        }
        Err(Error::InvalidPacked { what: "varint" })
    }

    /// A list header's count, if `b` starts one.
    fn list_len(&mut self, b: u8) -> Result<Option<usize>> {
        Ok(match b {
            LIST_SHORT..=0xDF => Some(usize::from(b - LIST_SHORT)),
            LIST_8 => Some(usize::from(self.u8()?)),
            LIST_16 => Some(usize::from(self.u16()?)),
            _ => None,
        })
    }

    /// Raw bytes after a `BIN_*` marker `b`, if `b` is one.
    fn bin(&mut self, b: u8) -> Result<Option<&'a [u8]>> {
        let len = match b {
            BIN_8 => usize::from(self.u8()?),
            BIN_16 => usize::from(self.u16()?),
            BIN_32 => self.u32()? as usize,
            _ => return Ok(None),
        };
        let bytes = self.take(len)?;
        self.spend(len)?;
        Ok(Some(bytes))
    }

    fn string(&mut self, allow_addr: bool) -> Result<String> {
        let b = self.u8()?;
        if let Some(bytes) = self.bin(b)? {
            return String::from_utf8(bytes.to_vec()).map_err(|_| Error::InvalidUtf8);
        }
        match b {
            0x01..=0xCF => {
                let s = self.dict.page0_str(b).ok_or(Error::UnknownToken { page: 0, token: b })?;
                self.spend(s.len())?;
                Ok(s.to_owned())
            }
            PAGE1 => {
                let i = self.u8()?;
                let s = self.dict.page1_str(i).ok_or(Error::UnknownToken { page: 1, token: i })?;
                self.spend(s.len())?;
                Ok(s.to_owned())
            }
            NIBBLE => self.packed("nibble string", NIBBLE_CHARS, 0xF),
            HEX => self.packed("hex string", HEX_CHARS, 0),
            ADDR if allow_addr => self.address(),
            ADDR => Err(Error::UnexpectedItem { expected: "a string that is not an address" }),
            LIST_SHORT..=0xDF | LIST_8 | LIST_16 => {
                Err(Error::UnexpectedItem { expected: "a string" })
            }
            _ => Err(Error::UnknownToken { page: 0, token: b }),
        }
    }

    /// A nibble- or hex-packed string; `table` maps nibbles to ASCII (0 = not a character).
    fn packed(&mut self, what: &'static str, table: &[u8; 16], pad: u8) -> Result<String> {
        let h = self.u8()?;
        let odd = h & 0x80 != 0;
        let count = usize::from(h & 0x7F);
        if count == 0 {
            return Err(Error::InvalidPacked { what });
        }
        let bytes = self.take(count)?;
        let len = count * 2 - usize::from(odd);
        self.spend(len)?;
        let mut out = Vec::with_capacity(len);
        for &byte in bytes {
            out.push(table[usize::from(byte >> 4)]);
            out.push(table[usize::from(byte & 0xF)]);
        }
        if odd {
            if bytes[count - 1] & 0xF != pad {
                return Err(Error::InvalidPacked { what });
            }
            out.pop();
        }
        if out.contains(&0) {
            return Err(Error::InvalidPacked { what });
        }
        Ok(String::from_utf8(out).expect("the tables hold ASCII"))
    }

    fn address(&mut self) -> Result<String> {
        const WHAT: &str = "address";
        let flags = self.u8()?;
        if flags & !0b11 != 0 {
            return Err(Error::InvalidPacked { what: WHAT });
        }
        let integrator = if flags & 1 != 0 { Some(self.varint()?) } else { None };
        let device = if flags & 2 != 0 { Some(self.varint()?) } else { None };
        let user = self.string(false)?;
        let server = self.string(false)?;
        if user.is_empty() || server.is_empty() {
            return Err(Error::InvalidPacked { what: WHAT });
        }
        let user_len = user.len();
        let mut s = user;
        // One allocation for the whole address: separators and two u32s take at most 22 bytes.
        s.reserve(22 + server.len());
        if let Some(i) = integrator {
            s.push('.');
            push_decimal(&mut s, i);
        }
        if let Some(d) = device {
            s.push(':');
            push_decimal(&mut s, d);
        }
        s.push('@');
        // The user and server were counted already; count the separators and digits.
        self.spend(s.len() - user_len)?;
        s.push_str(&server);
        Ok(s)
    }
}

/// Appends `n` in decimal without going through `fmt`.
fn push_decimal(s: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        s.push(char::from(d));
    }
}

/// Reads a node's head: its list header, tag, attributes and content header (bytes content in
/// full). On error the reader's position is meaningless; the caller restarts at the head.
fn read_head(r: &mut Reader<'_, '_>) -> Result<(Node, Pending)> {
    let b = r.u8()?;
    let n = match r.list_len(b)? {
        Some(0) => return Err(Error::UnexpectedItem { expected: "a node (a non-empty list)" }),
        Some(n) => n,
        None if matches!(b, 0x00 | 0xE0..=0xEF | 0xF9..=0xFF) => {
            return Err(Error::UnknownToken { page: 0, token: b });
        }
        None => return Err(Error::UnexpectedItem { expected: "a node (a list header)" }),
    };
    let tag = r.string(true)?;
    let n_attrs = (n - 1) / 2;
    if n_attrs > r.limits.max_attrs {
        return Err(Error::LimitExceeded { limit: "attribute count", max: r.limits.max_attrs });
    }
    let mut attrs: Vec<(String, String)> = Vec::with_capacity(n_attrs);
    for _ in 0..n_attrs {
        let name = r.string(true)?;
        if attrs.iter().any(|(k, _)| *k == name) {
            return Err(Error::DuplicateAttribute);
        }
        let value = r.string(true)?;
        attrs.push((name, value));
    }
    let mut pending = Pending::Complete;
    let content = if n % 2 == 0 {
        let b = r.u8()?;
        if let Some(m) = r.list_len(b)? {
            if m == 0 {
                Content::Nodes(Vec::new())
            } else {
                pending = Pending::Children(m);
                Content::Empty
            }
        } else if let Some(bytes) = r.bin(b)? {
            Content::Bytes(bytes.to_vec())
        } else if matches!(b, 0x00 | 0xE0..=0xEF | 0xF9..=0xFF) {
            return Err(Error::UnknownToken { page: 0, token: b });
        } else {
            return Err(Error::UnexpectedItem { expected: "children or bytes" });
        }
    } else {
        Content::Empty
    };
    Ok((Node { tag, attrs, content }, pending))
}

/// The dictionary version [`encode`] and [`decode`] use.
pub const VERSION: u8 = DICTIONARY_VERSION;

#[cfg(test)]
mod tests;

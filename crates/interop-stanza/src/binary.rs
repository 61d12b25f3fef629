//! The binary wire codec.
//!
//! Provisional format (version 0), to be replaced by the dictionary codec:
//! ```text
//! stanza  = version:u8 node
//! node    = string(tag) attrs:u16 (string(name) string(value))* content
//! content = 0x00                      ; empty
//!         | 0x01 count:u32 node*      ; children
//!         | 0x02 string(bytes)        ; raw bytes
//! string  = len:u32 bytes
//! ```
//! All integers big-endian. Decoding bounds nesting at [`MAX_DEPTH`] without recursion limits
//! being left to the stack: depth is checked before descending.

use crate::{Content, Error, Node, Result};

/// Format version written by [`encode`].
pub const VERSION: u8 = 0;
/// Maximum nesting depth accepted by [`decode`].
pub const MAX_DEPTH: usize = 64;

/// Encodes one stanza.
pub fn encode(node: &Node) -> Result<Vec<u8>> {
    let mut out = vec![VERSION];
    encode_node(node, &mut out)?;
    Ok(out)
}

fn put_len(len: usize, max: usize, out: &mut Vec<u8>) -> Result<()> {
    if len > max {
        return Err(Error::FieldTooLong { len, max });
    }
    out.extend_from_slice(
        &u32::try_from(len).map_err(|_| Error::FieldTooLong { len, max })?.to_be_bytes(),
    );
    Ok(())
}

fn put_str(s: &[u8], out: &mut Vec<u8>) -> Result<()> {
    put_len(s.len(), u32::MAX as usize, out)?;
    out.extend_from_slice(s);
    Ok(())
}

fn encode_node(node: &Node, out: &mut Vec<u8>) -> Result<()> {
    put_str(node.tag.as_bytes(), out)?;
    let n = u16::try_from(node.attrs.len())
        .map_err(|_| Error::FieldTooLong { len: node.attrs.len(), max: u16::MAX as usize })?;
    out.extend_from_slice(&n.to_be_bytes());
    for (k, v) in &node.attrs {
        put_str(k.as_bytes(), out)?;
        put_str(v.as_bytes(), out)?;
    }
    match &node.content {
        Content::Empty => out.push(0),
        Content::Nodes(children) => {
            out.push(1);
            put_len(children.len(), u32::MAX as usize, out)?;
            for c in children {
                encode_node(c, out)?;
            }
        }
        Content::Bytes(b) => {
            out.push(2);
            put_str(b, out)?;
        }
    }
    Ok(())
}

/// Decodes exactly one stanza.
pub fn decode(bytes: &[u8]) -> Result<Node> {
    let mut r = Reader { buf: bytes };
    let version = r.u8()?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let node = decode_node(&mut r, 0)?;
    if !r.buf.is_empty() {
        return Err(Error::TrailingBytes(r.buf.len()));
    }
    Ok(node)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()?;
        self.take(n)
    }
    fn string(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::InvalidUtf8)
    }
}

fn decode_node(r: &mut Reader<'_>, depth: usize) -> Result<Node> {
    if depth >= MAX_DEPTH {
        return Err(Error::TooDeep { max: MAX_DEPTH });
    }
    let tag = r.string()?;
    let n = r.u16()?;
    let mut attrs = Vec::with_capacity(usize::from(n).min(r.buf.len() / 8));
    for _ in 0..n {
        attrs.push((r.string()?, r.string()?));
    }
    let content = match r.u8()? {
        0 => Content::Empty,
        1 => {
            let count = r.u32()?;
            // Each child takes at least 7 bytes: never reserve more than the input can hold.
            let mut children = Vec::with_capacity(count.min(r.buf.len() / 7));
            for _ in 0..count {
                children.push(decode_node(r, depth + 1)?);
            }
            Content::Nodes(children)
        }
        2 => Content::Bytes(r.bytes()?.to_vec()),
        other => return Err(Error::UnknownToken(other)),
    };
    Ok(Node { tag, attrs, content })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_node() -> impl Strategy<Value = Node> {
        let leaf = (
            "[a-z]{1,8}",
            proptest::collection::vec(("[a-z]{1,4}", "[ -~]{0,8}"), 0..3),
            prop_oneof![
                Just(Content::Empty),
                proptest::collection::vec(any::<u8>(), 0..32).prop_map(Content::Bytes),
            ],
        )
            .prop_map(|(tag, attrs, content)| Node { tag, attrs, content });
        leaf.prop_recursive(4, 32, 4, |inner| {
            ("[a-z]{1,8}", proptest::collection::vec(inner, 0..4))
                .prop_map(|(tag, children)| Node::new(tag).with_children(children))
        })
    }

    proptest! {
        #[test]
        fn round_trip(node in arb_node()) {
            prop_assert_eq!(decode(&encode(&node).unwrap()).unwrap(), node);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut n = Node::new("x");
        for _ in 0..(MAX_DEPTH + 1) {
            n = Node::new("x").with_children(vec![n]);
        }
        assert_eq!(decode(&encode(&n).unwrap()), Err(Error::TooDeep { max: MAX_DEPTH }));
    }

    #[test]
    fn huge_declared_counts_do_not_allocate() {
        // tag "a", no attrs, children with count u32::MAX and nothing after.
        let wire = [0, 0, 0, 0, 1, b'a', 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(decode(&wire), Err(Error::Truncated));
    }
}

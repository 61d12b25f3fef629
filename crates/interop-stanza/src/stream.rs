//! Push-based decoder for a stream of concatenated binary stanzas.

use crate::binary::{Codec, DecodeState};
use crate::{Error, Node, Result};

/// Decodes binary stanzas from a byte stream (a WebSocket, a file): push bytes in as they
/// arrive, in any chunks, and take whole stanzas out.
///
/// Call order: [`push`](Self::push) any number of bytes, then call
/// [`next_stanza`](Self::next_stanza) until it returns `Ok(None)` (it needs more bytes);
/// repeat. At the end of the stream, [`finish`](Self::finish) says whether a partial stanza was
/// left over. Results never depend on how the input was split: decoding resumes at the last
/// complete node head, and every check depends only on the stanza's own bytes. After an error
/// the decoder is poisoned and returns that error again (the stream cannot be resynchronised).
///
/// Binary stanzas are self-delimiting (list headers count their items), so the stream needs no
/// framing of its own. On the Noise transport one transport message carries one stanza: use
/// [`binary::decode`](crate::binary::decode) there.
///
/// ```
/// use interop_stanza::{Node, StreamDecoder, binary};
///
/// let mut wire = binary::encode(&Node::new("presence").with_attr("type", "available"))?;
/// wire.extend(binary::encode(&Node::new("ack").with_attr("id", "1"))?);
/// let mut d = StreamDecoder::default();
/// let mut out = Vec::new();
/// for b in wire {
///     d.push(&[b]);
///     while let Some(node) = d.next_stanza()? {
///         out.push(node.tag);
///     }
/// }
/// d.finish()?;
/// assert_eq!(out, ["presence", "ack"]);
/// # Ok::<(), interop_stanza::Error>(())
/// ```
pub struct StreamDecoder {
    codec: Codec,
    buf: Vec<u8>,
    /// Offset in `buf` of the current stanza's first byte.
    start: usize,
    state: DecodeState,
    failed: Option<Error>,
}

impl std::fmt::Debug for StreamDecoder {
    /// Sizes and state only: the buffer holds stanza bytes (identifiers, ciphertext).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("version", &self.codec.version())
            .field("buffered", &self.buffered())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new(Codec::default())
    }
}

impl StreamDecoder {
    /// A decoder using `codec`'s dictionary and limits.
    pub fn new(codec: Codec) -> Self {
        Self { codec, buf: Vec::new(), start: 0, state: DecodeState::default(), failed: None }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole stanza, `Ok(None)` if more bytes are needed.
    pub fn next_stanza(&mut self) -> Result<Option<Node>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let input = &self.buf[self.start..];
        if input.len() < self.state.need {
            return Ok(None);
        }
        match self.state.advance(&self.codec, input) {
            Ok(Some((node, used))) => {
                self.start += used;
                self.state = DecodeState::default();
                Ok(Some(node))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                Err(e)
            }
        }
    }

    /// Bytes received but not yet returned as stanzas.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Checks that the stream ended on a stanza boundary: [`Error::Truncated`] if a partial
    /// stanza is buffered, the poisoning error if decoding failed.
    pub fn finish(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.buffered() > 0 => Err(Error::Truncated),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::binary;
    use crate::testutil::arb_node;

    /// Feeds `wire` split at `cuts`; returns the stanzas and the first error.
    fn feed(wire: &[u8], cuts: &[usize]) -> (Vec<Node>, Result<()>) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.sort_unstable();
        let mut d = StreamDecoder::default();
        let mut out = Vec::new();
        let mut prev = 0;
        for end in cuts.into_iter().chain([wire.len()]) {
            d.push(&wire[prev..end]);
            prev = end;
            loop {
                match d.next_stanza() {
                    Ok(Some(n)) => out.push(n),
                    Ok(None) => break,
                    Err(e) => return (out, Err(e)),
                }
            }
        }
        let end = d.finish();
        (out, end)
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_the_result(
            nodes in proptest::collection::vec(arb_node(), 1..4),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut wire = Vec::new();
            for n in &nodes {
                wire.extend(binary::encode(n)?);
            }
            let (got, end) = feed(&wire, &cuts);
            prop_assert_eq!(end, Ok(()));
            prop_assert_eq!(got, nodes);
        }

        #[test]
        fn errors_do_not_depend_on_chunking(
            nodes in proptest::collection::vec(arb_node(), 1..3),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut wire = Vec::new();
            for n in &nodes {
                wire.extend(binary::encode(n)?);
            }
            let i = at.index(wire.len());
            wire[i] = byte;
            prop_assert_eq!(feed(&wire, &cuts), feed(&wire, &[]));
        }
    }

    #[test]
    fn byte_by_byte_and_partial_end() {
        let n = Node::new("iq").with_attr("id", "7").with_children(vec![Node::new("count")]);
        let wire = binary::encode(&n).expect("encodable");
        let mut d = StreamDecoder::default();
        for b in &wire[..wire.len() - 1] {
            d.push(&[*b]);
            assert_eq!(d.next_stanza(), Ok(None));
        }
        assert_eq!(d.finish(), Err(Error::Truncated));
        let debug = format!("{d:?}");
        assert!(
            debug.contains(&format!("buffered: {}", wire.len() - 1)) && !debug.contains("buf:"),
            "{debug}"
        );
        d.push(&wire[wire.len() - 1..]);
        assert_eq!(d.next_stanza(), Ok(Some(n)));
        assert_eq!(d.next_stanza(), Ok(None));
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn an_error_poisons_the_decoder() {
        let mut d = StreamDecoder::default();
        d.push(&[0xFF]);
        assert_eq!(d.next_stanza(), Err(Error::UnknownToken { page: 0, token: 0xFF }));
        d.push(&binary::encode(&Node::new("ack")).expect("encodable"));
        assert_eq!(d.next_stanza(), Err(Error::UnknownToken { page: 0, token: 0xFF }));
    }

    #[test]
    fn a_declared_length_beyond_the_limit_fails_before_the_bytes_arrive() {
        let mut d = StreamDecoder::new(binary::Codec::default());
        d.push(&[0xD2, 0x01, binary::BIN_32, 0x7F, 0xFF, 0xFF, 0xFF]);
        assert_eq!(
            d.next_stanza(),
            Err(Error::LimitExceeded { limit: "stanza size", max: 1 << 20 })
        );
    }
}

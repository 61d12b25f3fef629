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
#[derive(Debug)]
pub struct StreamDecoder {
    codec: Codec,
    buf: Vec<u8>,
    /// Offset in `buf` of the current stanza's first byte.
    start: usize,
    state: DecodeState,
    failed: Option<Error>,
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

//! Framing: every handshake and transport message travels as a 3-byte big-endian length
//! followed by that many bytes.

use crate::{Error, MAX_NOISE_MESSAGE, Result};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 3;

/// Appends one frame carrying `body` to `out`.
pub fn encode(body: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&prefix(body.len())?);
    out.extend_from_slice(body);
    Ok(())
}

/// The length prefix of a frame whose body is `len` bytes long.
pub(crate) fn prefix(len: usize) -> Result<[u8; LEN_PREFIX]> {
    if len > MAX_NOISE_MESSAGE {
        return Err(Error::MessageTooLarge { len, max: MAX_NOISE_MESSAGE });
    }
    let [_, a, b, c] =
        u32::try_from(len).expect("checked against MAX_NOISE_MESSAGE above").to_be_bytes();
    Ok([a, b, c])
}

/// Splits the first whole frame off `bytes` without copying: `Ok(Some((body, rest)))`, or
/// `Ok(None)` while the frame is incomplete. A declared length above `max` is refused as soon
/// as the prefix is in.
///
/// For input that is already in memory (a received datagram, a file, a sender's output); a
/// stream read in pieces goes through a [`FrameDecoder`].
pub fn split_first(bytes: &[u8], max: usize) -> Result<Option<(&[u8], &[u8])>> {
    let Some((len, rest)) = read_len(bytes)? else {
        return Ok(None);
    };
    if len > max {
        return Err(Error::FrameTooLarge { len, max });
    }
    Ok((rest.len() >= len).then(|| rest.split_at(len)))
}

/// Returns the body of the single whole frame in `bytes` (trailing bytes are an error).
pub fn decode_one(bytes: &[u8]) -> Result<&[u8]> {
    let (len, rest) = read_len(bytes)?.ok_or(Error::Truncated)?;
    if len > MAX_NOISE_MESSAGE {
        return Err(Error::FrameTooLarge { len, max: MAX_NOISE_MESSAGE });
    }
    match rest.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(Error::Truncated),
        std::cmp::Ordering::Equal => Ok(rest),
        std::cmp::Ordering::Greater => Err(Error::UnexpectedMessage("bytes after the frame")),
    }
}

fn read_len(bytes: &[u8]) -> Result<Option<(usize, &[u8])>> {
    if bytes.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
    Ok(Some((len, &bytes[LEN_PREFIX..])))
}

/// Buffer capacity kept once every buffered frame was consumed.
const KEEP: usize = 4 * 1024;

/// A push-based frame decoder: feed any slices with [`push`](Self::push), take whole frames
/// with [`next_frame`](Self::next_frame). Results never depend on how the input was chunked.
///
/// A declared length above the limit is refused as soon as the 3-byte prefix is in, before
/// anything is buffered for it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as frames (compacted lazily, not per frame).
    start: usize,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_NOISE_MESSAGE)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { buf: Vec::new(), start: 0, max }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into, for an adapter that reads straight into it (tokio's
    /// `read_buf`, which appends without zero-filling): compacted, with room reserved for the
    /// rest of a pending frame or `chunk` bytes, whichever is more. The caller only appends.
    #[cfg(feature = "tokio")]
    pub(crate) fn read_buffer(&mut self, chunk: usize) -> &mut Vec<u8> {
        self.compact();
        let pending = &self.buf[self.start..];
        let rest = match read_len(pending) {
            // A frame above the limit gets no room: next_frame_ref refuses it.
            Ok(Some((len, _))) if len <= self.max => {
                (LEN_PREFIX + len).saturating_sub(pending.len())
            }
            _ => 0,
        };
        self.buf.reserve(rest.max(chunk));
        &mut self.buf
    }

    /// Drops consumed bytes: all of them (giving a large buffer back) once everything was
    /// consumed, else the consumed head once it is more than half of the buffer.
    fn compact(&mut self) {
        if self.start == self.buf.len() {
            // Everything was consumed: start over, giving a large buffer back (an idle
            // connection should not keep the memory of its largest frame).
            if self.buf.capacity() > KEEP {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Takes the next whole frame's body, `Ok(None)` until one is complete.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.next_frame_ref()?.map(<[u8]>::to_vec))
    }

    /// Like [`next_frame`](Self::next_frame), borrowing the body from the decoder's buffer
    /// instead of copying it.
    pub fn next_frame_ref(&mut self) -> Result<Option<&[u8]>> {
        let Some((body, _)) = split_first(&self.buf[self.start..], self.max)? else {
            return Ok(None);
        };
        let body_start = self.start + LEN_PREFIX;
        self.start = body_start + body.len();
        Ok(Some(&self.buf[body_start..self.start]))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn oversized_declared_length_is_refused_before_buffering() {
        let mut d = FrameDecoder::new(10);
        d.push(&[0, 0, 11]);
        assert!(matches!(d.next_frame(), Err(Error::FrameTooLarge { len: 11, max: 10 })));
    }

    #[test]
    fn decode_one_checks_lengths() {
        assert!(matches!(decode_one(&[0, 0]), Err(Error::Truncated)));
        assert!(matches!(decode_one(&[0, 0, 2, 1]), Err(Error::Truncated)));
        assert!(decode_one(&[0, 0, 1, 1, 9]).is_err());
        assert_eq!(decode_one(&[0, 0, 1, 7]).unwrap(), &[7]);
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_frames(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut wire = Vec::new();
            for b in &bodies { encode(b, &mut wire).unwrap(); }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([wire.len()]) {
                d.push(&wire[last..p]);
                last = p;
                while let Some(f) = d.next_frame().unwrap() { got.push(f); }
            }
            prop_assert_eq!(got, bodies);
            prop_assert_eq!(d.buffered(), 0);
        }
    }
    #[test]
    fn split_first_takes_whole_frames_in_place() {
        let mut wire = Vec::new();
        encode(b"ab", &mut wire).unwrap();
        encode(b"", &mut wire).unwrap();
        let (a, rest) = split_first(&wire, 10).unwrap().unwrap();
        assert_eq!((a, a.as_ptr()), (&b"ab"[..], wire[LEN_PREFIX..].as_ptr()), "borrowed");
        let (b, rest) = split_first(rest, 10).unwrap().unwrap();
        assert_eq!((b, rest), (&b""[..], &b""[..]));
        assert!(split_first(&wire[..4], 10).unwrap().is_none(), "incomplete");
        assert!(split_first(&[0, 0], 10).unwrap().is_none(), "no prefix yet");
        assert!(matches!(
            split_first(&[0, 0, 11], 10),
            Err(Error::FrameTooLarge { len: 11, max: 10 })
        ));
    }

    proptest! {
        /// The read path (bytes appended straight into the decoder's buffer, as the tokio
        /// adapter does) gives the frames `push` gives, for any chunking.
        #[cfg(feature = "tokio")]
        #[test]
        fn reading_into_the_buffer_never_changes_the_frames(
            sizes in proptest::collection::vec(prop_oneof![0usize..300, 5_000usize..70_000], 0..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let bodies: Vec<Vec<u8>> =
                sizes.iter().enumerate().map(|(k, &n)| vec![k as u8; n.min(MAX_NOISE_MESSAGE)]).collect();
            let mut wire = Vec::new();
            for b in &bodies { encode(b, &mut wire).unwrap(); }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([wire.len()]) {
                let buf = d.read_buffer(16);
                let room = buf.capacity() - buf.len();
                prop_assert!(room >= 16);
                // A read fills at most the room it is given.
                let p = p.min(last + room);
                buf.extend_from_slice(&wire[last..p]);
                last = p;
                while let Some(f) = d.next_frame().unwrap() { got.push(f); }
            }
            while last < wire.len() {
                let buf = d.read_buffer(16);
                let p = wire.len().min(last + buf.capacity() - buf.len());
                buf.extend_from_slice(&wire[last..p]);
                last = p;
                while let Some(f) = d.next_frame().unwrap() { got.push(f); }
            }
            prop_assert_eq!(got, bodies);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn split_first_gives_the_encoded_frames(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
        ) {
            let mut wire = Vec::new();
            for b in &bodies { encode(b, &mut wire).unwrap(); }
            let mut rest = &wire[..];
            let mut got = Vec::new();
            while let Some((body, tail)) = split_first(rest, MAX_NOISE_MESSAGE).unwrap() {
                got.push(body.to_vec());
                rest = tail;
            }
            prop_assert!(rest.is_empty());
            prop_assert_eq!(got, bodies);
        }
    }

    /// Once a large frame was consumed, the buffer it needed is given back.
    #[cfg(feature = "tokio")]
    #[test]
    fn a_large_frame_is_read_whole_and_its_buffer_given_back() {
        let mut wire = Vec::new();
        encode(&vec![5u8; 60_000], &mut wire).unwrap();
        let mut d = FrameDecoder::default();
        d.read_buffer(2048).extend_from_slice(&wire[..2048]);
        assert!(d.next_frame_ref().unwrap().is_none());
        let buf = d.read_buffer(2048);
        assert!(buf.capacity() >= wire.len(), "room for the whole frame in one read");
        buf.extend_from_slice(&wire[2048..]);
        assert_eq!(d.next_frame_ref().unwrap().map(<[u8]>::len), Some(60_000));
        assert!(d.read_buffer(2048).capacity() <= KEEP, "given back");
    }
}

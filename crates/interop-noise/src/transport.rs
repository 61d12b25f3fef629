//! The transport phase: stanzas in Noise transport messages, fragmented when large, with a
//! rekey every [`REKEY_INTERVAL`] messages per direction.
//!
//! Each Noise transport message's plaintext starts with a fragment header:
//!
//! ```text
//!   00 stanza                    a whole stanza (at most MAX_WHOLE = 65,518 bytes)
//!   01 total:u32be chunk         first fragment; `total` = the whole stanza's length
//!   02 chunk                     next fragment; the stanza is complete when `total` bytes are in
//! ```
//!
//! The receiver refuses `total` above its maximum stanza size before it allocates anything.

use std::borrow::Cow;
use std::ops::Range;

use crate::frame::{self, LEN_PREFIX};
use crate::{Error, MAX_NOISE_MESSAGE, MAX_PLAINTEXT, Result};

/// Both sides call Noise `Rekey()` on a direction's key before the message whose nonce is a
/// positive multiple of this number. Part of the protocol, not a setting.
pub const REKEY_INTERVAL: u64 = 65_536;

/// The default largest stanza a receiver accepts (1 MiB).
pub const DEFAULT_MAX_STANZA: usize = 1 << 20;

/// The largest stanza that travels unfragmented (one Noise message minus the header byte).
pub const MAX_WHOLE: usize = MAX_PLAINTEXT - 1;

/// AES-GCM tag length.
const TAG_LEN: usize = 16;

const WHOLE: u8 = 0x00;
const FIRST: u8 = 0x01;
const NEXT: u8 = 0x02;
const FIRST_HEADER: usize = 5;

/// Noise reserves nonce 2^64-1; a transport refuses to use it rather than wrap.
const NONCE_LIMIT: u64 = u64::MAX;

/// Large copies (glibc's `rep movsb`, from a few KiB up) run 10 to 20 times slower on some x86
/// CPUs when the destination lies 1 to 15 bytes after the source modulo 4 KiB ("4K aliasing";
/// measured on this project's build machine: 28 µs instead of 2 µs for 64 KiB). Where this
/// transport chooses where a large copy goes, it keeps source and destination co-aligned to
/// this many bytes, which keeps them out of that window. Only speed depends on it.
const ALIGN: usize = 16;

/// Encrypts and decrypts stanzas after a completed handshake.
///
/// Sending costs one copy of the stanza beyond what snow itself does: snow's `write_message`
/// takes the plaintext (fragment header and chunk) as one slice and writes the ciphertext to
/// another, so each fragment's plaintext is staged in the output buffer just past the end of
/// its own frame, and snow encrypts it back into the frame's place. The next frame then
/// overwrites the staged bytes, so the output needs no zero-filling beyond the first frame
/// (and none at all in [`seal_stanza`](Self::seal_stanza)'s reused buffer). A plaintext that
/// would reach past the stanza's last frame is staged in the transport's scratch buffer
/// instead, so that an output holds exactly the frames.
pub struct Transport {
    state: snow::TransportState,
    /// Reused, initialised working memory: on send the frame of a whole stanza followed by its
    /// staged plaintext (or one staged plaintext), on receive one decrypted Noise message.
    /// Grown to the traffic (a connection that only carries small stanzas never holds 64 KiB),
    /// at most one frame plus one plaintext (128 KiB and a few bytes).
    scratch: Vec<u8>,
    partial: Option<Partial>,
    max_stanza: usize,
    nonce_limit: u64,
}

struct Partial {
    total: usize,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("max_stanza", &self.max_stanza).finish_non_exhaustive()
    }
}

/// The frames of one stanza from [`Transport::seal_stanza`]: borrowed from the transport's
/// reused buffer for a whole stanza, owned for a fragmented one (so that no connection keeps
/// the memory of its largest stanza).
pub struct Sealed<'a>(Cow<'a, [u8]>);

impl std::ops::Deref for Sealed<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Sealed<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Sealed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed").field("len", &self.0.len()).finish()
    }
}

impl Transport {
    pub(crate) fn new(state: snow::TransportState, max_stanza: usize) -> Self {
        Self {
            state,
            scratch: Vec::new(),
            partial: None,
            max_stanza: max_stanza.min(u32::MAX as usize),
            nonce_limit: NONCE_LIMIT,
        }
    }

    /// The largest stanza this side sends or accepts.
    pub fn max_stanza(&self) -> usize {
        self.max_stanza
    }

    /// Encrypts `stanza` into one or more frames (length prefixes included).
    pub fn encrypt_stanza(&mut self, stanza: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encrypt_stanza_into(stanza, &mut out)?;
        Ok(out)
    }

    /// Encrypts `stanza` into one or more frames appended to `out`.
    ///
    /// Costs a zero-fill of the first frame on top of [`seal_stanza`](Self::seal_stanza).
    pub fn encrypt_stanza_into(&mut self, stanza: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.check_len(stanza)?;
        let start = out.len();
        out.reserve_exact(frames_len(stanza));
        let spill = Some(&mut self.scratch);
        seal_frames(&mut self.state, self.nonce_limit, stanza, out, start, spill)
            .map(|_| ())
            .inspect_err(|_| out.truncate(start))
    }

    /// Encrypts `stanza` into one or more frames and returns them, the cheapest way to send:
    /// a whole stanza's frame is built in a buffer the transport reuses (no zero-filling, no
    /// copy into a caller's buffer), a fragmented stanza's frames in a new buffer.
    pub fn seal_stanza(&mut self, stanza: &[u8]) -> Result<Sealed<'_>> {
        self.check_len(stanza)?;
        let frames = frames_len(stanza);
        if stanza.len() > MAX_WHOLE {
            let mut out = Vec::with_capacity(frames);
            let spill = Some(&mut self.scratch);
            seal_frames(&mut self.state, self.nonce_limit, stanza, &mut out, 0, spill)?;
            return Ok(Sealed(Cow::Owned(out)));
        }
        // The frame, then its plaintext: grow (once) to exactly that rather than by doubling.
        let reach = frames + 2 * ALIGN + 1 + stanza.len();
        self.scratch.reserve_exact(reach.saturating_sub(self.scratch.len()));
        let end =
            seal_frames(&mut self.state, self.nonce_limit, stanza, &mut self.scratch, 0, None)?;
        Ok(Sealed(Cow::Borrowed(&self.scratch[..end])))
    }

    fn check_len(&self, stanza: &[u8]) -> Result<()> {
        if stanza.len() > self.max_stanza {
            return Err(Error::MessageTooLarge { len: stanza.len(), max: self.max_stanza });
        }
        Ok(())
    }

    /// Decrypts one frame body. Returns a stanza once its last fragment is in, `Ok(None)` while a
    /// fragmented stanza is incomplete.
    pub fn decrypt(&mut self, frame_body: &[u8]) -> Result<Option<Vec<u8>>> {
        let plain = self.open(frame_body)?;
        self.fragment(plain)
    }

    /// Interprets the plaintext at `plain` in the scratch buffer as a (fragment of a) stanza.
    fn fragment(&mut self, plain: Range<usize>) -> Result<Option<Vec<u8>>> {
        let msg = &self.scratch[plain];
        let (&kind, body) = msg.split_first().ok_or(Error::BadFragment("empty message"))?;
        match kind {
            WHOLE => {
                if self.partial.is_some() {
                    return Err(Error::BadFragment("whole stanza inside a fragmented one"));
                }
                Ok(Some(body.to_vec()))
            }
            FIRST => {
                if self.partial.is_some() {
                    return Err(Error::BadFragment("first fragment inside a fragmented stanza"));
                }
                let (len, chunk) = body
                    .split_first_chunk::<4>()
                    .ok_or(Error::BadFragment("first fragment without a length"))?;
                let total = u32::from_be_bytes(*len) as usize;
                if total > self.max_stanza {
                    return Err(Error::StanzaTooLarge { len: total, max: self.max_stanza });
                }
                if chunk.is_empty() || chunk.len() >= total {
                    return Err(Error::BadFragment(
                        "first fragment does not start a longer stanza",
                    ));
                }
                let mut buf = Vec::with_capacity(total);
                buf.extend_from_slice(chunk);
                self.partial = Some(Partial { total, buf });
                Ok(None)
            }
            NEXT => {
                let partial = self
                    .partial
                    .as_mut()
                    .ok_or(Error::BadFragment("next fragment without a first"))?;
                if body.is_empty() || partial.buf.len() + body.len() > partial.total {
                    return Err(Error::BadFragment("fragment does not fit the declared length"));
                }
                partial.buf.extend_from_slice(body);
                if partial.buf.len() < partial.total {
                    return Ok(None);
                }
                Ok(self.partial.take().map(|p| p.buf))
            }
            _ => Err(Error::BadFragment("unknown fragment type")),
        }
    }

    /// Encrypts `header || chunk` as one Noise message, framed, appended to `out`.
    pub(crate) fn seal(&mut self, header: &[u8], chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        let plain = Stage::Spill(&mut self.scratch);
        seal_message(&mut self.state, self.nonce_limit, header, chunk, plain, out, start)?;
        Ok(())
    }

    /// Decrypts one Noise message into the scratch buffer; returns where its plaintext lies.
    pub(crate) fn open(&mut self, frame_body: &[u8]) -> Result<Range<usize>> {
        let nonce = self.state.receiving_nonce();
        if nonce >= self.nonce_limit {
            return Err(Error::NonceExhausted);
        }
        if nonce > 0 && nonce.is_multiple_of(REKEY_INTERVAL) {
            self.state.rekey_incoming();
        }
        // snow copies the ciphertext to where it decrypts it: somewhere in the first ALIGN
        // bytes of the scratch buffer, co-aligned with the frame body.
        let need = (frame_body.len().saturating_sub(TAG_LEN) + ALIGN - 1).min(MAX_NOISE_MESSAGE);
        if self.scratch.len() < need {
            self.scratch.resize(need, 0);
        }
        let at = co_align(self.scratch.as_ptr(), frame_body.as_ptr());
        let n =
            self.state.read_message(frame_body, &mut self.scratch[at..]).map_err(|e| match e {
                snow::Error::Decrypt | snow::Error::Input => Error::Decrypt,
                other => Error::Noise(other),
            })?;
        Ok(at..at + n)
    }

    #[cfg(test)]
    pub(crate) fn set_nonce_limit(&mut self, limit: u64) {
        self.nonce_limit = limit;
    }

    #[cfg(test)]
    pub(crate) fn set_receiving_nonce(&mut self, nonce: u64) {
        self.state.set_receiving_nonce(nonce);
    }
}

/// The plaintext header of one Noise message of a stanza.
#[derive(Clone, Copy)]
struct Header {
    bytes: [u8; FIRST_HEADER],
    len: usize,
}

impl Header {
    fn whole() -> Self {
        Self { bytes: [WHOLE, 0, 0, 0, 0], len: 1 }
    }

    fn first(total: u32) -> Self {
        let [a, b, c, d] = total.to_be_bytes();
        Self { bytes: [FIRST, a, b, c, d], len: FIRST_HEADER }
    }

    fn next() -> Self {
        Self { bytes: [NEXT, 0, 0, 0, 0], len: 1 }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The Noise messages of `stanza` (at most `u32::MAX` bytes): a whole one, or a first fragment
/// and next fragments.
fn fragments(stanza: &[u8]) -> impl Iterator<Item = (Header, &[u8])> {
    let (head, first, rest) = if stanza.len() <= MAX_WHOLE {
        (Header::whole(), stanza, &[][..])
    } else {
        let total = u32::try_from(stanza.len()).expect("max_stanza is capped at u32::MAX");
        let (first, rest) = stanza.split_at(MAX_PLAINTEXT - FIRST_HEADER);
        (Header::first(total), first, rest)
    };
    std::iter::once((head, first))
        .chain(rest.chunks(MAX_PLAINTEXT - 1).map(|chunk| (Header::next(), chunk)))
}

/// Bytes of the frames of `stanza`.
fn frames_len(stanza: &[u8]) -> usize {
    fragments(stanza).map(|(header, chunk)| LEN_PREFIX + header.len + chunk.len() + TAG_LEN).sum()
}

/// Writes the frames of `stanza` into `out` from offset `at` (overwriting whatever `out` holds
/// past `at`); returns where they end. A plaintext that would be staged past the last frame
/// goes to `spill` if given (`out` then ends with the frames), else past the end of `out`.
fn seal_frames(
    state: &mut snow::TransportState,
    nonce_limit: u64,
    stanza: &[u8],
    out: &mut Vec<u8>,
    at: usize,
    mut spill: Option<&mut Vec<u8>>,
) -> Result<usize> {
    let last = at + frames_len(stanza);
    let mut end = at;
    for (header, chunk) in fragments(stanza) {
        let plain = header.len + chunk.len();
        let stage = match spill.as_deref_mut() {
            Some(spill) if end + LEN_PREFIX + plain + TAG_LEN + 2 * ALIGN + plain > last => {
                Stage::Spill(spill)
            }
            _ => Stage::AfterFrame,
        };
        end = seal_message(state, nonce_limit, header.as_slice(), chunk, stage, out, end)?;
    }
    Ok(end)
}

/// Where a message's plaintext is staged for snow to encrypt it into its frame.
enum Stage<'a> {
    /// Right after the frame's place in the output (within `2 * ALIGN` bytes).
    AfterFrame,
    /// At the start of this buffer (within `ALIGN` bytes).
    Spill(&'a mut Vec<u8>),
}

/// Encrypts `header || chunk` as one Noise message framed at offset `at` of `out` (overwriting
/// whatever `out` holds past `at`); returns where the frame ends.
///
/// snow encrypts from one slice into another, so the plaintext is first staged where `stage`
/// says: right after the frame's place (`out[at..]` becomes `prefix | ciphertext | header
/// chunk`, and a following frame overwrites the staged bytes), or in a spill buffer. Only the
/// bytes of the frame that `out` does not hold yet (and the few bytes of a gap before the
/// staged plaintext) are zero-filled. The staged plaintext is co-aligned with the frame's
/// ciphertext, and its copy from `chunk` kept out of the slow window where there is room.
fn seal_message(
    state: &mut snow::TransportState,
    nonce_limit: u64,
    header: &[u8],
    chunk: &[u8],
    stage: Stage<'_>,
    out: &mut Vec<u8>,
    at: usize,
) -> Result<usize> {
    let plain = header.len() + chunk.len();
    let prefix = frame::prefix(plain + TAG_LEN)?;
    let nonce = state.sending_nonce();
    if nonce >= nonce_limit {
        return Err(Error::NonceExhausted);
    }
    if nonce > 0 && nonce.is_multiple_of(REKEY_INTERVAL) {
        state.rekey_outgoing();
    }
    let end = at + LEN_PREFIX + plain + TAG_LEN;
    if out.len() < end {
        out.resize(end, 0);
    }
    // Addresses only: where a copy will go (the buffers do not move, their room is reserved).
    let cipher = out.as_ptr().wrapping_add(at + LEN_PREFIX);
    let (frame, staged) = match stage {
        Stage::AfterFrame => {
            let mut from = end + co_align(out.as_ptr().wrapping_add(end), cipher);
            let to = out.as_ptr().wrapping_add(from + header.len());
            if slow_copy(to, chunk.as_ptr()) {
                from += ALIGN;
            }
            stage_at(out, from, header, chunk);
            let (frame, staged) = out.split_at_mut(from);
            (&mut frame[at..end], &staged[..plain])
        }
        Stage::Spill(spill) => {
            spill.reserve((ALIGN + plain).saturating_sub(spill.len()));
            let from = co_align(spill.as_ptr(), cipher);
            stage_at(spill, from, header, chunk);
            (&mut out[at..end], &spill[from..from + plain])
        }
    };
    frame[..LEN_PREFIX].copy_from_slice(&prefix);
    let n = state.write_message(staged, &mut frame[LEN_PREFIX..]).map_err(Error::Noise)?;
    debug_assert_eq!(n, plain + TAG_LEN);
    Ok(end)
}

/// Writes `header` then `chunk` at offset `at` of `buf`, growing it as needed (zero-filling
/// any gap before `at`).
fn stage_at(buf: &mut Vec<u8>, at: usize, header: &[u8], chunk: &[u8]) {
    if buf.len() < at {
        buf.resize(at, 0);
    }
    overwrite(buf, at, header);
    overwrite(buf, at + header.len(), chunk);
}

/// The offset in `0..ALIGN` from `dst` that is co-aligned with `src`.
fn co_align(dst: *const u8, src: *const u8) -> usize {
    src.addr().wrapping_sub(dst.addr()) % ALIGN
}

/// Whether a large copy from `src` to `dst` would fall in the slow window (see [`ALIGN`]).
fn slow_copy(dst: *const u8, src: *const u8) -> bool {
    (1..ALIGN).contains(&(dst.addr().wrapping_sub(src.addr()) % 4096))
}

/// Writes `bytes` at offset `at` (at most `out.len()`) of `out`, growing it as needed.
fn overwrite(out: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let (inside, beyond) = bytes.split_at(out.len().saturating_sub(at).min(bytes.len()));
    out[at..at + inside.len()].copy_from_slice(inside);
    out.extend_from_slice(beyond);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    /// A raw snow transport pair from an NN handshake whose keys depend only on `seed`.
    fn raw_pair(seed: u64) -> (snow::TransportState, snow::TransportState) {
        let params: snow::params::NoiseParams =
            "Noise_NN_25519_AESGCM_SHA256".parse().expect("valid name");
        let rng = &mut ChaCha20Rng::seed_from_u64(seed);
        let mut i = crate::resolver::builder(params.clone(), rng).build_initiator().unwrap();
        let mut r = crate::resolver::builder(params, rng).build_responder().unwrap();
        let mut buf = [0u8; 256];
        let mut tmp = [0u8; 256];
        let n = i.write_message(&[], &mut buf).unwrap();
        r.read_message(&buf[..n], &mut tmp).unwrap();
        let n = r.write_message(&[], &mut buf).unwrap();
        i.read_message(&buf[..n], &mut tmp).unwrap();
        (i.into_transport_mode().unwrap(), r.into_transport_mode().unwrap())
    }

    fn pair(max: usize) -> (Transport, Transport) {
        let (i, r) = raw_pair(1);
        (Transport::new(i, max), Transport::new(r, max))
    }

    fn frames(wire: &[u8]) -> Vec<Vec<u8>> {
        let mut d = frame::FrameDecoder::default();
        d.push(wire);
        let mut out = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            out.push(f);
        }
        assert_eq!(d.buffered(), 0);
        out
    }

    fn deliver(rx: &mut Transport, wire: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut got = Vec::new();
        for f in frames(wire) {
            if let Some(s) = rx.decrypt(&f)? {
                got.push(s);
            }
        }
        Ok(got)
    }

    #[test]
    fn sizes_around_the_fragmentation_boundaries_round_trip() {
        let (mut tx, mut rx) = pair(DEFAULT_MAX_STANZA);
        let first_chunk = MAX_PLAINTEXT - FIRST_HEADER;
        let next_chunk = MAX_PLAINTEXT - 1;
        for (len, want_frames) in [
            (0, 1),
            (MAX_WHOLE, 1),
            (MAX_WHOLE + 1, 2),
            (first_chunk + next_chunk, 2),
            (first_chunk + next_chunk + 1, 3),
            (DEFAULT_MAX_STANZA, 1 + (DEFAULT_MAX_STANZA - first_chunk).div_ceil(next_chunk)),
        ] {
            let stanza: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let wire = tx.encrypt_stanza(&stanza).unwrap();
            assert_eq!(frames(&wire).len(), want_frames, "len {len}");
            assert!(frames(&wire).iter().all(|f| f.len() <= MAX_NOISE_MESSAGE));
            assert_eq!(deliver(&mut rx, &wire).unwrap(), vec![stanza], "len {len}");
        }
    }

    #[test]
    fn a_declared_length_above_the_maximum_is_refused_before_allocating() {
        let (i, r) = raw_pair(2);
        let (mut tx, mut rx) =
            (Transport::new(i, DEFAULT_MAX_STANZA + 1), Transport::new(r, DEFAULT_MAX_STANZA));
        let wire = tx.encrypt_stanza(&vec![1u8; DEFAULT_MAX_STANZA + 1]).unwrap();
        let first = frames(&wire).remove(0);
        assert!(matches!(
            rx.decrypt(&first),
            Err(Error::StanzaTooLarge { len, max }) if len == DEFAULT_MAX_STANZA + 1 && max == DEFAULT_MAX_STANZA
        ));
        assert!(matches!(
            tx.encrypt_stanza(&vec![0u8; DEFAULT_MAX_STANZA + 2]),
            Err(Error::MessageTooLarge { .. })
        ));
    }

    #[test]
    fn fragment_sequences_that_break_the_rules_are_refused() {
        type Messages<'a> = Vec<(&'a [u8], &'a [u8])>;
        let cases: Vec<(&str, Messages<'_>)> = vec![
            ("empty message", vec![(&[], &[])]),
            ("unknown type", vec![(&[3], b"x")]),
            ("next without first", vec![(&[NEXT], b"x")]),
            ("first without length", vec![(&[FIRST, 0, 0], &[])]),
            ("first holding everything", vec![(&[FIRST, 0, 0, 0, 2], b"ab")]),
            ("first with empty chunk", vec![(&[FIRST, 0, 0, 0, 2], b"")]),
            ("overflow", vec![(&[FIRST, 0, 0, 0, 3], b"ab"), (&[NEXT], b"cd")]),
            ("empty next", vec![(&[FIRST, 0, 0, 0, 3], b"ab"), (&[NEXT], b"")]),
            ("whole inside", vec![(&[FIRST, 0, 0, 0, 3], b"ab"), (&[WHOLE], b"c")]),
            ("first inside", vec![(&[FIRST, 0, 0, 0, 3], b"ab"), (&[FIRST, 0, 0, 0, 3], b"ab")]),
        ];
        for (name, messages) in cases {
            let (mut tx, mut rx) = pair(DEFAULT_MAX_STANZA);
            let mut result = Ok(None);
            for (header, chunk) in messages {
                let mut wire = Vec::new();
                tx.seal(header, chunk, &mut wire).unwrap();
                result = rx.decrypt(&frames(&wire)[0]);
            }
            assert!(matches!(result, Err(Error::BadFragment(_))), "{name}: {result:?}");
        }
    }

    #[test]
    fn both_directions_rekey_at_the_interval() {
        // Our transport against two bare snow twins with the same keys: one never rekeys, the
        // other rekeys by hand before message REKEY_INTERVAL.
        let (i, r) = raw_pair(3);
        let (mut never, _) = raw_pair(3);
        let (mut manual, _) = raw_pair(3);
        let mut ours = Transport::new(i, DEFAULT_MAX_STANZA);
        let mut peer = Transport::new(r, DEFAULT_MAX_STANZA);
        let plain = [WHOLE, b'p', b'i', b'n', b'g'];
        let mut buf = [0u8; 64];
        for n in 0..=REKEY_INTERVAL + 1 {
            let wire = ours.encrypt_stanza(b"ping").unwrap();
            let body = &wire[frame::LEN_PREFIX..];
            if n == REKEY_INTERVAL {
                manual.rekey_outgoing();
            }
            let len = manual.write_message(&plain, &mut buf).unwrap();
            assert_eq!(&buf[..len], body, "message {n}");
            let len = never.write_message(&plain, &mut buf).unwrap();
            assert_eq!(&buf[..len] == body, n < REKEY_INTERVAL, "message {n}");
            assert_eq!(peer.decrypt(body).unwrap().unwrap(), b"ping");
        }
    }

    #[test]
    fn nonces_never_wrap() {
        let (mut tx, mut rx) = pair(DEFAULT_MAX_STANZA);
        tx.set_nonce_limit(2);
        let a = tx.encrypt_stanza(b"a").unwrap();
        let b = tx.encrypt_stanza(b"b").unwrap();
        assert!(matches!(tx.encrypt_stanza(b"c"), Err(Error::NonceExhausted)));
        assert_eq!(deliver(&mut rx, &a).unwrap(), vec![b"a".to_vec()]);
        rx.set_receiving_nonce(u64::MAX);
        assert!(matches!(rx.decrypt(&frames(&b)[0]), Err(Error::NonceExhausted)));
    }

    #[test]
    fn buffers_grow_to_the_traffic_not_up_front() {
        let (mut tx, mut rx) = pair(DEFAULT_MAX_STANZA);
        assert_eq!((tx.scratch.capacity(), rx.scratch.capacity()), (0, 0), "nothing up front");
        let small = tx.encrypt_stanza(&[7u8; 300]).unwrap();
        let body = frame::decode_one(&small).unwrap().to_vec();
        assert_eq!(rx.decrypt(&body).unwrap().unwrap().len(), 300);
        assert!(tx.scratch.len() < 1024 && rx.scratch.len() < 1024, "small traffic, small buffers");
        // A fragmented 200 KiB stanza: the buffers grow to one Noise message, no more.
        let wire = tx.encrypt_stanza(&vec![9u8; 200 * 1024]).unwrap();
        let mut decoder = frame::FrameDecoder::default();
        decoder.push(&wire);
        let mut got = None;
        while let Some(body) = decoder.next_frame().unwrap() {
            if let Some(s) = rx.decrypt(&body).unwrap() {
                got = Some(s);
            }
        }
        assert_eq!(got.unwrap().len(), 200 * 1024);
        assert!(tx.scratch.len() <= MAX_NOISE_MESSAGE && rx.scratch.len() <= MAX_NOISE_MESSAGE);
    }
    /// The frames a bare snow transport writes for `stanza`: each fragment's header and chunk
    /// as one message, length-prefixed; what every send path must produce byte for byte.
    fn bare_frames(twin: &mut snow::TransportState, stanza: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        for (n, (header, chunk)) in fragments(stanza).enumerate() {
            let nonce = twin.sending_nonce();
            if nonce > 0 && nonce.is_multiple_of(REKEY_INTERVAL) {
                twin.rekey_outgoing();
            }
            let plain = [header.as_slice(), chunk].concat();
            assert!(n == 0 || plain[0] == NEXT);
            let len = twin.write_message(&plain, &mut buf).unwrap();
            frame::encode(&buf[..len], &mut wire).unwrap();
        }
        wire
    }

    /// How a test sends a stanza.
    #[derive(Debug, Clone, Copy)]
    enum Send {
        Sealed,
        /// `encrypt_stanza_into` after this many bytes already in the output buffer.
        Into(usize),
        Owned,
    }

    fn send(tx: &mut Transport, how: Send, stanza: &[u8]) -> Vec<u8> {
        match how {
            Send::Sealed => {
                let sealed = tx.seal_stanza(stanza).unwrap();
                if let Cow::Owned(frames) = &sealed.0 {
                    assert_eq!(frames.capacity(), frames.len(), "exactly the frames");
                }
                sealed.to_vec()
            }
            Send::Into(before) => {
                let mut out = vec![0xEE; before];
                tx.encrypt_stanza_into(stanza, &mut out).unwrap();
                assert!(out[..before].iter().all(|&b| b == 0xEE), "bytes before are kept");
                assert_eq!(out.capacity(), out.len(), "exactly the frames");
                out.split_off(before)
            }
            Send::Owned => tx.encrypt_stanza(stanza).unwrap(),
        }
    }

    #[test]
    fn every_send_path_writes_the_bytes_bare_snow_writes() {
        let first_chunk = MAX_PLAINTEXT - FIRST_HEADER;
        let next_chunk = MAX_PLAINTEXT - 1;
        // Large before small, so the reused buffer holds stale bytes longer than each message.
        let sizes = [
            DEFAULT_MAX_STANZA,
            MAX_WHOLE,
            first_chunk + next_chunk + 1,
            MAX_WHOLE + 1,
            first_chunk + next_chunk,
            60 * 1024,
            1024,
            64,
            1,
            0,
        ];
        for how in [Send::Sealed, Send::Into(0), Send::Into(7), Send::Owned] {
            let (i, r) = raw_pair(4);
            let (mut twin, _) = raw_pair(4);
            let mut tx = Transport::new(i, DEFAULT_MAX_STANZA);
            let mut rx = Transport::new(r, DEFAULT_MAX_STANZA);
            for len in sizes {
                let stanza: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
                let wire = send(&mut tx, how, &stanza);
                assert!(wire == bare_frames(&mut twin, &stanza), "{how:?}, {len} bytes");
                assert_eq!(deliver(&mut rx, &wire).unwrap(), vec![stanza], "{how:?}, {len} bytes");
            }
        }
    }

    #[test]
    fn sealing_reuses_one_buffer_bounded_by_a_frame_and_a_plaintext() {
        let (mut tx, mut rx) = pair(DEFAULT_MAX_STANZA);
        let wire = tx.seal_stanza(&[1u8; 300]).unwrap().to_vec();
        assert!(tx.scratch.capacity() < 1024, "small stanzas, small buffer");
        assert_eq!(deliver(&mut rx, &wire).unwrap().len(), 1);
        tx.seal_stanza(&vec![2u8; MAX_WHOLE]).unwrap();
        let bound = LEN_PREFIX + MAX_NOISE_MESSAGE + 2 * ALIGN + MAX_PLAINTEXT;
        assert_eq!(tx.scratch.capacity(), bound, "grown once, exactly");
        let ptr = tx.scratch.as_ptr();
        tx.seal_stanza(&vec![3u8; 40_000]).unwrap();
        tx.seal_stanza(&vec![4u8; 300_000]).unwrap();
        assert_eq!((tx.scratch.as_ptr(), tx.scratch.capacity()), (ptr, bound), "no regrowth");
    }

    #[test]
    fn copies_are_placed_co_aligned_and_out_of_the_slow_window() {
        let buf = [0u8; 64];
        let at = |i: usize| buf.as_ptr().wrapping_add(i);
        for dst in 0..ALIGN * 2 {
            for src in 0..ALIGN * 2 {
                let skip = co_align(at(dst), at(src));
                assert!(skip < ALIGN);
                assert_eq!((dst + skip) % ALIGN, src % ALIGN);
                assert!(!slow_copy(at(dst + skip), at(src)));
            }
        }
        assert!(slow_copy(at(1), at(0)) && slow_copy(at(15), at(0)));
        assert!(!slow_copy(at(0), at(1)) && !slow_copy(at(16), at(0)) && !slow_copy(at(0), at(0)));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Any mix of send paths and stanza sizes, with receives on the sending transport in
        /// between (they share its buffer): the bytes are bare snow's and the stanzas arrive.
        #[test]
        fn mixed_send_paths_match_bare_snow(
            steps in proptest::collection::vec(
                (
                    prop_oneof![0usize..100, 900usize..1100, 65_000usize..70_000, 100_000usize..300_000],
                    0u8..4,
                    0usize..5,
                ),
                1..6,
            ),
            seed in any::<u64>(),
        ) {
            let (i, r) = raw_pair(seed);
            let (mut twin, _) = raw_pair(seed);
            let mut tx = Transport::new(i, DEFAULT_MAX_STANZA);
            let mut rx = Transport::new(r, DEFAULT_MAX_STANZA);
            for (k, (len, how, before)) in steps.into_iter().enumerate() {
                let stanza: Vec<u8> = (0..len).map(|i| (i * 31 + k) as u8).collect();
                let how = match how {
                    0 => Send::Sealed,
                    1 => Send::Into(before),
                    2 => Send::Owned,
                    _ => {
                        // A reply first: `tx` decrypts into the buffer it seals in.
                        let reply = rx.seal_stanza(&stanza[len / 2..]).unwrap().to_vec();
                        prop_assert_eq!(deliver(&mut tx, &reply).unwrap(), vec![stanza[len / 2..].to_vec()]);
                        Send::Sealed
                    }
                };
                let wire = send(&mut tx, how, &stanza);
                prop_assert!(wire == bare_frames(&mut twin, &stanza), "{:?}, {} bytes", how, len);
                prop_assert_eq!(deliver(&mut rx, &wire).unwrap(), vec![stanza]);
            }
        }
    }
}

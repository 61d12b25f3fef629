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

use crate::{Error, MAX_NOISE_MESSAGE, MAX_PLAINTEXT, Result, frame};

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

/// Encrypts and decrypts stanzas after a completed handshake.
pub struct Transport {
    state: snow::TransportState,
    /// Ciphertext or plaintext of one Noise message, grown to the largest message seen (at most
    /// one Noise message): a connection that only carries small stanzas never holds 64 KiB.
    scratch: Vec<u8>,
    plain: Vec<u8>,
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

impl Transport {
    pub(crate) fn new(state: snow::TransportState, max_stanza: usize) -> Self {
        Self {
            state,
            scratch: Vec::new(),
            plain: Vec::new(),
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
        let mut out = Vec::with_capacity(stanza.len() + 32);
        self.encrypt_stanza_into(stanza, &mut out)?;
        Ok(out)
    }

    /// Encrypts `stanza` into one or more frames appended to `out`.
    pub fn encrypt_stanza_into(&mut self, stanza: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if stanza.len() > self.max_stanza {
            return Err(Error::MessageTooLarge { len: stanza.len(), max: self.max_stanza });
        }
        self.seal_stanza(stanza, out)
    }

    fn seal_stanza(&mut self, stanza: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if stanza.len() <= MAX_WHOLE {
            return self.seal(&[WHOLE], stanza, out);
        }
        let total = u32::try_from(stanza.len()).expect("max_stanza is capped at u32::MAX");
        let [a, b, c, d] = total.to_be_bytes();
        let (first, mut rest) = stanza.split_at(MAX_PLAINTEXT - FIRST_HEADER);
        self.seal(&[FIRST, a, b, c, d], first, out)?;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_PLAINTEXT - 1));
            self.seal(&[NEXT], chunk, out)?;
            rest = tail;
        }
        Ok(())
    }

    /// Decrypts one frame body. Returns a stanza once its last fragment is in, `Ok(None)` while a
    /// fragmented stanza is incomplete.
    pub fn decrypt(&mut self, frame_body: &[u8]) -> Result<Option<Vec<u8>>> {
        let n = self.open(frame_body)?;
        self.fragment(n)
    }

    /// Interprets the `n`-byte plaintext in the scratch buffer as a (fragment of a) stanza.
    fn fragment(&mut self, n: usize) -> Result<Option<Vec<u8>>> {
        let msg = &self.scratch[..n];
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
        let nonce = self.state.sending_nonce();
        if nonce >= self.nonce_limit {
            return Err(Error::NonceExhausted);
        }
        if nonce > 0 && nonce.is_multiple_of(REKEY_INTERVAL) {
            self.state.rekey_outgoing();
        }
        self.plain.clear();
        self.plain.extend_from_slice(header);
        self.plain.extend_from_slice(chunk);
        let need = (self.plain.len() + TAG_LEN).min(MAX_NOISE_MESSAGE);
        if self.scratch.len() < need {
            self.scratch.resize(need, 0);
        }
        // Encrypt into the (aligned) scratch buffer, then frame: AES-GCM over a buffer at
        // offset 3 of `out` costs more than the copy (measured with callgrind).
        let n = self.state.write_message(&self.plain, &mut self.scratch).map_err(Error::Noise)?;
        frame::encode(&self.scratch[..n], out)
    }

    /// Decrypts one Noise message into the scratch buffer; returns its plaintext length.
    pub(crate) fn open(&mut self, frame_body: &[u8]) -> Result<usize> {
        let nonce = self.state.receiving_nonce();
        if nonce >= self.nonce_limit {
            return Err(Error::NonceExhausted);
        }
        if nonce > 0 && nonce.is_multiple_of(REKEY_INTERVAL) {
            self.state.rekey_incoming();
        }
        let need = frame_body.len().min(MAX_NOISE_MESSAGE);
        if self.scratch.len() < need {
            self.scratch.resize(need, 0);
        }
        self.state.read_message(frame_body, &mut self.scratch).map_err(|e| match e {
            snow::Error::Decrypt | snow::Error::Input => Error::Decrypt,
            other => Error::Noise(other),
        })
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

#[cfg(test)]
mod tests {
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
}

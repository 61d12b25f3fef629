//! The streaming decryptor.

use std::fmt;
use std::io::Write;

use aes::Aes256;
use cbc::cipher::{BlockDecryptMut, KeyIvInit, inout::InOutBuf};
use hmac::Mac;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::encrypt::{FileDigests, HmacSha256};
use crate::key::{BLOCK, MAC_LEN, MediaKey, MediaType};
use crate::{Error, Result};

/// Size of the decryptor's fixed plaintext buffer. Input chunks of any size are decrypted
/// through it, so memory use does not depend on the chunk or file size.
const SCRATCH_LEN: usize = 16 * 1024;

/// Streaming media decryptor: push encrypted-file bytes in; plaintext goes into a sink that is
/// valid only once [`Decryptor::finish`] returns `Ok`.
///
/// Call order: [`Decryptor::new`] with the digests from the descriptor and a sink (the client
/// uses a temporary file), then [`Decryptor::update`] with chunks of any size in file order,
/// then [`Decryptor::finish`] once.
///
/// While bytes arrive, every block but the last is decrypted and written to the sink. The sink
/// therefore holds *unauthenticated* plaintext until `finish` has checked, over the whole file:
/// the length, the SHA-256 of the encrypted file, the MAC, the padding and the SHA-256 of the
/// plaintext. Only then does `finish` hand the sink back; on any error the caller must discard
/// what the sink holds (delete the temporary file). A wrong MAC, a wrong encrypted-file hash,
/// bad padding and a wrong plaintext hash all give the same [`Error::Integrity`], so a peer learns
/// nothing about which check failed.
///
/// A download that breaks off does not spoil the decryptor: the caller asks the host (or proxy)
/// for `Range: bytes=<received()>-` and keeps feeding. After `update` returns an error, though,
/// the decryptor is spent: later calls return [`Error::DecryptorFailed`].
pub struct Decryptor<W> {
    cbc: cbc::Decryptor<Aes256>,
    mac: HmacSha256,
    encrypted_hash: Sha256,
    plaintext_hash: Sha256,
    expected: FileDigests,
    /// Length of the ciphertext blocks that are decrypted as they arrive (all but the last).
    body_len: u64,
    /// Length of the ciphertext (body + last block).
    ciphertext_len: u64,
    /// Length of the whole encrypted file (ciphertext + MAC).
    file_len: u64,
    received: u64,
    pending: [u8; BLOCK],
    pending_len: usize,
    last_block: [u8; BLOCK],
    tag: [u8; MAC_LEN],
    scratch: Box<[u8]>,
    sink: W,
    failed: bool,
}

impl<W: Write> Decryptor<W> {
    /// Starts decrypting one file of `media_type` under `key`, expecting the file described by
    /// `expected`, writing plaintext into `sink`.
    pub fn new(
        key: &MediaKey,
        media_type: MediaType,
        expected: FileDigests,
        sink: W,
    ) -> Result<Self> {
        let file_len = expected
            .encrypted_len()
            .ok_or(Error::InvalidDescriptor("plaintext length is too large"))?;
        let ciphertext_len = file_len - MAC_LEN as u64;
        let keys = key.derive(media_type);
        let cbc = cbc::Decryptor::<Aes256>::new(keys.cipher_key().into(), keys.iv().into());
        let mut mac = <HmacSha256 as Mac>::new_from_slice(keys.mac_key())
            .expect("HMAC accepts keys of any length");
        mac.update(keys.iv());
        Ok(Decryptor {
            cbc,
            mac,
            encrypted_hash: Sha256::new(),
            plaintext_hash: Sha256::new(),
            expected,
            body_len: ciphertext_len - BLOCK as u64,
            ciphertext_len,
            file_len,
            received: 0,
            pending: [0; BLOCK],
            pending_len: 0,
            last_block: [0; BLOCK],
            tag: [0; MAC_LEN],
            scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
            sink,
            failed: false,
        })
    }

    /// Number of encrypted-file bytes consumed so far (where a resumed download continues).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Length of the encrypted file this decryptor expects.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Consumes the next chunk of the encrypted file.
    ///
    /// Errors: [`Error::TooLong`] as soon as the input goes past the length the descriptor
    /// implies; [`Error::Sink`] if the sink fails.
    pub fn update(&mut self, input: &[u8]) -> Result<()> {
        if self.failed {
            return Err(Error::DecryptorFailed);
        }
        if input.len() as u64 > self.file_len - self.received {
            self.failed = true;
            return Err(Error::TooLong);
        }
        let mut rest = input;
        let mut pos = self.received;

        if pos < self.body_len && !rest.is_empty() {
            let n = usize_min(rest.len(), self.body_len - pos);
            let (body, after) = rest.split_at(n);
            if let Err(e) = self.decrypt_body(body) {
                self.failed = true;
                return Err(e);
            }
            rest = after;
            pos += n as u64;
        }
        if pos < self.ciphertext_len && !rest.is_empty() {
            let off = (pos - self.body_len) as usize;
            let n = usize_min(rest.len(), self.ciphertext_len - pos);
            let (last, after) = rest.split_at(n);
            self.encrypted_hash.update(last);
            self.mac.update(last);
            self.last_block[off..off + n].copy_from_slice(last);
            rest = after;
            pos += n as u64;
        }
        if !rest.is_empty() {
            let off = (pos - self.ciphertext_len) as usize;
            self.encrypted_hash.update(rest);
            self.tag[off..off + rest.len()].copy_from_slice(rest);
        }
        self.received += input.len() as u64;
        Ok(())
    }

    /// Checks the whole file and, only if every check passes, hands back the sink (flushed).
    ///
    /// Errors: [`Error::Truncated`] if fewer bytes arrived than the descriptor implies;
    /// [`Error::Integrity`] if the encrypted-file hash, the MAC, the padding or the plaintext
    /// hash is wrong; [`Error::Sink`] if the sink fails.
    pub fn finish(mut self) -> Result<W> {
        if self.failed {
            return Err(Error::DecryptorFailed);
        }
        if self.received < self.file_len {
            return Err(Error::Truncated);
        }
        let file_ok =
            self.encrypted_hash.finalize().as_slice().ct_eq(&self.expected.encrypted_sha256);
        let tag_ok = self.mac.finalize().into_bytes()[..MAC_LEN].ct_eq(&self.tag);

        let mut block = self.last_block.into();
        self.cbc.decrypt_block_mut(&mut block);
        // The padding length is fixed by the announced plaintext length.
        let pad = BLOCK - (self.expected.plaintext_len % BLOCK as u64) as usize;
        let mut pad_ok = Choice::from(1);
        for &b in &block[BLOCK - pad..] {
            pad_ok &= b.ct_eq(&(pad as u8));
        }
        if !bool::from(file_ok & tag_ok & pad_ok) {
            return Err(Error::Integrity);
        }
        let tail = &block[..BLOCK - pad];
        self.plaintext_hash.update(tail);
        self.sink.write_all(tail).map_err(Error::Sink)?;
        let plain_ok =
            self.plaintext_hash.finalize().as_slice().ct_eq(&self.expected.plaintext_sha256);
        if !bool::from(plain_ok) {
            return Err(Error::Integrity);
        }
        self.sink.flush().map_err(Error::Sink)?;
        Ok(self.sink)
    }

    /// Decrypts body bytes (never the last block) into the sink through the scratch buffer,
    /// feeding the file hash and the MAC.
    fn decrypt_body(&mut self, mut body: &[u8]) -> Result<()> {
        if self.pending_len > 0 {
            let take = (BLOCK - self.pending_len).min(body.len());
            let (head, after) = body.split_at(take);
            self.encrypted_hash.update(head);
            self.mac.update(head);
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(head);
            self.pending_len += take;
            body = after;
            if self.pending_len < BLOCK {
                return Ok(());
            }
            self.pending_len = 0;
            let pending = self.pending;
            self.decrypt_blocks(&pending, false)?;
        }
        let whole = body.len() - body.len() % BLOCK;
        for chunk in body[..whole].chunks(SCRATCH_LEN) {
            self.decrypt_blocks(chunk, true)?;
        }
        let rest = &body[whole..];
        self.encrypted_hash.update(rest);
        self.mac.update(rest);
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
        Ok(())
    }

    /// Decrypts at most `SCRATCH_LEN` bytes of whole blocks and writes them to the sink,
    /// updating the hashes in steps of `HASH_STEP` bytes.
    fn decrypt_blocks(&mut self, ciphertext: &[u8], hash_ciphertext: bool) -> Result<()> {
        let out = &mut self.scratch[..ciphertext.len()];
        for (ct, pt) in ciphertext.chunks(AES_STEP).zip(out.chunks_mut(AES_STEP)) {
            let buf = InOutBuf::new(ct, pt).expect("input and output have the same length");
            let (blocks, tail) = buf.into_chunks();
            debug_assert!(tail.is_empty());
            self.cbc.decrypt_blocks_inout_mut(blocks);
            // Three independent SHA-256 streams, one 64-byte block each in turn: the CPU
            // overlaps their latency-bound rounds.
            for (ct, pt) in ct.chunks(HASH_STEP).zip(pt.chunks(HASH_STEP)) {
                if hash_ciphertext {
                    self.encrypted_hash.update(ct);
                    self.mac.update(ct);
                }
                self.plaintext_hash.update(pt);
            }
        }
        self.sink.write_all(&self.scratch[..ciphertext.len()]).map_err(Error::Sink)
    }
}

/// Bytes decrypted per AES call: eight blocks, one parallel AES-NI batch.
const AES_STEP: usize = 128;

/// Bytes hashed per hash update: one SHA-256 block, so the three hashes interleave finely.
const HASH_STEP: usize = 64;

impl<W> fmt::Debug for Decryptor<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("received", &self.received)
            .field("file_len", &self.file_len)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Decrypts a whole encrypted file held in memory. A convenience for small media (thumbnails,
/// tests); use [`Decryptor`] with a temporary file for anything large.
pub fn decrypt(
    key: &MediaKey,
    media_type: MediaType,
    expected: FileDigests,
    encrypted: &[u8],
) -> Result<Vec<u8>> {
    let capacity =
        usize::try_from(expected.plaintext_len).unwrap_or(usize::MAX).min(encrypted.len());
    let mut dec = Decryptor::new(key, media_type, expected, Vec::with_capacity(capacity))?;
    dec.update(encrypted)?;
    dec.finish()
}

fn usize_min(a: usize, b: u64) -> usize {
    usize::try_from(b).map_or(a, |b| a.min(b))
}

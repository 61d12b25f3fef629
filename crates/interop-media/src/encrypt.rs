//! The streaming encryptor.

use std::fmt;

use aes::Aes256;
use cbc::cipher::{BlockEncryptMut, KeyIvInit, inout::InOutBuf};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::key::{BLOCK, MAC_LEN, MediaKey, MediaType};

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// What a finished encryption produced, and what a decryptor must be told to verify a file:
/// the plaintext length and the SHA-256 of the plaintext and of the encrypted file
/// (ciphertext ‖ MAC). These travel in the [`MediaDescriptor`](crate::MediaDescriptor).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileDigests {
    /// Length of the plaintext in bytes.
    pub plaintext_len: u64,
    /// SHA-256 of the plaintext.
    pub plaintext_sha256: [u8; 32],
    /// SHA-256 of the encrypted file (ciphertext ‖ 10-byte MAC): its content address.
    pub encrypted_sha256: [u8; 32],
}

impl FileDigests {
    /// Length of the encrypted file, `None` if `plaintext_len` is absurd (overflow).
    pub fn encrypted_len(&self) -> Option<u64> {
        crate::encrypted_len(self.plaintext_len)
    }
}

impl fmt::Debug for FileDigests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes identify content: keep them out of logs.
        f.debug_struct("FileDigests")
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

/// Streaming media encryptor: push plaintext in, get encrypted-file bytes out.
///
/// Call order: [`Encryptor::new`], then [`Encryptor::update`] any number of times with chunks of
/// any size, then [`Encryptor::finish`] once. The bytes appended to `out` by all calls,
/// concatenated, are the encrypted file: `AES-256-CBC(PKCS#7(plaintext)) ‖ MAC`, where
/// `MAC = HMAC-SHA256(mac_key, IV ‖ ciphertext)[..10]`. Memory use is fixed (one partial block);
/// each call appends at most `chunk.len() + 16` bytes (`finish`: 26).
///
/// Encryption is deterministic for a given key and media type, so a sender that must restart an
/// upload can re-encrypt and get the same file and content address.
pub struct Encryptor {
    cbc: cbc::Encryptor<Aes256>,
    mac: HmacSha256,
    plaintext_hash: Sha256,
    encrypted_hash: Sha256,
    partial: [u8; BLOCK],
    partial_len: usize,
    plaintext_len: u64,
}

impl Encryptor {
    /// Starts encrypting one file of `media_type` under `key`.
    pub fn new(key: &MediaKey, media_type: MediaType) -> Self {
        let keys = key.derive(media_type);
        let cbc = cbc::Encryptor::<Aes256>::new(keys.cipher_key().into(), keys.iv().into());
        let mut mac = <HmacSha256 as Mac>::new_from_slice(keys.mac_key())
            .expect("HMAC accepts keys of any length");
        mac.update(keys.iv());
        Encryptor {
            cbc,
            mac,
            plaintext_hash: Sha256::new(),
            encrypted_hash: Sha256::new(),
            partial: [0; BLOCK],
            partial_len: 0,
            plaintext_len: 0,
        }
    }

    /// Encrypts the next chunk of plaintext, appending the ciphertext that became available to
    /// `out` (whole blocks only; up to 15 bytes wait for the next call or `finish`).
    pub fn update(&mut self, mut plaintext: &[u8], out: &mut Vec<u8>) {
        self.plaintext_len = self
            .plaintext_len
            .checked_add(plaintext.len() as u64)
            .expect("a slice length fits in u64 and no stream reaches 2^64 bytes");

        // Complete a pending partial block first.
        if self.partial_len > 0 {
            let take = (BLOCK - self.partial_len).min(plaintext.len());
            self.plaintext_hash.update(&plaintext[..take]);
            self.partial[self.partial_len..self.partial_len + take]
                .copy_from_slice(&plaintext[..take]);
            self.partial_len += take;
            plaintext = &plaintext[take..];
            if self.partial_len < BLOCK {
                return;
            }
            let block = self.partial;
            self.partial_len = 0;
            self.encrypt_append(&block, out);
        }

        let whole = plaintext.len() - plaintext.len() % BLOCK;
        if whole > 0 {
            let start = out.len();
            out.resize(start + whole, 0);
            // Interleave the serial CBC chain with the hashes in small steps, so the CPU can
            // run the SHA-256 work while AES waits on the previous block.
            for (plain, dst) in
                plaintext[..whole].chunks(INTERLEAVE).zip(out[start..].chunks_mut(INTERLEAVE))
            {
                self.plaintext_hash.update(plain);
                encrypt_blocks(&mut self.cbc, plain, dst);
                self.mac.update(dst);
                self.encrypted_hash.update(dst);
            }
        }
        let rest = &plaintext[whole..];
        self.plaintext_hash.update(rest);
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    /// Pads, encrypts the last block, appends it and the MAC to `out`, and returns the digests
    /// for the descriptor.
    pub fn finish(mut self, out: &mut Vec<u8>) -> FileDigests {
        // PKCS#7: always 1..=16 bytes of padding, each equal to the padding length.
        let pad = BLOCK - self.partial_len;
        let mut block = self.partial;
        block[self.partial_len..].fill(pad as u8);
        self.encrypt_append(&block, out);

        let tag = self.mac.finalize().into_bytes();
        let tag = &tag[..MAC_LEN];
        out.extend_from_slice(tag);
        self.encrypted_hash.update(tag);

        FileDigests {
            plaintext_len: self.plaintext_len,
            plaintext_sha256: self.plaintext_hash.finalize().into(),
            encrypted_sha256: self.encrypted_hash.finalize().into(),
        }
    }

    /// Encrypts one block and appends it to `out`, feeding MAC and file hash.
    fn encrypt_append(&mut self, block: &[u8; BLOCK], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + BLOCK, 0);
        encrypt_blocks(&mut self.cbc, block, &mut out[start..]);
        let ciphertext = &out[start..];
        self.mac.update(ciphertext);
        self.encrypted_hash.update(ciphertext);
    }
}

/// Bytes encrypted between hash updates: one SHA-256 block, four AES blocks.
const INTERLEAVE: usize = 64;

/// CBC-encrypts whole blocks from `plain` into `dst` (same length).
fn encrypt_blocks(cbc: &mut cbc::Encryptor<Aes256>, plain: &[u8], dst: &mut [u8]) {
    debug_assert_eq!(plain.len() % BLOCK, 0);
    let buf = InOutBuf::new(plain, dst).expect("input and output have the same length");
    let (blocks, tail) = buf.into_chunks();
    debug_assert!(tail.is_empty());
    cbc.encrypt_blocks_inout_mut(blocks);
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

/// Encrypts a whole file held in memory. A convenience for small media (thumbnails, tests);
/// use [`Encryptor`] for anything large.
pub fn encrypt(key: &MediaKey, media_type: MediaType, plaintext: &[u8]) -> (Vec<u8>, FileDigests) {
    let mut out = Vec::with_capacity(plaintext.len() + BLOCK + MAC_LEN);
    let mut enc = Encryptor::new(key, media_type);
    enc.update(plaintext, &mut out);
    let digests = enc.finish(&mut out);
    (out, digests)
}

//! A streaming encrypt → decrypt pipeline over generated data, with fixed-size buffers only.

use std::io::{self, Write};

use interop_media::{Decryptor, Encryptor, FileDigests, MediaKey, MediaType};

pub const CHUNK: usize = 64 * 1024;

/// Fills `buf` with the plaintext bytes of chunk number `index`: a fixed pattern whose first
/// eight bytes are the chunk number (cheap to generate, and no two chunks are equal).
fn fill(buf: &mut [u8], index: u64) {
    for (j, b) in buf.iter_mut().enumerate().take(CHUNK) {
        *b = (j as u8).wrapping_mul(7) ^ (j >> 8) as u8;
    }
    let tag = index.to_le_bytes();
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&tag[..n]);
}

/// Refreshes only the chunk-number bytes of a buffer already filled by [`fill`].
fn refill(buf: &mut [u8], index: u64) {
    let tag = index.to_le_bytes();
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&tag[..n]);
}

/// Feeds `len` generated plaintext bytes to a fresh encryptor; every ciphertext chunk goes to
/// `each` as it is produced. Returns the digests.
fn encrypt_stream(key: &MediaKey, len: u64, mut each: impl FnMut(&[u8])) -> FileDigests {
    let mut plain = vec![0u8; CHUNK];
    fill(&mut plain, 0);
    let mut out = Vec::with_capacity(CHUNK + 32);
    let mut enc = Encryptor::new(key, MediaType::Video);
    let mut done = 0u64;
    let mut index = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        refill(&mut plain[..n], index);
        enc.update(&plain[..n], &mut out);
        each(&out);
        out.clear();
        done += n as u64;
        index += 1;
    }
    let digests = enc.finish(&mut out);
    each(&out);
    digests
}

/// A sink that checks the plaintext against the generator without storing it.
struct CheckingSink {
    expected: Vec<u8>,
    pos: u64,
    mismatches: u64,
}

impl Write for CheckingSink {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let written = buf.len();
        while !buf.is_empty() {
            let offset = (self.pos % CHUNK as u64) as usize;
            if offset == 0 {
                refill(&mut self.expected, self.pos / CHUNK as u64);
            }
            let n = buf.len().min(CHUNK - offset);
            if buf[..n] != self.expected[offset..offset + n] {
                self.mismatches += 1;
            }
            buf = &buf[n..];
            self.pos += n as u64;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encrypts `len` bytes (to learn the digests), then encrypts again and streams the ciphertext
/// straight into a decryptor whose sink checks every plaintext byte. Panics on any mismatch.
pub fn round_trip(len: u64) {
    let key = MediaKey::from_bytes([0x17; 32]);
    let mut file_len = 0u64;
    let digests = encrypt_stream(&key, len, |c| file_len += c.len() as u64);
    assert_eq!(Some(file_len), digests.encrypted_len());

    let mut expected = vec![0; CHUNK];
    fill(&mut expected, 0);
    let sink = CheckingSink { expected, pos: 0, mismatches: 0 };
    let mut dec = Decryptor::new(&key, MediaType::Video, digests, sink).expect("valid digests");
    let again = encrypt_stream(&key, len, |c| dec.update(c).expect("ciphertext is valid"));
    assert!(again == digests, "encryption is deterministic");
    let sink = dec.finish().expect("the file verifies");
    assert_eq!(sink.pos, len);
    assert_eq!(sink.mismatches, 0);
}

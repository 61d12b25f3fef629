//! Streaming round trips, chunk-boundary independence, and every way a download can be bad.

use interop_media::{
    Decryptor, Encryptor, Error, FileDigests, MediaKey, MediaType, decrypt, encrypt, encrypted_len,
};
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};

fn key(seed: u64) -> MediaKey {
    MediaKey::generate(&mut StdRng::seed_from_u64(seed))
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn encrypt_chunked(
    key: &MediaKey,
    t: MediaType,
    data: &[u8],
    chunk: usize,
) -> (Vec<u8>, FileDigests) {
    let mut out = Vec::new();
    let mut enc = Encryptor::new(key, t);
    for c in data.chunks(chunk.max(1)) {
        enc.update(c, &mut out);
    }
    let digests = enc.finish(&mut out);
    (out, digests)
}

fn decrypt_chunked(
    key: &MediaKey,
    t: MediaType,
    digests: FileDigests,
    file: &[u8],
    chunk: usize,
) -> Result<Vec<u8>, Error> {
    let mut dec = Decryptor::new(key, t, digests, Vec::new())?;
    for c in file.chunks(chunk.max(1)) {
        dec.update(c)?;
    }
    dec.finish()
}

#[test]
fn round_trips_at_block_boundaries_and_one_mebibyte() {
    let k = key(1);
    for len in [0, 1, 15, 16, 17, 31, 32, 33, 1 << 20] {
        let data = plaintext(len);
        let (file, digests) = encrypt(&k, MediaType::Document, &data);
        assert_eq!(file.len() as u64, encrypted_len(len as u64).unwrap(), "len {len}");
        assert_eq!(digests.plaintext_len, len as u64);
        for chunk in [1, 7, 16, 17, 4096, 70_000, usize::MAX] {
            if len > 100_000 && chunk < 16 {
                continue; // byte-at-a-time over 1 MiB only slows the test down
            }
            let (file2, digests2) = encrypt_chunked(&k, MediaType::Document, &data, chunk);
            assert!(file2 == file && digests2 == digests, "len {len} chunk {chunk}: encrypt");
            let got = decrypt_chunked(&k, MediaType::Document, digests, &file, chunk).unwrap();
            assert!(got == data, "len {len} chunk {chunk}: decrypt");
        }
    }
}

#[test]
fn different_keys_give_different_files() {
    let data = plaintext(100);
    let (a, _) = encrypt(&key(1), MediaType::Image, &data);
    let (b, _) = encrypt(&key(2), MediaType::Image, &data);
    let (c, _) = encrypt(&key(1), MediaType::Video, &data);
    assert_ne!(a, b);
    assert_ne!(a, c);
}

proptest! {
    #[test]
    fn chunk_boundaries_do_not_matter(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        enc_cuts in proptest::collection::vec(0usize..700, 0..8),
        dec_cuts in proptest::collection::vec(0usize..700, 0..8),
    ) {
        let k = key(3);
        let (whole, digests) = encrypt(&k, MediaType::Audio, &data);

        let mut out = Vec::new();
        let mut enc = Encryptor::new(&k, MediaType::Audio);
        for part in split(&data, &enc_cuts) {
            enc.update(part, &mut out);
        }
        prop_assert!(enc.finish(&mut out) == digests);
        prop_assert_eq!(&out, &whole);

        let mut dec = Decryptor::new(&k, MediaType::Audio, digests, Vec::new()).unwrap();
        for part in split(&whole, &dec_cuts) {
            dec.update(part).unwrap();
        }
        prop_assert_eq!(dec.finish().unwrap(), data);
    }
}

fn split<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut last = 0;
    for c in cuts {
        parts.push(&data[last..c]);
        last = c;
    }
    parts.push(&data[last..]);
    parts
}

/// Decrypts into a borrowed Vec so the test can see what reached the sink on failure.
fn decrypt_into(
    k: &MediaKey,
    t: MediaType,
    d: FileDigests,
    file: &[u8],
    sink: &mut Vec<u8>,
) -> Result<(), Error> {
    let mut dec = Decryptor::new(k, t, d, sink)?;
    dec.update(file)?;
    dec.finish().map(drop)
}

#[test]
fn any_tampering_gives_one_integrity_error() {
    let k = key(4);
    for len in [0usize, 1, 15, 16, 17, 1000] {
        let data = plaintext(len);
        let (file, d) = encrypt(&k, MediaType::Image, &data);
        let n = file.len();
        // Flip a bit in the first ciphertext byte, the last ciphertext block (padding), the
        // last ciphertext byte, and the MAC.
        for pos in [0, n - 26, n - 11, n - 10, n - 1] {
            let mut bad = file.clone();
            bad[pos] ^= 0x01;
            let mut sink = Vec::new();
            let r = decrypt_into(&k, MediaType::Image, d, &bad, &mut sink);
            assert!(matches!(r, Err(Error::Integrity)), "len {len} pos {pos}: {r:?}");
            // The last block's plaintext never reaches the sink of a bad file.
            assert!(sink.len() <= n - 26, "len {len} pos {pos}: {} bytes released", sink.len());
        }
        // Wrong hashes in the descriptor.
        let mut wrong = d;
        wrong.encrypted_sha256[0] ^= 1;
        assert!(matches!(decrypt(&k, MediaType::Image, wrong, &file), Err(Error::Integrity)));
        let mut wrong = d;
        wrong.plaintext_sha256[31] ^= 1;
        assert!(matches!(decrypt(&k, MediaType::Image, wrong, &file), Err(Error::Integrity)));
        // Wrong key, wrong media type.
        assert!(matches!(decrypt(&key(5), MediaType::Image, d, &file), Err(Error::Integrity)));
        assert!(matches!(decrypt(&k, MediaType::Video, d, &file), Err(Error::Integrity)));
    }
}

#[test]
fn a_wrong_size_in_the_descriptor_is_caught() {
    let k = key(6);
    let data = plaintext(20);
    let (file, d) = encrypt(&k, MediaType::Video, &data);
    // Same block count, different padding length.
    for plaintext_len in [16, 19, 21, 31] {
        let wrong = FileDigests { plaintext_len, ..d };
        assert!(
            matches!(decrypt(&k, MediaType::Video, wrong, &file), Err(Error::Integrity)),
            "{plaintext_len}"
        );
    }
    // A different block count changes the expected file length.
    let longer = FileDigests { plaintext_len: 40, ..d };
    assert!(matches!(decrypt(&k, MediaType::Video, longer, &file), Err(Error::Truncated)));
    let shorter = FileDigests { plaintext_len: 5, ..d };
    assert!(matches!(decrypt(&k, MediaType::Video, shorter, &file), Err(Error::TooLong)));
    let absurd = FileDigests { plaintext_len: u64::MAX, ..d };
    assert!(matches!(
        Decryptor::new(&k, MediaType::Video, absurd, Vec::new()),
        Err(Error::InvalidDescriptor(_))
    ));
}

#[test]
fn truncated_downloads_are_refused() {
    let k = key(7);
    let data = plaintext(1000);
    let (file, d) = encrypt(&k, MediaType::Document, &data);
    for cut in [0, 1, 16, 500, file.len() - 26, file.len() - 10, file.len() - 1] {
        let r = decrypt(&k, MediaType::Document, d, &file[..cut]);
        assert!(matches!(r, Err(Error::Truncated)), "cut {cut}: {r:?}");
    }
}

#[test]
fn extra_bytes_are_refused_at_once_and_spend_the_decryptor() {
    let k = key(8);
    let (mut file, d) = encrypt(&k, MediaType::Document, &plaintext(100));
    file.push(0);
    let mut dec = Decryptor::new(&k, MediaType::Document, d, Vec::new()).unwrap();
    dec.update(&file[..50]).unwrap();
    assert_eq!(dec.received(), 50);
    assert!(matches!(dec.update(&file[50..]), Err(Error::TooLong)));
    assert!(matches!(dec.update(&[]), Err(Error::DecryptorFailed)));
    assert!(matches!(dec.finish(), Err(Error::DecryptorFailed)));
}

struct FailingSink;

impl std::io::Write for FailingSink {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk full"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn sink_failures_are_reported() {
    let k = key(9);
    let (file, d) = encrypt(&k, MediaType::Document, &plaintext(100));
    let mut dec = Decryptor::new(&k, MediaType::Document, d, FailingSink).unwrap();
    assert!(matches!(dec.update(&file), Err(Error::Sink(_))));
    assert!(matches!(dec.finish(), Err(Error::DecryptorFailed)));
    // A file whose plaintext fits in the held-back last block only writes at `finish`.
    let (file, d) = encrypt(&k, MediaType::Document, &plaintext(5));
    let mut dec = Decryptor::new(&k, MediaType::Document, d, FailingSink).unwrap();
    dec.update(&file).unwrap();
    assert!(matches!(dec.finish(), Err(Error::Sink(_))));
}

#[test]
fn debug_output_has_no_secrets() {
    let k = MediaKey::from_bytes([0x5a; 32]);
    let (_, d) = encrypt(&k, MediaType::Image, b"secret picture");
    let enc = Encryptor::new(&k, MediaType::Image);
    let dec = Decryptor::new(&k, MediaType::Image, d, Vec::new()).unwrap();
    for s in [format!("{enc:?}"), format!("{dec:?}"), format!("{d:?}")] {
        assert!(!s.contains("5a") && !s.contains("90") && !s.contains("secret"), "{s}");
    }
}

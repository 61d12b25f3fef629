//! Known-answer vectors computed with the openssl command line (test-vectors/media/).

use interop_media::{ContentAddress, FileDigests, MediaKey, MediaType, decrypt, encrypt};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    media_type: String,
    info: String,
    media_key: String,
    plaintext: String,
    iv: String,
    cipher_key: String,
    mac_key: String,
    ciphertext: String,
    mac: String,
    encrypted_sha256: String,
    plaintext_sha256: String,
}

fn load() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../test-vectors/media/vectors.json");
    let text = std::fs::read_to_string(path).expect("vectors.json is checked in");
    let file: File = serde_json::from_str(&text).expect("vectors.json parses");
    file.vectors
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vectors hold hex")
}

fn h32(s: &str) -> [u8; 32] {
    h(s).try_into().expect("32 bytes")
}

#[test]
fn vectors_cover_every_media_type_and_boundary_size() {
    let vectors = load();
    for t in MediaType::ALL {
        let lens: Vec<usize> = vectors
            .iter()
            .filter(|v| v.media_type == t.as_str())
            .map(|v| v.plaintext.len() / 2)
            .collect();
        for want in [0, 1, 15, 16, 17] {
            assert!(lens.contains(&want), "{t}: no vector of {want} bytes");
        }
    }
}

#[test]
fn openssl_vectors_match() {
    for (i, v) in load().iter().enumerate() {
        let media_type: MediaType = v.media_type.parse().unwrap();
        assert_eq!(media_type.info(), v.info.as_bytes(), "vector {i}: info string");
        let key = MediaKey::from_slice(&h(&v.media_key)).unwrap();

        let derived = key.derive(media_type);
        assert_eq!(derived.iv().as_slice(), h(&v.iv), "vector {i}: iv");
        assert_eq!(derived.cipher_key().as_slice(), h(&v.cipher_key), "vector {i}: cipher key");
        assert_eq!(derived.mac_key().as_slice(), h(&v.mac_key), "vector {i}: mac key");

        let plaintext = h(&v.plaintext);
        let mut file = h(&v.ciphertext);
        file.extend_from_slice(&h(&v.mac));
        let expected = FileDigests {
            plaintext_len: plaintext.len() as u64,
            plaintext_sha256: h32(&v.plaintext_sha256),
            encrypted_sha256: h32(&v.encrypted_sha256),
        };

        let (encrypted, digests) = encrypt(&key, media_type, &plaintext);
        assert_eq!(hex::encode(&encrypted), hex::encode(&file), "vector {i}: encrypted file");
        assert!(digests == expected, "vector {i}: digests");
        assert_eq!(ContentAddress::of(&file).as_bytes(), &expected.encrypted_sha256);

        let decrypted = decrypt(&key, media_type, expected, &file).unwrap();
        assert_eq!(decrypted, plaintext, "vector {i}: decryption");
    }
}

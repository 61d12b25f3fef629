//! Encrypt and decrypt throughput on 64 MiB, next to the openssl command line doing the same
//! work (AES-256-CBC, then HMAC-SHA256 over the file) in the same run.
//!
//! `cargo bench -p interop-media -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, inout::InOutBuf};
use criterion::{Criterion, Throughput, criterion_group};
use interop_media::{Decryptor, Encryptor, MAC_LEN, MediaKey, MediaType, encrypt};
use sha2::{Digest, Sha256};

const LEN: usize = 64 << 20;
const CHUNK: usize = 64 << 10;

#[allow(clippy::disallowed_methods)] // a bench owns its clock
fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).status().expect("openssl runs");
    let elapsed = start.elapsed();
    assert!(status.success(), "openssl failed");
    elapsed
}

/// `openssl enc` (or `enc -d`) on `input`, then `openssl dgst -sha256 -hmac` on `input`.
fn openssl_pair(input: &Path, decrypt: bool, key_hex: &str, iv_hex: &str) -> Duration {
    let mut enc = Command::new("openssl");
    enc.arg("enc").arg("-aes-256-cbc");
    if decrypt {
        enc.arg("-d");
    }
    enc.args(["-K", key_hex, "-iv", iv_hex, "-in"]).arg(input).args(["-out", "/dev/null"]);
    let mut mac = Command::new("openssl");
    mac.args(["dgst", "-sha256", "-hmac", "0123456789abcdef0123456789abcdef"]).arg(input);
    run(&mut enc) + run(&mut mac)
}

fn bench(c: &mut Criterion) {
    let key = MediaKey::from_bytes([0x42; 32]);
    let derived = key.derive(MediaType::Video);
    let key_hex = hex::encode(derived.cipher_key());
    let iv_hex = hex::encode(derived.iv());

    let plaintext: Vec<u8> = (0..LEN).map(|i| (i * 7 + (i >> 12)) as u8).collect();
    let (file, digests) = encrypt(&key, MediaType::Video, &plaintext);

    let dir = tempfile::tempdir().expect("temp dir");
    let plain_path = dir.path().join("plain.bin");
    let cipher_path = dir.path().join("cipher.bin");
    std::fs::write(&plain_path, &plaintext).expect("write plaintext");
    std::fs::write(&cipher_path, &file[..file.len() - MAC_LEN]).expect("write ciphertext");

    let mut g = c.benchmark_group("media-64MiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);

    g.bench_function("interop-media encrypt", |b| {
        let mut out = Vec::with_capacity(CHUNK + 32);
        b.iter(|| {
            let mut enc = Encryptor::new(&key, MediaType::Video);
            for chunk in plaintext.chunks(CHUNK) {
                enc.update(chunk, &mut out);
                black_box(&out);
                out.clear();
            }
            black_box(enc.finish(&mut out))
        })
    });
    g.bench_function("openssl enc + dgst -hmac (encrypt)", |b| {
        b.iter_custom(|iters| {
            (0..iters).map(|_| openssl_pair(&plain_path, false, &key_hex, &iv_hex)).sum()
        })
    });
    g.bench_function("interop-media decrypt", |b| {
        b.iter(|| {
            let mut dec =
                Decryptor::new(&key, MediaType::Video, digests, io::sink()).expect("digests");
            for chunk in file.chunks(CHUNK) {
                dec.update(chunk).expect("valid file");
            }
            dec.finish().expect("verifies")
        })
    });
    g.bench_function("openssl enc -d + dgst -hmac (decrypt)", |b| {
        b.iter_custom(|iters| {
            (0..iters).map(|_| openssl_pair(&cipher_path, true, &key_hex, &iv_hex)).sum()
        })
    });
    g.finish();

    // Where the time goes: each primitive alone over the same 64 MiB.
    let mut g = c.benchmark_group("components-64MiB");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.sample_size(10);
    g.bench_function("sha256", |b| b.iter(|| black_box(Sha256::digest(&plaintext))));
    g.bench_function("aes-256-cbc encrypt", |b| {
        let mut buf = vec![0u8; CHUNK];
        b.iter(|| {
            let mut cbc = cbc::Encryptor::<aes::Aes256>::new(
                derived.cipher_key().into(),
                derived.iv().into(),
            );
            for chunk in plaintext.chunks(CHUNK) {
                let (blocks, _) = InOutBuf::new(chunk, &mut buf[..chunk.len()])
                    .expect("same length")
                    .into_chunks();
                cbc.encrypt_blocks_inout_mut(blocks);
                black_box(&buf);
            }
        })
    });
    g.bench_function("aes-256-cbc decrypt", |b| {
        let mut buf = vec![0u8; CHUNK];
        b.iter(|| {
            let mut cbc = cbc::Decryptor::<aes::Aes256>::new(
                derived.cipher_key().into(),
                derived.iv().into(),
            );
            for chunk in file[..LEN].chunks(CHUNK) {
                let (blocks, _) = InOutBuf::new(chunk, &mut buf[..chunk.len()])
                    .expect("same length")
                    .into_chunks();
                cbc.decrypt_blocks_inout_mut(blocks);
                black_box(&buf);
            }
        })
    });
    g.finish();
}

/// Alternates our code and the openssl pair, `ROUNDS` times each way, and prints the median of
/// the per-round throughput ratios: on a shared, noisy machine a paired ratio is steadier than
/// two criterion figures taken seconds apart.
#[allow(clippy::disallowed_methods)] // a bench owns its clock
fn paired() {
    const ROUNDS: usize = 9;
    let key = MediaKey::from_bytes([0x42; 32]);
    let derived = key.derive(MediaType::Video);
    let key_hex = hex::encode(derived.cipher_key());
    let iv_hex = hex::encode(derived.iv());
    let plaintext: Vec<u8> = (0..LEN).map(|i| (i * 7 + (i >> 12)) as u8).collect();
    let (file, digests) = encrypt(&key, MediaType::Video, &plaintext);
    let dir = tempfile::tempdir().expect("temp dir");
    let plain_path = dir.path().join("plain.bin");
    let cipher_path = dir.path().join("cipher.bin");
    std::fs::write(&plain_path, &plaintext).expect("write plaintext");
    std::fs::write(&cipher_path, &file[..file.len() - MAC_LEN]).expect("write ciphertext");

    let mut enc_ratios = Vec::new();
    let mut dec_ratios = Vec::new();
    let mut out = Vec::with_capacity(CHUNK + 32);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut enc = Encryptor::new(&key, MediaType::Video);
        for chunk in plaintext.chunks(CHUNK) {
            enc.update(chunk, &mut out);
            black_box(&out);
            out.clear();
        }
        black_box(enc.finish(&mut out));
        out.clear();
        let ours = start.elapsed();
        let theirs = openssl_pair(&plain_path, false, &key_hex, &iv_hex);
        enc_ratios.push(theirs.as_secs_f64() / ours.as_secs_f64());

        let start = Instant::now();
        let mut dec = Decryptor::new(&key, MediaType::Video, digests, io::sink()).expect("digests");
        for chunk in file.chunks(CHUNK) {
            dec.update(chunk).expect("valid file");
        }
        dec.finish().expect("verifies");
        let ours = start.elapsed();
        let theirs = openssl_pair(&cipher_path, true, &key_hex, &iv_hex);
        dec_ratios.push(theirs.as_secs_f64() / ours.as_secs_f64());
    }
    for (name, mut r) in [("encrypt", enc_ratios), ("decrypt", dec_ratios)] {
        r.sort_by(f64::total_cmp);
        println!(
            "paired {name}: interop-media / openssl throughput, median of {ROUNDS}: {:.2} (min {:.2}, max {:.2})",
            r[ROUNDS / 2],
            r[0],
            r[ROUNDS - 1]
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    // `cargo bench -- <filter>` names criterion benchmarks; run the paired check when there is
    // no filter or the filter is `paired` (numbers are option values, `--bench` comes from cargo).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && a.parse::<f64>().is_err())
        .collect();
    if filters.is_empty() || filters.iter().any(|f| f == "paired") {
        paired();
    }
    Criterion::default().configure_from_args().final_summary();
}

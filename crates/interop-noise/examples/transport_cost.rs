//! Instruction-count companion of `benches/noise.rs`: runs one transport case a fixed number of
//! times so that `valgrind --tool=callgrind` gives a noise-free cost, ours vs bare snow.
//!
//! ```sh
//! cargo build --release -p interop-noise --example transport_cost
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/transport_cost interop 1024 1000
//! ```
//!
//! Cases: `interop` (what `NoiseStream` does: `Transport::seal_stanza`, frames decrypted where
//! they lie), `interop_into` (`encrypt_stanza_into` a cleared `Vec` and a `FrameDecoder` fed
//! with `push`, which copies), `bare` (snow alone, the same bytes in maximum-size messages).
//! Each prints how many Noise messages one stanza took, to check that bare snow does as many.

#![allow(clippy::unwrap_used, clippy::expect_used)] // measurement tool: a panic is the report

use interop_noise::cert::{IntermediateKey, RootKey, Validity};
use interop_noise::frame::FrameDecoder;
use interop_noise::proto::{CertificateChain, ClientPayload};
use interop_noise::{
    ClientConfig, ClientHandshake, ConnectionHeader, MAX_NOISE_MESSAGE, MAX_PLAINTEXT, NOISE_XX,
    ServerConfig, ServerHandshake, ServerStep, StaticKeypair, Transport, frame,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn ours() -> (Transport, Transport) {
    let rng = &mut ChaCha20Rng::seed_from_u64(1);
    let now = 1_767_225_600;
    let window = Validity { not_before: now - 60, not_after: now + 60 };
    let (root, inter) = (RootKey::generate(rng), IntermediateKey::generate(rng));
    let keys = StaticKeypair::generate(rng);
    let chain = CertificateChain {
        intermediate: Some(root.issue_intermediate(&inter, 1, window)),
        leaf: Some(inter.issue_leaf(1, &keys.public, 2, window)),
    };
    let server = ServerConfig::new(keys, chain);
    let client = ClientConfig::new(StaticKeypair::generate(rng), root.trust_anchor());
    let (expect, first) =
        ClientHandshake::start_xx(&client, &ClientPayload::default(), rng).unwrap();
    let h = ServerHandshake::handle_header(&server, &first[..ConnectionHeader::LEN]).unwrap();
    let body = |b: &[u8]| frame::decode_one(b).unwrap().to_vec();
    let ServerStep::Xx(fin, reply) =
        h.handle_client_hello(&body(&first[ConnectionHeader::LEN..]), 0, rng).unwrap()
    else {
        unreachable!()
    };
    let (c, finish) = expect.handle_server_hello(&body(&reply), now).unwrap();
    (c.transport, fin.handle_client_finish(&body(&finish)).unwrap().transport)
}

fn bare() -> (snow::TransportState, snow::TransportState) {
    let params: snow::params::NoiseParams = NOISE_XX.parse().unwrap();
    let b = snow::Builder::new(params.clone());
    let (ki, kr) = (b.generate_keypair().unwrap(), b.generate_keypair().unwrap());
    let mut i = snow::Builder::new(params.clone())
        .local_private_key(&ki.private)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(params)
        .local_private_key(&kr.private)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut buf, mut out) = ([0u8; 1024], [0u8; 1024]);
    for turn in 0..3 {
        let (tx, rx) = if turn % 2 == 0 { (&mut i, &mut r) } else { (&mut r, &mut i) };
        let n = tx.write_message(&[], &mut buf).unwrap();
        rx.read_message(&buf[..n], &mut out).unwrap();
    }
    (i.into_transport_mode().unwrap(), r.into_transport_mode().unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (which, size, n): (&str, usize, usize) =
        (&args[1], args[2].parse().unwrap(), args[3].parse().unwrap());
    let stanza = vec![0xA5u8; size];
    let mut total = 0usize;
    let mut messages = 0usize;
    match which {
        "interop" => {
            // As `NoiseStream` does it: the frames come from the transport's buffer and are
            // decrypted where they lie (NoiseStream reads them straight into its decoder's buffer).
            let (mut tx, mut rx) = ours();
            for _ in 0..n {
                let wire = tx.seal_stanza(&stanza).unwrap();
                let mut rest = &wire[..];
                while let Some((f, tail)) = frame::split_first(rest, MAX_NOISE_MESSAGE).unwrap() {
                    messages += 1;
                    if let Some(s) = rx.decrypt(f).unwrap() {
                        total += s.len();
                    }
                    rest = tail;
                }
                assert!(rest.is_empty());
            }
        }
        "interop_into" => {
            let (mut tx, mut rx) = ours();
            let mut wire = Vec::new();
            let mut decoder = FrameDecoder::default();
            for _ in 0..n {
                wire.clear();
                tx.encrypt_stanza_into(&stanza, &mut wire).unwrap();
                decoder.push(&wire);
                while let Some(f) = decoder.next_frame_ref().unwrap() {
                    messages += 1;
                    if let Some(s) = rx.decrypt(f).unwrap() {
                        total += s.len();
                    }
                }
            }
        }
        "bare" => {
            let (mut tx, mut rx) = bare();
            let (mut buf, mut out) = (vec![0u8; 65_535], vec![0u8; 65_535]);
            for _ in 0..n {
                let mut got = Vec::with_capacity(size);
                for chunk in stanza.chunks(MAX_PLAINTEXT) {
                    messages += 1;
                    let k = tx.write_message(chunk, &mut buf).unwrap();
                    let m = rx.read_message(&buf[..k], &mut out).unwrap();
                    got.extend_from_slice(&out[..m]);
                }
                total += got.len();
            }
        }
        _ => panic!("interop, interop_into or bare"),
    }
    assert_eq!(total, size * n);
    // Printed with n = 0 too, so that (Ir(n) - Ir(0)) / n leaves the printing out.
    eprintln!("{which}: {} Noise messages per stanza", messages / n.max(1));
}

//! Handshakes and transport throughput, next to bare snow doing the same work in the same run.
//!
//! `cargo bench -p interop-noise -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the failure report

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use interop_noise::cert::{IntermediateKey, RootKey, Validity};
use interop_noise::proto::{CertificateChain, ClientPayload};
use interop_noise::{
    ClientConfig, ClientHandshake, ConnectionHeader, IkReply, MAX_NOISE_MESSAGE, MAX_PLAINTEXT,
    NOISE_IK, NOISE_XX, ServerConfig, ServerHandshake, ServerStep, StaticKeypair, Transport, frame,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: u64 = 1_767_225_600;

fn configs() -> (ServerConfig, ClientConfig) {
    let rng = &mut ChaCha20Rng::seed_from_u64(1);
    let window = Validity { not_before: NOW - 60, not_after: NOW + 60 };
    let (root, inter) = (RootKey::generate(rng), IntermediateKey::generate(rng));
    let keys = StaticKeypair::generate(rng);
    let chain = CertificateChain {
        intermediate: Some(root.issue_intermediate(&inter, 1, window)),
        leaf: Some(inter.issue_leaf(1, &keys.public, 2, window)),
    };
    (
        ServerConfig::new(keys, chain),
        ClientConfig::new(StaticKeypair::generate(rng), root.trust_anchor()),
    )
}

fn payload() -> ClientPayload {
    ClientPayload {
        account_id: "alice".into(),
        device_id: 1,
        user_agent: "bench/1".into(),
        provider_jwt: "x".repeat(600),
        ..Default::default()
    }
}

fn body(bytes: &[u8]) -> &[u8] {
    frame::decode_one(bytes).unwrap()
}

fn ours_xx(
    server: &ServerConfig,
    client: &ClientConfig,
    rng: &mut ChaCha20Rng,
) -> (Transport, Transport) {
    let (expect, first) = ClientHandshake::start_xx(client, &payload(), rng).unwrap();
    let h = ServerHandshake::handle_header(server, &first[..ConnectionHeader::LEN]).unwrap();
    let ServerStep::Xx(finish_state, reply) =
        h.handle_client_hello(body(&first[ConnectionHeader::LEN..]), NOW * 1000, rng).unwrap()
    else {
        unreachable!()
    };
    let (c, finish) = expect.handle_server_hello(body(&reply), NOW).unwrap();
    let s = finish_state.handle_client_finish(body(&finish)).unwrap();
    (c.transport, s.transport)
}

fn ours_ik(
    server: &ServerConfig,
    client: &ClientConfig,
    rng: &mut ChaCha20Rng,
) -> (Transport, Transport) {
    let (expect, first) =
        ClientHandshake::start_ik(client, server.public_key(), &payload(), rng).unwrap();
    let h = ServerHandshake::handle_header(server, &first[..ConnectionHeader::LEN]).unwrap();
    let ServerStep::Ik(confirm_state, reply) =
        h.handle_client_hello(body(&first[ConnectionHeader::LEN..]), NOW * 1000, rng).unwrap()
    else {
        unreachable!()
    };
    let IkReply::Done(c, confirm) = expect.handle_reply(body(&reply), NOW, rng).unwrap() else {
        unreachable!()
    };
    let s = confirm_state.handle_confirm(body(&confirm)).unwrap();
    (c.transport, s.transport)
}

/// Bare snow: the same pattern and keys, the same payload, no framing, protobuf or certificates.
fn bare(
    pattern: &str,
    server: &StaticKeypair,
    client: &StaticKeypair,
) -> (snow::TransportState, snow::TransportState) {
    let params: snow::params::NoiseParams = pattern.parse().unwrap();
    let mut ib = snow::Builder::new(params.clone()).local_private_key(&client.private[..]).unwrap();
    if pattern == NOISE_IK {
        ib = ib.remote_public_key(&server.public).unwrap();
    }
    let mut i = ib.build_initiator().unwrap();
    let mut r = snow::Builder::new(params)
        .local_private_key(&server.private[..])
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut buf, mut out) = ([0u8; 2048], [0u8; 2048]);
    let p = payload();
    let client_payload = prost::Message::encode_to_vec(&p);
    let mut turn = 0;
    while !(i.is_handshake_finished() && r.is_handshake_finished()) {
        let (tx, rx) = if turn % 2 == 0 { (&mut i, &mut r) } else { (&mut r, &mut i) };
        let n = tx.write_message(&client_payload, &mut buf).unwrap();
        rx.read_message(&buf[..n], &mut out).unwrap();
        turn += 1;
    }
    (i.into_transport_mode().unwrap(), r.into_transport_mode().unwrap())
}

fn handshakes(c: &mut Criterion) {
    let (server, client) = configs();
    let server_keys = StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(2));
    let client_keys = StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(3));
    let mut g = c.benchmark_group("handshake");
    let rng = &mut ChaCha20Rng::seed_from_u64(4);
    g.bench_function("xx/interop", |b| b.iter(|| ours_xx(&server, &client, rng)));
    g.bench_function("xx/bare_snow", |b| b.iter(|| bare(NOISE_XX, &server_keys, &client_keys)));
    g.bench_function("ik/interop", |b| b.iter(|| ours_ik(&server, &client, rng)));
    g.bench_function("ik/bare_snow", |b| b.iter(|| bare(NOISE_IK, &server_keys, &client_keys)));
    g.finish();
}

fn transport(c: &mut Criterion) {
    let (server, client) = configs();
    let rng = &mut ChaCha20Rng::seed_from_u64(5);
    let (mut tx, mut rx) = ours_xx(&server, &client, rng);
    let keys = (
        StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(6)),
        StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(7)),
    );
    let (mut btx, mut brx) = bare(NOISE_XX, &keys.0, &keys.1);
    let mut g = c.benchmark_group("transport");
    for size in [64usize, 1024, 60 * 1024, 256 * 1024] {
        let stanza = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        // As `NoiseStream` does it: frames from the transport's buffer, decrypted where they
        // lie (NoiseStream reads them straight into its decoder's buffer).
        g.bench_with_input(BenchmarkId::new("interop", size), &stanza, |b, stanza| {
            b.iter(|| {
                let wire = tx.seal_stanza(stanza).unwrap();
                let mut rest = &wire[..];
                let mut got = None;
                while let Some((f, tail)) = frame::split_first(rest, MAX_NOISE_MESSAGE).unwrap() {
                    got = rx.decrypt(f).unwrap().or(got);
                    rest = tail;
                }
                assert_eq!(got.map(|s| s.len()), Some(size));
            })
        });
        // Bare snow: the same bytes in as many maximum-size messages as it takes.
        let mut buf = vec![0u8; 65_535];
        let mut out = vec![0u8; 65_535];
        g.bench_with_input(BenchmarkId::new("bare_snow", size), &stanza, |b, stanza| {
            b.iter(|| {
                let mut got = Vec::with_capacity(size);
                for chunk in stanza.chunks(MAX_PLAINTEXT) {
                    let n = btx.write_message(chunk, &mut buf).unwrap();
                    let m = brx.read_message(&buf[..n], &mut out).unwrap();
                    got.extend_from_slice(&out[..m]);
                }
                assert_eq!(got.len(), size);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, handshakes, transport);
criterion_main!(benches);

//! Cross-crate bench: one stanza through encode + Noise encrypt + decrypt + decode.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interop_noise::cert::{IntermediateKey, RootKey, Validity};
use interop_noise::proto::{CertificateChain, ClientPayload};
use interop_noise::{
    ClientConfig, ClientHandshake, ConnectionHeader, ServerConfig, ServerHandshake, ServerStep,
    StaticKeypair, Transport, frame,
};
use interop_stanza::{Node, binary};

fn pair() -> (Transport, Transport) {
    let rng = &mut rand::rng();
    let now = 1_700_000_000;
    let window = Validity { not_before: now - 1, not_after: now + 1 };
    let (root, inter) = (RootKey::generate(rng), IntermediateKey::generate(rng));
    let server_keys = StaticKeypair::generate(rng);
    let chain = CertificateChain {
        intermediate: Some(root.issue_intermediate(&inter, 1, window)),
        leaf: Some(inter.issue_leaf(1, &server_keys.public, 2, window)),
    };
    let server = ServerConfig::new(server_keys, chain);
    let client = ClientConfig::new(StaticKeypair::generate(rng), root.trust_anchor());
    let (expect_hello, first) =
        ClientHandshake::start_xx(&client, &ClientPayload::default(), rng).unwrap();
    let (header, rest) = first.split_at(ConnectionHeader::LEN);
    let expect_ch = ServerHandshake::handle_header(&server, header).unwrap();
    let ServerStep::Xx(expect_finish, reply) =
        expect_ch.handle_client_hello(frame::decode_one(rest).unwrap(), 0, rng).unwrap()
    else {
        panic!("an XX hello gets an XX answer")
    };
    let (c, finish) =
        expect_hello.handle_server_hello(frame::decode_one(&reply).unwrap(), now).unwrap();
    let s = expect_finish.handle_client_finish(frame::decode_one(&finish).unwrap()).unwrap();
    (c.transport, s.transport)
}

fn stanza_through_transport(c: &mut Criterion) {
    let mut group = c.benchmark_group("stanza_through_transport");
    for size in [64usize, 1024, 60 * 1024] {
        let node = Node::new("message")
            .with_attr("id", "3EB0C0FFEE")
            .with_attr("to", "bob")
            .with_bytes(vec![0xAB; size]);
        let (mut tx, mut rx) = pair();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                let wire = tx.encrypt_stanza(&binary::encode(&node).unwrap()).unwrap();
                let plain = rx.decrypt(frame::decode_one(&wire).unwrap()).unwrap().unwrap();
                binary::decode(&plain).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stanza_through_transport);
criterion_main!(benches);

//! Cross-crate bench: one stanza through encode + Noise encrypt + decrypt + decode.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interop_noise::proto::{ClientPayload, ServerPayload};
use interop_noise::{
    ClientConfig, ClientHandshake, ConnectionHeader, ServerConfig, ServerHandshake, StaticKeypair,
    Transport, frame,
};
use interop_stanza::{Node, binary};

fn pair() -> (Transport, Transport) {
    let server = ServerConfig::new(StaticKeypair::generate());
    let client = ClientConfig::new(StaticKeypair::generate());
    let (expect_hello, first) = ClientHandshake::start(&client, &ClientPayload::default()).unwrap();
    let (header, rest) = first.split_at(ConnectionHeader::LEN);
    let expect_ch = ServerHandshake::handle_header(&server, header).unwrap();
    let (expect_finish, reply) = expect_ch
        .handle_client_hello(frame::decode_one(rest).unwrap(), &ServerPayload::default())
        .unwrap();
    let (c, _, finish) =
        expect_hello.handle_server_hello(frame::decode_one(&reply).unwrap()).unwrap();
    let s = expect_finish.handle_client_finish(frame::decode_one(&finish).unwrap()).unwrap();
    (c, s.transport)
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
                let wire = tx.encrypt_frame(&binary::encode(&node).unwrap()).unwrap();
                let plain = rx.decrypt(frame::decode_one(&wire).unwrap()).unwrap();
                binary::decode(&plain).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stanza_through_transport);
criterion_main!(benches);

//! Golden transcript: our full handshakes (header, frames, payloads, certificates) and a few
//! transport frames with fixed keys and seeded randomness, byte for byte. A change to the wire
//! format fails here. Regenerate on purpose with `INTEROP_BLESS=1 cargo test -p interop-noise
//! --test golden` and review the diff of `test-vectors/noise/transcript.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use interop_noise::cert::{IntermediateKey, RootKey, Validity};
use interop_noise::frame::FrameDecoder;
use interop_noise::proto::{CertificateChain, ClientPayload, Product};
use interop_noise::{
    ClientConfig, ClientHandshake, ConnectionHeader, IkReply, ServerConfig, ServerHandshake,
    ServerStep, StaticKeypair, Transport,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../test-vectors/noise/transcript.json");
const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const WINDOW: Validity = Validity { not_before: NOW - 86_400, not_after: NOW + 86_400 };

struct Fixture {
    root: RootKey,
    inter: IntermediateKey,
    client: ClientConfig,
    client_keys: StaticKeypair,
}

fn server(f: &Fixture, seed: u64, leaf_serial: u64) -> ServerConfig {
    let keys = StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed));
    let chain = CertificateChain {
        intermediate: Some(f.root.issue_intermediate(&f.inter, 1, WINDOW)),
        leaf: Some(f.inter.issue_leaf(1, &keys.public, leaf_serial, WINDOW)),
    };
    ServerConfig::new(keys, chain)
}

fn payload() -> ClientPayload {
    ClientPayload {
        product: Product::Interop.into(),
        account_id: "alice".into(),
        device_id: 1,
        user_agent: "golden/1".into(),
        provider_jwt: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".into(),
        read_receipts: true,
    }
}

fn frame_body(bytes: &[u8]) -> Vec<u8> {
    let mut d = FrameDecoder::default();
    d.push(bytes);
    let f = d.next_frame().unwrap().unwrap();
    assert_eq!(d.buffered(), 0);
    f
}

fn wire(log: &mut Vec<Value>, from: &str, what: &str, bytes: &[u8]) {
    log.push(json!({ "from": from, "what": what, "hex": hex::encode(bytes) }));
}

fn transport(log: &mut Vec<Value>, c: &mut Transport, s: &mut Transport) {
    let to_server = c.encrypt_stanza(b"<message id='1'/>").unwrap();
    wire(log, "client", "transport: whole stanza", &to_server);
    assert_eq!(s.decrypt(&frame_body(&to_server)).unwrap().unwrap(), b"<message id='1'/>");
    let to_client = s.encrypt_stanza(b"<ack id='1'/>").unwrap();
    wire(log, "server", "transport: whole stanza", &to_client);
    assert_eq!(c.decrypt(&frame_body(&to_client)).unwrap().unwrap(), b"<ack id='1'/>");
}

fn transcript() -> Value {
    let keys_rng = &mut ChaCha20Rng::seed_from_u64(1);
    let root = RootKey::generate(keys_rng);
    let inter = IntermediateKey::generate(keys_rng);
    let client_keys = StaticKeypair::generate(keys_rng);
    let client = ClientConfig::new(client_keys.clone(), root.trust_anchor());
    let f = Fixture { root, inter, client, client_keys };
    let srv = server(&f, 2, 2);
    let crng = &mut ChaCha20Rng::seed_from_u64(3);
    let srng = &mut ChaCha20Rng::seed_from_u64(4);
    let ms = NOW * 1000;

    // XX.
    let mut xx = Vec::new();
    let (expect, first) = ClientHandshake::start_xx(&f.client, &payload(), crng).unwrap();
    wire(&mut xx, "client", "header + client_hello", &first);
    let h = ServerHandshake::handle_header(&srv, &first[..ConnectionHeader::LEN]).unwrap();
    let ServerStep::Xx(expect_finish, reply) =
        h.handle_client_hello(&frame_body(&first[ConnectionHeader::LEN..]), ms, srng).unwrap()
    else {
        panic!("xx")
    };
    wire(&mut xx, "server", "server_hello", &reply);
    let (mut c, finish) = expect.handle_server_hello(&frame_body(&reply), NOW).unwrap();
    wire(&mut xx, "client", "client_finish", &finish);
    let mut s = expect_finish.handle_client_finish(&frame_body(&finish)).unwrap();
    assert_eq!(s.payload, payload());
    transport(&mut xx, &mut c.transport, &mut s.transport);

    // IK with the key learned above.
    let mut ik = Vec::new();
    let (expect, first) =
        ClientHandshake::start_ik(&f.client, &c.server_key, &payload(), crng).unwrap();
    wire(&mut ik, "client", "header + ik_hello", &first);
    let h = ServerHandshake::handle_header(&srv, &first[..ConnectionHeader::LEN]).unwrap();
    let ServerStep::Ik(expect_confirm, reply) =
        h.handle_client_hello(&frame_body(&first[ConnectionHeader::LEN..]), ms, srng).unwrap()
    else {
        panic!("ik")
    };
    wire(&mut ik, "server", "ik_reply", &reply);
    let IkReply::Done(mut c2, confirm) =
        expect.handle_reply(&frame_body(&reply), NOW, crng).unwrap()
    else {
        panic!("ik done")
    };
    wire(&mut ik, "client", "key confirmation (transport, empty)", &confirm);
    let mut s2 = expect_confirm.handle_confirm(&frame_body(&confirm)).unwrap();
    transport(&mut ik, &mut c2.transport, &mut s2.transport);

    // IK against a rotated server key: retry_with_xx, then XX on the same connection.
    let rotated = server(&f, 5, 3);
    let mut retry = Vec::new();
    let (expect, first) =
        ClientHandshake::start_ik(&f.client, &c.server_key, &payload(), crng).unwrap();
    wire(&mut retry, "client", "header + ik_hello", &first);
    let h = ServerHandshake::handle_header(&rotated, &first[..ConnectionHeader::LEN]).unwrap();
    let ServerStep::RetryWithXx(h, reply) =
        h.handle_client_hello(&frame_body(&first[ConnectionHeader::LEN..]), ms, srng).unwrap()
    else {
        panic!("retry")
    };
    wire(&mut retry, "server", "retry_with_xx", &reply);
    let IkReply::RetryWithXx(expect, hello) =
        expect.handle_reply(&frame_body(&reply), NOW, crng).unwrap()
    else {
        panic!("retry xx")
    };
    wire(&mut retry, "client", "client_hello", &hello);
    let ServerStep::Xx(expect_finish, reply) =
        h.handle_client_hello(&frame_body(&hello), ms, srng).unwrap()
    else {
        panic!("xx after retry")
    };
    wire(&mut retry, "server", "server_hello", &reply);
    let (_, finish) = expect.handle_server_hello(&frame_body(&reply), NOW).unwrap();
    wire(&mut retry, "client", "client_finish", &finish);
    expect_finish.handle_client_finish(&frame_body(&finish)).unwrap();

    // A fragmented stanza: frame lengths and the first fragment's plaintext header only.
    let big: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let frames = c.transport.encrypt_stanza(&big).unwrap();
    let mut d = FrameDecoder::default();
    d.push(&frames);
    let mut lens = Vec::new();
    let mut got = None;
    while let Some(body) = d.next_frame().unwrap() {
        lens.push(body.len());
        got = s.transport.decrypt(&body).unwrap().or(got);
    }
    assert_eq!(got.unwrap(), big);

    json!({
        "description": "interop-noise golden transcript; see crates/interop-noise/tests/golden.rs",
        "now": NOW,
        "root_public": hex::encode(f.root.public()),
        "client_static_public": hex::encode(f.client_keys.public),
        "server_static_public": hex::encode(srv.public_key()),
        "rotated_server_static_public": hex::encode(rotated.public_key()),
        "xx": xx,
        "ik": ik,
        "ik_stale_key_then_xx": retry,
        "fragmented_150000_byte_stanza_frame_lengths": lens,
    })
}

#[test]
fn our_handshakes_match_the_golden_transcript() {
    let got = serde_json::to_string_pretty(&transcript()).unwrap() + "\n";
    if std::env::var_os("INTEROP_BLESS").is_some() {
        std::fs::write(PATH, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(PATH).expect("test-vectors/noise/transcript.json exists");
    assert!(got == want, "the wire format changed; if on purpose, rerun with INTEROP_BLESS=1");
}

#[test]
fn the_transcript_is_deterministic() {
    assert_eq!(transcript(), transcript());
}

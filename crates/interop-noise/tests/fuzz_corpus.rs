//! Replays the committed fuzz corpora (`fuzz/corpus/noise_*`) through the same entry points the
//! fuzz targets use, on the stable toolchain. Seeds named `valid-*` must authenticate; the
//! others must merely be handled without a panic.
//!
//! Regenerate the seeds with `INTEROP_BLESS=1 cargo test -p interop-noise --test fuzz_corpus`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use interop_noise::fuzzing::{self, NOW, SERVER_RNG_SEED};
use interop_noise::proto::ClientPayload;
use interop_noise::{
    ClientConfig, ClientHandshake, ConnectionHeader, IkReply, ServerHandshake, ServerStep,
    StaticKeypair, frame,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir(target))
        .expect("corpus directory")
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn noise_server_first_message_corpus() {
    if std::env::var_os("INTEROP_BLESS").is_some() {
        write_seeds();
    }
    let files = files("noise_server_first_message");
    assert!(files.len() >= 8, "seeds are committed");
    for (name, data) in files {
        let authenticated = fuzzing::server_first_messages(&data);
        if name.starts_with("valid-") {
            assert!(authenticated, "{name} no longer authenticates");
        } else if name.starts_with("bad-") {
            assert!(!authenticated, "{name} authenticated");
        }
    }
}

#[test]
fn noise_frame_corpus() {
    let files = files("noise_frame");
    assert!(files.len() >= 4, "seeds are committed");
    for (_, data) in files {
        fuzzing::frame_decoder(&data);
    }
}

fn body(bytes: &[u8]) -> Vec<u8> {
    frame::decode_one(bytes).unwrap().to_vec()
}

/// Client flows against the fixed fuzzing server, replaying its server side with the same rng.
fn write_seeds() {
    let (server, root) = fuzzing::server();
    let crng = &mut ChaCha20Rng::seed_from_u64(7);
    let client = ClientConfig::new(StaticKeypair::generate(crng), root.trust_anchor());
    let payload = ClientPayload { account_id: "alice".into(), device_id: 1, ..Default::default() };
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();

    // XX.
    let srng = &mut ChaCha20Rng::seed_from_u64(SERVER_RNG_SEED);
    let (expect, first) = ClientHandshake::start_xx(&client, &payload, crng).unwrap();
    let h = ServerHandshake::handle_header(server, &first).unwrap();
    let ServerStep::Xx(_, reply) =
        h.handle_client_hello(&body(&first[ConnectionHeader::LEN..]), 0, srng).unwrap()
    else {
        panic!("xx")
    };
    let (_, finish) = expect.handle_server_hello(&body(&reply), NOW).unwrap();
    seeds.push(("valid-xx", [first.clone(), finish.clone()].concat()));
    seeds.push(("xx-hello-only", first.clone()));
    let mut tampered = [first.clone(), finish].concat();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    seeds.push(("bad-xx-tampered-finish", tampered));

    // IK.
    let srng = &mut ChaCha20Rng::seed_from_u64(SERVER_RNG_SEED);
    let (expect, first) =
        ClientHandshake::start_ik(&client, server.public_key(), &payload, crng).unwrap();
    let h = ServerHandshake::handle_header(server, &first).unwrap();
    let ServerStep::Ik(_, reply) =
        h.handle_client_hello(&body(&first[ConnectionHeader::LEN..]), 0, srng).unwrap()
    else {
        panic!("ik")
    };
    let IkReply::Done(_, confirm) = expect.handle_reply(&body(&reply), NOW, crng).unwrap() else {
        panic!("ik done")
    };
    seeds.push(("valid-ik", [first.clone(), confirm].concat()));
    seeds.push((
        "bad-ik-replayed-without-confirmation",
        [first, vec![0, 0, 16], vec![0; 16]].concat(),
    ));

    // IK with a stale key: retry, then XX on the same connection.
    let srng = &mut ChaCha20Rng::seed_from_u64(SERVER_RNG_SEED);
    let stale = StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(99)).public;
    let (expect, first) = ClientHandshake::start_ik(&client, &stale, &payload, crng).unwrap();
    let h = ServerHandshake::handle_header(server, &first).unwrap();
    let ServerStep::RetryWithXx(h, retry) =
        h.handle_client_hello(&body(&first[ConnectionHeader::LEN..]), 0, srng).unwrap()
    else {
        panic!("retry")
    };
    let IkReply::RetryWithXx(expect, hello) =
        expect.handle_reply(&body(&retry), NOW, crng).unwrap()
    else {
        panic!("retry xx")
    };
    let ServerStep::Xx(_, reply) = h.handle_client_hello(&body(&hello), 0, srng).unwrap() else {
        panic!("xx after retry")
    };
    let (_, finish) = expect.handle_server_hello(&body(&reply), NOW).unwrap();
    seeds.push(("valid-ik-retry-xx", [first, hello, finish].concat()));

    // Malformed beginnings.
    seeds.push(("bad-magic", b"XMPP\x01\x00\x00\x00".to_vec()));
    seeds.push(("bad-version", b"IOP\x09\x01\x00\x00\x02\x32\x00".to_vec()));
    seeds.push(("bad-frame-too-large", b"IOP\x01\x01\x01\x00\x00".to_vec()));
    seeds.push(("bad-empty-message", b"IOP\x01\x01\x00\x00\x00".to_vec()));
    seeds.push((
        "bad-zero-ephemeral",
        [b"IOP\x01\x01\x00\x00\x22\x0a\x20".to_vec(), vec![0; 32]].concat(),
    ));

    let d = dir("noise_server_first_message");
    std::fs::create_dir_all(&d).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(d.join(name), bytes).unwrap();
    }

    let d = dir("noise_frame");
    std::fs::create_dir_all(&d).unwrap();
    for (name, bytes) in [
        ("empty-frame", vec![0, 0, 0]),
        ("two-frames", vec![0, 0, 1, 7, 0, 0, 2, 8, 9]),
        ("max-frame", [vec![0x00, 0xff, 0xff], vec![0xab; 65_535]].concat()),
        ("too-large", vec![0x01, 0x00, 0x00, 1, 2, 3]),
        ("truncated", vec![0, 0, 9, 1, 2]),
        ("retry-frame", vec![0, 0, 2, 0x32, 0]),
    ] {
        std::fs::write(d.join(name), bytes).unwrap();
    }
}

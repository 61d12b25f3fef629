//! Deterministic in-process simulation of a client and a server: seeded randomness, a virtual
//! clock, and a wire that can tamper with, truncate or re-chunk what passes through it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use interop_noise::cert::{IntermediateKey, RootKey, Validity};
use interop_noise::frame::FrameDecoder;
use interop_noise::proto::{
    CertificateChain, ClientPayload, HandshakeMessage, Product, handshake_message,
};
use interop_noise::{
    CertError, ClientConfig, ClientDone, ClientHandshake, ConnectionHeader, Error,
    ExpectClientFinish, ExpectClientHello, ExpectIkConfirm, ExpectIkReply, ExpectServerHello,
    IkReply, ServerConfig, ServerDone, ServerHandshake, ServerStep, StaticKeypair, TrustAnchor,
    frame,
};
use proptest::prelude::*;
use prost::Message;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: u64 = 1_700_000_000;

/// The gatekeeper's keys and chain, and a client that trusts its root.
struct World {
    root: RootKey,
    inter: IntermediateKey,
    server: ServerConfig,
    client: ClientConfig,
    trust: TrustAnchor,
    client_keys: StaticKeypair,
    crng: ChaCha20Rng,
    srng: ChaCha20Rng,
    now: u64,
}

fn window() -> Validity {
    Validity { not_before: NOW - 3_600, not_after: NOW + 3_600 }
}

impl World {
    fn new(seed: u64) -> Self {
        let rng = &mut ChaCha20Rng::seed_from_u64(seed);
        let root = RootKey::generate(rng);
        let inter = IntermediateKey::generate(rng);
        let client_keys = StaticKeypair::generate(rng);
        let trust = root.trust_anchor();
        let mut w = Self {
            server: ServerConfig::new(StaticKeypair::generate(rng), CertificateChain::default()),
            client: ClientConfig::new(client_keys.clone(), trust.clone()),
            root,
            inter,
            trust,
            client_keys,
            crng: ChaCha20Rng::seed_from_u64(seed ^ 0xC1),
            srng: ChaCha20Rng::seed_from_u64(seed ^ 0x5E),
            now: NOW,
        };
        w.rotate_server_key(seed ^ 0x77, 2);
        w
    }

    /// The gatekeeper gets a new static key and leaf certificate (same intermediate).
    fn rotate_server_key(&mut self, seed: u64, leaf_serial: u64) {
        let keys = StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed));
        let chain = CertificateChain {
            intermediate: Some(self.root.issue_intermediate(&self.inter, 1, window())),
            leaf: Some(self.inter.issue_leaf(1, &keys.public, leaf_serial, window())),
        };
        self.server = ServerConfig::new(keys, chain);
    }

    fn set_trust(&mut self, trust: TrustAnchor) {
        self.client = ClientConfig::new(self.client_keys.clone(), trust);
    }
}

fn payload() -> ClientPayload {
    ClientPayload {
        product: Product::Interop.into(),
        account_id: "alice".into(),
        device_id: 3,
        user_agent: "sim/1".into(),
        provider_jwt: "header.claims.signature".into(),
        read_receipts: true,
    }
}

#[allow(clippy::large_enum_variant)]
enum C {
    Xx(ExpectServerHello),
    Ik(ExpectIkReply),
    Done,
}

#[allow(clippy::large_enum_variant)]
enum S {
    Hello(ExpectClientHello),
    Finish(ExpectClientFinish),
    Confirm(ExpectIkConfirm),
    Done,
}

/// Takes exactly one frame from `bytes` (anything else is an error, as a real peer would
/// either wait forever or fail on the leftover bytes).
fn one_frame(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut d = FrameDecoder::default();
    d.push(bytes);
    let f = d.next_frame()?.ok_or(Error::Truncated)?;
    if d.buffered() != 0 {
        return Err(Error::UnexpectedMessage("bytes after the frame"));
    }
    Ok(f)
}

/// Runs a whole handshake; `wire(step, bytes)` sees (and may alter) every transmission, the
/// header included, numbered from 0 in order.
fn handshake(
    w: &mut World,
    cached: Option<[u8; 32]>,
    mut wire: impl FnMut(usize, &mut Vec<u8>),
) -> Result<(ClientDone, ServerDone), Error> {
    let mut step = 0;
    let mut send = |mut b: Vec<u8>| {
        wire(step, &mut b);
        step += 1;
        b
    };
    let p = payload();
    let (mut c, first) = match cached {
        Some(key) => {
            let (e, first) = ClientHandshake::start_ik(&w.client, &key, &p, &mut w.crng)?;
            (C::Ik(e), first)
        }
        None => {
            let (e, first) = ClientHandshake::start_xx(&w.client, &p, &mut w.crng)?;
            (C::Xx(e), first)
        }
    };
    let first = send(first);
    if first.len() < ConnectionHeader::LEN {
        return Err(Error::Truncated);
    }
    let mut s =
        S::Hello(ServerHandshake::handle_header(&w.server, &first[..ConnectionHeader::LEN])?);
    let mut to_server = first[ConnectionHeader::LEN..].to_vec();
    let mut client_done = None;
    for _ in 0..4 {
        let f = one_frame(&to_server)?;
        let to_client = match std::mem::replace(&mut s, S::Done) {
            S::Hello(h) => match h.handle_client_hello(&f, w.now * 1000, &mut w.srng)? {
                ServerStep::Xx(n, reply) => {
                    s = S::Finish(n);
                    reply
                }
                ServerStep::Ik(n, reply) => {
                    s = S::Confirm(n);
                    reply
                }
                ServerStep::RetryWithXx(n, reply) => {
                    s = S::Hello(n);
                    reply
                }
            },
            S::Finish(n) => {
                let done = n.handle_client_finish(&f)?;
                return Ok((client_done.expect("client finished first"), done));
            }
            S::Confirm(n) => {
                let done = n.handle_confirm(&f)?;
                return Ok((client_done.expect("client finished first"), done));
            }
            S::Done => unreachable!("the loop returns when the server is done"),
        };
        let f = one_frame(&send(to_client))?;
        to_server = match std::mem::replace(&mut c, C::Done) {
            C::Xx(e) => {
                let (done, finish) = e.handle_server_hello(&f, w.now)?;
                client_done = Some(done);
                send(finish)
            }
            C::Ik(e) => match e.handle_reply(&f, w.now, &mut w.crng)? {
                IkReply::Done(done, confirm) => {
                    client_done = Some(done);
                    send(confirm)
                }
                IkReply::RetryWithXx(e, hello) => {
                    c = C::Xx(e);
                    send(hello)
                }
            },
            C::Done => return Err(Error::UnexpectedMessage("server kept talking")),
        };
    }
    Err(Error::UnexpectedMessage("handshake did not finish"))
}

fn untouched(_: usize, _: &mut Vec<u8>) {}

/// Both transports work, both ways.
fn assert_talks(mut c: ClientDone, mut s: ServerDone) {
    let wire = c.transport.encrypt_stanza(b"<iq/>").unwrap();
    assert_eq!(s.transport.decrypt(&one_frame(&wire).unwrap()).unwrap().unwrap(), b"<iq/>");
    let wire = s.transport.encrypt_stanza(b"<ack/>").unwrap();
    assert_eq!(c.transport.decrypt(&one_frame(&wire).unwrap()).unwrap().unwrap(), b"<ack/>");
}

#[test]
fn xx_first_contact_authenticates_both_sides() {
    let mut w = World::new(1);
    let (c, s) = handshake(&mut w, None, untouched).unwrap();
    assert!(!c.resumed && !s.resumed);
    assert_eq!(&c.server_key, w.server.public_key());
    assert_eq!(s.client_key, w.client_keys.public);
    assert_eq!(s.payload, payload());
    assert_eq!(c.server.server_time_ms, NOW * 1000);
    assert_eq!(s.header, ConnectionHeader::current(1));
    for shown in [format!("{s:?}"), format!("{c:?}"), format!("{:?}", w.client)] {
        assert!(!shown.contains("alice") && !shown.contains("header.claims"), "{shown}");
    }
    assert_talks(c, s);
}

#[test]
fn ik_resumes_with_the_cached_key_in_three_messages() {
    let mut w = World::new(2);
    let (c, _) = handshake(&mut w, None, untouched).unwrap();
    let mut steps = 0;
    let (c2, s2) = handshake(&mut w, Some(c.server_key), |_, _| steps += 1).unwrap();
    assert!(c2.resumed && s2.resumed);
    assert_eq!(steps, 3, "ik_hello, ik_reply, key confirmation");
    assert_eq!(s2.payload, payload());
    assert_eq!(s2.client_key, w.client_keys.public);
    assert_talks(c2, s2);
}

#[test]
fn a_stale_cached_key_falls_back_to_xx_on_the_same_connection() {
    let mut w = World::new(3);
    let (c, _) = handshake(&mut w, None, untouched).unwrap();
    w.rotate_server_key(99, 3);
    let mut kinds = Vec::new();
    let (c2, s2) = handshake(&mut w, Some(c.server_key), |step, b| {
        let body = if step == 0 { &b[ConnectionHeader::LEN..] } else { &b[..] };
        let kind = HandshakeMessage::decode(&body[frame::LEN_PREFIX..])
            .ok()
            .and_then(|m| m.message)
            .map(|m| match m {
                handshake_message::Message::ClientHello(_) => "client_hello",
                handshake_message::Message::ServerHello(_) => "server_hello",
                handshake_message::Message::ClientFinish(_) => "client_finish",
                handshake_message::Message::IkHello(_) => "ik_hello",
                handshake_message::Message::IkReply(_) => "ik_reply",
                handshake_message::Message::RetryWithXx(_) => "retry_with_xx",
                handshake_message::Message::VersionRejected(_) => "version_rejected",
            });
        kinds.push(kind.unwrap_or("?"));
    })
    .unwrap();
    assert_eq!(
        kinds,
        ["ik_hello", "retry_with_xx", "client_hello", "server_hello", "client_finish"]
    );
    assert!(!c2.resumed && !s2.resumed);
    assert_ne!(c2.server_key, c.server_key);
    assert_eq!(&c2.server_key, w.server.public_key());
    assert_talks(c2, s2);
}

#[test]
fn the_server_asks_for_xx_only_once() {
    let mut w = World::new(4);
    let stale = [0x55; 32];
    // Replace the client's XX hello after the retry by a second IK hello.
    let (_, second_ik) = ClientHandshake::start_ik(
        &w.client,
        &stale,
        &payload(),
        &mut ChaCha20Rng::seed_from_u64(1),
    )
    .unwrap();
    let err = handshake(&mut w, Some(stale), |step, b| {
        if step == 2 {
            *b = second_ik[ConnectionHeader::LEN..].to_vec();
        }
    })
    .unwrap_err();
    assert!(matches!(err, Error::UnexpectedMessage(_)), "{err:?}");
}

#[test]
fn certificate_problems_are_refused_by_the_client() {
    // (name, how the world is changed, expected reason)
    type Change = fn(&mut World);
    let cases: [(&str, Change, CertError); 5] = [
        ("clock after the window", |w| w.now = NOW + 3_601, CertError::Expired),
        ("clock before the window", |w| w.now = NOW - 3_601, CertError::NotYetValid),
        (
            "wrong root",
            |w| w.set_trust(RootKey::generate(&mut ChaCha20Rng::seed_from_u64(5)).trust_anchor()),
            CertError::BadSignature,
        ),
        ("revoked leaf", |w| w.set_trust(w.trust.clone().revoke(2)), CertError::Revoked),
        (
            "leaf for another key",
            |w| {
                let other = StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(6));
                let keys = StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(7));
                let chain = CertificateChain {
                    intermediate: Some(w.root.issue_intermediate(&w.inter, 1, window())),
                    leaf: Some(w.inter.issue_leaf(1, &other.public, 2, window())),
                };
                w.server = ServerConfig::new(keys, chain);
            },
            CertError::KeyMismatch,
        ),
    ];
    for (name, change, want) in cases {
        for ik in [false, true] {
            let mut w = World::new(10);
            let cached = ik.then(|| *w.server.public_key());
            change(&mut w);
            let cached = cached.map(|_| *w.server.public_key());
            match handshake(&mut w, cached, untouched) {
                Err(Error::BadCertificate(got)) => assert_eq!(got, want, "{name} ik={ik}"),
                other => panic!("{name} ik={ik}: {:?}", other.map(|_| ())),
            }
        }
    }
}

#[test]
fn every_flipped_byte_of_an_xx_handshake_is_rejected() {
    let mut w = World::new(20);
    let mut sizes = Vec::new();
    handshake(&mut w, None, |_, b| sizes.push(b.len())).unwrap();
    assert_eq!(sizes.len(), 3);
    for (step, &len) in sizes.iter().enumerate() {
        for i in 0..len {
            for bit in [0x01u8, 0x80] {
                let r = handshake(&mut w, None, |s, b| {
                    if s == step {
                        b[i] ^= bit;
                    }
                });
                assert!(r.is_err(), "step {step} byte {i} bit {bit:#x} was accepted");
            }
        }
    }
}

#[test]
fn every_flipped_byte_of_an_ik_handshake_is_rejected_or_answered_with_xx() {
    let mut w = World::new(21);
    let key = *w.server.public_key();
    let mut sizes = Vec::new();
    handshake(&mut w, Some(key), |_, b| sizes.push(b.len())).unwrap();
    assert_eq!(sizes.len(), 3);
    for (step, &len) in sizes.iter().enumerate() {
        for i in 0..len {
            for bit in [0x01u8, 0x80] {
                let r = handshake(&mut w, Some(key), |s, b| {
                    if s == step {
                        b[i] ^= bit;
                    }
                });
                // A tampered ik_hello may make the server ask for XX, which then completes with
                // fresh messages: the tampered one was never accepted.
                if let Ok((c, s)) = r {
                    assert!(step == 0 && !c.resumed && !s.resumed, "step {step} byte {i}");
                }
            }
        }
    }
}

#[test]
fn truncated_and_oversized_handshake_frames_are_refused() {
    let mut w = World::new(30);
    for step in 0..3 {
        let r = handshake(&mut w, None, |s, b| {
            if s == step {
                b.pop();
            }
        });
        assert!(matches!(r, Err(Error::Truncated)), "step {step}: {:?}", r.map(|_| ()));
    }
    let r = handshake(&mut w, None, |s, b| {
        if s == 1 {
            b[0] = 0x01; // declared length 65,536 + ...
        }
    });
    assert!(matches!(r, Err(Error::FrameTooLarge { .. })), "{:?}", r.map(|_| ()));
}

#[test]
fn low_order_keys_are_refused() {
    // All-zero, and a point of order 8.
    let low_order: [[u8; 32]; 2] =
        [[0; 32], hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")];
    for bad in low_order {
        // A client hello whose ephemeral key is low-order: the server refuses at `ee`.
        let mut w = World::new(40);
        let r = handshake(&mut w, None, |s, b| {
            if s == 0 {
                let msg = HandshakeMessage {
                    message: Some(handshake_message::Message::ClientHello(bad.to_vec().into())),
                };
                b.truncate(ConnectionHeader::LEN);
                frame::encode(&msg.encode_to_vec(), b).unwrap();
            }
        });
        assert!(matches!(r, Err(Error::LowOrderKey)), "{:?}", r.map(|_| ()));
        // A cached server key that is low-order: the client refuses at `es`.
        let r = ClientHandshake::start_ik(&w.client, &bad, &payload(), &mut w.crng);
        assert!(matches!(r, Err(Error::LowOrderKey)), "{:?}", r.map(|_| ()));
    }
}

#[test]
fn a_replayed_ik_hello_never_authenticates_anyone() {
    let mut w = World::new(50);
    let key = *w.server.public_key();
    let mut recorded = Vec::new();
    handshake(&mut w, Some(key), |s, b| {
        if s == 0 {
            recorded = b.clone();
        }
    })
    .unwrap();
    // The attacker replays the hello: the server answers (it cannot tell), but without the
    // client's keys no confirmation decrypts, so the server never reports the client.
    let h = ServerHandshake::handle_header(&w.server, &recorded[..ConnectionHeader::LEN]).unwrap();
    let hello = one_frame(&recorded[ConnectionHeader::LEN..]).unwrap();
    let ServerStep::Ik(confirm, _reply) = h.handle_client_hello(&hello, 0, &mut w.srng).unwrap()
    else {
        panic!("a valid ik_hello gets an ik_reply")
    };
    // The best the attacker can send is a frame it made up.
    let forged = {
        let mut b = Vec::new();
        frame::encode(&[0u8; 16], &mut b).unwrap();
        b
    };
    let r = confirm.handle_confirm(&one_frame(&forged).unwrap());
    assert!(matches!(r, Err(Error::Decrypt)), "{:?}", r.map(|_| ()));
}

#[test]
fn a_client_speaking_a_newer_version_learns_which_ones_the_server_speaks() {
    let w = World::new(61);
    let rng = &mut ChaCha20Rng::seed_from_u64(1);
    let client =
        w.client.clone().header(ConnectionHeader { protocol_version: 9, dictionary_version: 1 });
    let (expect, first) = ClientHandshake::start_xx(&client, &payload(), rng).unwrap();
    let err = ServerHandshake::handle_header(&w.server, &first[..ConnectionHeader::LEN]);
    assert!(matches!(err, Err(Error::UnsupportedVersion { got: 9, .. })));
    // The server answers with the plain rejection frame, which the client turns into an error.
    let rejection = one_frame(&ConnectionHeader::rejection_frame()).unwrap();
    let err = expect.handle_server_hello(&rejection, NOW).map(|_| ()).unwrap_err();
    assert!(matches!(&err, Error::UnsupportedVersion { got: 9, supported } if supported == &[1]));
    assert_eq!(err.to_string(), "unsupported protocol version 9; supported: [1]");
}

#[test]
fn an_unknown_protocol_version_names_the_supported_ones() {
    let mut w = World::new(60);
    let r = handshake(&mut w, None, |s, b| {
        if s == 0 {
            b[3] = 7;
        }
    });
    let err = r.map(|_| ()).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedVersion { got: 7, supported } if supported == &[1]),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "unsupported protocol version 7; supported: [1]");
}

fn hex32(s: &str) -> [u8; 32] {
    let v: Vec<u8> =
        (0..32).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect();
    v.try_into().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn fragmented_stanzas_survive_any_chunking(
        sizes in proptest::collection::vec(prop_oneof![0usize..100, 65_000usize..70_000, 100_000usize..300_000], 1..4),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        seed in any::<u64>(),
    ) {
        let mut w = World::new(seed);
        let (mut c, mut s) = handshake(&mut w, None, untouched).unwrap();
        let stanzas: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| (0..n).map(|i| (i * 7 + k) as u8).collect())
            .collect();
        let mut wire = Vec::new();
        for st in &stanzas {
            c.transport.encrypt_stanza_into(st, &mut wire).unwrap();
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.sort_unstable();
        let mut d = FrameDecoder::default();
        let mut got = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([wire.len()]) {
            d.push(&wire[last..p]);
            last = p;
            while let Some(f) = d.next_frame().unwrap() {
                if let Some(st) = s.transport.decrypt(&f).unwrap() {
                    got.push(st);
                }
            }
        }
        prop_assert_eq!(got, stanzas);
        prop_assert_eq!(d.buffered(), 0);
    }
}

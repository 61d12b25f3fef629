//! Session life-cycle scenarios: identity change, pre-key exhaustion and rotation, reset on a
//! retry receipt, safety numbers, commit failures, and sender keys between three parties.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
#![allow(clippy::needless_range_loop)] // parties are indices into parallel vectors

use std::collections::HashSet;

use futures::executor::block_on;
use interop_e2ee::test_suite::{
    KeyServer, addr, identity_changed, new_party, test_now, text_of, text_transport,
};
use interop_e2ee::{Account, DeviceAddress, Enc, Error, InMemoryStorage, PreKeyPolicy, proto};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

type Acct = Account<InMemoryStorage>;

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(7)
}

/// Sends one text from `a` to `b` and returns the enc.
fn send(a: &mut Acct, to: &DeviceAddress, id: &str, rng: &mut ChaCha20Rng) -> Enc {
    let encs = block_on(a.send(std::slice::from_ref(to), text_transport(id, id), test_now(), rng))
        .unwrap();
    encs.into_iter().next().unwrap().1
}

/// Receives and commits; returns whether an identity change was reported.
fn recv(b: &mut Acct, from: &DeviceAddress, enc: &Enc, rng: &mut ChaCha20Rng) -> Vec<String> {
    let r = block_on(b.receive(from, enc, rng)).unwrap();
    let text = text_of(r.message().unwrap()).unwrap().to_owned();
    let events = block_on(r.commit()).unwrap();
    let mut out = vec![text];
    out.extend(events.iter().map(|e| format!("{e:?}")));
    out
}

struct Pair {
    rng: ChaCha20Rng,
    server: KeyServer,
    a: Acct,
    b: Acct,
    aa: DeviceAddress,
    ba: DeviceAddress,
}

fn pair(policy: &PreKeyPolicy) -> Pair {
    let mut rng = rng();
    let mut server = KeyServer::default();
    let (aa, ba) = (addr("alice", 1), addr("bob", 1));
    let a = block_on(new_party(&mut server, aa.clone(), policy, &mut rng));
    let b = block_on(new_party(&mut server, ba.clone(), policy, &mut rng));
    Pair { rng, server, a, b, aa, ba }
}

impl Pair {
    fn connect(&mut self) {
        let bundle = self.server.bundle(&self.ba).unwrap();
        block_on(self.a.process_bundle(&self.ba, &bundle, test_now(), &mut self.rng)).unwrap();
        let enc = send(&mut self.a, &self.ba, "hello", &mut self.rng);
        assert_eq!(recv(&mut self.b, &self.aa, &enc, &mut self.rng), ["hello"]);
        let enc = send(&mut self.b, &self.aa, "hi", &mut self.rng);
        assert_eq!(recv(&mut self.a, &self.ba, &enc, &mut self.rng), ["hi"]);
    }

    /// Bob reinstalls: a new identity on the same address, with fresh keys on the server.
    fn bob_reinstalls(&mut self) {
        self.b = block_on(new_party(
            &mut self.server,
            self.ba.clone(),
            &PreKeyPolicy::default(),
            &mut self.rng,
        ));
    }
}

#[test]
fn identity_change_on_a_new_bundle_is_reported() {
    let mut p = pair(&PreKeyPolicy::default());
    p.connect();
    let old = block_on(p.a.peer_identity(&p.ba)).unwrap().unwrap();
    p.bob_reinstalls();
    let bundle = p.server.bundle(&p.ba).unwrap();
    let events = block_on(p.a.process_bundle(&p.ba, &bundle, test_now(), &mut p.rng)).unwrap();
    assert!(identity_changed(&events, &p.ba));
    let new = block_on(p.a.peer_identity(&p.ba)).unwrap().unwrap();
    assert_ne!(old, new);
    assert_eq!(new, p.b.identity_key());
    // And the conversation continues on the new identity.
    let enc = send(&mut p.a, &p.ba, "again", &mut p.rng);
    assert_eq!(recv(&mut p.b, &p.aa, &enc, &mut p.rng), ["again"]);
}

#[test]
fn identity_change_in_an_incoming_prekey_message_is_reported_with_the_message() {
    let mut p = pair(&PreKeyPolicy::default());
    p.connect();
    p.bob_reinstalls();
    // New Bob starts a session with Alice.
    let bundle = p.server.bundle(&p.aa).unwrap();
    block_on(p.b.process_bundle(&p.aa, &bundle, test_now(), &mut p.rng)).unwrap();
    let enc = send(&mut p.b, &p.aa, "new phone", &mut p.rng);
    let got = recv(&mut p.a, &p.ba, &enc, &mut p.rng);
    assert_eq!(got[0], "new phone");
    assert_eq!(got.len(), 2, "one IdentityChanged event: {got:?}");
    assert_eq!(block_on(p.a.peer_identity(&p.ba)).unwrap().unwrap(), p.b.identity_key());
}

#[test]
fn a_verified_identity_that_changes_blocks_until_approved() {
    let mut p = pair(&PreKeyPolicy::default());
    p.connect();
    let bob_key = p.b.identity_key();
    assert!(block_on(p.a.verify_identity(&p.ba, &[5; 33])).is_err());
    block_on(p.a.verify_identity(&p.ba, &bob_key)).unwrap();
    assert!(block_on(p.a.is_verified(&p.ba)).unwrap());

    p.bob_reinstalls();
    let bundle = p.server.bundle(&p.aa).unwrap();
    block_on(p.b.process_bundle(&p.aa, &bundle, test_now(), &mut p.rng)).unwrap();
    let enc = send(&mut p.b, &p.aa, "trust me", &mut p.rng);
    assert!(matches!(
        block_on(p.a.receive(&p.ba, &enc, &mut p.rng)),
        Err(Error::UntrustedIdentity)
    ));
    // Sending to the new identity is refused too.
    let bundle = p.server.bundle(&p.ba).unwrap();
    assert!(matches!(
        block_on(p.a.process_bundle(&p.ba, &bundle, test_now(), &mut p.rng)),
        Err(Error::UntrustedIdentity)
    ));
    // Nothing changed on Alice's side.
    assert_eq!(block_on(p.a.peer_identity(&p.ba)).unwrap().unwrap(), bob_key);

    block_on(p.a.approve_identity(&p.ba)).unwrap();
    let got = recv(&mut p.a, &p.ba, &enc, &mut p.rng);
    assert_eq!((got[0].as_str(), got.len()), ("trust me", 2));
    assert!(!block_on(p.a.is_verified(&p.ba)).unwrap());
}

#[test]
fn prekey_exhaustion_falls_back_to_last_resort_keys_and_replenishes() {
    let policy = PreKeyPolicy {
        one_time_target: 2,
        one_time_threshold: 1,
        kyber_target: 1,
        kyber_threshold: 1,
    };
    let mut rng = rng();
    let mut server = KeyServer::default();
    let ba = addr("bob", 1);
    let mut bob = block_on(new_party(&mut server, ba.clone(), &policy, &mut rng));
    assert_eq!(server.counts(&ba), (2, 1));

    // Four senders fetch bundles: EC one-time keys run out after two, Kyber after one.
    let mut shapes = Vec::new();
    for i in 0..4u8 {
        let sa = addr(&format!("s{i}"), 1);
        let mut s = block_on(new_party(&mut server, sa.clone(), &policy, &mut rng));
        let bundle = server.bundle(&ba).unwrap();
        shapes.push((bundle.one_time.is_some(), bundle.kyber.id));
        block_on(s.process_bundle(&ba, &bundle, test_now(), &mut rng)).unwrap();
        let enc = send(&mut s, &ba, "x", &mut rng);
        assert_eq!(recv(&mut bob, &sa, &enc, &mut rng), ["x"]);
        // A replay of the pre-key message is a duplicate, also on the last-resort key.
        assert!(matches!(block_on(bob.receive(&sa, &enc, &mut rng)), Err(Error::Duplicate)));
    }
    let last_resort = shapes[1].1;
    assert_eq!(shapes.iter().map(|s| s.0).collect::<Vec<_>>(), [true, true, false, false]);
    assert_ne!(shapes[0].1, last_resort);
    assert!(shapes[1..].iter().all(|s| s.1 == last_resort));
    assert_eq!(server.counts(&ba), (0, 0));

    // The used one-time keys are gone from Bob's store: a second sender reusing the first
    // bundle (as a buggy server might) fails cleanly.
    let (ec, pq) = server.counts(&ba);
    let up = block_on(bob.replenish(ec, pq, &policy, test_now(), &mut rng)).unwrap().unwrap();
    assert_eq!((up.one_time.len(), up.kyber_one_time.len()), (2, 1));
    server.upload(&ba, up);
    assert_eq!(server.counts(&ba), (2, 1));
    assert!(block_on(bob.replenish(2, 1, &policy, test_now(), &mut rng)).unwrap().is_none());
}

#[test]
fn a_used_one_time_prekey_cannot_be_used_again() {
    let mut p = pair(&PreKeyPolicy::default());
    let bundle = p.server.bundle(&p.ba).unwrap();
    block_on(p.a.process_bundle(&p.ba, &bundle, test_now(), &mut p.rng)).unwrap();
    let enc = send(&mut p.a, &p.ba, "one", &mut p.rng);
    recv(&mut p.b, &p.aa, &enc, &mut p.rng);
    // Carol got the same bundle (server bug): Bob no longer has that one-time key.
    let ca = addr("carol", 1);
    let mut carol =
        block_on(new_party(&mut p.server, ca.clone(), &PreKeyPolicy::default(), &mut p.rng));
    block_on(carol.process_bundle(&p.ba, &bundle, test_now(), &mut p.rng)).unwrap();
    let enc = send(&mut carol, &p.ba, "two", &mut p.rng);
    assert!(matches!(block_on(p.b.receive(&ca, &enc, &mut p.rng)), Err(Error::UnknownPreKey)));
}

#[test]
fn signed_prekey_rotation_keeps_the_previous_key_for_messages_in_flight() {
    let mut p = pair(&PreKeyPolicy::default());
    let old_bundle = p.server.bundle(&p.ba).unwrap();
    assert_eq!(block_on(p.b.signed_prekey_created()).unwrap(), test_now());
    let week_later = test_now() + std::time::Duration::from_secs(7 * 24 * 3600);
    let up = block_on(p.b.rotate_signed_prekey(week_later, &mut p.rng)).unwrap();
    assert_eq!(block_on(p.b.signed_prekey_created()).unwrap(), week_later);
    assert_ne!(up.signed_prekey.as_ref().unwrap().id, old_bundle.signed_prekey.id);
    p.server.upload(&p.ba, up);
    // A session from the bundle fetched before the rotation still works.
    block_on(p.a.process_bundle(&p.ba, &old_bundle, test_now(), &mut p.rng)).unwrap();
    let enc = send(&mut p.a, &p.ba, "in flight", &mut p.rng);
    assert_eq!(recv(&mut p.b, &p.aa, &enc, &mut p.rng), ["in flight"]);
    // After a second rotation the signed pre-key of the old bundle is gone.
    let up = block_on(p.b.rotate_signed_prekey(test_now(), &mut p.rng)).unwrap();
    p.server.upload(&p.ba, up);
    let ca = addr("carol", 1);
    let mut carol =
        block_on(new_party(&mut p.server, ca.clone(), &PreKeyPolicy::default(), &mut p.rng));
    let mut stale = old_bundle.clone();
    stale.one_time = None;
    stale.kyber = p.server.bundle(&p.ba).unwrap().kyber;
    block_on(carol.process_bundle(&p.ba, &stale, test_now(), &mut p.rng)).unwrap();
    let enc = send(&mut carol, &p.ba, "late", &mut p.rng);
    assert!(matches!(block_on(p.b.receive(&ca, &enc, &mut p.rng)), Err(Error::UnknownPreKey)));
}

#[test]
fn a_tampered_bundle_is_refused() {
    let mut p = pair(&PreKeyPolicy::default());
    let good = p.server.bundle(&p.ba).unwrap();
    let mut bad = good.clone();
    bad.signed_prekey.signature[3] ^= 1;
    assert!(matches!(
        block_on(p.a.process_bundle(&p.ba, &bad, test_now(), &mut p.rng)),
        Err(Error::BadSignature)
    ));
    let mut bad = good.clone();
    bad.kyber.public.truncate(100);
    assert!(matches!(
        block_on(p.a.process_bundle(&p.ba, &bad, test_now(), &mut p.rng)),
        Err(Error::Malformed(_))
    ));
    let mut bad = good.clone();
    bad.device = 2;
    assert!(block_on(p.a.process_bundle(&p.ba, &bad, test_now(), &mut p.rng)).is_err());
    assert!(!block_on(p.a.has_session(&p.ba, test_now())).unwrap());
    block_on(p.a.process_bundle(&p.ba, &good, test_now(), &mut p.rng)).unwrap();
    assert!(block_on(p.a.has_session(&p.ba, test_now())).unwrap());
}

#[test]
fn reset_on_retry_receipt_starts_a_new_session_and_late_messages_still_decrypt() {
    let mut p = pair(&PreKeyPolicy::default());
    p.connect();
    let late = send(&mut p.a, &p.ba, "late", &mut p.rng);
    // Bob could not decrypt something and sent a retry receipt: Alice resets.
    block_on(p.a.reset_session(&p.ba)).unwrap();
    assert!(!block_on(p.a.has_session(&p.ba, test_now())).unwrap());
    assert!(matches!(
        block_on(p.a.send(
            std::slice::from_ref(&p.ba),
            text_transport("x", "x"),
            test_now(),
            &mut p.rng
        )),
        Err(Error::NoSession)
    ));
    let bundle = p.server.bundle(&p.ba).unwrap();
    block_on(p.a.process_bundle(&p.ba, &bundle, test_now(), &mut p.rng)).unwrap();
    let fresh = send(&mut p.a, &p.ba, "fresh", &mut p.rng);
    assert_eq!(fresh.kind, interop_e2ee::EncKind::PreKey);
    assert_eq!(recv(&mut p.b, &p.aa, &fresh, &mut p.rng), ["fresh"]);
    assert_eq!(recv(&mut p.b, &p.aa, &late, &mut p.rng), ["late"]);
    let back = send(&mut p.b, &p.aa, "back", &mut p.rng);
    assert_eq!(recv(&mut p.a, &p.ba, &back, &mut p.rng), ["back"]);
}

#[test]
fn safety_numbers_match_on_both_sides_and_change_with_the_identity() {
    let mut p = pair(&PreKeyPolicy::default());
    let at_alice = p.a.safety_number("bob", &p.b.identity_key()).unwrap();
    let at_bob = p.b.safety_number("alice", &p.a.identity_key()).unwrap();
    assert_eq!(at_alice, at_bob);
    assert_eq!(at_alice.len(), 60);
    assert!(at_alice.bytes().all(|c| c.is_ascii_digit()));
    p.bob_reinstalls();
    assert_ne!(p.a.safety_number("bob", &p.b.identity_key()).unwrap(), at_alice);
    assert!(p.a.safety_number("bob", &[1, 2, 3]).is_err());
}

#[test]
fn a_failed_commit_stores_nothing_and_the_message_decrypts_on_redelivery() {
    let mut p = pair(&PreKeyPolicy::default());
    p.connect();
    let enc = send(&mut p.a, &p.ba, "again", &mut p.rng);
    let before = p.b.storage().clone();
    // Simulate a storage failure at commit time.
    let mut storage = p.b.into_storage();
    storage.fail_next_commits(1);
    p.b = block_on(Account::open(storage)).unwrap();
    let r = block_on(p.b.receive(&p.aa, &enc, &mut p.rng)).unwrap();
    assert!(matches!(block_on(r.commit()), Err(Error::Storage(_))));
    assert_eq!(p.b.storage().arrivals().len(), before.arrivals().len());
    assert_eq!(recv(&mut p.b, &p.aa, &enc, &mut p.rng), ["again"]);
    // A send whose commit fails returns no ciphertext.
    let mut storage = p.a.into_storage();
    storage.fail_next_commits(1);
    p.a = block_on(Account::open(storage)).unwrap();
    assert!(matches!(
        block_on(p.a.send(
            std::slice::from_ref(&p.ba),
            text_transport("y", "y"),
            test_now(),
            &mut p.rng
        )),
        Err(Error::Storage(_))
    ));
}

#[test]
fn opening_an_empty_store_or_creating_twice_is_refused() {
    assert!(matches!(block_on(Acct::open(InMemoryStorage::new())), Err(Error::NoAccount)));
    let mut p = pair(&PreKeyPolicy::default());
    let storage = p.b.storage().clone();
    let r = block_on(Account::create(
        storage,
        p.ba.clone(),
        &PreKeyPolicy::default(),
        test_now(),
        &mut p.rng,
    ));
    assert!(matches!(r, Err(Error::InvalidArgument(_))));
}

/// Three parties in one group: each distributes its sender key over 1:1 sessions, then sends
/// group messages that the others receive with drops, duplicates and reorders.
#[test]
fn sender_keys_between_three_parties() {
    let mut rng = rng();
    let mut server = KeyServer::default();
    let policy = PreKeyPolicy::default();
    let addrs: Vec<DeviceAddress> = ["alice", "bob", "carol"].iter().map(|n| addr(n, 1)).collect();
    let mut accts: Vec<Acct> = addrs
        .iter()
        .map(|a| block_on(new_party(&mut server, a.clone(), &policy, &mut rng)))
        .collect();
    let group = [0x42; 16];

    // Sessions between everyone, then the distributions.
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                let bundle = server.bundle(&addrs[j]).unwrap();
                block_on(accts[i].process_bundle(&addrs[j], &bundle, test_now(), &mut rng))
                    .unwrap();
            }
        }
    }
    for i in 0..3 {
        let skdm = block_on(accts[i].sender_key_distribution(group, &mut rng)).unwrap();
        let transport = proto::Transport {
            sender_key_distribution: skdm.into(),
            distribution_id: group.to_vec().into(),
            ..Default::default()
        };
        let others: Vec<DeviceAddress> =
            (0..3).filter(|&j| j != i).map(|j| addrs[j].clone()).collect();
        let encs = block_on(accts[i].send(&others, transport, test_now(), &mut rng)).unwrap();
        for (to, enc) in encs {
            let j = addrs.iter().position(|a| *a == to).unwrap();
            let r = block_on(accts[j].receive(&addrs[i], &enc, &mut rng)).unwrap();
            assert_eq!(r.distribution_id(), Some(group));
            assert!(r.message().is_none());
            block_on(r.commit()).unwrap();
        }
    }

    // Before its distribution arrives, an unknown group cannot be decrypted.
    let other_group = block_on(accts[0].send_group([1; 16], text_transport("g", "g"), &mut rng));
    assert!(matches!(other_group, Err(Error::NoSenderKey)));

    let mut in_flight: Vec<(usize, usize, String, Enc)> = Vec::new();
    let mut delivered = HashSet::new();
    let (mut decrypted, mut duplicates) = (0, 0);
    for n in 0..1500 {
        if rng.random_bool(0.5) || in_flight.is_empty() {
            let from = rng.random_range(0..3);
            let id = format!("g{n}");
            let enc = block_on(accts[from].send_group(group, text_transport(&id, &id), &mut rng))
                .unwrap();
            assert_eq!(enc.kind, interop_e2ee::EncKind::SenderKey);
            for to in (0..3).filter(|&t| t != from) {
                in_flight.push((from, to, id.clone(), enc.clone()));
            }
            continue;
        }
        let pos = rng.random_range(0..in_flight.len());
        let (from, to, id, enc) = in_flight.swap_remove(pos);
        if rng.random_bool(0.1) {
            continue; // dropped
        }
        let key = (to, id.clone());
        match block_on(accts[to].receive(&addrs[from], &enc, &mut rng)) {
            Ok(r) => {
                assert!(!delivered.contains(&key), "{id} decrypted twice");
                assert_eq!(text_of(r.message().unwrap()), Some(id.as_str()));
                assert_eq!(r.group(), Some(group));
                block_on(r.commit()).unwrap();
                delivered.insert(key);
                decrypted += 1;
                if rng.random_bool(0.1) {
                    in_flight.push((from, to, id, enc));
                }
            }
            Err(Error::Duplicate) => {
                assert!(delivered.contains(&key));
                duplicates += 1;
            }
            Err(e) => panic!("{id}: {e:?}"),
        }
    }
    assert!(decrypted > 500 && duplicates > 10, "{decrypted} {duplicates}");
    let total: usize = accts.iter().map(|a| a.storage().arrivals().len()).sum();
    assert_eq!(total, decrypted);
    // The distributions arrived as 1:1 transports without messages; every stored arrival is
    // group content.
    assert!(accts.iter().flat_map(|a| a.storage().arrivals()).all(|a| a.group == Some(group)));

    // Tampered group messages are refused without harming the chain.
    let enc = block_on(accts[0].send_group(group, text_transport("t", "t"), &mut rng)).unwrap();
    let mut bad = enc.clone();
    let last = bad.ciphertext.len() - 1;
    bad.ciphertext[last] ^= 1;
    assert!(block_on(accts[1].receive(&addrs[0], &bad, &mut rng)).is_err());
    let mut short = enc.clone();
    short.ciphertext.truncate(10);
    assert!(block_on(accts[1].receive(&addrs[0], &short, &mut rng)).is_err());
    let r = block_on(accts[1].receive(&addrs[0], &enc, &mut rng)).unwrap();
    block_on(r.commit()).unwrap();
}

/// One `enc` per device: the recipient's devices and the sender's own other devices, all
/// from one call, and each device decrypts its own copy.
#[test]
fn one_send_reaches_every_device_of_the_recipient_and_the_senders_other_devices() {
    let mut rng = rng();
    let mut server = KeyServer::default();
    let policy = PreKeyPolicy::default();
    let (a1, a2, b1, b2) = (addr("alice", 1), addr("alice", 2), addr("bob", 1), addr("bob", 2));
    let mut alice1 = block_on(new_party(&mut server, a1.clone(), &policy, &mut rng));
    let mut others: Vec<(DeviceAddress, Acct)> = [&a2, &b1, &b2]
        .into_iter()
        .map(|a| (a.clone(), block_on(new_party(&mut server, a.clone(), &policy, &mut rng))))
        .collect();
    let targets: Vec<DeviceAddress> = others.iter().map(|(a, _)| a.clone()).collect();
    assert_eq!(block_on(alice1.missing_sessions(&targets, test_now())).unwrap(), targets);
    for t in &targets {
        let bundle = server.bundle(t).unwrap();
        block_on(alice1.process_bundle(t, &bundle, test_now(), &mut rng)).unwrap();
    }
    assert!(block_on(alice1.missing_sessions(&targets, test_now())).unwrap().is_empty());
    let encs =
        block_on(alice1.send(&targets, text_transport("m1", "to all"), test_now(), &mut rng))
            .unwrap();
    let node = interop_e2ee::stanza::message_stanza(
        "m1",
        "bob",
        interop_e2ee::stanza::MessageType::Text,
        &encs,
    );
    let fan_out = interop_stanza::stanza::Message::from_node(node).unwrap();
    assert_eq!(fan_out.participants.len(), 3);
    for (me, acct) in &mut others {
        // What the gatekeeper delivers to `me`: its own enc, `from` = the sender device.
        let mine = fan_out
            .participants
            .iter()
            .find(|p| p.jid == interop_e2ee::stanza::device_jid(me))
            .unwrap();
        let mut copy = interop_stanza::stanza::Message::new(fan_out.id.clone(), fan_out.kind)
            .from(interop_e2ee::stanza::device_jid(&a1));
        copy.encs.clone_from(&mine.encs);
        let delivered = copy.into_node();
        let incoming = interop_e2ee::stanza::parse_incoming(&delivered, me).unwrap();
        assert_eq!(incoming.sender, a1);
        assert_eq!(recv(acct, &a1, &incoming.enc, &mut rng), ["to all"]);
    }
}

#[test]
fn an_unanswered_session_goes_stale_after_thirty_days() {
    let mut p = pair(&PreKeyPolicy::default());
    let bundle = p.server.bundle(&p.ba).unwrap();
    block_on(p.a.process_bundle(&p.ba, &bundle, test_now(), &mut p.rng)).unwrap();
    let later = test_now() + std::time::Duration::from_secs(31 * 24 * 3600);
    assert!(block_on(p.a.has_session(&p.ba, test_now())).unwrap());
    assert!(!block_on(p.a.has_session(&p.ba, later)).unwrap());
    let r = block_on(p.a.send(
        std::slice::from_ref(&p.ba),
        text_transport("x", "x"),
        later,
        &mut p.rng,
    ));
    assert!(matches!(r, Err(Error::NoSession)));
}

//! Arbitrary bytes and stanzas never panic the parsers or the receive path, and never change
//! stored state.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use futures::executor::block_on;
use interop_e2ee::test_suite::{KeyServer, addr, new_party};
use interop_e2ee::{Enc, EncKind, PreKeyPolicy};
use interop_stanza::Node;
use proptest::prelude::*;
use rand::Rng;

proptest! {
    #[test]
    fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = interop_e2ee::open(&bytes);
    }

    #[test]
    fn parse_incoming_never_panics(
        id in ".{0,40}",
        from in ".{0,10}",
        dev in ".{0,4}",
        v in "[0-9]{0,2}",
        ty in "(pkmsg|msg|skmsg|x)",
        bytes in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let node = Node::new("message")
            .with_attr("id", id)
            .with_attr("from", from)
            .with_attr("from_device", dev)
            .with_children(vec![Node::new("enc").with_attr("v", v).with_attr("type", ty).with_bytes(bytes)]);
        let _ = interop_e2ee::stanza::parse_incoming(&node, &addr("me", 1));
    }
}

#[test]
fn random_payloads_are_refused_and_store_nothing() {
    let mut rng = rand::rng();
    let mut server = KeyServer::default();
    let me = addr("me", 1);
    let mut acct = block_on(new_party(&mut server, me, &PreKeyPolicy::default(), &mut rng));
    let before = acct.storage().record_count();
    let sender = addr("peer", 3);
    for _ in 0..500 {
        let len = rng.random_range(0..400);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let kind = [EncKind::PreKey, EncKind::Message, EncKind::SenderKey][rng.random_range(0..3)];
        let r = block_on(acct.receive(&sender, &Enc { kind, ciphertext: bytes }, &mut rng));
        assert!(r.is_err());
    }
    assert_eq!(acct.storage().record_count(), before);
    assert!(acct.storage().arrivals().is_empty());
}

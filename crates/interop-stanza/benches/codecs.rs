//! Encode/decode time and encoded size of four typical stanzas in our binary codec, our XML
//! codec, and a peer (minidom, the xmpp-rs DOM, parsing the same XML text).
//!
//! `cargo bench -p interop-stanza --bench codecs -- --warm-up-time 1 --measurement-time 3`
//! (sizes are printed first; PERFORMANCE-interop-stanza.md records a run).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interop_stanza::stanza::{
    Enc, EncType, Iq, IqPayload, IqType, Key, Message, MessageType, PrekeyBundle, Receipt,
    ReceiptType, SignedKey,
};
use interop_stanza::{Node, binary, xml};

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i as u8).wrapping_mul(37))).collect()
}

/// minidom needs a namespace on the root: every stanza carries `xmlns`, as in XMPP.
fn with_ns(mut n: Node) -> Node {
    if n.attr("xmlns").is_none() {
        n.attrs.push(("xmlns".into(), "jabber:client".into()));
    }
    n
}

fn stanzas() -> Vec<(&'static str, Node)> {
    let text = Message::new("3eb0c4d1a2b3c4d5", MessageType::Text)
        .to("2001:3@s.interop")
        .timestamp(1_700_000_000)
        // A short text in a Signal message: ~33 B ratchet key + padded ciphertext + MAC.
        .with_enc(Enc::new(EncType::Msg, bytes(1, 120)));
    let receipt = Receipt::new("3eb0c4d1a2b3c4d5", ReceiptType::Read)
        .to("1042.7:1@s.interop")
        .timestamp(1_700_000_100);
    let signed = |id, seed, len| SignedKey {
        id,
        public: bytes(seed, len),
        signature: bytes(seed ^ 0x55, 64),
    };
    let bundle = Iq::new(
        "3",
        IqType::Result,
        Some("encrypt"),
        IqPayload::PrekeyBundles(vec![PrekeyBundle {
            jid: "2001:3@s.interop".into(),
            registration_id: 77,
            identity: bytes(20, 33),
            signed_prekey: signed(5, 21, 33),
            kyber_prekey: signed(6, 22, 1569),
            one_time_prekey: Some(Key { id: 31, public: bytes(23, 33) }),
        }]),
    );
    let media = Message::new("3eb0c4d1a2b3c4d7", MessageType::Media)
        .to("2001:3@s.interop")
        .timestamp(1_700_000_000)
        .with_enc(Enc::new(EncType::Msg, bytes(2, 64 * 1024)).media_type("image"));
    vec![
        ("text-message", with_ns(text.into_node())),
        ("receipt", with_ns(receipt.into_node())),
        ("prekey-bundle", with_ns(bundle.into_node())),
        ("media-64k", with_ns(media.into_node())),
    ]
}

fn codecs(c: &mut Criterion) {
    let limits = interop_stanza::Limits::DEFAULT;
    for (name, node) in stanzas() {
        let wire = binary::encode(&node).expect("encodable");
        let text = xml::to_string(&node).expect("XML");
        println!(
            "size {name}: binary {} B, XML {} B, binary/XML {:.1}%",
            wire.len(),
            text.len(),
            100.0 * wire.len() as f64 / text.len() as f64
        );
        assert_eq!(binary::decode(&wire).as_ref(), Ok(&node));
        assert_eq!(xml::from_str_with(&text, &limits).as_ref(), Ok(&node));
        text.parse::<minidom::Element>().expect("minidom parses our XML");

        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(1));
        g.bench_function("binary-encode", |b| b.iter(|| binary::encode(black_box(&node))));
        g.bench_function("binary-decode", |b| b.iter(|| binary::decode(black_box(&wire))));
        g.bench_function("xml-encode", |b| b.iter(|| xml::to_string(black_box(&node))));
        g.bench_function("xml-decode", |b| b.iter(|| xml::from_str(black_box(&text))));
        g.bench_function("minidom-parse", |b| {
            b.iter(|| black_box(&text).parse::<minidom::Element>())
        });
        g.finish();
    }
}

criterion_group!(benches, codecs);
criterion_main!(benches);

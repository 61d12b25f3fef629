use proptest::prelude::*;

use super::*;
use crate::testutil::arb_node;

fn enc(n: &Node) -> Vec<u8> {
    encode(n).expect("encodable")
}

/// A stanza whose root has one attribute `id` with the raw value `value_item`.
fn with_value(value_item: &[u8]) -> Vec<u8> {
    let mut v = vec![LIST_SHORT + 3, 0x01, 0x0b];
    v.extend_from_slice(value_item);
    v
}

proptest! {
    #[test]
    fn round_trip(node in arb_node()) {
        prop_assert_eq!(decode(&enc(&node))?, node);
    }

    #[test]
    fn every_proper_prefix_is_truncated(node in arb_node()) {
        let wire = enc(&node);
        for cut in 0..wire.len() {
            prop_assert_eq!(decode(&wire[..cut]), Err(Error::Truncated));
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn mutations_never_panic(node in arb_node(), at in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut wire = enc(&node);
        let i = at.index(wire.len());
        wire[i] = b;
        let _ = decode(&wire);
    }
}

#[test]
fn known_answer_message() {
    let n = Node::new("message")
        .with_attr("id", "3eb0")
        .with_attr("to", "bob.7:2@s.interop")
        .with_attr("type", "text")
        .with_children(vec![
            Node::new("enc")
                .with_attr("v", "2")
                .with_attr("type", "msg")
                .with_bytes(vec![0xAA, 0xBB]),
        ]);
    let wire = enc(&n);
    #[rustfmt::skip]
    let expected = [
        0xD8,                               // list of 8: tag, 3 attrs, content
        0x01,                               // "message"
        0x0b, HEX, 0x02, 0x3e, 0xb0,        // id = "3eb0" packed hex
        0x0c, ADDR, 0b11, 0x07, 0x02,       // to = address: integrator 7, device 2
              0xF3, 0x03, b'b', b'o', b'b', //      user "bob"
              0x43,                         //      server "s.interop"
        0x0e, 0x1c,                         // type = "text"
        0xD1,                               // children: list of 1
        0xD6, 0x02,                         // list of 6, "enc"
        0x10, 0x48,                         // v = "2"
        0x0e, 0x1f,                         // type = "msg"
        0xF3, 0x02, 0xAA, 0xBB,             // bytes
    ];
    assert_eq!(wire, expected);
    assert_eq!(decode(&wire), Ok(n));
}

#[test]
fn string_forms_and_sizes() {
    let cases: &[(&str, &[u8])] = &[
        ("message", &[0x01]),
        ("conflict", &[PAGE1, 0x00]),
        ("", &[BIN_8, 0]),
        ("1700000000", &[NIBBLE, 0x05, 0x17, 0x00, 0x00, 0x00, 0x00]),
        ("1.5-2", &[NIBBLE, 0x83, 0x1B, 0x5A, 0x2F]),
        ("abc", &[HEX, 0x82, 0xAB, 0xC0]),
        ("42@s.interop", &[ADDR, 0, NIBBLE, 0x01, 0x42, 0x43]),
        ("x.0@g.interop", &[ADDR, 1, 0, BIN_8, 1, b'x', 0x44]),
        (
            "a@example.org",
            &[
                BIN_8, 13, b'a', b'@', b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'o', b'r',
                b'g',
            ],
        ),
        ("A", &[BIN_8, 1, b'A']),
        ("01.x@s.interop", &[ADDR, 0, BIN_8, 4, b'0', b'1', b'.', b'x', 0x43]),
    ];
    for (s, item) in cases {
        let n = Node::new("message").with_attr("id", *s);
        let wire = enc(&n);
        assert_eq!(&wire[3..], *item, "{s:?}");
        assert_eq!(decode(&wire), Ok(n), "{s:?}");
    }
    // Leading zeros in numbers are not an address's numbers: the string is kept verbatim.
    for s in
        ["a.07@s.interop", "a:00@s.interop", "a:4294967296@s.interop", "a:@s.interop", "@s.interop"]
    {
        let n = Node::new("x").with_attr(s, s);
        assert_eq!(decode(&enc(&n)), Ok(n), "{s:?}");
    }
    // 254 packable characters pack, 255 do not.
    let long = "7".repeat(254);
    assert_eq!(enc(&Node::new(long.clone()))[1], NIBBLE);
    assert_eq!(enc(&Node::new(long + "7"))[1], BIN_8);
}

#[test]
fn content_kinds_are_distinct() {
    let empty = Node::new("x");
    let no_children = Node::new("x").with_children(vec![]);
    let no_bytes = Node::new("x").with_bytes(vec![]);
    assert_eq!(enc(&empty), [0xD1, BIN_8, 1, b'x']);
    assert_eq!(enc(&no_children), [0xD2, BIN_8, 1, b'x', 0xD0]);
    assert_eq!(enc(&no_bytes), [0xD2, BIN_8, 1, b'x', BIN_8, 0]);
    for n in [empty, no_children, no_bytes] {
        assert_eq!(decode(&enc(&n)), Ok(n));
    }
}

#[test]
fn large_lists_and_bytes_use_wider_headers() {
    let n = Node::new("list").with_children(vec![Node::new("item"); 300]);
    let wire = enc(&n);
    assert_eq!(&wire[..5], &[0xD2, 0x33, LIST_16, 0x01, 0x2C]);
    assert_eq!(decode(&wire), Ok(n));
    for len in [255usize, 256, 65_535, 65_536] {
        let n = Node::new("enc").with_bytes(vec![7; len]);
        let wire = enc(&n);
        let marker = match len {
            0..=255 => BIN_8,
            256..=65_535 => BIN_16,
            _ => BIN_32,
        };
        assert_eq!(wire[2], marker);
        assert_eq!(decode(&wire), Ok(n));
    }
}

#[test]
fn million_levels_of_nesting_are_a_depth_error() {
    // Each level: a node of 2 items ("message", content) whose content is a list of 1.
    let levels = 1_000_000;
    let mut wire = Vec::with_capacity(levels * 3 + 2);
    for _ in 0..levels {
        wire.extend_from_slice(&[0xD2, 0x01, 0xD1]);
    }
    wire.extend_from_slice(&[0xD1, 0x01]);
    let codec = Codec::default().with_limits(Limits { max_size: 4 << 20, ..Limits::DEFAULT });
    assert_eq!(codec.decode(&wire), Err(Error::TooDeep { max: 64 }));
    let mut d = StreamDecoderShim::new(codec);
    assert_eq!(d.feed_all(&wire), Err(Error::TooDeep { max: 64 }));
    // With the default limits, the size check comes first.
    assert_eq!(decode(&wire), Err(Error::LimitExceeded { limit: "stanza size", max: 1 << 20 }));
}

/// The stream decoder, fed in 4 KiB chunks.
struct StreamDecoderShim(crate::StreamDecoder);

impl StreamDecoderShim {
    fn new(codec: Codec) -> Self {
        Self(crate::StreamDecoder::new(codec))
    }

    fn feed_all(&mut self, bytes: &[u8]) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        for chunk in bytes.chunks(4096) {
            self.0.push(chunk);
            while let Some(n) = self.0.next_stanza()? {
                out.push(n);
            }
        }
        self.0.finish()?;
        Ok(out)
    }
}

#[test]
fn depth_limit_is_exact() {
    let mut n = Node::new("leaf");
    for _ in 1..64 {
        n = Node::new("x").with_children(vec![n]);
    }
    let wire = enc(&n);
    assert_eq!(decode(&wire), Ok(n.clone()));
    let deeper = Node::new("x").with_children(vec![n]);
    assert_eq!(encode(&deeper), Err(Error::TooDeep { max: 64 }));
    let mut wire65 = vec![0xD2, 0x01, 0xD1];
    wire65.extend_from_slice(&wire);
    assert_eq!(decode(&wire65), Err(Error::TooDeep { max: 64 }));
}

#[test]
fn huge_declared_lengths_are_refused_before_allocating() {
    assert_eq!(
        decode(&with_value(&[BIN_32, 0xFF, 0xFF, 0xFF, 0xFF])),
        Err(Error::LimitExceeded { limit: "stanza size", max: 1 << 20 })
    );
    // A declared length within the limit but beyond the input is truncation.
    assert_eq!(decode(&with_value(&[BIN_16, 0xFF, 0xFF, b'a'])), Err(Error::Truncated));
    // 65,535 declared children and nothing after: truncated, and nothing reserved for them.
    assert_eq!(decode(&[0xD2, 0x01, LIST_16, 0xFF, 0xFF]), Err(Error::Truncated));
    // 65,535 declared attributes.
    assert_eq!(
        decode(&[LIST_16, 0xFF, 0xFF, 0x01]),
        Err(Error::LimitExceeded { limit: "attribute count", max: 64 })
    );
}

#[test]
fn decoded_size_is_bounded_even_when_tokens_expand() {
    // 2,000 attributes "recipient-unavailable" (21 bytes from 1): ~84 KB decoded from ~4 KB.
    let mut wire = vec![LIST_16, 0x0F, 0xA1, 0x01];
    for i in 0..2000u32 {
        wire.extend_from_slice(&[NIBBLE, 0x02]);
        let d: Vec<u8> = format!("{i:04}").bytes().map(|c| c - b'0').collect();
        wire.extend_from_slice(&[(d[0] << 4) | d[1], (d[2] << 4) | d[3]]);
        wire.push(0x4b);
    }
    let limits = Limits { max_size: 16_384, max_attrs: 5000, ..Limits::DEFAULT };
    let codec = Codec::default().with_limits(limits);
    assert_eq!(
        codec.decode(&wire),
        Err(Error::LimitExceeded { limit: "decoded size", max: 16_384 })
    );
}

#[test]
fn node_count_is_bounded() {
    let n = Node::new("list").with_children(vec![Node::new("item"); 100]);
    let codec = Codec::default().with_limits(Limits { max_nodes: 50, ..Limits::DEFAULT });
    assert_eq!(codec.decode(&enc(&n)), Err(Error::LimitExceeded { limit: "node count", max: 50 }));
}

#[test]
fn invalid_utf8_in_a_string() {
    assert_eq!(decode(&with_value(&[BIN_8, 2, 0xC3, 0x28])), Err(Error::InvalidUtf8));
}

#[test]
fn unknown_tokens() {
    let unused_page0 = u8::try_from(Dictionary::current().page0().len()).expect("fits");
    let unused_page1 = u8::try_from(Dictionary::current().page1().len()).expect("fits");
    let cases: &[(&[u8], Error)] = &[
        (&[unused_page0], Error::UnknownToken { page: 0, token: unused_page0 }),
        (&[0x00], Error::UnknownToken { page: 0, token: 0x00 }),
        (&[0xE7], Error::UnknownToken { page: 0, token: 0xE7 }),
        (&[0xFF], Error::UnknownToken { page: 0, token: 0xFF }),
        (&[PAGE1, unused_page1], Error::UnknownToken { page: 1, token: unused_page1 }),
    ];
    for (item, err) in cases {
        assert_eq!(decode(&with_value(item)), Err(err.clone()), "{item:02x?}");
    }
    assert_eq!(decode(&[0xF9]), Err(Error::UnknownToken { page: 0, token: 0xF9 }));
    assert_eq!(decode(&[0xD2, 0x01, 0xFA]), Err(Error::UnknownToken { page: 0, token: 0xFA }));
}

#[test]
fn malformed_packed_strings() {
    let bad: &[&[u8]] = &[
        &[NIBBLE, 0x00],                                         // zero length
        &[NIBBLE, 0x01, 0xC0],                                   // nibble 0xC is not a character
        &[NIBBLE, 0x81, 0x10],                                   // odd length, padding is not 0xF
        &[NIBBLE, 0x01, 0x1F],     // padding in the middle (even length)
        &[HEX, 0x81, 0xAB],        // odd length, padding is not 0
        &[ADDR, 0x04, 0x01, 0x43], // unknown flag
        &[ADDR, 0x01, 0x80, 0x00, 0x01, 0x43], // overlong varint
        &[ADDR, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x01, 0x43], // varint beyond u32
    ];
    for item in bad {
        let got = decode(&with_value(item));
        assert!(matches!(got, Err(Error::InvalidPacked { .. })), "{item:02x?}: {got:?}");
    }
    assert_eq!(
        decode(&with_value(&[ADDR, 0, ADDR, 0, 0x01, 0x43, 0x43])),
        Err(Error::UnexpectedItem { expected: "a string that is not an address" })
    );
}

#[test]
fn grammar_errors() {
    assert_eq!(decode(&[]), Err(Error::Truncated));
    assert_eq!(
        decode(&[0xD0]),
        Err(Error::UnexpectedItem { expected: "a node (a non-empty list)" })
    );
    assert_eq!(decode(&[0x01]), Err(Error::UnexpectedItem { expected: "a node (a list header)" }));
    assert_eq!(decode(&[0xD1, 0xD1]), Err(Error::UnexpectedItem { expected: "a string" }));
    assert_eq!(
        decode(&[0xD2, 0x01, 0x01]),
        Err(Error::UnexpectedItem { expected: "children or bytes" })
    );
    assert_eq!(decode(&[0xD1, 0x01, 0x00]), Err(Error::TrailingBytes(1)));
    assert_eq!(decode(&[0xD5, 0x01, 0x0b, 0x48, 0x0b, 0x49]), Err(Error::DuplicateAttribute));
}

#[test]
fn dictionary_versions() {
    assert_eq!(Codec::new(1).map(|c| c.version()).ok(), Some(1));
    assert_eq!(Codec::new(0).err(), Some(Error::UnsupportedVersion(0)));
    assert_eq!(Codec::new(2).err(), Some(Error::UnsupportedVersion(2)));
}

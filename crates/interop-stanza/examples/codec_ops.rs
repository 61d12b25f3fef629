//! Runs one codec operation on the receipt or text-message bench stanza `n` times, for
//! instruction counts under callgrind (repeatable on a noisy machine):
//!
//! ```text
//! cargo build --release -p interop-stanza --example codec_ops
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/codec_ops receipt binary-decode 1000
//! ```
//!
//! Operations: `none` (setup only, the baseline to subtract), `binary-decode`,
//! `binary-encode`, `xml-decode`, `minidom-parse`.

use std::hint::black_box;

use interop_stanza::stanza::{Enc, EncType, Message, MessageType, Receipt, ReceiptType};
use interop_stanza::{Node, binary, xml};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, stanza, op, n] = &args[..] else {
        eprintln!("usage: codec_ops <receipt|text-message> <op> <n>");
        std::process::exit(2);
    };
    let mut node: Node = match stanza.as_str() {
        "receipt" => Receipt::new("3eb0c4d1a2b3c4d5", ReceiptType::Read)
            .to("1042.7:1@s.interop")
            .timestamp(1_700_000_100)
            .into_node(),
        _ => Message::new("3eb0c4d1a2b3c4d5", MessageType::Text)
            .to("2001:3@s.interop")
            .timestamp(1_700_000_000)
            .with_enc(Enc::new(EncType::Msg, (0..120u8).collect()))
            .into_node(),
    };
    node.attrs.push(("xmlns".into(), "jabber:client".into()));
    let wire = binary::encode(&node).expect("encodable");
    let text = xml::to_string(&node).expect("XML");
    let n: usize = n.parse().expect("a count");
    for _ in 0..n {
        match op.as_str() {
            "none" => {}
            "binary-decode" => drop(black_box(binary::decode(black_box(&wire)))),
            "binary-encode" => drop(black_box(binary::encode(black_box(&node)))),
            "xml-decode" => drop(black_box(xml::from_str(black_box(&text)))),
            "minidom-parse" => drop(black_box(black_box(&text).parse::<minidom::Element>())),
            other => panic!("unknown op {other}"),
        }
    }
}

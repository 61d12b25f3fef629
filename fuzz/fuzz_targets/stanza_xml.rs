#![no_main]
//! XML stanza reader: what it accepts, the writer writes back to the same model, and the binary
//! codec carries it unchanged. Replayed on stable by crates/interop-stanza/tests/corpus.rs.
use interop_stanza::{binary, xml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = xml::from_bytes(data) {
        let text = xml::to_string(&n).expect("what the reader accepts, the writer writes");
        assert_eq!(xml::from_str(&text).as_ref(), Ok(&n));
        let wire = binary::encode(&n).expect("encodable");
        assert_eq!(binary::decode(&wire).as_ref(), Ok(&n));
    }
});

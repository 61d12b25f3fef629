#![no_main]
//! Binary stanza decoder: whole-buffer and streaming decode agree; what decodes re-encodes to
//! the same model. Replayed on stable by crates/interop-stanza/tests/corpus.rs.
use interop_stanza::{StreamDecoder, binary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = binary::decode(data);
    let mut d = StreamDecoder::default();
    // Split the input in two at a data-dependent point: chunking must not matter.
    let cut = data.first().map_or(0, |b| usize::from(*b) % (data.len() + 1));
    d.push(&data[..cut]);
    let early = d.next_stanza();
    d.push(&data[cut..]);
    let streamed = match early {
        Ok(Some(n)) => Ok(Some(n)),
        Ok(None) => d.next_stanza(),
        Err(e) => Err(e),
    };
    if let Ok(n) = &whole {
        assert_eq!(streamed.as_ref().ok().and_then(Option::as_ref), Some(n));
        let again = binary::encode(n).expect("a decoded stanza re-encodes");
        assert_eq!(binary::decode(&again).as_ref(), Ok(n));
    }
});

//! Replays every committed fuzz corpus file through the decoders (stable toolchain, no
//! libFuzzer): whatever a fuzzing run found and committed stays a regression test.

use std::path::Path;

use interop_stanza::{StreamDecoder, binary, xml};

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .map(|e| {
            let path = e.expect("dir entry").path();
            (path.display().to_string(), std::fs::read(&path).expect("corpus file"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn stanza_binary_corpus() {
    let files = files("stanza_binary");
    assert!(!files.is_empty());
    for (name, data) in files {
        // Same as fuzz/fuzz_targets/stanza_binary.rs: whole-buffer and streaming decode agree.
        let whole = binary::decode(&data);
        let mut d = StreamDecoder::default();
        d.push(&data);
        let streamed = d.next_stanza();
        match (&whole, streamed) {
            (Ok(n), Ok(Some(s))) => {
                assert_eq!(n, &s, "{name}");
                assert_eq!(binary::decode(&binary::encode(n).expect("re-encode")).as_ref(), Ok(n));
            }
            (Err(_), _) => {}
            (Ok(_), other) => {
                panic!("{name}: whole-buffer decode succeeded, stream gave {other:?}")
            }
        }
        if is_seed(&name) {
            assert!(whole.is_ok(), "{name}: a seed does not decode: {whole:?}");
        }
    }
}

/// Seeds are the golden vectors (`test-vectors/stanza/<name>.xml`); files a fuzzer added have
/// other names and only need to be handled without a panic.
fn is_seed(path: &str) -> bool {
    let stem = Path::new(path).file_stem().expect("file name").to_string_lossy().into_owned();
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../test-vectors/stanza")
        .join(stem + ".xml")
        .exists()
}

#[test]
fn stanza_xml_corpus() {
    let files = files("stanza_xml");
    assert!(!files.is_empty());
    for (name, data) in files {
        // Same as fuzz/fuzz_targets/stanza_xml.rs.
        match xml::from_bytes(&data) {
            Ok(n) => {
                let text = xml::to_string(&n).expect("what the reader accepts, the writer writes");
                assert_eq!(xml::from_str(&text).as_ref(), Ok(&n), "{name}");
                let wire = binary::encode(&n).expect("encode");
                assert_eq!(binary::decode(&wire).as_ref(), Ok(&n), "{name}");
            }
            Err(e) => assert!(!is_seed(&name), "{name}: a seed does not decode: {e:?}"),
        }
    }
}

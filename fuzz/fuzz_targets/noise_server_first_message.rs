#![no_main]
//! The server's handshake path fed with arbitrary client bytes (header, hello, retry, finish,
//! key confirmation). Replayed on stable by crates/interop-noise/tests/fuzz_corpus.rs.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    interop_noise::fuzzing::server_first_messages(data);
});

#![no_main]
//! Frame decoder: chunking never changes the frames or the outcome; no frame above the limit.
//! Replayed on stable by crates/interop-noise/tests/fuzz_corpus.rs.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| interop_noise::fuzzing::frame_decoder(data));

//! Entry points shared by the fuzz targets in `fuzz/` and the stable corpus replay test
//! (`tests/fuzz_corpus.rs`). Not part of the API: hidden, unstable, may change at any time.
//!
//! Each function takes arbitrary bytes, must never panic on them, and asserts the invariants a
//! fuzzer should check.

use std::sync::OnceLock;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::cert::{IntermediateKey, RootKey, Validity};
use crate::frame::FrameDecoder;
use crate::proto::CertificateChain;
use crate::{
    ConnectionHeader, MAX_NOISE_MESSAGE, ServerConfig, ServerHandshake, ServerStep, StaticKeypair,
};

/// Seed of the server's handshake randomness in [`server_first_messages`].
pub const SERVER_RNG_SEED: u64 = 0;
/// The `now` (seconds) of the fixed certificates.
pub const NOW: u64 = 1_767_225_600;

/// The fixed server of [`server_first_messages`] and the root that certifies it.
pub fn server() -> &'static (ServerConfig, RootKey) {
    static SERVER: OnceLock<(ServerConfig, RootKey)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let rng = &mut ChaCha20Rng::seed_from_u64(42);
        let root = RootKey::generate(rng);
        let inter = IntermediateKey::generate(rng);
        let keys = StaticKeypair::generate(rng);
        let window = Validity { not_before: NOW - 3_600, not_after: NOW + 3_600 };
        let chain = CertificateChain {
            intermediate: Some(root.issue_intermediate(&inter, 1, window)),
            leaf: Some(inter.issue_leaf(1, &keys.public, 2, window)),
        };
        (ServerConfig::new(keys, chain), root)
    })
}

/// The server's side of a connection fed with `data` as everything the client sent: the header,
/// then frames, through every handshake step the frames reach (retry, finish, confirmation).
/// Returns whether the client ended up authenticated.
pub fn server_first_messages(data: &[u8]) -> bool {
    let (server, _) = server();
    let rng = &mut ChaCha20Rng::seed_from_u64(SERVER_RNG_SEED);
    let Ok(mut hello) = ServerHandshake::handle_header(server, data) else { return false };
    let mut frames = FrameDecoder::default();
    frames.push(&data[ConnectionHeader::LEN..]);
    let mut retried = false;
    loop {
        let Ok(Some(frame)) = frames.next_frame() else { return false };
        match hello.handle_client_hello(&frame, 0, rng) {
            Ok(ServerStep::Xx(finish, reply)) => {
                assert!(reply.len() <= MAX_NOISE_MESSAGE + 3);
                let Ok(Some(frame)) = frames.next_frame() else { return false };
                return finish.handle_client_finish(&frame).is_ok();
            }
            Ok(ServerStep::Ik(confirm, reply)) => {
                assert!(!retried, "IK accepted after retry_with_xx");
                assert!(reply.len() <= MAX_NOISE_MESSAGE + 3);
                let Ok(Some(frame)) = frames.next_frame() else { return false };
                return confirm.handle_confirm(&frame).is_ok();
            }
            Ok(ServerStep::RetryWithXx(next, reply)) => {
                assert!(!retried, "retry_with_xx sent twice");
                assert_eq!(reply, [0, 0, 2, 0x32, 0]);
                retried = true;
                hello = next;
            }
            Err(_) => return false,
        }
    }
}

/// The frame decoder over `data`, whole and split at a data-dependent point: same frames, same
/// outcome (and, without an error, the same leftover), and no frame above the limit. An error
/// comes as soon as the bad length is in, so the bytes buffered by then depend on the chunking.
pub fn frame_decoder(data: &[u8]) {
    let cut = data.first().map_or(0, |b| usize::from(*b) * 257 % (data.len() + 1));
    let whole = frames(&[data]);
    let split = frames(&[&data[..cut], &data[cut..]]);
    assert_eq!(whole, split);
    assert!(whole.0.iter().all(|f| f.len() <= MAX_NOISE_MESSAGE));
}

type Outcome = (Vec<Vec<u8>>, Option<String>, usize);

fn frames(chunks: &[&[u8]]) -> Outcome {
    let mut d = FrameDecoder::default();
    let mut out = Vec::new();
    for chunk in chunks {
        d.push(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string()), 0),
            }
        }
    }
    (out, None, d.buffered())
}

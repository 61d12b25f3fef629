//! The default payload size: what a real short text costs on the wire once Signal-encrypted
//! (`loadgen payload-size` measures it with interop-e2ee; the constant records one run).

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use interop_e2ee::{Account, Bundle, DeviceAddress, EncKind, InMemoryStorage, PreKeyPolicy, proto};

/// Bytes of the `enc` ciphertext of a short text in an established session (`msg`), as
/// `loadgen payload-size` measures it (interop-e2ee pads the content to 160 bytes and, for half
/// of the messages, one 160-byte block more: 266 or 426 bytes with libsignal 0.85). The
/// smaller, the common size of a short text.
pub const SIGNAL_SHORT_TEXT: usize = 266;

/// Sizes of the ciphertexts of `n` short texts Alice sends Bob after one exchange each way
/// (so they are `msg`, not `pkmsg`), sorted.
pub async fn measure(n: usize) -> Result<Vec<usize>> {
    let mut rng = rand::rng();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let policy = PreKeyPolicy::default();
    let alice_addr = DeviceAddress::new("alice", 1)?;
    let bob_addr = DeviceAddress::new("bob", 1)?;
    let (mut alice, _) =
        Account::create(InMemoryStorage::new(), alice_addr.clone(), &policy, now, &mut rng).await?;
    let (mut bob, upload) =
        Account::create(InMemoryStorage::new(), bob_addr.clone(), &policy, now, &mut rng).await?;
    let bundle = Bundle {
        registration_id: upload.registration_id,
        device: 1,
        identity: upload.identity.clone(),
        signed_prekey: upload.signed_prekey.clone().context("a signed prekey")?,
        one_time: upload.one_time.first().cloned(),
        kyber: upload.kyber_one_time.first().cloned().context("a kyber prekey")?,
    };
    alice.process_bundle(&bob_addr, &bundle, now, &mut rng).await?;
    let text = |i: usize| {
        let body = format!("see you at {} tonight?", 6 + i % 4);
        let content = proto::message::Content::Text(proto::Text { body });
        let message =
            proto::Message { id: format!("m{i}"), content: Some(content), ..Default::default() };
        proto::Transport { message: Some(message), ..Default::default() }
    };
    // One message each way: Alice's first is a pkmsg; after Bob's reply hers are msg.
    let first = alice.send(std::slice::from_ref(&bob_addr), text(0), now, &mut rng).await?;
    let received = bob.receive(&alice_addr, &first[0].1, &mut rng).await?;
    received.commit().await?;
    let reply = bob.send(std::slice::from_ref(&alice_addr), text(1), now, &mut rng).await?;
    let received = alice.receive(&bob_addr, &reply[0].1, &mut rng).await?;
    received.commit().await?;
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        let encs = alice.send(std::slice::from_ref(&bob_addr), text(i), now, &mut rng).await?;
        let enc = &encs[0].1;
        if enc.kind == EncKind::Message {
            sizes.push(enc.ciphertext.len());
        }
        let received = bob.receive(&alice_addr, enc, &mut rng).await?;
        received.commit().await?;
    }
    sizes.sort_unstable();
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_a_measured_size() {
        let sizes = futures::executor::block_on(measure(16)).unwrap();
        assert_eq!(sizes.len(), 16, "all msg after one exchange each way");
        assert_eq!(sizes[0], SIGNAL_SHORT_TEXT, "{sizes:?}");
    }
}

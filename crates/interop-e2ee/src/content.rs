//! Content protobufs (`proto/interop/content.proto`): padding on the way out, bounded parsing on
//! the way in, and [`Account::send`] / [`Account::receive`], which combine them with Signal.
//!
//! ```text
//!   Transport { message, sender_key_distribution, distribution_id, padding }   (Signal plaintext)
//!     └ Message { id, timestamp_ms, quoted, content }                          (application)
//!         └ text | image | video | voice | file | reaction | edit | delete | unsupported
//! ```

use std::fmt;
use std::time::SystemTime;

use prost::Message as _;
use rand::{CryptoRng, Rng};

use crate::account::{Account, Enc, EncKind, Event, Pending};
use crate::proto::{self, message::Content as ProtoContent};
use crate::store::{Arrival, DeviceAddress, Storage};
use crate::{Error, Result};

/// Padded transports are a multiple of this many bytes long.
pub const PADDING_BLOCK: usize = 160;
/// The largest transport accepted (an `enc` payload must fit one 64 KiB frame anyway).
pub const MAX_TRANSPORT_LEN: usize = 64 * 1024;

/// A fresh message id: 16 random bytes as 32 lowercase hex digits.
pub fn new_message_id<R: Rng + CryptoRng>(rng: &mut R) -> String {
    let bytes: [u8; 16] = rng.random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn varint_len(v: usize) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// Encodes a transport with padding: the result is a multiple of [`PADDING_BLOCK`] bytes,
/// plus (at random, one time in two) one block more, so equal contents do not always have
/// equal lengths. Any `padding` already set is replaced.
pub fn seal<R: Rng + CryptoRng>(mut transport: proto::Transport, rng: &mut R) -> Vec<u8> {
    transport.padding = Default::default();
    let base = transport.encoded_len();
    let extra = if rng.random::<bool>() { PADDING_BLOCK } else { 0 };
    let mut total = base.div_ceil(PADDING_BLOCK).max(1) * PADDING_BLOCK + extra;
    // The padding field costs 1 tag byte + a varint length + the bytes; find a length that
    // lands exactly on `total` (a varint boundary may force the next block).
    let pad = loop {
        if total == base {
            break 0;
        }
        let found = (1..=3).find_map(|vlen| {
            let p = total.checked_sub(base + 1 + vlen)?;
            (p > 0 && varint_len(p) == vlen).then_some(p)
        });
        match found {
            Some(p) => break p,
            None => total += PADDING_BLOCK,
        }
    };
    if pad > 0 {
        transport.padding = vec![0u8; pad].into();
    }
    let out = transport.encode_to_vec();
    debug_assert_eq!(out.len() % PADDING_BLOCK, 0);
    out
}

/// Parses a decrypted transport. Refuses oversized input and a transport that carries
/// neither a message nor a sender-key distribution.
pub fn open(bytes: &[u8]) -> Result<proto::Transport> {
    if bytes.len() > MAX_TRANSPORT_LEN {
        return Err(Error::Malformed("transport too large"));
    }
    let mut t =
        proto::Transport::decode(bytes).map_err(|_| Error::Malformed("content protobuf"))?;
    t.padding = Default::default();
    if t.message.is_none() && t.sender_key_distribution.is_empty() {
        return Err(Error::Malformed("empty transport"));
    }
    if !t.sender_key_distribution.is_empty() && t.distribution_id.len() != 16 {
        return Err(Error::Malformed("distribution id must be 16 bytes"));
    }
    Ok(t)
}

/// What a receiver shows for a message: its content, with unknown kinds made explicit.
#[derive(Clone, Copy)]
pub enum Content<'a> {
    /// Plain text.
    Text(&'a proto::Text),
    /// An image.
    Image(&'a proto::Media),
    /// A video.
    Video(&'a proto::Media),
    /// A voice note.
    Voice(&'a proto::Media),
    /// A file.
    File(&'a proto::Media),
    /// A reaction to an earlier message.
    Reaction(&'a proto::Reaction),
    /// A replacement text for the sender's earlier message.
    Edit(&'a proto::Edit),
    /// Deletion of the sender's earlier message.
    Delete(&'a proto::Delete),
    /// Content the sender marked as not supported in interop; show its fallback text.
    Unsupported(&'a proto::Unsupported),
    /// A content kind this version does not know (a newer sender): show "unsupported
    /// message" rather than dropping it.
    Unknown,
}

impl fmt::Debug for Content<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Content::Text(_) => "Text",
            Content::Image(_) => "Image",
            Content::Video(_) => "Video",
            Content::Voice(_) => "Voice",
            Content::File(_) => "File",
            Content::Reaction(_) => "Reaction",
            Content::Edit(_) => "Edit",
            Content::Delete(_) => "Delete",
            Content::Unsupported(_) => "Unsupported",
            Content::Unknown => "Unknown",
        })
    }
}

/// The consumer content of `message`.
pub fn content(message: &proto::Message) -> Content<'_> {
    match &message.content {
        Some(ProtoContent::Text(t)) => Content::Text(t),
        Some(ProtoContent::Image(m)) => Content::Image(m),
        Some(ProtoContent::Video(m)) => Content::Video(m),
        Some(ProtoContent::Voice(m)) => Content::Voice(m),
        Some(ProtoContent::File(m)) => Content::File(m),
        Some(ProtoContent::Reaction(r)) => Content::Reaction(r),
        Some(ProtoContent::Edit(e)) => Content::Edit(e),
        Some(ProtoContent::Delete(d)) => Content::Delete(d),
        Some(ProtoContent::Unsupported(u)) => Content::Unsupported(u),
        None => Content::Unknown,
    }
}

/// A received transport whose state change is not stored yet (see [`Pending`]).
pub struct Received<'a, S> {
    pending: Pending<'a, S>,
    transport: proto::Transport,
}

impl<S> fmt::Debug for Received<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("has_message", &self.transport.message.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Received<'_, S> {
    /// The sending device.
    pub fn sender(&self) -> &DeviceAddress {
        self.pending.sender()
    }

    /// The application message, if the transport carried one.
    pub fn message(&self) -> Option<&proto::Message> {
        self.transport.message.as_ref()
    }

    /// The group a sender-key distribution in this transport was for (already applied in
    /// this transaction).
    pub fn distribution_id(&self) -> Option<[u8; 16]> {
        (!self.transport.sender_key_distribution.is_empty())
            .then(|| self.transport.distribution_id.as_ref().try_into().ok())
            .flatten()
    }

    /// Events caused by the decryption.
    pub fn events(&self) -> &[Event] {
        self.pending.events()
    }

    /// The group this message belongs to, for sender-key (`skmsg`) content.
    pub fn group(&self) -> Option<[u8; 16]> {
        self.pending.group()
    }

    /// Stores the new state and the message's [`Arrival`] in one transaction.
    pub async fn commit(self) -> Result<Vec<Event>> {
        let arrival = self.transport.message.as_ref().map(|m| Arrival {
            sender: self.pending.sender().clone(),
            message_id: m.id.clone(),
            message: m.encode_to_vec(),
            group: self.pending.group(),
        });
        self.pending.commit(arrival).await
    }
}

impl<S: Storage> Account<S> {
    /// Pads `transport` and encrypts it for every device in `peers` (one committed batch).
    pub async fn send<R: Rng + CryptoRng>(
        &mut self,
        peers: &[DeviceAddress],
        transport: proto::Transport,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<Vec<(DeviceAddress, Enc)>> {
        let bytes = seal(transport, rng);
        self.encrypt(peers, &bytes, now, rng).await
    }

    /// Pads `transport` and encrypts it with this device's sender key for `distribution`.
    pub async fn send_group<R: Rng + CryptoRng>(
        &mut self,
        distribution: [u8; 16],
        transport: proto::Transport,
        rng: &mut R,
    ) -> Result<Enc> {
        let bytes = seal(transport, rng);
        self.group_encrypt(distribution, &bytes, rng).await
    }

    /// Decrypts and parses one payload, applying any sender-key distribution it carries in the
    /// same transaction. Commit the result with [`Received::commit`].
    ///
    /// A payload that decrypts but does not parse is malformed content from an authenticated
    /// sender: its state change is committed (the message key is used up either way) without
    /// an arrival, and [`Error::Malformed`] returned.
    pub async fn receive<R: Rng + CryptoRng>(
        &mut self,
        sender: &DeviceAddress,
        enc: &Enc,
        rng: &mut R,
    ) -> Result<Received<'_, S>> {
        let mut pending = self.decrypt(sender, enc, rng).await?;
        let transport = match open(pending.plaintext()) {
            Ok(t) => t,
            Err(e) => {
                pending.commit(None).await?;
                return Err(e);
            }
        };
        if !transport.sender_key_distribution.is_empty() {
            if enc.kind == EncKind::SenderKey {
                pending.commit(None).await?;
                return Err(Error::Malformed("sender key distribution inside a group message"));
            }
            let skdm = transport.sender_key_distribution.clone();
            if let Err(e) = pending.process_sender_key_distribution(&skdm).await {
                pending.commit(None).await?;
                return Err(e);
            }
        }
        Ok(Received { pending, transport })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_lands_on_blocks_for_every_length() {
        let mut rng = rand::rng();
        for n in 0..2000 {
            let mut t = proto::Transport {
                message: Some(proto::Message {
                    id: "x".repeat(n % 40),
                    content: Some(ProtoContent::Text(proto::Text { body: "a".repeat(n) })),
                    ..Default::default()
                }),
                ..Default::default()
            };
            if n % 7 == 0 {
                // Lengths that land 1 or 2 bytes short of a block.
                t.sender_key_distribution = vec![1; n % 5].into();
                t.distribution_id = vec![2; n % 3].into();
            }
            let bytes = seal(t.clone(), &mut rng);
            assert_eq!(bytes.len() % PADDING_BLOCK, 0, "length {n}");
            assert!(bytes.len() >= t.encoded_len());
            let mut back = proto::Transport::decode(bytes.as_slice()).unwrap();
            back.padding = Default::default();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn padding_hits_every_residue() {
        let mut rng = rand::rng();
        for n in 1..2 * PADDING_BLOCK {
            let t = proto::Transport {
                sender_key_distribution: vec![1; n].into(),
                distribution_id: vec![2; 16].into(),
                ..Default::default()
            };
            let bytes = seal(t.clone(), &mut rng);
            assert_eq!(bytes.len() % PADDING_BLOCK, 0, "length {n}");
            assert_eq!(open(&bytes).unwrap(), t);
        }
    }

    #[test]
    fn open_refuses_garbage_empty_and_oversized() {
        assert!(matches!(open(&[0xff, 0xff, 0xff]), Err(Error::Malformed(_))));
        assert!(matches!(open(&[]), Err(Error::Malformed("empty transport"))));
        assert!(matches!(open(&vec![0; MAX_TRANSPORT_LEN + 1]), Err(Error::Malformed(_))));
        let bad_group = proto::Transport {
            sender_key_distribution: vec![1, 2].into(),
            distribution_id: vec![1].into(),
            ..Default::default()
        };
        assert!(open(&bad_group.encode_to_vec()).is_err());
    }

    #[test]
    fn unknown_content_kind_is_reported_not_dropped() {
        // Field 19 does not exist in this version: a newer sender's content kind.
        let mut bytes = proto::Message { id: "m1".into(), ..Default::default() }.encode_to_vec();
        bytes.extend_from_slice(&[0x9a, 0x01, 0x02, 0x08, 0x01]); // field 19, LEN 2
        let m = proto::Message::decode(bytes.as_slice()).unwrap();
        assert_eq!(m.id, "m1");
        assert!(matches!(content(&m), Content::Unknown));
    }
}

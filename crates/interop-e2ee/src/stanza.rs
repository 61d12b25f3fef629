//! Mapping encrypted payloads onto `message` stanzas: one `enc` child per device.
//!
//! Outgoing (client to gatekeeper):
//!
//! ```xml
//! <message id="5f0c…" to="bob" type="text">
//!   <enc v="2" type="pkmsg" device="1">…</enc>                  <!-- bob's device 1 -->
//!   <enc v="2" type="msg" device="2">…</enc>                    <!-- bob's device 2 -->
//!   <enc v="2" type="msg" account="alice" device="3">…</enc>    <!-- sender's other device -->
//! </message>
//! ```
//!
//! Incoming (gatekeeper to one device): the gatekeeper keeps only the `enc` for that device
//! and adds the sender: `<message id from="alice" from_device="1" type="text"><enc v="2"
//! type="msg">…</enc></message>`.

use interop_stanza::Node;

use crate::account::{Enc, EncKind};
use crate::store::DeviceAddress;
use crate::{Error, Result};

/// The `v` attribute: version 2 of the `enc` payload (Signal message version 4 with PQXDH,
/// carrying `interop.content.v1.Transport`).
pub const ENC_VERSION: &str = "2";
/// The largest accepted `enc` payload.
pub const MAX_ENC_LEN: usize = 64 * 1024;
/// The longest accepted message id.
pub const MAX_ID_LEN: usize = 128;

/// Whether the stanza's `type` says text or media (for push and quota decisions; the content
/// itself stays encrypted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// Text, reactions, edits, deletes and everything else.
    Text,
    /// Image, video, voice or file.
    Media,
}

/// Builds the outgoing `message` stanza to account `to`: one `enc` per device. Devices of
/// other accounts (the sender's own other devices) carry an `account` attribute.
pub fn message_stanza(
    id: &str,
    to: &str,
    kind: MessageType,
    encs: &[(DeviceAddress, Enc)],
) -> Node {
    let children = encs
        .iter()
        .map(|(device, enc)| {
            let mut node =
                Node::new("enc").with_attr("v", ENC_VERSION).with_attr("type", enc.kind.as_str());
            if device.account() != to {
                node = node.with_attr("account", device.account());
            }
            node.with_attr("device", device.device().to_string()).with_bytes(enc.ciphertext.clone())
        })
        .collect();
    Node::new("message")
        .with_attr("id", id)
        .with_attr("to", to)
        .with_attr(
            "type",
            match kind {
                MessageType::Text => "text",
                MessageType::Media => "media",
            },
        )
        .with_children(children)
}

/// One received payload, parsed from a delivered `message` stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The message id (`id`).
    pub id: String,
    /// The sending device (`from`, `from_device`).
    pub sender: DeviceAddress,
    /// The payload for this device.
    pub enc: Enc,
}

fn enc_of(node: &Node) -> Result<Enc> {
    if node.attr("v") != Some(ENC_VERSION) {
        return Err(Error::UnsupportedVersion);
    }
    let kind = node.attr("type").and_then(EncKind::parse).ok_or(Error::Malformed("enc type"))?;
    let bytes = node.bytes().ok_or(Error::Malformed("enc without bytes"))?;
    if bytes.is_empty() || bytes.len() > MAX_ENC_LEN {
        return Err(Error::Malformed("enc length"));
    }
    Ok(Enc { kind, ciphertext: bytes.to_vec() })
}

/// Parses a delivered `message` stanza addressed to `me`: picks the `enc` for `me` (an `enc`
/// without `device` is for whoever the gatekeeper delivered it to).
pub fn parse_incoming(node: &Node, me: &DeviceAddress) -> Result<Incoming> {
    if node.tag != "message" {
        return Err(Error::Malformed("not a message stanza"));
    }
    let id = node.attr("id").ok_or(Error::Malformed("message without id"))?;
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::Malformed("message id length"));
    }
    let from = node.attr("from").ok_or(Error::Malformed("message without from"))?;
    let from_device = node
        .attr("from_device")
        .and_then(|d| d.parse::<u8>().ok())
        .ok_or(Error::Malformed("message without from_device"))?;
    let sender = DeviceAddress::new(from, from_device)
        .map_err(|_| Error::Malformed("bad sender address"))?;
    let mine = node.children().iter().filter(|c| c.tag == "enc").find(|c| {
        let device_ok = match c.attr("device") {
            None => true,
            Some(d) => d.parse::<u8>().ok() == Some(me.device()),
        };
        let account_ok = c.attr("account").is_none_or(|a| a == me.account());
        device_ok && account_ok
    });
    let enc = enc_of(mine.ok_or(Error::Malformed("no enc for this device"))?)?;
    Ok(Incoming { id: id.to_owned(), sender, enc })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: &str, d: u8) -> DeviceAddress {
        DeviceAddress::new(a, d).unwrap()
    }

    #[test]
    fn builds_one_enc_per_device_and_parses_the_right_one() {
        let encs = vec![
            (addr("bob", 1), Enc { kind: EncKind::PreKey, ciphertext: vec![1] }),
            (addr("bob", 2), Enc { kind: EncKind::Message, ciphertext: vec![2] }),
            (addr("alice", 3), Enc { kind: EncKind::Message, ciphertext: vec![3] }),
        ];
        let node = message_stanza("abc", "bob", MessageType::Text, &encs);
        assert_eq!(node.tag, "message");
        assert_eq!(node.attr("to"), Some("bob"));
        assert_eq!(node.children().len(), 3);
        assert_eq!(node.children()[0].attr("type"), Some("pkmsg"));
        assert_eq!(node.children()[0].attr("account"), None);
        assert_eq!(node.children()[2].attr("account"), Some("alice"));

        // What the gatekeeper delivers: the same node plus the sender.
        let delivered = node.clone().with_attr("from", "alice").with_attr("from_device", "1");
        let got = parse_incoming(&delivered, &addr("bob", 2)).unwrap();
        assert_eq!(got.sender, addr("alice", 1));
        assert_eq!(got.enc, encs[1].1);
        let got = parse_incoming(&delivered, &addr("alice", 3)).unwrap();
        assert_eq!(got.enc.ciphertext, vec![3]);
        assert!(parse_incoming(&delivered, &addr("bob", 9)).is_err());
    }

    #[test]
    fn refuses_bad_stanzas() {
        let enc = |v: &str, t: &str, b: Vec<u8>| {
            Node::new("message")
                .with_attr("id", "1")
                .with_attr("from", "a")
                .with_attr("from_device", "1")
                .with_children(vec![
                    Node::new("enc").with_attr("v", v).with_attr("type", t).with_bytes(b),
                ])
        };
        let me = addr("b", 1);
        assert!(parse_incoming(&enc("2", "msg", vec![1]), &me).is_ok());
        assert!(matches!(
            parse_incoming(&enc("1", "msg", vec![1]), &me),
            Err(Error::UnsupportedVersion)
        ));
        assert!(parse_incoming(&enc("2", "nope", vec![1]), &me).is_err());
        assert!(parse_incoming(&enc("2", "msg", vec![]), &me).is_err());
        assert!(parse_incoming(&enc("2", "msg", vec![0; MAX_ENC_LEN + 1]), &me).is_err());
        let no_device = enc("2", "msg", vec![1]).with_attr("from_device", "0");
        assert!(parse_incoming(&no_device, &me).is_err());
        assert!(parse_incoming(&Node::new("iq"), &me).is_err());
    }
}

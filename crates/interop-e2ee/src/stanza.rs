//! Mapping encrypted payloads onto `message` stanzas (docs/PROTOCOL.md sections 2.7, 4 and
//! 5.3): one `participants/to` per destination device, each holding that device's `enc`.
//!
//! Outgoing (client to gatekeeper), to account `bob` from a sender with another device:
//!
//! ```xml
//! <message id="5f0c…" to="bob@s.interop" type="text">
//!   <participants>
//!     <to jid="bob:1@s.interop"><enc v="2" type="pkmsg">…</enc></to>
//!     <to jid="bob:2@s.interop"><enc v="2" type="msg">…</enc></to>
//!     <to jid="alice:3@s.interop"><enc v="2" type="msg">…</enc></to>   <!-- sender's other device -->
//!   </participants>
//! </message>
//! ```
//!
//! Incoming (gatekeeper to one device): only that device's `enc`, `to` removed, and `from` the
//! sender **device** address: `<message id from="alice:1@s.interop" type="text"><enc v="2"
//! type="msg">…</enc></message>`. An address may carry a provider integrator id
//! (`alice.acme:1@s.interop`); the account and device are what the Signal session uses.

use interop_stanza::{Node, stanza};

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

/// The server part of account and device addresses.
pub const SERVER: &str = "s.interop";

/// The address of one device: `account:device@s.interop`.
pub fn device_jid(device: &DeviceAddress) -> String {
    format!("{}:{}@{SERVER}", device.account(), device.device())
}

/// The account and device an address names: `account[.integrator]:device@s.interop`.
pub fn parse_device_jid(jid: &str) -> Option<DeviceAddress> {
    let (local, server) = jid.rsplit_once('@')?;
    if server != SERVER {
        return None;
    }
    let (rest, device) = local.rsplit_once(':')?;
    if device.len() > 1 && device.starts_with('0') {
        return None;
    }
    let account = rest.split_once('.').map_or(rest, |(a, _)| a);
    DeviceAddress::new(account, device.parse::<u8>().ok()?).ok()
}

fn wire_enc(enc: &Enc) -> stanza::Enc {
    let kind = match enc.kind {
        EncKind::PreKey => stanza::EncType::Pkmsg,
        EncKind::Message => stanza::EncType::Msg,
        EncKind::SenderKey => stanza::EncType::Skmsg,
    };
    stanza::Enc::new(kind, enc.ciphertext.clone())
}

/// Builds the outgoing `message` stanza to account `to`: one `participants/to` per device
/// (the recipient's devices and the sender's own other devices).
pub fn message_stanza(
    id: &str,
    to: &str,
    kind: MessageType,
    encs: &[(DeviceAddress, Enc)],
) -> Node {
    let kind = match kind {
        MessageType::Text => stanza::MessageType::Text,
        MessageType::Media => stanza::MessageType::Media,
    };
    let mut message = stanza::Message::new(id, kind).to(format!("{to}@{SERVER}"));
    for (device, enc) in encs {
        message =
            message.with_participant(stanza::Participant::new(device_jid(device), wire_enc(enc)));
    }
    message.into_node()
}

/// One received payload, parsed from a delivered `message` stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The message id (`id`).
    pub id: String,
    /// The sending device (from the `from` address).
    pub sender: DeviceAddress,
    /// The payload for this device.
    pub enc: Enc,
}

fn enc_of(enc: &stanza::Enc) -> Result<Enc> {
    if enc.version != 2 {
        return Err(Error::UnsupportedVersion);
    }
    let kind = EncKind::parse(enc.kind.as_str()).ok_or(Error::Malformed("enc type"))?;
    if enc.ciphertext.is_empty() || enc.ciphertext.len() > MAX_ENC_LEN {
        return Err(Error::Malformed("enc length"));
    }
    Ok(Enc { kind, ciphertext: enc.ciphertext.clone() })
}

/// Parses a delivered `message` stanza addressed to `me`: the sender from `from`, and the
/// payload either as the direct `enc` (what the gatekeeper delivers) or as the
/// `participants/to` naming `me`.
pub fn parse_incoming(node: &Node, me: &DeviceAddress) -> Result<Incoming> {
    if node.tag != "message" {
        return Err(Error::Malformed("not a message stanza"));
    }
    let message =
        stanza::Message::from_node(node.clone()).map_err(|_| Error::Malformed("message stanza"))?;
    if message.id.is_empty() || message.id.len() > MAX_ID_LEN {
        return Err(Error::Malformed("message id length"));
    }
    let sender = message
        .from
        .as_deref()
        .and_then(parse_device_jid)
        .ok_or(Error::Malformed("message without a sender device address"))?;
    let mine = match message.encs.first() {
        Some(direct) => Some(direct),
        None => message
            .participants
            .iter()
            .find(|p| parse_device_jid(&p.jid).as_ref() == Some(me))
            .and_then(|p| p.encs.first()),
    };
    let enc = enc_of(mine.ok_or(Error::Malformed("no enc for this device"))?)?;
    Ok(Incoming { id: message.id, sender, enc })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: &str, d: u8) -> DeviceAddress {
        DeviceAddress::new(a, d).unwrap()
    }

    /// What the gatekeeper delivers to `device` (docs/PROTOCOL.md 4.2): that device's `enc`
    /// only, `to` removed, `from` the sender device's address.
    pub(crate) fn delivered(node: &Node, sender: &DeviceAddress, device: &DeviceAddress) -> Node {
        let m = stanza::Message::from_node(node.clone()).unwrap();
        let p = m.participants.iter().find(|p| p.jid == device_jid(device)).unwrap();
        let mut copy = stanza::Message::new(m.id.clone(), m.kind).from(device_jid(sender));
        copy.encs.clone_from(&p.encs);
        copy.into_node()
    }

    #[test]
    fn builds_one_payload_per_device_and_parses_the_right_one() {
        let encs = vec![
            (addr("bob", 1), Enc { kind: EncKind::PreKey, ciphertext: vec![1] }),
            (addr("bob", 2), Enc { kind: EncKind::Message, ciphertext: vec![2] }),
            (addr("alice", 3), Enc { kind: EncKind::Message, ciphertext: vec![3] }),
        ];
        let node = message_stanza("abc", "bob", MessageType::Text, &encs);
        let m = stanza::Message::from_node(node.clone()).unwrap();
        assert_eq!(m.to.as_deref(), Some("bob@s.interop"));
        let jids: Vec<&str> = m.participants.iter().map(|p| p.jid.as_str()).collect();
        assert_eq!(jids, ["bob:1@s.interop", "bob:2@s.interop", "alice:3@s.interop"]);
        assert_eq!(m.participants[0].encs[0].kind, stanza::EncType::Pkmsg);

        let alice1 = addr("alice", 1);
        let got =
            parse_incoming(&delivered(&node, &alice1, &addr("bob", 2)), &addr("bob", 2)).unwrap();
        assert_eq!((got.id.as_str(), &got.sender, &got.enc), ("abc", &alice1, &encs[1].1));
        let got = parse_incoming(&delivered(&node, &alice1, &addr("alice", 3)), &addr("alice", 3))
            .unwrap();
        assert_eq!(got.enc.ciphertext, vec![3]);
        // The undelivered fan-out form also parses for a listed device, not for others.
        let with_from = stanza::Message { from: Some(device_jid(&alice1)), ..m };
        assert_eq!(
            parse_incoming(&with_from.clone().into_node(), &addr("bob", 1)).unwrap().enc,
            encs[0].1
        );
        assert!(parse_incoming(&with_from.into_node(), &addr("bob", 9)).is_err());
    }

    #[test]
    fn device_addresses() {
        assert_eq!(parse_device_jid("alice:3@s.interop"), Some(addr("alice", 3)));
        assert_eq!(parse_device_jid("alice.acme:3@s.interop"), Some(addr("alice", 3)));
        for bad in [
            "alice@s.interop",
            "alice:3@g.interop",
            "alice:03@s.interop",
            "alice:x@s.interop",
            ":3@s.interop",
            "alice:999@s.interop",
        ] {
            assert_eq!(parse_device_jid(bad), None, "{bad}");
        }
        assert_eq!(device_jid(&addr("bob", 2)), "bob:2@s.interop");
    }

    #[test]
    fn refuses_bad_stanzas() {
        let msg = |v: &str, t: &str, b: Vec<u8>| {
            Node::new("message")
                .with_attr("id", "1")
                .with_attr("from", "a:1@s.interop")
                .with_attr("type", "text")
                .with_children(vec![
                    Node::new("enc").with_attr("v", v).with_attr("type", t).with_bytes(b),
                ])
        };
        let me = addr("b", 1);
        assert!(parse_incoming(&msg("2", "msg", vec![1]), &me).is_ok());
        assert!(matches!(
            parse_incoming(&msg("1", "msg", vec![1]), &me),
            Err(Error::UnsupportedVersion)
        ));
        assert!(parse_incoming(&msg("2", "nope", vec![1]), &me).is_err());
        assert!(parse_incoming(&msg("2", "msg", vec![]), &me).is_err());
        assert!(parse_incoming(&msg("2", "msg", vec![0; MAX_ENC_LEN + 1]), &me).is_err());
        let no_device = msg("2", "msg", vec![1]).with_attr("from", "a@s.interop");
        assert!(parse_incoming(&no_device, &me).is_err());
        assert!(parse_incoming(&Node::new("iq"), &me).is_err());
    }
}

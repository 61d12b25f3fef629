//! `message` and its `enc` payloads.

use super::{Attrs, decimal, nodes, put_opt, string_enum, take_children};
use crate::{Content, Error, Node, Result};

string_enum! {
    /// What a message carries (the `type` attribute of `message`).
    MessageType {
        /// Text (and everything that is not media: reactions, edits, deletes).
        Text = "text",
        /// Media: the content holds a media descriptor.
        Media = "media",
    }
}

string_enum! {
    /// The Signal message type of an `enc` (its `type` attribute).
    EncType {
        /// A PreKeySignalMessage: the first message of a session (PQXDH).
        Pkmsg = "pkmsg",
        /// A SignalMessage in an established session.
        Msg = "msg",
        /// A SenderKeyMessage (groups).
        Skmsg = "skmsg",
    }
}

/// One encrypted payload: `<enc v="2" type="msg" mediatype="image">ciphertext</enc>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Enc {
    /// Encryption version (`v`); 2 today.
    pub version: u32,
    /// Signal message type.
    pub kind: EncType,
    /// Media type hint for the recipient (`image`, `video`, `audio`, `voice`, `document`,
    /// `sticker`, ...), so it can prepare before decrypting. Not authenticated: a hint only.
    pub media_type: Option<String>,
    /// The Signal ciphertext, raw.
    pub ciphertext: Vec<u8>,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
}

impl Enc {
    /// The current encryption version.
    pub const VERSION: u32 = 2;

    /// An `enc` of the current version.
    pub fn new(kind: EncType, ciphertext: Vec<u8>) -> Self {
        Self { version: Self::VERSION, kind, media_type: None, ciphertext, extra_attrs: Vec::new() }
    }

    /// Sets the media type hint.
    pub fn media_type(mut self, media_type: impl Into<String>) -> Self {
        self.media_type = Some(media_type.into());
        self
    }

    /// The `<enc>` node: attributes `v`, `type`, `mediatype`, then unknown ones.
    pub fn into_node(self) -> Node {
        let mut n = Node::new("enc")
            .with_attr("v", self.version.to_string())
            .with_attr("type", self.kind.as_str());
        put_opt(&mut n, "mediatype", self.media_type);
        n.attrs.extend(self.extra_attrs);
        n.content = Content::Bytes(self.ciphertext);
        n
    }

    /// Parses an `<enc>` node.
    pub fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "enc")?;
        let version = a.parse("v", decimal::<u32>)?;
        let kind = a.parse("type", EncType::parse)?;
        let media_type = a.take("mediatype");
        let ciphertext = a.bytes("enc ciphertext")?;
        Ok(Self { version, kind, media_type, ciphertext, extra_attrs: a.rest() })
    }
}

/// The payloads for one device when a message fans out to several:
/// `<participants><to jid="bob.7:2@s.interop"><enc .../></to></participants>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Participant {
    /// The device address.
    pub jid: String,
    /// Its payloads (normally one).
    pub encs: Vec<Enc>,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
}

impl Participant {
    /// One device's payload.
    pub fn new(jid: impl Into<String>, enc: Enc) -> Self {
        Self { jid: jid.into(), encs: vec![enc], extra_attrs: Vec::new() }
    }

    fn into_node(self) -> Node {
        let mut n = Node::new("to").with_attr("jid", self.jid);
        n.attrs.extend(self.extra_attrs);
        n.content = nodes(self.encs.into_iter().map(Enc::into_node).collect());
        n
    }

    fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "to")?;
        let jid = a.require("jid")?;
        let encs = a.children("to/enc")?.into_iter().map(Enc::from_node).collect::<Result<_>>()?;
        Ok(Self { jid, encs, extra_attrs: a.rest() })
    }
}

/// An end-to-end encrypted message:
/// `<message id to|from type t><enc/>...<participants>...</participants></message>`.
///
/// A message to one device carries its `enc` directly; a message to several devices (the
/// recipient's and the sender's other devices) carries one `participants/to` per device.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique per sender (lowercase hex by convention).
    pub id: String,
    /// Recipient (client to server).
    pub to: Option<String>,
    /// Sender (server to client; the server sets it).
    pub from: Option<String>,
    /// What the message carries.
    pub kind: MessageType,
    /// Sender's timestamp, seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Payloads for a single device.
    pub encs: Vec<Enc>,
    /// Payloads per device.
    pub participants: Vec<Participant>,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
    /// Children this version does not know, kept in order.
    pub extra_children: Vec<Node>,
}

impl Message {
    /// A message with no payload yet.
    pub fn new(id: impl Into<String>, kind: MessageType) -> Self {
        Self {
            id: id.into(),
            to: None,
            from: None,
            kind,
            timestamp: None,
            encs: Vec::new(),
            participants: Vec::new(),
            extra_attrs: Vec::new(),
            extra_children: Vec::new(),
        }
    }

    /// Sets the recipient.
    pub fn to(mut self, to: impl Into<String>) -> Self {
        self.to = Some(to.into());
        self
    }

    /// Sets the sender.
    pub fn from(mut self, from: impl Into<String>) -> Self {
        self.from = Some(from.into());
        self
    }

    /// Sets the timestamp (seconds).
    pub fn timestamp(mut self, t: u64) -> Self {
        self.timestamp = Some(t);
        self
    }

    /// Adds a single-device payload.
    pub fn with_enc(mut self, enc: Enc) -> Self {
        self.encs.push(enc);
        self
    }

    /// Adds one device's payload.
    pub fn with_participant(mut self, p: Participant) -> Self {
        self.participants.push(p);
        self
    }

    /// The node: attributes `id`, `to`, `from`, `type`, `t`, then unknown ones; children `enc`*,
    /// `participants`, then unknown ones.
    pub fn into_node(self) -> Node {
        let mut n = Node::new("message").with_attr("id", self.id);
        put_opt(&mut n, "to", self.to);
        put_opt(&mut n, "from", self.from);
        n.attrs.push(("type".into(), self.kind.as_str().into()));
        put_opt(&mut n, "t", self.timestamp);
        n.attrs.extend(self.extra_attrs);
        let mut children: Vec<Node> = self.encs.into_iter().map(Enc::into_node).collect();
        if !self.participants.is_empty() {
            let to = self.participants.into_iter().map(Participant::into_node).collect();
            children.push(Node::new("participants").with_children(to));
        }
        children.extend(self.extra_children);
        n.content = nodes(children);
        n
    }

    /// Parses a `message` node.
    pub fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "message")?;
        let id = a.require("id")?;
        let to = a.take("to");
        let from = a.take("from");
        let kind = a.parse("type", MessageType::parse)?;
        let timestamp = a.parse_opt("t", decimal::<u64>)?;
        let mut children = a.children("message children")?;
        let encs = take_children(&mut children, "enc")
            .into_iter()
            .map(Enc::from_node)
            .collect::<Result<_>>()?;
        let mut participants = Vec::new();
        for p in take_children(&mut children, "participants") {
            if !p.attrs.is_empty() || p.bytes().is_some() {
                return Err(Error::InvalidAttribute("participants"));
            }
            for to in Attrs::of(p, "participants")?.children("participants/to")? {
                participants.push(Participant::from_node(to)?);
            }
        }
        Ok(Self {
            id,
            to,
            from,
            kind,
            timestamp,
            encs,
            participants,
            extra_attrs: a.rest(),
            extra_children: children,
        })
    }
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Participant").field(&self.clone().into_node()).finish()
    }
}

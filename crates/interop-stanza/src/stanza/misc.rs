//! `receipt`, `ack`, `presence`, `chatstate`, `notification`, `stream:error`.

use super::{Attrs, StreamCondition, decimal, nodes, put_opt, string_enum, take_child};
use crate::{Error, Node, Result};

string_enum! {
    /// What a receipt acknowledges (`type`; a delivery receipt has no `type`).
    ReceiptType {
        /// The recipient device stored the message.
        Delivery = "delivery",
        /// The recipient read the message.
        Read = "read",
        /// The recipient could not decrypt: please re-encrypt and resend.
        Retry = "retry",
    }
}

/// `<receipt id to|from type t><list><item id/>...</list><retry count/></receipt>`.
///
/// Several messages are acknowledged at once with `id` (the first) and `list/item` (the rest).
/// A delivery receipt has no `type` attribute.
#[derive(Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The first (or only) message id.
    pub id: String,
    /// Where the receipt goes (the message's sender).
    pub to: Option<String>,
    /// Who sends it (set by the server).
    pub from: Option<String>,
    /// Delivery, read or retry.
    pub kind: ReceiptType,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// More message ids (batched receipts).
    pub more_ids: Vec<String>,
    /// For a retry: how many times this message was retried so far (`retry count`).
    pub retry_count: Option<u32>,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
    /// Children this version does not know, kept in order.
    pub extra_children: Vec<Node>,
}

impl Receipt {
    /// A receipt for one message.
    pub fn new(id: impl Into<String>, kind: ReceiptType) -> Self {
        Self {
            id: id.into(),
            to: None,
            from: None,
            kind,
            timestamp: None,
            more_ids: Vec::new(),
            retry_count: None,
            extra_attrs: Vec::new(),
            extra_children: Vec::new(),
        }
    }

    /// Sets the recipient.
    pub fn to(mut self, to: impl Into<String>) -> Self {
        self.to = Some(to.into());
        self
    }

    /// Sets the timestamp (seconds).
    pub fn timestamp(mut self, t: u64) -> Self {
        self.timestamp = Some(t);
        self
    }

    /// Adds message ids.
    pub fn with_ids(mut self, ids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.more_ids.extend(ids.into_iter().map(Into::into));
        self
    }

    /// Every message id this receipt covers.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.id.as_str()).chain(self.more_ids.iter().map(String::as_str))
    }

    /// The node: attributes `id`, `to`, `from`, `type` (not for delivery), `t`, then unknown
    /// ones; children `list`, `retry`, then unknown ones.
    pub fn into_node(self) -> Node {
        let mut n = Node::new("receipt").with_attr("id", self.id);
        put_opt(&mut n, "to", self.to);
        put_opt(&mut n, "from", self.from);
        if self.kind != ReceiptType::Delivery {
            n.attrs.push(("type".into(), self.kind.as_str().into()));
        }
        put_opt(&mut n, "t", self.timestamp);
        n.attrs.extend(self.extra_attrs);
        let mut children = Vec::new();
        if !self.more_ids.is_empty() {
            let items = self.more_ids.into_iter().map(|id| Node::new("item").with_attr("id", id));
            children.push(Node::new("list").with_children(items.collect()));
        }
        if let Some(count) = self.retry_count {
            children.push(Node::new("retry").with_attr("count", count.to_string()));
        }
        children.extend(self.extra_children);
        n.content = nodes(children);
        n
    }

    /// Parses a `receipt` node.
    pub fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "receipt")?;
        let id = a.require("id")?;
        let to = a.take("to");
        let from = a.take("from");
        let kind = match a.take("type") {
            None => ReceiptType::Delivery,
            // An explicit "delivery" would not round-trip: the canonical form omits it.
            Some(t) if t == "delivery" => return Err(Error::InvalidAttribute("type")),
            Some(t) => ReceiptType::parse(&t).ok_or(Error::InvalidAttribute("type"))?,
        };
        let timestamp = a.parse_opt("t", decimal::<u64>)?;
        let mut children = a.children("receipt children")?;
        let mut more_ids = Vec::new();
        if let Some(list) = take_child(&mut children, "list") {
            for item in Attrs::of(list, "list")?.children("list/item")? {
                let mut item = Attrs::of(item, "item")?;
                more_ids.push(item.require("id")?);
            }
        }
        let retry_count = match take_child(&mut children, "retry") {
            Some(r) => Some(Attrs::of(r, "retry")?.parse("count", decimal::<u32>)?),
            None => None,
        };
        Ok(Self {
            id,
            to,
            from,
            kind,
            timestamp,
            more_ids,
            retry_count,
            extra_attrs: a.rest(),
            extra_children: children,
        })
    }
}

string_enum! {
    /// What an ack acknowledges (`class`).
    AckClass {
        /// A `message`.
        Message = "message",
        /// A `receipt`.
        Receipt = "receipt",
        /// A `notification`.
        Notification = "notification",
    }
}

/// `<ack id class type? to|from error?/>`: the receiver has durably stored the stanza (or, with
/// `error`, refused it).
#[derive(Clone, PartialEq, Eq)]
pub struct Ack {
    /// The acknowledged stanza's id.
    pub id: String,
    /// The acknowledged stanza's tag.
    pub class: AckClass,
    /// The acknowledged stanza's `type`, when it had one.
    pub kind: Option<String>,
    /// Recipient.
    pub to: Option<String>,
    /// Sender.
    pub from: Option<String>,
    /// Why the stanza was refused (an error code of the protocol document), if it was.
    pub error: Option<String>,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
}

impl Ack {
    /// An ack of `class` with `id`.
    pub fn new(id: impl Into<String>, class: AckClass) -> Self {
        Self {
            id: id.into(),
            class,
            kind: None,
            to: None,
            from: None,
            error: None,
            extra_attrs: Vec::new(),
        }
    }

    /// Marks the ack as a refusal.
    pub fn error(mut self, code: impl Into<String>) -> Self {
        self.error = Some(code.into());
        self
    }

    /// The node: attributes `id`, `class`, `type`, `to`, `from`, `error`, then unknown ones.
    pub fn into_node(self) -> Node {
        let mut n =
            Node::new("ack").with_attr("id", self.id).with_attr("class", self.class.as_str());
        put_opt(&mut n, "type", self.kind);
        put_opt(&mut n, "to", self.to);
        put_opt(&mut n, "from", self.from);
        put_opt(&mut n, "error", self.error);
        n.attrs.extend(self.extra_attrs);
        n
    }

    /// Parses an `ack` node (it has no content).
    pub fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "ack")?;
        if !a.children("ack")?.is_empty() {
            return Err(Error::InvalidAttribute("ack content"));
        }
        Ok(Self {
            id: a.require("id")?,
            class: a.parse("class", AckClass::parse)?,
            kind: a.take("type"),
            to: a.take("to"),
            from: a.take("from"),
            error: a.take("error"),
            extra_attrs: a.rest(),
        })
    }
}

string_enum! {
    /// `presence` types.
    PresenceType {
        /// The sender is online.
        Available = "available",
        /// The sender went offline (`last` says when).
        Unavailable = "unavailable",
        /// Ask for a contact's presence.
        Subscribe = "subscribe",
        /// Stop receiving a contact's presence.
        Unsubscribe = "unsubscribe",
    }
}

/// `<presence type to|from last/>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Presence {
    /// The presence type.
    pub kind: PresenceType,
    /// The contact (subscribe / unsubscribe).
    pub to: Option<String>,
    /// Whose presence (server to client).
    pub from: Option<String>,
    /// Last seen, seconds since the Unix epoch (with `unavailable`).
    pub last: Option<u64>,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
    /// Children this version does not know, kept in order.
    pub extra_children: Vec<Node>,
}

impl Presence {
    /// A presence of `kind`.
    pub fn new(kind: PresenceType) -> Self {
        Self {
            kind,
            to: None,
            from: None,
            last: None,
            extra_attrs: Vec::new(),
            extra_children: Vec::new(),
        }
    }

    /// The node: attributes `type`, `to`, `from`, `last`, then unknown ones.
    pub fn into_node(self) -> Node {
        let mut n = Node::new("presence").with_attr("type", self.kind.as_str());
        put_opt(&mut n, "to", self.to);
        put_opt(&mut n, "from", self.from);
        put_opt(&mut n, "last", self.last);
        n.attrs.extend(self.extra_attrs);
        n.content = nodes(self.extra_children);
        n
    }

    /// Parses a `presence` node.
    pub fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "presence")?;
        Ok(Self {
            kind: a.parse("type", PresenceType::parse)?,
            to: a.take("to"),
            from: a.take("from"),
            last: a.parse_opt("last", decimal::<u64>)?,
            extra_children: a.children("presence children")?,
            extra_attrs: a.rest(),
        })
    }
}

string_enum! {
    /// Chat states.
    ChatStateKind {
        /// The sender is typing (or recording, with `media="audio"` on the child).
        Composing = "composing",
        /// The sender stopped.
        Paused = "paused",
    }
}

/// `<chatstate to|from><composing/></chatstate>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ChatState {
    /// The chat partner.
    pub to: Option<String>,
    /// Who is typing (server to client).
    pub from: Option<String>,
    /// The state.
    pub state: ChatStateKind,
    /// `media` attribute of the state child (`audio` when recording a voice message).
    pub media: Option<String>,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
}

impl ChatState {
    /// A chat state towards `to`.
    pub fn new(to: impl Into<String>, state: ChatStateKind) -> Self {
        Self { to: Some(to.into()), from: None, state, media: None, extra_attrs: Vec::new() }
    }

    /// The node.
    pub fn into_node(self) -> Node {
        let mut n = Node::new("chatstate");
        put_opt(&mut n, "to", self.to);
        put_opt(&mut n, "from", self.from);
        n.attrs.extend(self.extra_attrs);
        let mut state = Node::new(self.state.as_str());
        put_opt(&mut state, "media", self.media);
        n.with_children(vec![state])
    }

    /// Parses a `chatstate` node: exactly one state child.
    pub fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "chatstate")?;
        let to = a.take("to");
        let from = a.take("from");
        let children = a.children("chatstate state")?;
        let [child] =
            <[Node; 1]>::try_from(children).map_err(|_| Error::MissingChild("chatstate state"))?;
        let state =
            ChatStateKind::parse(&child.tag).ok_or(Error::MissingChild("chatstate state"))?;
        let tag: &'static str = state.as_str();
        let mut c = Attrs::of(child, tag)?;
        let media = c.take("media");
        if !c.rest().is_empty() {
            return Err(Error::InvalidAttribute("chatstate state"));
        }
        Ok(Self { to, from, state, media, extra_attrs: a.rest() })
    }
}

/// `<notification id type from t>...</notification>`: a server event (device list changed,
/// prekeys low, account change). Children are kept as nodes: their meaning depends on `type`.
#[derive(Clone, PartialEq, Eq)]
pub struct Notification {
    /// Unique per sender; the client acks it.
    pub id: String,
    /// What happened (`devices`, `encrypt`, `account`, `server_sync`, ...).
    pub kind: String,
    /// Who it is about / from.
    pub from: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// The details.
    pub children: Vec<Node>,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
}

impl Notification {
    /// A notification without details.
    pub fn new(id: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            from: None,
            timestamp: None,
            children: Vec::new(),
            extra_attrs: Vec::new(),
        }
    }

    /// The node: attributes `id`, `type`, `from`, `t`, then unknown ones.
    pub fn into_node(self) -> Node {
        let mut n = Node::new("notification").with_attr("id", self.id).with_attr("type", self.kind);
        put_opt(&mut n, "from", self.from);
        put_opt(&mut n, "t", self.timestamp);
        n.attrs.extend(self.extra_attrs);
        n.content = nodes(self.children);
        n
    }

    /// Parses a `notification` node.
    pub fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "notification")?;
        Ok(Self {
            id: a.require("id")?,
            kind: a.require("type")?,
            from: a.take("from"),
            timestamp: a.parse_opt("t", decimal::<u64>)?,
            children: a.children("notification children")?,
            extra_attrs: a.rest(),
        })
    }
}

/// `<stream:error condition text?/>`: the server closes the connection after sending it.
#[derive(Clone, PartialEq, Eq)]
pub struct StreamError {
    /// The RFC 6120 stream error condition.
    pub condition: StreamCondition,
    /// Human-readable text for debugging.
    pub text: Option<String>,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
    /// Children this version does not know, kept in order.
    pub extra_children: Vec<Node>,
}

impl StreamError {
    /// A stream error without text.
    pub fn new(condition: StreamCondition) -> Self {
        Self { condition, text: None, extra_attrs: Vec::new(), extra_children: Vec::new() }
    }

    /// The node.
    pub fn into_node(self) -> Node {
        let mut n = Node::new("stream:error").with_attr("condition", self.condition.as_str());
        put_opt(&mut n, "text", self.text);
        n.attrs.extend(self.extra_attrs);
        n.content = nodes(self.extra_children);
        n
    }

    /// Parses a `stream:error` node.
    pub fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "stream:error")?;
        Ok(Self {
            condition: a.parse("condition", StreamCondition::parse)?,
            text: a.take("text"),
            extra_children: a.children("stream:error children")?,
            extra_attrs: a.rest(),
        })
    }
}

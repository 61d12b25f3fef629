//! Typed stanzas: builders and parsers over [`Node`].
//!
//! Every type converts with `into_node` and `from_node` (also `From`/`TryFrom`). Parsers are
//! strict about what they know (a required attribute missing, a value outside its domain, a
//! number not in shortest decimal form are errors) and keep what they do not know: unknown
//! attributes land in `extra_attrs`, unknown children in `extra_children`, and `into_node`
//! writes them back after the known ones. So `from_node(n)?.into_node() == n` for every node
//! whose known attributes and children come first, in the order `into_node` writes them (the
//! order of the golden vectors in `test-vectors/stanza/`).
//!
//! Stanza errors use the RFC 6120 condition names ([`Condition`], [`StreamCondition`]).

mod iq;
mod message;
mod misc;

use crate::{Content, Error, Node, Result};

pub use iq::{
    Contact, DeviceList, Iq, IqPayload, IqType, Key, MediaHost, MediaUploadInfo, PrekeyBundle,
    PrekeyUpload, SignedKey,
};
pub use message::{Enc, EncType, Message, MessageType, Participant};
pub use misc::{
    Ack, AckClass, ChatState, ChatStateKind, Notification, Presence, PresenceType, Receipt,
    ReceiptType, StreamError,
};

/// Declares a closed set of wire strings as an enum.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $var),+
        }

        impl $name {
            /// Every value, in protocol order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The wire string.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $s),+
                }
            }

            /// Parses the wire string.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($s => Some($name::$var),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_enum;

string_enum! {
    /// RFC 6120 §8.3.3 stanza error conditions.
    Condition {
        /// `bad-request`
        BadRequest = "bad-request",
        /// `conflict`
        Conflict = "conflict",
        /// `feature-not-implemented`
        FeatureNotImplemented = "feature-not-implemented",
        /// `forbidden`
        Forbidden = "forbidden",
        /// `gone`
        Gone = "gone",
        /// `internal-server-error`
        InternalServerError = "internal-server-error",
        /// `item-not-found`
        ItemNotFound = "item-not-found",
        /// `jid-malformed`
        JidMalformed = "jid-malformed",
        /// `not-acceptable`
        NotAcceptable = "not-acceptable",
        /// `not-allowed`
        NotAllowed = "not-allowed",
        /// `not-authorized`
        NotAuthorized = "not-authorized",
        /// `policy-violation`
        PolicyViolation = "policy-violation",
        /// `recipient-unavailable`
        RecipientUnavailable = "recipient-unavailable",
        /// `redirect`
        Redirect = "redirect",
        /// `registration-required`
        RegistrationRequired = "registration-required",
        /// `remote-server-not-found`
        RemoteServerNotFound = "remote-server-not-found",
        /// `remote-server-timeout`
        RemoteServerTimeout = "remote-server-timeout",
        /// `resource-constraint`
        ResourceConstraint = "resource-constraint",
        /// `service-unavailable`
        ServiceUnavailable = "service-unavailable",
        /// `subscription-required`
        SubscriptionRequired = "subscription-required",
        /// `undefined-condition`
        UndefinedCondition = "undefined-condition",
        /// `unexpected-request`
        UnexpectedRequest = "unexpected-request",
    }
}

string_enum! {
    /// RFC 6120 §4.9.3 stream error conditions.
    StreamCondition {
        /// `bad-format`
        BadFormat = "bad-format",
        /// `bad-namespace-prefix`
        BadNamespacePrefix = "bad-namespace-prefix",
        /// `conflict`
        Conflict = "conflict",
        /// `connection-timeout`
        ConnectionTimeout = "connection-timeout",
        /// `host-gone`
        HostGone = "host-gone",
        /// `host-unknown`
        HostUnknown = "host-unknown",
        /// `improper-addressing`
        ImproperAddressing = "improper-addressing",
        /// `internal-server-error`
        InternalServerError = "internal-server-error",
        /// `invalid-from`
        InvalidFrom = "invalid-from",
        /// `invalid-namespace`
        InvalidNamespace = "invalid-namespace",
        /// `invalid-xml`
        InvalidXml = "invalid-xml",
        /// `not-authorized`
        NotAuthorized = "not-authorized",
        /// `not-well-formed`
        NotWellFormed = "not-well-formed",
        /// `policy-violation`
        PolicyViolation = "policy-violation",
        /// `remote-connection-failed`
        RemoteConnectionFailed = "remote-connection-failed",
        /// `reset`
        Reset = "reset",
        /// `resource-constraint`
        ResourceConstraint = "resource-constraint",
        /// `restricted-xml`
        RestrictedXml = "restricted-xml",
        /// `see-other-host`
        SeeOtherHost = "see-other-host",
        /// `system-shutdown`
        SystemShutdown = "system-shutdown",
        /// `undefined-condition`
        UndefinedCondition = "undefined-condition",
        /// `unsupported-encoding`
        UnsupportedEncoding = "unsupported-encoding",
        /// `unsupported-feature`
        UnsupportedFeature = "unsupported-feature",
        /// `unsupported-stanza-type`
        UnsupportedStanzaType = "unsupported-stanza-type",
        /// `unsupported-version`
        UnsupportedVersion = "unsupported-version",
    }
}

string_enum! {
    /// RFC 6120 §8.3.2 error types: what the sender should do.
    ErrorType {
        /// Retry after providing credentials.
        Auth = "auth",
        /// Do not retry.
        Cancel = "cancel",
        /// Proceed (the condition was only a warning).
        Continue = "continue",
        /// Retry after changing the data sent.
        Modify = "modify",
        /// Retry after waiting.
        Wait = "wait",
    }
}

/// A stanza error: `<error type="cancel" condition="item-not-found" text="..."/>`, the child
/// of an `iq` of type `error`.
#[derive(Clone, PartialEq, Eq)]
pub struct StanzaError {
    /// What the sender should do.
    pub kind: ErrorType,
    /// The RFC 6120 condition.
    pub condition: Condition,
    /// Human-readable text for debugging, never shown to users.
    pub text: Option<String>,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
}

impl StanzaError {
    /// An error without text.
    pub fn new(kind: ErrorType, condition: Condition) -> Self {
        Self { kind, condition, text: None, extra_attrs: Vec::new() }
    }

    /// The `<error/>` node.
    pub fn into_node(self) -> Node {
        let mut n = Node::new("error")
            .with_attr("type", self.kind.as_str())
            .with_attr("condition", self.condition.as_str());
        put_opt(&mut n, "text", self.text);
        n.attrs.extend(self.extra_attrs);
        n
    }

    /// Parses an `<error/>` node.
    pub fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "error")?;
        let kind = a.parse("type", ErrorType::parse)?;
        let condition = a.parse("condition", Condition::parse)?;
        let text = a.take("text");
        Ok(Self { kind, condition, text, extra_attrs: a.rest() })
    }
}

/// Any stanza, parsed by its tag. Tags this version does not know stay [`Stanza::Other`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stanza {
    /// `message`
    Message(Message),
    /// `receipt`
    Receipt(Receipt),
    /// `ack`
    Ack(Ack),
    /// `iq`
    Iq(Iq),
    /// `presence`
    Presence(Presence),
    /// `chatstate`
    ChatState(ChatState),
    /// `notification`
    Notification(Notification),
    /// `stream:error`
    StreamError(StreamError),
    /// A tag this version does not know.
    Other(Node),
}

impl Stanza {
    /// Parses `node` by its tag.
    pub fn from_node(node: Node) -> Result<Self> {
        Ok(match node.tag.as_str() {
            "message" => Self::Message(Message::from_node(node)?),
            "receipt" => Self::Receipt(Receipt::from_node(node)?),
            "ack" => Self::Ack(Ack::from_node(node)?),
            "iq" => Self::Iq(Iq::from_node(node)?),
            "presence" => Self::Presence(Presence::from_node(node)?),
            "chatstate" => Self::ChatState(ChatState::from_node(node)?),
            "notification" => Self::Notification(Notification::from_node(node)?),
            "stream:error" => Self::StreamError(StreamError::from_node(node)?),
            _ => Self::Other(node),
        })
    }

    /// The node.
    pub fn into_node(self) -> Node {
        match self {
            Self::Message(s) => s.into_node(),
            Self::Receipt(s) => s.into_node(),
            Self::Ack(s) => s.into_node(),
            Self::Iq(s) => s.into_node(),
            Self::Presence(s) => s.into_node(),
            Self::ChatState(s) => s.into_node(),
            Self::Notification(s) => s.into_node(),
            Self::StreamError(s) => s.into_node(),
            Self::Other(n) => n,
        }
    }
}

/// Implements `From<T> for Node` and `TryFrom<Node> for T`.
macro_rules! node_conversions {
    ($($t:ty),+) => {$(
        impl From<$t> for Node {
            fn from(s: $t) -> Node {
                s.into_node()
            }
        }
        impl TryFrom<Node> for $t {
            type Error = Error;
            fn try_from(n: Node) -> Result<Self> {
                Self::from_node(n)
            }
        }
    )+};
}
/// `Debug` through the node form, which redacts identifiers and content (see [`Node`]).
macro_rules! debug_via_node {
    ($($t:ident),+) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($t)).field(&self.clone().into_node()).finish()
            }
        }
    )+};
}
debug_via_node!(
    Message,
    Enc,
    Receipt,
    Ack,
    Iq,
    Presence,
    ChatState,
    Notification,
    StreamError,
    StanzaError,
    Stanza
);

node_conversions!(
    Message,
    Enc,
    Receipt,
    Ack,
    Iq,
    Presence,
    ChatState,
    Notification,
    StreamError,
    StanzaError,
    Stanza
);

// ---------------------------------------------------------------------------------------------
// Parsing helpers

/// A node's attributes being consumed by a parser.
pub(crate) struct Attrs {
    attrs: Vec<(String, String)>,
    pub(crate) content: Content,
}

impl Attrs {
    /// Checks the tag and takes the node apart.
    pub(crate) fn of(node: Node, tag: &'static str) -> Result<Self> {
        if node.tag != tag {
            return Err(Error::UnexpectedTag { expected: tag });
        }
        Ok(Self { attrs: node.attrs, content: node.content })
    }

    /// Removes and returns attribute `name`.
    pub(crate) fn take(&mut self, name: &str) -> Option<String> {
        let i = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(i).1)
    }

    pub(crate) fn require(&mut self, name: &'static str) -> Result<String> {
        self.take(name).ok_or(Error::MissingAttribute(name))
    }

    pub(crate) fn parse<T>(&mut self, name: &'static str, f: fn(&str) -> Option<T>) -> Result<T> {
        let v = self.require(name)?;
        f(&v).ok_or(Error::InvalidAttribute(name))
    }

    pub(crate) fn parse_opt<T>(
        &mut self,
        name: &'static str,
        f: fn(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        self.take(name).map(|v| f(&v).ok_or(Error::InvalidAttribute(name))).transpose()
    }

    /// Unknown attributes, in order.
    pub(crate) fn rest(self) -> Vec<(String, String)> {
        self.attrs
    }

    /// Child nodes (none if the content is empty); bytes are an error.
    pub(crate) fn children(&mut self, what: &'static str) -> Result<Vec<Node>> {
        match std::mem::take(&mut self.content) {
            Content::Empty => Ok(Vec::new()),
            Content::Nodes(n) => Ok(n),
            Content::Bytes(_) => Err(Error::MissingChild(what)),
        }
    }

    /// Bytes content (required).
    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>> {
        match std::mem::take(&mut self.content) {
            Content::Bytes(b) => Ok(b),
            _ => Err(Error::MissingChild(what)),
        }
    }
}

/// Shortest-form decimal (no sign, no leading zero) that fits the type.
pub(crate) fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    let canonical = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s.len() == 1 || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

pub(crate) fn put_opt(n: &mut Node, name: &str, v: Option<impl ToString>) {
    if let Some(v) = v {
        n.attrs.push((name.to_owned(), v.to_string()));
    }
}

/// Removes and returns the first child with `tag`.
pub(crate) fn take_child(children: &mut Vec<Node>, tag: &str) -> Option<Node> {
    let i = children.iter().position(|c| c.tag == tag)?;
    Some(children.remove(i))
}

/// Removes and returns every child with `tag`, in order.
pub(crate) fn take_children(children: &mut Vec<Node>, tag: &str) -> Vec<Node> {
    let (taken, rest): (Vec<Node>, Vec<Node>) =
        std::mem::take(children).into_iter().partition(|c| c.tag == tag);
    *children = rest;
    taken
}

/// `Content::Nodes` unless `children` is empty.
pub(crate) fn nodes(children: Vec<Node>) -> Content {
    if children.is_empty() { Content::Empty } else { Content::Nodes(children) }
}

#[cfg(test)]
mod tests;

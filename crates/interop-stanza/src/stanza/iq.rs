//! `iq`: requests and results (prekeys, devices, contacts, media upload info) and errors.

use super::{Attrs, StanzaError, decimal, nodes, put_opt, string_enum, take_child, take_children};
use crate::{Error, Node, Result};

string_enum! {
    /// `iq` types (RFC 6120 §8.2.3).
    IqType {
        /// A request for information.
        Get = "get",
        /// A request to change something.
        Set = "set",
        /// A successful answer.
        Result = "result",
        /// A failed answer (an `error` child).
        Error = "error",
    }
}

/// A one-time prekey: `<key id="7">public key</key>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// Prekey id.
    pub id: u32,
    /// Serialized public key.
    pub public: Vec<u8>,
}

impl Key {
    fn into_node(self) -> Node {
        Node::new("key").with_attr("id", self.id.to_string()).with_bytes(self.public)
    }

    fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "key")?;
        let id = a.parse("id", decimal::<u32>)?;
        let public = a.bytes("key bytes")?;
        only_known(a, "key")?;
        Ok(Self { id, public })
    }
}

/// A signed prekey (`skey`) or Kyber prekey (`kyber`):
/// `<skey id="1"><value>public key</value><signature>sig</signature></skey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedKey {
    /// Prekey id.
    pub id: u32,
    /// Serialized public key.
    pub public: Vec<u8>,
    /// Signature by the identity key over `public`.
    pub signature: Vec<u8>,
}

impl SignedKey {
    fn into_node(self, tag: &str) -> Node {
        Node::new(tag).with_attr("id", self.id.to_string()).with_children(vec![
            Node::new("value").with_bytes(self.public),
            Node::new("signature").with_bytes(self.signature),
        ])
    }

    fn from_node(node: Node, tag: &'static str) -> Result<Self> {
        let mut a = Attrs::of(node, tag)?;
        let id = a.parse("id", decimal::<u32>)?;
        let mut children = a.children(tag)?;
        let public = bytes_child(&mut children, "value")?;
        let signature = bytes_child(&mut children, "signature")?;
        if !children.is_empty() {
            return Err(Error::InvalidAttribute(tag));
        }
        only_known(a, tag)?;
        Ok(Self { id, public, signature })
    }
}

/// The keys a device publishes (`iq type="set" xmlns="encrypt"`).
#[derive(Clone, PartialEq, Eq)]
pub struct PrekeyUpload {
    /// Signal registration id.
    pub registration_id: u32,
    /// Serialized identity public key.
    pub identity: Vec<u8>,
    /// Signed prekey.
    pub signed_prekey: SignedKey,
    /// Kyber prekeys (the last-resort one first).
    pub kyber_prekeys: Vec<SignedKey>,
    /// One-time prekeys.
    pub one_time_prekeys: Vec<Key>,
}

/// One device's prekey bundle (`iq type="result" xmlns="encrypt"`, `list/user`).
#[derive(Clone, PartialEq, Eq)]
pub struct PrekeyBundle {
    /// The device address.
    pub jid: String,
    /// Signal registration id.
    pub registration_id: u32,
    /// Serialized identity public key.
    pub identity: Vec<u8>,
    /// Signed prekey.
    pub signed_prekey: SignedKey,
    /// Kyber prekey.
    pub kyber_prekey: SignedKey,
    /// A one-time prekey, while the device has some left.
    pub one_time_prekey: Option<Key>,
}

/// One account's devices (`iq type="result" xmlns="devices"`, `list/user`).
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceList {
    /// The account address.
    pub jid: String,
    /// Its device ids.
    pub devices: Vec<u32>,
}

/// One contact lookup answer (`iq type="result" xmlns="contacts"`, `list/contact`).
#[derive(Clone, PartialEq, Eq)]
pub struct Contact {
    /// The user-visible identifier asked about.
    pub value: String,
    /// The internal address, if the identifier is enlisted.
    pub jid: Option<String>,
}

/// A media upload host.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaHost {
    /// Host name to upload to.
    pub hostname: String,
}

/// Media upload info (`iq type="result" xmlns="media"`, `media_conn`).
#[derive(Clone, PartialEq, Eq)]
pub struct MediaUploadInfo {
    /// Upload authorisation token (secret: never logged).
    pub auth: String,
    /// Seconds the token and hosts stay valid.
    pub ttl: u32,
    /// Hosts, preferred first.
    pub hosts: Vec<MediaHost>,
}

/// What an `iq` carries, by (`type`, `xmlns`, child).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IqPayload {
    /// No child (a bare `result`, e.g. after a successful upload).
    None,
    /// `set` / `encrypt`: registration, identity, skey, kyber*, list/key*.
    PrekeyUpload(PrekeyUpload),
    /// `get` / `encrypt`: `<count/>`.
    PrekeyCountRequest,
    /// `result` / `encrypt`: `<count value="n"/>`, one-time prekeys left on the server.
    PrekeyCount(u32),
    /// `get` / `encrypt`: `<key><user jid/>...</key>`, bundles wanted for these devices.
    PrekeyFetch(Vec<String>),
    /// `result` / `encrypt`: `<list><user jid>...</user>...</list>`.
    PrekeyBundles(Vec<PrekeyBundle>),
    /// `get` / `devices`: `<list><user jid/>...</list>`.
    DeviceListRequest(Vec<String>),
    /// `result` / `devices`: `<list><user jid><device id/>...</user>...</list>`.
    DeviceLists(Vec<DeviceList>),
    /// `get` / `contacts`: `<list><contact value/>...</list>`.
    ContactLookup(Vec<String>),
    /// `result` / `contacts`: `<list><contact value jid?/>...</list>`.
    Contacts(Vec<Contact>),
    /// `get` / `media`: `<media_conn/>`.
    MediaUploadInfoRequest,
    /// `result` / `media`: `<media_conn auth ttl><host hostname/>...</media_conn>`.
    MediaUploadInfo(MediaUploadInfo),
    /// `error`: `<error type condition text?/>`.
    Error(StanzaError),
    /// Anything else: the children, verbatim.
    Other(Vec<Node>),
}

/// `<iq id type to|from xmlns>payload</iq>`. A result or error carries the request's `id`
/// and `xmlns`.
#[derive(Clone, PartialEq, Eq)]
pub struct Iq {
    /// Request id, echoed by the answer.
    pub id: String,
    /// get / set / result / error.
    pub kind: IqType,
    /// Recipient (absent: the server).
    pub to: Option<String>,
    /// Sender (set by the server).
    pub from: Option<String>,
    /// The service: `encrypt`, `devices`, `contacts`, `media`.
    pub xmlns: Option<String>,
    /// The payload.
    pub payload: IqPayload,
    /// Attributes this version does not know, kept in order.
    pub extra_attrs: Vec<(String, String)>,
    /// Children this version does not know, after the payload's.
    pub extra_children: Vec<Node>,
}

impl Iq {
    /// An iq with a payload.
    pub fn new(
        id: impl Into<String>,
        kind: IqType,
        xmlns: Option<&str>,
        payload: IqPayload,
    ) -> Self {
        Self {
            id: id.into(),
            kind,
            to: None,
            from: None,
            xmlns: xmlns.map(str::to_owned),
            payload,
            extra_attrs: Vec::new(),
            extra_children: Vec::new(),
        }
    }

    /// The answer skeleton to this request: same id and xmlns, `to` = the request's `from`.
    pub fn result(&self, payload: IqPayload) -> Self {
        let mut r = Self::new(self.id.clone(), IqType::Result, self.xmlns.as_deref(), payload);
        r.to = self.from.clone();
        r
    }

    /// The error answer to this request.
    pub fn error(&self, error: StanzaError) -> Self {
        let mut r = self.result(IqPayload::Error(error));
        r.kind = IqType::Error;
        r
    }

    /// The node: attributes `id`, `type`, `to`, `from`, `xmlns`, then unknown ones.
    pub fn into_node(self) -> Node {
        let mut n = Node::new("iq").with_attr("id", self.id).with_attr("type", self.kind.as_str());
        put_opt(&mut n, "to", self.to);
        put_opt(&mut n, "from", self.from);
        put_opt(&mut n, "xmlns", self.xmlns);
        n.attrs.extend(self.extra_attrs);
        let mut children = payload_nodes(self.payload);
        children.extend(self.extra_children);
        n.content = nodes(children);
        n
    }

    /// Parses an `iq` node.
    pub fn from_node(node: Node) -> Result<Self> {
        let mut a = Attrs::of(node, "iq")?;
        let id = a.require("id")?;
        let kind = a.parse("type", IqType::parse)?;
        let to = a.take("to");
        let from = a.take("from");
        let xmlns = a.take("xmlns");
        let mut children = a.children("iq children")?;
        let payload = parse_payload(kind, xmlns.as_deref(), &mut children)?;
        Ok(Self {
            id,
            kind,
            to,
            from,
            xmlns,
            payload,
            extra_attrs: a.rest(),
            extra_children: children,
        })
    }
}

fn payload_nodes(p: IqPayload) -> Vec<Node> {
    let user = |jid: String| Node::new("user").with_attr("jid", jid);
    match p {
        IqPayload::None => Vec::new(),
        IqPayload::PrekeyUpload(u) => {
            let mut v = vec![
                Node::new("registration").with_attr("value", u.registration_id.to_string()),
                Node::new("identity").with_bytes(u.identity),
                u.signed_prekey.into_node("skey"),
            ];
            v.extend(u.kyber_prekeys.into_iter().map(|k| k.into_node("kyber")));
            if !u.one_time_prekeys.is_empty() {
                let keys = u.one_time_prekeys.into_iter().map(Key::into_node).collect();
                v.push(Node::new("list").with_children(keys));
            }
            v
        }
        IqPayload::PrekeyCountRequest => vec![Node::new("count")],
        IqPayload::PrekeyCount(n) => vec![Node::new("count").with_attr("value", n.to_string())],
        IqPayload::PrekeyFetch(jids) => {
            vec![Node::new("key").with_children(jids.into_iter().map(user).collect())]
        }
        IqPayload::PrekeyBundles(bundles) => {
            let users = bundles
                .into_iter()
                .map(|b| {
                    let mut c = vec![
                        Node::new("registration").with_attr("value", b.registration_id.to_string()),
                        Node::new("identity").with_bytes(b.identity),
                        b.signed_prekey.into_node("skey"),
                        b.kyber_prekey.into_node("kyber"),
                    ];
                    c.extend(b.one_time_prekey.map(Key::into_node));
                    user(b.jid).with_children(c)
                })
                .collect();
            vec![Node::new("list").with_children(users)]
        }
        IqPayload::DeviceListRequest(jids) => {
            vec![Node::new("list").with_children(jids.into_iter().map(user).collect())]
        }
        IqPayload::DeviceLists(lists) => {
            let users = lists
                .into_iter()
                .map(|l| {
                    let devices = l
                        .devices
                        .into_iter()
                        .map(|d| Node::new("device").with_attr("id", d.to_string()))
                        .collect();
                    user(l.jid).with_children(devices)
                })
                .collect();
            vec![Node::new("list").with_children(users)]
        }
        IqPayload::ContactLookup(values) => {
            let c = values.into_iter().map(|v| Node::new("contact").with_attr("value", v));
            vec![Node::new("list").with_children(c.collect())]
        }
        IqPayload::Contacts(contacts) => {
            let c = contacts.into_iter().map(|c| {
                let mut n = Node::new("contact").with_attr("value", c.value);
                put_opt(&mut n, "jid", c.jid);
                n
            });
            vec![Node::new("list").with_children(c.collect())]
        }
        IqPayload::MediaUploadInfoRequest => vec![Node::new("media_conn")],
        IqPayload::MediaUploadInfo(m) => {
            let hosts =
                m.hosts.into_iter().map(|h| Node::new("host").with_attr("hostname", h.hostname));
            vec![
                Node::new("media_conn")
                    .with_attr("auth", m.auth)
                    .with_attr("ttl", m.ttl.to_string())
                    .with_children(hosts.collect()),
            ]
        }
        IqPayload::Error(e) => vec![e.into_node()],
        IqPayload::Other(children) => children,
    }
}

fn parse_payload(kind: IqType, xmlns: Option<&str>, children: &mut Vec<Node>) -> Result<IqPayload> {
    use IqType::{Get, Result as Res, Set};
    let has = |tag: &str| children.iter().any(|c| c.tag == tag);
    Ok(match (kind, xmlns) {
        (IqType::Error, _) => {
            let e = take_child(children, "error").ok_or(Error::MissingChild("error"))?;
            IqPayload::Error(StanzaError::from_node(e)?)
        }
        (Set, Some("encrypt")) if has("identity") => IqPayload::PrekeyUpload(PrekeyUpload {
            registration_id: registration(children)?,
            identity: bytes_child(children, "identity")?,
            signed_prekey: signed(children, "skey")?,
            kyber_prekeys: take_children(children, "kyber")
                .into_iter()
                .map(|k| SignedKey::from_node(k, "kyber"))
                .collect::<Result<_>>()?,
            one_time_prekeys: match take_child(children, "list") {
                Some(list) => {
                    list_of(list)?.into_iter().map(Key::from_node).collect::<Result<_>>()?
                }
                None => Vec::new(),
            },
        }),
        (Get, Some("encrypt")) if has("count") => {
            let c = take_child(children, "count").expect("checked by has()");
            only_known(Attrs::of(c, "count")?, "count")?;
            IqPayload::PrekeyCountRequest
        }
        (Res, Some("encrypt")) if has("count") => {
            let c = take_child(children, "count").expect("checked by has()");
            let mut a = Attrs::of(c, "count")?;
            let n = a.parse("value", decimal::<u32>)?;
            only_known(a, "count")?;
            IqPayload::PrekeyCount(n)
        }
        (Get, Some("encrypt")) if has("key") => {
            let key = take_child(children, "key").expect("checked by has()");
            IqPayload::PrekeyFetch(users(list_of(key)?)?)
        }
        (Res, Some("encrypt")) if has("list") => {
            let list = take_child(children, "list").expect("checked by has()");
            let mut bundles = Vec::new();
            for u in list_of(list)? {
                let mut a = Attrs::of(u, "user")?;
                let jid = a.require("jid")?;
                let mut c = a.children("user keys")?;
                only_known(a, "user")?;
                let bundle = PrekeyBundle {
                    jid,
                    registration_id: registration(&mut c)?,
                    identity: bytes_child(&mut c, "identity")?,
                    signed_prekey: signed(&mut c, "skey")?,
                    kyber_prekey: signed(&mut c, "kyber")?,
                    one_time_prekey: take_child(&mut c, "key").map(Key::from_node).transpose()?,
                };
                if !c.is_empty() {
                    return Err(Error::InvalidAttribute("user keys"));
                }
                bundles.push(bundle);
            }
            IqPayload::PrekeyBundles(bundles)
        }
        (Get, Some("devices")) if has("list") => IqPayload::DeviceListRequest(users(list_of(
            take_child(children, "list").expect("has"),
        )?)?),
        (Res, Some("devices")) if has("list") => {
            let list = take_child(children, "list").expect("checked by has()");
            let mut lists = Vec::new();
            for u in list_of(list)? {
                let mut a = Attrs::of(u, "user")?;
                let jid = a.require("jid")?;
                let mut devices = Vec::new();
                for d in a.children("user devices")? {
                    let mut d = Attrs::of(d, "device")?;
                    devices.push(d.parse("id", decimal::<u32>)?);
                    only_known(d, "device")?;
                }
                only_known(a, "user")?;
                lists.push(DeviceList { jid, devices });
            }
            IqPayload::DeviceLists(lists)
        }
        (Get, Some("contacts")) if has("list") => {
            let list = take_child(children, "list").expect("checked by has()");
            let mut values = Vec::new();
            for c in list_of(list)? {
                let mut a = Attrs::of(c, "contact")?;
                values.push(a.require("value")?);
                only_known(a, "contact")?;
            }
            IqPayload::ContactLookup(values)
        }
        (Res, Some("contacts")) if has("list") => {
            let list = take_child(children, "list").expect("checked by has()");
            let mut contacts = Vec::new();
            for c in list_of(list)? {
                let mut a = Attrs::of(c, "contact")?;
                let value = a.require("value")?;
                let jid = a.take("jid");
                only_known(a, "contact")?;
                contacts.push(Contact { value, jid });
            }
            IqPayload::Contacts(contacts)
        }
        (Get, Some("media")) if has("media_conn") => {
            let m = take_child(children, "media_conn").expect("checked by has()");
            only_known(Attrs::of(m, "media_conn")?, "media_conn")?;
            IqPayload::MediaUploadInfoRequest
        }
        (Res, Some("media")) if has("media_conn") => {
            let m = take_child(children, "media_conn").expect("checked by has()");
            let mut a = Attrs::of(m, "media_conn")?;
            let auth = a.require("auth")?;
            let ttl = a.parse("ttl", decimal::<u32>)?;
            let mut hosts = Vec::new();
            for h in a.children("media_conn hosts")? {
                let mut h = Attrs::of(h, "host")?;
                hosts.push(MediaHost { hostname: h.require("hostname")? });
                only_known(h, "host")?;
            }
            only_known(a, "media_conn")?;
            IqPayload::MediaUploadInfo(MediaUploadInfo { auth, ttl, hosts })
        }
        _ if children.is_empty() => IqPayload::None,
        _ => IqPayload::Other(std::mem::take(children)),
    })
}

/// Nested payload elements have no room for unknown attributes: refuse them rather than drop
/// them silently.
fn only_known(mut a: Attrs, what: &'static str) -> Result<()> {
    let no_content = a.children(what).map(|c| c.is_empty()).unwrap_or(false);
    if !a.rest().is_empty() || !no_content {
        return Err(Error::InvalidAttribute(what));
    }
    Ok(())
}

fn bytes_child(children: &mut Vec<Node>, tag: &'static str) -> Result<Vec<u8>> {
    let n = take_child(children, tag).ok_or(Error::MissingChild(tag))?;
    let mut a = Attrs::of(n, tag)?;
    let b = a.bytes(tag)?;
    if !a.rest().is_empty() {
        return Err(Error::InvalidAttribute(tag));
    }
    Ok(b)
}

fn registration(children: &mut Vec<Node>) -> Result<u32> {
    let n = take_child(children, "registration").ok_or(Error::MissingChild("registration"))?;
    let mut a = Attrs::of(n, "registration")?;
    let id = a.parse("value", decimal::<u32>)?;
    only_known(a, "registration")?;
    Ok(id)
}

fn signed(children: &mut Vec<Node>, tag: &'static str) -> Result<SignedKey> {
    SignedKey::from_node(take_child(children, tag).ok_or(Error::MissingChild(tag))?, tag)
}

/// The children of a wrapper element that has no attributes.
fn list_of(n: Node) -> Result<Vec<Node>> {
    let tag = if n.tag == "key" { "key" } else { "list" };
    if !n.attrs.is_empty() {
        return Err(Error::InvalidAttribute(tag));
    }
    Attrs::of(n, tag)?.children(tag)
}

fn users(nodes: Vec<Node>) -> Result<Vec<String>> {
    nodes
        .into_iter()
        .map(|u| {
            let mut a = Attrs::of(u, "user")?;
            let jid = a.require("jid")?;
            only_known(a, "user")?;
            Ok(jid)
        })
        .collect()
}

// Redacting Debug: key material, registration ids, addresses, user-visible identifiers and
// upload tokens never appear; sizes and counts do.

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key {{ id: {}, public: {} bytes }}", self.id, self.public.len())
    }
}

impl std::fmt::Debug for SignedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignedKey {{ id: {}, public: {} bytes }}", self.id, self.public.len())
    }
}

impl std::fmt::Debug for PrekeyUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrekeyUpload")
            .field("signed_prekey", &self.signed_prekey)
            .field("kyber_prekeys", &self.kyber_prekeys.len())
            .field("one_time_prekeys", &self.one_time_prekeys.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PrekeyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrekeyBundle")
            .field("signed_prekey", &self.signed_prekey)
            .field("kyber_prekey", &self.kyber_prekey)
            .field("one_time_prekey", &self.one_time_prekey)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for DeviceList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceList {{ devices: {} }}", self.devices.len())
    }
}

impl std::fmt::Debug for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Contact {{ enlisted: {} }}", self.jid.is_some())
    }
}

impl std::fmt::Debug for MediaHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A server's host name, not user data.
        write!(f, "MediaHost({:?})", self.hostname)
    }
}

impl std::fmt::Debug for MediaUploadInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaUploadInfo")
            .field("ttl", &self.ttl)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for IqPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::PrekeyUpload(u) => f.debug_tuple("PrekeyUpload").field(u).finish(),
            Self::PrekeyCountRequest => f.write_str("PrekeyCountRequest"),
            Self::PrekeyCount(n) => f.debug_tuple("PrekeyCount").field(n).finish(),
            Self::PrekeyFetch(j) => write!(f, "PrekeyFetch({} devices)", j.len()),
            Self::PrekeyBundles(b) => f.debug_tuple("PrekeyBundles").field(b).finish(),
            Self::DeviceListRequest(j) => write!(f, "DeviceListRequest({} accounts)", j.len()),
            Self::DeviceLists(l) => f.debug_tuple("DeviceLists").field(l).finish(),
            Self::ContactLookup(v) => write!(f, "ContactLookup({} identifiers)", v.len()),
            Self::Contacts(c) => f.debug_tuple("Contacts").field(c).finish(),
            Self::MediaUploadInfoRequest => f.write_str("MediaUploadInfoRequest"),
            Self::MediaUploadInfo(m) => f.debug_tuple("MediaUploadInfo").field(m).finish(),
            Self::Error(e) => f.debug_tuple("Error").field(e).finish(),
            Self::Other(n) => f.debug_tuple("Other").field(n).finish(),
        }
    }
}

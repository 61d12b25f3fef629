//! The client: a profile (data directory) with its device key, Signal state and history, the
//! sign-up flows (interop via a provider, native via registration), and sending and receiving
//! end-to-end encrypted messages through the gatekeeper.
//!
//! A [`Client`] is driven from one thread (libsignal's futures are not `Send`): run it on a
//! current-thread runtime, or on a thread of its own that owns it.
//!
//! Rules it keeps (docs/PROTOCOL.md, section 4):
//! - a received message is acked only after its plaintext and the new session state are
//!   committed in one transaction ([`crate::store::SignalStore`]);
//! - a message is recorded as sent only once the gatekeeper acked it (stored durably);
//! - messages are de-duplicated by (sender, id).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use interop_e2ee::proto;
use interop_e2ee::stanza::{MessageType, message_stanza, parse_incoming};
use interop_e2ee::{Account, Bundle, DeviceAddress, OneTimeKey, PreKeyPolicy, SignedKey};
use interop_enlist::enlist::{
    self as enlist, Consent, KeyBundle, Prekey, Request, Response, SignedPrekey as WireSigned,
};
use interop_noise::proto::Product;
use interop_noise::{StaticKeypair, TrustAnchor};
use interop_stanza::Node;
use interop_stanza::stanza::{
    Ack, AckClass, Iq, IqPayload, IqType, Receipt, ReceiptType, StreamError,
};
use prost::Message as _;
use rand::SeedableRng;
use rand::rngs::StdRng;

mod media;

pub use media::{GATEKEEPER_HOST, MAX_FILE, Progress, media_type_of, mime_of};

use crate::connection::{ConnectOptions, Connection};
use crate::store::{Contact, MessageStatus, ProfileDb, SignalStore};
use crate::{Error, Result, keyfile};

/// The server part of addresses.
const SERVER: &str = "s.interop";
/// How long a request waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The interop notice version this client shows its users.
pub const CONSENT_VERSION: &str = "2026-01";

/// Settings keys in the profile database.
mod key {
    pub const ROLE: &str = "role";
    pub const SERVER: &str = "server";
    pub const ROOT_KEY: &str = "root_key";
    pub const SERVER_KEY: &str = "server_key";
    pub const ACCOUNT: &str = "address.account";
    pub const DEVICE: &str = "address.device";
    pub const INTEGRATOR: &str = "address.integrator";
    pub const PROVIDER_URL: &str = "provider.url";
    pub const PROVIDER_SESSION: &str = "provider.session";
    pub const READ_RECEIPTS: &str = "read_receipts";
}

/// Native (a gatekeeper user) or interop (a third-party provider's user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A gatekeeper-native user.
    Native,
    /// A third-party provider's user.
    Interop,
}

/// Where this device is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Gatekeeper account id.
    pub account: String,
    /// Device number.
    pub device: u32,
    /// Integrator id (interop accounts).
    pub integrator: Option<String>,
}

impl Address {
    /// The account's address as peers write it: `account[.integrator]@s.interop`.
    pub fn account_jid(&self) -> String {
        match &self.integrator {
            Some(i) => format!("{}.{i}@{SERVER}", self.account),
            None => format!("{}@{SERVER}", self.account),
        }
    }
}

/// Something that happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message arrived (and was stored and acked).
    Message(Received),
    /// A message arrived that could not be decrypted; a retry receipt was sent.
    Undecryptable {
        /// The sender's account.
        from_account: String,
        /// The message id.
        id: String,
    },
    /// A receipt for a message this account sent.
    Receipt {
        /// Who sent the receipt (their account).
        from_account: String,
        /// The message ids it covers.
        ids: Vec<String>,
        /// Delivery, read or retry.
        kind: ReceiptType,
    },
    /// A contact's identity key changed (reinstall, new phone, or an attack): compare the new
    /// safety number.
    IdentityChanged {
        /// Their account.
        account: String,
        /// The new safety number.
        safety_number: String,
    },
    /// A contact is typing (or stopped).
    ChatState {
        /// Their account.
        from_account: String,
        /// `composing` or `paused`.
        state: String,
    },
}

/// A received message, as the user sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Received {
    /// The message id.
    pub id: String,
    /// The sender's account.
    pub from_account: String,
    /// The sender's device.
    pub from_device: u8,
    /// What it says: text, or a description of content this client shows otherwise.
    pub body: Body,
    /// The message this one replies to (its id), if it quotes one.
    pub reply_to: Option<String>,
    /// The media descriptor, for image, video, voice and file messages
    /// ([`Client::download`] fetches it).
    pub media: Option<Box<proto::Media>>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received").field("from_device", &self.from_device).finish_non_exhaustive()
    }
}

/// The content of a message.
#[derive(Clone, PartialEq, Eq)]
pub enum Body {
    /// Text.
    Text(String),
    /// An image, video, voice message or file: its kind, file name and size.
    Media {
        /// `image`, `video`, `voice` or `file`.
        kind: &'static str,
        /// The file name the sender gave (may be empty).
        file_name: String,
        /// Plaintext size in bytes.
        size: u64,
        /// The caption.
        caption: String,
    },
    /// A reaction to an earlier message.
    Reaction {
        /// The message reacted to.
        target: String,
        /// The emoji (empty: the reaction was removed).
        emoji: String,
    },
    /// A new text for an earlier message of the same sender.
    Edit {
        /// The message edited.
        target: String,
        /// Its new text.
        text: String,
    },
    /// The sender deleted an earlier message.
    Delete {
        /// The message deleted.
        target: String,
    },
    /// Content this client cannot show: "unsupported in this chat", never dropped silently.
    Unsupported(String),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Body::Text(_) => "Body::Text",
            Body::Media { .. } => "Body::Media",
            Body::Reaction { .. } => "Body::Reaction",
            Body::Edit { .. } => "Body::Edit",
            Body::Delete { .. } => "Body::Delete",
            Body::Unsupported(_) => "Body::Unsupported",
        })
    }
}

impl std::fmt::Display for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Text(t) => f.write_str(t),
            Body::Media { kind, file_name, size, caption } => {
                write!(f, "[{kind}: {file_name}, {size} bytes]")?;
                if !caption.is_empty() {
                    write!(f, " {caption}")?;
                }
                Ok(())
            }
            Body::Reaction { emoji, .. } if emoji.is_empty() => f.write_str("[removed a reaction]"),
            Body::Reaction { emoji, .. } => write!(f, "[reacted {emoji}]"),
            Body::Edit { text, .. } => write!(f, "[edited] {text}"),
            Body::Delete { .. } => f.write_str("[deleted a message]"),
            Body::Unsupported(kind) => write!(f, "[{kind}: unsupported in this chat]"),
        }
    }
}

/// Describes a decoded content message for display.
pub fn body_of(message: &proto::Message) -> Body {
    use interop_e2ee::Content;
    match interop_e2ee::content(message) {
        Content::Text(t) => Body::Text(t.body.clone()),
        Content::Image(m) | Content::Video(m) | Content::Voice(m) | Content::File(m) => {
            let kind = match interop_e2ee::content(message) {
                Content::Image(_) => "image",
                Content::Video(_) => "video",
                Content::Voice(_) => "voice",
                _ => "file",
            };
            Body::Media {
                kind,
                file_name: m.file_name.clone(),
                size: m.size,
                caption: m.caption.clone(),
            }
        }
        Content::Reaction(r) => {
            Body::Reaction { target: r.target_id.clone(), emoji: r.emoji.clone() }
        }
        Content::Edit(e) => Body::Edit {
            target: e.target_id.clone(),
            text: e.text.as_ref().map(|t| t.body.clone()).unwrap_or_default(),
        },
        Content::Delete(d) => Body::Delete { target: d.target_id.clone() },
        Content::Unsupported(u) if !u.fallback_text.is_empty() => {
            Body::Unsupported(u.fallback_text.clone())
        }
        other => Body::Unsupported(format!("{other:?}").to_lowercase()),
    }
}

/// One line of a conversation as a user sees it: edits, deletions and reactions applied to the
/// messages they target instead of shown as lines of their own.
#[derive(Clone, PartialEq, Eq)]
pub struct ConversationLine {
    /// The message id.
    pub id: String,
    /// `me`, or the sender's account.
    pub from: String,
    /// Delivery status (`sent`, `delivered`, `read`, `received`, ...).
    pub status: String,
    /// What it says now (after edits).
    pub text: String,
    /// Whether it was edited.
    pub edited: bool,
    /// Whether its sender deleted it (then `text` is empty).
    pub deleted: bool,
    /// Reactions to it, one per reacting account (the latest wins).
    pub reactions: Vec<String>,
    /// The message it replies to.
    pub reply_to: Option<String>,
}

impl std::fmt::Debug for ConversationLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationLine").field("deleted", &self.deleted).finish_non_exhaustive()
    }
}

impl std::fmt::Display for ConversationLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}: ", self.status, self.from)?;
        if let Some(r) = &self.reply_to {
            write!(f, "(reply to {r}) ")?;
        }
        if self.deleted {
            f.write_str("[deleted]")?;
        } else {
            f.write_str(&self.text)?;
            if self.edited {
                f.write_str(" (edited)")?;
            }
        }
        if !self.reactions.is_empty() {
            write!(f, " {}", self.reactions.join(" "))?;
        }
        Ok(())
    }
}

/// The conversation view of history entries (oldest first): edits and deletions apply only to
/// messages of the same sender; reactions are kept per reacting account.
pub fn conversation(entries: &[crate::store::HistoryEntry]) -> Vec<ConversationLine> {
    use std::collections::HashMap;
    let mut lines: Vec<ConversationLine> = Vec::new();
    let mut senders: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut reactions: Vec<Vec<(String, String)>> = Vec::new();
    for e in entries {
        let from = match e.direction {
            crate::store::Direction::Out => "me".to_owned(),
            crate::store::Direction::In => e.sender_account.clone(),
        };
        let message = <proto::Message as prost::Message>::decode(e.content.as_slice()).ok();
        let body = message.as_ref().map(body_of);
        match body {
            Some(Body::Edit { target, text }) => {
                if let Some(&i) = index.get(&target)
                    && senders[i] == e.sender_account
                {
                    lines[i].text = text;
                    lines[i].edited = true;
                }
            }
            Some(Body::Delete { target }) => {
                if let Some(&i) = index.get(&target)
                    && senders[i] == e.sender_account
                {
                    lines[i].text.clear();
                    lines[i].deleted = true;
                }
            }
            Some(Body::Reaction { target, emoji }) => {
                if let Some(&i) = index.get(&target) {
                    let list = &mut reactions[i];
                    list.retain(|(who, _)| *who != e.sender_account);
                    if !emoji.is_empty() {
                        list.push((e.sender_account.clone(), emoji));
                    }
                    lines[i].reactions = list.iter().map(|(_, r)| r.clone()).collect();
                }
            }
            other => {
                let text = other.map_or_else(|| "[unreadable]".to_owned(), |b| b.to_string());
                index.insert(e.message_id.clone(), lines.len());
                senders.push(e.sender_account.clone());
                reactions.push(Vec::new());
                lines.push(ConversationLine {
                    id: e.message_id.clone(),
                    from,
                    status: e.status.as_str().to_owned(),
                    text,
                    edited: false,
                    deleted: false,
                    reactions: Vec::new(),
                    reply_to: message.and_then(|m| m.quoted).map(|q| q.message_id),
                });
            }
        }
    }
    lines
}

/// A client profile, connected or not.
pub struct Client {
    dir: PathBuf,
    db: ProfileDb,
    device_key: StaticKeypair,
    account: Account<SignalStore>,
    rng: StdRng,
    conn: Option<Connection>,
    /// Stanzas that arrived while a request waited for its answer.
    backlog: VecDeque<Node>,
    /// Events produced together with another one (an identity change with a message).
    events: VecDeque<Event>,
    /// When the provider token of the current connection expires (interop users).
    token_expires: std::cell::Cell<Option<tokio::time::Instant>>,
    next_id: u64,
    http: reqwest::Client,
    /// Print stanzas (as XML) on standard error.
    pub verbose: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn e2ee(e: interop_e2ee::Error) -> Error {
    Error::E2ee(e.to_string())
}

fn placeholder_address() -> DeviceAddress {
    DeviceAddress::new("unregistered", 1).expect("a valid placeholder address")
}

impl Client {
    /// Opens (or creates) the profile in `dir`: device key, profile database, Signal identity.
    pub async fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let device_key = keyfile::load_or_generate(&dir.join("device.key"))?;
        let db = ProfileDb::open(dir).await.map_err(Error::store)?;
        let mut rng = StdRng::from_os_rng();
        let store = SignalStore::new(db.clone());
        let account = match Account::open(store).await {
            Ok(a) => a,
            Err(interop_e2ee::Error::NoAccount) => {
                let store = SignalStore::new(db.clone());
                let (account, _upload) = Account::create(
                    store,
                    placeholder_address(),
                    &PreKeyPolicy::default(),
                    SystemTime::now(),
                    &mut rng,
                )
                .await
                .map_err(e2ee)?;
                account
            }
            Err(e) => return Err(e2ee(e)),
        };
        Ok(Self {
            dir: dir.to_owned(),
            db,
            device_key,
            account,
            rng,
            conn: None,
            backlog: VecDeque::new(),
            events: VecDeque::new(),
            token_expires: std::cell::Cell::new(None),
            next_id: 1,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| Error::Local(format!("http client: {e}")))?,
            verbose: false,
        })
    }

    /// The profile database.
    pub fn db(&self) -> &ProfileDb {
        &self.db
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This device's Noise public key.
    pub fn device_public_key(&self) -> [u8; 32] {
        self.device_key.public
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .get_setting(key)
            .await
            .map_err(Error::store)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn set(&self, key: &str, value: &str) -> Result<()> {
        self.db.set_setting(key, value.as_bytes()).await.map_err(Error::store)
    }

    /// Records the gatekeeper's chat address and pinned root key.
    pub async fn set_server(&self, server: &str, root_key: &[u8; 32]) -> Result<()> {
        self.set(key::SERVER, server).await?;
        self.set(key::ROOT_KEY, &hex::encode(root_key)).await
    }

    /// Sets whether this user sends read receipts.
    pub async fn set_read_receipts(&self, on: bool) -> Result<()> {
        self.set(key::READ_RECEIPTS, if on { "on" } else { "off" }).await
    }

    async fn read_receipts(&self) -> Result<bool> {
        Ok(self.setting(key::READ_RECEIPTS).await?.is_none_or(|v| v == "on"))
    }

    /// Native or interop, once chosen.
    pub async fn role(&self) -> Result<Option<Role>> {
        Ok(match self.setting(key::ROLE).await?.as_deref() {
            Some("native") => Some(Role::Native),
            Some("interop") => Some(Role::Interop),
            _ => None,
        })
    }

    /// This device's address, once enlisted or registered.
    pub async fn address(&self) -> Result<Option<Address>> {
        let (Some(account), Some(device)) =
            (self.setting(key::ACCOUNT).await?, self.setting(key::DEVICE).await?)
        else {
            return Ok(None);
        };
        let device = device.parse().map_err(|_| Error::Local("corrupt profile: device".into()))?;
        Ok(Some(Address { account, device, integrator: self.setting(key::INTEGRATOR).await? }))
    }

    async fn require_address(&self) -> Result<Address> {
        self.address().await?.ok_or(Error::NotEnlisted)
    }

    async fn save_address(&mut self, a: &enlist::Address) -> Result<()> {
        self.set(key::ACCOUNT, &a.account).await?;
        self.set(key::DEVICE, &a.device.to_string()).await?;
        match &a.integrator {
            Some(i) => self.set(key::INTEGRATOR, i).await?,
            None => {
                self.db.delete_setting(key::INTEGRATOR).await.map_err(Error::store)?;
            }
        }
        let device = u8::try_from(a.device)
            .ok()
            .and_then(|d| DeviceAddress::new(&a.account, d).ok())
            .ok_or_else(|| Error::Protocol("the server assigned an unusable address".into()))?;
        self.account.set_address(device).await.map_err(e2ee)
    }

    // ---- provider (third-party users) ----

    /// Creates an account with the provider (`create`) and/or logs in; keeps the session.
    /// The password is used once and not stored.
    pub async fn provider_login(
        &self,
        url: &str,
        username: &str,
        password: &str,
        create: bool,
    ) -> Result<()> {
        let url = url.trim_end_matches('/');
        let body = serde_json::json!({ "username": username, "password": password });
        if create {
            let r = self.http.post(format!("{url}/v1/accounts")).json(&body).send().await;
            let r = r.map_err(|e| Error::Provider(format!("provider unreachable: {e}")))?;
            if !(r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT) {
                return Err(Error::Provider(provider_error(r).await));
            }
        }
        let r = self.http.post(format!("{url}/v1/sessions")).json(&body).send().await;
        let r = r.map_err(|e| Error::Provider(format!("provider unreachable: {e}")))?;
        if !r.status().is_success() {
            return Err(Error::Provider(provider_error(r).await));
        }
        let v: serde_json::Value =
            r.json().await.map_err(|_| Error::Provider("bad answer from the provider".into()))?;
        let session = v["session"]
            .as_str()
            .ok_or_else(|| Error::Provider("no session in the provider's answer".into()))?;
        self.set(key::ROLE, "interop").await?;
        self.set(key::PROVIDER_URL, url).await?;
        self.set(key::PROVIDER_SESSION, session).await
    }

    /// A fresh gatekeeper token (and the push token) for this device from the provider.
    async fn provider_token(&self) -> Result<(String, String)> {
        let (Some(url), Some(session)) =
            (self.setting(key::PROVIDER_URL).await?, self.setting(key::PROVIDER_SESSION).await?)
        else {
            return Err(Error::Local("not logged in to a provider: run `login` first".into()));
        };
        let device_key =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.device_key.public);
        let r = self
            .http
            .post(format!("{url}/v1/tokens"))
            .bearer_auth(session)
            .json(&serde_json::json!({ "device_key": device_key }))
            .send()
            .await
            .map_err(|e| Error::Provider(format!("provider unreachable: {e}")))?;
        if r.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(Error::Provider("provider session expired: run `login` again".into()));
        }
        if !r.status().is_success() {
            return Err(Error::Provider(provider_error(r).await));
        }
        let v: serde_json::Value =
            r.json().await.map_err(|_| Error::Provider("bad answer from the provider".into()))?;
        match (v["token"].as_str(), v["push_token"].as_str()) {
            (Some(t), Some(p)) => {
                let lifetime = v["expires_in"].as_u64().unwrap_or(600);
                self.token_expires
                    .set(Some(tokio::time::Instant::now() + Duration::from_secs(lifetime)));
                Ok((t.to_owned(), p.to_owned()))
            }
            _ => Err(Error::Provider("no token in the provider's answer".into())),
        }
    }

    /// Waits (long-poll, up to the provider's poll time) for a push wake-up for this device.
    pub async fn wait_for_wake(&self) -> Result<bool> {
        let (Some(url), Some(session)) =
            (self.setting(key::PROVIDER_URL).await?, self.setting(key::PROVIDER_SESSION).await?)
        else {
            return Err(Error::Local("not logged in to a provider: run `login` first".into()));
        };
        let device_key =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.device_key.public);
        let r = self
            .http
            .get(format!("{url}/v1/wake"))
            .query(&[("device_key", device_key)])
            .bearer_auth(session)
            .send()
            .await
            .map_err(|e| Error::Provider(format!("provider unreachable: {e}")))?;
        if !r.status().is_success() {
            return Err(Error::Provider(provider_error(r).await));
        }
        let v: serde_json::Value =
            r.json().await.map_err(|_| Error::Provider("bad answer from the provider".into()))?;
        Ok(v["wake"].as_bool().unwrap_or(false))
    }

    // ---- connection ----

    /// Connects to the gatekeeper (IK with the cached server key, else XX), presenting a
    /// fresh provider token for interop users. Returns whether IK resumption was used.
    pub async fn connect(&mut self) -> Result<bool> {
        self.connect_with(|_| {}).await
    }

    /// Like [`Client::connect`], with the connection options adjusted by `tweak` first (tests
    /// and probes: another device key, a changed token, a larger stanza limit).
    pub async fn connect_with(&mut self, tweak: impl FnOnce(&mut ConnectOptions)) -> Result<bool> {
        let server = self
            .setting(key::SERVER)
            .await?
            .ok_or_else(|| Error::Local("no server configured: run `init` first".into()))?;
        let root = self.setting(key::ROOT_KEY).await?.ok_or(Error::NoTrustAnchor)?;
        let root: [u8; 32] = hex::decode(root.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Local("corrupt profile: root key".into()))?;
        let role = self.role().await?.unwrap_or(Role::Native);
        let mut opts = ConnectOptions::new(server, "");
        opts.trust_anchor = Some(
            TrustAnchor::new(root).map_err(|_| Error::Local("corrupt profile: root key".into()))?,
        );
        opts.device_key = self.device_key.clone();
        opts.cached_server_key = self
            .setting(key::SERVER_KEY)
            .await?
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok());
        opts.read_receipts = self.read_receipts().await?;
        if let Some(a) = self.address().await? {
            opts.account_id = a.account;
            opts.device_id = a.device;
        }
        if role == Role::Interop {
            opts.product = Product::Interop;
            opts.provider_jwt = Some(self.provider_token().await?.0);
        }
        tweak(&mut opts);
        let conn = Connection::connect(&opts).await?;
        self.set(key::SERVER_KEY, &hex::encode(conn.server_key())).await?;
        let resumed = conn.resumed();
        self.conn = Some(conn);
        self.backlog.clear();
        if self.address().await?.is_some() {
            self.top_up_prekeys().await?;
        }
        Ok(resumed)
    }

    /// Asks the gatekeeper how many one-time prekeys this device has left and uploads new ones
    /// (with a fresh signed prekey and last-resort Kyber key) when it runs low. Returns how many
    /// one-time prekeys were uploaded.
    pub async fn top_up_prekeys(&mut self) -> Result<usize> {
        use interop_stanza::stanza::{Key, PrekeyUpload, SignedKey as WireKey};
        let id = self.fresh_id();
        let iq = Iq::new(id, IqType::Get, Some("encrypt"), IqPayload::PrekeyCountRequest);
        let reply = self.iq(iq.into_node()).await?;
        let left = match Iq::from_node(reply).map(|i| i.payload) {
            Ok(IqPayload::PrekeyCount(n)) => n,
            // Not enlisted yet (or the service refuses): nothing to top up.
            _ => return Ok(0),
        };
        let policy = PreKeyPolicy::default();
        let Some(more) = self
            .account
            .replenish(left, u32::MAX, &policy, SystemTime::now(), &mut self.rng)
            .await
            .map_err(e2ee)?
        else {
            return Ok(0);
        };
        let rotated = self
            .account
            .rotate_signed_prekey(SystemTime::now(), &mut self.rng)
            .await
            .map_err(e2ee)?;
        let (Some(signed), Some(kyber)) = (rotated.signed_prekey, rotated.kyber_last_resort) else {
            return Err(Error::E2ee("no signed prekeys generated".into()));
        };
        let wire = |k: SignedKey| WireKey { id: k.id, public: k.public, signature: k.signature };
        let uploaded = more.one_time.len();
        let upload = PrekeyUpload {
            registration_id: self.account.registration_id(),
            identity: self.account.identity_key(),
            signed_prekey: wire(signed),
            kyber_prekeys: vec![wire(kyber)],
            one_time_prekeys: more
                .one_time
                .into_iter()
                .map(|k| Key { id: k.id, public: k.public })
                .collect(),
        };
        let id = self.fresh_id();
        let iq = Iq::new(id, IqType::Set, Some("encrypt"), IqPayload::PrekeyUpload(upload));
        let reply = self.iq(iq.into_node()).await?;
        match reply.attr("type") {
            Some("result") => Ok(uploaded),
            _ => Err(Error::Refused("prekey upload refused".into())),
        }
    }

    /// Sends a stanza as it is (probes and tests).
    pub async fn send_raw(&mut self, node: &Node) -> Result<()> {
        self.send_node(node).await
    }

    /// When the provider token this connection presented expires (interop users; `None` for
    /// native users). The gatekeeper ends the session then: reconnect before, with a fresh one.
    pub fn token_expires(&self) -> Option<tokio::time::Instant> {
        self.token_expires.get()
    }

    /// Whether a connection is open.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Closes the connection.
    pub async fn disconnect(&mut self) -> Result<()> {
        if let Some(c) = self.conn.take() {
            c.close().await?;
        }
        Ok(())
    }

    fn conn(&mut self) -> Result<&mut Connection> {
        self.conn.as_mut().ok_or(Error::NotConnected)
    }

    async fn send_node(&mut self, node: &Node) -> Result<()> {
        if self.verbose {
            eprintln!("> {}", interop_stanza::xml::to_string(node).unwrap_or_default());
        }
        self.conn()?.send(node).await
    }

    /// Receives one stanza; a `stream:error` becomes [`Error::Closed`].
    async fn recv_node(&mut self) -> Result<Node> {
        let node = self.conn()?.recv().await?;
        let Some(node) = node else {
            self.conn = None;
            return Err(Error::Closed { condition: "connection-closed".into(), text: None });
        };
        if self.verbose {
            eprintln!("< {}", interop_stanza::xml::to_string(&node).unwrap_or_default());
        }
        if node.tag == "stream:error" {
            self.conn = None;
            let e = StreamError::from_node(node)
                .map_err(|_| Error::Protocol("malformed stream error".into()))?;
            return Err(Error::Closed { condition: e.condition.as_str().to_owned(), text: e.text });
        }
        Ok(node)
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("c{}-{}", self.next_id, rand::random::<u32>())
    }

    /// Sends `node` and waits for the stanza that answers it (`pred`), keeping everything
    /// else for [`Client::next_event`].
    async fn exchange(&mut self, node: Node, pred: impl Fn(&Node) -> bool) -> Result<Node> {
        self.send_node(&node).await?;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.recv_node())
                .await
                .map_err(|_| Error::Timeout)??;
            if pred(&next) {
                return Ok(next);
            }
            self.backlog.push_back(next);
        }
    }

    async fn iq(&mut self, node: Node) -> Result<Node> {
        let id = node.attr("id").unwrap_or_default().to_owned();
        self.exchange(node, move |n| n.tag == "iq" && n.attr("id") == Some(id.as_str())).await
    }

    async fn enlist_request(&mut self, request: Request) -> Result<Response> {
        let id = self.fresh_id();
        let reply = self.iq(request.to_node(&id)).await?;
        let (_, response) = Response::from_node(&reply)
            .map_err(|_| Error::Protocol("malformed enlistment answer".into()))?;
        match response {
            Response::Error(code) => Err(Error::Refused(code.as_str().to_owned())),
            r => Ok(r),
        }
    }

    // ---- sign-up ----

    async fn key_bundle(&mut self) -> Result<KeyBundle> {
        // A fresh signed prekey and the current keys; one-time keys topped up to the policy.
        let upload = self
            .account
            .replenish(0, 0, &PreKeyPolicy::default(), SystemTime::now(), &mut self.rng)
            .await
            .map_err(e2ee)?
            .unwrap_or_default();
        let rotated = self
            .account
            .rotate_signed_prekey(SystemTime::now(), &mut self.rng)
            .await
            .map_err(e2ee)?;
        let (Some(signed), Some(kyber)) = (rotated.signed_prekey, rotated.kyber_last_resort) else {
            return Err(Error::E2ee("no signed prekeys generated".into()));
        };
        let wire_signed = |k: &SignedKey| WireSigned {
            id: k.id,
            public: k.public.clone(),
            signature: k.signature.clone(),
        };
        Ok(KeyBundle {
            identity_key: self.account.identity_key(),
            registration_id: self.account.registration_id(),
            signed_prekey: wire_signed(&signed),
            kyber_prekey: wire_signed(&kyber),
            prekeys: upload
                .one_time
                .iter()
                .take(enlist::MAX_PREKEYS)
                .map(|k: &OneTimeKey| Prekey { id: k.id, public: k.public.clone() })
                .collect(),
        })
    }

    /// Enlists this device with the gatekeeper (interop users; connects first if needed).
    pub async fn enlist(&mut self) -> Result<(Address, bool)> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let keys = self.key_bundle().await?;
        let (_, push_token) = self.provider_token().await?;
        let consent = Consent {
            version: CONSENT_VERSION.to_owned(),
            read_receipts: self.read_receipts().await?,
        };
        let response = self
            .enlist_request(Request::Enlist { keys, consent, push_token: push_token.into_bytes() })
            .await?;
        let Response::Enlisted { address, created } = response else {
            return Err(Error::Protocol("unexpected answer to enlist".into()));
        };
        self.save_address(&address).await?;
        Ok((
            Address {
                account: address.account,
                device: address.device,
                integrator: address.integrator,
            },
            created,
        ))
    }

    /// Native users: asks for a verification code for `identifier`.
    pub async fn register(&mut self, identifier: &str) -> Result<u32> {
        self.set(key::ROLE, "native").await?;
        if self.conn.is_none() {
            self.connect().await?;
        }
        match self.enlist_request(Request::Register { identifier: identifier.to_owned() }).await? {
            Response::CodeSent { expires_in } => Ok(expires_in),
            _ => Err(Error::Protocol("unexpected answer to register".into())),
        }
    }

    /// Native users: confirms the code; the account (or a new device of it) is created.
    pub async fn confirm(&mut self, identifier: &str, code: &str) -> Result<Address> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let keys = self.key_bundle().await?;
        let request =
            Request::Confirm { identifier: identifier.to_owned(), code: code.to_owned(), keys };
        let Response::Registered { address } = self.enlist_request(request).await? else {
            return Err(Error::Protocol("unexpected answer to confirm".into()));
        };
        self.save_address(&address).await?;
        Ok(Address { account: address.account, device: address.device, integrator: None })
    }

    /// Native users: turns interop messaging on or off.
    pub async fn set_interop(&mut self, on: bool) -> Result<()> {
        match self.enlist_request(Request::InteropOptIn { enabled: on }).await? {
            Response::InteropOptIn { .. } => Ok(()),
            _ => Err(Error::Protocol("unexpected answer to interop".into())),
        }
    }

    /// Interop users: un-enlists the whole account; the gatekeeper deletes its data.
    pub async fn opt_out(&mut self) -> Result<()> {
        match self.enlist_request(Request::OptOut).await? {
            Response::OptedOut => {
                for k in [key::ACCOUNT, key::DEVICE, key::INTEGRATOR] {
                    self.db.delete_setting(k).await.map_err(Error::store)?;
                }
                Ok(())
            }
            _ => Err(Error::Protocol("unexpected answer to opt-out".into())),
        }
    }

    // ---- directory ----

    /// Finds the account of a user-visible identifier (phone number, provider username) and
    /// remembers it as a contact. A full address (`...@s.interop`) is taken as it is.
    pub async fn lookup(&mut self, identifier: &str) -> Result<Contact> {
        if identifier.ends_with(&format!("@{SERVER}")) {
            return Ok(contact_at(identifier, identifier));
        }
        if let Some(c) = self.db.contact(identifier).await.map_err(Error::store)? {
            return Ok(c);
        }
        let id = self.fresh_id();
        let iq = Iq::new(
            id,
            IqType::Get,
            Some("contacts"),
            IqPayload::ContactLookup(vec![identifier.to_owned()]),
        );
        let reply = self.iq(iq.into_node()).await?;
        let reply = Iq::from_node(reply).map_err(|_| Error::Protocol("malformed answer".into()))?;
        let jid = match reply.payload {
            IqPayload::Contacts(found) => found.into_iter().find_map(|c| c.jid),
            IqPayload::Error(e) => return Err(Error::Refused(e.condition.as_str().to_owned())),
            _ => None,
        };
        let jid = jid.ok_or_else(|| Error::UnknownContact(identifier.to_owned()))?;
        let contact = contact_at(identifier, &jid);
        self.db.upsert_contact(&contact).await.map_err(Error::store)?;
        Ok(contact)
    }

    /// The device numbers of an account.
    async fn devices(&mut self, account: &str) -> Result<Vec<u32>> {
        let id = self.fresh_id();
        let jid = format!("{account}@{SERVER}");
        let iq = Iq::new(id, IqType::Get, Some("devices"), IqPayload::DeviceListRequest(vec![jid]));
        let reply = self.iq(iq.into_node()).await?;
        let reply = Iq::from_node(reply).map_err(|_| Error::Protocol("malformed answer".into()))?;
        match reply.payload {
            IqPayload::DeviceLists(lists) => {
                Ok(lists.into_iter().next().map(|l| l.devices).unwrap_or_default())
            }
            IqPayload::Error(e) => Err(Error::Refused(e.condition.as_str().to_owned())),
            _ => Err(Error::Protocol("unexpected answer to devices".into())),
        }
    }

    /// Starts sessions with the devices in `peers` that have none (fetching their bundles).
    async fn ensure_sessions(&mut self, peers: &[DeviceAddress]) -> Result<()> {
        let missing =
            self.account.missing_sessions(peers, SystemTime::now()).await.map_err(e2ee)?;
        if missing.is_empty() {
            return Ok(());
        }
        let jids: Vec<String> =
            missing.iter().map(|d| format!("{}:{}@{SERVER}", d.account(), d.device())).collect();
        let id = self.fresh_id();
        let iq = Iq::new(id, IqType::Get, Some("encrypt"), IqPayload::PrekeyFetch(jids));
        let reply = self.iq(iq.into_node()).await?;
        let reply = Iq::from_node(reply).map_err(|_| Error::Protocol("malformed answer".into()))?;
        let bundles = match reply.payload {
            IqPayload::PrekeyBundles(b) => b,
            IqPayload::Error(e) => return Err(Error::Refused(e.condition.as_str().to_owned())),
            _ => return Err(Error::Protocol("unexpected answer to a bundle fetch".into())),
        };
        for b in bundles {
            let Some(peer) = interop_e2ee::stanza::parse_device_jid(&b.jid) else { continue };
            let bundle = Bundle {
                registration_id: b.registration_id,
                device: peer.device(),
                identity: b.identity,
                signed_prekey: SignedKey {
                    id: b.signed_prekey.id,
                    public: b.signed_prekey.public,
                    signature: b.signed_prekey.signature,
                },
                one_time: b.one_time_prekey.map(|k| OneTimeKey { id: k.id, public: k.public }),
                kyber: SignedKey {
                    id: b.kyber_prekey.id,
                    public: b.kyber_prekey.public,
                    signature: b.kyber_prekey.signature,
                },
            };
            let events = self
                .account
                .process_bundle(&peer, &bundle, SystemTime::now(), &mut self.rng)
                .await
                .map_err(e2ee)?;
            if events.iter().any(|e| matches!(e, interop_e2ee::Event::IdentityChanged { .. }))
                && let Ok(number) = self.account.safety_number(peer.account(), &bundle.identity)
            {
                self.events.push_back(Event::IdentityChanged {
                    account: peer.account().to_owned(),
                    safety_number: number,
                });
            }
        }
        Ok(())
    }

    // ---- messaging ----

    /// Sends a text to `to` (an identifier or an address); returns the message id once the
    /// gatekeeper has stored it.
    pub async fn send_text(&mut self, to: &str, text: &str) -> Result<String> {
        let message = proto::Message {
            id: interop_e2ee::new_message_id(&mut self.rng),
            timestamp_ms: crate::store::now_ms() as u64,
            content: Some(proto::message::Content::Text(proto::Text { body: text.to_owned() })),
            ..Default::default()
        };
        self.send_message(to, message, MessageType::Text).await
    }

    fn content_message(&mut self, content: proto::message::Content) -> proto::Message {
        proto::Message {
            id: interop_e2ee::new_message_id(&mut self.rng),
            timestamp_ms: crate::store::now_ms() as u64,
            content: Some(content),
            ..Default::default()
        }
    }

    /// Replies to message `quoted_id` (of `quoted_sender`'s account) with a text.
    pub async fn send_reply(
        &mut self,
        to: &str,
        text: &str,
        quoted_id: &str,
        quoted_sender: &str,
    ) -> Result<String> {
        let preview: String = match self.db.history(quoted_sender, 1000).await {
            Ok(h) => h
                .into_iter()
                .find(|e| e.message_id == quoted_id)
                .and_then(|e| <proto::Message as prost::Message>::decode(e.content.as_slice()).ok())
                .map(|m| body_of(&m).to_string().chars().take(100).collect())
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        let mut message = self
            .content_message(proto::message::Content::Text(proto::Text { body: text.to_owned() }));
        message.quoted = Some(proto::QuotedReference {
            message_id: quoted_id.to_owned(),
            sender: quoted_sender.to_owned(),
            preview,
        });
        self.send_message(to, message, MessageType::Text).await
    }

    /// Reacts to message `target` with `emoji` (empty: removes the reaction).
    pub async fn send_reaction(&mut self, to: &str, target: &str, emoji: &str) -> Result<String> {
        let message = self.content_message(proto::message::Content::Reaction(proto::Reaction {
            target_id: target.to_owned(),
            emoji: emoji.to_owned(),
        }));
        self.send_message(to, message, MessageType::Text).await
    }

    /// Replaces the text of this user's message `target`.
    pub async fn send_edit(&mut self, to: &str, target: &str, text: &str) -> Result<String> {
        let message = self.content_message(proto::message::Content::Edit(proto::Edit {
            target_id: target.to_owned(),
            text: Some(proto::Text { body: text.to_owned() }),
        }));
        self.send_message(to, message, MessageType::Text).await
    }

    /// Deletes this user's message `target` for everyone in the conversation.
    pub async fn send_delete(&mut self, to: &str, target: &str) -> Result<String> {
        let message = self.content_message(proto::message::Content::Delete(proto::Delete {
            target_id: target.to_owned(),
        }));
        self.send_message(to, message, MessageType::Text).await
    }

    /// Sends a content message; retries once with fresh device lists on `stale-devices`.
    pub async fn send_message(
        &mut self,
        to: &str,
        message: proto::Message,
        kind: MessageType,
    ) -> Result<String> {
        let me = self.require_address().await?;
        let contact = self.lookup(to).await?;
        let to_local = match &contact.integrator {
            Some(i) => format!("{}.{i}", contact.account),
            None => contact.account.clone(),
        };
        let id = message.id.clone();
        let encoded = message.encode_to_vec();
        for attempt in 0..2 {
            let mut peers = Vec::new();
            for d in self.devices(&contact.account).await? {
                peers.push(device_address(&contact.account, d)?);
            }
            if contact.account != me.account {
                for d in self.devices(&me.account).await? {
                    if d != me.device {
                        peers.push(device_address(&me.account, d)?);
                    }
                }
            }
            if peers.is_empty() {
                return Err(Error::Refused("recipient-unavailable".into()));
            }
            self.ensure_sessions(&peers).await?;
            let transport =
                proto::Transport { message: Some(message.clone()), ..Default::default() };
            let encs = self
                .account
                .send(&peers, transport, SystemTime::now(), &mut self.rng)
                .await
                .map_err(e2ee)?;
            let stanza = message_stanza(&id, &to_local, kind, &encs);
            let want = id.clone();
            let reply = self
                .exchange(stanza, move |n| {
                    n.tag == "ack"
                        && n.attr("class") == Some("message")
                        && n.attr("id") == Some(want.as_str())
                })
                .await?;
            match reply.attr("error") {
                None | Some("duplicate") => {
                    let from = device_address(&me.account, me.device)?;
                    self.db
                        .record_outgoing(
                            &from,
                            &contact.account,
                            &id,
                            &encoded,
                            crate::store::now_ms(),
                        )
                        .await
                        .map_err(Error::store)?;
                    return Ok(id);
                }
                Some("stale-devices") if attempt == 0 => continue,
                Some(code) => return Err(Error::Refused(code.to_owned())),
            }
        }
        Err(Error::Refused("stale-devices".into()))
    }

    /// Sends a read receipt for messages of `to_account` (only if this user sends them).
    pub async fn send_read(&mut self, to_account: &str, ids: &[String]) -> Result<()> {
        if !self.read_receipts().await? || ids.is_empty() {
            return Ok(());
        }
        let Some(first) = ids.first() else { return Ok(()) };
        let receipt = Receipt::new(first.clone(), ReceiptType::Read)
            .to(format!("{to_account}@{SERVER}"))
            .with_ids(ids.iter().skip(1).cloned());
        let want = first.clone();
        self.exchange(receipt.into_node(), move |n| {
            n.tag == "ack"
                && n.attr("class") == Some("receipt")
                && n.attr("id") == Some(want.as_str())
        })
        .await?;
        for id in ids {
            let _ = self.db.set_status(to_account, id, MessageStatus::Read).await;
        }
        Ok(())
    }

    /// Tells a contact that this user is typing (`true`) or stopped (`false`). Live only: the
    /// gatekeeper never stores it.
    pub async fn send_typing(&mut self, to: &str, typing: bool) -> Result<()> {
        use interop_stanza::stanza::{ChatState, ChatStateKind};
        let contact = self.lookup(to).await?;
        let kind = if typing { ChatStateKind::Composing } else { ChatStateKind::Paused };
        let state = ChatState::new(format!("{}@{SERVER}", contact.account), kind);
        self.send_node(&state.into_node()).await
    }

    /// Blocks (or unblocks) an account.
    pub async fn block(&mut self, who: &str, on: bool) -> Result<()> {
        let contact = self.lookup(who).await?;
        let id = self.fresh_id();
        let child = Node::new(if on { "block" } else { "unblock" })
            .with_attr("jid", format!("{}@{SERVER}", contact.account));
        let node = Node::new("iq")
            .with_attr("id", id)
            .with_attr("type", "set")
            .with_attr("xmlns", "blocklist")
            .with_children(vec![child]);
        let reply = self.iq(node).await?;
        match reply.attr("type") {
            Some("result") => Ok(()),
            _ => Err(Error::Refused("block refused".into())),
        }
    }

    /// The safety number with a contact (after at least one message exchanged).
    pub async fn safety_number(&mut self, who: &str) -> Result<String> {
        let contact = self.lookup(who).await?;
        let peer = device_address(&contact.account, 1)?;
        let identity = self
            .account
            .peer_identity(&peer)
            .await
            .map_err(e2ee)?
            .ok_or_else(|| Error::Local("no session with this contact yet".into()))?;
        self.account.safety_number(&contact.account, &identity).map_err(e2ee)
    }

    /// Waits for the next event. Messages are decrypted, stored and acked (in that order);
    /// a delivery receipt goes back to the sender. Not cancel-safe once a stanza is being
    /// handled: to race it against other work, use [`Client::readable`] (cancel-safe) and then
    /// [`Client::pending_event`].
    pub async fn next_event(&mut self) -> Result<Event> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        loop {
            let node = match self.backlog.pop_front() {
                Some(n) => n,
                None => self.recv_node().await?,
            };
            if let Some(event) = self.handle(node).await? {
                return Ok(event);
            }
        }
    }

    /// Waits until a stanza has arrived and keeps it for [`Client::pending_event`].
    /// Cancel-safe: dropping it loses nothing, so it can race other work in `select!`.
    pub async fn readable(&mut self) -> Result<()> {
        if !self.events.is_empty() || !self.backlog.is_empty() {
            return Ok(());
        }
        let node = self.recv_node().await?;
        self.backlog.push_back(node);
        Ok(())
    }

    /// Handles what has already arrived (see [`Client::readable`]) without waiting for the
    /// network: the next event, or `None` when nothing that arrived makes one. Run it to
    /// completion (do not race it): it stores messages and acks them.
    pub async fn pending_event(&mut self) -> Result<Option<Event>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        while let Some(node) = self.backlog.pop_front() {
            if let Some(event) = self.handle(node).await? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    async fn handle(&mut self, node: Node) -> Result<Option<Event>> {
        match node.tag.as_str() {
            "message" => self.handle_message(node).await,
            "receipt" => {
                let Ok(receipt) = Receipt::from_node(node) else { return Ok(None) };
                let from = receipt.from.clone().unwrap_or_default();
                let mut ack = Ack::new(receipt.id.clone(), AckClass::Receipt);
                if receipt.kind != ReceiptType::Delivery {
                    ack.kind = Some(receipt.kind.as_str().to_owned());
                }
                ack.to = receipt.from.clone();
                let ids: Vec<String> = receipt.ids().map(str::to_owned).collect();
                let from_account = account_of(&from);
                let me = self.require_address().await?;
                let status = match receipt.kind {
                    ReceiptType::Read => Some(MessageStatus::Read),
                    ReceiptType::Delivery => Some(MessageStatus::Delivered),
                    _ => None,
                };
                if let Some(status) = status {
                    for id in &ids {
                        let _ = self.db.set_status(&me.account, id, status).await;
                    }
                }
                if receipt.kind == ReceiptType::Retry
                    && let Some(peer) = interop_e2ee::stanza::parse_device_jid(&from)
                {
                    // The peer could not decrypt: archive the session, so the next message to
                    // that device starts a fresh one from a new bundle.
                    self.account.reset_session(&peer).await.map_err(e2ee)?;
                    for id in &ids {
                        let _ = self.db.set_status(&me.account, id, MessageStatus::Failed).await;
                    }
                }
                self.send_node(&ack.into_node()).await?;
                Ok(Some(Event::Receipt { from_account, ids, kind: receipt.kind }))
            }
            "chatstate" => {
                let from = node.attr("from").map(account_of).unwrap_or_default();
                let state = node.children().first().map(|c| c.tag.clone()).unwrap_or_default();
                Ok(Some(Event::ChatState { from_account: from, state }))
            }
            _ => Ok(None),
        }
    }

    async fn handle_message(&mut self, node: Node) -> Result<Option<Event>> {
        let me = self.require_address().await?;
        let me_device = device_address(&me.account, me.device)?;
        let from = node.attr("from").unwrap_or_default().to_owned();
        let id = node.attr("id").unwrap_or_default().to_owned();
        let ack = Ack { to: Some(from.clone()), ..Ack::new(id.clone(), AckClass::Message) };
        let incoming = match parse_incoming(&node, &me_device) {
            Ok(i) => i,
            Err(_) => {
                // Not for us or malformed: acknowledge so it is not redelivered forever.
                self.send_node(&ack.into_node()).await?;
                return Ok(None);
            }
        };
        let sender_account = incoming.sender.account().to_owned();
        if self.db.has_message(&sender_account, &incoming.id).await.map_err(Error::store)? {
            // Seen before (a redelivery after a crash or a lost ack): ack again and repeat the
            // delivery receipt (the gatekeeper de-duplicates it), show nothing new.
            self.send_node(&ack.into_node()).await?;
            if sender_account != me.account {
                let receipt = Receipt::new(incoming.id.clone(), ReceiptType::Delivery)
                    .to(format!("{sender_account}@{SERVER}"));
                self.send_node(&receipt.into_node()).await?;
            }
            return Ok(None);
        }
        let received =
            match self.account.receive(&incoming.sender, &incoming.enc, &mut self.rng).await {
                Ok(r) => r,
                Err(_) => {
                    let retry = Receipt::new(id.clone(), ReceiptType::Retry).to(format!(
                        "{}:{}@{SERVER}",
                        sender_account,
                        incoming.sender.device()
                    ));
                    self.send_node(&retry.into_node()).await?;
                    self.send_node(&ack.into_node()).await?;
                    return Ok(Some(Event::Undecryptable { from_account: sender_account, id }));
                }
            };
        let changed: Vec<DeviceAddress> = received
            .events()
            .iter()
            .filter_map(|e| match e {
                interop_e2ee::Event::IdentityChanged { peer } => Some(peer.clone()),
                _ => None,
            })
            .collect();
        let body = received.message().map(body_of);
        let reply_to =
            received.message().and_then(|m| m.quoted.as_ref()).map(|q| q.message_id.clone());
        let media = received.message().and_then(|m| match &m.content {
            Some(
                proto::message::Content::Image(x)
                | proto::message::Content::Video(x)
                | proto::message::Content::Voice(x)
                | proto::message::Content::File(x),
            ) => Some(Box::new(x.clone())),
            _ => None,
        });
        received.commit().await.map_err(e2ee)?;
        // Stored: now the gatekeeper may delete its copy. The message is the user's now, so a
        // failed ack or receipt (the connection just broke) must not hide it: the next read
        // reports the broken connection, and the redelivered copy is acked then.
        let _ = self.send_node(&ack.into_node()).await;
        for peer in changed {
            if let Ok(Some(identity)) = self.account.peer_identity(&peer).await
                && let Ok(number) = self.account.safety_number(peer.account(), &identity)
            {
                self.events.push_back(Event::IdentityChanged {
                    account: peer.account().to_owned(),
                    safety_number: number,
                });
            }
        }
        let Some(body) = body else { return Ok(None) };
        if sender_account != me.account {
            let receipt = Receipt::new(incoming.id.clone(), ReceiptType::Delivery)
                .to(format!("{sender_account}@{SERVER}"));
            let _ = self.send_node(&receipt.into_node()).await;
        }
        Ok(Some(Event::Message(Received {
            id: incoming.id,
            from_account: sender_account,
            from_device: incoming.sender.device(),
            body,
            reply_to,
            media,
        })))
    }
}

fn device_address(account: &str, device: u32) -> Result<DeviceAddress> {
    u8::try_from(device)
        .ok()
        .and_then(|d| DeviceAddress::new(account, d).ok())
        .ok_or_else(|| Error::Protocol("device number out of range".into()))
}

/// The contact `identifier` names, at the account address `account[.integrator]@s.interop`.
fn contact_at(identifier: &str, jid: &str) -> Contact {
    let local = jid.trim_end_matches(&format!("@{SERVER}"));
    let (account, integrator) = match local.split_once('.') {
        Some((a, i)) => (a.to_owned(), Some(i.to_owned())),
        None => (local.to_owned(), None),
    };
    Contact {
        identifier: identifier.to_owned(),
        account,
        integrator,
        added_ms: crate::store::now_ms(),
    }
}

/// The account id of an address `account[.integrator][:device]@server`.
pub fn account_of(jid: &str) -> String {
    let local = jid.split('@').next().unwrap_or_default();
    let local = local.split(':').next().unwrap_or_default();
    local.split('.').next().unwrap_or_default().to_owned()
}

async fn provider_error(r: reqwest::Response) -> String {
    let status = r.status();
    let code = r
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| status.to_string());
    format!("the provider refused: {code}")
}

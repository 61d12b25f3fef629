//! Enlistment and registration iqs, built on [`interop_stanza::Node`].
//!
//! Every iq travels inside an authenticated Noise session (never as a bearer-token HTTP
//! call). Requests are `<iq xmlns="interop:enlist" id=".." type="set|get">` with exactly one
//! child naming the operation; responses are `type="result"` with one child, or
//! `type="error"` with `<error code=".."/>`. See docs/PROTOCOL.md, section 3.6.
//!
//! ```
//! use interop_enlist::enlist::{Request, Response, ErrorCode};
//!
//! let req = Request::Status;
//! let node = req.to_node("q1");
//! assert_eq!(Request::from_node(&node).unwrap(), ("q1".to_owned(), Request::Status));
//! let err = Response::Error(ErrorCode::NotEnlisted).to_node("q1");
//! assert_eq!(err.child("error").and_then(|e| e.attr("code")), Some("not-enlisted"));
//! ```

use std::fmt;

use interop_stanza::Node;

use crate::registry::valid_integrator_id;
use crate::{Error, Result};

/// The `xmlns` of every enlistment iq.
pub const NS: &str = "interop:enlist";
/// The enlistment protocol version (`v` attribute of `enlist`).
pub const VERSION: &str = "1";
/// Signal identity public key: type byte `0x05` + 32 bytes.
pub const IDENTITY_KEY_LEN: usize = 33;
/// Kyber1024 public key as libsignal serialises it: type byte `0x08` + 1568 bytes.
pub const KYBER_KEY_LEN: usize = 1569;
/// XEdDSA signature.
pub const SIGNATURE_LEN: usize = 64;
/// Most one-time prekeys in one request.
pub const MAX_PREKEYS: usize = 200;
/// Longest push token.
pub const MAX_PUSH_TOKEN: usize = 1024;
/// Largest prekey id (24 bits, as Signal clients use).
pub const MAX_PREKEY_ID: u32 = 0x00ff_ffff;

/// Error codes of enlistment iqs, with stable wire strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The iq is malformed (missing or unknown child, bad attribute).
    BadRequest,
    /// The `v` of `enlist` is not supported.
    UnsupportedVersion,
    /// The session is not allowed to do this (e.g. enlisting on a native session).
    NotAuthorized,
    /// No consent, or an outdated opt-in version.
    ConsentRequired,
    /// The identity key is not a 33-byte `0x05` key.
    InvalidIdentityKey,
    /// The registration id is outside 1..=16380.
    InvalidRegistrationId,
    /// The signed prekey is malformed or its signature does not verify.
    InvalidSignedPrekey,
    /// The Kyber prekey is malformed or its signature does not verify.
    InvalidKyberPrekey,
    /// A one-time prekey is malformed, or ids repeat, or more than [`MAX_PREKEYS`].
    InvalidPrekeys,
    /// The push token is empty or longer than [`MAX_PUSH_TOKEN`].
    InvalidPushToken,
    /// Status/opt-out for an identity that is not enlisted.
    NotEnlisted,
    /// The account has the maximum number of devices.
    DeviceLimit,
    /// The provider is disabled.
    ProviderDisabled,
    /// The native identifier is malformed or not allowed.
    InvalidIdentifier,
    /// Wrong verification code.
    InvalidCode,
    /// The verification code expired (or too many attempts): register again.
    CodeExpired,
    /// Too many requests; retry later.
    RateLimited,
    /// The server failed.
    InternalError,
}

impl ErrorCode {
    const ALL: [ErrorCode; 18] = [
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::NotAuthorized,
        ErrorCode::ConsentRequired,
        ErrorCode::InvalidIdentityKey,
        ErrorCode::InvalidRegistrationId,
        ErrorCode::InvalidSignedPrekey,
        ErrorCode::InvalidKyberPrekey,
        ErrorCode::InvalidPrekeys,
        ErrorCode::InvalidPushToken,
        ErrorCode::NotEnlisted,
        ErrorCode::DeviceLimit,
        ErrorCode::ProviderDisabled,
        ErrorCode::InvalidIdentifier,
        ErrorCode::InvalidCode,
        ErrorCode::CodeExpired,
        ErrorCode::RateLimited,
        ErrorCode::InternalError,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::NotAuthorized => "not-authorized",
            ErrorCode::ConsentRequired => "consent-required",
            ErrorCode::InvalidIdentityKey => "invalid-identity-key",
            ErrorCode::InvalidRegistrationId => "invalid-registration-id",
            ErrorCode::InvalidSignedPrekey => "invalid-signed-prekey",
            ErrorCode::InvalidKyberPrekey => "invalid-kyber-prekey",
            ErrorCode::InvalidPrekeys => "invalid-prekeys",
            ErrorCode::InvalidPushToken => "invalid-push-token",
            ErrorCode::NotEnlisted => "not-enlisted",
            ErrorCode::DeviceLimit => "device-limit",
            ErrorCode::ProviderDisabled => "provider-disabled",
            ErrorCode::InvalidIdentifier => "invalid-identifier",
            ErrorCode::InvalidCode => "invalid-code",
            ErrorCode::CodeExpired => "code-expired",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::InternalError => "internal-error",
        }
    }

    /// Parses a wire string.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signed prekey (EC or Kyber): id, public key, signature by the identity key.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedPrekey {
    /// Id (0..=[`MAX_PREKEY_ID`]).
    pub id: u32,
    /// Public key as libsignal serialises it.
    pub public: Vec<u8>,
    /// XEdDSA signature of `public` by the identity key.
    pub signature: Vec<u8>,
}

/// A one-time EC prekey.
#[derive(Clone, PartialEq, Eq)]
pub struct Prekey {
    /// Id (0..=[`MAX_PREKEY_ID`]).
    pub id: u32,
    /// 33-byte `0x05` public key.
    pub public: Vec<u8>,
}

/// The Signal key material of a new device.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBundle {
    /// 33-byte `0x05` identity public key.
    pub identity_key: Vec<u8>,
    /// Signal registration id, 1..=16380.
    pub registration_id: u32,
    /// Signed EC prekey (33-byte public key).
    pub signed_prekey: SignedPrekey,
    /// Signed Kyber1024 prekey (last-resort).
    pub kyber_prekey: SignedPrekey,
    /// One-time EC prekeys (0 to [`MAX_PREKEYS`], distinct ids).
    pub prekeys: Vec<Prekey>,
}

impl fmt::Debug for SignedPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPrekey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl fmt::Debug for Prekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prekey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl fmt::Debug for KeyBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBundle").field("prekeys", &self.prekeys.len()).finish_non_exhaustive()
    }
}

/// The user's opt-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// The version of the interop notice the user accepted (1-32 of `A-Z a-z 0-9 . _ -`).
    pub version: String,
    /// Whether the user sends read receipts.
    pub read_receipts: bool,
}

/// Where an enlisted device is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Gatekeeper-internal account id (1-64 of `a-z 0-9 -`).
    pub account: String,
    /// Device id within the account (1..=65535).
    pub device: u32,
    /// The provider's integrator id; `None` for native accounts.
    pub integrator: Option<String>,
}

/// What the client asks.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Enlist this (provider, sub) with this device (`type="set"`, child `enlist`).
    Enlist {
        /// Keys of the device.
        keys: KeyBundle,
        /// The opt-in.
        consent: Consent,
        /// Opaque push token issued by the provider.
        push_token: Vec<u8>,
    },
    /// Enlistment status of the session's identity (`type="get"`, child `status`).
    Status,
    /// Un-enlist: the account stops being reachable; keys and queued messages are deleted
    /// (`type="set"`, child `opt-out`).
    OptOut,
    /// Native users: ask for a verification code for `identifier` (`register`).
    Register {
        /// The user-visible identifier to register.
        identifier: String,
    },
    /// Native users: prove the code and create the account with this device (`confirm`).
    Confirm {
        /// As in `Register`.
        identifier: String,
        /// The verification code (6 digits).
        code: String,
        /// Keys of the device.
        keys: KeyBundle,
    },
    /// Native users: turn interop messaging on or off (`interop`).
    InteropOptIn {
        /// On or off.
        enabled: bool,
    },
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Request::Enlist { .. } => "Request::Enlist",
            Request::Status => "Request::Status",
            Request::OptOut => "Request::OptOut",
            Request::Register { .. } => "Request::Register",
            Request::Confirm { .. } => "Request::Confirm",
            Request::InteropOptIn { .. } => "Request::InteropOptIn",
        })
    }
}

/// Enlistment state reported by `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not enlisted (never, or opted out).
    NotEnlisted,
    /// Enlisted: this device's address and the consent on record.
    Enlisted {
        /// Address of the asking device.
        address: Address,
        /// Consent on record.
        consent: Consent,
    },
}

/// What the gatekeeper answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// Enlisted (child `enlisted`): `created` is false when the (provider, sub) and device
    /// were already enlisted (idempotent repeat).
    Enlisted {
        /// Address of this device.
        address: Address,
        /// Whether a new account was created.
        created: bool,
    },
    /// Status (child `status`).
    Status(Status),
    /// Opted out (child `opted-out`).
    OptedOut,
    /// A code was sent (child `code-sent`), valid for `expires_in` seconds.
    CodeSent {
        /// Validity in seconds.
        expires_in: u32,
    },
    /// Native account created (child `registered`).
    Registered {
        /// Address of this device.
        address: Address,
    },
    /// Interop flag set (child `interop`).
    InteropOptIn {
        /// On or off.
        enabled: bool,
    },
    /// The request failed (`type="error"`, child `error code=".."`).
    Error(ErrorCode),
}

fn bad<T>(code: ErrorCode) -> Result<T> {
    Err(Error::BadRequest(code))
}

fn iq(id: &str, ty: &str, child: Node) -> Node {
    Node::new("iq")
        .with_attr("xmlns", NS)
        .with_attr("id", id)
        .with_attr("type", ty)
        .with_children(vec![child])
}

/// The `id` of an enlistment iq, to answer even a request that failed to parse.
pub fn iq_id(node: &Node) -> Option<&str> {
    (node.tag == "iq" && node.attr("xmlns") == Some(NS))
        .then(|| node.attr("id"))
        .flatten()
        .filter(|id| valid_id(id))
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Checks the envelope and returns (id, type, the single child).
fn envelope(node: &Node) -> Result<(&str, &str, &Node)> {
    let id = iq_id(node).ok_or(Error::BadRequest(ErrorCode::BadRequest))?;
    let ty = node.attr("type").ok_or(Error::BadRequest(ErrorCode::BadRequest))?;
    match node.children() {
        [child] => Ok((id, ty, child)),
        _ => bad(ErrorCode::BadRequest),
    }
}

fn num(node: &Node, name: &str, max: u32, code: ErrorCode) -> Result<u32> {
    let s = node.attr(name).ok_or(Error::BadRequest(code))?;
    if s.is_empty()
        || s.len() > 10
        || !s.bytes().all(|b| b.is_ascii_digit())
        || (s.len() > 1 && s.starts_with('0'))
    {
        return bad(code);
    }
    match s.parse::<u32>() {
        Ok(v) if v <= max => Ok(v),
        _ => bad(code),
    }
}

fn bytes_of<'n>(
    node: &'n Node,
    child: &str,
    len: usize,
    first: Option<u8>,
    code: ErrorCode,
) -> Result<&'n [u8]> {
    let b = node.child(child).and_then(Node::bytes).ok_or(Error::BadRequest(code))?;
    if b.len() != len || first.is_some_and(|f| b.first() != Some(&f)) {
        return bad(code);
    }
    Ok(b)
}

fn flag(node: &Node, name: &str) -> Result<bool> {
    match node.attr(name) {
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        _ => bad(ErrorCode::BadRequest),
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

fn valid_consent_version(v: &str) -> bool {
    (1..=32).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn valid_account(a: &str) -> bool {
    (1..=64).contains(&a.len())
        && a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl KeyBundle {
    fn to_nodes(&self) -> Vec<Node> {
        let signed = |tag: &str, k: &SignedPrekey| {
            Node::new(tag).with_attr("id", k.id.to_string()).with_children(vec![
                Node::new("public").with_bytes(k.public.clone()),
                Node::new("signature").with_bytes(k.signature.clone()),
            ])
        };
        vec![
            Node::new("identity")
                .with_attr("reg-id", self.registration_id.to_string())
                .with_bytes(self.identity_key.clone()),
            signed("signed-prekey", &self.signed_prekey),
            signed("kyber-prekey", &self.kyber_prekey),
            Node::new("prekeys").with_children(
                self.prekeys
                    .iter()
                    .map(|p| {
                        Node::new("key")
                            .with_attr("id", p.id.to_string())
                            .with_bytes(p.public.clone())
                    })
                    .collect(),
            ),
        ]
    }

    fn from_parent(parent: &Node) -> Result<Self> {
        let identity =
            parent.child("identity").ok_or(Error::BadRequest(ErrorCode::InvalidIdentityKey))?;
        let identity_key =
            identity.bytes().ok_or(Error::BadRequest(ErrorCode::InvalidIdentityKey))?;
        if identity_key.len() != IDENTITY_KEY_LEN || identity_key[0] != 0x05 {
            return bad(ErrorCode::InvalidIdentityKey);
        }
        let registration_id = num(identity, "reg-id", 16380, ErrorCode::InvalidRegistrationId)?;
        if registration_id == 0 {
            return bad(ErrorCode::InvalidRegistrationId);
        }
        let signed = |tag: &str, len: usize, first: u8, code: ErrorCode| -> Result<SignedPrekey> {
            let n = parent.child(tag).ok_or(Error::BadRequest(code))?;
            Ok(SignedPrekey {
                id: num(n, "id", MAX_PREKEY_ID, code)?,
                public: bytes_of(n, "public", len, Some(first), code)?.to_vec(),
                signature: bytes_of(n, "signature", SIGNATURE_LEN, None, code)?.to_vec(),
            })
        };
        let signed_prekey =
            signed("signed-prekey", IDENTITY_KEY_LEN, 0x05, ErrorCode::InvalidSignedPrekey)?;
        let kyber_prekey =
            signed("kyber-prekey", KYBER_KEY_LEN, 0x08, ErrorCode::InvalidKyberPrekey)?;
        let list = parent.child("prekeys").map(Node::children).unwrap_or(&[]);
        if list.len() > MAX_PREKEYS {
            return bad(ErrorCode::InvalidPrekeys);
        }
        let mut prekeys: Vec<Prekey> = Vec::with_capacity(list.len());
        for k in list {
            let public = k.bytes().ok_or(Error::BadRequest(ErrorCode::InvalidPrekeys))?;
            if k.tag != "key" || public.len() != IDENTITY_KEY_LEN || public[0] != 0x05 {
                return bad(ErrorCode::InvalidPrekeys);
            }
            let id = num(k, "id", MAX_PREKEY_ID, ErrorCode::InvalidPrekeys)?;
            if prekeys.iter().any(|p| p.id == id) {
                return bad(ErrorCode::InvalidPrekeys);
            }
            prekeys.push(Prekey { id, public: public.to_vec() });
        }
        Ok(Self {
            identity_key: identity_key.to_vec(),
            registration_id,
            signed_prekey,
            kyber_prekey,
            prekeys,
        })
    }
}

impl Address {
    fn to_node(&self) -> Node {
        let mut n = Node::new("address")
            .with_attr("account", &self.account)
            .with_attr("device", self.device.to_string());
        if let Some(i) = &self.integrator {
            n.set_attr("integrator", i);
        }
        n
    }

    fn from_parent(parent: &Node) -> Result<Self> {
        let n = parent.child("address").ok_or(Error::BadRequest(ErrorCode::BadRequest))?;
        let account = n
            .attr("account")
            .filter(|a| valid_account(a))
            .ok_or(Error::BadRequest(ErrorCode::BadRequest))?;
        let device = num(n, "device", 65535, ErrorCode::BadRequest)?;
        let integrator = match n.attr("integrator") {
            None => None,
            Some(i) if valid_integrator_id(i) => Some(i.to_owned()),
            Some(_) => return bad(ErrorCode::BadRequest),
        };
        if device == 0 {
            return bad(ErrorCode::BadRequest);
        }
        Ok(Self { account: account.to_owned(), device, integrator })
    }
}

impl Consent {
    fn to_node(&self) -> Node {
        Node::new("consent")
            .with_attr("version", &self.version)
            .with_attr("read-receipts", on_off(self.read_receipts))
    }

    fn from_parent(parent: &Node) -> Result<Self> {
        let n = parent.child("consent").ok_or(Error::BadRequest(ErrorCode::ConsentRequired))?;
        let version = n
            .attr("version")
            .filter(|v| valid_consent_version(v))
            .ok_or(Error::BadRequest(ErrorCode::ConsentRequired))?;
        Ok(Self { version: version.to_owned(), read_receipts: flag(n, "read-receipts")? })
    }
}

fn identifier_of(n: &Node) -> Result<String> {
    match n.attr("identifier") {
        Some(i) if crate::token::valid_subject(i) => Ok(i.to_owned()),
        _ => bad(ErrorCode::InvalidIdentifier),
    }
}

impl Request {
    /// Whether an interop session whose identity is not enlisted may send this request:
    /// only `enlist`, `status` and `opt-out` (anything else is answered `not-enlisted`).
    pub fn allowed_before_enlistment(&self) -> bool {
        matches!(self, Request::Enlist { .. } | Request::Status | Request::OptOut)
    }

    /// The iq carrying this request.
    pub fn to_node(&self, id: &str) -> Node {
        match self {
            Request::Enlist { keys, consent, push_token } => {
                let mut children = keys.to_nodes();
                children.push(consent.to_node());
                children.push(Node::new("push-token").with_bytes(push_token.clone()));
                iq(id, "set", Node::new("enlist").with_attr("v", VERSION).with_children(children))
            }
            Request::Status => iq(id, "get", Node::new("status")),
            Request::OptOut => iq(id, "set", Node::new("opt-out")),
            Request::Register { identifier } => {
                iq(id, "set", Node::new("register").with_attr("identifier", identifier))
            }
            Request::Confirm { identifier, code, keys } => iq(
                id,
                "set",
                Node::new("confirm")
                    .with_attr("identifier", identifier)
                    .with_attr("code", code)
                    .with_children(keys.to_nodes()),
            ),
            Request::InteropOptIn { enabled } => {
                iq(id, "set", Node::new("interop").with_attr("enabled", on_off(*enabled)))
            }
        }
    }

    /// Parses and validates a request iq. The error carries the code to answer with
    /// (use [`iq_id`] for the id of the error response).
    pub fn from_node(node: &Node) -> Result<(String, Request)> {
        let (id, ty, child) = envelope(node)?;
        let req = match (ty, child.tag.as_str()) {
            ("set", "enlist") => {
                if child.attr("v") != Some(VERSION) {
                    return bad(ErrorCode::UnsupportedVersion);
                }
                let keys = KeyBundle::from_parent(child)?;
                let consent = Consent::from_parent(child)?;
                let push_token = child.child("push-token").and_then(Node::bytes).unwrap_or(&[]);
                if push_token.is_empty() || push_token.len() > MAX_PUSH_TOKEN {
                    return bad(ErrorCode::InvalidPushToken);
                }
                Request::Enlist { keys, consent, push_token: push_token.to_vec() }
            }
            ("get", "status") => Request::Status,
            ("set", "opt-out") => Request::OptOut,
            ("set", "register") => Request::Register { identifier: identifier_of(child)? },
            ("set", "confirm") => {
                let identifier = identifier_of(child)?;
                let code = child.attr("code").unwrap_or("");
                if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
                    return bad(ErrorCode::InvalidCode);
                }
                Request::Confirm {
                    identifier,
                    code: code.to_owned(),
                    keys: KeyBundle::from_parent(child)?,
                }
            }
            ("set", "interop") => Request::InteropOptIn { enabled: flag(child, "enabled")? },
            _ => return bad(ErrorCode::BadRequest),
        };
        Ok((id.to_owned(), req))
    }
}

impl Response {
    /// The iq carrying this response.
    pub fn to_node(&self, id: &str) -> Node {
        match self {
            Response::Enlisted { address, created } => iq(
                id,
                "result",
                Node::new("enlisted")
                    .with_attr("created", if *created { "true" } else { "false" })
                    .with_children(vec![address.to_node()]),
            ),
            Response::Status(Status::NotEnlisted) => {
                iq(id, "result", Node::new("status").with_attr("state", "not-enlisted"))
            }
            Response::Status(Status::Enlisted { address, consent }) => iq(
                id,
                "result",
                Node::new("status")
                    .with_attr("state", "enlisted")
                    .with_children(vec![address.to_node(), consent.to_node()]),
            ),
            Response::OptedOut => iq(id, "result", Node::new("opted-out")),
            Response::CodeSent { expires_in } => iq(
                id,
                "result",
                Node::new("code-sent").with_attr("expires-in", expires_in.to_string()),
            ),
            Response::Registered { address } => {
                iq(id, "result", Node::new("registered").with_children(vec![address.to_node()]))
            }
            Response::InteropOptIn { enabled } => {
                iq(id, "result", Node::new("interop").with_attr("enabled", on_off(*enabled)))
            }
            Response::Error(code) => {
                iq(id, "error", Node::new("error").with_attr("code", code.as_str()))
            }
        }
    }

    /// Parses a response iq (the client side).
    pub fn from_node(node: &Node) -> Result<(String, Response)> {
        let (id, ty, child) = envelope(node)?;
        let resp = match (ty, child.tag.as_str()) {
            ("result", "enlisted") => Response::Enlisted {
                address: Address::from_parent(child)?,
                created: match child.attr("created") {
                    Some("true") => true,
                    Some("false") => false,
                    _ => return bad(ErrorCode::BadRequest),
                },
            },
            ("result", "status") => Response::Status(match child.attr("state") {
                Some("not-enlisted") => Status::NotEnlisted,
                Some("enlisted") => Status::Enlisted {
                    address: Address::from_parent(child)?,
                    consent: Consent::from_parent(child)?,
                },
                _ => return bad(ErrorCode::BadRequest),
            }),
            ("result", "opted-out") => Response::OptedOut,
            ("result", "code-sent") => Response::CodeSent {
                expires_in: num(child, "expires-in", u32::MAX, ErrorCode::BadRequest)?,
            },
            ("result", "registered") => {
                Response::Registered { address: Address::from_parent(child)? }
            }
            ("result", "interop") => Response::InteropOptIn { enabled: flag(child, "enabled")? },
            ("error", "error") => Response::Error(
                child
                    .attr("code")
                    .and_then(ErrorCode::from_wire)
                    .ok_or(Error::BadRequest(ErrorCode::BadRequest))?,
            ),
            _ => return bad(ErrorCode::BadRequest),
        };
        Ok((id.to_owned(), resp))
    }
}

/// A native registration's verification code, as the gatekeeper keeps it between `register`
/// and `confirm`: 6 uniformly random digits, valid for [`PendingCode::TTL`], at most
/// [`PendingCode::MAX_ATTEMPTS`] wrong tries. `Debug` does not show the code.
pub struct PendingCode {
    code: zeroize::Zeroizing<String>,
    expires_at: crate::UnixTime,
    attempts_left: u8,
}

impl fmt::Debug for PendingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingCode")
            .field("expires_at", &self.expires_at)
            .field("attempts_left", &self.attempts_left)
            .finish_non_exhaustive()
    }
}

impl PendingCode {
    /// How long a code is valid.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(600);
    /// Wrong tries before the code is void.
    pub const MAX_ATTEMPTS: u8 = 5;

    /// A fresh code issued at `now`.
    pub fn generate(rng: &mut impl rand_core::CryptoRng, now: crate::UnixTime) -> Self {
        // Rejection sampling keeps the digits uniform: 4_294_000_000 is a multiple of 10^6.
        let n = loop {
            let v = rng.next_u32();
            if v < 4_294_000_000 {
                break v % 1_000_000;
            }
        };
        Self {
            code: zeroize::Zeroizing::new(format!("{n:06}")),
            expires_at: now.saturating_add(Self::TTL),
            attempts_left: Self::MAX_ATTEMPTS,
        }
    }

    /// The code, to send to the user (or print, in development mode).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Seconds until the code expires, for `code-sent@expires-in`.
    pub fn expires_in(&self, now: crate::UnixTime) -> u32 {
        u32::try_from(self.expires_at.since(now).as_secs()).unwrap_or(u32::MAX)
    }

    /// Checks a submitted code (constant time). `CodeExpired` once expired or out of
    /// attempts (register again); `InvalidCode` for a wrong code with attempts left.
    pub fn check(
        &mut self,
        submitted: &str,
        now: crate::UnixTime,
    ) -> std::result::Result<(), ErrorCode> {
        if now >= self.expires_at || self.attempts_left == 0 {
            return Err(ErrorCode::CodeExpired);
        }
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(submitted.as_bytes(), self.code.as_bytes()).into();
        if same {
            // A code is good once.
            self.attempts_left = 0;
            return Ok(());
        }
        self.attempts_left -= 1;
        Err(if self.attempts_left == 0 { ErrorCode::CodeExpired } else { ErrorCode::InvalidCode })
    }
}

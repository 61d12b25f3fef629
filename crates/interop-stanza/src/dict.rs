//! The token dictionary of the binary codec, versioned.
//!
//! A dictionary maps frequent strings (tags, attribute names, attribute values) to one byte
//! (page 0) or two bytes (`0xF0` + index, page 1). Its version is the stanza-dictionary byte of
//! the connection header: both sides of a connection use the same table, and a server refuses a
//! version it does not know ([`Dictionary::for_version`]).
//!
//! Tables are append-only within a version: once version 1 is published, changing an entry
//! means publishing version 2.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use crate::{Error, Result};

/// The dictionary version this crate writes by default (the connection header's byte 4).
pub const DICTIONARY_VERSION: u8 = 1;

/// The longest string in any dictionary (checked by a test).
const MAX_TOKEN_LEN: usize = 24;

/// Number of page-0 slots: bytes `0x00..=0xCF`; `0x00` is reserved and never a token.
pub const PAGE0_SLOTS: usize = 0xD0;

/// A versioned token table.
#[derive(Debug)]
pub struct Dictionary {
    version: u8,
    page0: &'static [&'static str],
    page1: &'static [&'static str],
    index: OnceLock<HashMap<&'static str, Token, BuildHasherDefault<Fnv>>>,
}

/// FNV-1a: the keys are short, fixed and public, so a fast non-keyed hash is right here (the
/// encoder looks up every string it writes; SipHash was a fifth of encoding time).
#[derive(Debug)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Where a string sits in a dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// One byte, `0x01..=0xCF`.
    Page0(u8),
    /// `0xF0` followed by this byte.
    Page1(u8),
}

static V1: Dictionary =
    Dictionary { version: 1, page0: PAGE0_V1, page1: PAGE1_V1, index: OnceLock::new() };

impl Dictionary {
    /// The dictionary of `version`, or [`Error::UnsupportedVersion`].
    pub fn for_version(version: u8) -> Result<&'static Dictionary> {
        match version {
            1 => Ok(&V1),
            other => Err(Error::UnsupportedVersion(other)),
        }
    }

    /// The dictionary of [`DICTIONARY_VERSION`].
    pub fn current() -> &'static Dictionary {
        &V1
    }

    /// Dictionary versions this crate can encode and decode.
    pub fn supported_versions() -> &'static [u8] {
        &[1]
    }

    /// This dictionary's version byte.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The page-0 table (index = token byte; entry 0 is the reserved empty slot).
    pub fn page0(&self) -> &'static [&'static str] {
        self.page0
    }

    /// The page-1 table (index = the byte after `0xF0`).
    pub fn page1(&self) -> &'static [&'static str] {
        self.page1
    }

    /// The token for `s`, if it is in the dictionary.
    pub fn token(&self, s: &str) -> Option<Token> {
        // Longer than any entry (`feature-not-implemented`, 23 bytes): skip the lookup.
        if s.len() > MAX_TOKEN_LEN {
            return None;
        }
        self.index
            .get_or_init(|| {
                let mut map = HashMap::with_capacity_and_hasher(
                    self.page0.len() + self.page1.len(),
                    BuildHasherDefault::default(),
                );
                for (i, s) in self.page0.iter().enumerate().skip(1) {
                    let i = u8::try_from(i).expect("page 0 has at most 0xD0 entries");
                    map.insert(*s, Token::Page0(i));
                }
                for (i, s) in self.page1.iter().enumerate() {
                    let i = u8::try_from(i).expect("page 1 has at most 256 entries");
                    map.insert(*s, Token::Page1(i));
                }
                map
            })
            .get(s)
            .copied()
    }

    /// The string of page-0 byte `b`.
    pub fn page0_str(&self, b: u8) -> Option<&'static str> {
        match b {
            0 => None,
            b => self.page0.get(usize::from(b)).copied(),
        }
    }

    /// The string of page-1 index `b`.
    pub fn page1_str(&self, b: u8) -> Option<&'static str> {
        self.page1.get(usize::from(b)).copied()
    }
}

/// Version 1, page 0: the most frequent tags, attribute names and values. Index = byte.
#[rustfmt::skip]
const PAGE0_V1: &[&str] = &[
    "",             // 0x00 reserved: never a token
    // stanza tags (0x01..)
    "message", "enc", "receipt", "ack", "iq", "presence", "chatstate", "notification",
    "stream:error", "error",
    // attribute names (0x0b..)
    "id", "to", "from", "type", "t", "v", "class", "participant", "jid", "count",
    "mediatype", "xmlns", "condition", "value", "name", "last", "code", "text",
    // enc / message values (0x1d..)
    "media", "pkmsg", "msg", "skmsg", "image", "video", "audio", "document", "sticker",
    "voice", "file",
    // receipt / ack values (0x28..)
    "read", "retry", "delivery",
    // iq (0x2b..)
    "get", "set", "result", "encrypt", "devices", "contacts", "media_conn",
    // structure (0x32..)
    "participants", "list", "item", "user", "device", "key", "skey", "kyber", "identity",
    "registration", "signature", "contact", "host",
    // presence / chat state (0x3f..)
    "available", "unavailable", "composing", "paused",
    // servers (0x43..)
    "s.interop", "g.interop", "interop",
    // small numbers (0x46..)
    "0", "1", "2", "3",
    // errors used on every connection (0x4a..)
    "bad-request", "recipient-unavailable", "unsupported-stanza-type", "item-not-found",
    "cancel", "modify", "wait", "auth",
];

/// Version 1, page 1: less frequent strings. Index = the byte after `0xF0`.
#[rustfmt::skip]
const PAGE1_V1: &[&str] = &[
    // RFC 6120 §8.3.3 stanza error conditions not on page 0 (0x00..)
    "conflict", "feature-not-implemented", "forbidden", "gone", "internal-server-error",
    "jid-malformed", "not-acceptable", "not-allowed", "not-authorized", "policy-violation",
    "redirect", "registration-required", "remote-server-not-found", "remote-server-timeout",
    "resource-constraint", "service-unavailable", "subscription-required",
    "undefined-condition", "unexpected-request",
    // RFC 6120 §4.9.3 stream error conditions not above (0x13..)
    "bad-format", "bad-namespace-prefix", "connection-timeout", "host-gone", "host-unknown",
    "improper-addressing", "invalid-from", "invalid-namespace", "invalid-xml",
    "not-well-formed", "remote-connection-failed", "reset", "restricted-xml",
    "see-other-host", "system-shutdown", "unsupported-encoding", "unsupported-feature",
    "unsupported-version",
    // error type (0x25..)
    "continue",
    // iq payloads and attributes (0x26..)
    "hostname", "ttl", "lookup", "uri", "stale-devices", "sender",
    // presence (0x2d..)
    "subscribe", "unsubscribe",
    // notifications (0x2f..)
    "account", "server_sync", "offline", "edit", "reason",
    // ack errors (0x34..)
    "duplicate", "rate-limited",
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn tables_fit_their_pages_and_have_no_duplicates() {
        assert!(PAGE0_V1.len() <= PAGE0_SLOTS);
        assert!(PAGE1_V1.len() <= 256);
        let mut seen = HashSet::new();
        for s in PAGE0_V1.iter().skip(1).chain(PAGE1_V1) {
            assert!(!s.is_empty());
            assert!(s.len() <= MAX_TOKEN_LEN, "{s} is longer than MAX_TOKEN_LEN");
            assert!(seen.insert(*s), "duplicate token {s}");
        }
    }

    #[test]
    fn lookup_is_the_inverse_of_the_tables() {
        let d = Dictionary::current();
        for b in 0..=u8::MAX {
            if let Some(s) = d.page0_str(b) {
                assert_eq!(d.token(s), Some(Token::Page0(b)));
            }
            if let Some(s) = d.page1_str(b) {
                assert_eq!(d.token(s), Some(Token::Page1(b)));
            }
        }
        assert_eq!(d.page0_str(0), None);
        assert_eq!(d.token(""), None);
    }

    #[test]
    fn unknown_versions_are_refused() {
        assert_eq!(Dictionary::for_version(0).err(), Some(Error::UnsupportedVersion(0)));
        assert_eq!(Dictionary::for_version(2).err(), Some(Error::UnsupportedVersion(2)));
        assert_eq!(Dictionary::for_version(DICTIONARY_VERSION).map(Dictionary::version), Ok(1));
    }
}

//! The media descriptor: everything a recipient needs to fetch, verify and decrypt one file.

use std::fmt;

use crate::encrypt::FileDigests;
use crate::key::{MediaKey, MediaType};
use crate::{Error, Result};

/// Longest accepted MIME type (RFC 6838 allows 127 characters per part).
pub const MAX_MIME_TYPE_LEN: usize = 255;

/// Largest inline thumbnail in bytes (16 KiB, the limit of the content protobuf's `thumbnail`).
pub const MAX_THUMBNAIL_LEN: usize = 16 * 1024;

/// Longest media path in bytes.
pub const MAX_PATH_LEN: usize = 512;

/// Most segments in a media path.
pub const MAX_PATH_SEGMENTS: usize = 16;

/// Longest provider id in bytes.
pub const MAX_PROVIDER_ID_LEN: usize = 64;

/// Largest width or height accepted in [`Dimensions`].
pub const MAX_DIMENSION: u32 = 65_535;

/// Longest duration accepted (24 hours, in milliseconds).
pub const MAX_DURATION_MS: u32 = 24 * 60 * 60 * 1000;

/// The description of one encrypted file, carried inside the end-to-end encrypted message.
/// Plain data: interop-e2ee maps it to and from its content protobuf (`interop.content.v1.Media`)
/// field by field, then calls [`MediaDescriptor::validate`]:
///
/// | protobuf field | here |
/// |---|---|
/// | `media_type` | `media_type` ([`MediaType::from_wire`]) |
/// | `mime` | `mime_type` |
/// | `media_key` | `media_key` ([`MediaKey::from_slice`]) |
/// | `size` | `digests.plaintext_len` |
/// | `file_sha256` | `digests.plaintext_sha256` |
/// | `encrypted_sha256` | `digests.encrypted_sha256` |
/// | `provider`, `path` | `location` ([`ProviderId::parse`], [`MediaPath::parse`]) |
/// | `width`, `height` | `dimensions` (both or neither) |
/// | `duration_ms` | `duration_ms` |
/// | `thumbnail` (empty = none) | `thumbnail` |
///
/// Caption and file name are message content, not part of the file's description.
///
/// `Debug` shows only the media type, MIME type and size: the key, hashes, location and
/// thumbnail stay out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaDescriptor {
    /// What kind of media this is; selects the HKDF info string.
    pub media_type: MediaType,
    /// MIME type of the plaintext, e.g. `image/jpeg` (lowercase `type/subtype`, no parameters).
    pub mime_type: String,
    /// The file's 32-byte media key.
    pub media_key: MediaKey,
    /// Plaintext length and the SHA-256 of the plaintext and of the encrypted file.
    pub digests: FileDigests,
    /// Where the encrypted file is hosted.
    pub location: MediaLocation,
    /// Pixel size, for images and videos.
    pub dimensions: Option<Dimensions>,
    /// Play time in milliseconds, for audio and video.
    pub duration_ms: Option<u32>,
    /// A small preview (JPEG), carried inline: it is already end-to-end encrypted with the
    /// message, so it is not encrypted again.
    pub thumbnail: Option<Vec<u8>>,
}

impl MediaDescriptor {
    /// Checks the fields whose types do not already guarantee validity: MIME type grammar,
    /// dimensions, duration, thumbnail size, and that the size implies a representable
    /// encrypted length.
    pub fn validate(&self) -> Result<()> {
        validate_mime_type(&self.mime_type)?;
        if self.digests.encrypted_len().is_none() {
            return Err(Error::InvalidDescriptor("plaintext length is too large"));
        }
        if let Some(d) = self.dimensions
            && (d.width == 0
                || d.height == 0
                || d.width > MAX_DIMENSION
                || d.height > MAX_DIMENSION)
        {
            return Err(Error::InvalidDescriptor("dimensions out of range"));
        }
        if self.duration_ms.is_some_and(|d| d > MAX_DURATION_MS) {
            return Err(Error::InvalidDescriptor("duration out of range"));
        }
        if self.thumbnail.as_ref().is_some_and(|t| t.is_empty() || t.len() > MAX_THUMBNAIL_LEN) {
            return Err(Error::InvalidDescriptor("thumbnail is empty or too large"));
        }
        Ok(())
    }

    /// The content address of the encrypted file (the SHA-256 the descriptor carries).
    pub fn content_address(&self) -> crate::ContentAddress {
        crate::ContentAddress::from_sha256(self.digests.encrypted_sha256)
    }

    /// A decryptor for this file writing into `sink`.
    pub fn decryptor<W: std::io::Write>(&self, sink: W) -> Result<crate::Decryptor<W>> {
        crate::Decryptor::new(&self.media_key, self.media_type, self.digests, sink)
    }
}

impl fmt::Debug for MediaDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaDescriptor")
            .field("media_type", &self.media_type)
            .field("mime_type", &self.mime_type)
            .field("plaintext_len", &self.digests.plaintext_len)
            .finish_non_exhaustive()
    }
}

/// Pixel dimensions of an image or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    /// Width in pixels, 1..=65535.
    pub width: u32,
    /// Height in pixels, 1..=65535.
    pub height: u32,
}

/// Where an encrypted file lives: a registered provider and a path under that provider's media
/// base URL.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaLocation {
    /// The provider hosting the file (its integrator id in the gatekeeper's registry).
    pub provider: ProviderId,
    /// The file's path relative to the provider's media base URL.
    pub path: MediaPath,
}

impl fmt::Debug for MediaLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaLocation").field("provider", &self.provider).finish_non_exhaustive()
    }
}

/// A provider's integrator id: 1 to 64 bytes of `a-z 0-9 . _ -`, starting with a letter or
/// digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProviderId(String);

impl ProviderId {
    /// Parses an integrator id.
    pub fn parse(s: &str) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= MAX_PROVIDER_ID_LEN
            && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok {
            Ok(ProviderId(s.to_owned()))
        } else {
            Err(Error::InvalidDescriptor("invalid provider id"))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A path relative to a provider's media base URL, safe to append to it.
///
/// Grammar: 1 to 16 segments separated by `/`, each 1 or more bytes of RFC 3986 *unreserved*
/// characters (`A-Z a-z 0-9 - . _ ~`), none equal to `.` or `..`; at most 512 bytes in all. So
/// there is no leading or trailing `/`, no empty segment, no `%` (no percent-encoding tricks),
/// no `\`, `?`, `#`, `:` or `@`: appending it to a base URL ending in `/` can never leave that
/// base. The reference media hosts use a single segment, the 64 lowercase hex digits of the
/// content address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MediaPath(String);

impl MediaPath {
    /// Parses a media path (see the type's grammar).
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() || s.len() > MAX_PATH_LEN {
            return Err(Error::InvalidPath);
        }
        let mut segments = 0;
        for segment in s.split('/') {
            segments += 1;
            if segments > MAX_PATH_SEGMENTS
                || segment.is_empty()
                || segment == "."
                || segment == ".."
                || !segment.bytes().all(is_unreserved)
            {
                return Err(Error::InvalidPath);
            }
        }
        Ok(MediaPath(s.to_owned()))
    }

    /// The path of a content address on a reference media host.
    pub fn for_address(address: &crate::ContentAddress) -> Self {
        MediaPath(address.to_hex())
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MediaPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediaPath(..)")
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// `type/subtype`, lowercase, each part 1+ bytes of RFC 6838 restricted-name characters.
fn validate_mime_type(s: &str) -> Result<()> {
    let restricted = |part: &str| {
        !part.is_empty()
            && part.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&-^_.+".contains(&b))
    };
    match s.split_once('/') {
        Some((t, sub)) if s.len() <= MAX_MIME_TYPE_LEN && restricted(t) && restricted(sub) => {
            Ok(())
        }
        _ => Err(Error::InvalidDescriptor("invalid mime type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_path_grammar() {
        for ok in [
            "a",
            "0123abcdef",
            "media/v1/abc",
            "a.b",
            "...",
            "a-b_c~d",
            &"x".repeat(MAX_PATH_LEN),
            &["s"; MAX_PATH_SEGMENTS].join("/"),
        ] {
            assert!(MediaPath::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            ".",
            "..",
            "a/../b",
            "a/./b",
            "%2e%2e",
            "a%2fb",
            "a\\b",
            "a?b",
            "a#b",
            "http://evil",
            "//evil.example/x",
            "user@host",
            "a b",
            "é",
            &"x".repeat(MAX_PATH_LEN + 1),
            &["s"; MAX_PATH_SEGMENTS + 1].join("/"),
        ] {
            assert!(matches!(MediaPath::parse(bad), Err(Error::InvalidPath)), "{bad:?}");
        }
    }

    #[test]
    fn provider_id_grammar() {
        for ok in ["acme", "chat.example", "a", "0x_-"] {
            assert!(ProviderId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Acme", "-acme", ".a", "a/b", "a b", &"a".repeat(65)] {
            assert!(ProviderId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mime_type_grammar() {
        for ok in ["image/jpeg", "audio/ogg", "application/vnd.example+json", "video/mp4"] {
            assert!(validate_mime_type(ok).is_ok(), "{ok}");
        }
        for bad in ["", "image", "image/", "/jpeg", "Image/JPEG", "image/jpeg; q=1", "a/b/c"] {
            assert!(validate_mime_type(bad).is_err(), "{bad:?}");
        }
    }

    fn descriptor() -> MediaDescriptor {
        MediaDescriptor {
            media_type: MediaType::Image,
            mime_type: "image/jpeg".into(),
            media_key: MediaKey::from_bytes([9; 32]),
            digests: FileDigests {
                plaintext_len: 1234,
                plaintext_sha256: [1; 32],
                encrypted_sha256: [2; 32],
            },
            location: MediaLocation {
                provider: ProviderId::parse("acme").unwrap(),
                path: MediaPath::parse("secret-path").unwrap(),
            },
            dimensions: Some(Dimensions { width: 640, height: 480 }),
            duration_ms: None,
            thumbnail: Some(vec![0xff, 0xd8]),
        }
    }

    #[test]
    fn validate_checks_bounds() {
        assert!(descriptor().validate().is_ok());
        assert_eq!(descriptor().content_address().as_bytes(), &[2; 32]);
        let mut d = descriptor();
        d.dimensions = Some(Dimensions { width: 0, height: 1 });
        assert!(d.validate().is_err());
        let mut d = descriptor();
        d.thumbnail = Some(vec![0; MAX_THUMBNAIL_LEN + 1]);
        assert!(d.validate().is_err());
        let mut d = descriptor();
        d.duration_ms = Some(MAX_DURATION_MS + 1);
        assert!(d.validate().is_err());
        let mut d = descriptor();
        d.digests.plaintext_len = u64::MAX;
        assert!(d.validate().is_err());
        let mut d = descriptor();
        d.mime_type = "IMAGE".into();
        assert!(d.validate().is_err());
    }

    #[test]
    fn debug_shows_no_key_hash_or_location() {
        let s = format!("{:?}", descriptor());
        assert!(s.contains("image/jpeg") && s.contains("1234"), "{s}");
        for secret in ["secret-path", "09", "[9", "[1", "[2", "255"] {
            assert!(!s.contains(secret), "{secret} in {s}");
        }
    }
}

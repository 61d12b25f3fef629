//! Media hosting rules: content addressing, upload checks, byte ranges, size caps.
//!
//! These are the pure rules that the provider's media host and the gatekeeper's native media
//! host (both in interop-server) apply; the HTTP plumbing lives there.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::key::is_encrypted_len;
use crate::{Error, Result};

/// Default cap on the size of one encrypted file on a media host and through the proxy: 1 GiB.
pub const DEFAULT_MAX_FILE_LEN: u64 = 1 << 30;

/// Longest `Range` header value a host looks at; longer values are refused.
pub const MAX_RANGE_HEADER_LEN: usize = 128;

/// The name of an encrypted file on a media host: the SHA-256 of the encrypted file
/// (ciphertext ‖ MAC), written as 64 lowercase hex digits in paths.
///
/// `Display` gives the hex form (it is the path); `Debug` hides it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentAddress([u8; 32]);

impl ContentAddress {
    /// The address of a file whose SHA-256 is `sha256` (the descriptor's `encrypted_sha256`).
    pub fn from_sha256(sha256: [u8; 32]) -> Self {
        ContentAddress(sha256)
    }

    /// The address of an encrypted file held in memory.
    pub fn of(encrypted_file: &[u8]) -> Self {
        ContentAddress(Sha256::digest(encrypted_file).into())
    }

    /// Parses exactly 64 lowercase hex digits (uppercase is refused so each file has one name).
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::InvalidContentAddress);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| Error::InvalidContentAddress)?;
        Ok(ContentAddress(out))
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentAddress(..)")
    }
}

/// Size limits of a media host or of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Largest encrypted file accepted (upload) or passed through (proxy), in bytes.
    pub max_file_len: u64,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits { max_file_len: DEFAULT_MAX_FILE_LEN }
    }
}

/// Checks an upload as it streams in: `PUT <upload base>/<content address>` with a
/// `Content-Length`.
///
/// Call order: [`UploadVerifier::new`] when the request head arrives (refuse before reading the
/// body), [`UploadVerifier::update`] for each body chunk (store it in a temporary object), then
/// [`UploadVerifier::finish`]: only on `Ok` does the host make the object visible under its
/// address. Objects are immutable: an upload to an address that already exists succeeds without
/// rewriting it once its hash has been checked.
#[derive(Clone)]
pub struct UploadVerifier {
    address: ContentAddress,
    declared_len: u64,
    received: u64,
    hasher: Sha256,
}

impl UploadVerifier {
    /// Starts checking an upload to `address` that declares `content_length` bytes.
    ///
    /// Errors: [`Error::MissingLength`] without a `Content-Length`; [`Error::TooLarge`] above
    /// the host's cap; [`Error::InvalidUpload`] if the length cannot be an encrypted file
    /// (a positive number of 16-byte blocks plus the 10-byte MAC).
    pub fn new(
        address: ContentAddress,
        content_length: Option<u64>,
        limits: &HostLimits,
    ) -> Result<Self> {
        let declared_len = content_length.ok_or(Error::MissingLength)?;
        if declared_len > limits.max_file_len {
            return Err(Error::TooLarge);
        }
        if !is_encrypted_len(declared_len) {
            return Err(Error::InvalidUpload);
        }
        Ok(UploadVerifier { address, declared_len, received: 0, hasher: Sha256::new() })
    }

    /// Feeds the next body chunk. Errors with [`Error::TooLong`] as soon as the body exceeds
    /// its declared length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<()> {
        if chunk.len() as u64 > self.declared_len - self.received {
            return Err(Error::TooLong);
        }
        self.received += chunk.len() as u64;
        self.hasher.update(chunk);
        Ok(())
    }

    /// Ends the body. Errors: [`Error::Truncated`] if it was shorter than declared,
    /// [`Error::UploadHashMismatch`] if its SHA-256 is not the address.
    pub fn finish(self) -> Result<ContentAddress> {
        if self.received != self.declared_len {
            return Err(Error::Truncated);
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        if bool::from(digest.ct_eq(&self.address.0)) {
            Ok(self.address)
        } else {
            Err(Error::UploadHashMismatch)
        }
    }
}

impl fmt::Debug for UploadVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadVerifier")
            .field("declared_len", &self.declared_len)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// Counts bytes streamed through the proxy (or out of a host) against a cap.
#[derive(Debug, Clone, Copy)]
pub struct ByteBudget {
    remaining: u64,
}

impl ByteBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> Self {
        ByteBudget { remaining: max }
    }

    /// Checks an upstream `Content-Length` before streaming anything.
    pub fn check_declared(&self, content_length: u64) -> Result<()> {
        if content_length > self.remaining { Err(Error::TooLarge) } else { Ok(()) }
    }

    /// Accounts for the next chunk; errors with [`Error::TooLarge`] once past the cap (the
    /// proxy then aborts the response).
    pub fn consume(&mut self, n: usize) -> Result<()> {
        self.remaining = self.remaining.checked_sub(n as u64).ok_or(Error::TooLarge)?;
        Ok(())
    }
}

/// An inclusive byte range of a stored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte offset.
    pub start: u64,
    /// Last byte offset (inclusive), `>= start`.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always false: a range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Content-Range` value of a 206 answer: `bytes START-END/TOTAL`.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, total)
    }
}

/// What a host does with a request's `Range` header (RFC 9110 §14), given the file's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No `Range` header, or a range unit other than `bytes` (which RFC 9110 says to ignore):
    /// answer 200 with the whole file.
    Full,
    /// One satisfiable range: answer 206 with `Content-Range`.
    Partial(ByteRange),
    /// A well-formed range that starts at or past the end of the file: answer 416 with
    /// `Content-Range: bytes */TOTAL`.
    NotSatisfiable,
    /// A malformed `bytes` range, several ranges, or a header longer than 128 bytes: answer
    /// 416 with `Content-Range: bytes */TOTAL` (RFC 9110 allows rejecting these).
    Invalid,
}

/// Parses a `Range` header value for a file of `total` bytes. Accepted forms (one range only):
/// `bytes=FIRST-LAST`, `bytes=FIRST-`, `bytes=-SUFFIX`; the unit is case-insensitive, numbers
/// are ASCII digits (at most 19); `LAST` past the end is clamped to the end.
pub fn parse_range(header: Option<&str>, total: u64) -> RangeRequest {
    let Some(value) = header else {
        return RangeRequest::Full;
    };
    if value.len() > MAX_RANGE_HEADER_LEN {
        return RangeRequest::Invalid;
    }
    let value = value.trim_matches([' ', '\t']);
    let Some((unit, set)) = value.split_once('=') else {
        return RangeRequest::Invalid;
    };
    if !unit.eq_ignore_ascii_case("bytes") {
        return RangeRequest::Full;
    }
    let Some((first, last)) = set.trim_matches([' ', '\t']).split_once('-') else {
        return RangeRequest::Invalid;
    };
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.is_empty(), last.is_empty()) {
        // bytes=-SUFFIX: the last SUFFIX bytes.
        (true, false) => match number(last) {
            None => RangeRequest::Invalid,
            Some(0) => RangeRequest::NotSatisfiable,
            Some(_) if total == 0 => RangeRequest::NotSatisfiable,
            Some(n) => {
                RangeRequest::Partial(ByteRange { start: total.saturating_sub(n), end: total - 1 })
            }
        },
        // bytes=FIRST-
        (false, true) => match number(first) {
            None => RangeRequest::Invalid,
            Some(start) if start >= total => RangeRequest::NotSatisfiable,
            Some(start) => RangeRequest::Partial(ByteRange { start, end: total - 1 }),
        },
        // bytes=FIRST-LAST
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= total {
                    RangeRequest::NotSatisfiable
                } else {
                    RangeRequest::Partial(ByteRange { start, end: end.min(total - 1) })
                }
            }
            _ => RangeRequest::Invalid,
        },
        (true, true) => RangeRequest::Invalid,
    }
}

/// The `Content-Range` value of a 416 answer: `bytes */TOTAL`.
pub fn unsatisfied_content_range(total: u64) -> String {
    format!("bytes */{total}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_address_parsing() {
        let a = ContentAddress::of(b"abc");
        assert_eq!(a.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(ContentAddress::parse(&a.to_hex()).unwrap(), a);
        assert_eq!(format!("{a}"), a.to_hex());
        assert_eq!(format!("{a:?}"), "ContentAddress(..)");
        for bad in [
            "",
            "ba7816bf",
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ag",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0",
            "../816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            assert!(ContentAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upload_is_checked_against_its_address_and_length() {
        let file = vec![7u8; 42];
        let address = ContentAddress::of(&file);
        let limits = HostLimits::default();

        let mut up = UploadVerifier::new(address, Some(42), &limits).unwrap();
        up.update(&file[..5]).unwrap();
        up.update(&file[5..]).unwrap();
        assert_eq!(up.finish().unwrap(), address);

        // A different body under the same address.
        let mut up = UploadVerifier::new(address, Some(42), &limits).unwrap();
        let mut other = file.clone();
        other[41] ^= 1;
        up.update(&other).unwrap();
        assert!(matches!(up.finish(), Err(Error::UploadHashMismatch)));

        // Shorter and longer than declared.
        let mut up = UploadVerifier::new(address, Some(42), &limits).unwrap();
        up.update(&file[..41]).unwrap();
        assert!(matches!(up.finish(), Err(Error::Truncated)));
        let mut up = UploadVerifier::new(address, Some(42), &limits).unwrap();
        up.update(&file).unwrap();
        assert!(matches!(up.update(&[0]), Err(Error::TooLong)));

        // Refused from the head alone.
        assert!(matches!(UploadVerifier::new(address, None, &limits), Err(Error::MissingLength)));
        assert!(matches!(
            UploadVerifier::new(address, Some(43), &limits),
            Err(Error::InvalidUpload)
        ));
        let small = HostLimits { max_file_len: 41 };
        assert!(matches!(UploadVerifier::new(address, Some(42), &small), Err(Error::TooLarge)));
        assert!(matches!(
            UploadVerifier::new(address, Some(u64::MAX), &limits),
            Err(Error::TooLarge)
        ));
    }

    #[test]
    fn byte_budget_caps_streams() {
        let mut b = ByteBudget::new(10);
        assert!(b.check_declared(10).is_ok());
        assert!(matches!(b.check_declared(11), Err(Error::TooLarge)));
        b.consume(6).unwrap();
        b.consume(4).unwrap();
        assert!(matches!(b.consume(1), Err(Error::TooLarge)));
    }

    #[test]
    fn range_table() {
        use RangeRequest::*;
        let r = |start, end| Partial(ByteRange { start, end });
        let long = format!("bytes=0-{}", "0".repeat(130));
        let cases: &[(Option<&str>, u64, RangeRequest)] = &[
            (None, 100, Full),
            (Some("items=0-5"), 100, Full),
            (Some("bytes=0-0"), 100, r(0, 0)),
            (Some("bytes=0-99"), 100, r(0, 99)),
            (Some("bytes=10-1000"), 100, r(10, 99)),
            (Some("BYTES=10-"), 100, r(10, 99)),
            (Some(" bytes= 99- "), 100, r(99, 99)),
            (Some("bytes=-1"), 100, r(99, 99)),
            (Some("bytes=-500"), 100, r(0, 99)),
            (Some("bytes=100-"), 100, NotSatisfiable),
            (Some("bytes=100-200"), 100, NotSatisfiable),
            (Some("bytes=-0"), 100, NotSatisfiable),
            (Some("bytes=-5"), 0, NotSatisfiable),
            (Some("bytes=0-"), 0, NotSatisfiable),
            (Some("bytes=5-4"), 100, Invalid),
            (Some("bytes=-"), 100, Invalid),
            (Some("bytes="), 100, Invalid),
            (Some("bytes"), 100, Invalid),
            (Some("bytes=0-1,5-6"), 100, Invalid),
            (Some("bytes=+1-2"), 100, Invalid),
            (Some("bytes=0x1-2"), 100, Invalid),
            (Some("bytes=1 -2"), 100, Invalid),
            (Some("bytes=99999999999999999999-"), 100, Invalid),
            (Some("bytes=18446744073709551615-"), 100, Invalid),
            (Some("bytes=9999999999999999999-"), 100, NotSatisfiable),
            (Some(&long), 100, Invalid),
        ];
        for (header, total, want) in cases {
            assert_eq!(parse_range(*header, *total), *want, "{header:?} of {total}");
        }
        assert_eq!(ByteRange { start: 10, end: 99 }.content_range(100), "bytes 10-99/100");
        assert_eq!(ByteRange { start: 10, end: 99 }.len(), 90);
        assert_eq!(unsatisfied_content_range(100), "bytes */100");
    }
}

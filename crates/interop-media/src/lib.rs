//! Media encryption, media descriptors and the media hosting/proxy rules of interop messaging,
//! sans-IO.
//!
//! Images, voice messages, videos and files travel end-to-end encrypted. The sender encrypts a
//! file under a fresh random [`MediaKey`], uploads the encrypted file to its provider's media
//! host (content-addressed by the SHA-256 of the encrypted file), and sends a
//! [`MediaDescriptor`] inside the Signal-encrypted message. A gatekeeper recipient fetches the
//! encrypted file through the gatekeeper's media proxy, decrypts it into a temporary file, and
//! keeps it only once every check has passed.
//!
//! ```text
//!  sender                         media host                 gatekeeper proxy        recipient
//!  plaintext ─▶ Encryptor ─▶ encrypted file ─PUT /<address>─▶ UploadVerifier
//!                  │                                              │ stored, immutable
//!                  └─▶ FileDigests ─▶ MediaDescriptor ─(Signal message)──────────────────┐
//!                                                                                         ▼
//!              proxy_url(base, path) ◀── (provider, path) ───────────────────────── Decryptor ─▶ sink
//!              AddressGuard, ByteBudget, check_redirect,  ── encrypted bytes ───▶   (valid only after
//!              parse_range                                                            finish() == Ok)
//! ```
//!
//! Crypto, fixed by the protocol: `HKDF-SHA256(salt = none, ikm = media key, info = per media
//! type, e.g. "Interop Image Keys")` expanded to 80 bytes = IV (16) ‖ AES key (32) ‖ MAC key (32);
//! AES-256-CBC with PKCS#7; `MAC = HMAC-SHA256(mac key, IV ‖ ciphertext)` truncated to 10 bytes
//! and appended; the encrypted file is `ciphertext ‖ MAC`. The descriptor carries the SHA-256 of
//! the plaintext and of the encrypted file.
//!
//! # Example
//!
//! ```
//! use interop_media::{ContentAddress, Decryptor, Encryptor, MediaKey, MediaType};
//!
//! # fn main() -> interop_media::Result<()> {
//! let key = MediaKey::from_bytes([0x42; 32]); // in real use: MediaKey::generate(&mut rng)
//! let photo = b"not really a jpeg".repeat(1000);
//!
//! // Encrypt in chunks of any size; memory use does not depend on the file size.
//! let mut encrypted = Vec::new();
//! let mut enc = Encryptor::new(&key, MediaType::Image);
//! for chunk in photo.chunks(4096) {
//!     enc.update(chunk, &mut encrypted);
//! }
//! let digests = enc.finish(&mut encrypted);
//! assert_eq!(ContentAddress::of(&encrypted).as_bytes(), &digests.encrypted_sha256);
//!
//! // Decrypt in chunks into a sink (a temporary file in the client); the sink is handed back
//! // only after the MAC, padding and both hashes have been checked over the whole file.
//! let mut dec = Decryptor::new(&key, MediaType::Image, digests, Vec::new())?;
//! for chunk in encrypted.chunks(1000) {
//!     dec.update(chunk)?;
//! }
//! let plaintext = dec.finish()?;
//! assert_eq!(plaintext, photo);
//!
//! // A flipped bit anywhere is caught, and the partial output must be thrown away.
//! encrypted[3] ^= 1;
//! let mut dec = Decryptor::new(&key, MediaType::Image, digests, Vec::new())?;
//! dec.update(&encrypted)?;
//! assert!(matches!(dec.finish(), Err(interop_media::Error::Integrity)));
//! # Ok(())
//! # }
//! ```
//!
//! # What this crate does not do
//! - No HTTP, sockets, DNS or clock: the media host and proxy services live in interop-server,
//!   downloads and temporary files in interop-client. This crate decides; they move bytes.
//! - No resolution: [`AddressGuard`] judges addresses someone else resolved, and the caller must
//!   dial exactly the addresses it checked.
//! - No protobuf: [`MediaDescriptor`] is plain data that interop-e2ee maps to its content
//!   protobuf.
//! - No thumbnails or transcoding: the thumbnail is opaque bytes chosen by the sender.
//! - No randomness of its own: [`MediaKey::generate`] takes the caller's RNG.

#![forbid(unsafe_code)]

mod decrypt;
mod descriptor;
mod encrypt;
mod guard;
mod hosting;
mod key;
mod proxy;

pub use decrypt::{Decryptor, decrypt};
pub use descriptor::{
    Dimensions, MAX_DIMENSION, MAX_DURATION_MS, MAX_MIME_TYPE_LEN, MAX_PATH_LEN, MAX_PATH_SEGMENTS,
    MAX_PROVIDER_ID_LEN, MAX_THUMBNAIL_LEN, MediaDescriptor, MediaLocation, MediaPath, ProviderId,
};
pub use encrypt::{Encryptor, FileDigests, encrypt};
pub use guard::{AddressGuard, IpPrefix, Refusal, Verdict, classify};
pub use hosting::{
    ByteBudget, ByteRange, ContentAddress, DEFAULT_MAX_FILE_LEN, HostLimits, MAX_RANGE_HEADER_LEN,
    RangeRequest, UploadVerifier, parse_range, unsatisfied_content_range,
};
pub use key::{
    DerivedKeys, EXPANDED_LEN, MAC_LEN, MEDIA_KEY_LEN, MediaKey, MediaType, encrypted_len,
    is_encrypted_len,
};
pub use proxy::{
    DEFAULT_MAX_REDIRECTS, DEFAULT_PROXY_TIMEOUT, MediaBaseUrl, ProxyLimits, SchemePolicy,
    check_redirect, proxy_url,
};

/// Errors of this crate, sorted by who is to blame. Messages name no key, hash, path or address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- The peer (sender, media host, uploader, provider) sent bad bytes.
    /// The encrypted file failed its integrity check: wrong encrypted-file hash, wrong MAC, bad
    /// padding or wrong plaintext hash (deliberately one error). Discard the sink's contents.
    #[error("media failed its integrity check")]
    Integrity,
    /// The encrypted file ended before the length the descriptor implies.
    #[error("media file is truncated")]
    Truncated,
    /// More bytes arrived than the declared length.
    #[error("media file is longer than declared")]
    TooLong,
    /// A file or stream is larger than the configured cap.
    #[error("media file exceeds the size limit")]
    TooLarge,
    /// An upload's SHA-256 is not the content address it was uploaded to.
    #[error("uploaded file does not match its content address")]
    UploadHashMismatch,
    /// An upload's length cannot be that of an encrypted file.
    #[error("upload length is not a valid encrypted-file length")]
    InvalidUpload,
    /// An upload came without a `Content-Length`.
    #[error("upload has no declared length")]
    MissingLength,
    /// A descriptor field is out of range or malformed.
    #[error("invalid media descriptor: {0}")]
    InvalidDescriptor(&'static str),
    /// A media path does not follow the media-path grammar.
    #[error("invalid media path")]
    InvalidPath,
    /// A content address is not 64 lowercase hex digits.
    #[error("invalid content address")]
    InvalidContentAddress,
    /// A redirect leaves the provider's media base URL, or too many redirects.
    #[error("redirect refused")]
    RedirectRefused,
    /// The address guard refused an address the name resolved to.
    #[error("address refused: {0}")]
    AddressRefused(Refusal),
    /// A name resolved to no address at all.
    #[error("name resolved to no address")]
    NoAddress,

    // --- The peer is incompatible.
    /// A media type this version does not know.
    #[error("unknown media type")]
    UnknownMediaType,

    // --- The caller misused the API or its configuration.
    /// A [`Decryptor`] was used again after it returned an error.
    #[error("decryptor used after an error")]
    DecryptorFailed,
    /// A registered media base URL is not acceptable.
    #[error("invalid media base URL: {0}")]
    InvalidBaseUrl(&'static str),
    /// An allow-list prefix is malformed.
    #[error("invalid address prefix")]
    InvalidPrefix,

    // --- A dependency failed.
    /// The decryptor's sink failed to take plaintext.
    #[error("media sink failed")]
    Sink(#[source] std::io::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

//! The media key, the media types and the keys derived from them.

use std::fmt;

use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Error;

/// Length of a media key in bytes.
pub const MEDIA_KEY_LEN: usize = 32;

/// Number of bytes expanded from the media key with HKDF: IV (16) ‖ cipher key (32) ‖ MAC key (32).
pub const EXPANDED_LEN: usize = 80;

/// Length of the truncated HMAC-SHA256 appended to the ciphertext.
pub const MAC_LEN: usize = 10;

/// AES block size.
pub(crate) const BLOCK: usize = 16;

/// What kind of media a file is. Each kind has its own HKDF info string, so a key used for
/// one kind never decrypts a file announced as another kind.
///
/// The wire names ([`MediaType::as_str`]) and the info strings are fixed by the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MediaType {
    /// A still picture (JPEG, PNG, WebP, ...).
    Image,
    /// A video (MP4, ...).
    Video,
    /// A voice message or other audio (Opus in Ogg, AAC, ...).
    Audio,
    /// Any other file.
    Document,
}

impl MediaType {
    /// Every media type, in wire-number order.
    pub const ALL: [MediaType; 4] =
        [MediaType::Image, MediaType::Video, MediaType::Audio, MediaType::Document];

    /// The HKDF info string of this media type (ASCII, no terminator).
    pub fn info(self) -> &'static [u8] {
        match self {
            MediaType::Image => b"Interop Image Keys",
            MediaType::Video => b"Interop Video Keys",
            MediaType::Audio => b"Interop Audio Keys",
            MediaType::Document => b"Interop Document Keys",
        }
    }

    /// The stable lowercase name of this media type (`image`, `video`, `audio`, `document`).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Image => "image",
            MediaType::Video => "video",
            MediaType::Audio => "audio",
            MediaType::Document => "document",
        }
    }

    /// The stable wire number of this media type (1..=4; 0 is reserved for "unknown").
    pub fn to_wire(self) -> u32 {
        match self {
            MediaType::Image => 1,
            MediaType::Video => 2,
            MediaType::Audio => 3,
            MediaType::Document => 4,
        }
    }

    /// Parses a wire number; unknown numbers are refused (the peer is newer than us).
    pub fn from_wire(n: u32) -> Result<Self, Error> {
        match n {
            1 => Ok(MediaType::Image),
            2 => Ok(MediaType::Video),
            3 => Ok(MediaType::Audio),
            4 => Ok(MediaType::Document),
            _ => Err(Error::UnknownMediaType),
        }
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MediaType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        MediaType::ALL.into_iter().find(|t| t.as_str() == s).ok_or(Error::UnknownMediaType)
    }
}

/// A random 32-byte media key. One per file; it travels only inside the end-to-end encrypted
/// message. Zeroized on drop; `Debug` does not show it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MediaKey([u8; MEDIA_KEY_LEN]);

impl MediaKey {
    /// Draws a fresh key from a cryptographic random number generator.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut key = [0u8; MEDIA_KEY_LEN];
        rng.fill_bytes(&mut key);
        MediaKey(key)
    }

    /// Wraps key bytes received in a descriptor.
    pub fn from_bytes(bytes: [u8; MEDIA_KEY_LEN]) -> Self {
        MediaKey(bytes)
    }

    /// Wraps key bytes of unchecked length (from a decoded protobuf, say).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let key: [u8; MEDIA_KEY_LEN] =
            bytes.try_into().map_err(|_| Error::InvalidDescriptor("media key is not 32 bytes"))?;
        Ok(MediaKey(key))
    }

    /// The key bytes, to put into a descriptor.
    pub fn as_bytes(&self) -> &[u8; MEDIA_KEY_LEN] {
        &self.0
    }

    /// Expands this key for one media type:
    /// `HKDF-SHA256(salt = none, ikm = key, info = media_type.info(), L = 80)`, split into
    /// IV (bytes 0..16), cipher key (16..48) and MAC key (48..80).
    pub fn derive(&self, media_type: MediaType) -> DerivedKeys {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        let mut okm = [0u8; EXPANDED_LEN];
        hk.expand(media_type.info(), &mut okm)
            .expect("80 bytes is far below HKDF-SHA256's limit of 255 * 32 bytes");
        let mut keys = DerivedKeys { iv: [0; 16], cipher_key: [0; 32], mac_key: [0; 32] };
        keys.iv.copy_from_slice(&okm[..16]);
        keys.cipher_key.copy_from_slice(&okm[16..48]);
        keys.mac_key.copy_from_slice(&okm[48..80]);
        okm.zeroize();
        keys
    }
}

impl PartialEq for MediaKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for MediaKey {}

impl fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediaKey(..)")
    }
}

/// The IV, cipher key and MAC key expanded from a [`MediaKey`] for one media type.
/// Zeroized on drop; `Debug` does not show them.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DerivedKeys {
    iv: [u8; 16],
    cipher_key: [u8; 32],
    mac_key: [u8; 32],
}

impl DerivedKeys {
    /// The AES-CBC initialisation vector (never transmitted: both sides derive it).
    pub fn iv(&self) -> &[u8; 16] {
        &self.iv
    }

    /// The AES-256 key.
    pub fn cipher_key(&self) -> &[u8; 32] {
        &self.cipher_key
    }

    /// The HMAC-SHA256 key.
    pub fn mac_key(&self) -> &[u8; 32] {
        &self.mac_key
    }
}

impl fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedKeys(..)")
    }
}

/// Length of the encrypted file for a plaintext of `plaintext_len` bytes: the PKCS#7-padded
/// ciphertext (always at least one byte of padding) plus the 10-byte MAC. `None` on overflow.
pub fn encrypted_len(plaintext_len: u64) -> Option<u64> {
    (plaintext_len / BLOCK as u64)
        .checked_add(1)?
        .checked_mul(BLOCK as u64)?
        .checked_add(MAC_LEN as u64)
}

/// Whether `len` is a possible encrypted-file length (a positive number of 16-byte blocks plus
/// the MAC). Media hosts check this before accepting an upload.
pub fn is_encrypted_len(len: u64) -> bool {
    len >= (BLOCK + MAC_LEN) as u64 && (len - MAC_LEN as u64).is_multiple_of(BLOCK as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_len_adds_padding_and_mac() {
        for (plain, enc) in [(0, 26), (1, 26), (15, 26), (16, 42), (17, 42), (32, 58)] {
            assert_eq!(encrypted_len(plain), Some(enc), "plaintext {plain}");
            assert!(is_encrypted_len(enc));
        }
        assert_eq!(encrypted_len(u64::MAX), None);
        for bad in [0, 10, 16, 25, 27, 41, 43] {
            assert!(!is_encrypted_len(bad), "{bad}");
        }
    }

    #[test]
    fn media_type_names_and_numbers_round_trip() {
        for t in MediaType::ALL {
            assert_eq!(t.as_str().parse::<MediaType>().unwrap(), t);
            assert_eq!(MediaType::from_wire(t.to_wire()).unwrap(), t);
        }
        assert!(matches!(MediaType::from_wire(0), Err(Error::UnknownMediaType)));
        assert!(matches!(MediaType::from_wire(5), Err(Error::UnknownMediaType)));
        assert!(matches!("sticker".parse::<MediaType>(), Err(Error::UnknownMediaType)));
    }

    #[test]
    fn each_media_type_derives_different_keys() {
        let key = MediaKey::from_bytes([7; 32]);
        let image = key.derive(MediaType::Image);
        let video = key.derive(MediaType::Video);
        assert_ne!(image.cipher_key(), video.cipher_key());
        assert_ne!(image.iv(), video.iv());
        assert_ne!(image.mac_key(), video.mac_key());
    }

    #[test]
    fn debug_hides_keys() {
        let key = MediaKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{key:?}"), "MediaKey(..)");
        assert_eq!(format!("{:?}", key.derive(MediaType::Audio)), "DerivedKeys(..)");
        assert!(MediaKey::from_slice(&[1; 31]).is_err());
    }
}

//! Media tokens: what the `media` iq hands a client, and what the gatekeeper's media host
//! (uploads) and media proxy accept as `Authorization: Bearer <token>`.
//!
//! A token is stateless, so that every node of a cluster accepts every node's tokens without
//! sharing any state (the client uploads through whichever node the load balancer picks):
//!
//! ```text
//!  v1.<expiry, Unix seconds>.<account, base64url>.<HMAC-SHA256(key, "v1" ‖ expiry ‖ account), base64url>
//!  key = HKDF-SHA256(ikm = the server's Noise static private key, info = "interop-server media token v1")
//! ```
//!
//! The nodes of a cluster share the server identity (`server_static.key`: clients pin one root
//! and cache one static key for IK), so they derive the same key; nothing else has to be
//! distributed. Rotating the static key invalidates outstanding tokens (they live an hour by
//! default: clients ask for a new one). A token names the account it was issued to; it is a
//! bearer secret and never logged.
//!
//! What this does not do: revoke a token before it expires (an opted-out account's token stays
//! valid until its expiry; media is end-to-end encrypted and content-addressed, so a token only
//! lets its holder upload ciphertext and fetch through the proxy).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// The version prefix (and the MAC's domain separator).
const VERSION: &str = "v1";
/// HKDF `info` for the key.
const INFO: &[u8] = b"interop-server media token v1";
/// Longer tokens are refused before any work (a real one is about 120 bytes).
const MAX_TOKEN_LEN: usize = 512;

/// The key that signs and checks media tokens. Its `Debug` shows nothing.
pub(crate) struct MediaTokenKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MediaTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaTokenKey(<redacted>)")
    }
}

impl MediaTokenKey {
    /// Derives the key from the server's Noise static private key (the same on every node).
    pub(crate) fn derive(static_private: &[u8; 32]) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        hkdf::Hkdf::<Sha256>::new(None, static_private)
            .expand(INFO, key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(key)
    }

    fn mac(&self, expiry: u64, account: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.0.as_ref())
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(VERSION.as_bytes());
        mac.update(&expiry.to_be_bytes());
        mac.update(account.as_bytes());
        mac
    }

    /// A token for `account`, valid until `expiry` (Unix seconds).
    pub(crate) fn mint(&self, account: &str, expiry: u64) -> String {
        let tag = self.mac(expiry, account).finalize().into_bytes();
        format!(
            "{VERSION}.{expiry}.{}.{}",
            URL_SAFE_NO_PAD.encode(account),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The account `token` was issued to, if this key issued it and it has not expired at
    /// `now` (Unix seconds). Anything else (malformed, forged, expired) is `None`.
    pub(crate) fn verify(&self, token: &str, now: u64) -> Option<String> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut parts = token.split('.');
        let (Some(VERSION), Some(expiry), Some(account), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        // One spelling per token: `u64::from_str` would also take `+1` and `01` for `1`.
        let expiry_text = expiry;
        let expiry: u64 = expiry_text.parse().ok()?;
        if expiry.to_string() != expiry_text {
            return None;
        }
        let account = String::from_utf8(URL_SAFE_NO_PAD.decode(account).ok()?).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // Constant-time comparison.
        self.mac(expiry, &account).verify_slice(&tag).ok()?;
        (now < expiry).then_some(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key(seed: u8) -> MediaTokenKey {
        MediaTokenKey::derive(&[seed; 32])
    }

    #[test]
    fn a_token_is_valid_on_every_holder_of_the_key_until_it_expires() {
        let token = key(1).mint("0123abcd", NOW + 3600);
        // Another node: the same static key, so the same derived key.
        assert_eq!(key(1).verify(&token, NOW).as_deref(), Some("0123abcd"));
        assert_eq!(key(1).verify(&token, NOW + 3599).as_deref(), Some("0123abcd"));
        assert_eq!(key(1).verify(&token, NOW + 3600), None, "expired");
        assert_eq!(key(2).verify(&token, NOW), None, "another server identity");
        // Header-safe: a bearer token goes into an HTTP header as it is.
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        assert!(token.len() < MAX_TOKEN_LEN);
    }

    #[test]
    fn a_changed_account_expiry_or_tag_is_refused() {
        let k = key(1);
        let token = k.mint("alice", NOW + 60);
        let parts: Vec<&str> = token.split('.').collect();
        let other = k.mint("mallory", NOW + 60);
        let other_tag = other.rsplit('.').next().unwrap();
        let forged = [
            // Another account under alice's tag.
            format!("v1.{}.{}.{}", parts[1], URL_SAFE_NO_PAD.encode("mallory"), parts[3]),
            // A later expiry under the old tag.
            format!("v1.{}.{}.{}", NOW + 7200, parts[2], parts[3]),
            // Alice's fields under another token's tag.
            format!("v1.{}.{}.{other_tag}", parts[1], parts[2]),
            // Another version.
            format!("v2.{}.{}.{}", parts[1], parts[2], parts[3]),
            // The same expiry spelt differently.
            format!("v1.+{}.{}.{}", parts[1], parts[2], parts[3]),
            format!("v1.0{}.{}.{}", parts[1], parts[2], parts[3]),
            // A truncated tag.
            token[..token.len() - 2].to_owned(),
        ];
        for f in &forged {
            assert_eq!(k.verify(f, NOW), None, "{f}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let k = key(1);
        let long = "a".repeat(10_000);
        let huge_expiry = format!("v1.{}.YQ.AA", "9".repeat(40));
        let inputs = [
            "",
            ".",
            "...",
            "....",
            "v1",
            "v1.",
            "v1.1.YQ",
            "v1.1.YQ.AA.extra",
            "v1.-1.YQ.AA",
            "v1..YQ.AA",
            "v1.1.!!.AA",
            "v1.1.YQ.!!",
            "v1.1.__8.AA",
            "v1.1.YQ==.AA",
            "Bearer v1.1.YQ.AA",
            "v1.1.YQ.AA\u{0}",
            "v1.١٢.YQ.AA",
            &long,
            &huge_expiry,
        ];
        for input in inputs {
            assert_eq!(k.verify(input, NOW), None, "{input:?}");
        }
    }

    #[test]
    fn the_key_is_not_shown() {
        assert_eq!(format!("{:?}", key(7)), "MediaTokenKey(<redacted>)");
    }
}

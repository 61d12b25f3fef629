//! Keys and certificates kept in the gatekeeper's data directory, created on first use.
//!
//! | file | content |
//! |---|---|
//! | `server_static.key` | Noise static key pair (64 bytes: private, public), mode 0600 |
//! | `root.key` | root Ed25519 seed (32 bytes), mode 0600 |
//! | `intermediate.key` | intermediate Ed25519 seed (32 bytes), mode 0600 |
//! | `intermediate.cert`, `leaf.cert` | certificates (protobuf `Certificate`) |
//!
//! In dev the root private key lives here so that one command starts a working gatekeeper. A
//! real deployment keeps the root key offline: it issues an intermediate once, and only
//! `intermediate.key` and the certificates are on the server.
//!
//! Rotation: delete `server_static.key` (or let the leaf expire) and restart; a new leaf is
//! issued for the current static key. Clients that cached the old key fall back to XX.

use std::path::Path;

use interop_noise::StaticKeypair;
use interop_noise::cert::{
    IntermediateKey, RootKey, Validity, decode_certificate, details_unverified, encode_certificate,
};
use interop_noise::proto::{Certificate, CertificateChain};
use rand::Rng;

use crate::{Error, Result};

const DAY: u64 = 86_400;
/// Lifetime of an intermediate issued on first start.
const INTERMEDIATE_LIFETIME: u64 = 365 * DAY;
/// Lifetime of a leaf; it is reissued at start-up when less than a quarter is left.
const LEAF_LIFETIME: u64 = 30 * DAY;
/// Backdating, for clients whose clocks run a little behind.
const BACKDATE: u64 = 3_600;

/// Loads the key pair at `path`, or generates and stores a new one if absent.
pub fn load_or_generate(path: &Path) -> Result<StaticKeypair> {
    if let Some(bytes) = read_optional(path)? {
        return StaticKeypair::from_bytes(&bytes).ok_or_else(|| not_a_key(path));
    }
    let keys = StaticKeypair::generate(&mut rand::rng());
    write_secret(path, &keys.to_bytes()[..])?;
    Ok(keys)
}

/// The gatekeeper's Noise identity.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// The Noise static key pair.
    pub keys: StaticKeypair,
    /// Intermediate and leaf certificates for `keys.public`.
    pub chain: CertificateChain,
    /// The root public key clients pin.
    pub root_public: [u8; 32],
}

/// Loads the static key, the root and intermediate keys and the chain from `dir`, creating
/// what is missing and reissuing the leaf when it does not certify the current static key or
/// is near its end. `now` is seconds since the Unix epoch.
pub fn load_or_create_identity(dir: &Path, now: u64) -> Result<ServerIdentity> {
    std::fs::create_dir_all(dir)?;
    let keys = load_or_generate(&dir.join("server_static.key"))?;
    let root = load_or_generate_root(&dir.join("root.key"))?;
    let inter_path = dir.join("intermediate.key");
    let inter_cert_path = dir.join("intermediate.cert");
    let fresh_inter = !inter_path.exists();
    let inter = load_or_generate_intermediate(&inter_path)?;
    let inter_cert = match read_cert(&inter_cert_path)? {
        Some(cert) if !fresh_inter => cert,
        _ => {
            let serial = nonzero_serial();
            let cert = root.issue_intermediate(
                &inter,
                serial,
                Validity { not_before: now - BACKDATE, not_after: now + INTERMEDIATE_LIFETIME },
            );
            write_public(&inter_cert_path, &encode_certificate(&cert))?;
            cert
        }
    };
    let inter_serial = details_unverified(&inter_cert)?.serial;
    let leaf_path = dir.join("leaf.cert");
    let leaf = match read_cert(&leaf_path)? {
        Some(cert) if leaf_is_current(&cert, &keys, inter_serial, now)? => cert,
        _ => {
            let cert = inter.issue_leaf(
                inter_serial,
                &keys.public,
                nonzero_serial(),
                Validity { not_before: now - BACKDATE, not_after: now + LEAF_LIFETIME },
            );
            write_public(&leaf_path, &encode_certificate(&cert))?;
            cert
        }
    };
    let chain = CertificateChain { intermediate: Some(inter_cert), leaf: Some(leaf) };
    // Refuse to start with a chain that our own clients would refuse.
    root.trust_anchor().verify(Some(&chain), &keys.public, now)?;
    Ok(ServerIdentity { keys, chain, root_public: root.public() })
}

fn leaf_is_current(
    cert: &Certificate,
    keys: &StaticKeypair,
    inter_serial: u64,
    now: u64,
) -> Result<bool> {
    let d = details_unverified(cert)?;
    Ok(d.key[..] == keys.public[..]
        && d.issuer_serial == inter_serial
        && d.not_before <= now
        && d.not_after > now + LEAF_LIFETIME / 4)
}

fn nonzero_serial() -> u64 {
    rand::rng().random_range(1..=u64::MAX)
}

fn read_cert(path: &Path) -> Result<Option<Certificate>> {
    let Some(bytes) = read_optional(path)? else { return Ok(None) };
    decode_certificate(&bytes)
        .map(Some)
        .map_err(|_| Error::Config(format!("{} is not a certificate", path.display())))
}

/// The bytes at `path`, `None` if the file does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn not_a_key(path: &Path) -> Error {
    Error::Config(format!("{} is not a key file", path.display()))
}

fn load_or_generate_root(path: &Path) -> Result<RootKey> {
    if let Some(bytes) = read_optional(path)? {
        return RootKey::from_bytes(&bytes).ok_or_else(|| not_a_key(path));
    }
    let key = RootKey::generate(&mut rand::rng());
    write_secret(path, &key.to_bytes()[..])?;
    Ok(key)
}

fn load_or_generate_intermediate(path: &Path) -> Result<IntermediateKey> {
    if let Some(bytes) = read_optional(path)? {
        return IntermediateKey::from_bytes(&bytes).ok_or_else(|| not_a_key(path));
    }
    let key = IntermediateKey::generate(&mut rand::rng());
    write_secret(path, &key.to_bytes()[..])?;
    Ok(key)
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, bytes, 0o644)
}

/// Writes `bytes` to a temporary file and renames it over `path`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn identity_is_created_once_and_the_leaf_follows_the_static_key() {
        let dir = tempfile_dir();
        let first = load_or_create_identity(&dir, NOW).unwrap();
        let again = load_or_create_identity(&dir, NOW + 10).unwrap();
        assert_eq!(first.root_public, again.root_public);
        assert_eq!(first.keys.public, again.keys.public);
        assert_eq!(first.chain, again.chain);

        // Rotation: a new static key gets a new leaf under the same root and intermediate.
        std::fs::remove_file(dir.join("server_static.key")).unwrap();
        let rotated = load_or_create_identity(&dir, NOW + 20).unwrap();
        assert_eq!(rotated.root_public, first.root_public);
        assert_ne!(rotated.keys.public, first.keys.public);
        assert_eq!(rotated.chain.intermediate, first.chain.intermediate);
        let anchor = interop_noise::TrustAnchor::new(first.root_public).unwrap();
        anchor.verify(Some(&rotated.chain), &rotated.keys.public, NOW + 20).unwrap();

        // A leaf near its end is reissued.
        let later = NOW + LEAF_LIFETIME - LEAF_LIFETIME / 8;
        let renewed = load_or_create_identity(&dir, later).unwrap();
        assert_ne!(renewed.chain.leaf, rotated.chain.leaf);
        anchor.verify(Some(&renewed.chain), &renewed.keys.public, later).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "interop-keyfile-{}-{}",
            std::process::id(),
            rand::rng().random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

//! The device or server static key kept in a data directory (64 bytes, mode 0600), created on
//! first use.

use std::path::Path;

use interop_noise::StaticKeypair;

use crate::{Error, Result};

/// Loads the key pair at `path`, or generates and stores a new one if absent.
pub fn load_or_generate(path: &Path) -> Result<StaticKeypair> {
    match std::fs::read(path) {
        Ok(bytes) => StaticKeypair::from_bytes(&bytes)
            .ok_or_else(|| Error::Local(format!("{} is not a key file", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keys = StaticKeypair::generate(&mut rand::rng());
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path)?;
            std::io::Write::write_all(&mut file, &keys.to_bytes()[..])?;
            file.sync_all()?;
            Ok(keys)
        }
        Err(e) => Err(e.into()),
    }
}

/// The server static key cached for `server` in `dir` (for IK), if any.
pub fn cached_server_key(dir: &Path, server: &str) -> Result<Option<[u8; 32]>> {
    match std::fs::read(server_key_path(dir, server)) {
        Ok(bytes) => Ok(bytes.try_into().ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Caches `key` as the static key of `server` in `dir`.
pub fn cache_server_key(dir: &Path, server: &str, key: &[u8; 32]) -> Result<()> {
    let path = server_key_path(dir, server);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, key)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// `<dir>/server-keys/<server>` with every byte outside `[A-Za-z0-9.-]` replaced by `_`.
fn server_key_path(dir: &Path, server: &str) -> std::path::PathBuf {
    let name: String = server
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    dir.join("server-keys").join(name)
}

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
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, key)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// `<dir>/server-keys/s-<server>` with every character outside `[A-Za-z0-9.-]` replaced by `_`
/// (the prefix keeps names like `..` inside the directory).
fn server_key_path(dir: &Path, server: &str) -> std::path::PathBuf {
    let name: String = server
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    dir.join("server-keys").join(format!("s-{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_keys_are_cached_per_server_under_a_safe_name() {
        let dir =
            std::env::temp_dir().join(format!("interop-client-keyfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(cached_server_key(&dir, "gk.example:5222").unwrap(), None);
        cache_server_key(&dir, "gk.example:5222", &[7; 32]).unwrap();
        cache_server_key(&dir, "../other:1", &[8; 32]).unwrap();
        cache_server_key(&dir, "..", &[9; 32]).unwrap();
        assert_eq!(cached_server_key(&dir, "gk.example:5222").unwrap(), Some([7; 32]));
        assert_eq!(cached_server_key(&dir, "../other:1").unwrap(), Some([8; 32]));
        assert_eq!(cached_server_key(&dir, "..").unwrap(), Some([9; 32]));
        // Names never leave the cache directory.
        let names: Vec<String> = std::fs::read_dir(dir.join("server-keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("s-") && !n.contains(['/', ':'])), "{names:?}");
        // A damaged cache entry is ignored (the next connection runs XX and rewrites it).
        std::fs::write(server_key_path(&dir, "gk.example:5222"), b"short").unwrap();
        assert_eq!(cached_server_key(&dir, "gk.example:5222").unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

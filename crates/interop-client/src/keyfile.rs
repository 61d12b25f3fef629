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
            let keys = StaticKeypair::generate();
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

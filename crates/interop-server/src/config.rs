//! The gatekeeper's configuration file (TOML), with environment overrides: defaults, then the
//! file (`--config` or `INTEROP_CONFIG`), then `INTEROP_<KEY>` environment variables, then
//! command-line flags. Secrets never come from the file's values or the command line: a
//! provider's push secret is read from the environment variable or file the entry names.
//!
//! ```toml
//! listen = "0.0.0.0:5222"
//! http_listen = "0.0.0.0:8080"
//! data_dir = "/var/lib/interop"
//! # media_dir = "/mnt/shared/media"              # default: data_dir/media; shared by all nodes
//! audience = "gatekeeper"
//! public_http_url = "https://media.gatekeeper.example"
//! # database_url = "postgres://gk@db/interop"   # default: SQLite in data_dir
//! # redis_url = "redis://127.0.0.1:6379/"      # several nodes: needs database_url
//! # node_id = "gk-1"                            # default: random per start
//! idle_timeout_secs = 300
//! log_format = "json"
//!
//! [[providers]]
//! integrator = "example"
//! issuer = "https://provider.example"
//! push_secret_env = "EXAMPLE_PUSH_SECRET"     # or push_secret_file = "/run/secrets/example"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::{Error, Result};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A provider registered from the configuration file at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFileEntry {
    /// Integrator id (in its users' addresses).
    pub integrator: String,
    /// Token issuer URL.
    pub issuer: String,
    /// Discovery document URL (default: `<issuer>/.well-known/openid-configuration`).
    pub discovery_url: Option<String>,
    /// Push endpoint (default: `<issuer>/v1/push`).
    pub push_endpoint: Option<String>,
    /// Media base URL (default: `<issuer>/media/`).
    pub media_base_url: Option<String>,
    /// The environment variable holding the push secret (`whsec_...`).
    pub push_secret_env: Option<String>,
    /// The file holding the push secret.
    pub push_secret_file: Option<PathBuf>,
    /// Kill switch (default on).
    pub enabled: Option<bool>,
}

impl ProviderFileEntry {
    /// The push secret, from the named environment variable or file.
    pub fn push_secret(&self) -> Result<String> {
        if let Some(var) = &self.push_secret_env {
            return std::env::var(var).map_err(|_| {
                Error::Config(format!(
                    "provider {}: environment variable {var} is not set",
                    self.integrator
                ))
            });
        }
        if let Some(file) = &self.push_secret_file {
            return std::fs::read_to_string(file).map(|s| s.trim().to_owned()).map_err(|e| {
                Error::Config(format!("provider {}: {}: {e}", self.integrator, file.display()))
            });
        }
        Err(Error::Config(format!(
            "provider {}: set push_secret_env or push_secret_file",
            self.integrator
        )))
    }
}

/// The gatekeeper's file configuration; every field optional (defaults apply).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Chat listener.
    pub listen: Option<SocketAddr>,
    /// HTTP listener.
    pub http_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// The media host's blob directory (default: `media` in the data directory); the nodes of
    /// a cluster share one.
    pub media_dir: Option<PathBuf>,
    /// Audience id in tokens.
    pub audience: Option<String>,
    /// Development mode.
    pub dev: Option<bool>,
    /// Public URL of the HTTP listener.
    pub public_http_url: Option<String>,
    /// PostgreSQL URL; absent: SQLite in the data directory.
    pub database_url: Option<String>,
    /// Redis URL: this node is one of several sharing `database_url` (leases, hand-off
    /// between nodes, cluster-wide rate limits). Absent: a single node, no Redis.
    pub redis_url: Option<String>,
    /// This node's id in the cluster (default: random at each start).
    pub node_id: Option<String>,
    /// Idle timeout of chat connections.
    pub idle_timeout_secs: Option<u64>,
    /// Handshake timeout.
    pub handshake_timeout_secs: Option<u64>,
    /// Unauthenticated connections per IP.
    pub max_unauthenticated_per_ip: Option<u32>,
    /// Undelivered copies are dropped after this many days.
    pub message_ttl_days: Option<u32>,
    /// Copies waiting per device before new messages to it are refused.
    pub queue_per_device: Option<u64>,
    /// Stanzas one connection may send per minute (burst: a tenth of that).
    pub stanzas_per_minute: Option<u32>,
    /// Messages a native account may send per minute (interop accounts: their provider's
    /// quota).
    pub native_messages_per_minute: Option<u32>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Providers registered at start-up.
    #[serde(default)]
    pub providers: Vec<ProviderFileEntry>,
}

impl FileConfig {
    /// Reads `path` (if any) and the `INTEROP_*` environment. A missing file named explicitly
    /// is an error; unknown keys are errors (typos do not pass silently).
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(Error::Config(format!("{}: no such file", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only the keys of this struct: other INTEROP_* variables (secrets, client settings)
        // are not configuration keys.
        let keys = [
            "LISTEN",
            "HTTP_LISTEN",
            "DATA_DIR",
            "MEDIA_DIR",
            "AUDIENCE",
            "DEV",
            "PUBLIC_HTTP_URL",
            "DATABASE_URL",
            "REDIS_URL",
            "NODE_ID",
            "IDLE_TIMEOUT_SECS",
            "HANDSHAKE_TIMEOUT_SECS",
            "MAX_UNAUTHENTICATED_PER_IP",
            "MESSAGE_TTL_DAYS",
            "QUEUE_PER_DEVICE",
            "STANZAS_PER_MINUTE",
            "NATIVE_MESSAGES_PER_MINUTE",
            "LOG_FORMAT",
        ];
        figment = figment.merge(Env::prefixed("INTEROP_").only(&keys));
        figment.extract().map_err(|e| Error::Config(format!("configuration: {e}")))
    }
}

/// A service URL (database, Redis) without its password or query, which may carry one: for
/// error texts and logs. `None` when it does not parse.
pub(crate) fn url_without_secrets(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let user = if u.username().is_empty() { String::new() } else { format!("{}@", u.username()) };
    let host = u.host_str().unwrap_or("localhost");
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!("{}://{user}{host}{port}{}", u.scheme(), u.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gk.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:6000\"\nlog_format = \"json\"\n\n[[providers]]\nintegrator = \"example\"\nissuer = \"https://p.example\"\npush_secret_file = \"/nonexistent\"\n",
        )
        .unwrap();
        let c = FileConfig::load(Some(&path)).unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:6000".parse().unwrap()));
        assert_eq!(c.log_format, Some(LogFormat::Json));
        assert_eq!(c.providers.len(), 1);
        assert!(c.providers[0].push_secret().is_err());

        std::fs::write(&path, "lisen = \"127.0.0.1:6000\"\n").unwrap();
        let err = FileConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(FileConfig::load(Some(&dir.path().join("missing.toml"))).is_err());
    }

    #[test]
    fn cluster_keys_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gk.toml");
        std::fs::write(
            &path,
            "database_url = \"postgres://gk@db/interop\"\nredis_url = \"redis://r:6379/\"\nnode_id = \"gk-1\"\nmedia_dir = \"/mnt/shared/media\"\n",
        )
        .unwrap();
        let c = FileConfig::load(Some(&path)).unwrap();
        assert_eq!(c.redis_url.as_deref(), Some("redis://r:6379/"));
        assert_eq!(c.node_id.as_deref(), Some("gk-1"));
        assert_eq!(c.media_dir.as_deref(), Some(Path::new("/mnt/shared/media")));
    }
}

//! `interop-server dev`: a gatekeeper and a reference provider in one process on loopback, the
//! provider registered with the gatekeeper, keys and secrets generated: what a newcomer runs
//! first.
//!
//! ```text
//!  <data dir>/gatekeeper   keys, gatekeeper.db (SQLite), media, admin.token
//!  <data dir>/provider     provider.db, signing.key, media, push.secret, admin.token
//! ```
//!
//! The data directory is a fresh temporary one, removed when the process stops, unless one is
//! given. Both servers run in dev mode: plain http between them on loopback, and native
//! verification codes printed on standard output (`verification-code <identifier> <code>`).
//! Every listener must be a loopback address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use interop_enlist::ProviderEntry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::gatekeeper::{Gatekeeper, GatekeeperConfig};
use crate::provider::{Provider, ProviderConfig};
use crate::store::ProviderRecord;
use crate::{Error, Result};

/// Settings of [`Dev::start`].
#[derive(Debug, Clone)]
pub struct DevConfig {
    /// Where everything lives; `None`: a temporary directory, removed on exit.
    pub data_dir: Option<PathBuf>,
    /// The gatekeeper's chat listener.
    pub listen_chat: SocketAddr,
    /// The gatekeeper's HTTP listener (admin API, health, metrics, media).
    pub listen_http: SocketAddr,
    /// The provider's HTTP listener.
    pub listen_provider: SocketAddr,
    /// The provider's integrator id.
    pub integrator: String,
}

impl Default for DevConfig {
    /// The addresses README uses: chat 5222, gatekeeper HTTP 8080, provider 8443.
    fn default() -> Self {
        Self {
            data_dir: None,
            listen_chat: ([127, 0, 0, 1], 5222).into(),
            listen_http: ([127, 0, 0, 1], 8080).into(),
            listen_provider: ([127, 0, 0, 1], 8443).into(),
            integrator: "example".to_owned(),
        }
    }
}

/// What a client needs to know about a running dev setup.
#[derive(Debug, Clone)]
pub struct DevInfo {
    /// The gatekeeper's chat address (`interop-client init --server`).
    pub chat: SocketAddr,
    /// The gatekeeper's HTTP address.
    pub http: SocketAddr,
    /// The root key clients pin (`interop-client init --root-key`).
    pub root_key: [u8; 32],
    /// The gatekeeper's Noise static key.
    pub server_key: [u8; 32],
    /// The provider's issuer URL (`interop-client login --provider`).
    pub issuer: String,
    /// The provider's integrator id.
    pub integrator: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Whether the data directory is removed on exit.
    pub temporary: bool,
}

impl DevInfo {
    /// The machine-readable start-up lines, one `key value` per line, ending with `ready`.
    pub fn machine_lines(&self) -> String {
        let dir = |sub: &str| self.data_dir.join(sub).display().to_string();
        [
            format!("root-key {}", hex::encode(self.root_key)),
            format!("server-key {}", hex::encode(self.server_key)),
            format!("listening {}", self.chat),
            format!("http {}", self.http),
            format!("issuer {}", self.issuer),
            format!("integrator {}", self.integrator),
            format!("data-dir {}", self.data_dir.display()),
            format!("admin-token-file {}", dir("gatekeeper/admin.token")),
            format!("provider-admin-token-file {}", dir("provider/admin.token")),
            "ready".to_owned(),
        ]
        .join("\n")
    }

    /// Copy-pasteable next steps for two more terminals; `client` is how to run
    /// `interop-client` (a path, or the bare name when it is on `PATH`). Comment lines start
    /// with `#`.
    pub fn next_steps(&self, client: &str) -> String {
        let root = hex::encode(self.root_key);
        let dir = self.data_dir.display();
        let gone = if self.temporary { " (removed on exit)" } else { "" };
        let quoted = shell_quote(client);
        format!(
            "\
# interop dev: a gatekeeper (chat {chat}, HTTP {http}) and the provider \"{integrator}\"
# ({issuer}) on loopback; data in {dir}{gone}. Ctrl-C stops both.
#
# Terminal 2: Bob, a native user. His verification code appears in THIS terminal as
# `verification-code +15550001 <code>`: put it in place of CODE.
C={quoted}
$C --data-dir {dir}/bob init --server {chat} --root-key {root}
$C --data-dir {dir}/bob register --identifier +15550001
$C --data-dir {dir}/bob register --identifier +15550001 --code CODE
$C --data-dir {dir}/bob interop on
$C --data-dir {dir}/bob listen --read
#
# Terminal 3: Alice, a user of the provider \"{integrator}\".
C={quoted}
$C --data-dir {dir}/alice init --server {chat} --root-key {root}
INTEROP_PASSWORD=secret-password $C --data-dir {dir}/alice login --provider {issuer} --username alice --create
$C --data-dir {dir}/alice enlist
$C --data-dir {dir}/alice send \"hello bob\" --to +15550001
$C --data-dir {dir}/alice listen
",
            chat = self.chat,
            http = self.http,
            integrator = self.integrator,
            issuer = self.issuer,
        )
    }
}

fn shell_quote(s: &str) -> String {
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:=".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Removes a temporary data directory when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(error = %e, dir = %self.0.display(), "could not remove the data directory");
        }
    }
}

fn temp_dir() -> Result<TempDir> {
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let path = base.join(format!("interop-dev-{}", hex::encode(rand::random::<[u8; 4]>())));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&path) {
            Ok(()) => return Ok(TempDir(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Config("could not create a temporary data directory".into()))
}

/// A secret read from `path`, or generated and written there (mode 0600).
fn secret_file(path: &Path, generate: impl FnOnce() -> String) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(v) if !v.trim().is_empty() => return Ok(v.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let value = generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, value.as_bytes())?;
    Ok(value)
}

/// A started (bound, registered) dev setup; [`Dev::run`] serves it.
#[derive(Debug)]
pub struct Dev {
    gatekeeper: Gatekeeper,
    provider: Provider,
    provider_listener: TcpListener,
    info: DevInfo,
    temp: Option<TempDir>,
}

impl Dev {
    /// Creates the data directory, binds every listener, opens both servers and registers the
    /// provider with the gatekeeper.
    pub async fn start(config: DevConfig) -> Result<Self> {
        for (what, addr) in [
            ("--listen-chat", config.listen_chat),
            ("--listen-http", config.listen_http),
            ("--listen-provider", config.listen_provider),
        ] {
            if !addr.ip().is_loopback() {
                return Err(Error::Config(format!(
                    "{what} {addr}: dev mode serves plain http and prints verification codes, \
                     so it listens on loopback only"
                )));
            }
        }
        let (data_dir, temp) = match &config.data_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.clone(), None)
            }
            None => {
                let t = temp_dir()?;
                (t.0.clone(), Some(t))
            }
        };
        let gk_dir = data_dir.join("gatekeeper");
        let provider_dir = data_dir.join("provider");
        let random_hex = || hex::encode(rand::random::<[u8; 32]>());
        let admin_token = secret_file(&gk_dir.join("admin.token"), random_hex)?;
        let provider_admin = secret_file(&provider_dir.join("admin.token"), random_hex)?;
        let push_secret = secret_file(&provider_dir.join("push.secret"), || {
            let key: [u8; 32] = rand::random();
            format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
        })?;

        let provider_listener = TcpListener::bind(config.listen_provider).await.map_err(|e| {
            Error::Config(format!("binding the provider to {}: {e}", config.listen_provider))
        })?;
        let issuer = format!("http://{}", provider_listener.local_addr()?);
        let provider = Provider::open(ProviderConfig {
            issuer: issuer.clone(),
            audience: "gatekeeper".to_owned(),
            data_dir: provider_dir,
            push_secret: push_secret.clone(),
            admin_token: provider_admin,
            dev: true,
            wake_poll: Duration::from_secs(30),
            token_lifetime: None,
        })
        .await?;

        let mut gk = GatekeeperConfig::new(config.listen_chat, gk_dir);
        gk.http_listen = Some(config.listen_http);
        gk.dev = true;
        gk.admin_token = admin_token;
        let gatekeeper = Gatekeeper::bind(gk).await?;
        gatekeeper
            .upsert_provider(&ProviderRecord {
                entry: ProviderEntry::new(
                    &issuer,
                    &config.integrator,
                    &format!("{issuer}/v1/push"),
                    &format!("{issuer}/media/"),
                ),
                push_secret,
            })
            .await?;
        let http = gatekeeper
            .http_addr()?
            .ok_or_else(|| Error::Config("the gatekeeper has no HTTP listener".into()))?;
        let info = DevInfo {
            chat: gatekeeper.local_addr()?,
            http,
            root_key: gatekeeper.root_key(),
            server_key: gatekeeper.public_key(),
            issuer,
            integrator: config.integrator,
            data_dir,
            temporary: temp.is_some(),
        };
        Ok(Self { gatekeeper, provider, provider_listener, info, temp })
    }

    /// The addresses and keys of this setup.
    pub fn info(&self) -> &DevInfo {
        &self.info
    }

    /// Serves both until `shutdown` resolves, stops both (the gatekeeper closes its
    /// connections with `system-shutdown`), then removes a temporary data directory.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let Self { gatekeeper, provider, provider_listener, temp, .. } = self;
        let stop = CancellationToken::new();
        let provider_stop = stop.clone();
        let provider_task = tokio::spawn(async move {
            let served =
                provider.serve(provider_listener, provider_stop.clone().cancelled_owned()).await;
            // A provider that stopped on its own stops the gatekeeper too.
            provider_stop.cancel();
            served
        });
        let served = gatekeeper
            .run(async {
                tokio::select! {
                    () = shutdown => {}
                    () = stop.cancelled() => {}
                }
            })
            .await;
        stop.cancel();
        let provider_result =
            match tokio::time::timeout(Duration::from_secs(10), provider_task).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(Error::Io(std::io::Error::other(e))),
                Err(_) => {
                    tracing::warn!("the provider did not stop within 10 s");
                    Ok(())
                }
            };
        drop(temp);
        served.and(provider_result)
    }
}

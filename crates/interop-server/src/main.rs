//! `interop-server`: the gatekeeper and provider servers.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::Duration;

use interop_server::config::{FileConfig, LogFormat};
use interop_server::gatekeeper::{Gatekeeper, GatekeeperConfig, GatekeeperStore};
use interop_server::store::ProviderRecord;
use interop_server::store::postgres::PgStore;

#[derive(Debug, Parser)]
#[command(
    name = "interop-server",
    version,
    about = "Reference servers for DMA messaging interoperability"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gatekeeper's chat server.
    Gatekeeper {
        /// Configuration file (TOML); see the `config` module docs. Environment variables
        /// `INTEROP_<KEY>` override it, flags override both.
        #[arg(long, env = "INTEROP_CONFIG")]
        config: Option<PathBuf>,
        /// Chat listener address (default 127.0.0.1:5222; port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP listener address: admin API, /healthz, /metrics, media host and proxy
        /// (default 127.0.0.1:8080).
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Data directory (keys, database, media; default ./data/gatekeeper).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The gatekeeper's id, which provider tokens must carry in `aud` (default
        /// `gatekeeper`).
        #[arg(long)]
        audience: Option<String>,
        /// The URL clients reach the HTTP listener at (media); default in dev mode:
        /// `http://<http listen address>`.
        #[arg(long)]
        public_http_url: Option<String>,
        /// Idle timeout of chat connections, in seconds (default 300).
        #[arg(long)]
        idle_timeout: Option<u64>,
        /// Log format: text or json.
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
        /// Development mode: providers may be plain http on loopback, and native verification
        /// codes are printed on standard output instead of being sent.
        #[arg(long)]
        dev: bool,
    },
    /// Write a consistent copy of the gatekeeper's SQLite database while it runs.
    Backup {
        /// The gatekeeper's data directory.
        #[arg(long, default_value = "./data/gatekeeper")]
        data_dir: PathBuf,
        /// Where to write the copy (must not exist).
        #[arg(long)]
        to: PathBuf,
    },
    /// Register (or update) a third-party provider with a running gatekeeper through its admin
    /// API. The admin token comes from INTEROP_ADMIN_TOKEN, the provider's push secret from
    /// INTEROP_PUSH_SECRET (never from the command line).
    AddProvider {
        /// The gatekeeper's HTTP base URL (its `http` start-up line).
        #[arg(long, env = "INTEROP_GATEKEEPER_HTTP")]
        gatekeeper: String,
        /// The provider's integrator id (its users' addresses carry it).
        #[arg(long)]
        integrator: String,
        /// The provider's token issuer URL.
        #[arg(long)]
        issuer: String,
        /// Where push wake-ups go (default: `<issuer>/v1/push`).
        #[arg(long)]
        push_endpoint: Option<String>,
        /// The only base URL the media proxy fetches this provider's media from (default:
        /// `<issuer>/media/`).
        #[arg(long)]
        media_base_url: Option<String>,
    },
    /// Rotate a running reference provider's token signing key (the old key stays in its JWKS
    /// for the overlap). The provider's admin token comes from INTEROP_ADMIN_TOKEN.
    RotateKey {
        /// The provider's base URL (its issuer).
        #[arg(long)]
        provider: String,
    },
    /// Run the reference third-party provider server (accounts, tokens, keys, push receiver).
    Provider {
        /// HTTP listener address (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8443", env = "INTEROP_PROVIDER_LISTEN")]
        listen: SocketAddr,
        /// Data directory (database, signing key, secrets); created if missing.
        #[arg(long, default_value = "./data/provider", env = "INTEROP_PROVIDER_DATA_DIR")]
        data_dir: PathBuf,
        /// Issuer URL written into tokens (default: `http://<listen address>` in dev mode).
        #[arg(long, env = "INTEROP_ISSUER")]
        issuer: Option<String>,
        /// The gatekeeper's audience id.
        #[arg(long, default_value = "gatekeeper", env = "INTEROP_AUDIENCE")]
        audience: String,
        /// Development mode: plain http on loopback. (TLS serving is not implemented yet, so
        /// this is required for now.)
        #[arg(long)]
        dev: bool,
    },
}

/// A secret from the environment, else from `<data_dir>/<file>`, else generated there (0600).
/// Secrets never come from the command line, where other users can read them.
fn secret(
    env: &str,
    data_dir: &std::path::Path,
    file: &str,
    generate: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    if let Ok(v) = std::env::var(env) {
        return Ok(v);
    }
    let path = data_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(v) => Ok(v.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let value = generate();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            std::io::Write::write_all(&mut options.open(&path)?, value.as_bytes())?;
            eprintln!("generated {} (set {env} to use your own)", path.display());
            Ok(value)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Logs on standard error: `RUST_LOG` filters (default `info`); JSON lines on request.
fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
}

/// Registers the configuration file's providers, prints the start-up lines and serves until
/// SIGINT/SIGTERM.
async fn serve_gatekeeper<S: GatekeeperStore>(
    gk: Gatekeeper<S>,
    file: &FileConfig,
) -> anyhow::Result<()> {
    for p in &file.providers {
        let mut entry = interop_enlist::ProviderEntry::new(
            &p.issuer,
            &p.integrator,
            p.push_endpoint
                .as_deref()
                .unwrap_or(&format!("{}/v1/push", p.issuer.trim_end_matches('/'))),
            p.media_base_url
                .as_deref()
                .unwrap_or(&format!("{}/media/", p.issuer.trim_end_matches('/'))),
        );
        if let Some(d) = &p.discovery_url {
            entry.discovery_url = d.clone();
        }
        entry.enabled = p.enabled.unwrap_or(true);
        let record = ProviderRecord { entry, push_secret: p.push_secret()? };
        gk.upsert_provider(&record).await.with_context(|| {
            format!("registering provider {} from the configuration", p.integrator)
        })?;
    }
    // Machine-readable start-up lines (xtask e2e and scripts read them).
    println!("root-key {}", hex::encode(gk.root_key()));
    println!("server-key {}", hex::encode(gk.public_key()));
    println!("listening {}", gk.local_addr()?);
    if let Some(http) = gk.http_addr()? {
        println!("http {http}");
    }
    tracing::info!("gatekeeper ready");
    gk.run(shutdown_signal()).await?;
    tracing::info!("gatekeeper stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Gatekeeper { .. } | Command::Backup { .. }) {
        init_logging(false);
    }
    match cli.command {
        Command::Gatekeeper {
            config,
            listen,
            http_listen,
            data_dir,
            audience,
            public_http_url,
            idle_timeout,
            log_format,
            dev,
        } => {
            let file = FileConfig::load(config.as_deref())?;
            let json_logs = match log_format.as_deref() {
                Some("json") => true,
                Some(_) => false,
                None => file.log_format == Some(LogFormat::Json),
            };
            init_logging(json_logs);
            let data_dir = data_dir
                .or(file.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from("./data/gatekeeper"));
            let admin_token = secret("INTEROP_ADMIN_TOKEN", &data_dir, "admin.token", || {
                hex::encode(rand::random::<[u8; 32]>())
            })?;
            let listen = listen.or(file.listen).unwrap_or_else(|| ([127, 0, 0, 1], 5222).into());
            let mut gk = GatekeeperConfig::new(listen, data_dir);
            gk.http_listen = Some(
                http_listen.or(file.http_listen).unwrap_or_else(|| ([127, 0, 0, 1], 8080).into()),
            );
            if let Some(a) = audience.or(file.audience.clone()) {
                gk.audience = a;
            }
            gk.dev = dev || file.dev.unwrap_or(false);
            gk.admin_token = admin_token;
            gk.public_http_url = public_http_url.or(file.public_http_url.clone());
            if let Some(s) = idle_timeout.or(file.idle_timeout_secs) {
                gk.idle_timeout = Duration::from_secs(s.max(1));
            }
            if let Some(s) = file.handshake_timeout_secs {
                gk.handshake_timeout = Duration::from_secs(s.max(1));
            }
            if let Some(n) = file.max_unauthenticated_per_ip {
                gk.max_unauthenticated_per_ip = n.max(1);
            }
            if let Some(days) = file.message_ttl_days {
                gk.chat.message_ttl_ms = i64::from(days.max(1)) * 24 * 3600 * 1000;
            }
            if let Some(n) = file.queue_per_device {
                gk.queue.max_per_device = n.max(1);
            }
            match &file.database_url {
                Some(url) => {
                    let store = Arc::new(
                        PgStore::connect(url, gk.queue).await.context("opening PostgreSQL")?,
                    );
                    let gatekeeper = Gatekeeper::bind_with_store(gk, store)
                        .await
                        .context("starting the gatekeeper")?;
                    serve_gatekeeper(gatekeeper, &file).await?;
                }
                None => {
                    let gatekeeper =
                        Gatekeeper::bind(gk).await.context("starting the gatekeeper")?;
                    serve_gatekeeper(gatekeeper, &file).await?;
                }
            }
        }
        Command::Backup { data_dir, to } => {
            init_logging(false);
            if to.exists() {
                anyhow::bail!("{} exists; choose a new file", to.display());
            }
            let store = interop_server::store::sqlite::SqliteStore::open(
                &data_dir.join("gatekeeper.db"),
                interop_server::store::QueueLimits::default(),
            )
            .await
            .context("opening the gatekeeper database")?;
            store.backup(&to).await.context("writing the backup")?;
            println!("backup written to {}", to.display());
        }
        Command::AddProvider { gatekeeper, integrator, issuer, push_endpoint, media_base_url } => {
            let token = std::env::var("INTEROP_ADMIN_TOKEN")
                .context("set INTEROP_ADMIN_TOKEN to the gatekeeper's admin token")?;
            let push_secret = std::env::var("INTEROP_PUSH_SECRET")
                .context("set INTEROP_PUSH_SECRET to the provider's push secret (whsec_...)")?;
            let issuer = issuer.trim_end_matches('/').to_owned();
            let body = serde_json::json!({
                "issuer": issuer,
                "push_endpoint": push_endpoint.unwrap_or_else(|| format!("{issuer}/v1/push")),
                "push_secret": push_secret,
                "media_base_url": media_base_url.unwrap_or_else(|| format!("{issuer}/media/")),
            });
            let url = format!("{}/admin/providers/{integrator}", gatekeeper.trim_end_matches('/'));
            let response = reqwest::Client::new()
                .put(&url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .context("the gatekeeper's HTTP listener is unreachable")?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                anyhow::bail!("the gatekeeper refused the provider ({status}): {text}");
            }
            println!("provider {integrator} registered");
        }
        Command::RotateKey { provider } => {
            let token = std::env::var("INTEROP_ADMIN_TOKEN")
                .context("set INTEROP_ADMIN_TOKEN to the provider's admin token")?;
            let url = format!("{}/v1/admin/rotate-key", provider.trim_end_matches('/'));
            let response = reqwest::Client::new()
                .post(&url)
                .bearer_auth(token)
                .send()
                .await
                .context("the provider is unreachable")?;
            if !response.status().is_success() {
                anyhow::bail!("the provider refused the rotation ({})", response.status());
            }
            println!("provider signing key rotated");
        }
        Command::Provider { listen, data_dir, issuer, audience, dev } => {
            if !dev {
                anyhow::bail!(
                    "the provider serves plain http only for now; run it with --dev on loopback \
                     (TLS from a certificate file is not implemented yet)"
                );
            }
            if !listen.ip().is_loopback() {
                anyhow::bail!(
                    "--dev serves plain http, so it listens on loopback only (got {listen})"
                );
            }
            let push_secret = secret("INTEROP_PUSH_SECRET", &data_dir, "push.secret", || {
                use base64::Engine;
                let key: [u8; 32] = rand::random();
                format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
            })?;
            let admin_token = secret("INTEROP_ADMIN_TOKEN", &data_dir, "admin.token", || {
                hex::encode(rand::random::<[u8; 32]>())
            })?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .context("binding the provider listener")?;
            let addr = listener.local_addr()?;
            let issuer = issuer.unwrap_or_else(|| format!("http://{addr}"));
            let provider = interop_server::provider::Provider::open(
                interop_server::provider::ProviderConfig {
                    issuer: issuer.clone(),
                    audience,
                    data_dir,
                    push_secret,
                    admin_token,
                    dev,
                    wake_poll: std::time::Duration::from_secs(30),
                },
            )
            .await
            .context("starting the provider")?;
            println!("issuer {issuer}");
            println!("listening {addr}");
            tracing::info!("provider ready");
            provider.serve(listener, shutdown_signal()).await?;
            tracing::info!("provider stopped");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler does not fail");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

//! `interop-server`: the gatekeeper and provider servers.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use interop_server::gatekeeper::{Gatekeeper, GatekeeperConfig};

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
        /// Chat listener address (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:5222", env = "INTEROP_LISTEN")]
        listen: SocketAddr,
        /// HTTP listener address: admin API, /healthz, /metrics, media host and proxy.
        #[arg(long, default_value = "127.0.0.1:8080", env = "INTEROP_HTTP_LISTEN")]
        http_listen: SocketAddr,
        /// Data directory (keys, database, media); created if missing.
        #[arg(long, default_value = "./data/gatekeeper", env = "INTEROP_DATA_DIR")]
        data_dir: PathBuf,
        /// The gatekeeper's id, which provider tokens must carry in `aud`.
        #[arg(long, default_value = "gatekeeper", env = "INTEROP_AUDIENCE")]
        audience: String,
        /// The URL clients reach the HTTP listener at (media); default in dev mode:
        /// `http://<http listen address>`.
        #[arg(long, env = "INTEROP_PUBLIC_HTTP_URL")]
        public_http_url: Option<String>,
        /// Idle timeout of chat connections, in seconds.
        #[arg(long, default_value_t = 300, env = "INTEROP_IDLE_TIMEOUT")]
        idle_timeout: u64,
        /// Development mode: providers may be plain http on loopback, and native verification
        /// codes are printed on standard output instead of being sent.
        #[arg(long)]
        dev: bool,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Gatekeeper {
            listen,
            http_listen,
            data_dir,
            audience,
            public_http_url,
            idle_timeout,
            dev,
        } => {
            let admin_token = secret("INTEROP_ADMIN_TOKEN", &data_dir, "admin.token", || {
                hex::encode(rand::random::<[u8; 32]>())
            })?;
            let mut config = GatekeeperConfig::new(listen, data_dir);
            config.http_listen = Some(http_listen);
            config.audience = audience;
            config.dev = dev;
            config.admin_token = admin_token;
            config.public_http_url = public_http_url;
            config.idle_timeout = std::time::Duration::from_secs(idle_timeout.max(1));
            let gk = Gatekeeper::bind(config).await.context("starting the gatekeeper")?;
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

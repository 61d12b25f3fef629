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
    /// Run the reference third-party provider server (accounts, tokens, keys, push receiver,
    /// media host) over HTTPS; `provider check` checks a provider before it goes live.
    #[command(args_conflicts_with_subcommands = true)]
    Provider {
        #[command(subcommand)]
        action: Option<ProviderAction>,
        /// Listener address (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8443", env = "INTEROP_PROVIDER_LISTEN")]
        listen: SocketAddr,
        /// Data directory (database, signing key, secrets); created if missing.
        #[arg(long, default_value = "./data/provider", env = "INTEROP_PROVIDER_DATA_DIR")]
        data_dir: PathBuf,
        /// Issuer URL written into tokens: the https URL the gatekeeper and clients reach this
        /// provider at (required outside --dev; default in dev mode: `http(s)://<listen address>`).
        #[arg(long, env = "INTEROP_ISSUER")]
        issuer: Option<String>,
        /// The gatekeeper's audience id.
        #[arg(long, default_value = "gatekeeper", env = "INTEROP_AUDIENCE")]
        audience: String,
        /// The TLS certificate chain (PEM, leaf first). Required outside --dev.
        #[arg(long, env = "INTEROP_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The TLS certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
        #[arg(long, env = "INTEROP_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Development mode: plain http is allowed (on loopback only) and the issuer may be a
        /// loopback URL.
        #[arg(long)]
        dev: bool,
    },
    /// Run a gatekeeper and a reference provider together on loopback, the provider
    /// registered, keys generated: prints the addresses, the root key and the next steps.
    Dev {
        /// Data directory (default: a temporary one, removed on exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The gatekeeper's chat listener (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:5222")]
        listen_chat: SocketAddr,
        /// The gatekeeper's HTTP listener (admin API, /healthz, /metrics, media).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen_http: SocketAddr,
        /// The provider's listener.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen_provider: SocketAddr,
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

/// mimalloc: the routing path allocates and frees small buffers and strings per stanza, and
/// glibc's malloc and free were a fifth of the gatekeeper's instructions; with mimalloc it
/// delivers ~20% more messages per second (PERFORMANCE.md). Built without transparent huge
/// pages (`no_thp`), which otherwise cost 4 KiB more per idle connection.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Worker threads: INTEROP_WORKER_THREADS, else as many as the CPUs this process may use.
    let workers =
        match std::env::var("INTEROP_WORKER_THREADS") {
            Ok(v) => v.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                anyhow::anyhow!("INTEROP_WORKER_THREADS must be a positive number")
            })?,
            Err(_) => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        };
    // One worker: tokio's current-thread scheduler, which runs ready tasks first in, first out.
    // The multi-thread scheduler favours tasks in a worker's LIFO slot and local queue (tasks
    // woken by other tasks) over those that overflowed to its global queue, which it visits
    // every few dozen polls by default; saturated with 2,000 ready connections, that left some
    // connections unserved for seconds (PERFORMANCE.md, 2026-11-24: one worker, p99 8.2 s
    // against 0.66 s with the current-thread scheduler).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        // Several workers: the global queue every other poll instead of every few dozen, for
        // the same reason (2 workers: p99 3.0 s with the default, 0.89 s with 2).
        b.worker_threads(workers).global_queue_interval(2);
        b
    };
    builder.enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
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
            gk.media_dir.clone_from(&file.media_dir);
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
            if let Some(n) = file.stanzas_per_minute {
                let n = f64::from(n.max(1));
                gk.stanza_rate =
                    interop_server::ratelimit::Rate { burst: (n / 10.0).max(10.0), per_minute: n };
            }
            if let Some(n) = file.native_messages_per_minute {
                gk.native_messages_per_minute = n.max(1);
            }
            if let Some(redis_url) = &file.redis_url {
                if file.database_url.is_none() {
                    anyhow::bail!(
                        "redis_url is set but database_url is not: the nodes of a cluster share \
                         one PostgreSQL database (set database_url, or remove redis_url for a \
                         single SQLite node)"
                    );
                }
                let cluster = interop_server::cluster::ClusterConfig::new(
                    redis_url.clone(),
                    file.node_id.clone(),
                );
                tracing::info!(node = %cluster.node_id, "cluster node");
                gk.cluster = Some(cluster);
            }
            match &file.database_url {
                Some(url) => {
                    let store = Arc::new(
                        PgStore::connect(url, gk.queue).await.context("opening PostgreSQL")?,
                    );
                    let gatekeeper = Gatekeeper::bind_with_store(gk, store)
                        .await
                        .context("starting the gatekeeper (Redis, when redis_url is set)")?;
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
        Command::Provider { action: Some(ProviderAction::Check(check)), .. } => {
            if !run_provider_check(check).await? {
                std::process::exit(1);
            }
        }
        Command::Provider {
            action: None,
            listen,
            data_dir,
            issuer,
            audience,
            tls_cert,
            tls_key,
            dev,
        } => {
            run_provider(listen, data_dir, issuer, audience, tls_cert.zip(tls_key), dev).await?;
        }
        Command::Dev { data_dir, listen_chat, listen_http, listen_provider } => {
            run_dev(interop_server::dev::DevConfig {
                data_dir,
                listen_chat,
                listen_http,
                listen_provider,
                ..Default::default()
            })
            .await?;
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

/// `interop-server provider ...` subcommands.
#[derive(Debug, Subcommand)]
enum ProviderAction {
    /// Check a provider as a gatekeeper will use it, before going live: discovery and JWKS, a
    /// sample token, signed test wake-ups, the media host. Prints `ok:` / `FAIL: <what> — <fix>`
    /// / `skip:` lines; exits 1 if anything failed. The test account's password comes from
    /// INTEROP_PASSWORD, the push secret registered at the gatekeeper from INTEROP_PUSH_SECRET.
    Check(ProviderCheck),
}

#[derive(Debug, clap::Args)]
struct ProviderCheck {
    /// The provider's issuer URL, exactly as registered at the gatekeeper.
    #[arg(long)]
    provider: String,
    /// The gatekeeper's audience id (tokens' `aud`).
    #[arg(long, alias = "gatekeeper-audience", default_value = "gatekeeper")]
    audience: String,
    /// The push endpoint registered at the gatekeeper (default: `<issuer>/v1/push`).
    #[arg(long)]
    push_endpoint: Option<String>,
    /// The media base URL registered at the gatekeeper (default: `<issuer>/media/`).
    #[arg(long)]
    media_base_url: Option<String>,
    /// A test account of the provider (password in INTEROP_PASSWORD): checks a sample token
    /// and the media host.
    #[arg(long)]
    username: Option<String>,
    /// Create the test account first (an existing one is fine).
    #[arg(long, requires = "username")]
    create: bool,
    /// An extra trust anchor (PEM), for a provider whose certificate comes from a private CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Check as a gatekeeper in dev mode does: plain http to loopback is acceptable.
    #[arg(long)]
    dev: bool,
}

/// Runs the provider check and prints its findings: whether all passed.
async fn run_provider_check(args: ProviderCheck) -> anyhow::Result<bool> {
    let mut config = interop_server::check::CheckConfig::new(&args.provider);
    config.audience = args.audience;
    config.push_endpoint = args.push_endpoint;
    config.media_base_url = args.media_base_url;
    config.push_secret = std::env::var("INTEROP_PUSH_SECRET").ok();
    config.dev = args.dev;
    config.create_account = args.create;
    if let Some(username) = args.username {
        let password = std::env::var("INTEROP_PASSWORD")
            .context("set INTEROP_PASSWORD to the test account's password")?;
        config.credentials = Some((username, password));
    }
    if let Some(path) = &args.ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{}: not PEM certificates", path.display()))?;
        config.extra_roots = roots;
    }
    let findings = interop_server::check::run(&config).await;
    for f in &findings {
        println!("{f}");
    }
    let failed =
        findings.iter().filter(|f| f.outcome == interop_server::check::Outcome::Fail).count();
    if failed == 0 {
        println!("all checks passed");
    } else {
        println!("{failed} check(s) failed");
    }
    Ok(failed == 0)
}

/// Serves the reference provider: HTTPS with a certificate, or plain http on loopback in dev
/// mode.
async fn run_provider(
    listen: SocketAddr,
    data_dir: PathBuf,
    issuer: Option<String>,
    audience: String,
    tls: Option<(PathBuf, PathBuf)>,
    dev: bool,
) -> anyhow::Result<()> {
    if tls.is_none() && !dev {
        anyhow::bail!(
            "the provider serves HTTPS: pass --tls-cert FILE --tls-key FILE (PEM); plain http \
             is only for --dev on loopback"
        );
    }
    if tls.is_none() && !listen.ip().is_loopback() {
        anyhow::bail!(
            "--dev without TLS serves plain http, so it listens on loopback only (got {listen})"
        );
    }
    if let Some(issuer) = &issuer {
        let policy = if dev {
            interop_enlist::UrlPolicy::DevLoopbackHttp
        } else {
            interop_enlist::UrlPolicy::HttpsOnly
        };
        if let Err(problem) = policy.check(issuer) {
            anyhow::bail!(
                "--issuer {issuer} is not acceptable to a gatekeeper ({problem:?}): outside --dev \
                 it must be an https URL at a public DNS name or address (--dev also accepts \
                 loopback URLs)"
            );
        }
    }
    if issuer.is_none() && !dev {
        anyhow::bail!(
            "pass --issuer: the https URL the gatekeeper and clients reach this provider at \
             (e.g. https://id.example.org)"
        );
    }
    let acceptor = match &tls {
        Some((cert, key)) => Some(interop_server::provider::tls::acceptor(cert, key)?),
        None => None,
    };
    let push_secret = secret("INTEROP_PUSH_SECRET", &data_dir, "push.secret", || {
        use base64::Engine;
        let key: [u8; 32] = rand::random();
        format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
    })?;
    let admin_token = secret("INTEROP_ADMIN_TOKEN", &data_dir, "admin.token", || {
        hex::encode(rand::random::<[u8; 32]>())
    })?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.context("binding the provider listener")?;
    let addr = listener.local_addr()?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let issuer = issuer.unwrap_or_else(|| format!("{scheme}://{addr}"));
    let provider =
        interop_server::provider::Provider::open(interop_server::provider::ProviderConfig {
            issuer: issuer.clone(),
            audience,
            data_dir,
            push_secret,
            admin_token,
            dev,
            wake_poll: Duration::from_secs(30),
            token_lifetime: None,
        })
        .await
        .context("starting the provider")?;
    println!("issuer {issuer}");
    println!("listening {addr}");
    tracing::info!(tls = acceptor.is_some(), "provider ready");
    match acceptor {
        Some(acceptor) => provider.serve_tls(listener, acceptor, shutdown_signal()).await?,
        None => provider.serve(listener, shutdown_signal()).await?,
    }
    tracing::info!("provider stopped");
    Ok(())
}

/// Runs `interop-server dev`: prints the start-up lines and the next steps, serves until
/// SIGINT/SIGTERM.
async fn run_dev(config: interop_server::dev::DevConfig) -> anyhow::Result<()> {
    let dev = interop_server::dev::Dev::start(config).await.context("starting the dev setup")?;
    // `interop-client` next to this binary (a cargo build puts both in target/<profile>/).
    let client = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let sibling =
                exe.with_file_name(format!("interop-client{}", std::env::consts::EXE_SUFFIX));
            sibling.exists().then(|| sibling.display().to_string())
        })
        .unwrap_or_else(|| "interop-client".to_owned());
    println!("{}", dev.info().machine_lines());
    println!();
    println!("{}", dev.info().next_steps(&client));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!("dev setup ready");
    dev.run(shutdown_signal()).await?;
    tracing::info!("dev setup stopped");
    Ok(())
}

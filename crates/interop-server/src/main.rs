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
        /// Data directory (keys, state); created if missing.
        #[arg(long, default_value = "./data/gatekeeper", env = "INTEROP_DATA_DIR")]
        data_dir: PathBuf,
    },
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
        Command::Gatekeeper { listen, data_dir } => {
            let gk = Gatekeeper::bind(&GatekeeperConfig { listen, data_dir })
                .await
                .context("starting the gatekeeper")?;
            // Machine-readable start-up lines (xtask e2e and scripts read them).
            println!("root-key {}", hex::encode(gk.root_key()));
            println!("server-key {}", hex::encode(gk.public_key()));
            println!("listening {}", gk.local_addr()?);
            tracing::info!("gatekeeper ready");
            gk.run(shutdown_signal()).await?;
            tracing::info!("gatekeeper stopped");
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

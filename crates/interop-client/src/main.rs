//! `interop-client`: the command-line client.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use interop_client::{ConnectOptions, Connection, keyfile};
use interop_stanza::Node;
use rand::Rng;

#[derive(Debug, Parser)]
#[command(name = "interop-client", version, about = "Command-line client for interop messaging")]
struct Cli {
    /// The gatekeeper's chat address.
    #[arg(long, default_value = "127.0.0.1:5222", env = "INTEROP_SERVER")]
    server: String,
    /// The gatekeeper's root public key (hex, printed by `interop-server gatekeeper` as
    /// `root-key`). Required: the client refuses servers it cannot authenticate.
    #[arg(long, env = "INTEROP_ROOT_KEY")]
    root_key: Option<String>,
    /// Refuse server certificates (intermediate or leaf) with this serial; repeatable.
    #[arg(long = "revoke", value_name = "SERIAL")]
    revoked_serials: Vec<u64>,
    /// Your account identifier.
    #[arg(long, env = "INTEROP_ACCOUNT")]
    account: String,
    /// Your device number.
    #[arg(long, default_value_t = 1)]
    device: u32,
    /// Profile directory (device key); a fresh key is used when absent.
    #[arg(long, env = "INTEROP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print every stanza sent and received.
    #[arg(long)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a text message and wait for the gatekeeper's ack.
    Send {
        /// Recipient account.
        #[arg(long)]
        to: String,
        /// The text.
        text: String,
    },
    /// Print incoming messages as they arrive.
    Listen {
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut opts = ConnectOptions::new(&cli.server, &cli.account);
    opts.device_id = cli.device;
    if let Some(hex_key) = &cli.root_key {
        let bytes = hex::decode(hex_key).context("--root-key is not hex")?;
        let root: [u8; 32] =
            bytes.try_into().map_err(|_| anyhow::anyhow!("--root-key must be 32 bytes"))?;
        let anchor = interop_noise::TrustAnchor::new(root)
            .context("--root-key is not an Ed25519 public key")?;
        opts.trust_anchor = Some(cli.revoked_serials.iter().fold(anchor, |a, s| a.revoke(*s)));
    }
    if let Some(dir) = &cli.data_dir {
        opts.device_key = keyfile::load_or_generate(&dir.join("device.key"))?;
        opts.cached_server_key = keyfile::cached_server_key(dir, &cli.server)?;
    }
    let mut conn = Connection::connect(&opts).await?;
    if let Some(dir) = &cli.data_dir
        && opts.cached_server_key != Some(conn.server_key())
    {
        keyfile::cache_server_key(dir, &cli.server, &conn.server_key())?;
    }
    let how = if conn.resumed() { "IK" } else { "XX" };
    println!("connected as {} via {how}", cli.account);
    match cli.command {
        Command::Send { to, text } => {
            let id = hex::encode(rand::rng().random::<[u8; 8]>());
            let msg = Node::new("message")
                .with_attr("id", &id)
                .with_attr("to", &to)
                .with_attr("type", "text")
                .with_bytes(text.into_bytes());
            if cli.verbose {
                eprintln!("-> {msg:?}");
            }
            conn.send(&msg).await?;
            loop {
                let Some(node) = conn.recv().await? else {
                    bail!("the server closed the connection")
                };
                if cli.verbose {
                    eprintln!("<- {node:?}");
                }
                if node.tag == "ack" && node.attr("id") == Some(id.as_str()) {
                    if let Some(err) = node.attr("error") {
                        bail!("the gatekeeper refused the message: {err}");
                    }
                    println!("acked id={id}");
                    break;
                }
            }
        }
        Command::Listen { count } => {
            let mut seen = 0u64;
            while count.is_none_or(|c| seen < c) {
                let Some(node) = conn.recv().await? else {
                    bail!("the server closed the connection")
                };
                if cli.verbose {
                    eprintln!("<- {node:?}");
                }
                if node.tag == "message" {
                    let from = node.attr("from").unwrap_or("?");
                    let id = node.attr("id").unwrap_or("?");
                    let text = String::from_utf8_lossy(node.bytes().unwrap_or_default());
                    println!("message from={from} id={id} text={text}");
                    seen += 1;
                }
            }
        }
    }
    conn.close().await?;
    Ok(())
}

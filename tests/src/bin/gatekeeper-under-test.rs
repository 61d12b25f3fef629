//! The gatekeeper as a process of its own, for tests that kill it (`tests/durability.rs`).
//!
//! `gatekeeper-under-test --listen <addr> --data-dir <dir>` runs the real
//! [`Gatekeeper`] (SQLite store in the data directory, development mode: verification codes are
//! printed as `verification-code <identifier> <code>`) and prints the start-up lines of
//! `interop-server gatekeeper`: `root-key <hex>`, `server-key <hex>`, `listening <addr>`. It
//! has no HTTP listener.
//!
//! Differences from the production defaults, so that a test measures durability and not
//! fairness: the per-connection stanza rate limit is raised (a client that drains a thousand
//! queued messages acks each one and sends a delivery receipt for it).
//!
//! When the listen address is still taken (the previous process on the same port was just
//! killed), the bind is retried a bounded number of times; each retry prints `bind-retry`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use interop_server::gatekeeper::{Gatekeeper, GatekeeperConfig};
use interop_server::ratelimit::Rate;

/// Bind attempts when the port is still in use, and the pause between them.
const BIND_ATTEMPTS: u32 = 50;
const BIND_BACKOFF: Duration = Duration::from_millis(20);

fn usage() -> ! {
    eprintln!("usage: gatekeeper-under-test --listen <addr> --data-dir <dir>");
    std::process::exit(2)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: Option<SocketAddr> = None;
    let mut data_dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = Some(v.parse()?),
            ("--data-dir", Some(v)) => data_dir = Some(v.into()),
            _ => usage(),
        }
    }
    let (Some(listen), Some(data_dir)) = (listen, data_dir) else { usage() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut attempt = 1;
        let gk = loop {
            let mut config = GatekeeperConfig::new(listen, data_dir.clone());
            config.dev = true;
            config.stanza_rate = Rate { burst: 100_000.0, per_minute: 1_000_000.0 };
            config.native_messages_per_minute = 1_000_000;
            match Gatekeeper::bind(config).await {
                Ok(gk) => break gk,
                Err(interop_server::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::AddrInUse && attempt < BIND_ATTEMPTS =>
                {
                    println!("bind-retry");
                    attempt += 1;
                    tokio::time::sleep(BIND_BACKOFF).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        println!("root-key {}", hex(&gk.root_key()));
        println!("server-key {}", hex(&gk.public_key()));
        println!("listening {}", gk.local_addr()?);
        // Runs until killed: the test stops it with SIGKILL, never gracefully.
        gk.run(std::future::pending()).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

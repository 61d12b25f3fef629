//! `loadgen`: the load generator. `cargo xtask loadtest` builds it, starts the servers and
//! runs it; it can be run by hand against a running server too (see PERFORMANCE.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::stream::{self, StreamExt};
use interop_benches::run::{self, Params, Placement, Target, Watched};
use interop_benches::{gk, payload, xmpp};

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Load generator for the gatekeeper and its XMPP baseline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    /// The interop gatekeeper (Noise + binary stanzas).
    Gatekeeper,
    /// A plain XMPP server (ejabberd) over TCP.
    Xmpp,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Register native users with a running gatekeeper (codes read from its output) and write
    /// them to a state file for `run`.
    Prepare {
        /// The gatekeeper's chat listener (loopback).
        #[arg(long)]
        server: SocketAddr,
        /// The gatekeeper's root key (its `root-key` line), hex.
        #[arg(long)]
        root_key: String,
        /// The file the gatekeeper's standard output goes to (`verification-code` lines).
        #[arg(long)]
        codes_file: PathBuf,
        /// Where to write the users.
        #[arg(long)]
        state: PathBuf,
        /// How many users.
        #[arg(long)]
        users: usize,
        /// Registrations in progress at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Run one mode against a running server and report.
    #[command(args_override_self = true)]
    Run {
        /// Which kind of server.
        #[arg(long, value_enum)]
        system: System,
        /// The server's client listener (loopback). Repeated: the nodes of a gatekeeper
        /// cluster sharing one database (the users spread over them by `--placement`).
        #[arg(long, required = true)]
        server: Vec<SocketAddr>,
        /// With several `--server`s: which user connects to which node.
        #[arg(long, value_enum, default_value = "same")]
        placement: Placement,
        /// The name in the report (default: gatekeeper / ejabberd).
        #[arg(long)]
        name: Option<String>,
        /// The server's process id, for CPU and memory from /proc. Repeated: every node of a
        /// cluster (summed).
        #[arg(long)]
        server_pid: Vec<u32>,
        /// `NAME=PID`: a process the server depends on (a database, Redis), reported with its
        /// child processes under NAME (mode pairs). Repeatable.
        #[arg(long, value_parser = component)]
        component: Vec<(String, u32)>,
        /// Append `start` and `end` lines to this file when the measured interval of mode pairs
        /// begins and ends (`cargo xtask loadtest --cluster` reads its own counters then).
        #[arg(long)]
        marks: Option<PathBuf>,
        /// Gatekeeper: the state file of `prepare`.
        #[arg(long, required_if_eq("system", "gatekeeper"))]
        state: Option<PathBuf>,
        /// XMPP: the domain.
        #[arg(long, default_value = "localhost")]
        xmpp_domain: String,
        /// XMPP: user names are <prefix><index>.
        #[arg(long, default_value = "lt")]
        xmpp_prefix: String,
        /// XMPP: every user's password.
        #[arg(long, default_value = "loadtest")]
        xmpp_password: String,
        /// Print JSON on standard output instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write the JSON report to this file.
        #[arg(long)]
        json_file: Option<PathBuf>,
        #[command(flatten)]
        params: Params,
    },
    /// Print how many users a mode needs (the xtask bulk-loads that many into ejabberd).
    UsersNeeded {
        #[command(flatten)]
        params: Params,
    },
    /// Measure the ciphertext size of a Signal-encrypted short text (interop-e2ee).
    PayloadSize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Prepare { server, root_key, codes_file, state, users, concurrency } => {
            loopback(server)?;
            rt.block_on(prepare(server, &root_key, codes_file, &state, users, concurrency))
        }
        Command::Run {
            system,
            server,
            placement,
            name,
            server_pid,
            component,
            marks,
            state,
            xmpp_domain,
            xmpp_prefix,
            xmpp_password,
            json,
            json_file,
            params,
        } => {
            for s in &server {
                loopback(*s)?;
            }
            let first = server[0];
            let (target, default_name) = match system {
                System::Gatekeeper => {
                    let path = state.context("--state is required for the gatekeeper")?;
                    let state = gk::State::load(&path)?;
                    let target = gk::Target {
                        server: first.to_string(),
                        root: gk::key32(&state.root_key)?,
                        server_key: Some(gk::key32(&state.server_key)?),
                    };
                    let nodes = server.iter().map(SocketAddr::to_string).collect();
                    (
                        Target::Gatekeeper { target, users: state.users, nodes, placement },
                        "gatekeeper",
                    )
                }
                System::Xmpp if server.len() > 1 => bail!("one --server for an XMPP server"),
                System::Xmpp => (
                    Target::Xmpp(xmpp::Target {
                        server: first.to_string(),
                        domain: xmpp_domain,
                        prefix: xmpp_prefix,
                        password: xmpp_password,
                    }),
                    "ejabberd",
                ),
            };
            let name = name.unwrap_or_else(|| default_name.to_owned());
            let watched = Watched { servers: server_pid, components: component, marks };
            let mut report = rt.block_on(run::run(&target, &params, &name, &watched))?;
            if server.len() > 1 {
                report.notes.push(format!(
                    "{} gatekeeper nodes, placement {placement:?}: {}",
                    server.len(),
                    match placement {
                        Placement::Same => "both users of a pair on one node",
                        Placement::Cross => "the two users of a pair on different nodes",
                    }
                ));
            }
            let text = serde_json::to_string_pretty(&report)?;
            if let Some(path) = json_file {
                std::fs::write(&path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if json {
                println!("{text}");
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Command::UsersNeeded { params } => {
            println!("{}", params.users_needed());
            Ok(())
        }
        Command::PayloadSize => {
            let sizes = rt.block_on(payload::measure(64))?;
            let (min, max) = (sizes.first().copied(), sizes.last().copied());
            println!("enc ciphertext of a short text (msg), 64 samples: min {min:?} max {max:?}");
            println!("sizes: {sizes:?}");
            println!("loadgen's default payload: {}", payload::SIGNAL_SHORT_TEXT);
            Ok(())
        }
    }
}

/// `NAME=PID`.
fn component(text: &str) -> Result<(String, u32)> {
    let (name, pid) = text.split_once('=').context("expected NAME=PID")?;
    Ok((name.to_owned(), pid.parse().context("the PID is not a number")?))
}

/// The generator only ever targets loopback.
fn loopback(addr: SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!("loadgen only targets loopback addresses (got {addr})");
    }
    Ok(())
}

/// A registered user and the server's static key, or why not.
type Registered = Result<(gk::User, [u8; 32])>;

async fn prepare(
    server: SocketAddr,
    root_key: &str,
    codes_file: PathBuf,
    state_path: &std::path::Path,
    users: usize,
    concurrency: usize,
) -> Result<()> {
    let target =
        gk::Target { server: server.to_string(), root: gk::key32(root_key)?, server_key: None };
    let codes = gk::Codes::new(codes_file);
    let bar = indicatif::ProgressBar::new(users as u64);
    bar.set_message("registering");
    let timeout = Duration::from_secs(30);
    let started = std::time::Instant::now();
    let results: Vec<(usize, Registered)> = stream::iter(0..users)
        .map(|i| {
            let (target, codes, bar) = (&target, &codes, bar.clone());
            async move {
                let identifier = format!("+1999{i:08}");
                let mut last = None;
                for _ in 0..3 {
                    match gk::register(target, &identifier, i as u32, codes, timeout).await {
                        Ok(r) => {
                            bar.inc(1);
                            return (i, Ok(r));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                (i, Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt"))))
            }
        })
        .buffer_unordered(concurrency.clamp(1, 48))
        .collect()
        .await;
    bar.finish_and_clear();
    let mut ordered: Vec<Option<gk::User>> = vec![None; users];
    let mut server_key = None;
    for (i, r) in results {
        match r {
            Ok((user, key)) => {
                ordered[i] = Some(user);
                server_key = Some(key);
            }
            Err(e) => bail!("registering user {i} failed: {e:#}"),
        }
    }
    let state = gk::State {
        root_key: root_key.trim().to_owned(),
        server_key: hex::encode(server_key.context("no user registered")?),
        users: ordered.into_iter().flatten().collect(),
    };
    std::fs::write(state_path, serde_json::to_string(&state)?)
        .with_context(|| format!("writing {}", state_path.display()))?;
    eprintln!("loadgen: registered {users} users in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

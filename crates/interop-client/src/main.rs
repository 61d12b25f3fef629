//! `interop-client`: the command-line client.
//!
//! ```text
//! interop-client --data-dir ./alice init --server 127.0.0.1:5222 --root-key <hex>
//! INTEROP_PASSWORD=... interop-client --data-dir ./alice login --provider http://127.0.0.1:8443 --username alice --create
//! interop-client --data-dir ./alice enlist
//! interop-client --data-dir ./bob register --identifier +15550001     # then: --code 123456
//! interop-client --data-dir ./alice send "hello" --to +15550001
//! interop-client --data-dir ./bob listen --count 1
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use interop_client::{Client, Event};

#[derive(Debug, Parser)]
#[command(name = "interop-client", version, about = "Command-line client for interop messaging")]
struct Cli {
    /// Profile directory (device key, Signal state, history); created if missing.
    #[arg(long, env = "INTEROP_DATA_DIR", default_value = "./interop-profile")]
    data_dir: PathBuf,
    /// Print every stanza sent and received (as XML) on standard error.
    #[arg(long)]
    verbose: bool,
    /// Machine-readable output: one JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set the gatekeeper's chat address and pin its root key.
    Init {
        /// The gatekeeper's chat address.
        #[arg(long, env = "INTEROP_SERVER", default_value = "127.0.0.1:5222")]
        server: String,
        /// The gatekeeper's root public key (hex; `interop-server gatekeeper` prints it as
        /// `root-key`). The client refuses servers it cannot authenticate.
        #[arg(long, env = "INTEROP_ROOT_KEY")]
        root_key: String,
        /// Whether you send read receipts.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        read_receipts: String,
    },
    /// Log in to your provider (third-party users); the password comes from INTEROP_PASSWORD
    /// or standard input, never from the command line.
    Login {
        /// The provider's base URL.
        #[arg(long, env = "INTEROP_PROVIDER")]
        provider: String,
        /// Your provider username.
        #[arg(long)]
        username: String,
        /// Create the provider account first (sign up).
        #[arg(long)]
        create: bool,
    },
    /// Enlist this device with the gatekeeper (third-party users, after `login`).
    Enlist,
    /// Register as a gatekeeper-native user: first without `--code` (a code is sent), then
    /// with it.
    Register {
        /// Your identifier (phone number).
        #[arg(long)]
        identifier: String,
        /// The verification code you received.
        #[arg(long)]
        code: Option<String>,
    },
    /// Native users: turn interop messaging on (`on`) or off.
    Interop {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Third-party users: leave interop; the gatekeeper deletes your account's data.
    OptOut,
    /// Send a text message.
    Send {
        /// The text.
        text: String,
        /// The recipient: an identifier (phone number, provider username) or an address.
        #[arg(long)]
        to: String,
        /// Reply to this message id (of this conversation).
        #[arg(long)]
        reply_to: Option<String>,
    },
    /// React to a message with an emoji (an empty emoji removes the reaction).
    React {
        /// The message id.
        id: String,
        /// The emoji.
        emoji: String,
        /// The conversation: an identifier or an address.
        #[arg(long)]
        to: String,
    },
    /// Replace the text of one of your messages.
    Edit {
        /// The message id.
        id: String,
        /// The new text.
        text: String,
        /// The conversation: an identifier or an address.
        #[arg(long)]
        to: String,
    },
    /// Delete one of your messages for everyone in the conversation.
    Delete {
        /// The message id.
        id: String,
        /// The conversation: an identifier or an address.
        #[arg(long)]
        to: String,
    },
    /// Send a file (image, video, voice or any file, by its extension): encrypted, uploaded to
    /// your media host with a progress bar, then announced to the recipient.
    SendFile {
        /// The file.
        path: PathBuf,
        /// The recipient: an identifier (phone number, provider username) or an address.
        #[arg(long)]
        to: String,
        /// A caption.
        #[arg(long, default_value = "")]
        caption: String,
    },
    /// Print incoming messages and receipts as they arrive.
    Listen {
        /// Download received media into this directory (verified and decrypted).
        #[arg(long)]
        download_dir: Option<PathBuf>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many receipts as well (waits for both counts).
        #[arg(long, default_value_t = 0)]
        receipts: u64,
        /// Give up after this many seconds (exit status 2).
        #[arg(long)]
        timeout: Option<u64>,
        /// Send read receipts for what arrives (if your read-receipt setting allows).
        #[arg(long)]
        read: bool,
    },
    /// Chat with a contact in the terminal: the conversation with delivery and read ticks,
    /// typing, and a marker on chats that cross providers. Enter sends, Esc quits.
    Chat {
        /// The contact: an identifier (phone number, provider username) or an address.
        with: String,
    },
    /// Show the conversation with a contact.
    History {
        /// The contact.
        with: String,
        /// How many messages.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// List contacts.
    Contacts,
    /// Show the safety number with a contact.
    SafetyNumber {
        /// The contact.
        with: String,
    },
    /// Block (or with --undo unblock) a user.
    Block {
        /// The user.
        who: String,
        /// Unblock instead.
        #[arg(long)]
        undo: bool,
    },
    /// Show this profile: role, address.
    Whoami,
    /// Try something the gatekeeper must refuse, and print how it refused (for demos and
    /// the e2e run): forged-token, leaked-token, oversized-stanza, proxy-path, proxy-provider.
    #[command(hide = true)]
    Probe {
        /// What to try.
        #[arg(value_parser = ["forged-token", "leaked-token", "oversized-stanza", "proxy-path", "proxy-provider"])]
        what: String,
    },
    /// Third-party users: wait (long-poll at the provider) for a push wake-up.
    WaitWake {
        /// Give up after this many polls.
        #[arg(long, default_value_t = 4)]
        polls: u32,
    },
}

fn password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("INTEROP_PASSWORD") {
        return Ok(p);
    }
    eprint!("password: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Runs one hostile probe; returns how the gatekeeper refused it, or fails if it did not.
async fn probe(client: &mut Client, what: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let refused = |e: interop_client::Error| match e {
        interop_client::Error::Closed { condition, text } => {
            Ok(format!("stream error {condition} ({})", text.unwrap_or_default()))
        }
        other => Err(anyhow::anyhow!("unexpected failure: {other}")),
    };
    let wait_for_refusal = async |client: &mut Client| -> anyhow::Result<String> {
        match tokio::time::timeout(Duration::from_secs(10), client.next_event()).await {
            Ok(Ok(event)) => bail!("the gatekeeper accepted it ({event:?})"),
            Ok(Err(e)) => refused(e),
            Err(_) => bail!("the gatekeeper neither refused nor answered"),
        }
    };
    match what {
        "forged-token" => {
            // A valid token with its payload changed (another user), signature kept.
            let connected = client
                .connect_with(|o| {
                    if let Some(jwt) = &mut o.provider_jwt {
                        let parts: Vec<&str> = jwt.split('.').collect();
                        if let [h, p, s] = parts.as_slice()
                            && let Ok(bytes) = b64.decode(p)
                            && let Ok(mut claims) =
                                serde_json::from_slice::<serde_json::Value>(&bytes)
                        {
                            claims["sub"] = serde_json::Value::from("mallory");
                            let forged = b64.encode(claims.to_string());
                            *jwt = format!("{h}.{forged}.{s}");
                        }
                    }
                })
                .await;
            match connected {
                Ok(_) => wait_for_refusal(client).await,
                Err(e) => refused(e),
            }
        }
        "leaked-token" => {
            // This user's token, presented from another device key.
            let stolen = interop_noise::StaticKeypair::generate(&mut rand::rng());
            match client.connect_with(|o| o.device_key = stolen).await {
                Ok(_) => wait_for_refusal(client).await,
                Err(e) => refused(e),
            }
        }
        "oversized-stanza" => {
            if let Err(e) = client.connect_with(|o| o.max_stanza = Some(4 << 20)).await {
                bail!("could not connect: {e}");
            }
            let big = interop_stanza::Node::new("message")
                .with_attr("id", "big")
                .with_attr("type", "text")
                .with_bytes(vec![0u8; 2 << 20]);
            // The server may close while the stanza is still being written: then the refusal
            // is read after the failed write.
            let _ = client.send_raw(&big).await;
            wait_for_refusal(client).await
        }
        "proxy-path" | "proxy-provider" => {
            client.connect().await?;
            let (integrator, path) = if what == "proxy-path" {
                // Trying to leave the provider's media base for another host.
                ("example", "..%2F..%2F@169.254.169.254%2Flatest")
            } else {
                ("not-a-provider", "0123456789abcdef")
            };
            let (status, code) = client.probe_proxy(integrator, path).await?;
            if (200..300).contains(&status) {
                bail!("the proxy served it (HTTP {status})");
            }
            Ok(format!("HTTP {status} {code}"))
        }
        other => bail!("unknown probe {other}"),
    }
}

/// A progress bar on standard error (hidden when it is not a terminal, or with `--json`).
fn progress_bar(json: bool, what: &str) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// A file name safe to create in the download directory: the sender's name without any
/// directory part, or the message id.
fn safe_file_name(name: &str, id: &str) -> String {
    let base = std::path::Path::new(name)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .map(str::to_owned);
    base.unwrap_or_else(|| format!("{id}.bin"))
}

fn out(json: bool, value: serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if cli.verbose {
        tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    }
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let json = cli.json;
    let mut client = Client::open(&cli.data_dir).await.context("opening the profile")?;
    client.verbose = cli.verbose;
    match cli.command {
        Command::Init { server, root_key, read_receipts } => {
            let root: [u8; 32] = hex::decode(root_key.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("--root-key must be 64 hex digits")?;
            interop_noise::TrustAnchor::new(root)
                .context("--root-key is not an Ed25519 public key")?;
            client.set_server(&server, &root).await?;
            client.set_read_receipts(read_receipts == "on").await?;
            out(json, serde_json::json!({"ok": true}), || format!("profile ready for {server}"));
        }
        Command::Login { provider, username, create } => {
            let password = password()?;
            client.provider_login(&provider, &username, &password, create).await?;
            out(json, serde_json::json!({"ok": true}), || "logged in to the provider".into());
        }
        Command::Enlist => {
            let (address, created) = client.enlist().await?;
            out(
                json,
                serde_json::json!({"account": address.account, "device": address.device,
                                   "integrator": address.integrator, "created": created}),
                || format!("enlisted as {} (device {})", address.account_jid(), address.device),
            );
        }
        Command::Register { identifier, code: None } => {
            let expires = client.register(&identifier).await?;
            out(json, serde_json::json!({"code_sent": true, "expires_in": expires}), || {
                format!("a verification code was sent; it expires in {expires} s")
            });
        }
        Command::Register { identifier, code: Some(code) } => {
            let address = client.confirm(&identifier, &code).await?;
            out(
                json,
                serde_json::json!({"account": address.account, "device": address.device}),
                || format!("registered as {} (device {})", address.account_jid(), address.device),
            );
        }
        Command::Interop { state } => {
            client.connect().await?;
            client.set_interop(state == "on").await?;
            out(json, serde_json::json!({"interop": state}), || {
                if state == "on" {
                    "interop messaging is on: users of other providers can reach you".into()
                } else {
                    "interop messaging is off".into()
                }
            });
        }
        Command::OptOut => {
            client.connect().await?;
            client.opt_out().await?;
            out(json, serde_json::json!({"opted_out": true}), || {
                "opted out: the gatekeeper deleted your interop account".into()
            });
        }
        Command::Send { text, to, reply_to } => {
            client.connect().await?;
            let id = match reply_to {
                Some(quoted) => {
                    // The quoted message is the peer's or our own: find whose it is.
                    let peer = client.lookup(&to).await?.account;
                    let mine = client.address().await?.map(|a| a.account).unwrap_or_default();
                    let theirs = client.db().has_message(&peer, &quoted).await?;
                    let sender = if theirs { peer } else { mine };
                    client.send_reply(&to, &text, &quoted, &sender).await?
                }
                None => client.send_text(&to, &text).await?,
            };
            out(json, serde_json::json!({"sent": id}), || format!("sent id={id}"));
        }
        Command::React { id, emoji, to } => {
            client.connect().await?;
            let sent = client.send_reaction(&to, &id, &emoji).await?;
            out(json, serde_json::json!({"sent": sent}), || format!("sent id={sent}"));
        }
        Command::Edit { id, text, to } => {
            client.connect().await?;
            let sent = client.send_edit(&to, &id, &text).await?;
            out(json, serde_json::json!({"sent": sent}), || format!("sent id={sent}"));
        }
        Command::Delete { id, to } => {
            client.connect().await?;
            let sent = client.send_delete(&to, &id).await?;
            out(json, serde_json::json!({"sent": sent}), || format!("sent id={sent}"));
        }
        Command::SendFile { path, to, caption } => {
            client.connect().await?;
            let bar = progress_bar(json, "upload");
            let mut progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let id = client.send_file(&to, &path, &caption, &mut progress).await?;
            bar.finish_and_clear();
            out(json, serde_json::json!({"sent": id}), || format!("sent id={id}"));
        }
        Command::Listen { count, receipts, timeout, read, download_dir } => {
            let resumed = client.connect().await?;
            out(json, serde_json::json!({"connected": if resumed { "ik" } else { "xx" }}), || {
                format!("connected ({})", if resumed { "IK resumption" } else { "XX" })
            });
            let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
            let (mut messages, mut receipt_count) = (0u64, 0u64);
            while count.is_none_or(|c| messages < c) || receipt_count < receipts {
                let next = client.next_event();
                let event = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, next).await {
                        Ok(e) => e?,
                        Err(_) => {
                            eprintln!(
                                "timed out after {messages} message(s) and {receipt_count} receipt(s)"
                            );
                            return Ok(2);
                        }
                    },
                    None => next.await?,
                };
                match event {
                    Event::Message(m) => {
                        messages += 1;
                        out(
                            json,
                            serde_json::json!({"message": m.id, "from": m.from_account,
                                               "device": m.from_device, "text": m.body.to_string()}),
                            || {
                                format!(
                                    "message from={} id={} text={}",
                                    m.from_account, m.id, m.body
                                )
                            },
                        );
                        if let (Some(dir), Some(media)) = (&download_dir, &m.media) {
                            std::fs::create_dir_all(dir)?;
                            let name = safe_file_name(&media.file_name, &m.id);
                            let dest = dir.join(&name);
                            let bar = progress_bar(json, "download");
                            let mut progress = |done: u64, total: u64| {
                                bar.set_length(total);
                                bar.set_position(done);
                            };
                            let hash = client.download(media, &dest, &mut progress).await?;
                            bar.finish_and_clear();
                            out(
                                json,
                                serde_json::json!({"downloaded": name, "sha256": hex::encode(hash)}),
                                || format!("downloaded file={name} sha256={}", hex::encode(hash)),
                            );
                        }
                        if read {
                            client.send_read(&m.from_account, std::slice::from_ref(&m.id)).await?;
                        }
                    }
                    Event::Receipt { from_account, ids, kind } => {
                        receipt_count += 1;
                        out(
                            json,
                            serde_json::json!({"receipt": kind.as_str(), "from": from_account, "ids": ids}),
                            || {
                                format!(
                                    "receipt {} from={from_account} ids={}",
                                    kind.as_str(),
                                    ids.join(",")
                                )
                            },
                        );
                    }
                    Event::Undecryptable { from_account, id } => {
                        out(
                            json,
                            serde_json::json!({"undecryptable": id, "from": from_account}),
                            || {
                                format!(
                                    "message from={from_account} id={id} could not be decrypted (a retry was requested)"
                                )
                            },
                        );
                    }
                    Event::IdentityChanged { account, safety_number } => {
                        out(
                            json,
                            serde_json::json!({"identity_changed": account, "safety_number": safety_number}),
                            || {
                                format!(
                                    "safety number with {account} changed: {safety_number} (compare it with them)"
                                )
                            },
                        );
                    }
                    Event::ChatState { from_account, state } => {
                        out(
                            json,
                            serde_json::json!({"chatstate": state, "from": from_account}),
                            || format!("{from_account} is {state}"),
                        );
                    }
                }
            }
        }
        Command::Chat { with } => interop_client::tui::run(&mut client, &with).await?,
        Command::History { with, limit } => {
            let account = match client.db().contact(&with).await? {
                Some(c) => c.account,
                None => interop_client::client::account_of(&with),
            };
            let entries = client.db().history(&account, limit).await?;
            let view = interop_client::client::conversation(&entries);
            for line in view {
                out(
                    json,
                    serde_json::json!({"id": line.id, "from": line.from, "status": line.status,
                                       "text": line.text, "edited": line.edited,
                                       "deleted": line.deleted, "reactions": line.reactions,
                                       "reply_to": line.reply_to}),
                    || line.to_string(),
                );
            }
        }
        Command::Contacts => {
            for c in client.db().contacts().await? {
                out(
                    json,
                    serde_json::json!({"identifier": c.identifier, "account": c.account, "integrator": c.integrator}),
                    || {
                        let kind = if c.integrator.is_some() { " (interop)" } else { "" };
                        format!("{} -> {}{kind}", c.identifier, c.account)
                    },
                );
            }
        }
        Command::SafetyNumber { with } => {
            client.connect().await?;
            let number = client.safety_number(&with).await?;
            out(json, serde_json::json!({"safety_number": number}), || number.clone());
        }
        Command::Block { who, undo } => {
            client.connect().await?;
            client.block(&who, !undo).await?;
            out(json, serde_json::json!({"blocked": !undo}), || {
                if undo { "unblocked".into() } else { "blocked".into() }
            });
        }
        Command::WaitWake { polls } => {
            for _ in 0..polls {
                if client.wait_for_wake().await? {
                    out(json, serde_json::json!({"wake": true}), || {
                        "woken: messages are waiting".into()
                    });
                    return Ok(0);
                }
            }
            eprintln!("no wake-up");
            return Ok(2);
        }
        Command::Probe { what } => {
            let refusal = probe(&mut client, &what).await?;
            out(json, serde_json::json!({"probe": what, "refused": refusal}), || {
                format!("refused {what}: {refusal}")
            });
        }
        Command::Whoami => {
            let role = client.role().await?;
            let address = client.address().await?;
            match address {
                Some(a) => out(
                    json,
                    serde_json::json!({"role": format!("{role:?}"), "account": a.account, "device": a.device}),
                    || format!("{role:?} {} device {}", a.account_jid(), a.device),
                ),
                None => bail!("not enlisted or registered yet"),
            }
        }
    }
    client.disconnect().await.ok();
    Ok(0)
}

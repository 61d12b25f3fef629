//! `cargo xtask loadtest`: builds the gatekeeper and the load generator in release, starts the
//! server(s) on loopback in a scratch directory, runs `loadgen` against each with the same
//! pattern, and prints the figures side by side with their ratios.
//!
//! Per mode and system the server is started fresh: the gatekeeper once to register the users
//! (`loadgen prepare`, codes read from its output) and again, on the same data directory, for
//! the measured run; ejabberd (Debian's package, installed with apt-get when missing) is
//! configured once, its users bulk-loaded with one `ejabberdctl import_piefxis` call, then
//! restarted for each measured run. The server is pinned to core 0 and the generator to core 1
//! (`taskset`). Nothing here runs in CI: a full run takes minutes.
//!
//! `--cluster N` measures the gatekeeper on PostgreSQL + Redis instead: one node against N
//! nodes, with the pairs on one node or across nodes (see [`cluster`]).

mod cluster;

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::util::{cargo, target_dir, workspace_root};

pub const HELP: &str = "\
cargo xtask loadtest [options] [-- LOADGEN OPTIONS]

Runs the load generator (benches/, `loadgen`) against a fresh gatekeeper and, with
--baseline ejabberd, against ejabberd configured the same way each time, and prints the
figures with their ratios. Loopback only; bounded in time.

options:
  --mode pairs|idle|storm|offline|all   pattern (default pairs; all = idle, storm, pairs, offline)
  --baseline ejabberd                   also measure ejabberd (apt-get install ejabberd if missing)
  --smoke                               10 pairs for 2 s, gatekeeper only (a quick check)
  --cluster N                           mode pairs on PostgreSQL + Redis (started here, as
                                        `cargo xtask services up`, in the scratch directory):
                                        1 node, then N nodes with each pair on one node, then
                                        N nodes with each pair across two nodes
  --no-pin                              do not pin server and generator to cores 0 and 1
  --json                                print the combined results as JSON
  --keep                                keep the scratch directory (target/loadtest/<time>)
  --callgrind                           run the measured gatekeeper under valgrind's callgrind
                                        (instruction counts, <scratch>/<mode>/callgrind.out;
                                        implies --keep; about 50x slower: use a few pairs)

loadgen options (after --), the same for both systems:
  --pairs N (1000)  --window W (10)  --payload S (266)  --duration D (10)  --warmup X (2)
  --msg-rate M (0: unpaced; messages/s per side of a pair, an offered load below saturation)
  --connections N (idle, 2000)  --storm-workers C (32)  --storm-users U (256)
  --queue Q (offline, 100)  --concurrency C (32)  --conn-rate R (95)  --step-timeout T (30)

examples:
  cargo xtask loadtest -- --pairs 50 --duration 5
  cargo xtask loadtest --mode all --baseline ejabberd
  cargo xtask loadtest --cluster 2 -- --pairs 200 --window 10 --duration 10
";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    modes: Vec<String>,
    ejabberd: bool,
    pin: bool,
    json: bool,
    keep: bool,
    callgrind: bool,
    /// `--cluster N`: the PostgreSQL + Redis set-ups with N nodes.
    cluster: Option<usize>,
    loadgen_args: Vec<String>,
}

fn parse(args: &[String]) -> Result<Option<Options>> {
    let (own, passthrough) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut o = Options {
        modes: vec!["pairs".into()],
        ejabberd: false,
        pin: true,
        json: false,
        keep: false,
        callgrind: false,
        cluster: None,
        loadgen_args: passthrough.to_vec(),
    };
    let mut it = own.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--help" | "-h" | "help" => return Ok(None),
            "--mode" => {
                let m = it.next().context("--mode needs a value")?;
                o.modes = match m.as_str() {
                    "all" => ["idle", "storm", "pairs", "offline"].map(String::from).to_vec(),
                    "pairs" | "idle" | "storm" | "offline" => vec![m.clone()],
                    other => bail!("unknown mode {other:?} (pairs, idle, storm, offline, all)"),
                };
            }
            "--baseline" => match it.next().map(String::as_str) {
                Some("ejabberd") => o.ejabberd = true,
                other => bail!("--baseline supports ejabberd only (got {other:?})"),
            },
            "--smoke" => {
                o.modes = vec!["pairs".into()];
                o.loadgen_args.extend(
                    ["--pairs", "10", "--duration", "2", "--warmup", "0.5"].map(String::from),
                );
            }
            "--cluster" => {
                let n = it.next().context("--cluster needs a number of nodes")?;
                match n.parse::<usize>() {
                    Ok(n) if (2..=8).contains(&n) => o.cluster = Some(n),
                    _ => bail!("--cluster takes a number of nodes from 2 to 8 (got {n:?})"),
                }
            }
            "--no-pin" => o.pin = false,
            "--json" => o.json = true,
            "--keep" => o.keep = true,
            "--callgrind" => {
                o.callgrind = true;
                o.keep = true;
            }
            other => bail!("loadtest: unknown option {other:?}\n\n{HELP}"),
        }
    }
    if o.cluster.is_some() && (o.ejabberd || o.modes != ["pairs"]) {
        bail!("--cluster runs mode pairs on the gatekeeper only (no --mode, no --baseline)");
    }
    Ok(Some(o))
}

pub fn run(args: &[String]) -> Result<()> {
    let Some(opts) = parse(args)? else {
        print!("{HELP}");
        return Ok(());
    };
    let started = Instant::now();
    let pin = opts.pin && which("taskset") && cores() >= 2;
    if opts.pin && !pin {
        eprintln!("xtask: loadtest: not pinning (needs taskset and 2 cores)");
    }
    eprintln!("xtask: loadtest: building interop-server and loadgen (release)");
    cargo(&[
        "build",
        "--release",
        "--locked",
        "-p",
        "interop-server",
        "-p",
        "interop-benches",
        "--bins",
    ])
    .status_checked()?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let scratch = target_dir()?.join("loadtest").join(stamp.to_string());
    std::fs::create_dir_all(scratch.join("bin"))?;
    let scratch = std::fs::canonicalize(&scratch)?;
    // The binaries run from a copy: another build into the same target directory (another
    // checkout sharing it) must not swap them in the middle of the run.
    let built = target_dir()?.join("release");
    let bin = scratch.join("bin");
    for name in ["interop-server", "loadgen"] {
        std::fs::copy(built.join(name), bin.join(name))
            .with_context(|| format!("copying {name} into {}", bin.display()))?;
    }
    let tools = Tools {
        server: bin.join("interop-server"),
        loadgen: bin.join("loadgen"),
        pin,
        quiet_stdout: opts.json,
        callgrind: opts.callgrind,
    };

    if let Some(nodes) = opts.cluster {
        let mut summary = cluster::run(&tools, &scratch, nodes, &opts.loadgen_args)?;
        summary["revision"] = revision();
        std::fs::write(scratch.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            print!("{}", cluster::table(&summary));
        }
        finish(&scratch, opts.keep, &["services"])?;
        eprintln!("xtask: loadtest: {:.0} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    let mut results = Vec::new();
    let mut ejabberd = None;
    let mut ejabberd_problem = None;
    if opts.ejabberd {
        let users = opts
            .modes
            .iter()
            .map(|m| tools.users_needed(m, &opts.loadgen_args))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        match Ejabberd::set_up(&scratch.join("ejabberd"), users) {
            Ok(e) => ejabberd = Some(e),
            Err(e) => {
                let why = format!("{e:#}");
                eprintln!("xtask: loadtest: ejabberd is not available: {why}");
                ejabberd_problem = Some(why);
            }
        }
    }
    for mode in &opts.modes {
        let dir = scratch.join(format!("gatekeeper-{mode}"));
        eprintln!("xtask: loadtest: == gatekeeper, {mode} ==");
        let gk = tools.gatekeeper(&dir, mode, &opts.loadgen_args);
        let gk = report_or_error(gk, "gatekeeper", mode);
        let ej = match &ejabberd {
            Some(e) => {
                eprintln!("xtask: loadtest: == ejabberd, {mode} ==");
                let dir = scratch.join(format!("ejabberd-{mode}"));
                Some(report_or_error(
                    e.measure(&tools, &dir, mode, &opts.loadgen_args),
                    "ejabberd",
                    mode,
                ))
            }
            None => None,
        };
        results.push((mode.clone(), gk, ej));
    }
    drop(ejabberd);

    let summary = summary(&results, ejabberd_problem.as_deref());
    std::fs::write(scratch.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", table(&summary));
    }
    finish(&scratch, opts.keep, &[])?;
    eprintln!("xtask: loadtest: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Keeps the scratch directory (`keep`), or only the reports: the servers' data and the
/// directories named in `also` go.
fn finish(scratch: &Path, keep: bool, also: &[&str]) -> Result<()> {
    if keep {
        eprintln!("xtask: loadtest: scratch directory kept: {}", scratch.display());
        return Ok(());
    }
    for entry in std::fs::read_dir(scratch)?.flatten() {
        let _ = std::fs::remove_dir_all(entry.path().join("data"));
        let _ = std::fs::remove_dir_all(entry.path().join("spool"));
    }
    let _ = std::fs::remove_dir_all(scratch.join("bin"));
    for dir in also {
        let _ = std::fs::remove_dir_all(scratch.join(dir));
    }
    eprintln!("xtask: loadtest: reports in {}", scratch.display());
    Ok(())
}

fn report_or_error(r: Result<Value>, system: &str, mode: &str) -> Value {
    r.unwrap_or_else(|e| {
        eprintln!("xtask: loadtest: {system} {mode} failed: {e:#}");
        json!({ "system": system, "mode": mode, "failed": format!("{e:#}") })
    })
}

/// The gatekeeper's configuration for the measured runs: its anti-abuse limits (the
/// per-connection stanza rate and the per-account message quota, 100 stanzas/s and 10
/// messages/s by default) are lifted, as ejabberd's traffic shaper is removed for the
/// baseline: the load test measures capacity, not policy. Everything else is the default.
const GATEKEEPER_CONFIG: &str = "\
stanzas_per_minute = 1000000000
native_messages_per_minute = 1000000000
";

struct Tools {
    server: PathBuf,
    loadgen: PathBuf,
    pin: bool,
    /// `--json`: loadgen's tables go to standard error, standard output carries the JSON.
    quiet_stdout: bool,
    /// `--callgrind`: the measured gatekeeper runs under callgrind.
    callgrind: bool,
}

impl Tools {
    /// A command pinned to `core` (when pinning).
    fn pinned(&self, core: u32, program: &Path) -> Command {
        if self.pin {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn loadgen(&self) -> Command {
        let mut c = self.pinned(1, &self.loadgen);
        c.current_dir(workspace_root());
        if self.quiet_stdout {
            c.stdout(Stdio::from(std::io::stderr()));
        }
        c
    }

    fn users_needed(&self, mode: &str, args: &[String]) -> Result<usize> {
        let mut c = Command::new(&self.loadgen);
        c.args(["users-needed", "--mode", mode]).args(args);
        let out = c.output().context("running loadgen users-needed")?;
        if !out.status.success() {
            bail!("loadgen rejected the options: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().context("loadgen users-needed output")
    }

    /// Starts the gatekeeper on `data`, its output to `log`: the process, chat address and
    /// root key.
    fn start_gatekeeper(&self, data: &Path, log: &Path) -> Result<Node> {
        self.start_node(data, log, GATEKEEPER_CONFIG)
    }

    /// Starts `interop-server gatekeeper` on `data` with the configuration file `config`, its
    /// output to `log`, and waits for its start-up lines.
    fn start_node(&self, data: &Path, log: &Path, config: &str) -> Result<Node> {
        let stdout = std::fs::File::create(log)?;
        let stderr = std::fs::File::create(log.with_extension("stderr"))?;
        let config_text = config;
        let config = log.with_extension("toml");
        std::fs::write(&config, config_text)?;
        let measured = log.file_name().is_some_and(|n| n == "run.log");
        let mut c = if self.callgrind && measured {
            let mut c = self.pinned(0, Path::new("valgrind"));
            c.arg("--tool=callgrind")
                .arg(format!(
                    "--callgrind-out-file={}",
                    log.with_file_name("callgrind.out").display()
                ))
                .arg(&self.server);
            c
        } else {
            self.pinned(0, &self.server)
        };
        c.args(["gatekeeper", "--dev", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let server = Server { child: c.spawn().context("starting interop-server")? };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let line =
                |p: &str| text.lines().find_map(|l| l.strip_prefix(p)).map(|v| v.trim().to_owned());
            if let (Some(addr), Some(root), Some(http)) =
                (line("listening "), line("root-key "), line("http "))
            {
                return Ok(Node { server, addr, root, http });
            }
            if Instant::now() > deadline {
                bail!("the gatekeeper did not start: {}", tail(&log.with_extension("stderr")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Registers the users, restarts the gatekeeper on the same data and runs the mode.
    fn gatekeeper(&self, dir: &Path, mode: &str, args: &[String]) -> Result<Value> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join("data");
        let state = dir.join("state.json");
        let users = self.users_needed(mode, args)?;
        {
            let Node { server, addr, root, .. } =
                self.start_gatekeeper(&data, &dir.join("prepare.log"))?;
            let mut c = self.loadgen();
            c.args(["prepare", "--server", &addr, "--root-key", &root, "--users"])
                .arg(users.to_string())
                .arg("--codes-file")
                .arg(dir.join("prepare.log"))
                .arg("--state")
                .arg(&state);
            let status = c.status().context("running loadgen prepare")?;
            server.stop()?;
            if !status.success() {
                bail!("loadgen prepare failed ({status})");
            }
        }
        let Node { server, addr, http, .. } = self.start_gatekeeper(&data, &dir.join("run.log"))?;
        let report = dir.join("report.json");
        let mut c = self.loadgen();
        c.args(["run", "--system", "gatekeeper", "--server", &addr, "--mode", mode])
            .args(["--conn-rate", "0"])
            .arg("--server-pid")
            .arg(server.child.id().to_string())
            .arg("--state")
            .arg(&state)
            .arg("--json-file")
            .arg(&report)
            .args(args);
        let status = c.status().context("running loadgen run")?;
        // The server's own counters after the run (direct copies, fallbacks, commits), for
        // diagnosis: kept with --keep.
        if let Ok(metrics) = cluster::scrape(&http) {
            std::fs::write(dir.join("metrics.txt"), metrics)?;
        }
        server.stop()?;
        if !status.success() {
            bail!("loadgen run failed ({status})");
        }
        read_json(&report)
    }
}

/// A started gatekeeper: the process, its chat and HTTP listeners and its root key.
struct Node {
    server: Server,
    addr: String,
    root: String,
    http: String,
}

/// A server process we started; stopped with SIGTERM (then SIGKILL) on drop at the latest.
struct Server {
    child: Child,
}

impl Server {
    fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// ejabberd from Debian's package, run from a scratch directory (not the system service).
struct Ejabberd {
    dir: PathBuf,
    /// The `ejabberd` user's home (its Erlang cookie).
    home: PathBuf,
    node: String,
    port: u16,
    running: bool,
}

/// Users are `lt<index>@localhost`, all with this password.
const EJ_PASSWORD: &str = "loadtest";
const EJ_PREFIX: &str = "lt";

impl Ejabberd {
    /// Installs the package if missing, writes the configuration, starts ejabberd once to
    /// bulk-load `users` users, and stops it.
    fn set_up(dir: &Path, users: usize) -> Result<Self> {
        install()?;
        std::fs::create_dir_all(dir.join("spool"))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let port = free_port()?;
        let debian = std::fs::read_to_string("/etc/ejabberd/ejabberd.yml")
            .context("reading Debian's /etc/ejabberd/ejabberd.yml")?;
        std::fs::write(dir.join("ejabberd.yml"), configure(&debian, port)?)?;
        std::fs::write(
            dir.join("ejabberdctl.cfg"),
            format!(
                "ERL_OPTIONS=\"-env ERL_CRASH_DUMP_BYTES 0\"\nEJABBERD_CONFIG_PATH={}\n\
                 EJABBERD_PID_PATH={}\n",
                dir.join("ejabberd.yml").display(),
                dir.join("ejabberd.pid").display()
            ),
        )?;
        let mut users_xml = String::from(
            "<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns='urn:xmpp:pie:0'>\n  <host jid='localhost'>\n",
        );
        for i in 0..users {
            users_xml
                .push_str(&format!("    <user name='{EJ_PREFIX}{i}' password='{EJ_PASSWORD}'/>\n"));
        }
        users_xml.push_str("  </host>\n</server-data>\n");
        std::fs::write(dir.join("users.xml"), users_xml)?;
        // ejabberdctl runs ejabberd as the `ejabberd` user: it must own its directory.
        Command::new("chown").args(["-R", "ejabberd:ejabberd"]).arg(dir).status_ok("chown")?;
        let mut e = Self {
            dir: dir.to_owned(),
            home: user_home("ejabberd")?,
            node: format!("loadtest{}@localhost", std::process::id()),
            port,
            running: false,
        };
        e.start(false)?;
        let t = Instant::now();
        eprintln!("xtask: loadtest: ejabberd: bulk-loading {users} users (import_piefxis)");
        e.ctl(&["import_piefxis"])
            .arg(dir.join("users.xml"))
            .status_ok("ejabberdctl import_piefxis")?;
        eprintln!("xtask: loadtest: ejabberd: users loaded in {:.1} s", t.elapsed().as_secs_f64());
        e.stop()?;
        Ok(e)
    }

    /// `ejabberdctl` as the `ejabberd` user. Debian's systemd unit starts it as that user with
    /// `LimitNOFILE=65536`; run as root, ejabberdctl would switch users with `su`, whose PAM
    /// session resets the open-file limit to 1024 (ejabberd then refuses connections beyond
    /// about 1,000). `setpriv` switches without PAM, so ejabberd inherits our limit, the one
    /// the gatekeeper gets too.
    fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=ejabberd", "--regid=ejabberd", "--init-groups", "ejabberdctl"])
            .env("HOME", &self.home)
            .arg("-c")
            .arg(self.dir.join("ejabberdctl.cfg"))
            .arg("-l")
            .arg(self.dir.join("logs"))
            .arg("-s")
            .arg(self.dir.join("spool"))
            .args(["-n", &self.node])
            .args(args);
        c
    }

    /// Starts ejabberd (pinned to core 0 when `pin`) and waits until it runs: its pid.
    fn start(&mut self, pin: bool) -> Result<u32> {
        let _ = std::fs::remove_file(self.dir.join("ejabberd.pid"));
        let mut c = if pin {
            let ctl = self.ctl(&["start"]);
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(ctl.get_program()).args(ctl.get_args()).env("HOME", &self.home);
            c
        } else {
            self.ctl(&["start"])
        };
        c.status_ok("ejabberdctl start")?;
        self.running = true;
        self.ctl(&["started"]).status_ok("ejabberdctl started").with_context(|| {
            format!("ejabberd did not start; log: {}", tail(&self.dir.join("logs/ejabberd.log")))
        })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join("ejabberd.pid"))
                && let Ok(pid) = pid.trim().parse::<u32>()
            {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                bail!("ejabberd wrote no pid file");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.ctl(&["stop"]).status_ok("ejabberdctl stop")?;
        self.ctl(&["stopped"]).status_ok("ejabberdctl stopped")?;
        self.running = false;
        Ok(())
    }

    fn measure(&self, tools: &Tools, dir: &Path, mode: &str, args: &[String]) -> Result<Value> {
        std::fs::create_dir_all(dir)?;
        let mut e = Self {
            dir: self.dir.clone(),
            home: self.home.clone(),
            node: self.node.clone(),
            port: self.port,
            running: false,
        };
        let pid = e.start(tools.pin)?;
        let report = dir.join("report.json");
        let mut c = tools.loadgen();
        c.args(["run", "--system", "xmpp", "--name", "ejabberd", "--mode", mode])
            .args(["--conn-rate", "0"])
            .arg("--server")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--server-pid", &pid.to_string()])
            .args(["--xmpp-domain", "localhost", "--xmpp-prefix", EJ_PREFIX])
            .args(["--xmpp-password", EJ_PASSWORD])
            .arg("--json-file")
            .arg(&report)
            .args(args);
        let status = c.status().context("running loadgen run")?;
        e.stop()?;
        if !status.success() {
            bail!("loadgen run failed ({status})");
        }
        read_json(&report)
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Installs Debian's ejabberd package when it is missing.
fn install() -> Result<()> {
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "ejabberd"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"));
    if installed {
        return Ok(());
    }
    eprintln!("xtask: loadtest: installing ejabberd (apt-get)");
    Command::new("apt-get").arg("update").status_ok("apt-get update")?;
    Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "ejabberd"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status_ok("apt-get install ejabberd (needs root and Debian's package archive)")?;
    Ok(())
}

/// Debian's ejabberd.yml with the fixed baseline changes and nothing else: log level warning;
/// the listeners replaced by one plain-TCP c2s listener on `127.0.0.1:<port>` (no STARTTLS,
/// so SASL PLAIN runs over plain TCP; same options as Debian's c2s listener otherwise); the
/// default c2s traffic shaper removed (`c2s_shaper: none`).
fn configure(debian: &str, port: u16) -> Result<String> {
    let mut out = Vec::new();
    let mut lines = debian.lines().peekable();
    let (mut loglevel, mut listen, mut shaper) = (false, false, false);
    while let Some(line) = lines.next() {
        if line.starts_with("loglevel:") {
            out.push("loglevel: warning".to_owned());
            loglevel = true;
        } else if line == "listen:" {
            out.push("listen:".to_owned());
            for l in [
                "  -",
                &format!("    port: {port}"),
                "    ip: \"127.0.0.1\"",
                "    module: ejabberd_c2s",
                "    max_stanza_size: 262144",
                "    shaper: c2s_shaper",
                "    access: c2s",
            ] {
                out.push(l.to_owned());
            }
            // Skip Debian's listeners: the indented (or comment, or blank) lines that follow.
            while lines.peek().is_some_and(|l| l.is_empty() || l.starts_with([' ', '#'])) {
                lines.next();
            }
            listen = true;
        } else if line == "  c2s_shaper:" {
            out.push("  c2s_shaper: none".to_owned());
            while lines.peek().is_some_and(|l| l.starts_with("    ")) {
                lines.next();
            }
            shaper = true;
        } else {
            out.push(line.to_owned());
        }
    }
    if !(loglevel && listen && shaper) {
        bail!(
            "Debian's ejabberd.yml is not the expected one (loglevel {loglevel}, listen {listen}, \
             c2s_shaper {shaper}): update xtask/src/loadtest.rs"
        );
    }
    Ok(out.join("\n") + "\n")
}

trait StatusOk {
    fn status_ok(&mut self, what: &str) -> Result<()>;
}

impl StatusOk for Command {
    fn status_ok(&mut self, what: &str) -> Result<()> {
        let out = self.output().with_context(|| format!("could not run {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// The home directory of `user` (`/etc/passwd`).
fn user_home(user: &str) -> Result<PathBuf> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user) && f.len() >= 6)
        .map(|f| PathBuf::from(f[5]))
        .with_context(|| format!("no user {user} (the ejabberd package creates it)"))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn which(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).context("parsing a loadgen report")
}

/// The figures per mode with their ratios and targets (issue 12).
fn summary(results: &[(String, Value, Option<Value>)], ejabberd_problem: Option<&str>) -> Value {
    let mut modes = Vec::new();
    for (mode, gk, ej) in results {
        let ej = ej.clone().unwrap_or(Value::Null);
        let f = |v: &Value, path: &[&str]| -> Option<f64> {
            path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_f64)
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let mut figures = Vec::new();
        let mut figure = |name: &str,
                          g: Option<f64>,
                          e: Option<f64>,
                          r: Option<f64>,
                          target: &str| {
            figures.push(json!({"figure": name, "gatekeeper": g, "ejabberd": e, "ratio": r, "target": target}));
        };
        match mode.as_str() {
            "pairs" => {
                let (g, e) = (f(gk, &["delivered_per_s"]), f(&ej, &["delivered_per_s"]));
                figure("delivered messages/s", g, e, ratio(g, e), "gatekeeper/ejabberd >= 3");
                for p in ["p50_ms", "p90_ms", "p99_ms", "max_ms"] {
                    let (g, e) = (f(gk, &["latency", p]), f(&ej, &["latency", p]));
                    let target = if p == "p99_ms" { "gatekeeper/ejabberd <= 0.2" } else { "" };
                    figure(&format!("latency {p}"), g, e, ratio(g, e), target);
                }
            }
            "idle" => {
                let (g, e) = (
                    f(gk, &["idle", "bytes_per_connection"]).map(|b| b / 1024.0),
                    f(&ej, &["idle", "bytes_per_connection"]).map(|b| b / 1024.0),
                );
                figure("KiB per idle connection", g, e, ratio(g, e), "gatekeeper <= 16 KiB");
            }
            "storm" => {
                let rate = |v: &Value, kind: &str| {
                    v.get("handshakes")
                        .and_then(Value::as_array)
                        .and_then(|hs| hs.iter().find(|h| h["kind"] == kind))
                        .and_then(|h| h["per_s"].as_f64())
                };
                let login = rate(&ej, "login");
                for kind in ["ik", "xx"] {
                    let g = rate(gk, kind);
                    figure(
                        &format!("{kind} handshakes/s vs logins/s"),
                        g,
                        login,
                        ratio(g, login),
                        "gatekeeper/ejabberd >= 5",
                    );
                }
            }
            "offline" => {
                let (g, e) =
                    (f(gk, &["offline", "drain_per_s"]), f(&ej, &["offline", "drain_per_s"]));
                figure("offline drain messages/s", g, e, ratio(g, e), "");
            }
            _ => {}
        }
        let cpu = |v: &Value| f(v, &["server", "cpu_cores"]);
        figure("server CPU (cores)", cpu(gk), cpu(&ej), None, "");
        let gcpu = |v: &Value| f(v, &["generator", "cpu_cores"]);
        figure("generator CPU (cores)", gcpu(gk), gcpu(&ej), None, "");
        let errors = |v: &Value| {
            v.get("errors")
                .and_then(Value::as_object)
                .map(|m| m.values().filter_map(Value::as_f64).sum::<f64>() + 0.0)
        };
        figure("errors", errors(gk), errors(&ej), None, "");
        modes.push(json!({"mode": mode, "figures": figures, "gatekeeper": gk, "ejabberd": ej}));
    }
    json!({
        "ejabberd_unavailable": ejabberd_problem,
        "revision": revision(),
        "modes": modes,
    })
}

/// The commit measured, and whether the crates had uncommitted changes.
fn revision() -> Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let dirty = git(&["status", "--porcelain", "--", "crates", "benches"]).map(|s| !s.is_empty());
    json!({ "commit": git(&["rev-parse", "--short", "HEAD"]), "uncommitted_changes": dirty })
}

fn table(summary: &Value) -> String {
    let mut out = String::new();
    let fmt = |v: &Value| match v.as_f64() {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".to_owned(),
    };
    let _ = writeln!(
        out,
        "\n{:<10} {:<34} {:>12} {:>12} {:>8}  target",
        "mode", "figure", "gatekeeper", "ejabberd", "ratio"
    );
    for m in summary["modes"].as_array().into_iter().flatten() {
        for fig in m["figures"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "{:<10} {:<34} {:>12} {:>12} {:>8}  {}",
                m["mode"].as_str().unwrap_or(""),
                fig["figure"].as_str().unwrap_or(""),
                fmt(&fig["gatekeeper"]),
                fmt(&fig["ejabberd"]),
                fmt(&fig["ratio"]),
                fig["target"].as_str().unwrap_or("")
            );
        }
        for (who, v) in [("gatekeeper", &m["gatekeeper"]), ("ejabberd", &m["ejabberd"])] {
            if let Some(why) = v.get("failed").and_then(Value::as_str) {
                let _ = writeln!(out, "  {who} failed: {why}");
            }
        }
    }
    let _ = writeln!(
        out,
        "commit {} (uncommitted changes in crates/ or benches/: {})",
        summary["revision"]["commit"].as_str().unwrap_or("?"),
        summary["revision"]["uncommitted_changes"]
    );
    if let Some(why) = summary["ejabberd_unavailable"].as_str() {
        let _ = writeln!(out, "ejabberd was not measured: {why}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "\
loglevel: info
hosts:
  - localhost
listen:
  -
    port: 5222
    ip: \"::\"
    module: ejabberd_c2s
    starttls_required: true
  -
    port: 5280
    module: ejabberd_http

s2s_use_starttls: required
shaper_rules:
  max_user_sessions: 10
  c2s_shaper:
    none: admin
    normal: all
  s2s_shaper: fast
";

    #[test]
    fn the_baseline_configuration_changes_only_what_the_issue_names() {
        let c = configure(DEBIAN, 15222).unwrap();
        assert!(c.contains("loglevel: warning\n"));
        assert!(c.contains("    port: 15222\n    ip: \"127.0.0.1\"\n    module: ejabberd_c2s\n"));
        assert!(!c.contains("starttls_required"), "{c}");
        assert!(!c.contains("5280"), "{c}");
        assert!(c.contains("  c2s_shaper: none\n  s2s_shaper: fast\n"), "{c}");
        assert!(c.contains("s2s_use_starttls: required\n"), "the rest is Debian's");
        assert!(configure("hosts: []\n", 1).is_err());
    }

    #[test]
    fn options() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse(&args("--mode all --baseline ejabberd -- --pairs 5")).unwrap().unwrap();
        assert_eq!(o.modes, ["idle", "storm", "pairs", "offline"]);
        assert!(o.ejabberd && o.pin);
        assert_eq!(o.loadgen_args, ["--pairs", "5"]);
        assert!(parse(&args("--help")).unwrap().is_none());
        assert!(parse(&args("--baseline prosody")).is_err());
        let smoke = parse(&args("--smoke")).unwrap().unwrap();
        assert!(smoke.loadgen_args.contains(&"10".to_owned()));
        let cluster = parse(&args("--cluster 2 -- --pairs 200")).unwrap().unwrap();
        assert_eq!(cluster.cluster, Some(2));
        assert_eq!(cluster.loadgen_args, ["--pairs", "200"]);
        assert!(parse(&args("--cluster 1")).is_err());
        assert!(parse(&args("--cluster two")).is_err());
        assert!(parse(&args("--cluster 2 --baseline ejabberd")).is_err());
        assert!(parse(&args("--cluster 2 --mode idle")).is_err());
    }

    #[test]
    fn summary_ratios() {
        let gk = json!({"delivered_per_s": 3000.0, "latency": {"p99_ms": 2.0}});
        let ej = json!({"delivered_per_s": 1000.0, "latency": {"p99_ms": 20.0}});
        let s = summary(&[("pairs".into(), gk, Some(ej))], None);
        let figs = s["modes"][0]["figures"].as_array().unwrap();
        assert_eq!(figs[0]["ratio"], 3.0);
        let p99 = figs.iter().find(|f| f["figure"] == "latency p99_ms").unwrap();
        assert_eq!(p99["ratio"], 0.1);
        assert!(table(&s).contains("delivered messages/s"));
    }
}

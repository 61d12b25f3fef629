//! `cargo xtask e2e`: the main job. Builds the binaries once, starts a real gatekeeper process
//! on a free loopback port, drives real client processes through the scenario, prints a
//! transcript with timings, and stops everything it started (also on failure).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{cargo, target_dir};

/// How long any single step may take before the scenario is declared failed. This is a bound
/// for reporting a hang, not a synchronisation mechanism: every step waits on a real event.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Options {
    /// Leave the servers running after the scenario (stop them with Ctrl-C).
    pub keep: bool,
    /// Print the stanzas exchanged.
    pub verbose: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let mut t = Transcript { started };
    t.say("building interop-server and interop-client");
    cargo(&["build", "--locked", "-p", "interop-server", "-p", "interop-client", "--bins"])
        .status_checked()?;
    let bin_dir = target_dir()?.join("debug");
    let server_bin = bin_dir.join("interop-server");
    let client_bin = bin_dir.join("interop-client");

    let scratch = Scratch::new()?;
    let mut procs = Processes::default();

    // 1. The gatekeeper, on a port the OS picks.
    let mut gk = Command::new(&server_bin);
    gk.args(["gatekeeper", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.path().join("gatekeeper"));
    let gk = procs.spawn("gatekeeper", gk)?;
    let (addr, key) = {
        let mut addr = None;
        let mut key = None;
        while addr.is_none() || key.is_none() {
            let line = gk.next_line(STEP_TIMEOUT)?;
            if let Some(a) = line.strip_prefix("listening ") {
                addr = Some(a.trim().to_owned());
            } else if let Some(k) = line.strip_prefix("root-key ") {
                key = Some(k.trim().to_owned());
            }
        }
        (addr.expect("loop ends with addr"), key.expect("loop ends with key"))
    };
    t.say(&format!("gatekeeper up on {addr} (root key {key})"));

    let client = |account: &str| {
        let mut c = Command::new(&client_bin);
        c.args(["--server", &addr, "--root-key", &key, "--account", account]);
        c.arg("--data-dir").arg(scratch.path().join(account));
        if opts.verbose {
            c.arg("--verbose");
        }
        c
    };

    // 2. Bob listens for two messages.
    let mut bob = client("bob");
    bob.args(["listen", "--count", "2"]);
    let bob = procs.spawn("bob", bob)?;
    bob.wait_for_line(STEP_TIMEOUT, |l| l.starts_with("connected"))?;
    t.say("bob connected and listening");

    // 3. Alice sends him a message and waits for the gatekeeper's ack.
    let text = "hello from alice";
    let mut alice = client("alice");
    alice.args(["send", "--to", "bob", text]);
    let out = run_to_end(alice, STEP_TIMEOUT).context("alice's send")?;
    for line in out.lines() {
        t.say(&format!("alice: {line}"));
    }
    if !out.lines().any(|l| l.starts_with("acked")) {
        bail!("alice's message was not acked by the gatekeeper");
    }

    // 4. Bob prints it.
    let line = bob.wait_for_line(STEP_TIMEOUT, |l| l.starts_with("message"))?;
    t.say(&format!("bob:   {line}"));
    if !line.contains("from=alice") || !line.ends_with(&format!("text={text}")) {
        bail!("bob received something else: {line}");
    }
    t.say("delivered: bob received alice's message");

    // 5. Alice again: she cached the gatekeeper's static key, so this connection resumes with IK.
    let text2 = "second, resumed";
    let mut alice = client("alice");
    alice.args(["send", "--to", "bob", text2]);
    let out = run_to_end(alice, STEP_TIMEOUT).context("alice's second send")?;
    for line in out.lines() {
        t.say(&format!("alice: {line}"));
    }
    if !out.lines().any(|l| l.starts_with("connected") && l.ends_with("via IK")) {
        bail!("alice's second connection did not resume with IK");
    }
    let line = bob.wait_for_line(STEP_TIMEOUT, |l| l.starts_with("message"))?;
    t.say(&format!("bob:   {line}"));
    if !line.ends_with(&format!("text={text2}")) {
        bail!("bob received something else: {line}");
    }
    t.say("delivered over an IK-resumed connection");

    if opts.keep {
        t.say(&format!(
            "--keep: gatekeeper stays up on {addr} (root key {key}); press Ctrl-C to stop"
        ));
        procs.wait_all();
    }
    drop(procs);
    t.say("all processes stopped; e2e passed");
    Ok(())
}

struct Transcript {
    started: Instant,
}

impl Transcript {
    fn say(&mut self, what: &str) {
        println!("[{:>7.2}s] {what}", self.started.elapsed().as_secs_f64());
    }
}

/// A fresh scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("interop-e2e-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every process the scenario started; all are killed on drop, whatever happened.
#[derive(Default)]
struct Processes {
    children: Vec<(String, Child)>,
}

impl Processes {
    fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<Lines> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        self.children.push((name.to_owned(), child));
        Ok(Lines::new(name, stdout))
    }

    fn wait_all(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The stdout lines of a child, read on a thread so that waits can time out.
struct Lines {
    name: String,
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn new(name: &str, stdout: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { name: name.to_owned(), rx }
    }

    fn next_line(&self, timeout: Duration) -> Result<String> {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{} printed nothing for {timeout:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("{} exited early", self.name),
        }
    }

    fn wait_for_line(&self, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left)?;
            if want(&line) {
                return Ok(line);
            }
        }
    }
}

/// Runs a command to completion (bounded by `timeout`) and returns its stdout.
fn run_to_end(mut cmd: Command, timeout: Duration) -> Result<String> {
    let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn()?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let lines = Lines::new("client", stdout);
    let deadline = Instant::now() + timeout;
    let mut out = String::new();
    loop {
        match lines.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("client did not finish within {timeout:?}");
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("client exited with {status}; output:\n{out}");
    }
    Ok(out)
}

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

    // The gatekeeper (chat + HTTP), ports picked by the OS the first time, dev mode (loopback
    // provider over plain http, verification codes printed).
    let gk_dir = scratch.path().join("gatekeeper");
    let start_gatekeeper = |procs: &mut Processes,
                            chat: &str,
                            http: &str|
     -> Result<(Lines, String, String, String)> {
        let mut gk = Command::new(&server_bin);
        gk.args(["gatekeeper", "--dev", "--listen", chat, "--http-listen", http])
            .arg("--data-dir")
            .arg(&gk_dir);
        let gk = procs.spawn("gatekeeper", gk)?;
        let (mut addr, mut key, mut http) = (None, None, None);
        while addr.is_none() || key.is_none() || http.is_none() {
            let line = gk.next_line(STEP_TIMEOUT)?;
            if let Some(a) = line.strip_prefix("listening ") {
                addr = Some(a.trim().to_owned());
            } else if let Some(k) = line.strip_prefix("root-key ") {
                key = Some(k.trim().to_owned());
            } else if let Some(h) = line.strip_prefix("http ") {
                http = Some(h.trim().to_owned());
            }
        }
        Ok((
            gk,
            addr.context("no listening line")?,
            key.context("no root-key line")?,
            http.context("no http line")?,
        ))
    };
    let (mut gk, addr, key, http_addr) =
        start_gatekeeper(&mut procs, "127.0.0.1:0", "127.0.0.1:0")?;
    let http = format!("http://{http_addr}");
    t.say(&format!("gatekeeper up: chat {addr}, http {http}"));

    // The third-party providers: "example" (Alice's) and "other" (Carol's).
    let start_provider = |procs: &mut Processes, name: &str| -> Result<(String, PathBuf)> {
        let dir = scratch.path().join(name);
        let mut prov = Command::new(&server_bin);
        prov.args(["provider", "--dev", "--listen", "127.0.0.1:0"]).arg("--data-dir").arg(&dir);
        let prov = procs.spawn(name, prov)?;
        let issuer = prov
            .wait_for_line(STEP_TIMEOUT, |l| l.starts_with("issuer "))?
            .trim_start_matches("issuer ")
            .trim()
            .to_owned();
        prov.wait_for_line(STEP_TIMEOUT, |l| l.starts_with("listening "))?;
        Ok((issuer, dir))
    };
    let admin_token = || -> Result<String> {
        Ok(std::fs::read_to_string(gk_dir.join("admin.token"))
            .context("reading the gatekeeper's admin token")?
            .trim()
            .to_owned())
    };
    let register_provider = |integrator: &str, issuer: &str, dir: &Path| -> Result<String> {
        let push_secret = std::fs::read_to_string(dir.join("push.secret"))
            .context("reading the provider's push secret")?;
        let mut add = Command::new(&server_bin);
        add.args([
            "add-provider",
            "--gatekeeper",
            &http,
            "--integrator",
            integrator,
            "--issuer",
            issuer,
        ])
        .env("INTEROP_ADMIN_TOKEN", admin_token()?)
        .env("INTEROP_PUSH_SECRET", push_secret.trim());
        run_to_end(add, STEP_TIMEOUT).context("registering a provider")
    };
    let (issuer, prov_dir) = start_provider(&mut procs, "provider")?;
    t.say(&format!("provider up: issuer {issuer}"));
    let out = register_provider("example", &issuer, &prov_dir)?;
    t.say(out.trim());

    let client = |who: &str| {
        let mut c = Command::new(&client_bin);
        c.arg("--data-dir").arg(scratch.path().join(who));
        if opts.verbose {
            c.arg("--verbose");
        }
        c
    };
    let ok = |who: &str, args: &[&str]| -> Result<String> {
        let mut c = client(who);
        c.args(args);
        run_to_end(c, STEP_TIMEOUT).with_context(|| format!("{who}: {}", args.join(" ")))
    };
    for who in ["alice", "bob", "bob2", "carol", "dave"] {
        ok(who, &["init", "--server", &addr, "--root-key", &key])?;
    }
    // Dave does not send read receipts.
    ok("dave", &["init", "--server", &addr, "--root-key", &key, "--read-receipts", "off"])?;

    // 1. Bob registers as a native user and opts in; Alice signs up with her provider and
    //    enlists.
    let register = |gk: &Lines, who: &str, identifier: &str| -> Result<String> {
        ok(who, &["register", "--identifier", identifier])?;
        let prefix = format!("verification-code {identifier} ");
        let line = gk.wait_for_line(STEP_TIMEOUT, |l| l.starts_with(&prefix))?;
        let code = line.trim_start_matches(&prefix).trim().to_owned();
        ok(who, &["register", "--identifier", identifier, "--code", &code])
    };
    let out = register(&gk, "bob", "+15550001")?;
    t.say(&format!("bob: {}", out.trim()));
    ok("bob", &["interop", "on"])?;
    t.say("bob: opted in to interop");
    let mut login = client("alice");
    login.args(["login", "--provider", &issuer, "--username", "alice", "--create"]);
    login.env("INTEROP_PASSWORD", "correct horse battery staple");
    run_to_end(login, STEP_TIMEOUT).context("alice: login")?;
    let out = ok("alice", &["enlist"])?;
    t.say(&format!("alice: {}", out.trim()));
    if !out.contains(".example@s.interop") {
        bail!("alice's address does not carry her provider's integrator id: {out}");
    }

    // 2. Alice -> Bob, end-to-end encrypted; Bob reads it; Alice sees both receipts.
    let mut bob = client("bob");
    bob.args(["listen", "--count", "1", "--read", "--timeout", "60"]);
    let bob_listen = procs.spawn("bob", bob)?;
    bob_listen.wait_for_line(STEP_TIMEOUT, |l| l.starts_with("connected"))?;
    let out = ok("alice", &["send", "hello bob, from another provider", "--to", "+15550001"])?;
    t.say(&format!("alice: {}", out.trim()));
    let line = bob_listen.wait_for_line(STEP_TIMEOUT, |l| l.starts_with("message"))?;
    t.say(&format!("bob:   {line}"));
    if !line.ends_with("text=hello bob, from another provider") {
        bail!("bob received something else: {line}");
    }
    let out = ok("alice", &["listen", "--count", "0", "--receipts", "2", "--timeout", "30"])?;
    for l in out.lines().filter(|l| l.starts_with("receipt")) {
        t.say(&format!("alice: {l}"));
    }
    if !(out.contains("receipt delivery") && out.contains("receipt read")) {
        bail!("alice did not get both the delivery and the read receipt:\n{out}");
    }

    // Bob replies; Alice (IK resumption: she cached the gatekeeper's key) receives it.
    let out = ok("bob", &["send", "hi alice, native here", "--to", "alice"])?;
    t.say(&format!("bob:   {}", out.trim()));
    let out = ok("alice", &["listen", "--count", "1", "--timeout", "30"])?;
    for l in out.lines() {
        t.say(&format!("alice: {l}"));
    }
    if !out.contains("connected (IK resumption)") {
        bail!("alice's connection did not resume with IK:\n{out}");
    }
    if !out.contains("text=hi alice, native here") {
        bail!("alice did not receive bob's reply:\n{out}");
    }

    // 3. Media: Alice sends an image and a voice message (hosted by her provider; Bob fetches
    //    them through the gatekeeper's media proxy); Bob sends a file (hosted by the
    //    gatekeeper). What arrives hashes to what was sent.
    let files = scratch.path().join("files");
    std::fs::create_dir_all(&files)?;
    let mut sent = Vec::new();
    for (name, len) in
        [("photo.jpg", 300_000usize), ("voice.ogg", 120_000), ("report.pdf", 2_000_000)]
    {
        let bytes = pseudo_random_bytes(len, name);
        std::fs::write(files.join(name), &bytes)?;
        sent.push((name, hex(&sha256(&bytes))));
    }
    let photo = files.join("photo.jpg");
    let voice = files.join("voice.ogg");
    let report = files.join("report.pdf");
    ok("alice", &["send-file", path_str(&photo)?, "--to", "+15550001", "--caption", "the view"])?;
    ok("alice", &["send-file", path_str(&voice)?, "--to", "+15550001"])?;
    t.say("alice: sent a photo and a voice message (uploaded to her provider)");
    let bob_dl = scratch.path().join("bob-downloads");
    let out = ok(
        "bob",
        &["listen", "--count", "2", "--timeout", "60", "--download-dir", path_str(&bob_dl)?],
    )?;
    check_downloads(&mut t, "bob", &out, &sent[..2])?;
    ok("bob", &["send-file", path_str(&report)?, "--to", "alice"])?;
    t.say("bob: sent a file (uploaded to the gatekeeper's media host)");
    let alice_dl = scratch.path().join("alice-downloads");
    let out = ok(
        "alice",
        &["listen", "--count", "1", "--timeout", "60", "--download-dir", path_str(&alice_dl)?],
    )?;
    check_downloads(&mut t, "alice", &out, &sent[2..])?;

    // Bob links a second device; both of his devices receive Alice's next message.
    let out = register(&gk, "bob2", "+15550001")?;
    t.say(&format!("bob's second device: {}", out.trim()));
    ok("alice", &["send", "to both of your devices", "--to", "+15550001"])?;
    for who in ["bob", "bob2"] {
        let out = ok(who, &["listen", "--count", "1", "--timeout", "30"])?;
        if !out.contains("text=to both of your devices") {
            bail!("{who} did not receive alice's message:\n{out}");
        }
        t.say(&format!("{who}: received alice's message"));
    }

    // 4. Alice offline: Bob sends three; the provider gets the signed wake-up; Alice
    //    reconnects and receives them in order, exactly once.
    for text in ["one", "two", "three"] {
        ok("bob", &["send", text, "--to", "alice"])?;
    }
    t.say("bob: sent one, two, three while alice is offline");
    let out = ok("alice", &["wait-wake"])?;
    t.say(&format!("alice: {} (push through her provider)", out.trim()));
    let out = ok("alice", &["listen", "--count", "3", "--timeout", "30"])?;
    let texts: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("message"))
        .filter_map(|l| l.split("text=").nth(1))
        .collect();
    t.say(&format!("alice: received {texts:?}"));
    if texts != ["one", "two", "three"] {
        bail!("alice received {texts:?}, not one, two, three in order");
    }
    let out = ok("alice", &["history", "+15550001"]);
    if let Ok(h) = out {
        let n = h.lines().count();
        t.say(&format!("alice: {n} messages in her history with bob"));
    }

    // 5. Alice's provider rotates its signing key: her next connection presents a token under
    //    the new key, which the gatekeeper fetches on the unknown key id.
    let prov_admin = std::fs::read_to_string(prov_dir.join("admin.token"))?;
    let mut rotate = Command::new(&server_bin);
    rotate
        .args(["rotate-key", "--provider", &issuer])
        .env("INTEROP_ADMIN_TOKEN", prov_admin.trim());
    t.say(run_to_end(rotate, STEP_TIMEOUT).context("rotating the provider key")?.trim());
    ok("bob", &["send", "after the rotation", "--to", "alice"])?;
    let out = ok("alice", &["listen", "--count", "1", "--timeout", "30"])?;
    if !out.contains("text=after the rotation") {
        bail!("alice could not receive after the key rotation:\n{out}");
    }
    t.say("alice: authenticated with a token under the rotated key, received bob's message");

    // The gatekeeper is killed (SIGKILL) with messages queued for Alice, and restarted on the
    // same data directory and ports: nothing acked is lost.
    for text in ["before the crash 1", "before the crash 2"] {
        ok("bob", &["send", text, "--to", "alice"])?;
    }
    procs.kill("gatekeeper");
    t.say("gatekeeper killed (SIGKILL) with two messages queued for alice");
    let (gk2, _, key2, _) = start_gatekeeper(&mut procs, &addr, &http_addr)?;
    gk = gk2;
    if key2 != key {
        bail!("the restarted gatekeeper has another root key");
    }
    t.say("gatekeeper restarted on the same data directory");
    let out = ok("alice", &["listen", "--count", "2", "--timeout", "30"])?;
    let texts: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("message"))
        .filter_map(|l| l.split("text=").nth(1))
        .collect();
    if texts != ["before the crash 1", "before the crash 2"] {
        bail!("after the restart alice received {texts:?}");
    }
    t.say("alice: both acked messages arrived after the restart, in order");

    // 6. A second provider's user, Carol, messages Alice across providers.
    let (issuer2, prov2_dir) = start_provider(&mut procs, "provider2")?;
    t.say(register_provider("other", &issuer2, &prov2_dir)?.trim());
    let mut login = client("carol");
    login.args(["login", "--provider", &issuer2, "--username", "carol", "--create"]);
    login.env("INTEROP_PASSWORD", "another good password");
    run_to_end(login, STEP_TIMEOUT).context("carol: login")?;
    let out = ok("carol", &["enlist"])?;
    t.say(&format!("carol: {}", out.trim()));
    ok("carol", &["send", "hello alice, from the other provider", "--to", "alice"])?;
    let out = ok("alice", &["listen", "--count", "1", "--timeout", "30"])?;
    if !out.contains("text=hello alice, from the other provider") {
        bail!("alice did not receive carol's message:\n{out}");
    }
    t.say("alice: received carol's message (provider \"other\" -> gatekeeper -> provider \"example\")");

    // 7. Hostile moments.
    for probe in
        ["forged-token", "leaked-token", "oversized-stanza", "proxy-path", "proxy-provider"]
    {
        let out = ok("alice", &["probe", probe])?;
        t.say(&format!("alice: {}", out.trim()));
    }
    register(&gk, "dave", "+15550002")?;
    let err = expect_failure(client("alice").args(["send", "hi", "--to", "+15550002"]))?;
    t.say(&format!("refused, dave has not opted in: {err}"));
    // Dave (native, read receipts off) gets a message from Bob and reads it: Bob sees the
    // delivery receipt and no read receipt. Dave's reply is the marker: receipts are delivered
    // in storage order, so a read receipt would have arrived before it.
    ok("bob", &["send", "are you reading this?", "--to", "+15550002"])?;
    ok("dave", &["listen", "--count", "1", "--read", "--timeout", "30"])?;
    ok("dave", &["send", "yes, but I keep read receipts off", "--to", "+15550001"])?;
    let out = ok("bob", &["listen", "--count", "1", "--timeout", "30"])?;
    if !out.contains("receipt delivery") || out.contains("receipt read") {
        bail!("bob should see dave's delivery receipt and no read receipt:\n{out}");
    }
    t.say("bob: dave's delivery receipt, no read receipt (dave keeps them off)");
    ok("bob", &["block", "alice"])?;
    let err = expect_failure(client("alice").args(["send", "let me in", "--to", "+15550001"]))?;
    t.say(&format!("refused, bob blocked alice: {err}"));
    if !err.contains("recipient-unavailable") {
        bail!("a blocked sender got something else: {err}");
    }
    ok("bob", &["block", "alice", "--undo"])?;

    // 8. Alice opts out: her data is gone, messages to her are refused.
    let out = ok("alice", &["opt-out"])?;
    t.say(&format!("alice: {}", out.trim()));
    let err = expect_failure(client("bob").args(["send", "still there?", "--to", "alice"]))?;
    t.say(&format!("refused, alice opted out: {err}"));

    if opts.keep {
        t.say(&format!(
            "--keep: gatekeeper stays up on {addr} (root key {key}, http {http}), provider on \
             {issuer}; press Ctrl-C to stop"
        ));
        procs.wait_all();
    }
    drop(procs);
    t.say("all processes stopped; e2e passed");
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 scratch path")
}

/// Deterministic test content (xorshift), different per name.
fn pseudo_random_bytes(len: usize, seed: &str) -> Vec<u8> {
    let mut x: u64 = seed
        .bytes()
        .fold(0x9E37_79B9_7F4A_7C15, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3));
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `downloaded file=<name> sha256=<hex>` lines against what was sent.
fn check_downloads(
    t: &mut Transcript,
    who: &str,
    out: &str,
    sent: &[(&str, String)],
) -> Result<()> {
    for (name, hash) in sent {
        let want = format!("downloaded file={name} sha256={hash}");
        if !out.lines().any(|l| l == want) {
            bail!("{who} did not download {name} intact; got:\n{out}");
        }
        t.say(&format!("{who}: {name} arrived intact (sha256 {}…)", &hash[..16]));
    }
    Ok(())
}

/// Runs a client command that must fail; returns its error message.
fn expect_failure(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().context("running the client")?;
    if out.status.success() {
        bail!("the command succeeded but should have been refused");
    }
    Ok(String::from_utf8_lossy(&out.stderr).trim().to_owned())
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

    /// Kills (SIGKILL) and reaps the named process.
    fn kill(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
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

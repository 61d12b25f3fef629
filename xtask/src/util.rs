//! Shared helpers: cargo invocations with `PROTOC` set, phase timing, workspace metadata.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The path of the protoc binary that libsignal's build script uses: `$PROTOC` when set,
/// otherwise the one vendored by the `protoc-bin-vendored` crate.
pub fn protoc_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PROTOC").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    protoc_bin_vendored::protoc_bin_path()
        .context("no vendored protoc for this platform; install protoc and set PROTOC")
}

/// The workspace root (the parent of `xtask/`). `cargo run` sets `CARGO_MANIFEST_DIR` for the
/// process: prefer it over the compile-time value, so that two checkouts (git worktrees) that
/// share one target directory, and so one `xtask` binary, each work on their own sources.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf)
}

/// A `cargo` command run from the workspace root with `PROTOC` set.
pub fn cargo(args: &[&str]) -> Cmd {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    if let Ok(p) = protoc_path() {
        cmd.env("PROTOC", p);
    }
    Cmd(cmd)
}

/// A command whose failure is an error naming the command.
#[derive(Debug)]
pub struct Cmd(pub Command);

impl Cmd {
    pub fn status_checked(mut self) -> Result<()> {
        let status =
            self.0.status().with_context(|| format!("could not start {}", self.describe()))?;
        if !status.success() {
            bail!("{} failed ({status})", self.describe());
        }
        Ok(())
    }

    pub fn output_checked(mut self) -> Result<String> {
        let out =
            self.0.output().with_context(|| format!("could not start {}", self.describe()))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.describe(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout).context("command printed non-UTF-8")
    }

    fn describe(&self) -> String {
        let mut s = self.0.get_program().to_string_lossy().into_owned();
        for a in self.0.get_args() {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

pub fn has_nextest() -> bool {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    Command::new(cargo)
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn metadata(no_deps: bool) -> Result<serde_json::Value> {
    let mut args = vec!["metadata", "--format-version", "1"];
    if no_deps {
        args.push("--no-deps");
    }
    let text = cargo(&args).output_checked()?;
    serde_json::from_str(&text).context("cargo metadata printed invalid JSON")
}

/// Workspace packages that define the cargo feature `feature`.
pub fn packages_with_feature(feature: &str) -> Result<Vec<String>> {
    let meta = metadata(true)?;
    let mut out = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        if let (Some(_), Some(name)) = (pkg["features"].get(feature), pkg["name"].as_str()) {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// The directory cargo builds into (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> Result<PathBuf> {
    let meta = metadata(true)?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// Runs named phases and prints how long each took, so CI time stays visible.
#[derive(Debug, Default)]
pub struct Phases {
    done: Vec<(String, Duration)>,
}

impl Phases {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        eprintln!("xtask: == {name} ==");
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        eprintln!("xtask: {name}: {:.1}s", took.as_secs_f64());
        self.done.push((name.to_owned(), took));
        result.with_context(|| format!("phase {name:?} failed"))
    }

    pub fn report(&self) {
        let total: Duration = self.done.iter().map(|(_, d)| *d).sum();
        eprintln!("xtask: phase times:");
        for (name, d) in &self.done {
            eprintln!("xtask:   {name:<20} {:>8.1}s", d.as_secs_f64());
        }
        eprintln!("xtask:   {:<20} {:>8.1}s", "total", total.as_secs_f64());
    }
}

//! Project automation. Run as `cargo xtask <command>`; `cargo xtask help` lists the commands.
//!
//! Every cargo invocation made from here sets `PROTOC` (the libsignal dependency runs prost-build
//! in its build script) from the `protoc-bin-vendored` crate unless the caller already set it, so
//! a fresh machine with only the Rust toolchain can build everything.

mod codegen;
mod e2e;
mod loadtest;
mod services;
mod util;

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::util::{Phases, cargo};

const HELP: &str = "\
cargo xtask <command> [options]

commands:
  e2e [--keep] [--verbose]   build, start a real gatekeeper and real clients, run the scenario
  test [--large] [-- ARGS]   run every test (nextest + doctests); --large adds the slow ones
  ci                         what .ci/run runs: fmt --check, codegen --check, clippy, test
  codegen [--check]          regenerate Rust from proto/ (protox, no protoc needed)
  clippy                     cargo clippy on the whole workspace, warnings are errors
  bench [-p CRATE] [-- ARGS] criterion benches (all, or one crate's)
  services up|down|status    PostgreSQL 15 + Redis on loopback (scratch dir, no systemd)
  loadtest [OPTS] [-- ARGS]  load generator vs the gatekeeper and ejabberd (loadtest --help)
  cargo ARGS...              any cargo command, with PROTOC set
  protoc-path                print the vendored protoc path (export PROTOC=$(cargo xtask protoc-path))
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let (command, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            print!("{HELP}");
            return Ok(());
        }
    };
    match command {
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        "protoc-path" => {
            println!("{}", util::protoc_path()?.display());
            Ok(())
        }
        "codegen" => {
            let check = flag(rest, "--check")?;
            codegen::run(check)
        }
        "clippy" => {
            let mut phases = Phases::new();
            clippy(&mut phases)?;
            phases.report();
            Ok(())
        }
        "test" => {
            let (own, passthrough) = split_passthrough(rest);
            let large = flag(own, "--large")?;
            let mut phases = Phases::new();
            test(&mut phases, large, passthrough)?;
            phases.report();
            Ok(())
        }
        "bench" => bench(rest),
        "e2e" => {
            let mut opts = e2e::Options::default();
            for arg in rest {
                match arg.as_str() {
                    "--keep" => opts.keep = true,
                    "--verbose" => opts.verbose = true,
                    other => bail!("e2e: unknown option {other:?} (expected --keep, --verbose)"),
                }
            }
            e2e::run(&opts)
        }
        "ci" => ci(),
        "services" => services::run(rest),
        "loadtest" => loadtest::run(rest),
        "cargo" => {
            let refs: Vec<&str> = rest.iter().map(String::as_str).collect();
            cargo(&refs).status_checked()
        }
        other => bail!("unknown command {other:?}\n\n{HELP}"),
    }
}

/// Splits `own -- passthrough`.
fn split_passthrough(args: &[String]) -> (&[String], &[String]) {
    match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[]),
    }
}

/// Accepts exactly zero or one occurrence of `name` and nothing else.
fn flag(args: &[String], name: &str) -> Result<bool> {
    let mut found = false;
    for arg in args {
        if arg == name {
            found = true;
        } else {
            bail!("unknown option {arg:?} (expected {name})");
        }
    }
    Ok(found)
}

fn clippy(phases: &mut Phases) -> Result<()> {
    phases.run("clippy", || {
        cargo(&["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])
            .status_checked()
    })
}

/// Runs every test. PostgreSQL and Redis (`services`) are brought up first unless they already
/// run, and taken down afterwards (also when a test failed) if this started them. Under CI (`CI`
/// set) the tests get `INTEROP_REQUIRE_SERVICES=1`, so a test that finds no services fails
/// instead of skipping, and services that do not start fail the run.
fn test(phases: &mut Phases, large: bool, passthrough: &[String]) -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    let services_dir = services::scratch_dir()?;
    let mut started = false;
    phases.run("services up", || match services::ensure_up(&services_dir) {
        Ok(s) => {
            started = s;
            Ok(())
        }
        Err(e) if ci => Err(e),
        Err(e) => {
            eprintln!("xtask: services did not start ({e:#}); the tests that need them skip");
            Ok(())
        }
    })?;
    let result = (|| {
        let features = if large {
            util::packages_with_feature("__large-tests")?
                .into_iter()
                .map(|p| format!("{p}/__large-tests"))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            String::new()
        };
        let mut args = vec!["--workspace", "--locked"];
        if !features.is_empty() {
            args.extend(["--features", features.as_str()]);
        }
        let extra: Vec<&str> = passthrough.iter().map(String::as_str).collect();
        let with_env = |mut cmd: util::Cmd| {
            if ci {
                cmd.0.env("INTEROP_REQUIRE_SERVICES", "1");
            }
            cmd
        };
        // Tests drive the real binaries (the CLI under tmux, the e2e pieces): build them first.
        phases.run("binaries", || {
            cargo(&["build", "--workspace", "--locked", "--bins"]).status_checked()
        })?;
        if util::has_nextest() {
            phases.run("tests (nextest)", || {
                let mut a = vec!["nextest", "run", "--no-fail-fast"];
                a.extend(&args);
                a.extend(&extra);
                with_env(cargo(&a)).status_checked()
            })?;
        } else {
            println!("xtask: cargo-nextest not found, using cargo test");
            phases.run("tests (cargo test)", || {
                let mut a = vec!["test", "--no-fail-fast"];
                a.extend(&args);
                a.extend(&extra);
                with_env(cargo(&a)).status_checked()
            })?;
        }
        phases.run("doctests", || {
            let mut a = vec!["test", "--doc"];
            a.extend(&args);
            with_env(cargo(&a)).status_checked()
        })
    })();
    if started {
        let stopped = phases.run("services down", || services::down(&services_dir));
        // A test failure is the news; a failure to stop matters only when the tests passed.
        if result.is_ok() {
            stopped?;
        } else if let Err(e) = stopped {
            eprintln!("xtask: {e:#}");
        }
    }
    result
}

fn bench(rest: &[String]) -> Result<()> {
    let (own, passthrough) = split_passthrough(rest);
    let mut args: Vec<&str> = vec!["bench", "--locked"];
    let mut i = 0;
    let mut picked = false;
    while i < own.len() {
        match own[i].as_str() {
            "-p" | "--package" => {
                let Some(p) = own.get(i + 1) else { bail!("bench: -p needs a crate name") };
                args.extend(["-p", p.as_str()]);
                picked = true;
                i += 2;
            }
            other => bail!("bench: unknown option {other:?} (expected -p CRATE)"),
        }
    }
    if !picked {
        args.push("--workspace");
    }
    args.push("--");
    args.extend(passthrough.iter().map(String::as_str));
    cargo(&args).status_checked()
}

fn ci() -> Result<()> {
    let mut phases = Phases::new();
    phases.run("fmt --check", || cargo(&["fmt", "--all", "--check"]).status_checked())?;
    phases.run("codegen --check", || codegen::run(true))?;
    clippy(&mut phases)?;
    test(&mut phases, false, &[])?;
    phases.report();
    Ok(())
}

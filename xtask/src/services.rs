//! `cargo xtask services up|down|status`: PostgreSQL 15 and Redis on loopback ports, in a
//! scratch directory under the target directory, without systemd. Used by the scale-out tests and
//! by anyone trying a multi-node gatekeeper.
//!
//! `up` writes `<scratch>/services.env` with `DATABASE_URL=` and `REDIS_URL=` lines; tests and
//! scripts read it (or `cargo xtask services env` prints it).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::target_dir;

const PG_USER: &str = "postgres";

pub fn run(args: &[String]) -> Result<()> {
    let dir = target_dir()?.join("services");
    match args.first().map(String::as_str) {
        Some("up") => up(&dir),
        Some("down") => down(&dir),
        Some("status") | Some("env") => {
            let env = dir.join("services.env");
            match fs::read_to_string(&env) {
                Ok(text) => {
                    print!("{text}");
                    Ok(())
                }
                Err(_) => bail!("services are not up (no {})", env.display()),
            }
        }
        _ => bail!("usage: cargo xtask services up|down|status"),
    }
}

/// A port the OS considers free right now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The PostgreSQL binaries directory (Debian layout), newest version first.
fn pg_bin() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql); install postgresql-15")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().context("no initdb under /usr/lib/postgresql/*/bin")
}

/// Runs a PostgreSQL tool; as root it runs as the `postgres` user (initdb refuses root).
fn pg(tool: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--"]).arg(tool).args(args);
        c
    } else {
        let mut c = Command::new(tool);
        c.args(args);
        c
    }
}

fn checked(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("could not run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn up(dir: &Path) -> Result<()> {
    if dir.join("services.env").exists() {
        bail!("services are already up ({}); run `cargo xtask services down` first", dir.display());
    }
    let redis = which("redis-server").context(
        "redis-server is not installed; on Debian: apt-get update && apt-get install -y redis-server",
    )?;
    fs::create_dir_all(dir)?;
    let pg_dir = dir.join("pg");
    let pg_data = pg_dir.join("data");
    let bin = pg_bin()?;

    // PostgreSQL: a fresh cluster owned by whoever runs the server.
    if pg_dir.exists() {
        fs::remove_dir_all(&pg_dir)?;
    }
    fs::create_dir_all(&pg_dir)?;
    if is_root() {
        checked(
            {
                let mut c = Command::new("chown");
                c.args(["-R", PG_USER]).arg(&pg_dir);
                c
            },
            "chown",
        )?;
    }
    let data = pg_data.to_str().context("non-UTF-8 path")?;
    checked(
        pg(
            &bin.join("initdb"),
            &["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
        ),
        "initdb",
    )?;
    let pg_port = free_port()?;
    let log = pg_dir.join("postgres.log");
    let opts = format!(
        "-p {pg_port} -c listen_addresses=127.0.0.1 -k {} -c fsync=on",
        pg_dir.to_str().context("non-UTF-8 path")?
    );
    checked(
        pg(
            &bin.join("pg_ctl"),
            &[
                "-D",
                data,
                "-l",
                log.to_str().context("non-UTF-8 path")?,
                "-o",
                &opts,
                "-w",
                "start",
            ],
        ),
        "pg_ctl start",
    )?;
    let port = pg_port.to_string();
    checked(
        pg(&bin.join("createdb"), &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "interop"]),
        "createdb",
    )?;

    // Redis: no persistence (it only holds transient state), loopback only.
    let redis_dir = dir.join("redis");
    fs::create_dir_all(&redis_dir)?;
    let redis_port = free_port()?;
    let mut c = Command::new(redis);
    c.args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--daemonize", "yes"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&redis_dir)
        .arg("--pidfile")
        .arg(redis_dir.join("redis.pid"))
        .arg("--logfile")
        .arg(redis_dir.join("redis.log"));
    checked(c, "redis-server")?;

    let env = format!(
        "DATABASE_URL=postgres://postgres@127.0.0.1:{pg_port}/interop\nREDIS_URL=redis://127.0.0.1:{redis_port}/\n"
    );
    fs::write(dir.join("services.env"), &env)?;
    print!("{env}");
    eprintln!("services: up; stop them with `cargo xtask services down`");
    Ok(())
}

fn down(dir: &Path) -> Result<()> {
    let mut stopped = false;
    let pg_data = dir.join("pg").join("data");
    if pg_data.join("postmaster.pid").exists() {
        let bin = pg_bin()?;
        checked(
            pg(
                &bin.join("pg_ctl"),
                &["-D", pg_data.to_str().context("non-UTF-8 path")?, "-m", "fast", "-w", "stop"],
            ),
            "pg_ctl stop",
        )?;
        stopped = true;
    }
    let pidfile = dir.join("redis").join("redis.pid");
    if let Ok(pid) = fs::read_to_string(&pidfile) {
        let pid = pid.trim();
        if !pid.is_empty() {
            // It may already be gone; that is fine. Wait until it has exited (bounded).
            let _ = Command::new("kill").arg(pid).status();
            let alive = || {
                Command::new("kill").args(["-0", pid]).output().is_ok_and(|o| o.status.success())
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while alive() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if alive() {
                bail!("redis-server (pid {pid}) did not exit within 10 s");
            }
            stopped = true;
        }
        let _ = fs::remove_file(&pidfile);
    }
    let _ = fs::remove_file(dir.join("services.env"));
    eprintln!("services: {}", if stopped { "stopped" } else { "nothing was running" });
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

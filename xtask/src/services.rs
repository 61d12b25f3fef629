//! `cargo xtask services up|down|status`: PostgreSQL 15 and Redis on loopback ports, in a
//! scratch directory under the target directory, without systemd. Used by the scale-out tests and
//! by anyone trying a multi-node gatekeeper.
//!
//! `up` writes `<scratch>/services.env` with `DATABASE_URL=` and `REDIS_URL=` lines; tests and
//! scripts read it (or `cargo xtask services env` prints it). `cargo xtask test` brings the
//! services up itself when they are not ([`ensure_up`]) and takes down what it started.
//!
//! A previous run may have left the scratch directory behind (a killed `cargo xtask test`, a
//! reboot): `up` and `down` look at the processes the pid files name, stop the ones that still
//! run and clear the rest, rather than failing on stale files.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::target_dir;

const PG_USER: &str = "postgres";

/// The scratch directory the services live in: `<target>/services`.
pub fn scratch_dir() -> Result<PathBuf> {
    Ok(target_dir()?.join("services"))
}

pub fn run(args: &[String]) -> Result<()> {
    let dir = scratch_dir()?;
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

/// Whether the services that `<dir>/services.env` describes are running and answering.
pub fn alive(dir: &Path) -> bool {
    let Ok(env) = fs::read_to_string(dir.join("services.env")) else { return false };
    let pg = pid_in(&dir.join("pg").join("data").join("postmaster.pid"));
    let redis = pid_in(&dir.join("redis").join("redis.pid"));
    let ports: Vec<u16> = env.lines().filter_map(port_of_url).collect();
    pg.is_some_and(|p| runs(p, "postgres"))
        && redis.is_some_and(|p| runs(p, "redis-server"))
        && ports.len() == 2
        && ports.iter().all(|p| answers(*p))
}

/// Brings the services up unless they already run. True when this call started them (so the
/// caller takes them down again).
pub fn ensure_up(dir: &Path) -> Result<bool> {
    if alive(dir) {
        eprintln!("services: already up ({})", dir.join("services.env").display());
        return Ok(false);
    }
    up(dir)?;
    Ok(true)
}

/// Starts PostgreSQL and Redis and writes `services.env`. Clears what an earlier run left
/// behind first; refuses only when live services are already up.
pub fn up(dir: &Path) -> Result<()> {
    if alive(dir) {
        bail!("services are already up ({}); run `cargo xtask services down` first", dir.display());
    }
    if dir.exists() {
        // Stale: stop any leftover process and clear the files before starting afresh.
        let (pg, redis) = (stop_postgres(dir)?, stop_redis(dir)?);
        if pg || redis || dir.join("services.env").exists() {
            eprintln!("services: cleared a stale earlier run in {}", dir.display());
        }
        let _ = fs::remove_file(dir.join("services.env"));
    }
    let result = start(dir);
    if result.is_err() {
        // Leave nothing half-started behind; the error says what failed.
        let _ = stop_postgres(dir);
        let _ = stop_redis(dir);
    }
    result
}

fn start(dir: &Path) -> Result<()> {
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

/// What `up` started in a scratch directory: the URLs and the server processes.
#[derive(Debug, Clone)]
pub struct Running {
    /// `postgres://postgres@127.0.0.1:<port>/interop`.
    pub database_url: String,
    /// `redis://127.0.0.1:<port>/`.
    pub redis_url: String,
    /// The postmaster (its backends are its children).
    pub postgres_pid: u32,
    /// The Redis server.
    pub redis_pid: u32,
}

/// The services running in `dir` (after [`up`]).
pub fn running(dir: &Path) -> Result<Running> {
    let env = fs::read_to_string(dir.join("services.env"))
        .with_context(|| format!("services are not up in {}", dir.display()))?;
    let value = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_owned)
            .with_context(|| format!("no {key} in services.env"))
    };
    // A daemonised Redis writes its pid file a moment after `up` returned.
    let pidfiles =
        [dir.join("pg").join("data").join("postmaster.pid"), dir.join("redis").join("redis.pid")];
    let deadline = Instant::now() + Duration::from_secs(10);
    let (postgres_pid, redis_pid) = loop {
        match (pid_in(&pidfiles[0]), pid_in(&pidfiles[1])) {
            (Some(pg), Some(redis)) => break (pg, redis),
            _ if Instant::now() > deadline => {
                bail!("no {} or {} after 10 s", pidfiles[0].display(), pidfiles[1].display())
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Ok(Running {
        database_url: value("DATABASE_URL=")?,
        redis_url: value("REDIS_URL=")?,
        postgres_pid,
        redis_pid,
    })
}

/// Creates database `name` in the PostgreSQL of `dir`: its URL.
pub fn create_database(dir: &Path, name: &str) -> Result<String> {
    let running = running(dir)?;
    let port = port_of_url(&format!("DATABASE_URL={}", running.database_url))
        .context("no port in DATABASE_URL")?
        .to_string();
    checked(
        pg(&pg_bin()?.join("createdb"), &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", name]),
        "createdb",
    )?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}/{name}"))
}

/// One value from `psql -At -c <sql>` against `database_url` (a `postgres://` URL of `up`).
pub fn psql_value(database_url: &str, sql: &str) -> Result<String> {
    let out = pg(&pg_bin()?.join("psql"), &["-At", "-d", database_url, "-c", sql])
        .output()
        .context("could not run psql")?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Stops the services (whatever of them still runs) and removes `services.env`.
pub fn down(dir: &Path) -> Result<()> {
    let pg = stop_postgres(dir)?;
    let redis = stop_redis(dir)?;
    let _ = fs::remove_file(dir.join("services.env"));
    eprintln!("services: {}", if pg || redis { "stopped" } else { "nothing was running" });
    Ok(())
}

/// Stops the PostgreSQL of `dir` if it runs; removes a stale `postmaster.pid`. True if it ran.
fn stop_postgres(dir: &Path) -> Result<bool> {
    let pg_data = dir.join("pg").join("data");
    let pidfile = pg_data.join("postmaster.pid");
    let Some(pid) = pid_in(&pidfile) else {
        let _ = fs::remove_file(&pidfile);
        return Ok(false);
    };
    if !runs(pid, "postgres") {
        // A crash or a reboot left it: nothing to stop.
        let _ = fs::remove_file(&pidfile);
        return Ok(false);
    }
    let bin = pg_bin()?;
    let stopped = checked(
        pg(
            &bin.join("pg_ctl"),
            &["-D", pg_data.to_str().context("non-UTF-8 path")?, "-m", "fast", "-w", "stop"],
        ),
        "pg_ctl stop",
    );
    if let Err(e) = stopped {
        // pg_ctl refused (a damaged data directory?): stop the postmaster directly.
        eprintln!("services: {e:#}; sending SIGQUIT to postgres (pid {pid})");
        kill(pid, "QUIT")?;
    }
    let _ = fs::remove_file(&pidfile);
    Ok(true)
}

/// Stops the Redis of `dir` if it runs; removes its pid file. True if it ran.
fn stop_redis(dir: &Path) -> Result<bool> {
    let pidfile = dir.join("redis").join("redis.pid");
    let running = pid_in(&pidfile).filter(|p| runs(*p, "redis-server"));
    if let Some(pid) = running {
        kill(pid, "TERM")?;
    }
    let _ = fs::remove_file(&pidfile);
    Ok(running.is_some())
}

/// Signals `pid` and waits (bounded) until it has exited.
fn kill(pid: u32, signal: &str) -> Result<()> {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_exists(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if process_exists(pid) {
        bail!("process {pid} did not exit within 10 s of SIG{signal}");
    }
    Ok(())
}

/// The pid on the first line of a pid file (PostgreSQL's and Redis's both start so).
fn pid_in(pidfile: &Path) -> Option<u32> {
    fs::read_to_string(pidfile).ok()?.lines().next()?.trim().parse().ok()
}

fn process_exists(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        // Linux: a zombie ('Z' after the command name in stat) has exited already.
        return fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
        });
    }
    Command::new("kill").args(["-0", &pid.to_string()]).output().is_ok_and(|o| o.status.success())
}

/// Whether `pid` is a live process named `name` (a pid from a stale file may have been reused).
fn runs(pid: u32, name: &str) -> bool {
    if !process_exists(pid) {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim().starts_with(name),
        // No /proc: trust the pid.
        Err(_) => true,
    }
}

/// The port of a `KEY=scheme://...:port/...` line of services.env.
fn port_of_url(line: &str) -> Option<u16> {
    let (_, url) = line.split_once('=')?;
    let authority = url.split("://").nth(1)?.split('/').next()?;
    authority.rsplit(':').next()?.parse().ok()
}

fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

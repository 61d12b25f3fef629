//! `cargo xtask loadtest --cluster N`: mode pairs against the gatekeeper on PostgreSQL + Redis
//! (the services of `cargo xtask services`, started here in the run's scratch directory and
//! stopped at the end), in three set-ups with the same pairs and the same total connections:
//!
//! 1. one node: every message is routed within the node (the same-node baseline);
//! 2. N nodes, both users of each pair on one node (pairs spread over the nodes): same-node
//!    routing with N processes, which separates the cost of running N nodes from the cost of
//!    crossing between them;
//! 3. N nodes, the two users of each pair on different nodes: every message is stored by one
//!    node and delivered by another (a Redis pub/sub nudge, then a queue read from PostgreSQL).
//!
//! With pinning, every server-side process (the nodes, PostgreSQL with its backends, Redis) runs
//! on core 0 and the generator on core 1, so that each set-up has the same CPU budget and a
//! difference in throughput is a difference in work per message. Besides the generator's
//! figures, each set-up records where the time went: CPU seconds per process group (from
//! `/proc`), PostgreSQL transactions (`pg_stat_database.xact_commit`) and Redis commands
//! (`INFO commandstats`, with Redis's own time per command) per delivered message, and the nodes'
//! time from a message's arrival to its ack (`interop_message_ack_seconds`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use super::{Node, Tools, read_json};
use crate::services;

/// The nodes' configuration besides the cluster keys: the anti-abuse limits lifted, as for the
/// single node (see `GATEKEEPER_CONFIG`).
const LIMITS: &str = "\
stanzas_per_minute = 1000000000
native_messages_per_minute = 1000000000
";

/// One set-up.
struct Setup {
    key: &'static str,
    label: String,
    nodes: usize,
    placement: &'static str,
}

/// The services of one run; stopped when dropped.
struct Services(std::path::PathBuf);

impl Drop for Services {
    fn drop(&mut self) {
        if let Err(e) = services::down(&self.0) {
            eprintln!("xtask: loadtest: {e:#}");
        }
    }
}

/// Runs the three set-ups with `nodes` nodes: the summary (set-ups, comparison) as JSON.
pub(super) fn run(tools: &Tools, scratch: &Path, nodes: usize, args: &[String]) -> Result<Value> {
    let dir = scratch.join("services");
    services::up(&dir).context("starting PostgreSQL and Redis (as `cargo xtask services up`)")?;
    let _services = Services(dir.clone());
    let running = services::running(&dir)?;
    if tools.pin {
        for pid in tree(running.postgres_pid).into_iter().chain([running.redis_pid]) {
            pin(pid, 0)?;
        }
    }
    // Time spent in WAL fsyncs (`pg_stat_wal.wal_sync_time`) is only counted with this on.
    services::psql_value(&running.database_url, "ALTER SYSTEM SET track_wal_io_timing = on")?;
    services::psql_value(&running.database_url, "SELECT pg_reload_conf()")?;
    let setups = [
        Setup { key: "one", label: "1 node".into(), nodes: 1, placement: "same" },
        Setup {
            key: "same",
            label: format!("{nodes} nodes, each pair on one node"),
            nodes,
            placement: "same",
        },
        Setup {
            key: "cross",
            label: format!("{nodes} nodes, each pair across two nodes"),
            nodes,
            placement: "cross",
        },
    ];
    let mut results = Vec::new();
    for setup in &setups {
        eprintln!("xtask: loadtest: == {} (PostgreSQL + Redis) ==", setup.label);
        let measured = measure(tools, scratch, &dir, &running, setup, args);
        results.push(measured.unwrap_or_else(|e| {
            eprintln!("xtask: loadtest: {} failed: {e:#}", setup.label);
            json!({ "setup": setup.key, "label": setup.label, "failed": format!("{e:#}") })
        }));
    }
    Ok(json!({ "nodes": nodes, "setups": results, "comparison": compare(&results) }))
}

/// One set-up: a database of its own, the nodes started (sharing one data directory, as nodes
/// behind one load balancer share the server identity), the users registered through the first
/// node, the nodes restarted, then the measured run.
fn measure(
    tools: &Tools,
    scratch: &Path,
    services_dir: &Path,
    running: &services::Running,
    setup: &Setup,
    args: &[String],
) -> Result<Value> {
    let dir = scratch.join(format!("cluster-{}", setup.key));
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("data");
    let state = dir.join("state.json");
    let database = format!("loadtest_{}", setup.key);
    let database_url = services::create_database(services_dir, &database)?;
    let config = |i: usize| {
        format!(
            "{LIMITS}database_url = \"{database_url}\"\nredis_url = \"{}\"\nnode_id = \"lt-{}-{i}\"\n",
            running.redis_url, setup.key
        )
    };
    let start = |phase: &str| -> Result<Vec<Node>> {
        // One after the other: the first creates the server identity and runs the migrations.
        (0..setup.nodes)
            .map(|i| tools.start_node(&data, &dir.join(format!("{phase}-{i}.log")), &config(i)))
            .collect()
    };
    let users = tools.users_needed("pairs", args)?;
    {
        let nodes = start("prepare")?;
        let mut c = tools.loadgen();
        c.args(["prepare", "--server", &nodes[0].addr, "--root-key", &nodes[0].root, "--users"])
            .arg(users.to_string())
            .arg("--codes-file")
            .arg(dir.join("prepare-0.log"))
            .arg("--state")
            .arg(&state);
        let status = c.status().context("running loadgen prepare")?;
        stop(nodes)?;
        if !status.success() {
            bail!("loadgen prepare failed ({status})");
        }
    }
    let nodes = start("run")?;
    let report = dir.join("report.json");
    let marks = dir.join("marks");
    let _ = std::fs::remove_file(&marks);
    let mut c = tools.loadgen();
    c.args(["run", "--system", "gatekeeper", "--mode", "pairs", "--conn-rate", "0"])
        .args(["--placement", setup.placement])
        .args(["--component", &format!("postgres={}", running.postgres_pid)])
        .args(["--component", &format!("redis={}", running.redis_pid)])
        .arg("--marks")
        .arg(&marks)
        .arg("--state")
        .arg(&state)
        .arg("--json-file")
        .arg(&report)
        .args(args);
    for n in &nodes {
        c.args(["--server", &n.addr]).args(["--server-pid", &n.server.child.id().to_string()]);
    }
    // The counters are read when the generator marks the start and the end of its measured
    // interval, so that they cover the same messages as its figures.
    let mut generator = c.spawn().context("running loadgen run")?;
    let (mut first, mut last) = (None, None);
    let status = loop {
        let marked = std::fs::read_to_string(&marks).unwrap_or_default();
        if first.is_none() && marked.lines().any(|l| l == "start") {
            first = Some(snapshot(running, &database_url, &database, &nodes)?);
        }
        if first.is_some() && last.is_none() && marked.lines().any(|l| l == "end") {
            last = Some(snapshot(running, &database_url, &database, &nodes)?);
        }
        if let Some(status) = generator.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stop(nodes)?;
    if !status.success() {
        bail!("loadgen run failed ({status})");
    }
    let (Some(first), Some(last)) = (first, last) else {
        bail!("loadgen did not mark its measured interval");
    };
    let mut result = read_json(&report)?;
    let delivered = result["delivered"].as_f64().unwrap_or(0.0).max(1.0);
    let per = |n: f64| n / delivered;
    let mut redis = Map::new();
    let mut round_trips = 0.0;
    for (command, (calls, usec)) in &last.redis {
        let (calls_before, usec_before) = first.redis.get(command).copied().unwrap_or((0, 0));
        let calls = calls.saturating_sub(calls_before);
        if calls == 0 || command == "info" {
            continue;
        }
        // Commands a script runs inside Redis (the rate-limit bucket) are not round trips.
        if ["evalsha", "eval", "get", "mget", "set", "publish", "incr", "del"]
            .contains(&command.as_str())
        {
            round_trips += calls as f64;
        }
        redis.insert(
            command.clone(),
            json!({
                "calls": calls,
                "per_message": per(calls as f64),
                "redis_usec": usec.saturating_sub(usec_before),
            }),
        );
    }
    let delta = |name: &str| last.metric(name) - first.metric(name);
    let (ack_sum, ack_count) =
        (delta("interop_message_ack_seconds_sum"), delta("interop_message_ack_seconds_count"));
    // Each snapshot's own query took one transaction id.
    let write_tx = last.xid.saturating_sub(first.xid).saturating_sub(1);
    let wal_syncs = last.wal_syncs.saturating_sub(first.wal_syncs);
    let commits = last.commits.saturating_sub(first.commits);
    result["setup"] = json!({
        "key": setup.key,
        "label": setup.label,
        "nodes": setup.nodes,
        "placement": setup.placement,
    });
    result["where_the_time_goes"] = json!({
        "note": "counters over the generator's measured interval, per message delivered in it; \
                 PostgreSQL's statistics views (all transactions, WAL fsyncs) are flushed by \
                 each backend about once a second, so those two are approximate",
        "stored_per_message": per(delta("interop_messages_total{outcome=\"stored\"}")),
        "postgres_write_transactions_per_message": per(write_tx as f64),
        "postgres_transactions_per_message": per(commits as f64),
        "wal_bytes_per_message": per(last.wal_bytes - first.wal_bytes),
        "wal_fsyncs_per_message": per(wal_syncs as f64),
        "wal_fsync_mean_ms": if wal_syncs > 0 {
            (last.wal_sync_ms - first.wal_sync_ms).max(0.0) / wal_syncs as f64
        } else {
            0.0
        },
        "postgres_sessions_ended": last.sessions.saturating_sub(first.sessions),
        "redis_commands": redis,
        "redis_round_trips_per_message": per(round_trips),
        "ack_mean_ms": if ack_count > 0.0 { 1000.0 * ack_sum / ack_count } else { 0.0 },
        "handoffs_nudged_per_message":
            per(delta("interop_cluster_handoffs_total{outcome=\"nudged\"}")),
        "nudges_received_per_message": per(delta("interop_cluster_nudges_received_total")),
    });
    Ok(result)
}

/// Counters read at one moment: Redis's per command, PostgreSQL's, the nodes' metrics.
struct Snapshot {
    /// Command -> (calls, microseconds in Redis).
    redis: std::collections::BTreeMap<String, (u64, u64)>,
    /// The current transaction id (exact: every write transaction takes one).
    xid: u64,
    /// WAL position, bytes (exact).
    wal_bytes: f64,
    /// `pg_stat_database.xact_commit` of the set-up's database (read-only ones included).
    commits: u64,
    /// `pg_stat_wal`: WAL fsyncs and the milliseconds spent in them.
    wal_syncs: u64,
    wal_sync_ms: f64,
    /// `pg_stat_database.sessions`: connections made to the set-up's database (counted when
    /// they end).
    sessions: u64,
    /// Each node's `/metrics`.
    metrics: Vec<String>,
}

impl Snapshot {
    /// A metric summed over the nodes.
    fn metric(&self, name: &str) -> f64 {
        self.metrics.iter().map(|t| metric(t, name)).sum()
    }
}

fn snapshot(
    running: &services::Running,
    database_url: &str,
    database: &str,
    nodes: &[Node],
) -> Result<Snapshot> {
    let redis = redis_commandstats(&running.redis_url)?;
    let metrics = nodes.iter().map(|n| scrape(&n.http)).collect::<Result<_>>()?;
    let row = services::psql_value(
        database_url,
        &format!(
            "SELECT pg_current_xact_id()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0'), \
             (SELECT xact_commit FROM pg_stat_database WHERE datname = '{database}'), \
             wal_sync, wal_sync_time, \
             (SELECT sessions FROM pg_stat_database WHERE datname = '{database}') \
             FROM pg_stat_wal"
        ),
    )?;
    let fields: Vec<&str> = row.split('|').collect();
    let [xid, wal_bytes, commits, wal_syncs, wal_sync_ms, sessions] = fields[..] else {
        bail!("unexpected PostgreSQL statistics: {row:?}");
    };
    Ok(Snapshot {
        redis,
        xid: xid.parse()?,
        wal_bytes: wal_bytes.parse()?,
        commits: commits.parse()?,
        wal_syncs: wal_syncs.parse()?,
        wal_sync_ms: wal_sync_ms.parse()?,
        sessions: sessions.parse()?,
        metrics,
    })
}

fn stop(nodes: Vec<Node>) -> Result<()> {
    for n in nodes {
        n.server.stop()?;
    }
    Ok(())
}

/// Server-side CPU (nodes + PostgreSQL + Redis) per delivered message, microseconds.
fn server_cpu_us(v: &Value) -> Option<f64> {
    let f = |path: &[&str]| path.iter().try_fold(v, |v, k| v.get(k))?.as_f64();
    let cpu = f(&["server", "cpu_s"])?
        + f(&["components", "postgres", "cpu_s"])?
        + f(&["components", "redis", "cpu_s"])?;
    Some(1e6 * cpu / f(&["delivered"])?.max(1.0))
}

/// The figures that compare the set-ups, each against the one-node baseline.
fn compare(results: &[Value]) -> Value {
    let find = |key: &str| results.iter().find(|r| r["setup"]["key"] == key);
    let f = |v: &Value, path: &[&str]| path.iter().try_fold(v, |v, k| v.get(k))?.as_f64();
    let cpu_us = server_cpu_us;
    let Some(base) = find("one") else { return Value::Null };
    let mut out = Map::new();
    for key in ["same", "cross"] {
        let Some(r) = find(key) else { continue };
        let ratio = |path: &[&str]| match (f(r, path), f(base, path)) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let minus = |path: &[&str]| Some(f(r, path)? - f(base, path)?);
        out.insert(
            key.to_owned(),
            json!({
                "throughput_ratio": ratio(&["delivered_per_s"]),
                "p50_ratio": ratio(&["latency", "p50_ms"]),
                "p99_ratio": ratio(&["latency", "p99_ms"]),
                "p50_added_ms": minus(&["latency", "p50_ms"]),
                "p99_added_ms": minus(&["latency", "p99_ms"]),
                "server_cpu_us_per_message": cpu_us(r),
                "baseline_server_cpu_us_per_message": cpu_us(base),
                "server_cpu_per_message_ratio": match (cpu_us(r), cpu_us(base)) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
            }),
        );
    }
    Value::Object(out)
}

/// The table printed after a cluster run.
pub(super) fn table(summary: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let f =
        |v: &Value, path: &[&str]| path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_f64);
    let show = |x: Option<f64>| {
        x.map_or("-".to_owned(), |x| if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") })
    };
    let _ = writeln!(
        out,
        "\n{:<36} {:>7} {:>7} {:>7} | {:>5} {:>5} {:>5} {:>5} | {:>6} {:>6} {:>6} {:>6} {:>6} | {:>6}",
        "set-up (PostgreSQL + Redis)",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "nodes",
        "pg",
        "redis",
        "gen",
        "pg wr",
        "pg tx",
        "fsync",
        "redis",
        "cpu us",
        "ack ms"
    );
    let _ = writeln!(out, "{:<60} | {:<23} | {:<34} |", "", "CPU cores", "per delivered message");
    for r in summary["setups"].as_array().into_iter().flatten() {
        let label = r["setup"]["label"].as_str().or(r["label"].as_str()).unwrap_or("?");
        if let Some(why) = r["failed"].as_str() {
            let _ = writeln!(out, "{label:<36} failed: {why}");
            continue;
        }
        let w = &r["where_the_time_goes"];
        let _ = writeln!(
            out,
            "{label:<36} {:>7} {:>7} {:>7} | {:>5} {:>5} {:>5} {:>5} | {:>6} {:>6} {:>6} {:>6} {:>6} | {:>6}",
            show(f(r, &["delivered_per_s"])),
            show(f(r, &["latency", "p50_ms"])),
            show(f(r, &["latency", "p99_ms"])),
            show(f(r, &["server", "cpu_cores"])),
            show(f(r, &["components", "postgres", "cpu_cores"])),
            show(f(r, &["components", "redis", "cpu_cores"])),
            show(f(r, &["generator", "cpu_cores"])),
            show(f(w, &["postgres_write_transactions_per_message"])),
            show(f(w, &["postgres_transactions_per_message"])),
            show(f(w, &["wal_fsyncs_per_message"])),
            show(f(w, &["redis_round_trips_per_message"])),
            show(server_cpu_us(r)),
            show(f(w, &["ack_mean_ms"])),
        );
        let errors =
            r["errors"].as_object().map_or(0.0, |m| m.values().filter_map(Value::as_f64).sum());
        if errors > 0.0 {
            let _ = writeln!(out, "{:<36} errors: {}", "", r["errors"]);
        }
    }
    for (key, what) in [("same", "pairs on one node"), ("cross", "pairs across nodes")] {
        let c = &summary["comparison"][key];
        if c.is_null() {
            continue;
        }
        let _ = writeln!(
            out,
            "{what} vs 1 node: throughput x{}, p50 x{} ({:+.2} ms), p99 x{} ({:+.2} ms), \
             server CPU per message x{}",
            show(c["throughput_ratio"].as_f64()),
            show(c["p50_ratio"].as_f64()),
            c["p50_added_ms"].as_f64().unwrap_or(f64::NAN),
            show(c["p99_ratio"].as_f64()),
            c["p99_added_ms"].as_f64().unwrap_or(f64::NAN),
            show(c["server_cpu_per_message_ratio"].as_f64()),
        );
    }
    let _ = writeln!(
        out,
        "pg wr: PostgreSQL write transactions; pg tx: all transactions; fsync: WAL fsyncs; \
         redis: Redis round trips; cpu us: server-side CPU (nodes + PostgreSQL + Redis); \
         ack ms: a message's arrival to its ack, mean"
    );
    out
}

/// `name value` from a Prometheus text exposition (`name` with its labels, as written); 0 when
/// absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// `GET /metrics` from a node's HTTP listener (loopback, plain HTTP/1.0).
pub(super) fn scrape(http: &str) -> Result<String> {
    let mut s = TcpStream::connect(http).with_context(|| format!("connecting to {http}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP body")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("/metrics answered {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// Redis's `INFO commandstats`: command -> (calls, microseconds spent in it).
fn redis_commandstats(url: &str) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
    let authority = url
        .strip_prefix("redis://")
        .and_then(|r| r.split('/').next())
        .context("a redis:// URL without credentials")?;
    let mut s = TcpStream::connect(authority).with_context(|| format!("connecting to {url}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")?;
    // A bulk string: `$<length>\r\n<bytes>\r\n`.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let len: usize = head
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected Redis answer {head:?}"))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let mut stats = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&body).lines() {
        let Some((name, fields)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        stats.insert(name.to_owned(), (field("calls="), field("usec=")));
    }
    Ok(stats)
}

/// `pid` and its descendants (PostgreSQL's postmaster and its backends).
fn tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((child, ppid));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(parent_of.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Pins every thread of `pid` to `core` (its future children inherit it).
fn pin(pid: u32, core: u32) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .output()
        .context("running taskset")?;
    if !out.status.success() {
        bail!("taskset -p {pid} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_name_and_labels() {
        let text = "# TYPE interop_message_ack_seconds summary\n\
                    interop_message_ack_seconds{quantile=\"0.99\"} 0.004\n\
                    interop_message_ack_seconds_sum 1.5\n\
                    interop_message_ack_seconds_count 300\n\
                    interop_cluster_handoffs_total{outcome=\"nudged\"} 42\n";
        assert_eq!(metric(text, "interop_message_ack_seconds_sum"), 1.5);
        assert_eq!(metric(text, "interop_message_ack_seconds_count"), 300.0);
        assert_eq!(metric(text, "interop_message_ack_seconds{quantile=\"0.99\"}"), 0.004);
        assert_eq!(metric(text, "interop_cluster_handoffs_total{outcome=\"nudged\"}"), 42.0);
        assert_eq!(metric(text, "interop_missing_total"), 0.0);
    }

    #[test]
    fn the_comparison_is_against_one_node() {
        let setup = |key: &str, per_s: f64, p50: f64, cpu: f64| {
            json!({
                "setup": {"key": key},
                "delivered_per_s": per_s,
                "delivered": per_s * 10.0,
                "latency": {"p50_ms": p50, "p99_ms": 2.0 * p50},
                "server": {"cpu_s": cpu},
                "components": {"postgres": {"cpu_s": cpu}, "redis": {"cpu_s": 0.0}},
            })
        };
        let c = compare(&[setup("one", 1000.0, 2.0, 5.0), setup("cross", 500.0, 3.0, 5.0)]);
        assert_eq!(c["cross"]["throughput_ratio"], 0.5);
        assert_eq!(c["cross"]["p50_added_ms"], 1.0);
        assert_eq!(c["cross"]["p99_ratio"], 1.5);
        // 10 CPU seconds for 10 000 messages, then for 5 000.
        assert_eq!(c["cross"]["baseline_server_cpu_us_per_message"], 1000.0);
        assert_eq!(c["cross"]["server_cpu_per_message_ratio"], 2.0);
        assert!(c["same"].is_null());
        assert!(table(&json!({"setups": [], "comparison": c})).contains("pairs across nodes"));
    }
}

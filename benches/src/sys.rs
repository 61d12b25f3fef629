//! What the machine tells about a process (`/proc`), and the open-file limit.

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux reports `utime`/`stime` in
/// USER_HZ, which is 100 on every architecture the kernel's ABI promises it for (x86, arm).
const CLOCK_TICKS: f64 = 100.0;

/// One reading of a process's CPU time and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU time, seconds (all threads).
    pub cpu_s: f64,
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size, KiB (`VmHWM`).
    pub hwm_kib: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status` (`pid` = `None`: this process).
pub fn sample(pid: Option<u32>) -> Result<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat"))
        .with_context(|| format!("reading {dir}/stat (is the process running?)"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))
        .with_context(|| format!("reading {dir}/status"))?;
    Ok(ProcSample {
        cpu_s: parse_cpu(&stat).context("parsing /proc/<pid>/stat")?,
        rss_kib: parse_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: parse_kib(&status, "VmHWM:").unwrap_or(0),
    })
}

/// A process and all its descendants (a database server's backends, say), each by pid, so that
/// two readings can be compared process by process (see [`tree_usage`]).
pub fn sample_tree(pid: u32) -> Result<std::collections::BTreeMap<u32, ProcSample>> {
    let mut out = std::collections::BTreeMap::new();
    out.insert(pid, sample(Some(pid))?);
    let mut children: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some(parent) = parse_ppid(&stat) {
            children.push((child, parent));
        }
    }
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for &(child, _) in children.iter().filter(|(_, p)| *p == parent) {
            // A process that ended since the directory was read is left out.
            if let Ok(s) = sample(Some(child)) {
                out.insert(child, s);
            }
            parents.push(child);
        }
    }
    Ok(out)
}

/// CPU seconds a process tree used between two [`sample_tree`] readings, and its memory at
/// the second: each process present at the second reading counts the CPU it used since the
/// first (all of it if it started since). A process that ended in between (a short-lived
/// worker) takes its time with it, so this is a lower bound.
pub fn tree_usage(
    before: &std::collections::BTreeMap<u32, ProcSample>,
    after: &std::collections::BTreeMap<u32, ProcSample>,
) -> ProcSample {
    let mut total = ProcSample::default();
    for (pid, a) in after {
        let since = before.get(pid).map_or(0.0, |b| b.cpu_s);
        total.cpu_s += (a.cpu_s - since).max(0.0);
        total.rss_kib += a.rss_kib;
        total.hwm_kib += a.hwm_kib;
    }
    total
}

/// The parent pid (field 4), counted after the command name's last `)`.
fn parse_ppid(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime (fields 14 and 15) in seconds. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS)
}

fn parse_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows`), machine-wide.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(i)?.parse().ok();
    }
    None
}

/// The soft open-file limit of process `pid` (`Max open files` in `/proc/<pid>/limits`).
pub fn nofile_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_nofile(&text)
}

fn parse_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Raises the soft open-file limit as far as the hard limit allows: the limit in force.
pub fn raise_nofile(wanted: u64) -> u64 {
    match rlimit::increase_nofile_limit(wanted) {
        Ok(n) => n,
        Err(_) => rlimit::Resource::NOFILE.get().map(|(soft, _)| soft).unwrap_or(1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_read_after_the_command_name() {
        let stat = "1234 (we ird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
        assert_eq!(parse_cpu("garbage"), None);
    }

    #[test]
    fn status_sizes() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(parse_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(parse_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn open_file_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_nofile(limits), Some(1024));
        assert_eq!(parse_nofile("nothing"), None);
        assert!(nofile_of(std::process::id()).is_some());
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(None).unwrap();
        assert!(s.rss_kib > 0);
    }

    #[test]
    fn a_process_tree_sums_its_children() {
        assert_eq!(parse_ppid("1234 (a (b) c) S 77 2 3"), Some(77));
        assert_eq!(parse_ppid("garbage"), None);
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let tree = sample_tree(std::process::id()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(tree.contains_key(&std::process::id()));
        assert!(tree.contains_key(&child.id()), "the child is in the tree: {tree:?}");
        // Per process: one that ended drops out, one that started counts from zero.
        let at = |cpu_s| ProcSample { cpu_s, rss_kib: 10, hwm_kib: 10 };
        let before = [(1, at(5.0)), (2, at(1.0))].into_iter().collect();
        let after = [(1, at(7.0)), (3, at(0.5))].into_iter().collect();
        let used = tree_usage(&before, &after);
        assert_eq!((used.cpu_s, used.rss_kib), (2.5, 20));
    }
}

//! Results of one run: latency histograms, the JSON document and the human table.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, from 1 µs to 10 minutes, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid"))
    }

    /// Records one latency (saturating at the upper bound).
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Percentiles for the report; `None` without samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            samples: self.0.len(),
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p90_ms: ms(self.0.value_at_quantile(0.90)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            max_ms: ms(self.0.max()),
            mean_ms: self.0.mean() / 1000.0,
        })
    }
}

/// Seconds from a pair's start to its first message received, over the pairs that ran.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FirstDelivery {
    /// Pairs that ran.
    pub pairs: usize,
    /// Pairs that received nothing before the end.
    pub none: usize,
    /// Median over the pairs that received something.
    pub p50_s: f64,
    /// Slowest of them.
    pub max_s: f64,
}

impl FirstDelivery {
    /// From each pair's time to its first message (`None`: it received nothing).
    pub fn of(firsts: &[Option<f64>]) -> Option<Self> {
        if firsts.is_empty() {
            return None;
        }
        let mut got: Vec<f64> = firsts.iter().flatten().copied().collect();
        got.sort_by(f64::total_cmp);
        Some(Self {
            pairs: firsts.len(),
            none: firsts.len() - got.len(),
            p50_s: got.get(got.len() / 2).copied().unwrap_or(0.0),
            max_s: got.last().copied().unwrap_or(0.0),
        })
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// How many samples.
    pub samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// CPU and memory of one process over the measured interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcUsage {
    /// CPU seconds (user + system) used during the interval.
    pub cpu_s: f64,
    /// `cpu_s` / wall seconds: 1.0 is one core busy.
    pub cpu_cores: f64,
    /// Resident set size at the end, KiB.
    pub rss_kib: u64,
    /// Peak resident set size, KiB.
    pub peak_rss_kib: u64,
}

/// Handshake / login rates (mode `storm`, and the connection phase of the other modes).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Handshakes {
    /// Kind: `ik` (resumed Noise), `xx` (first contact Noise) or `login` (XMPP: stream,
    /// SASL PLAIN, bind).
    pub kind: String,
    /// Completed authenticated handshakes.
    pub completed: u64,
    /// Wall seconds of the phase.
    pub seconds: f64,
    /// `completed / seconds`.
    pub per_s: f64,
    /// Time from TCP connect to an authenticated session.
    pub latency: Option<LatencySummary>,
    /// Server CPU during the phase.
    pub server: ProcUsage,
}

/// Memory per idle authenticated connection (mode `idle`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct IdleMemory {
    /// Connections open and authenticated when the second reading was taken.
    pub connections: u64,
    /// Server RSS before connecting, KiB.
    pub rss_before_kib: u64,
    /// Server RSS with every connection open and idle, KiB.
    pub rss_after_kib: u64,
    /// `(after - before) / connections`, bytes.
    pub bytes_per_connection: f64,
}

/// Queue, then drain (mode `offline`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Offline {
    /// Messages accepted for offline recipients.
    pub queued: u64,
    /// Seconds the senders took to queue them (until the last was accepted).
    pub queue_s: f64,
    /// Messages received after the recipients connected.
    pub drained: u64,
    /// Seconds from the first recipient's connect to the last message received.
    pub drain_s: f64,
    /// `drained / drain_s`.
    pub drain_per_s: f64,
}

/// Everything one `loadgen run` measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `gatekeeper` or `ejabberd` (or what `--system` said).
    pub system: String,
    /// `pairs`, `idle`, `storm` or `offline`.
    pub mode: String,
    /// The parameters, as given.
    pub params: serde_json::Value,
    /// Wall seconds measured (after the warm-up).
    pub measured_s: f64,
    /// Messages sent during the measured interval.
    pub sent: u64,
    /// Messages received by their recipient during the measured interval.
    pub delivered: u64,
    /// `delivered / measured_s`.
    pub delivered_per_s: f64,
    /// Messages received over the whole run, warm-up and wind-down included (mode pairs).
    pub delivered_total: u64,
    /// Messages sent and not yet received (nor refused) when the measured interval started and
    /// when it ended (mode pairs). At most pairs × 2 × window; by Little's law, delivered/s ×
    /// mean latency should match them: messages that never arrive hold window slots.
    pub in_flight: Option<[u64; 2]>,
    /// When each pair first received a message, from its start (mode pairs): a server that
    /// serves some connections and starves others shows here.
    pub first_delivery: Option<FirstDelivery>,
    /// Send to receipt by the recipient.
    pub latency: Option<LatencySummary>,
    /// Handshake / login phases.
    pub handshakes: Vec<Handshakes>,
    /// Mode `idle`.
    pub idle: Option<IdleMemory>,
    /// Mode `offline`.
    pub offline: Option<Offline>,
    /// The server process over the measured interval (a cluster: every node, summed).
    pub server: ProcUsage,
    /// How many server processes `server` sums (the nodes of a cluster).
    pub server_processes: usize,
    /// Named processes the server depends on (a cluster's PostgreSQL and Redis), each with its
    /// child processes, over the measured interval (mode pairs).
    pub components: std::collections::BTreeMap<String, ProcUsage>,
    /// The generator (this process) over the measured interval.
    pub generator: ProcUsage,
    /// Errors by kind (connect failures, refusals, closed connections...).
    pub errors: std::collections::BTreeMap<String, u64>,
    /// A few error messages, for diagnosis.
    pub error_samples: Vec<String>,
    /// The generator's open-file limit in force.
    pub nofile_limit: u64,
    /// The server's open-file limit (from `/proc/<pid>/limits`).
    pub server_nofile_limit: Option<u64>,
    /// Sends that waited for the generator's per-connection pacing (the gatekeeper closes a
    /// connection that sends more than 100 stanzas/s sustained).
    pub paced_sends: u64,
    /// Connections the kernel dropped because a listen queue was full (machine-wide delta).
    pub listen_overflows: Option<u64>,
    /// Anything the reader must know to interpret the figures.
    pub notes: Vec<String>,
}

impl Report {
    /// Counts one error of `kind`, keeping the first few messages.
    pub fn error(&mut self, kind: &str, message: impl std::fmt::Display) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        if self.error_samples.len() < 8 {
            self.error_samples.push(format!("{kind}: {message}"));
        }
    }

    /// Total errors.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        row("system", self.system.clone());
        row("mode", self.mode.clone());
        row("parameters", self.params.to_string());
        if self.mode == "pairs" {
            row("measured", format!("{:.1} s", self.measured_s));
            row("sent / delivered", format!("{} / {}", self.sent, self.delivered));
            row("delivered messages/s", format!("{:.0}", self.delivered_per_s));
            if let Some([from, to]) = self.in_flight {
                row("in flight at start / end", format!("{from} / {to}"));
            }
            if let Some(f) = &self.first_delivery {
                row(
                    "first message per pair",
                    format!(
                        "p50 {:.2} s, max {:.2} s, none {} of {}",
                        f.p50_s, f.max_s, f.none, f.pairs
                    ),
                );
            }
        }
        if let Some(l) = &self.latency {
            row("latency p50 / p90 / p99", format!("{}", Ms3(l.p50_ms, l.p90_ms, l.p99_ms)));
            row("latency max (samples)", format!("{:.2} ms ({})", l.max_ms, l.samples));
        }
        for h in &self.handshakes {
            row(
                &format!("{} handshakes/s", h.kind),
                format!(
                    "{:.0} ({} in {:.1} s; server CPU {:.2} cores)",
                    h.per_s, h.completed, h.seconds, h.server.cpu_cores
                ),
            );
            if let Some(l) = &h.latency {
                row(
                    &format!("{} time p50 / p99", h.kind),
                    format!("{:.2} / {:.2} ms", l.p50_ms, l.p99_ms),
                );
            }
        }
        if let Some(i) = &self.idle {
            row("idle connections", i.connections.to_string());
            row(
                "server RSS before / after",
                format!("{} / {} KiB", i.rss_before_kib, i.rss_after_kib),
            );
            row(
                "memory per idle connection",
                format!("{:.1} KiB", i.bytes_per_connection / 1024.0),
            );
        }
        if let Some(o) = &self.offline {
            row("queued (s)", format!("{} ({:.2} s)", o.queued, o.queue_s));
            row("drained (s)", format!("{} ({:.2} s)", o.drained, o.drain_s));
            row("drain messages/s", format!("{:.0}", o.drain_per_s));
        }
        row(
            "server CPU / RSS (peak)",
            format!(
                "{:.2} cores / {} KiB ({} KiB)",
                self.server.cpu_cores, self.server.rss_kib, self.server.peak_rss_kib
            ),
        );
        for (name, u) in &self.components {
            row(
                &format!("{name} CPU / RSS"),
                format!("{:.2} cores / {} KiB", u.cpu_cores, u.rss_kib),
            );
        }
        row(
            "generator CPU / RSS",
            format!("{:.2} cores / {} KiB", self.generator.cpu_cores, self.generator.rss_kib),
        );
        let errors = if self.errors.is_empty() {
            "0".to_owned()
        } else {
            self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
        };
        row("errors", errors);
        let server_limit = self.server_nofile_limit.map_or("?".to_owned(), |n| n.to_string());
        row("open-file limit", format!("{} (server {server_limit})", self.nofile_limit));
        if self.paced_sends > 0 {
            row("paced sends", self.paced_sends.to_string());
        }
        if let Some(n) = self.listen_overflows {
            row("listen queue overflows", n.to_string());
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        for s in &self.error_samples {
            let _ = writeln!(out, "  ! {s}");
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }
}

/// Three latencies in milliseconds, two decimals.
struct Ms3(f64, f64, f64);

impl std::fmt::Display for Ms3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} / {:.2} / {:.2} ms", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latency::new();
        assert_eq!(l.summary(), None);
        for us in 1..=1000 {
            l.record_us(us * 10);
        }
        let s = l.summary().unwrap();
        assert_eq!(s.samples, 1000);
        // 3 significant digits: within 0.1%.
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p90_ms - 9.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn out_of_range_latencies_saturate() {
        let mut l = Latency::new();
        l.record_us(0);
        l.record_us(u64::MAX);
        assert_eq!(l.count(), 2);
    }

    #[test]
    fn the_table_and_json_name_every_figure() {
        let mut r = Report {
            system: "gatekeeper".into(),
            mode: "pairs".into(),
            measured_s: 10.0,
            sent: 1000,
            delivered: 990,
            delivered_per_s: 99.0,
            in_flight: Some([400, 398]),
            first_delivery: FirstDelivery::of(&[Some(0.5), None, Some(0.25), Some(2.0)]),
            ..Report::default()
        };
        let mut l = Latency::new();
        l.record_us(1500);
        r.latency = l.summary();
        r.error("closed", "stream:error policy-violation");
        r.notes.push("a note".into());
        let table = r.table();
        for want in [
            "delivered messages/s",
            "99",
            "400 / 398",
            "1.50",
            "closed=1",
            "note: a note",
            "! closed",
        ] {
            assert!(table.contains(want), "{want:?} missing from\n{table}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["delivered_per_s"], 99.0);
        assert_eq!(json["latency"]["samples"], 1);
        assert_eq!(json["errors"]["closed"], 1);
        assert_eq!(r.error_count(), 1);
    }
}

//! The load patterns, for either system: connections, pairs, idle memory, connect storm,
//! offline queue and drain.
//!
//! Everything runs on one thread (a current-thread runtime with a `LocalSet`: the xtask pins
//! the generator to one core), one task per pair or worker. Every phase has a deadline.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Result, bail};
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use crate::report::{FirstDelivery, Handshakes, IdleMemory, Latency, Offline, ProcUsage, Report};
use crate::sys::{self, ProcSample};
use crate::{gk, xmpp};

/// Which pattern to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// N pairs exchange messages, W in flight per sender, for D seconds after a warm-up.
    Pairs,
    /// N authenticated idle connections: server memory per connection.
    Idle,
    /// Workers log in and out as fast as they can: handshakes (logins) per second.
    Storm,
    /// Senders queue messages for offline recipients, who then connect and drain them.
    Offline,
}

impl Mode {
    /// The mode's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pairs => "pairs",
            Mode::Idle => "idle",
            Mode::Storm => "storm",
            Mode::Offline => "offline",
        }
    }
}

/// The knobs of a run (the same for both systems).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Params {
    /// Pattern to run.
    #[arg(long, value_enum, default_value = "pairs")]
    #[serde(skip)]
    pub mode: Mode,
    /// Pairs of connections (modes pairs, offline).
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
    /// Messages in flight per sender (sent, not yet received by the peer).
    #[arg(long, default_value_t = 10)]
    pub window: usize,
    /// Messages per second each side of a pair sends at most, evenly spaced (mode pairs; both
    /// systems): an offered load below what the server sustains. 0: as fast as the window
    /// allows (the server saturated).
    #[arg(long, default_value_t = 0.0)]
    pub msg_rate: f64,
    /// Payload bytes per message (default: a Signal-encrypted short text, see `payload-size`).
    #[arg(long, default_value_t = crate::payload::SIGNAL_SHORT_TEXT)]
    pub payload: usize,
    /// Seconds measured (per phase in mode storm), after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Idle connections (mode idle).
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Concurrent workers logging in and out (mode storm).
    #[arg(long, default_value_t = 32)]
    pub storm_workers: usize,
    /// Distinct users the storm workers log in as (mode storm).
    #[arg(long, default_value_t = 256)]
    pub storm_users: usize,
    /// Messages queued per offline recipient (mode offline).
    #[arg(long, default_value_t = 100)]
    pub queue: usize,
    /// Handshakes in progress at once while connecting (the gatekeeper accepts at most 64
    /// unauthenticated connections per IP address).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Stanzas per second per gatekeeper connection the generator stays under (the
    /// gatekeeper closes a connection above 100/s sustained or 500 at once); 0: no pacing.
    #[arg(long, default_value_t = 95.0)]
    pub conn_rate: f64,
    /// Seconds to let the server settle before a memory reading (mode idle).
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Seconds any single step (a login, a drain) may take.
    #[arg(long, default_value_t = 30.0)]
    pub step_timeout: f64,
}

impl Params {
    /// How many distinct users the mode logs in as.
    pub fn users_needed(&self) -> usize {
        match self.mode {
            Mode::Pairs | Mode::Offline => 2 * self.pairs,
            Mode::Idle => self.connections,
            Mode::Storm => self.storm_users.max(self.storm_workers),
        }
    }

    /// Connections open at once.
    fn connections_needed(&self) -> usize {
        match self.mode {
            Mode::Storm => self.storm_workers,
            _ => self.users_needed(),
        }
    }

    fn step(&self) -> Duration {
        Duration::from_secs_f64(self.step_timeout.max(0.1))
    }
}

/// How the users spread over the nodes of a gatekeeper cluster (all on one node without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Both users of pair `p` on node `p mod N`: every message is routed within one node.
    #[default]
    Same,
    /// User `2p` on node `p mod N`, user `2p + 1` on node `p + 1 mod N`: with two nodes or
    /// more, every message crosses from one node to another.
    Cross,
}

impl Placement {
    /// The node (index) user `user` connects to, of `nodes`.
    pub fn node_of(self, user: usize, nodes: usize) -> usize {
        let pair = user / 2;
        match self {
            Placement::Same => pair % nodes.max(1),
            Placement::Cross => (pair + user % 2) % nodes.max(1),
        }
    }
}

/// The server under load.
#[derive(Debug)]
pub enum Target {
    /// The gatekeeper with the users `loadgen prepare` registered.
    Gatekeeper {
        /// Address and keys (`target.server`: the first node).
        target: gk::Target,
        /// Registered users.
        users: Vec<gk::User>,
        /// The chat listeners of the cluster's nodes (one: a single node).
        nodes: Vec<String>,
        /// Which user connects to which node.
        placement: Placement,
    },
    /// A plain XMPP server with bulk-loaded users.
    Xmpp(xmpp::Target),
}

/// Where a message goes.
#[derive(Debug, Clone)]
enum Peer {
    Gk(gk::User),
    Xmpp(String),
}

/// A logged-in connection of either kind.
#[derive(Debug)]
enum Conn {
    // Boxed: a Noise stream is much larger than a TCP stream and a buffer.
    Gk(Box<gk::GkConn>),
    Xmpp(xmpp::XmppConn, String),
}

/// What arrived, for either kind.
#[derive(Debug)]
enum Event {
    Delivered { sent_ns: u64 },
    Accepted,
    Refused(String),
    Pong,
    Closed(String),
    Other,
}

impl Target {
    fn users(&self) -> usize {
        match self {
            Target::Gatekeeper { users, .. } => users.len(),
            Target::Xmpp(_) => usize::MAX,
        }
    }

    fn peer(&self, i: usize) -> Peer {
        match self {
            Target::Gatekeeper { users, .. } => Peer::Gk(users[i].clone()),
            Target::Xmpp(t) => Peer::Xmpp(t.jid(i)),
        }
    }

    /// Logs in as user `i`: an authenticated session. Gatekeeper: Noise (IK when `resume`),
    /// then, with `confirm`, a ping answered (only enlisted sessions get `result`). XMPP:
    /// stream, SASL PLAIN, bind, and initial presence when `online`.
    async fn login(
        &self,
        i: usize,
        resume: bool,
        online: bool,
        confirm: bool,
        timeout: Duration,
    ) -> Result<Conn> {
        match self {
            Target::Gatekeeper { target, users, nodes, placement } => {
                let user = &users[i];
                let node = nodes.get(placement.node_of(i, nodes.len())).unwrap_or(&target.server);
                let mut c = tokio::time::timeout(timeout, target.connect_via(node, user, resume))
                    .await
                    .map_err(|_| anyhow::anyhow!("handshake timed out"))??;
                if confirm {
                    c.send_ping("p0").await?;
                    tokio::time::timeout(timeout, async {
                        loop {
                            match c.next_event().await? {
                                Some(gk::GkEvent::Iq) => return Ok(()),
                                Some(gk::GkEvent::StreamError(e)) => bail!("stream:error {e}"),
                                Some(_) => {}
                                None => bail!("closed before the ping answer"),
                            }
                        }
                    })
                    .await
                    .map_err(|_| anyhow::anyhow!("no ping answer in time"))??;
                }
                Ok(Conn::Gk(Box::new(c)))
            }
            Target::Xmpp(t) => {
                let c = t.login(i, online, timeout).await?;
                Ok(Conn::Xmpp(c, t.domain.clone()))
            }
        }
    }
}

impl Conn {
    async fn send_message(&mut self, to: &Peer, id: &str, sent_ns: u64, size: usize) -> Result<()> {
        match (self, to) {
            (Conn::Gk(c), Peer::Gk(u)) => c.send_message(u, id, sent_ns, size).await,
            (Conn::Xmpp(c, _), Peer::Xmpp(jid)) => c.send_message(jid, id, sent_ns, size).await,
            _ => bail!("peer of the wrong kind"),
        }
    }

    async fn send_ping(&mut self, id: &str) -> Result<()> {
        match self {
            Conn::Gk(c) => c.send_ping(id).await,
            Conn::Xmpp(c, domain) => c.send_ping(domain, id).await,
        }
    }

    /// Cancel-safe.
    async fn next_event(&mut self) -> Result<Event> {
        Ok(match self {
            Conn::Gk(c) => match c.next_event().await? {
                Some(gk::GkEvent::Delivered { sent_ns }) => Event::Delivered { sent_ns },
                Some(gk::GkEvent::Accepted) => Event::Accepted,
                Some(gk::GkEvent::Refused(e)) => Event::Refused(e),
                Some(gk::GkEvent::Iq) => Event::Pong,
                Some(gk::GkEvent::StreamError(e)) => Event::Closed(format!("stream:error {e}")),
                Some(gk::GkEvent::Other) => Event::Other,
                None => Event::Closed("end of stream".into()),
            },
            Conn::Xmpp(c, _) => match c.next_event().await? {
                Some(xmpp::XmppEvent::Delivered { sent_ns }) => Event::Delivered { sent_ns },
                Some(xmpp::XmppEvent::IqResult) => Event::Pong,
                Some(xmpp::XmppEvent::StreamError(e)) => Event::Closed(e),
                Some(xmpp::XmppEvent::Other) => Event::Other,
                None => Event::Closed("end of stream".into()),
            },
        })
    }

    /// Sends what is owed (gatekeeper acks); how many stanzas.
    async fn flush(&mut self) -> Result<usize> {
        match self {
            Conn::Gk(c) => c.flush().await,
            Conn::Xmpp(..) => Ok(0),
        }
    }

    async fn close(self) {
        match self {
            Conn::Gk(c) => c.close().await,
            Conn::Xmpp(c, _) => c.close().await,
        }
    }
}

/// How to log in: `resume` (gatekeeper: IK), `online` (XMPP: initial presence), `confirm`
/// (gatekeeper: wait for a ping answer).
#[derive(Debug, Clone, Copy)]
struct Login {
    resume: bool,
    online: bool,
    confirm: bool,
}

/// Nanoseconds since the run started (payloads carry them).
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn ns(self, at: Instant) -> u64 {
        at.saturating_duration_since(self.0).as_nanos() as u64
    }
}

/// A token bucket under the gatekeeper's per-connection stanza limit.
#[derive(Debug, Clone, Copy)]
struct Pace {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Pace {
    fn new(rate: f64, now: Instant) -> Self {
        // The gatekeeper's bucket: 500 at once, 100/s; stay inside it with a margin.
        let burst = if rate > 0.0 { 400.0 } else { f64::INFINITY };
        Self { tokens: burst, rate, burst, at: now }
    }

    /// `rate` per second, evenly spaced (no burst), starting at a random point of the first
    /// interval so that the pairs do not send in lockstep; unlimited when `rate` is 0.
    fn steady(rate: f64, now: Instant) -> Self {
        if rate <= 0.0 {
            return Self::new(0.0, now);
        }
        Self { tokens: rand::random::<f64>(), rate, burst: 1.0, at: now }
    }

    fn refill(&mut self, now: Instant) {
        if self.rate > 0.0 {
            let dt = now.saturating_duration_since(self.at).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.at = now;
    }

    /// Takes a token for a message if one is there.
    fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Charges stanzas that must go anyway (acks).
    fn charge(&mut self, n: usize, now: Instant) {
        if self.rate > 0.0 && n > 0 {
            self.refill(now);
            self.tokens -= n as f64;
        }
    }

    /// When the next token is there.
    fn ready_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.rate.max(1e-9))
    }
}

/// Shared state of a run's tasks (one thread).
#[derive(Debug)]
struct Shared {
    clock: Clock,
    report: RefCell<Report>,
    latency: RefCell<Latency>,
    measure_from: Cell<Instant>,
    measure_to: Cell<Instant>,
    sent: Cell<u64>,
    delivered: Cell<u64>,
    delivered_total: Cell<u64>,
    /// Sent and not yet received or refused, over all pairs.
    in_flight: Cell<u64>,
}

impl Shared {
    fn measuring(&self, at: Instant) -> bool {
        at >= self.measure_from.get() && at < self.measure_to.get()
    }

    fn error(&self, kind: &str, message: impl std::fmt::Display) {
        self.report.borrow_mut().error(kind, message);
    }
}

/// The processes a run samples in `/proc`.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// The server's processes (a cluster: every node), summed as the report's `server`. The
    /// modes other than pairs sample the first only.
    pub servers: Vec<u32>,
    /// Named processes the server depends on (a database, Redis), each sampled with its child
    /// processes (mode pairs).
    pub components: Vec<(String, u32)>,
    /// A file to which `start` and `end` lines are appended when the measured interval of mode
    /// pairs begins and ends, right after the processes were sampled: whoever runs the
    /// generator reads its own counters (a database's, Redis's) over the same interval.
    pub marks: Option<std::path::PathBuf>,
}

impl Watched {
    /// The servers, summed; `None` when one cannot be read.
    fn sample_servers(&self) -> Option<ProcSample> {
        let mut total = ProcSample::default();
        for &pid in &self.servers {
            let s = sys::sample(Some(pid)).ok()?;
            total.cpu_s += s.cpu_s;
            total.rss_kib += s.rss_kib;
            total.hwm_kib += s.hwm_kib;
        }
        (!self.servers.is_empty()).then_some(total)
    }

    fn sample_components(&self) -> Vec<Option<BTreeMap<u32, ProcSample>>> {
        self.components.iter().map(|(_, pid)| sys::sample_tree(*pid).ok()).collect()
    }

    /// Appends `line` to the marks file, if there is one.
    fn mark(&self, line: &str) -> Result<()> {
        use std::io::Write as _;
        if let Some(path) = &self.marks {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Runs one mode against `target`, sampling the `watched` processes in `/proc`.
pub async fn run(
    target: &Target,
    params: &Params,
    system: &str,
    watched: &Watched,
) -> Result<Report> {
    let server_pid = watched.servers.first().copied();
    let mut report = Report {
        system: system.to_owned(),
        mode: params.mode.name().to_owned(),
        params: serde_json::to_value(params)?,
        ..Report::default()
    };
    let mut params = params.clone();
    let needed = params.connections_needed() as u64 + 64;
    report.nofile_limit = sys::raise_nofile(needed);
    if report.nofile_limit < needed {
        let cap = report.nofile_limit.saturating_sub(64) as usize;
        let note = format!(
            "the open-file limit ({}) caps this run at {cap} connections (wanted {})",
            report.nofile_limit,
            needed - 64
        );
        eprintln!("loadgen: {note}");
        report.notes.push(note);
        match params.mode {
            Mode::Pairs | Mode::Offline => params.pairs = cap / 2,
            Mode::Idle => params.connections = cap,
            Mode::Storm => params.storm_workers = cap.max(1),
        }
    }
    if target.users() < params.users_needed() {
        bail!(
            "this mode needs {} users, the state has {}: run `loadgen prepare --users {}`",
            params.users_needed(),
            target.users(),
            params.users_needed()
        );
    }
    report.server_nofile_limit = server_pid.and_then(sys::nofile_of);
    if let Some(limit) = report.server_nofile_limit
        && limit < params.connections_needed() as u64 + 16
    {
        let note = format!(
            "the server's open-file limit ({limit}) is below the {} connections of this run: \
             it will refuse connections",
            params.connections_needed()
        );
        eprintln!("loadgen: {note}");
        report.notes.push(note);
    }
    if server_pid.is_none() {
        report.notes.push("no --server-pid: server CPU and memory not measured".into());
    }
    let now = Instant::now();
    let shared = Rc::new(Shared {
        clock: Clock(now),
        report: RefCell::new(report),
        latency: RefCell::new(Latency::new()),
        measure_from: Cell::new(now),
        measure_to: Cell::new(now),
        sent: Cell::new(0),
        delivered: Cell::new(0),
        delivered_total: Cell::new(0),
        in_flight: Cell::new(0),
    });
    let overflows_before = sys::listen_overflows();
    let local = tokio::task::LocalSet::new();
    let result = local
        .run_until(async {
            match params.mode {
                Mode::Pairs => pairs(target, &params, &shared, watched).await,
                Mode::Idle => idle(target, &params, &shared, server_pid).await,
                Mode::Storm => storm(target, &params, &shared, server_pid).await,
                Mode::Offline => offline(target, &params, &shared, server_pid).await,
            }
        })
        .await;
    drop(local);
    result?;
    let mut report = shared.report.borrow().clone();
    if let (Some(a), Some(b)) = (overflows_before, sys::listen_overflows()) {
        report.listen_overflows = Some(b.saturating_sub(a));
    }
    Ok(report)
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(what.to_owned());
    bar
}

fn sample(pid: Option<u32>) -> Option<ProcSample> {
    pid.and_then(|p| sys::sample(Some(p)).ok())
}

fn usage(a: Option<ProcSample>, b: Option<ProcSample>, seconds: f64) -> ProcUsage {
    match (a, b) {
        (Some(a), Some(b)) => ProcUsage {
            cpu_s: b.cpu_s - a.cpu_s,
            cpu_cores: (b.cpu_s - a.cpu_s) / seconds.max(1e-9),
            rss_kib: b.rss_kib,
            peak_rss_kib: b.hwm_kib,
        },
        _ => ProcUsage::default(),
    }
}

/// Resumed, online and confirmed: a client ready to chat.
const ONLINE: Login = Login { resume: true, online: true, confirm: true };

/// Logs in as each of `users` with at most `params.concurrency` handshakes at once: the
/// connections in order (`None` where the login failed), and the seconds it took.
async fn connect_all(
    target: &Target,
    users: &[usize],
    how: Login,
    params: &Params,
    shared: &Shared,
    what: &str,
) -> (Vec<Option<Conn>>, f64) {
    let bar = bar(users.len() as u64, what);
    let started = Instant::now();
    let timeout = params.step();
    let mut results: Vec<(usize, Result<Conn>)> = stream::iter(users.iter().copied().enumerate())
        .map(|(pos, i)| async move {
            (pos, target.login(i, how.resume, how.online, how.confirm, timeout).await)
        })
        .buffer_unordered(params.concurrency.max(1))
        .inspect(|_| bar.inc(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    results.sort_by_key(|(pos, _)| *pos);
    let conns = results
        .into_iter()
        .map(|(_, r)| match r {
            Ok(c) => Some(c),
            Err(e) => {
                shared.error("login", format!("{e:#}"));
                None
            }
        })
        .collect();
    (conns, seconds)
}

/// Mode pairs: connection 2i and 2i+1 send each other messages, `window` in flight each way.
async fn pairs(target: &Target, p: &Params, shared: &Rc<Shared>, watched: &Watched) -> Result<()> {
    let users: Vec<usize> = (0..2 * p.pairs).collect();
    let (conns, secs) = connect_all(target, &users, ONLINE, p, shared, "connecting").await;
    let connected = conns.iter().filter(|c| c.is_some()).count();
    shared.report.borrow_mut().notes.push(format!(
        "{connected} of {} connections logged in, in {secs:.1} s ({} at once)",
        users.len(),
        p.concurrency
    ));
    let start = Instant::now();
    let from = start + Duration::from_secs_f64(p.warmup);
    let to = from + Duration::from_secs_f64(p.duration);
    shared.measure_from.set(from);
    shared.measure_to.set(to);
    let nonce: u32 = rand::random();
    let mut conns = conns.into_iter();
    let mut tasks = Vec::new();
    let mut pairs_running = 0;
    for i in 0..p.pairs {
        let (Some(Some(a)), Some(Some(b))) = (conns.next(), conns.next()) else { continue };
        pairs_running += 1;
        let peers = [target.peer(2 * i + 1), target.peer(2 * i)];
        let task = pair_task([a, b], peers, p.clone(), Rc::clone(shared), nonce, to);
        tasks.push(tokio::task::spawn_local(task));
    }
    if pairs_running == 0 {
        bail!("no pair could log in");
    }
    let spin = spinner("warming up");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut before = None;
    let mut gen_before = None;
    let mut components_before = Vec::new();
    let mut in_flight_from = 0;
    while Instant::now() < to {
        tick.tick().await;
        let now = Instant::now();
        if before.is_none() && now >= from {
            before = watched.sample_servers();
            components_before = watched.sample_components();
            gen_before = sys::sample(None).ok();
            shared.delivered.set(0);
            in_flight_from = shared.in_flight.get();
            watched.mark("start")?;
        }
        let done = now.saturating_duration_since(from).as_secs_f64();
        spin.set_message(format!(
            "{:>5.1}/{:.0} s  delivered {}  errors {}",
            done,
            p.duration,
            shared.delivered_total.get(),
            shared.report.borrow().error_count()
        ));
        spin.tick();
    }
    let after = watched.sample_servers();
    let components_after = watched.sample_components();
    let gen_after = sys::sample(None).ok();
    let in_flight_to = shared.in_flight.get();
    watched.mark("end")?;
    spin.finish_and_clear();
    let mut firsts = Vec::new();
    for t in tasks {
        firsts.push(t.await.ok().flatten());
    }
    let mut r = shared.report.borrow_mut();
    r.first_delivery = FirstDelivery::of(&firsts);
    r.server_processes = watched.servers.len();
    for (((name, _), b), a) in
        watched.components.iter().zip(components_before).zip(components_after)
    {
        let (b, a) = match (b, a) {
            (Some(b), Some(a)) => (Some(ProcSample::default()), Some(sys::tree_usage(&b, &a))),
            _ => (None, None),
        };
        r.components.insert(name.clone(), usage(b, a, p.duration));
    }
    r.measured_s = p.duration;
    r.sent = shared.sent.get();
    r.delivered = shared.delivered.get();
    r.delivered_per_s = r.delivered as f64 / p.duration;
    r.delivered_total = shared.delivered_total.get();
    r.in_flight = Some([in_flight_from, in_flight_to]);
    r.latency = shared.latency.borrow().summary();
    r.server = usage(before, after, p.duration);
    r.generator = usage(gen_before, gen_after, p.duration);
    if pairs_running < p.pairs {
        r.notes.push(format!("{pairs_running} of {} pairs ran", p.pairs));
    }
    Ok(())
}

/// One pair until `to`: side k sends to `peers[k]`, at most `window` in flight.
async fn pair_task(
    mut conns: [Conn; 2],
    peers: [Peer; 2],
    p: Params,
    shared: Rc<Shared>,
    nonce: u32,
    to: Instant,
) -> Option<f64> {
    let now = Instant::now();
    let mut first: Option<f64> = None;
    let mut in_flight = [0usize; 2];
    let mut seq = [0u64; 2];
    let mut pace = [Pace::new(p.conn_rate, now), Pace::new(p.conn_rate, now)];
    let gk = matches!(conns[0], Conn::Gk(_));
    if !gk {
        pace = [Pace::new(0.0, now), Pace::new(0.0, now)];
    }
    let mut paced = [false; 2];
    let mut offered = [Pace::steady(p.msg_rate, now), Pace::steady(p.msg_rate, now)];
    'run: loop {
        let now = Instant::now();
        if now >= to {
            break;
        }
        let mut wake = to;
        for k in 0..2 {
            while in_flight[k] < p.window {
                if !pace[k].take(now) {
                    if !paced[k] {
                        paced[k] = true;
                        shared.report.borrow_mut().paced_sends += 1;
                    }
                    wake = wake.min(pace[k].ready_at());
                    break;
                }
                paced[k] = false;
                if !offered[k].take(now) {
                    wake = wake.min(offered[k].ready_at());
                    break;
                }
                let id = format!("{nonce:08x}{:08x}", seq[k]);
                let sent_at = Instant::now();
                if let Err(e) =
                    conns[k].send_message(&peers[k], &id, shared.clock.ns(sent_at), p.payload).await
                {
                    shared.error("send", format!("{e:#}"));
                    break 'run;
                }
                seq[k] += 1;
                in_flight[k] += 1;
                shared.in_flight.set(shared.in_flight.get() + 1);
                if shared.measuring(sent_at) {
                    shared.sent.set(shared.sent.get() + 1);
                }
            }
        }
        for k in 0..2 {
            match conns[k].flush().await {
                Ok(n) => pace[k].charge(n, Instant::now()),
                Err(e) => {
                    shared.error("send", format!("{e:#}"));
                    break 'run;
                }
            }
        }
        let [a, b] = &mut conns;
        let (k, event) = tokio::select! {
            e = a.next_event() => (0, e),
            e = b.next_event() => (1, e),
            () = tokio::time::sleep_until(wake) => continue,
        };
        match event {
            Ok(Event::Delivered { sent_ns }) => {
                // Side k received what side 1-k sent.
                if in_flight[1 - k] > 0 {
                    in_flight[1 - k] -= 1;
                    shared.in_flight.set(shared.in_flight.get() - 1);
                }
                let at = Instant::now();
                shared.delivered_total.set(shared.delivered_total.get() + 1);
                if first.is_none() {
                    first = Some(now.elapsed().as_secs_f64());
                }
                if shared.measuring(at) {
                    shared.delivered.set(shared.delivered.get() + 1);
                    let us = shared.clock.ns(at).saturating_sub(sent_ns) / 1000;
                    shared.latency.borrow_mut().record_us(us);
                }
            }
            Ok(Event::Refused(e)) => {
                if in_flight[k] > 0 {
                    in_flight[k] -= 1;
                    shared.in_flight.set(shared.in_flight.get() - 1);
                }
                shared.error("refused", e);
            }
            Ok(Event::Closed(e)) => {
                shared.error("closed", e);
                break;
            }
            Ok(Event::Accepted | Event::Pong | Event::Other) => {}
            Err(e) => {
                shared.error("receive", format!("{e:#}"));
                break;
            }
        }
    }
    let [a, b] = conns;
    a.close().await;
    b.close().await;
    first
}

/// Mode idle: server RSS before and after `connections` authenticated idle connections.
async fn idle(target: &Target, p: &Params, shared: &Rc<Shared>, pid: Option<u32>) -> Result<()> {
    let Some(pid) = pid else { bail!("mode idle needs --server-pid") };
    tokio::time::sleep(Duration::from_secs_f64(p.settle)).await;
    let before = sys::sample(Some(pid))?;
    let users: Vec<usize> = (0..p.connections).collect();
    let (conns, secs) = connect_all(target, &users, ONLINE, p, shared, "connecting").await;
    let open = conns.iter().filter(|c| c.is_some()).count() as u64;
    tokio::time::sleep(Duration::from_secs_f64(p.settle)).await;
    let after = sys::sample(Some(pid))?;
    // Every connection must still be there: a closed one would make the figure too small.
    let mut alive = 0u64;
    let mut conns: Vec<Conn> = conns.into_iter().flatten().collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let ok = async {
            c.send_ping(&format!("i{i}")).await?;
            loop {
                match c.next_event().await? {
                    Event::Pong => return Ok::<_, anyhow::Error>(()),
                    Event::Closed(e) => bail!("{e}"),
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(p.step(), ok).await {
            Ok(Ok(())) => alive += 1,
            Ok(Err(e)) => shared.error("idle-check", format!("{e:#}")),
            Err(_) => shared.error("idle-check", "no ping answer in time"),
        }
    }
    let gen_now = sys::sample(None).ok();
    for c in conns {
        c.close().await;
    }
    let mut r = shared.report.borrow_mut();
    let delta = after.rss_kib.saturating_sub(before.rss_kib);
    r.idle = Some(IdleMemory {
        connections: open,
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
        bytes_per_connection: if open > 0 { delta as f64 * 1024.0 / open as f64 } else { 0.0 },
    });
    r.measured_s = secs;
    r.server = usage(Some(before), Some(after), secs + p.settle);
    r.generator = usage(gen_now, gen_now, 1.0);
    r.notes.push(format!(
        "{open} connections logged in in {secs:.1} s; {alive} answered a ping after the reading"
    ));
    Ok(())
}

/// Mode storm: `storm_workers` workers log in and out for `warmup + duration` per phase
/// (gatekeeper: IK, then XX; XMPP: login). A login counts when the session is authenticated
/// (gatekeeper: a ping answered; XMPP: the resource bound).
async fn storm(target: &Target, p: &Params, shared: &Rc<Shared>, pid: Option<u32>) -> Result<()> {
    let phases: &[(&str, bool)] = match target {
        Target::Gatekeeper { .. } => &[("ik", true), ("xx", false)],
        Target::Xmpp(_) => &[("login", true)],
    };
    let users = p.storm_users.max(p.storm_workers);
    let workers = p.storm_workers.max(1);
    let mut total_s = 0.0;
    for &(kind, resume) in phases {
        let start = Instant::now();
        let from = start + Duration::from_secs_f64(p.warmup);
        let to = from + Duration::from_secs_f64(p.duration);
        let completed = Cell::new(0u64);
        let latency = RefCell::new(Latency::new());
        let step = p.step();
        let worker = |w: usize| {
            let (completed, latency) = (&completed, &latency);
            async move {
                // Each worker logs in as its own users in turn, so that a device is never
                // logged in twice at once.
                let mine: Vec<usize> = (w..users).step_by(workers).collect();
                let mut round = 0usize;
                while Instant::now() < to {
                    let user = mine[round % mine.len()];
                    round += 1;
                    let t0 = Instant::now();
                    match target.login(user, resume, false, true, step).await {
                        Ok(c) => {
                            let t1 = Instant::now();
                            if t1 >= from && t1 < to {
                                completed.set(completed.get() + 1);
                                let us = t1.duration_since(t0).as_micros() as u64;
                                latency.borrow_mut().record_us(us);
                            }
                            c.close().await;
                        }
                        Err(e) => {
                            shared.error("login", format!("{e:#}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
        };
        let all = futures::future::join_all((0..workers).map(worker));
        let spin = spinner(kind);
        let mut before = None;
        let mut gen_before = None;
        let watch = async {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                if before.is_none() && Instant::now() >= from {
                    before = sample(pid);
                    gen_before = sys::sample(None).ok();
                }
                spin.set_message(format!("{kind}: {} logins", completed.get()));
                spin.tick();
            }
        };
        tokio::select! {
            _ = all => {}
            () = watch => {}
        }
        spin.finish_and_clear();
        let after = sample(pid);
        let gen_after = sys::sample(None).ok();
        let seconds = p.duration;
        total_s += seconds;
        let server = usage(before, after, seconds);
        let mut r = shared.report.borrow_mut();
        r.generator = usage(gen_before, gen_after, seconds);
        r.server = server;
        r.handshakes.push(Handshakes {
            kind: kind.to_owned(),
            completed: completed.get(),
            seconds,
            per_s: completed.get() as f64 / seconds,
            latency: latency.borrow().summary(),
            server,
        });
    }
    let mut r = shared.report.borrow_mut();
    r.measured_s = total_s;
    r.notes.push(format!(
        "{workers} workers log in and out over {users} users; each login is TCP connect + \
         authentication + (gatekeeper) one ping round trip, then close"
    ));
    Ok(())
}

/// Mode offline: senders (even users) queue `queue` messages each for their offline peer (odd
/// users), then the peers connect and receive them.
async fn offline(target: &Target, p: &Params, shared: &Rc<Shared>, pid: Option<u32>) -> Result<()> {
    let senders: Vec<usize> = (0..p.pairs).map(|i| 2 * i).collect();
    let (conns, _) = connect_all(target, &senders, ONLINE, p, shared, "senders").await;
    // Queue.
    let started = Instant::now();
    let nonce: u32 = rand::random();
    let queued = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();
    for (pos, conn) in conns.into_iter().enumerate() {
        let Some(mut conn) = conn else { continue };
        let to = target.peer(2 * pos + 1);
        let (queued, shared, p) = (Rc::clone(&queued), Rc::clone(shared), p.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let result = queue_for(&mut conn, &to, &p, nonce, &shared, &queued).await;
            if let Err(e) = result {
                shared.error("queue", format!("{e:#}"));
            }
            conn
        }));
    }
    let queue_bar = bar((tasks.len() * p.queue) as u64, "queueing");
    let mut senders_open = Vec::new();
    let progress = async {
        loop {
            queue_bar.set_position(queued.get());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let joined = async {
        for t in tasks {
            if let Ok(c) = t.await {
                senders_open.push(c);
            }
        }
    };
    tokio::select! {
        () = joined => {}
        () = progress => {}
    }
    queue_bar.finish_and_clear();
    let queue_s = started.elapsed().as_secs_f64();
    // Drain.
    let receivers: Vec<usize> = (0..p.pairs).map(|i| 2 * i + 1).collect();
    let before = sample(pid);
    let gen_before = sys::sample(None).ok();
    let drain_start = Instant::now();
    let last = Rc::new(Cell::new(drain_start));
    let drained = Rc::new(Cell::new(0u64));
    let drain_bar = bar((receivers.len() * p.queue) as u64, "draining");
    let timeout = p.step();
    let results: Vec<Result<()>> = stream::iter(receivers)
        .map(|i| {
            let (last, drained, bar) = (Rc::clone(&last), Rc::clone(&drained), drain_bar.clone());
            async move {
                let mut c = target.login(i, true, true, false, timeout).await?;
                let mut got = 0;
                let result = tokio::time::timeout(timeout, async {
                    while got < p.queue {
                        c.flush().await?;
                        match c.next_event().await? {
                            Event::Delivered { .. } => {
                                got += 1;
                                drained.set(drained.get() + 1);
                                last.set(Instant::now());
                                bar.inc(1);
                            }
                            Event::Closed(e) => bail!("{e}"),
                            _ => {}
                        }
                    }
                    c.flush().await?;
                    Ok(())
                })
                .await;
                c.close().await;
                match result {
                    Ok(r) => r,
                    Err(_) => bail!("{got} of {} queued messages arrived in time", p.queue),
                }
            }
        })
        .buffer_unordered(p.concurrency.max(1))
        .collect()
        .await;
    drain_bar.finish_and_clear();
    let drain_s = last.get().saturating_duration_since(drain_start).as_secs_f64();
    let after = sample(pid);
    let gen_after = sys::sample(None).ok();
    for r in results {
        if let Err(e) = r {
            shared.error("drain", format!("{e:#}"));
        }
    }
    for c in senders_open {
        c.close().await;
    }
    let mut r = shared.report.borrow_mut();
    r.offline = Some(Offline {
        queued: queued.get(),
        queue_s,
        drained: drained.get(),
        drain_s,
        drain_per_s: drained.get() as f64 / drain_s.max(1e-9),
    });
    r.measured_s = drain_s;
    r.server = usage(before, after, drain_s);
    r.generator = usage(gen_before, gen_after, drain_s);
    r.notes.push(format!(
        "drain time runs from the first recipient's connect ({} handshakes at once) to the last message received",
        p.concurrency
    ));
    Ok(())
}

/// Sends `p.queue` messages to `to` and waits until the server took them all (gatekeeper:
/// one ack each; XMPP: a ping answered after the last, as the server handles a stream's
/// stanzas in order).
async fn queue_for(
    conn: &mut Conn,
    to: &Peer,
    p: &Params,
    nonce: u32,
    shared: &Shared,
    queued: &Cell<u64>,
) -> Result<()> {
    let mut pace =
        Pace::new(if matches!(conn, Conn::Gk(_)) { p.conn_rate } else { 0.0 }, Instant::now());
    for s in 0..p.queue {
        while !pace.take(Instant::now()) {
            tokio::time::sleep_until(pace.ready_at()).await;
        }
        let id = format!("{nonce:08x}{s:08x}");
        conn.send_message(to, &id, shared.clock.ns(Instant::now()), p.payload).await?;
    }
    let gk = matches!(conn, Conn::Gk(_));
    if !gk {
        conn.send_ping("q").await?;
    }
    let mut acked = 0;
    tokio::time::timeout(p.step(), async {
        loop {
            match conn.next_event().await? {
                Event::Accepted if gk => {
                    acked += 1;
                    queued.set(queued.get() + 1);
                    if acked == p.queue {
                        return Ok(());
                    }
                }
                Event::Refused(e) => bail!("refused: {e}"),
                Event::Pong if !gk => {
                    queued.set(queued.get() + p.queue as u64);
                    return Ok(());
                }
                Event::Closed(e) => bail!("{e}"),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the server did not take the queued messages in time"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_pace_spaces_sends_evenly_without_bursts() {
        let start = Instant::now();
        let mut pace = Pace::steady(10.0, start);
        // Polled every millisecond for 2 s: about 20 sends, never two within 100 ms.
        let mut sent = Vec::new();
        for ms in 0..2000u64 {
            let now = start + Duration::from_millis(ms);
            while pace.take(now) {
                sent.push(ms);
            }
        }
        assert!((19..=21).contains(&sent.len()), "{} sends", sent.len());
        assert!(sent.windows(2).all(|w| w[1] - w[0] >= 99), "{sent:?}");
        // Unpaced: always.
        let mut free = Pace::steady(0.0, start);
        assert!((0..1000).all(|_| free.take(start)));
    }

    #[test]
    fn placements_put_a_pair_on_one_node_or_across_two() {
        for nodes in 1..=4 {
            let mut load = vec![0; nodes];
            for pair in 0..60 {
                let (a, b) = (2 * pair, 2 * pair + 1);
                let same = (Placement::Same.node_of(a, nodes), Placement::Same.node_of(b, nodes));
                assert_eq!(same.0, same.1);
                let cross =
                    (Placement::Cross.node_of(a, nodes), Placement::Cross.node_of(b, nodes));
                assert_eq!(cross.0 != cross.1, nodes > 1, "pair {pair} on {nodes} nodes");
                load[cross.0] += 1;
                load[cross.1] += 1;
            }
            // Every node carries the same number of connections.
            assert!(load.iter().all(|&n| n == 120 / nodes), "{load:?}");
        }
    }
}

//! Cross-crate benchmarks (`benches/`) and the load generator behind `cargo xtask loadtest`.
//!
//! The load generator (`loadgen`) opens many real client connections to a running server on
//! loopback and drives one pattern at a time, measuring what the server delivers:
//!
//! ```text
//!  cargo xtask loadtest ──starts (taskset core 0)──▶ gatekeeper | ejabberd
//!        │                                              ▲  /proc/<pid>: CPU, RSS
//!        └──runs (taskset core 1)──▶ loadgen ──TCP──────┘
//!                                     │ gk:   Noise + binary stanzas (interop-client's Connection)
//!                                     │ xmpp: plain XMPP (stream, SASL PLAIN, bind, message)
//!                                     └─▶ report: table on stdout, JSON (--json / --json-file)
//! ```
//!
//! Modes ([`run::Mode`]): `pairs` (N pairs exchange messages, W in flight per sender, payload S,
//! D seconds after a warm-up), `idle` (memory per idle authenticated connection), `storm`
//! (handshakes / logins per second), `offline` (queue, then drain).
//!
//! What this crate does not do: start servers (the xtask does, so that both systems are
//! started, pinned and configured by one script), reach anything but loopback, or run
//! unbounded: every phase has a deadline.

pub mod gk;
pub mod payload;
pub mod report;
pub mod run;
pub mod sys;
pub mod xmpp;

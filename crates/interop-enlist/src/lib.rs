//! Identity proofs and enlistment for interop messaging, sans-IO.
//!
//! A third-party provider issues a short-lived JWT that proves its user owns their
//! user-visible identifier; the gatekeeper verifies it against keys it fetched from the
//! provider (OpenID discovery + JWKS), and the user then enlists inside the authenticated
//! Noise session.
//!
//! # What this crate does not do
//! - No HTTP: fetching keys is behind a trait; the endpoints live in interop-server.

#![forbid(unsafe_code)]

/// Errors of this crate, sorted by who is to blame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

//! Media encryption, descriptors and hosting/proxy rules for interop messaging, sans-IO.
//!
//! # What this crate does not do
//! - No HTTP: the media host and proxy services live in interop-server and interop-client.

#![forbid(unsafe_code)]

/// Errors of this crate, sorted by who is to blame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

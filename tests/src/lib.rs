//! Shared fixtures of the workspace end-to-end tests: a real gatekeeper on a loopback port.

#![forbid(unsafe_code)]

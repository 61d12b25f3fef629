//! The 1 GiB streaming round trip, only under `cargo xtask test --large`.
#![cfg(feature = "__large-tests")]

mod common;

#[test]
fn one_gibibyte_round_trip() {
    common::round_trip(1 << 30);
}

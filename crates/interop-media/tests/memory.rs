//! Constant memory: a 256 MiB round trip allocates no more at its peak than a 1 MiB one.
//!
//! This binary installs `cap`'s counting allocator (safe to use; the workspace forbids writing
//! one with `unsafe`) and holds a single test, so nothing else allocates concurrently.

mod common;

use std::alloc::System;

use cap::Cap;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const MIB: u64 = 1 << 20;

#[test]
fn peak_memory_does_not_depend_on_file_size() {
    let before = ALLOCATOR.max_allocated();
    let baseline = ALLOCATOR.allocated();

    common::round_trip(MIB);
    let peak_small = ALLOCATOR.max_allocated();
    // The 1 MiB run set the high-water mark (so the comparison below measures it), and its
    // buffers are small.
    assert!(peak_small > before, "the 1 MiB run must raise the peak ({before} -> {peak_small})");
    let used = peak_small - baseline;
    assert!(used < 512 * 1024, "1 MiB round trip peaked at {used} bytes above baseline");

    common::round_trip(256 * MIB);
    let peak_large = ALLOCATOR.max_allocated();
    // `max_allocated` is a high-water mark: equal means the 256 MiB run never went above the
    // 1 MiB run's peak.
    assert_eq!(peak_large, peak_small, "256 MiB round trip peaked higher than the 1 MiB one");
    println!("peak above baseline: {used} bytes for 1 MiB and for 256 MiB");
}

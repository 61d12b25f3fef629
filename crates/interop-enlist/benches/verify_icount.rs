//! Instruction counts of the `verify` bench pairs, for callgrind:
//!
//! ```sh
//! cargo bench -p interop-enlist --bench verify_icount --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null <binary> <alg> <what> <n>
//! ```
//!
//! with `<alg>` = `eddsa` | `es256`, `<what>` = `bare` | `full` | `setup`, `<n>` iterations.
//! (full − setup) / n and (bare − setup) / n are the per-verification instruction counts.
//! Without arguments (as `cargo bench` runs it) it runs each pair once as a smoke test.

mod fixture;

use std::hint::black_box;

use fixture::Fixture;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let [alg, what, n] = args.as_slice() else {
        for mut f in [Fixture::eddsa(), Fixture::es256()] {
            assert!(f.bare() && f.full());
        }
        return;
    };
    let mut f = match alg.as_str() {
        "eddsa" => Fixture::eddsa(),
        "es256" => Fixture::es256(),
        other => panic!("unknown algorithm {other}"),
    };
    let n: u32 = n.parse().expect("iteration count");
    for _ in 0..n {
        let ok = match what.as_str() {
            "bare" => black_box(&f).bare(),
            "full" => black_box(&mut f).full(),
            "setup" => true,
            other => panic!("unknown measurement {other}"),
        };
        assert!(ok);
    }
}

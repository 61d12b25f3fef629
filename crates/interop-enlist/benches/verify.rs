//! Token verification with a warm JWKS cache, next to bare signature verification of the
//! same bytes in the same run. The claim checks, parsing and key lookup should add at most
//! 30% to the signature verification. `verify_icount` measures the same pairs in
//! instructions (repeatable on a noisy machine).

mod fixture;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fixture::Fixture;

fn pair(c: &mut Criterion, name: &str, mut f: Fixture) {
    let mut g = c.benchmark_group(name);
    g.bench_function("bare_signature", |b| b.iter(|| black_box(&f).bare()));
    g.bench_function("registry_verify_warm", |b| b.iter(|| black_box(&mut f).full()));
    g.finish();
}

fn eddsa(c: &mut Criterion) {
    pair(c, "verify_eddsa", Fixture::eddsa());
}

fn es256(c: &mut Criterion) {
    pair(c, "verify_es256", Fixture::es256());
}

criterion_group!(benches, eddsa, es256);
criterion_main!(benches);

//! The allocator rows' baseline: [`engine_tests::bench::runs_across_users`] with the system
//! allocator (glibc malloc). `allocator_mimalloc.rs` is the same with mimalloc;
//! `cargo xtask bench` runs the two interleaved.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocator");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("system", |b| {
        b.iter_custom(|iters| engine_tests::bench::runs_across_users(1000, 10_000, iters));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The allocator row: [`engine_tests::bench::runs_across_users`] with mimalloc as the global
//! allocator, against `allocator_system.rs` (glibc malloc). The gateway binary uses the
//! allocator this row favours; the libraries never set one.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocator");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("mimalloc", |b| {
        b.iter_custom(|iters| engine_tests::bench::runs_across_users(1000, 10_000, iters));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

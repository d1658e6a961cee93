//! The allocator rows' workload, shared by `allocator_system.rs` and `allocator_mimalloc.rs`,
//! which differ only in their global allocator: runs across 1,000 users
//! ([`engine_bench::RunsAcrossUsers`]) as the criterion group `allocator`.

use criterion::{Criterion, Throughput};

/// Measures the workload as `allocator/<allocator>`.
pub(crate) fn bench(c: &mut Criterion, allocator: &str) {
    const RUNS: usize = 10_000;
    let setup = engine_bench::RunsAcrossUsers::new(1000);
    let mut g = c.benchmark_group("allocator");
    g.sample_size(10);
    g.throughput(Throughput::Elements(RUNS as u64));
    g.bench_function(allocator, |b| {
        b.iter_custom(|iters| setup.measure(RUNS, iters))
    });
    g.finish();
}

//! The allocator rows' baseline: the workload of `allocator/workload.rs` with the system
//! allocator (glibc malloc). `cargo xtask bench` runs it interleaved with
//! `allocator_mimalloc.rs`.

#[path = "allocator/workload.rs"]
mod workload;

fn bench(c: &mut criterion::Criterion) {
    workload::bench(c, "system");
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);

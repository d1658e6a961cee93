//! The allocator row: the workload of `allocator/workload.rs` with mimalloc as the global
//! allocator, against `allocator_system.rs` (glibc malloc). The gateway binary uses the
//! allocator this row favours; the libraries never set one.

#[path = "allocator/workload.rs"]
mod workload;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut criterion::Criterion) {
    workload::bench(c, "mimalloc");
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);

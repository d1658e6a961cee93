//! Allocations per trivial run (exact): the trivial-run scenario of the callgrind row
//! ([`engine_bench::trivial_runs`]) under a counting global allocator (`stats_alloc`),
//! at 1,000 and 3,000 runs, the difference divided by 2,000 (so set-up and tear-down cancel
//! out), for ours and for the raw-tokio floor. Prints one `name  ours  baseline  ratio` line.
//! The count is exact: it does not depend on the machine's load.
#![allow(clippy::print_stdout)]

use std::alloc::System;

use engine_bench::trivial_runs;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations made while `n` runs ran.
fn allocations_of(ours: bool, n: usize) -> usize {
    let region = Region::new(GLOBAL);
    trivial_runs(ours, n);
    let change = region.change();
    change.allocations + change.reallocations
}

fn per_run(ours: bool) -> f64 {
    let small = allocations_of(ours, 1_000);
    let large = allocations_of(ours, 3_000);
    large.saturating_sub(small) as f64 / 2_000.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ours = per_run(true);
    let floor = per_run(false);
    println!(
        "{:<28} {:>22} {:>22} {:>8.2}x",
        "allocations per trivial run",
        format!("{ours:.1}"),
        format!("{floor:.1}"),
        ours / floor.max(1e-9)
    );
}

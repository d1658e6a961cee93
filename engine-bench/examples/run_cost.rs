//! Instructions per run, for `valgrind --tool=callgrind` (deterministic, unlike wall time on a
//! shared VM): runs N trivial 6-event runs through one engine with a reading subscriber
//! (`ours`), or N raw-tokio tasks sending 6 events to a consumer (`baseline`), on a
//! current-thread runtime ([`engine_bench::trivial_runs`]). BENCHMARKS.md divides the
//! difference between two N by the runs. Any other first argument names the agent of the
//! bench registry to run instead (`six_guarded`, `hand_to_six`, `sub_six`).
//!
//! `cargo build --release -p engine-bench --example run_cost`, then
//! `valgrind --tool=callgrind target/release/examples/run_cost ours 2000`.
#![allow(clippy::print_stdout)]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agent = match args.get(1).map_or("ours", String::as_str) {
        "ours" => Some("six"),
        "baseline" => None,
        other => Some(other),
    };
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let events = engine_bench::trivial_runs_of(agent, n);
    println!("{events} events");
}

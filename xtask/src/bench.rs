//! `cargo xtask bench`: runs the benchmarks briefly and prints `name  ours  baseline  ratio`,
//! reading criterion's estimates (median per iteration, divided by the declared throughput).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::XtaskError;

/// One comparison: our median per element against a baseline's.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Benchmark name, e.g. `delivery`.
    pub name: String,
    /// What one element is (`event`, `run`, ...).
    pub unit: &'static str,
    /// Our median nanoseconds per element.
    pub ours_ns: f64,
    /// The baseline's median nanoseconds per element.
    pub baseline_ns: f64,
}

impl Row {
    /// ours / baseline (time per element: below 1 means faster than the baseline).
    pub fn ratio(&self) -> f64 {
        self.ours_ns / self.baseline_ns
    }

    /// The printed line.
    pub fn line(&self) -> String {
        format!(
            "{:<28} {:>22} {:>22} {:>8.2}x",
            self.name,
            per(self.ours_ns, self.unit),
            per(self.baseline_ns, self.unit),
            self.ratio()
        )
    }
}

fn per(ns: f64, unit: &str) -> String {
    let rate = 1e9 / ns;
    let time = if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    };
    let rate = if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    };
    format!("{time}/{unit} ({rate}/s)")
}

#[derive(Deserialize)]
struct Estimates {
    median: Estimate,
}

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
}

#[derive(Deserialize)]
struct BenchmarkJson {
    throughput: Option<Throughput>,
}

#[derive(Deserialize)]
enum Throughput {
    Elements(u64),
    Bytes(u64),
}

/// Median nanoseconds per element of `<criterion>/<group>/<function>`.
pub fn per_element(criterion: &Path, group: &str, function: &str) -> Option<f64> {
    let dir = criterion.join(group).join(function).join("new");
    let est: Estimates =
        serde_json::from_str(&std::fs::read_to_string(dir.join("estimates.json")).ok()?).ok()?;
    let bench: BenchmarkJson =
        serde_json::from_str(&std::fs::read_to_string(dir.join("benchmark.json")).ok()?).ok()?;
    let n = match bench.throughput {
        Some(Throughput::Elements(n) | Throughput::Bytes(n)) => n.max(1),
        None => 1,
    };
    Some(est.median.point_estimate / n as f64)
}

/// The comparisons `cargo xtask bench` reports: (group, unit, ours, baseline).
pub const COMPARISONS: &[(&str, &str, &str, &str)] = &[
    ("lifecycle", "engine", "ours", "baseline"),
    ("delivery", "event", "ours", "baseline"),
    ("fanout", "event", "ours", "raw_mpsc"),
    ("fanout", "event", "ours", "broadcast"),
    ("runs_one_engine", "run", "ours", "baseline"),
    ("runs_1000_users", "run", "ours", "baseline"),
    ("admission", "op", "ours", "baseline"),
    ("supervisor", "job", "ours", "four_runs"),
    ("scan", "line", "ours", "baseline"),
    ("redis_events", "event", "ours", "raw_xadd_xread"),
    ("redis_events", "event", "ours", "in_memory"),
    ("redis_admission", "op", "ours", "raw_evalsha"),
    ("llm_tokens", "token", "ours", "baseline"),
    ("llm_tool_round", "round", "ours", "baseline"),
];

/// Reads every comparison present under `criterion` (the `target/criterion` directory).
pub fn rows(criterion: &Path) -> Vec<Row> {
    COMPARISONS
        .iter()
        .filter_map(|(group, unit, ours, base)| {
            let name = if *base == "baseline" {
                (*group).to_owned()
            } else {
                format!("{group} vs {base}")
            };
            Some(Row {
                name,
                unit,
                ours_ns: per_element(criterion, group, ours)?,
                baseline_ns: per_element(criterion, group, base)?,
            })
        })
        .collect()
}

fn cargo(
    root: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Result<std::process::Output, XtaskError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("==> cargo {}", args.join(" "));
    std::process::Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| XtaskError::io("cargo", e))
}

/// `cargo xtask bench`: runs the criterion benchmarks briefly and the footprint benchmark of the
/// workspace at `root`, then prints `name  ours  baseline  ratio` for every comparison.
///
/// # Errors
/// [`XtaskError::Io`] when cargo cannot be run.
pub fn run(root: &Path) -> Result<u8, XtaskError> {
    let short = [
        "--warm-up-time",
        "0.3",
        "--measurement-time",
        "0.7",
        "--sample-size",
        "10",
    ];
    let mut runs: Vec<Vec<&str>> = vec![
        vec!["bench", "-p", "engine-tests", "--bench", "engine", "--"],
        vec!["bench", "-p", "xtask", "--bench", "scan", "--"],
        // Needs redis-server (Debian's package); without it, it says so and measures nothing.
        vec!["bench", "-p", "engine-tests", "--bench", "redis", "--"],
        vec!["bench", "-p", "engine-tests", "--bench", "llm", "--"],
        vec!["bench", "-p", "engine-tests", "--bench", "tail", "--"],
        vec!["bench", "-p", "engine-tests", "--bench", "allocs", "--"],
    ];
    let mut printed = String::new();
    for r in &mut runs {
        r.extend_from_slice(&short);
        let out = cargo(root, r, &[])?;
        if !out.status.success() {
            eprintln!("error: `cargo {}` failed", r.join(" "));
            return Ok(1);
        }
        // Lines a benchmark prints itself (latency percentiles, skips), not criterion's.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let own = (line.starts_with("redis") && !line.starts_with("redis_"))
                || line.starts_with("tail ")
                || line.starts_with("allocations ")
                || line.contains("p99/p50");
            if own {
                printed.push_str(line);
                printed.push('\n');
            }
        }
    }
    let footprint = cargo(
        root,
        &["bench", "-p", "engine-tests", "--bench", "footprint"],
        &[],
    )?;
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    println!(
        "{:<28} {:>22} {:>22} {:>9}",
        "name", "ours", "baseline", "ratio"
    );
    for row in rows(&target.join("criterion")) {
        println!("{}", row.line());
    }
    print!("{printed}");
    print!("{}", String::from_utf8_lossy(&footprint.stdout));
    Ok(u8::from(!footprint.status.success()))
}

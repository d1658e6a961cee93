//! `cargo xtask bench`: builds the benchmarks once, measures every comparison as interleaved
//! rounds of ours and its baselines (see [`pairs`]), then runs the benchmarks that print their
//! own rows (tail latency, allocations, memory, Redis latency, the run store's thread reads and
//! capacity) and prints one table.

pub mod pairs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Deserialize;

use crate::XtaskError;
pub use pairs::{Comparison, Paired, COMPARISONS};

/// How `cargo xtask bench` measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Rounds per comparison (each round measures ours and every baseline once); comparisons
    /// marked noisy take twice as many less one.
    pub rounds: usize,
    /// Only the comparisons whose group or benchmark name contains one of these (all if empty).
    pub only: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rounds: 5,
            only: Vec::new(),
        }
    }
}

impl Options {
    fn selects(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| name.contains(o.as_str()))
    }
}

/// Criterion's settings for one side of one round: short, since the rounds give the spread.
const SHORT: [&str; 6] = [
    "--warm-up-time",
    "0.1",
    "--measurement-time",
    "0.4",
    "--sample-size",
    "10",
];

/// One printed comparison row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Row name, e.g. `delivery` or `fanout vs broadcast`.
    pub name: String,
    /// What one element is (`event`, `run`, ...).
    pub unit: &'static str,
    /// Both sides, per round.
    pub paired: Paired,
}

impl Row {
    /// The printed line: medians of both sides, the median ratio, its spread and the rounds.
    pub fn line(&self) -> String {
        let (Some(o), Some(b), Some(r), Some((lo, hi))) = (
            self.paired.ours_median(),
            self.paired.baseline_median(),
            self.paired.median_ratio(),
            self.paired.spread(),
        ) else {
            return format!(
                "{:<28} not measured (see the benchmark's output)",
                self.name
            );
        };
        format!(
            "{:<28} {:>22} {:>22} {:>8}x  {}-{} ({} rounds)",
            self.name,
            per(o, self.unit),
            per(b, self.unit),
            ratio(r),
            ratio(lo),
            ratio(hi),
            self.paired.ours.len()
        )
    }
}

/// Two decimals, or three significant digits for ratios far below 1 (`0.000512`).
fn ratio(r: f64) -> String {
    if r >= 0.1 {
        format!("{r:.2}")
    } else {
        let digits = (2 - r.log10().floor() as i32).clamp(2, 12) as usize;
        format!("{r:.digits$}")
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

/// Median nanoseconds per element of `<criterion>/<group>/<function>` (criterion's latest
/// measurement, divided by the declared throughput).
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

#[derive(Deserialize)]
struct Artifact {
    reason: String,
    target: Option<ArtifactTarget>,
    executable: Option<PathBuf>,
}

#[derive(Deserialize)]
struct ArtifactTarget {
    name: String,
    kind: Vec<String>,
}

/// The benchmark executables in cargo's `--message-format=json` output, by target name.
pub fn bench_executables(cargo_json: &str) -> BTreeMap<String, PathBuf> {
    cargo_json
        .lines()
        .filter_map(|l| serde_json::from_str::<Artifact>(l).ok())
        .filter(|a| a.reason == "compiler-artifact")
        .filter_map(|a| {
            let t = a.target?;
            t.kind
                .iter()
                .any(|k| k == "bench")
                .then_some((t.name, a.executable?))
        })
        .collect()
}

fn build(root: &Path) -> Result<BTreeMap<String, PathBuf>, XtaskError> {
    let args = [
        "bench",
        "-p",
        "engine-bench",
        "-p",
        "xtask",
        "--benches",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ];
    eprintln!("==> cargo {}", args.join(" "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| XtaskError::io("cargo", e))?;
    if !out.status.success() {
        return Err(XtaskError::Usage(
            "the benchmarks did not build (cargo's messages above)".into(),
        ));
    }
    Ok(bench_executables(&String::from_utf8_lossy(&out.stdout)))
}

/// The executable cargo built for the benchmark target `name`.
fn executable<'a>(exes: &'a BTreeMap<String, PathBuf>, name: &str) -> Result<&'a Path, XtaskError> {
    exes.get(name)
        .map(PathBuf::as_path)
        .ok_or_else(|| XtaskError::Usage(format!("cargo built no benchmark named `{name}`")))
}

/// Runs a benchmark executable with `args`; its stdout, or an error naming it.
fn run_exe(exe: &Path, args: &[&str], criterion: &Path) -> Result<String, XtaskError> {
    let out = Command::new(exe)
        .arg("--bench")
        .args(args)
        .env("CRITERION_HOME", criterion)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| XtaskError::io(exe.display().to_string(), e))?;
    if !out.status.success() {
        return Err(XtaskError::Usage(format!(
            "{} {} failed: {}",
            exe.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One side of one round: criterion's median per element, `None` when the benchmark measured
/// nothing (a Redis benchmark without `redis-server`).
fn measure_once(
    exe: &Path,
    c: &Comparison,
    function: &str,
    criterion: &Path,
) -> Result<Option<f64>, XtaskError> {
    let id = format!("{}/{function}", c.group);
    // A stale estimate must not stand in for a run that measured nothing.
    let _ = std::fs::remove_dir_all(criterion.join(c.group).join(function));
    let mut args = SHORT.to_vec();
    args.extend(["--exact", id.as_str()]);
    run_exe(exe, &args, criterion)?;
    Ok(per_element(criterion, c.group, function))
}

/// Measures `c` in `rounds` interleaved rounds; one row per baseline.
fn measure(
    exes: &BTreeMap<String, PathBuf>,
    c: &Comparison,
    rounds: usize,
    criterion: &Path,
) -> Result<Vec<Row>, XtaskError> {
    let mut rows: Vec<Row> = c
        .baselines
        .iter()
        .map(|b| Row {
            name: c.row_name(b),
            unit: c.unit,
            paired: Paired::default(),
        })
        .collect();
    for round in 0..rounds {
        eprintln!("==> {} round {}/{rounds}", c.group, round + 1);
        let mut got = BTreeMap::new();
        for f in c.round_order(round) {
            got.insert(
                f,
                measure_once(executable(exes, c.bench_of(f))?, c, f, criterion)?,
            );
        }
        let Some(Some(ours)) = got.get(c.ours).copied() else {
            break; // skipped by the benchmark itself
        };
        for (row, b) in rows.iter_mut().zip(c.baselines) {
            if let Some(Some(base)) = got.get(b).copied() {
                row.paired.push(ours, base);
            }
        }
    }
    Ok(rows)
}

/// The lines a benchmark prints itself (latency percentiles, allocations, memory, skips).
fn own_lines(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| {
            l.starts_with("redis")
                || l.starts_with("tail ")
                || l.starts_with("allocations ")
                || l.starts_with("memory_")
                || l.starts_with("latency")
                || l.starts_with("thread_read")
                || l.starts_with("store_capacity")
                || l.starts_with("api_")
                || l.contains("p99/p50")
        })
        .fold(String::new(), |mut s, l| {
            s.push_str(l);
            s.push('\n');
            s
        })
}

/// `cargo xtask bench`: builds the benchmarks of the workspace at `root`, measures every
/// selected comparison in interleaved rounds and prints `name  ours  baseline  ratio  spread`,
/// then the rows the tail, allocation, memory and Redis-latency benchmarks print themselves.
///
/// # Errors
/// [`XtaskError::Io`] when cargo or a benchmark cannot be run, [`XtaskError::Usage`] when the
/// build or a benchmark fails.
pub fn run(root: &Path, opts: &Options) -> Result<u8, XtaskError> {
    let started = Instant::now();
    let exes = build(root)?;
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let criterion = target.join("criterion-xtask");
    let mut rows = Vec::new();
    for c in COMPARISONS.iter().filter(|c| opts.selects(c.group)) {
        rows.extend(measure(&exes, c, c.rounds(opts.rounds), &criterion)?);
    }
    let mut own = String::new();
    let singles: [(&str, &[&str]); 7] = [
        ("tail", &[]),
        ("allocs", &[]),
        ("footprint", &[]),
        ("sockets", &[]),
        ("redis", &["--exact", "redis_latency"]),
        ("store", &["--exact", "store_probes"]),
        ("api", &[]),
    ];
    for (name, args) in singles {
        if opts.selects(name) {
            eprintln!("==> {name}");
            own.push_str(&own_lines(&run_exe(
                executable(&exes, name)?,
                args,
                &criterion,
            )?));
        }
    }
    println!(
        "{:<28} {:>22} {:>22} {:>9}  spread",
        "name", "ours", "baseline", "ratio"
    );
    for row in &rows {
        println!("{}", row.line());
    }
    print!("{own}");
    eprintln!("==> measured in {:.0} s", started.elapsed().as_secs_f64());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_read_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"engine","kind":["bench"]},"executable":"/t/engine-1"}
{"reason":"compiler-artifact","target":{"name":"engine_tests","kind":["lib"]},"executable":null}
{"reason":"build-finished","success":true}"#;
        let exes = bench_executables(json);
        assert_eq!(exes.len(), 1);
        assert_eq!(exes["engine"], PathBuf::from("/t/engine-1"));
    }

    #[test]
    fn a_row_without_rounds_says_so() {
        let row = Row {
            name: "redis_events".into(),
            unit: "event",
            paired: Paired::default(),
        };
        assert!(row.line().contains("not measured"));
        let mut p = Paired::default();
        p.push(2_000.0, 1_000.0);
        let row = Row { paired: p, ..row };
        assert!(row.line().contains("2.00x"), "{}", row.line());
        assert!(
            row.line().contains("2.00 us/event (500.0k/s)"),
            "{}",
            row.line()
        );
        assert_eq!(ratio(0.000512), "0.000512");
        assert_eq!(ratio(0.05), "0.0500");
        assert_eq!(ratio(13.626), "13.63");
    }
}

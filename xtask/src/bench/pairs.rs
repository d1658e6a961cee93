//! Interleaved measurement: every comparison is measured as rounds of `ours` and its baselines
//! run one after the other (the order flipped every round: A B, B A, ...), so that a machine
//! that slows down for a while slows both sides; the reported ratio is the median of the
//! per-round ratios, printed with its spread.

/// One comparison `cargo xtask bench` measures: a criterion group of one benchmark binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    /// The benchmark target (`cargo bench --bench <bench>`).
    pub bench: &'static str,
    /// The criterion group.
    pub group: &'static str,
    /// What one element is (`event`, `run`, ...).
    pub unit: &'static str,
    /// Our function in the group.
    pub ours: &'static str,
    /// The baselines in the group; each gets its own row.
    pub baselines: &'static [&'static str],
    /// The benchmark target of the baselines when it is not `bench` (the allocator row: the
    /// same workload built twice, with different global allocators).
    pub baseline_bench: Option<&'static str>,
    /// Whether single rounds of this comparison scatter widely (a mock server on loopback
    /// sharing the two cores, a baseline that wakes 10,000 tasks per event, two threads that
    /// may or may not get a vCPU each): it is measured in twice the rounds less one, so that
    /// its median moves less between runs.
    pub noisy: bool,
}

/// Every comparison `cargo xtask bench` reports, in the order printed.
pub const COMPARISONS: &[Comparison] = &[
    cmp("engine", "lifecycle", "engine", &["baseline"]),
    cmp("engine", "delivery", "event", &["baseline"]),
    noisy(cmp("engine", "fanout", "event", &["raw_mpsc", "broadcast"])),
    cmp("engine", "runs_one_engine", "run", &["baseline"]),
    cmp("engine", "runs_1000_users", "run", &["baseline"]),
    noisy(cmp("engine", "admission", "op", &["baseline"])),
    cmp("engine", "supervisor", "job", &["four_runs"]),
    cmp("scan", "scan", "line", &["baseline"]),
    cmp(
        "redis",
        "redis_events",
        "event",
        &["raw_xadd_xread", "in_memory"],
    ),
    noisy(cmp("redis", "redis_admission", "op", &["raw_evalsha"])),
    noisy(cmp("llm", "llm_tokens", "token", &["baseline"])),
    noisy(cmp("llm", "llm_tool_round", "round", &["baseline"])),
    // Both sides write a database file (SQLite) or go through a server sharing the two cores
    // (Postgres): single rounds scatter.
    noisy(cmp("store", "store_events_sqlite", "event", &["raw_sqlx"])),
    noisy(cmp(
        "store",
        "store_events_postgres",
        "event",
        &["raw_sqlx"],
    )),
    Comparison {
        bench: "store",
        group: "runs_1000_users_store",
        unit: "run",
        ours: "ours",
        baselines: &["memory"],
        baseline_bench: None,
        noisy: false,
    },
    Comparison {
        bench: "allocator_mimalloc",
        group: "allocator",
        unit: "run",
        ours: "mimalloc",
        baselines: &["system"],
        baseline_bench: Some("allocator_system"),
        noisy: false,
    },
];

const fn cmp(
    bench: &'static str,
    group: &'static str,
    unit: &'static str,
    baselines: &'static [&'static str],
) -> Comparison {
    Comparison {
        bench,
        group,
        unit,
        ours: "ours",
        baselines,
        baseline_bench: None,
        noisy: false,
    }
}

const fn noisy(c: Comparison) -> Comparison {
    Comparison { noisy: true, ..c }
}

impl Comparison {
    /// The rounds this comparison is measured in when `rounds` are asked for.
    pub fn rounds(&self, rounds: usize) -> usize {
        let rounds = rounds.max(1);
        if self.noisy {
            rounds * 2 - 1
        } else {
            rounds
        }
    }

    /// The functions of one round, in the order they run in round `round` (ours first in even
    /// rounds, last in odd ones).
    pub fn round_order(&self, round: usize) -> Vec<&'static str> {
        let mut order = vec![self.ours];
        order.extend_from_slice(self.baselines);
        if !round.is_multiple_of(2) {
            order.reverse();
        }
        order
    }

    /// The benchmark target that measures `function` of the group.
    pub fn bench_of(&self, function: &str) -> &'static str {
        match self.baseline_bench {
            Some(other) if function != self.ours => other,
            _ => self.bench,
        }
    }

    /// The printed name of the row against `baseline`.
    pub fn row_name(&self, baseline: &str) -> String {
        if self.ours != "ours" {
            format!("{}: {} vs {baseline}", self.group, self.ours)
        } else if baseline == "baseline" {
            self.group.to_owned()
        } else {
            format!("{} vs {baseline}", self.group)
        }
    }
}

/// Nanoseconds per element of both sides, one entry per round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Paired {
    /// Ours, per round.
    pub ours: Vec<f64>,
    /// The baseline, per round (same index = same round).
    pub baseline: Vec<f64>,
}

impl Paired {
    /// Adds one round.
    pub fn push(&mut self, ours: f64, baseline: f64) {
        self.ours.push(ours);
        self.baseline.push(baseline);
    }

    /// ours / baseline of each round.
    pub fn ratios(&self) -> Vec<f64> {
        self.ours
            .iter()
            .zip(&self.baseline)
            .map(|(o, b)| o / b)
            .collect()
    }

    /// The median of the per-round ratios (`None` with no round).
    pub fn median_ratio(&self) -> Option<f64> {
        median(self.ratios())
    }

    /// The smallest and largest per-round ratio.
    pub fn spread(&self) -> Option<(f64, f64)> {
        let r = self.ratios();
        let lo = r.iter().copied().reduce(f64::min)?;
        let hi = r.iter().copied().reduce(f64::max)?;
        Some((lo, hi))
    }

    /// The median time of our side.
    pub fn ours_median(&self) -> Option<f64> {
        median(self.ours.clone())
    }

    /// The median time of the baseline.
    pub fn baseline_median(&self) -> Option<f64> {
        median(self.baseline.clone())
    }
}

/// The median (the mean of the middle two for an even count); `None` for no value.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_ratios_ignores_one_disturbed_round() {
        let mut p = Paired::default();
        for (o, b) in [(2.0, 1.0), (2.2, 1.0), (9.0, 1.0), (2.1, 1.0), (1.9, 1.0)] {
            p.push(o, b);
        }
        assert_eq!(p.median_ratio(), Some(2.1));
        assert_eq!(p.spread(), Some((1.9, 9.0)));
        assert_eq!(p.ours_median(), Some(2.1));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(Paired::default().median_ratio(), None);
        assert_eq!(Paired::default().spread(), None);
    }

    #[test]
    fn rounds_alternate_which_side_goes_first() {
        let c = COMPARISONS
            .iter()
            .find(|c| c.group == "fanout")
            .expect("fanout row");
        assert_eq!(c.round_order(0), ["ours", "raw_mpsc", "broadcast"]);
        assert_eq!(c.round_order(1), ["broadcast", "raw_mpsc", "ours"]);
        assert_eq!(c.row_name("baseline"), "fanout");
        assert_eq!(c.row_name("broadcast"), "fanout vs broadcast");
        assert_eq!(c.bench_of("raw_mpsc"), "engine");
        let a = COMPARISONS
            .iter()
            .find(|c| c.group == "allocator")
            .expect("allocator row");
        assert_eq!(a.bench_of("mimalloc"), "allocator_mimalloc");
        assert_eq!(a.bench_of("system"), "allocator_system");
        assert_eq!(a.row_name("system"), "allocator: mimalloc vs system");
    }

    #[test]
    fn the_store_rows_are_selected_by_store() {
        let selected: Vec<_> = COMPARISONS
            .iter()
            .filter(|c| c.group.contains("store"))
            .map(|c| (c.bench, c.row_name(c.baselines[0])))
            .collect();
        assert_eq!(
            selected,
            [
                ("store", "store_events_sqlite vs raw_sqlx".to_owned()),
                ("store", "store_events_postgres vs raw_sqlx".to_owned()),
                ("store", "runs_1000_users_store vs memory".to_owned()),
            ]
        );
    }

    #[test]
    fn noisy_rows_take_more_rounds_with_an_odd_count() {
        let find = |g: &str| COMPARISONS.iter().find(|c| c.group == g).expect(g);
        assert_eq!(find("lifecycle").rounds(5), 5);
        assert_eq!(find("lifecycle").rounds(0), 1);
        assert_eq!(find("llm_tokens").rounds(5), 9);
        assert_eq!(find("admission").rounds(1), 1);
        assert_eq!(find("admission").rounds(2), 3);
    }
}

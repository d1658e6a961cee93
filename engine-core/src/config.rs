//! [`EngineConfig`]: per-engine limits, validated when built.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::ConfigError;
use crate::limits::check_range;
use crate::multitask::MultitaskPolicy;

/// Limits of one [`UserExecutionEngine`](crate::UserExecutionEngine).
///
/// ```
/// use std::time::Duration;
/// use engine_core::EngineConfig;
///
/// let config = EngineConfig::builder()
///     .max_concurrent_runs(5)
///     .run_timeout(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(config.max_concurrent_runs(), 5);
/// assert_eq!(config.history_limit(), 100);
/// let err = EngineConfig::builder().max_concurrent_runs(0).build().unwrap_err();
/// assert_eq!(err.field, "max_concurrent_runs");
/// # Ok::<(), engine_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    max_concurrent_runs: usize,
    max_queued_runs: usize,
    run_timeout: Duration,
    tool_timeout: Duration,
    history_limit: usize,
    queue_notice_after: Duration,
    delivery_timeout: Duration,
    multitask: MultitaskPolicy,
    approval_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 3,
            max_queued_runs: 32,
            run_timeout: Duration::from_secs(25),
            tool_timeout: Duration::from_secs(30),
            history_limit: 100,
            queue_notice_after: Duration::from_secs(1),
            delivery_timeout: Duration::from_millis(200),
            multitask: MultitaskPolicy::Enqueue,
            approval_timeout: Duration::from_secs(300),
        }
    }
}

impl EngineConfig {
    /// Allowed range of [`max_concurrent_runs`](Self::max_concurrent_runs).
    pub const MAX_CONCURRENT_RUNS: RangeInclusive<usize> = 1..=64;
    /// Allowed range of [`max_queued_runs`](Self::max_queued_runs).
    pub const MAX_QUEUED_RUNS: RangeInclusive<usize> = 0..=10_000;
    /// Allowed range of the run and tool timeouts.
    pub const TIMEOUT: RangeInclusive<Duration> =
        Duration::from_millis(10)..=Duration::from_secs(3600);
    /// Allowed range of [`history_limit`](Self::history_limit).
    pub const HISTORY_LIMIT: RangeInclusive<usize> = 1..=10_000;
    /// Allowed range of [`queue_notice_after`](Self::queue_notice_after).
    pub const QUEUE_NOTICE_AFTER: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_secs(60);
    /// Allowed range of [`delivery_timeout`](Self::delivery_timeout).
    pub const DELIVERY_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_secs(60);

    /// Allowed range of [`approval_timeout`](Self::approval_timeout).
    pub const APPROVAL_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_millis(10)..=Duration::from_secs(24 * 3600);

    /// A builder starting from the defaults (3 concurrent runs, 32 queued, 25 s run timeout,
    /// 30 s tool timeout, history 100, queued notice after 1 s, 200 ms delivery timeout,
    /// `enqueue` for a second message on a busy thread, 5 min to answer an approval).
    pub fn builder() -> EngineConfigBuilder {
        EngineConfigBuilder(Self::default())
    }
    /// Runs executing at once; further runs queue.
    pub fn max_concurrent_runs(&self) -> usize {
        self.max_concurrent_runs
    }
    /// Runs that may wait for a slot beyond [`max_concurrent_runs`](Self::max_concurrent_runs).
    /// An engine holds at most `max_concurrent_runs + max_queued_runs` accepted runs; the next
    /// one is refused with [`EngineError::QueueFull`](crate::EngineError::QueueFull) before any
    /// event is emitted, so a flood of messages cannot grow an engine's memory. `0` refuses
    /// every run that would have to wait.
    pub fn max_queued_runs(&self) -> usize {
        self.max_queued_runs
    }
    /// The most runs an engine holds at once: executing plus queued.
    pub fn max_accepted_runs(&self) -> usize {
        self.max_concurrent_runs + self.max_queued_runs
    }
    /// Longest an agent may run (queue time excluded) before the run ends `timed_out`.
    pub fn run_timeout(&self) -> Duration {
        self.run_timeout
    }
    /// Longest one tool call may take before it ends with status `timeout`.
    pub fn tool_timeout(&self) -> Duration {
        self.tool_timeout
    }
    /// Finished runs kept in the history (newest last).
    pub fn history_limit(&self) -> usize {
        self.history_limit
    }
    /// A run queued longer than this gets an `agent_thinking` "queued" event.
    pub fn queue_notice_after(&self) -> Duration {
        self.queue_notice_after
    }
    /// Longest the engine waits on its sink for one event before counting it dropped.
    pub fn delivery_timeout(&self) -> Duration {
        self.delivery_timeout
    }
    /// What a run does when its thread is busy, unless the request chooses
    /// ([`RunOptions::multitask`](crate::RunOptions::multitask)).
    pub fn multitask(&self) -> MultitaskPolicy {
        self.multitask
    }
    /// Longest a tool call waits for the user's approval; then it ends with status `timeout`.
    /// The wait does not count against the [`run_timeout`](Self::run_timeout): a run's own
    /// time is what it spends working, not what it spends waiting for its user.
    pub fn approval_timeout(&self) -> Duration {
        self.approval_timeout
    }
}

/// Builds an [`EngineConfig`]; [`build`](Self::build) checks every range.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct EngineConfigBuilder(EngineConfig);

impl EngineConfigBuilder {
    /// Sets [`EngineConfig::max_concurrent_runs`] (1..=64).
    pub fn max_concurrent_runs(mut self, v: usize) -> Self {
        self.0.max_concurrent_runs = v;
        self
    }
    /// Sets [`EngineConfig::max_queued_runs`] (0..=10,000).
    pub fn max_queued_runs(mut self, v: usize) -> Self {
        self.0.max_queued_runs = v;
        self
    }
    /// Sets [`EngineConfig::run_timeout`] (10 ms..=1 h).
    pub fn run_timeout(mut self, v: Duration) -> Self {
        self.0.run_timeout = v;
        self
    }
    /// Sets [`EngineConfig::tool_timeout`] (10 ms..=1 h).
    pub fn tool_timeout(mut self, v: Duration) -> Self {
        self.0.tool_timeout = v;
        self
    }
    /// Sets [`EngineConfig::history_limit`] (1..=10,000).
    pub fn history_limit(mut self, v: usize) -> Self {
        self.0.history_limit = v;
        self
    }
    /// Sets [`EngineConfig::queue_notice_after`] (1 ms..=60 s).
    pub fn queue_notice_after(mut self, v: Duration) -> Self {
        self.0.queue_notice_after = v;
        self
    }
    /// Sets [`EngineConfig::delivery_timeout`] (1 ms..=60 s).
    pub fn delivery_timeout(mut self, v: Duration) -> Self {
        self.0.delivery_timeout = v;
        self
    }
    /// Sets [`EngineConfig::multitask`] (default `enqueue`).
    pub fn multitask(mut self, v: MultitaskPolicy) -> Self {
        self.0.multitask = v;
        self
    }
    /// Sets [`EngineConfig::approval_timeout`] (10 ms..=24 h).
    pub fn approval_timeout(mut self, v: Duration) -> Self {
        self.0.approval_timeout = v;
        self
    }
    /// Checks every field against its range.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field out of range and its allowed range.
    pub fn build(self) -> Result<EngineConfig, ConfigError> {
        let c = self.0;
        check_range(
            "max_concurrent_runs",
            c.max_concurrent_runs,
            EngineConfig::MAX_CONCURRENT_RUNS,
        )?;
        check_range(
            "max_queued_runs",
            c.max_queued_runs,
            EngineConfig::MAX_QUEUED_RUNS,
        )?;
        check_range("run_timeout", c.run_timeout, EngineConfig::TIMEOUT)?;
        check_range("tool_timeout", c.tool_timeout, EngineConfig::TIMEOUT)?;
        check_range(
            "history_limit",
            c.history_limit,
            EngineConfig::HISTORY_LIMIT,
        )?;
        check_range(
            "queue_notice_after",
            c.queue_notice_after,
            EngineConfig::QUEUE_NOTICE_AFTER,
        )?;
        check_range(
            "delivery_timeout",
            c.delivery_timeout,
            EngineConfig::DELIVERY_TIMEOUT,
        )?;
        check_range(
            "approval_timeout",
            c.approval_timeout,
            EngineConfig::APPROVAL_TIMEOUT,
        )?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let c = EngineConfig::builder().build().unwrap();
        assert_eq!(c, EngineConfig::default());
        assert_eq!(c.max_concurrent_runs(), 3);
        assert_eq!(c.max_queued_runs(), 32);
        assert_eq!(c.max_accepted_runs(), 35);
        assert_eq!(c.run_timeout(), Duration::from_secs(25));
        assert_eq!(c.tool_timeout(), Duration::from_secs(30));
        assert_eq!(c.history_limit(), 100);
        assert_eq!(c.queue_notice_after(), Duration::from_secs(1));
    }

    #[test]
    fn every_out_of_range_field_is_named_with_its_range() {
        let cases: Vec<(EngineConfigBuilder, &str, &str)> = vec![
            (
                EngineConfig::builder().max_concurrent_runs(0),
                "max_concurrent_runs",
                "1..=64",
            ),
            (
                EngineConfig::builder().max_concurrent_runs(65),
                "max_concurrent_runs",
                "1..=64",
            ),
            (
                EngineConfig::builder().max_queued_runs(10_001),
                "max_queued_runs",
                "0..=10000",
            ),
            (
                EngineConfig::builder().run_timeout(Duration::ZERO),
                "run_timeout",
                "10ms..=3600s",
            ),
            (
                EngineConfig::builder().tool_timeout(Duration::from_secs(3601)),
                "tool_timeout",
                "10ms..=3600s",
            ),
            (
                EngineConfig::builder().history_limit(0),
                "history_limit",
                "1..=10000",
            ),
            (
                EngineConfig::builder().queue_notice_after(Duration::ZERO),
                "queue_notice_after",
                "1ms..=60s",
            ),
            (
                EngineConfig::builder().delivery_timeout(Duration::from_secs(61)),
                "delivery_timeout",
                "1ms..=60s",
            ),
            (
                EngineConfig::builder().approval_timeout(Duration::ZERO),
                "approval_timeout",
                "10ms..=86400s",
            ),
        ];
        for (builder, field, range) in cases {
            let e = builder.build().unwrap_err();
            assert_eq!(e.field, field);
            assert_eq!(e.range, range);
            let msg = e.to_string();
            assert!(msg.contains(field) && msg.contains(range), "{msg}");
        }
    }
}

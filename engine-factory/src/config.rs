//! [`FactoryConfig`]: factory limits plus the defaults handed to every engine.

use std::ops::RangeInclusive;
use std::time::Duration;

use engine_core::limits::check_range;
use engine_core::{ConfigError, EngineConfig};

/// Limits of an [`ExecutionEngineFactory`](crate::ExecutionEngineFactory), validated when built.
///
/// ```
/// use std::time::Duration;
/// use engine_factory::FactoryConfig;
///
/// let config = FactoryConfig::builder()
///     .max_engines_per_user(3)
///     .engine_ttl(Duration::from_secs(600))
///     .build()?;
/// assert_eq!(config.max_engines_per_user(), 3);
/// let err = FactoryConfig::builder().max_engines_per_user(11).build().unwrap_err();
/// assert_eq!(err.to_string(),
///     "invalid configuration: max_engines_per_user = 11 is outside the allowed range 1..=10");
/// # Ok::<(), engine_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactoryConfig {
    max_engines_per_user: usize,
    engine_ttl: Duration,
    reaper_interval: Duration,
    subscriber_buffer: usize,
    backpressure_deadline: Duration,
    shutdown_deadline: Duration,
    engine: EngineConfig,
}

impl Default for FactoryConfig {
    fn default() -> Self {
        Self {
            max_engines_per_user: 2,
            engine_ttl: Duration::from_secs(300),
            reaper_interval: Duration::from_secs(60),
            subscriber_buffer: 256,
            backpressure_deadline: Duration::from_millis(50),
            shutdown_deadline: Duration::from_secs(10),
            engine: EngineConfig::default(),
        }
    }
}

impl FactoryConfig {
    /// Allowed range of [`max_engines_per_user`](Self::max_engines_per_user).
    pub const MAX_ENGINES_PER_USER: RangeInclusive<usize> = 1..=10;
    /// Allowed range of [`engine_ttl`](Self::engine_ttl).
    pub const ENGINE_TTL: RangeInclusive<Duration> =
        Duration::from_secs(60)..=Duration::from_secs(3600);
    /// Allowed range of [`reaper_interval`](Self::reaper_interval).
    pub const REAPER_INTERVAL: RangeInclusive<Duration> =
        Duration::from_secs(10)..=Duration::from_secs(300);
    /// Allowed range of [`subscriber_buffer`](Self::subscriber_buffer).
    pub const SUBSCRIBER_BUFFER: RangeInclusive<usize> = 1..=65_536;
    /// Allowed range of [`backpressure_deadline`](Self::backpressure_deadline).
    pub const BACKPRESSURE_DEADLINE: RangeInclusive<Duration> =
        Duration::ZERO..=Duration::from_secs(10);
    /// Allowed range of [`shutdown_deadline`](Self::shutdown_deadline).
    pub const SHUTDOWN_DEADLINE: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_secs(300);

    /// A builder starting from the defaults (2 engines per user, TTL 300 s, reaper every 60 s,
    /// 256 buffered events per subscriber, 50 ms backpressure, 10 s shutdown deadline).
    pub fn builder() -> FactoryConfigBuilder {
        FactoryConfigBuilder(Self::default())
    }
    /// Live engines one user may hold at once.
    pub fn max_engines_per_user(&self) -> usize {
        self.max_engines_per_user
    }
    /// Age after which an idle engine is reaped.
    pub fn engine_ttl(&self) -> Duration {
        self.engine_ttl
    }
    /// How often the background reaper runs.
    pub fn reaper_interval(&self) -> Duration {
        self.reaper_interval
    }
    /// Events buffered per subscriber before backpressure applies.
    pub fn subscriber_buffer(&self) -> usize {
        self.subscriber_buffer
    }
    /// Longest the hub waits on one full subscriber before dropping the event for it.
    pub fn backpressure_deadline(&self) -> Duration {
        self.backpressure_deadline
    }
    /// Longest [`shutdown`](crate::ExecutionEngineFactory::shutdown) waits for runs to end.
    pub fn shutdown_deadline(&self) -> Duration {
        self.shutdown_deadline
    }
    /// The configuration every engine is built with.
    pub fn engine(&self) -> &EngineConfig {
        &self.engine
    }
}

/// Builds a [`FactoryConfig`]; [`build`](Self::build) checks every range.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct FactoryConfigBuilder(FactoryConfig);

impl FactoryConfigBuilder {
    /// Sets [`FactoryConfig::max_engines_per_user`] (1..=10).
    pub fn max_engines_per_user(mut self, v: usize) -> Self {
        self.0.max_engines_per_user = v;
        self
    }
    /// Sets [`FactoryConfig::engine_ttl`] (60 s..=3600 s).
    pub fn engine_ttl(mut self, v: Duration) -> Self {
        self.0.engine_ttl = v;
        self
    }
    /// Sets [`FactoryConfig::reaper_interval`] (10 s..=300 s).
    pub fn reaper_interval(mut self, v: Duration) -> Self {
        self.0.reaper_interval = v;
        self
    }
    /// Sets [`FactoryConfig::subscriber_buffer`] (1..=65,536).
    pub fn subscriber_buffer(mut self, v: usize) -> Self {
        self.0.subscriber_buffer = v;
        self
    }
    /// Sets [`FactoryConfig::backpressure_deadline`] (0..=10 s).
    pub fn backpressure_deadline(mut self, v: Duration) -> Self {
        self.0.backpressure_deadline = v;
        self
    }
    /// Sets [`FactoryConfig::shutdown_deadline`] (1 ms..=300 s).
    pub fn shutdown_deadline(mut self, v: Duration) -> Self {
        self.0.shutdown_deadline = v;
        self
    }
    /// Sets the engine configuration (already validated by its own builder).
    pub fn engine(mut self, v: EngineConfig) -> Self {
        self.0.engine = v;
        self
    }
    /// Checks every field against its range.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field out of range and its allowed range.
    pub fn build(self) -> Result<FactoryConfig, ConfigError> {
        let c = self.0;
        check_range(
            "max_engines_per_user",
            c.max_engines_per_user,
            FactoryConfig::MAX_ENGINES_PER_USER,
        )?;
        check_range("engine_ttl", c.engine_ttl, FactoryConfig::ENGINE_TTL)?;
        check_range(
            "reaper_interval",
            c.reaper_interval,
            FactoryConfig::REAPER_INTERVAL,
        )?;
        check_range(
            "subscriber_buffer",
            c.subscriber_buffer,
            FactoryConfig::SUBSCRIBER_BUFFER,
        )?;
        check_range(
            "backpressure_deadline",
            c.backpressure_deadline,
            FactoryConfig::BACKPRESSURE_DEADLINE,
        )?;
        check_range(
            "shutdown_deadline",
            c.shutdown_deadline,
            FactoryConfig::SHUTDOWN_DEADLINE,
        )?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_legacy_values() {
        let c = FactoryConfig::builder().build().unwrap();
        assert_eq!(c.max_engines_per_user(), 2);
        assert_eq!(c.engine_ttl(), Duration::from_secs(300));
        assert_eq!(c.reaper_interval(), Duration::from_secs(60));
        assert_eq!(c.engine(), &EngineConfig::default());
    }

    #[test]
    fn out_of_range_values_name_field_and_range() {
        let s = Duration::from_secs;
        let cases = [
            (
                FactoryConfig::builder().max_engines_per_user(0),
                "max_engines_per_user",
                "1..=10",
            ),
            (
                FactoryConfig::builder().max_engines_per_user(11),
                "max_engines_per_user",
                "1..=10",
            ),
            (
                FactoryConfig::builder().engine_ttl(s(59)),
                "engine_ttl",
                "60s..=3600s",
            ),
            (
                FactoryConfig::builder().engine_ttl(s(3601)),
                "engine_ttl",
                "60s..=3600s",
            ),
            (
                FactoryConfig::builder().reaper_interval(s(9)),
                "reaper_interval",
                "10s..=300s",
            ),
            (
                FactoryConfig::builder().reaper_interval(s(301)),
                "reaper_interval",
                "10s..=300s",
            ),
            (
                FactoryConfig::builder().subscriber_buffer(0),
                "subscriber_buffer",
                "1..=65536",
            ),
            (
                FactoryConfig::builder().backpressure_deadline(s(11)),
                "backpressure_deadline",
                "0ns..=10s",
            ),
            (
                FactoryConfig::builder().shutdown_deadline(Duration::ZERO),
                "shutdown_deadline",
                "1ms..=300s",
            ),
        ];
        for (b, field, range) in cases {
            let e = b.build().unwrap_err();
            assert_eq!((e.field, e.range.as_str()), (field, range));
            assert!(e.to_string().contains(field));
        }
        for ok in [1, 10] {
            assert!(FactoryConfig::builder()
                .max_engines_per_user(ok)
                .build()
                .is_ok());
        }
        assert!(FactoryConfig::builder().engine_ttl(s(60)).build().is_ok());
        assert!(FactoryConfig::builder().engine_ttl(s(3600)).build().is_ok());
        assert!(FactoryConfig::builder()
            .reaper_interval(s(10))
            .build()
            .is_ok());
        assert!(FactoryConfig::builder()
            .reaper_interval(s(300))
            .build()
            .is_ok());
    }
}

//! How runs end: [`RunOutcome`] (one run, its [`RunEnd`]) and [`EngineStats`] (an engine's
//! counters), with the accumulator that keeps the stats.

use std::sync::Arc;
use std::time::Duration;

use crate::event::RunStatus;
use crate::ids::{RunId, ThreadId};

/// How a run ended, with exactly the data that ending has: an answer only when it completed, an
/// error or reason otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunEnd {
    /// The agent returned an answer.
    Completed {
        /// The agent's answer.
        answer: String,
    },
    /// The agent returned an error or panicked.
    Failed {
        /// What went wrong.
        error: String,
    },
    /// The run exceeded the run timeout.
    TimedOut {
        /// Which limit elapsed.
        error: String,
    },
    /// The run was cancelled (by id, by its handle, or by the engine stopping).
    Cancelled {
        /// When and how it was cancelled.
        reason: String,
    },
    /// A guardrail tripped and ended the run.
    GuardrailTripped {
        /// The guardrail's registered name.
        guardrail: String,
        /// Why it tripped.
        reason: String,
        /// Both in a sentence: what [`error`](RunEnd::error) returns.
        message: String,
    },
}

impl RunEnd {
    /// The status carried by the run's terminal event.
    pub fn status(&self) -> RunStatus {
        match self {
            Self::Completed { .. } => RunStatus::Completed,
            Self::Failed { .. } => RunStatus::Failed,
            Self::TimedOut { .. } => RunStatus::TimedOut,
            Self::Cancelled { .. } => RunStatus::Cancelled,
            Self::GuardrailTripped { .. } => RunStatus::GuardrailTripped,
        }
    }
    /// The answer, for a completed run.
    pub fn answer(&self) -> Option<&str> {
        match self {
            Self::Completed { answer } => Some(answer),
            _ => None,
        }
    }
    /// The error or cancellation reason, for any other ending.
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Completed { .. } => None,
            Self::Failed { error } | Self::TimedOut { error } => Some(error),
            Self::Cancelled { reason } => Some(reason),
            Self::GuardrailTripped { message, .. } => Some(message),
        }
    }
}

/// How one run ended, as returned to the caller and kept in the engine's history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunOutcome {
    /// The run.
    pub run_id: RunId,
    /// The run's thread.
    pub thread_id: ThreadId,
    /// The agent (or pipeline) the run was started with.
    pub agent_name: Arc<str>,
    /// The agent that answered: `agent_name`, or the last agent the run was handed off to
    /// (the terminal event's `agent_name`).
    pub answered_by: Arc<str>,
    /// How it ended, with its answer or error.
    pub end: RunEnd,
    /// Time spent waiting for a concurrency slot.
    pub queue_wait: Duration,
    /// Time the agent ran (zero if it never started).
    pub execution_time: Duration,
    /// Events the sink accepted.
    pub events_delivered: u64,
    /// Events the sink dropped (visible to the consumer as sequence gaps).
    pub events_dropped: u64,
    /// For a pipeline run, each step in order; empty for an agent run.
    pub steps: Vec<StepOutcome>,
    /// Model tokens the run's agents reported with
    /// [`RunContext::record_usage`](crate::RunContext::record_usage) (zero for agents without a
    /// model).
    pub usage: TokenUsage,
}

/// Tokens a model used: prompt (input) and completion (output).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub struct TokenUsage {
    /// Tokens of the prompts sent.
    pub prompt_tokens: u64,
    /// Tokens of the completions received.
    pub completion_tokens: u64,
}

impl TokenUsage {
    /// A usage of `prompt_tokens` in and `completion_tokens` out.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
        }
    }
    /// Both together.
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl std::ops::AddAssign for TokenUsage {
    fn add_assign(&mut self, other: Self) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// How one step of a pipeline run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepOutcome {
    /// The step's agent.
    pub agent_name: Arc<str>,
    /// How it ended; `None` when it never ran (an earlier step failed and the pipeline does
    /// not continue on error, or the run ended first).
    pub end: Option<RunEnd>,
}

impl StepOutcome {
    pub(crate) fn new(agent_name: Arc<str>, end: Option<RunEnd>) -> Self {
        Self { agent_name, end }
    }
}

impl RunOutcome {
    /// How the run ended.
    pub fn status(&self) -> RunStatus {
        self.end.status()
    }
    /// Whether the run ended with status `completed`.
    pub fn is_success(&self) -> bool {
        matches!(self.end, RunEnd::Completed { .. })
    }
    /// The agent's answer, for a completed run.
    pub fn result(&self) -> Option<&str> {
        self.end.answer()
    }
    /// The error or cancellation reason, for any other ending.
    pub fn error(&self) -> Option<&str> {
        self.end.error()
    }
}

/// Counters of one engine. Everything in it is about this engine's own user. Times are kept to
/// the microsecond.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Runs accepted.
    pub total_runs: u64,
    /// Runs refused because the engine already held its most runs (queue full).
    pub rejected_runs: u64,
    /// Runs that ended `completed`.
    pub completed_runs: u64,
    /// Runs that ended `failed`.
    pub failed_runs: u64,
    /// Runs that ended `timed_out`.
    pub timed_out_runs: u64,
    /// Runs that ended `cancelled`.
    pub cancelled_runs: u64,
    /// Runs that a guardrail ended (`guardrail_tripped`).
    pub guardrail_tripped_runs: u64,
    /// Runs accepted and not yet ended (queued or executing).
    pub active_runs: usize,
    /// Mean queue wait of finished runs.
    pub avg_queue_wait: Duration,
    /// Longest queue wait of a finished run.
    pub max_queue_wait: Duration,
    /// Mean agent execution time of finished runs.
    pub avg_execution_time: Duration,
    /// Longest agent execution time of a finished run.
    pub max_execution_time: Duration,
    /// Events the sink accepted, over finished runs.
    pub events_delivered: u64,
    /// Events dropped, over finished runs.
    pub events_dropped: u64,
    /// Runs currently in the history.
    pub history_len: usize,
}

/// The running counters behind [`EngineStats`], kept compact (every idle engine holds one):
/// counts of runs as `u32`, times as whole microseconds. [`EngineStats`] is built from it on
/// demand.
#[derive(Debug, Default)]
pub(crate) struct StatsAcc {
    /// Runs accepted.
    pub(crate) total_runs: u32,
    /// Runs refused with a full queue.
    pub(crate) rejected_runs: u32,
    /// Finished runs by ending: completed, failed, timed out, cancelled, guardrail tripped.
    ends: [u32; 5],
    events_delivered: u64,
    events_dropped: u64,
    /// Queue wait and execution time, in microseconds: totals then maxima.
    queue_total_us: u64,
    exec_total_us: u64,
    max_queue_us: u64,
    max_exec_us: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl StatsAcc {
    /// Counts one finished run.
    pub(crate) fn record(&mut self, outcome: &RunOutcome) {
        let i = match outcome.end {
            RunEnd::Completed { .. } => 0,
            RunEnd::Failed { .. } => 1,
            RunEnd::TimedOut { .. } => 2,
            RunEnd::Cancelled { .. } => 3,
            RunEnd::GuardrailTripped { .. } => 4,
        };
        self.ends[i] = self.ends[i].saturating_add(1);
        self.events_delivered += outcome.events_delivered;
        self.events_dropped += outcome.events_dropped;
        let (q, e) = (micros(outcome.queue_wait), micros(outcome.execution_time));
        self.queue_total_us = self.queue_total_us.saturating_add(q);
        self.exec_total_us = self.exec_total_us.saturating_add(e);
        self.max_queue_us = self.max_queue_us.max(q);
        self.max_exec_us = self.max_exec_us.max(e);
    }

    /// The public snapshot (`active_runs` and `history_len` are the caller's to fill in).
    pub(crate) fn snapshot(&self) -> EngineStats {
        let finished: u64 = self.ends.iter().map(|&n| u64::from(n)).sum();
        let mean = |total: u64| Duration::from_micros(total.checked_div(finished).unwrap_or(0));
        EngineStats {
            total_runs: u64::from(self.total_runs),
            rejected_runs: u64::from(self.rejected_runs),
            completed_runs: u64::from(self.ends[0]),
            failed_runs: u64::from(self.ends[1]),
            timed_out_runs: u64::from(self.ends[2]),
            cancelled_runs: u64::from(self.ends[3]),
            guardrail_tripped_runs: u64::from(self.ends[4]),
            active_runs: 0,
            avg_queue_wait: mean(self.queue_total_us),
            max_queue_wait: Duration::from_micros(self.max_queue_us),
            avg_execution_time: mean(self.exec_total_us),
            max_execution_time: Duration::from_micros(self.max_exec_us),
            events_delivered: self.events_delivered,
            events_dropped: self.events_dropped,
            history_len: 0,
        }
    }
}

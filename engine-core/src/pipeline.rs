//! [`Pipeline`]: a sequence of agent steps run as one run, each step a sub-agent, with a
//! `progress_update` per step and the steps' outcomes in the run's outcome.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::agent::{Agent, BoxError};
use crate::event::AgentEvent;
use crate::outcome::{RunEnd, StepOutcome};
use crate::run::control::RunControl;
use crate::run::{RunContext, SubAgentCall};
use crate::sync::lock;

/// Where a step's input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepInput {
    /// The answer of the nearest earlier step that completed, or the pipeline's input for the
    /// first step (or when no earlier step completed).
    Previous,
    /// This text.
    Given(String),
}

/// One step of a [`Pipeline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineStep {
    agent: String,
    input: StepInput,
    timeout: Option<Duration>,
}

impl PipelineStep {
    /// Runs the registered agent `agent` on the previous step's answer.
    pub fn new(agent: impl Into<String>) -> Self {
        Self {
            agent: agent.into(),
            input: StepInput::Previous,
            timeout: None,
        }
    }
    /// Gives the step this input instead of the previous answer.
    #[must_use]
    pub fn input(mut self, input: impl Into<String>) -> Self {
        self.input = StepInput::Given(input.into());
        self
    }
    /// Ends the step `timed_out` after `limit` (inside the run's own timeout).
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }
    /// The step's agent.
    pub fn agent(&self) -> &str {
        &self.agent
    }
}

/// Agent steps run in order as one run
/// ([`UserExecutionEngine::spawn_pipeline`](crate::UserExecutionEngine::spawn_pipeline)).
///
/// Each step is a sub-agent of the run (framed by `sub_agent_started` / `sub_agent_completed`)
/// and is announced by a `progress_update` (step k of n). The pipeline stops at the first step
/// that does not complete, unless [`continue_on_error`](Self::continue_on_error); the run's
/// answer is the last completed step's answer, streamed as one `answer_delta` when the
/// pipeline ends, and [`RunOutcome::steps`](crate::RunOutcome) lists every step.
///
/// ```
/// use std::time::Duration;
/// use engine_core::{Pipeline, PipelineStep};
///
/// let pipeline = Pipeline::new([
///     PipelineStep::new("triage"),
///     PipelineStep::new("data").timeout(Duration::from_secs(5)),
///     PipelineStep::new("reporting").input("summarise for the user"),
/// ])
/// .continue_on_error(true);
/// assert_eq!(pipeline.steps().len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    steps: Vec<PipelineStep>,
    continue_on_error: bool,
}

impl Pipeline {
    /// Most steps a pipeline may have.
    pub const MAX_STEPS: usize = 64;

    /// A pipeline of `steps`, stopping at the first failure.
    pub fn new(steps: impl IntoIterator<Item = PipelineStep>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
            continue_on_error: false,
        }
    }
    /// Whether to go on with the next steps after a step fails, times out or dies.
    #[must_use]
    pub fn continue_on_error(mut self, yes: bool) -> Self {
        self.continue_on_error = yes;
        self
    }
    /// The steps.
    pub fn steps(&self) -> &[PipelineStep] {
        &self.steps
    }
}

/// The name a pipeline run carries as its agent.
pub(crate) const PIPELINE_AGENT: &str = "pipeline";

/// Runs a pipeline as the run's top-level agent.
pub(crate) struct PipelineAgent {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) control: Arc<RunControl>,
}

#[async_trait]
impl Agent for PipelineAgent {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let steps = self.pipeline.steps();
        let of = u32::try_from(steps.len()).unwrap_or(u32::MAX);
        let mut previous = input.to_owned();
        let mut answer: Option<String> = None;
        let mut failure: Option<String> = None;
        for (k, step) in steps.iter().enumerate() {
            let name: Arc<str> = Arc::from(step.agent.as_str());
            if failure.is_some() && !self.pipeline.continue_on_error {
                lock(&self.control.steps).push(StepOutcome::new(name, None));
                continue;
            }
            let number = u32::try_from(k + 1).unwrap_or(u32::MAX);
            ctx.emit(AgentEvent::ProgressUpdate {
                step: number,
                of,
                agent_name: Arc::clone(&name),
            })
            .await;
            let step_input = match &step.input {
                StepInput::Given(text) => text.clone(),
                StepInput::Previous => previous.clone(),
            };
            let mut call = SubAgentCall::new(step.agent.as_str(), step_input);
            if let Some(limit) = step.timeout {
                call = call.timeout(limit);
            }
            let end = match ctx.run_agents(vec![call], 1).await.pop() {
                Some(Ok(text)) => {
                    previous.clone_from(&text);
                    answer = Some(text.clone());
                    RunEnd::Completed { answer: text }
                }
                Some(Err(e)) => {
                    failure.get_or_insert_with(|| format!("step {number} of {of}: {e}"));
                    e.to_end()
                }
                None => RunEnd::Cancelled {
                    reason: "the step did not run".into(),
                },
            };
            lock(&self.control.steps).push(StepOutcome::new(name, Some(end)));
        }
        let answer = match (answer, failure) {
            (Some(answer), Some(_)) if self.pipeline.continue_on_error => answer,
            (_, Some(failure)) => return Err(failure.into()),
            (Some(answer), None) => answer,
            (None, None) => String::new(),
        };
        // The steps are sub-agents, whose streams stay inside the run: the pipeline streams
        // its answer itself, in one piece, so that its deltas add up to its result as any
        // streamed run's do.
        ctx.stream(answer.clone()).await;
        Ok(answer)
    }
}

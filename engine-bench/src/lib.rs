//! The benchmarks of the workspace (`benches/`, run by `cargo xtask bench`) and the agents and
//! set-up they share. A crate of their own so that they build tokio as production does: the
//! test suites' `test-util` feature (a paused, mockable clock) puts a lock on every
//! `Instant::now` of the runtime and the engine, which the benchmarks must not measure.
//!
//! ```
//! // The scenario of the instruction and allocation rows: 10 trivial runs through one engine.
//! assert_eq!(engine_bench::trivial_runs(true, 10), 60);
//! ```

use std::sync::Arc;

use engine_core::{
    async_trait, Agent, AgentRegistry, BoxError, RunContext, SubAgentCall, UserExecutionContext,
    UserId,
};
use engine_factory::{EngineHandle, ExecutionEngineFactory, FactoryConfig};
use serde_json::json;

use engine_tests::EchoTool;

/// Returns at once: a run of 2 events (started, completed).
#[derive(Debug, Default)]
pub struct NoopAgent;

#[async_trait]
impl Agent for NoopAgent {
    async fn run(&mut self, _ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        Ok(String::new())
    }
}

/// Thinks N times: a run of N + 2 events. Input `N` emits back to back; `N@P+O` first waits
/// O ms, then waits P ms between thoughts (a paced load).
#[derive(Debug, Default)]
pub struct BurstAgent;

#[async_trait]
impl Agent for BurstAgent {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let (n, pace) = input.split_once('@').unwrap_or((input, ""));
        let n: usize = n.parse()?;
        let (pace, offset) = pace.split_once('+').unwrap_or((pace, "0"));
        let pace = std::time::Duration::from_millis(pace.parse().unwrap_or(0));
        tokio::time::sleep(std::time::Duration::from_millis(offset.parse()?)).await;
        for _ in 0..n {
            ctx.think("step").await;
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
        Ok(String::new())
    }
}

/// A trivial tool: returns `true`.
#[derive(Debug, Default)]
pub struct NoopTool;

#[async_trait]
impl engine_core::Tool for NoopTool {
    async fn call(
        &self,
        _args: serde_json::Value,
        _ctx: &engine_core::ToolContext,
    ) -> Result<serde_json::Value, BoxError> {
        Ok(serde_json::Value::Bool(true))
    }
}

/// A trivial tool-calling run of 6 events: started, thinking, tool_executing, tool_completed,
/// thinking, completed.
#[derive(Debug, Default)]
pub struct SixEventAgent;

#[async_trait]
impl Agent for SixEventAgent {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        ctx.think("a").await;
        ctx.call_tool("noop", json!(1)).await?;
        ctx.think("b").await;
        Ok(String::new())
    }
}

/// A supervisor run: four `six` sub-agents at once.
#[derive(Debug, Default)]
pub struct FanOutAgent;

#[async_trait]
impl Agent for FanOutAgent {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        let calls = (0..4).map(|_| SubAgentCall::new("six", "")).collect();
        for r in ctx.run_agents(calls, 4).await {
            r?;
        }
        Ok(String::new())
    }
}

/// Hands the run off to `six` (the handoff row: compare with [`SubSixAgent`]).
#[derive(Debug, Default)]
pub struct HandToSixAgent;

#[async_trait]
impl Agent for HandToSixAgent {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        Ok(ctx.handoff("six", "")?)
    }
}

/// Runs `six` as its sub-agent and reports back.
#[derive(Debug, Default)]
pub struct SubSixAgent;

#[async_trait]
impl Agent for SubSixAgent {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        ctx.run_agent("six", "").await?;
        Ok(String::new())
    }
}

/// Registry with agents `noop`, `burst`, `six`, `fanout4`, `six_guarded` (`six` behind a
/// blocking input guardrail of trivial code), `hand_to_six` and `sub_six`, and the tools
/// `echo` and `noop`.
pub fn bench_registry() -> AgentRegistry {
    use engine_core::{Check, InputGuardrail, Verdict};
    let trivial = InputGuardrail::new(
        "trivial",
        Check::code(|input| {
            if input.checked.text().len() > 10_000 {
                Verdict::trip("too long")
            } else {
                Verdict::Pass
            }
        }),
    );
    AgentRegistry::builder()
        .agent("noop", || NoopAgent)
        .agent("burst", || BurstAgent)
        .agent("six", || SixEventAgent)
        .agent("six_guarded", || SixEventAgent)
        .guardrail_for("six_guarded", trivial)
        .agent("hand_to_six", || HandToSixAgent)
        .handoffs("hand_to_six", ["six"])
        .agent("sub_six", || SubSixAgent)
        .agent("fanout4", || FanOutAgent)
        .tool("echo", EchoTool)
        .tool("noop", NoopTool)
        .build()
        .unwrap_or_else(|e| unreachable!("static bench registry: {e}"))
}

/// The benchmarks' factory settings: 64 runs at once per engine, 10,000 queued, parallel
/// threads, 10 engines per user, `subscriber_buffer` events per subscriber.
pub fn bench_config(subscriber_buffer: usize) -> FactoryConfig {
    let engine = engine_core::EngineConfig::builder()
        .max_concurrent_runs(64)
        .max_queued_runs(10_000)
        .multitask(engine_core::MultitaskPolicy::Parallel)
        .build()
        .unwrap_or_else(|e| unreachable!("{e}"));
    FactoryConfig::builder()
        .max_engines_per_user(10)
        .subscriber_buffer(subscriber_buffer)
        .engine(engine)
        .build()
        .unwrap_or_else(|e| unreachable!("{e}"))
}

/// A factory for benchmarks: up to 10 engines per user, 64 concurrent runs per engine and
/// room for 10,000 more; runs of one thread run side by side (`parallel`), so the benchmarks
/// measure the engine's run path, not a thread's queue.
pub fn bench_factory(subscriber_buffer: usize) -> ExecutionEngineFactory {
    ExecutionEngineFactory::new(bench_config(subscriber_buffer), bench_registry()).expect("factory")
}

/// `n` users named `bench-user-<i>`, each with a root context.
pub fn bench_users(n: usize) -> Vec<UserExecutionContext> {
    (0..n)
        .map(|i| {
            UserExecutionContext::new(format!("bench-user-{i:06}"), "thread", "run-0")
                .unwrap_or_else(|e| unreachable!("{e}"))
        })
        .collect()
}

/// One engine per user, plus the user ids.
pub fn bench_engines(
    factory: &ExecutionEngineFactory,
    users: &[UserExecutionContext],
) -> Vec<(UserId, EngineHandle)> {
    users
        .iter()
        .map(|c| {
            let e = factory
                .create_for_user(c)
                .unwrap_or_else(|e| unreachable!("{e}"));
            (c.user_id().clone(), e)
        })
        .collect()
}

/// The trivial-run scenario of the instruction and allocation counts: `n` six-event runs,
/// one after another on a current-thread runtime, through one engine with a reading
/// subscriber (`ours`), or as `n` raw-tokio tasks sending six envelopes to a consumer
/// (`baseline`). Returns the events read.
pub fn trivial_runs(ours: bool, n: usize) -> usize {
    trivial_runs_of(if ours { Some("six") } else { None }, n)
}

/// [`trivial_runs`] of the agent `agent` (`None`: the raw-tokio baseline).
pub fn trivial_runs_of(agent: Option<&str>, n: usize) -> usize {
    use engine_core::{AgentEvent, EventEnvelope, ThreadId};
    use tokio::sync::mpsc;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let users = bench_users(1);
        if let Some(agent) = agent {
            let factory = bench_factory(8192);
            let mut sub = factory.subscribe(users[0].user_id());
            let engines = bench_engines(&factory, &users);
            let reader = tokio::spawn(async move {
                let mut got = 0usize;
                while sub.recv().await.is_some() {
                    got += 1;
                }
                got
            });
            for _ in 0..n {
                let ctx = users[0].new_run();
                engines[0].1.execute(&ctx, agent, "").await.expect("ran");
            }
            drop(engines);
            factory.shutdown().await;
            reader.await.expect("reader")
        } else {
            let (tx, mut rx) = mpsc::channel::<Arc<EventEnvelope>>(8192);
            let reader = tokio::spawn(async move {
                let mut got = 0usize;
                while rx.recv().await.is_some() {
                    got += 1;
                }
                got
            });
            let user = users[0].user_id().clone();
            let thread = ThreadId::new("thread").expect("id");
            for _ in 0..n {
                let ctx = Arc::new(users[0].new_run());
                let tx = tx.clone();
                let user = user.clone();
                let thread = thread.clone();
                tokio::spawn(async move {
                    for seq in 1..=6 {
                        let e = EventEnvelope {
                            user_id: user.clone(),
                            thread_id: thread.clone(),
                            run_id: ctx.run_id().clone(),
                            request_id: ctx.request_id().clone(),
                            seq,
                            timestamp_us: 0,
                            event: AgentEvent::AgentThinking {
                                reasoning: "step".into(),
                            },
                        };
                        let _ = tx.send(Arc::new(e)).await;
                    }
                })
                .await
                .expect("task");
            }
            drop(tx);
            reader.await.expect("reader")
        }
    })
}

/// Runs across users on a multi-thread runtime with 2 workers (the `runs_one_engine` and
/// `runs_1000_users` rows, and the allocator rows, which build it in two binaries that differ
/// only in their global allocator): one engine per user with a counting subscriber each.
pub struct RunsAcrossUsers {
    rt: tokio::runtime::Runtime,
    factory: ExecutionEngineFactory,
    users: Vec<UserExecutionContext>,
    engines: Arc<Vec<(UserId, EngineHandle)>>,
    received: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for RunsAcrossUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunsAcrossUsers")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl RunsAcrossUsers {
    /// `users` users, each with an engine and a subscriber task counting its events.
    pub fn new(users: usize) -> Self {
        Self::with_factory(users, |_| bench_factory(4096))
    }

    /// As [`new`](Self::new), with the factory `make` builds on the runtime the runs will use
    /// (a factory whose seams have a run store, which needs the runtime to open).
    pub fn with_factory(
        users: usize,
        make: impl FnOnce(&tokio::runtime::Runtime) -> ExecutionEngineFactory,
    ) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let factory = make(&rt);
        let users = bench_users(users);
        let received = Arc::new(AtomicU64::new(0));
        for c in &users {
            let mut sub = factory.subscribe(c.user_id());
            let received = Arc::clone(&received);
            rt.spawn(async move {
                while sub.recv().await.is_some() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let engines = Arc::new(bench_engines(&factory, &users));
        Self {
            rt,
            factory,
            users,
            engines,
            received,
        }
    }

    /// The runtime the runs run on (2 workers).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// The factory.
    pub fn factory(&self) -> &ExecutionEngineFactory {
        &self.factory
    }

    /// The users' root contexts.
    pub fn users(&self) -> &[UserExecutionContext] {
        &self.users
    }

    /// The users' engines (same index as [`users`](Self::users)).
    pub fn engines(&self) -> Arc<Vec<(UserId, EngineHandle)>> {
        Arc::clone(&self.engines)
    }

    /// `rounds` batches of `runs` six-event runs (run `i` for user `i % users`, contexts made
    /// beforehand: that is the caller's work), each batch awaited until every delivered event
    /// reached its subscriber. The batches run as a task on a worker; returns their time.
    pub fn measure(&self, runs: usize, rounds: u64) -> std::time::Duration {
        use std::sync::atomic::Ordering;
        let n = self.users.len();
        let batches: Vec<Vec<UserExecutionContext>> = (0..rounds)
            .map(|_| (0..runs).map(|i| self.users[i % n].new_run()).collect())
            .collect();
        let (engines, received) = (Arc::clone(&self.engines), Arc::clone(&self.received));
        self.rt.block_on(async move {
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                for batch in batches {
                    let before = received.load(Ordering::Relaxed);
                    let handles: Vec<_> = batch
                        .iter()
                        .enumerate()
                        .map(|(i, ctx)| {
                            engines[i % n]
                                .1
                                .spawn(ctx, "six", "")
                                .unwrap_or_else(|e| unreachable!("{e}"))
                        })
                        .collect();
                    let mut delivered = 0;
                    for h in handles {
                        delivered += h.outcome().await.expect("ran").events_delivered;
                    }
                    // What the engine reports as delivered: events dropped under backpressure
                    // cannot make this wait forever.
                    while received.load(Ordering::Relaxed) < before + delivered {
                        tokio::task::yield_now().await;
                    }
                }
                start.elapsed()
            })
            .await
            .expect("runs")
        })
    }
}

impl Drop for RunsAcrossUsers {
    fn drop(&mut self) {
        self.engines = Arc::new(Vec::new());
        self.rt.block_on(self.factory.shutdown());
    }
}

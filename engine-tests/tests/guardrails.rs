//! Guardrails through the public API: the exact events of each kind and mode, the three
//! guarantees under a multi-thread runtime with the guardrail's and the agent's timing
//! randomised (1,000 runs each), failures that fail closed (or open, as configured), and an
//! agent run as a guardrail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_core::{
    async_trait, AgentEvent, AgentRegistryBuilder, BoxError, Check, EngineConfig, EventEnvelope,
    GuardrailCheck, GuardrailInput, GuardrailKind, InputGuardrail, MultitaskPolicy,
    OutputGuardrail, RetractCause, RunId, RunOutcome, RunStatus, Tool, ToolContext, ToolGuardrail,
    ToolStatus, TripAction, UserExecutionContext, Verdict,
};
use engine_factory::{EngineHandle, ExecutionEngineFactory, FactoryConfig, Subscription};
use engine_tests::{by_run, check_run, drain, script_registry_builder, trips_on, Observations};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// One user's engine and subscription over a registry.
struct Setup {
    _factory: ExecutionEngineFactory,
    engine: EngineHandle,
    sub: Subscription,
    ctx: UserExecutionContext,
}

fn setup(builder: AgentRegistryBuilder) -> Setup {
    let engine = EngineConfig::builder()
        .max_concurrent_runs(64)
        .max_queued_runs(10_000)
        .multitask(MultitaskPolicy::Parallel)
        .build()
        .unwrap();
    let config = FactoryConfig::builder()
        .subscriber_buffer(65_536)
        .engine(engine)
        .build()
        .unwrap();
    let factory = ExecutionEngineFactory::new(config, builder.build().unwrap()).unwrap();
    let ctx = UserExecutionContext::new("alice", "thread", "run-0").unwrap();
    let sub = factory.subscribe(ctx.user_id());
    let engine = factory.create_for_user(&ctx).unwrap();
    Setup {
        _factory: factory,
        engine,
        sub,
        ctx,
    }
}

impl Setup {
    /// One run of `agent` on `input`: its outcome and events (checked with `check_run`).
    async fn run(&mut self, agent: &str, input: &str) -> (RunOutcome, Vec<EventEnvelope>) {
        let ctx = self.ctx.new_run();
        let outcome = self.engine.execute(&ctx, agent, input).await.unwrap();
        let events = drain(&mut self.sub);
        check_run(&events).unwrap_or_else(|e| panic!("{e}: {events:#?}"));
        (outcome, events)
    }
}

fn kinds(events: &[EventEnvelope]) -> Vec<&'static str> {
    events.iter().map(|e| e.event.kind()).collect()
}

fn trip_of(events: &[EventEnvelope]) -> (&str, GuardrailKind, &str, TripAction) {
    events
        .iter()
        .find_map(|e| match &e.event {
            AgentEvent::GuardrailTripped {
                guardrail,
                kind,
                reason,
                action,
                ..
            } => Some((&**guardrail, *kind, reason.as_str(), *action)),
            _ => None,
        })
        .expect("a guardrail_tripped event")
}

fn deltas(events: &[EventEnvelope]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::AnswerDelta { delta } => Some(delta.as_str()),
            _ => None,
        })
        .collect()
}

fn base() -> AgentRegistryBuilder {
    script_registry_builder(&Arc::new(Observations::default()))
}

// ---- exact events of each kind and mode ----

#[tokio::test]
async fn a_blocking_input_trip_ends_the_run_before_the_agent() {
    let mut s = setup(base());
    let (outcome, events) = s
        .run("script", "say:hi;tool:echo;think:forbidden_input")
        .await;
    assert_eq!(
        kinds(&events),
        ["agent_started", "guardrail_tripped", "agent_completed"]
    );
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    let (name, kind, reason, action) = trip_of(&events);
    assert_eq!(
        (name, kind, action),
        (
            "no_forbidden_input",
            GuardrailKind::Input,
            TripAction::EndRun
        )
    );
    assert_eq!(reason, "the text contains forbidden_input");
    assert_eq!(
        outcome.error(),
        Some("input guardrail `no_forbidden_input` tripped: the text contains forbidden_input")
    );
    let AgentEvent::AgentCompleted { status, error, .. } = &events[2].event else {
        unreachable!()
    };
    assert_eq!(*status, RunStatus::GuardrailTripped);
    assert!(error.as_deref().unwrap().contains("no_forbidden_input"));
    let json = serde_json::to_value(&events[1].event).unwrap();
    assert_eq!(
        json,
        json!({"type": "guardrail_tripped", "guardrail": "no_forbidden_input", "kind": "input",
               "reason": "the text contains forbidden_input", "action": "end_run"})
    );
    assert_eq!(s.engine.stats().guardrail_tripped_runs, 1);
}

#[tokio::test]
async fn a_passing_run_is_unchanged_by_guardrails() {
    let mut s = setup(base());
    let (outcome, events) = s.run("script", "say:hi ;tool:echo").await;
    assert_eq!(outcome.status(), RunStatus::Completed);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "answer_delta",
            "tool_executing",
            "tool_completed",
            "answer_delta",
            "agent_completed"
        ]
    );
}

#[tokio::test]
async fn a_parallel_input_trip_cancels_the_agent_and_retracts_its_text() {
    let slow_check = Check::code_async(Delayed {
        ms: 30,
        verdict: Verdict::trip("too risky"),
    });
    let mut s = setup(base().guardrail(InputGuardrail::new("risk", slow_check).parallel()));
    let (outcome, events) = s.run("script", "say:partial ;tool:echo;sleep:1000").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "answer_delta",
            "tool_executing",
            "tool_completed",
            "guardrail_tripped",
            "answer_retracted",
            "agent_completed"
        ]
    );
    assert!(matches!(
        events[5].event,
        AgentEvent::AnswerRetracted {
            cause: RetractCause::GuardrailTripped
        }
    ));
}

#[tokio::test]
async fn an_agent_that_answers_before_its_parallel_guardrail_waits_for_it() {
    let check = Check::code_async(Delayed {
        ms: 20,
        verdict: Verdict::Pass,
    });
    let mut s = setup(base().guardrail(InputGuardrail::new("slow_pass", check).parallel()));
    let (outcome, _) = s.run("script", "answer:quick").await;
    assert_eq!(outcome.result(), Some("quick"));
    let check = Check::code_async(Delayed {
        ms: 20,
        verdict: Verdict::trip("no"),
    });
    let mut s = setup(base().guardrail(InputGuardrail::new("slow_trip", check).parallel()));
    let (outcome, events) = s.run("script", "answer:quick").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert_eq!(
        kinds(&events),
        ["agent_started", "guardrail_tripped", "agent_completed"]
    );
}

#[tokio::test]
async fn an_output_guardrail_in_hold_mode_shows_the_answer_only_once_it_passed() {
    let hold = OutputGuardrail::new("no_refunds", trips_on("refund"));
    let mut s = setup(base().guardrail(hold));
    let (outcome, events) = s.run("script", "say:Hello ;say:there ;tool:echo").await;
    assert_eq!(outcome.status(), RunStatus::Completed);
    // Held back while the agent streamed; released at once, in one piece, when it passed.
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "tool_executing",
            "tool_completed",
            "answer_delta",
            "agent_completed"
        ]
    );
    assert_eq!(deltas(&events), outcome.result().unwrap());
    let (outcome, events) = s.run("script", "say:your refund ;say:is on its way").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert_eq!(
        kinds(&events),
        ["agent_started", "guardrail_tripped", "agent_completed"],
        "nothing of a tripped answer was shown"
    );
    assert_eq!(trip_of(&events).1, GuardrailKind::Output);
}

#[tokio::test]
async fn an_output_guardrail_in_stream_mode_retracts_what_was_streamed() {
    let mut s = setup(base());
    let (outcome, events) = s.run("script", "say:this is ;say:forbidden_output").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "answer_delta",
            "answer_delta",
            "guardrail_tripped",
            "answer_retracted",
            "agent_completed"
        ]
    );
    // An answer that trips without having streamed retracts nothing.
    let (_, events) = s.run("script", "answer:forbidden_output").await;
    assert_eq!(
        kinds(&events),
        ["agent_started", "guardrail_tripped", "agent_completed"]
    );
}

#[tokio::test]
async fn a_tool_input_guardrail_denies_one_call_or_ends_the_run() {
    let observed = Arc::new(Observations::default());
    let counter = Counter::default();
    let builder = script_registry_builder(&observed)
        .tool("probe", counter.clone())
        .guardrail_for(
            "assistant",
            ToolGuardrail::input("no_bad_args", trips_on("\"bad\"")),
        );
    let mut s = setup(builder);
    // `deny_call` (the script registry's guardrail for every agent): the run goes on.
    let (outcome, events) = s
        .run("script", r#"tool:probe:{"x":"forbidden_arg"};tool:echo"#)
        .await;
    assert_eq!(outcome.status(), RunStatus::Completed);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "tool_executing",
            "guardrail_tripped",
            "tool_completed",
            "tool_executing",
            "tool_completed",
            "agent_completed"
        ]
    );
    assert_eq!(trip_of(&events).3, TripAction::DenyCall);
    let AgentEvent::ToolCompleted { status, error, .. } = &events[3].event else {
        unreachable!()
    };
    assert_eq!(*status, ToolStatus::GuardrailDenied);
    assert!(error.as_deref().unwrap().contains("no_forbidden_arg"));
    assert!(outcome.result().unwrap().contains("probe!guardrail"));
    // End the run (the default), for the agent `assistant` only.
    let (outcome, events) = s
        .run("assistant", r#"tool:probe:{"bad":1};tool:echo;say:never"#)
        .await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "tool_executing",
            "guardrail_tripped",
            "tool_completed",
            "agent_completed"
        ]
    );
    let (_, _, _, action) = trip_of(&events);
    assert_eq!(action, TripAction::EndRun);
    // `script` has no such guardrail: the same call runs.
    let (outcome, _) = s.run("script", r#"tool:probe:{"bad":1}"#).await;
    assert_eq!(outcome.status(), RunStatus::Completed);
    assert_eq!(counter.calls(), 1, "only the unguarded call ran");
}

#[tokio::test]
async fn a_tool_output_guardrail_withholds_the_result_or_ends_the_run() {
    let leak = ToolGuardrail::output("no_user_leak", trips_on("\"user\""));
    let mut s = setup(base().guardrail_for("script", leak.clone().deny_call()));
    let (outcome, events) = s.run("script", "tool:echo;think:after").await;
    assert_eq!(outcome.status(), RunStatus::Completed);
    let AgentEvent::ToolCompleted { status, result, .. } = &events[3].event else {
        panic!("{events:#?}")
    };
    assert_eq!(
        (*status, result.is_none()),
        (ToolStatus::GuardrailDenied, true)
    );
    assert_eq!(trip_of(&events).1, GuardrailKind::ToolOutput);
    let mut s = setup(base().guardrail_for("script", leak));
    let (outcome, events) = s.run("script", "tool:echo;think:after").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "tool_executing",
            "guardrail_tripped",
            "tool_completed",
            "agent_completed"
        ]
    );
}

#[tokio::test]
async fn a_tool_guardrail_applies_to_sub_agents_by_their_own_name() {
    // The script agent's sub-agents are `script`: a guardrail for `script` only.
    let g = ToolGuardrail::input("script_only", trips_on("echo"));
    let mut s = setup(base().guardrail_for("script", g));
    let (outcome, events) = s.run("assistant", "tool:echo").await;
    assert_eq!(
        outcome.status(),
        RunStatus::Completed,
        "not for `assistant`"
    );
    assert!(!kinds(&events).contains(&"guardrail_tripped"));
    let (outcome, events) = s.run("assistant", "sub:tool:echo;think:after").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "sub_agent_started",
            "tool_executing",
            "guardrail_tripped",
            "tool_completed",
            "sub_agent_completed",
            "agent_completed"
        ]
    );
    assert_ne!(
        events[3].request_id, events[0].request_id,
        "the sub-agent's trip"
    );
}

// ---- failures fail closed, or open ----

#[tokio::test]
async fn a_guardrail_that_panics_fails_closed_unless_it_fails_open() {
    let panics = || Check::code(|_: &GuardrailInput<'_>| panic!("classifier bug"));
    let mut s = setup(base().guardrail(InputGuardrail::new("buggy", panics())));
    let (outcome, events) = s.run("script", "tool:echo").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    let (_, _, reason, _) = trip_of(&events);
    assert!(
        reason.contains("failed closed") && reason.contains("classifier bug"),
        "{reason}"
    );
    let mut s = setup(base().guardrail(InputGuardrail::new("buggy", panics()).fail_open()));
    let (outcome, _) = s.run("script", "tool:echo").await;
    assert_eq!(outcome.status(), RunStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_guardrail_that_times_out_fails_closed_unless_it_fails_open() {
    let hangs = || {
        Check::code_async(Delayed {
            ms: 3_600_000,
            verdict: Verdict::Pass,
        })
    };
    let mut s = setup(
        base().guardrail(ToolGuardrail::input("hangs", hangs()).timeout(Duration::from_millis(50))),
    );
    let (outcome, events) = s.run("script", "tool:echo").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    let (_, _, reason, _) = trip_of(&events);
    assert!(reason.contains("timed out after 50 ms"), "{reason}");
    let mut s = setup(
        base().guardrail(
            OutputGuardrail::new("hangs", hangs())
                .timeout(Duration::from_millis(50))
                .fail_open(),
        ),
    );
    let (outcome, _) = s.run("script", "say:fine").await;
    assert_eq!(outcome.status(), RunStatus::Completed);
}

#[tokio::test]
async fn a_guardrail_that_errs_fails_closed() {
    struct Broken;
    #[async_trait]
    impl GuardrailCheck for Broken {
        async fn check(&self, _: &GuardrailInput<'_>) -> Result<Verdict, BoxError> {
            Err("moderation service unavailable".into())
        }
    }
    let mut s = setup(base().guardrail(OutputGuardrail::new(
        "moderation",
        Check::code_async(Broken),
    )));
    let (outcome, events) = s.run("script", "answer:hello").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert!(trip_of(&events)
        .2
        .contains("moderation service unavailable"));
}

// ---- an agent as a guardrail ----

#[tokio::test]
async fn an_agent_guardrail_runs_as_a_sub_agent_and_its_answer_decides() {
    let classifier = Check::agent("script", |answer: &str| {
        if answer.contains("UNSAFE") {
            Verdict::trip("the classifier said unsafe")
        } else {
            Verdict::Pass
        }
    });
    // The classifier (the script agent) is given the user's message as its script: a message
    // that makes it answer UNSAFE trips.
    let mut s =
        setup(base().guardrail_for("assistant", InputGuardrail::new("classifier", classifier)));
    let (outcome, events) = s.run("assistant", "answer:UNSAFE").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "sub_agent_started",
            "sub_agent_completed",
            "guardrail_tripped",
            "agent_completed"
        ]
    );
    let (outcome, _) = s.run("assistant", "answer:fine").await;
    assert_eq!(outcome.result(), Some("fine"));
    // A classifier that fails: closed.
    let (outcome, events) = s.run("assistant", "fail:down").await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert!(trip_of(&events).2.contains("down"));
}

#[test]
fn a_guardrail_naming_an_unknown_agent_is_refused_at_build() {
    let e = base()
        .guardrail(InputGuardrail::new(
            "c",
            Check::agent("nobody", |_| Verdict::Pass),
        ))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("nobody"), "{e}");
    let e = base()
        .guardrail_for("nobody", InputGuardrail::new("c", trips_on("x")))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("nobody"), "{e}");
}

// ---- the three guarantees, 1,000 runs each, timing randomised ----

/// Waits `ms` (of the runtime's clock), then answers `verdict`.
struct Delayed {
    ms: u64,
    verdict: Verdict,
}

#[async_trait]
impl GuardrailCheck for Delayed {
    async fn check(&self, _: &GuardrailInput<'_>) -> Result<Verdict, BoxError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(self.verdict.clone())
    }
}

/// A check with random timing (from the message: `jitter:N` yields N times, `wait:N` sleeps N
/// ms) that trips on `trip` in the message; when it trips it takes a ticket from `clock` and
/// records it for the run, just before it returns: the moment the trip becomes known.
struct Randomised {
    clock: Arc<AtomicU64>,
    // ssot-allow: shared-state the test's own record of when each of its runs tripped (one user; read only by the test's assertions)
    trips: Arc<Mutex<HashMap<RunId, u64>>>,
}

#[async_trait]
impl GuardrailCheck for Randomised {
    async fn check(&self, input: &GuardrailInput<'_>) -> Result<Verdict, BoxError> {
        let text = input.checked.text();
        let number = |key: &str| {
            text.split(key)
                .nth(1)
                .map(|rest| {
                    rest.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                })
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        for _ in 0..number("#jitter:") {
            tokio::task::yield_now().await;
        }
        let wait = number("#wait:");
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        if !text.contains("#trip") {
            return Ok(Verdict::Pass);
        }
        let ticket = self.clock.fetch_add(1, Ordering::SeqCst);
        self.trips
            .lock()
            .unwrap()
            .insert(input.context.run_id().clone(), ticket);
        Ok(Verdict::trip("randomised trip"))
    }
}

/// A tool that takes a ticket from the same clock when it starts, per run.
#[derive(Clone, Default)]
struct Counter {
    clock: Arc<AtomicU64>,
    // ssot-allow: shared-state the test's own record of when each of its runs' tool calls started (one user; read only by the test's assertions)
    starts: Arc<Mutex<HashMap<RunId, Vec<u64>>>>,
    total: Arc<AtomicUsize>,
}

impl Counter {
    fn on(clock: &Arc<AtomicU64>) -> Self {
        Self {
            clock: Arc::clone(clock),
            ..Self::default()
        }
    }
    fn calls(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Tool for Counter {
    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, BoxError> {
        let ticket = self.clock.fetch_add(1, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst);
        self.starts
            .lock()
            .unwrap()
            .entry(ctx.context().run_id().clone())
            .or_default()
            .push(ticket);
        Ok(args)
    }
}

/// A random agent script of tool calls, streamed text and waits (yields and short sleeps),
/// and the guardrail's own timing markers (ignored by the script agent as comments: they are
/// given to the `think` command).
fn random_script(rng: &mut impl Rng, trip: bool) -> String {
    let mut script = vec![
        format!("think:#jitter:{}", rng.random_range(0..20)),
        format!("think:#wait:{}", rng.random_range(0..3)),
    ];
    if trip {
        script.push("think:#trip".into());
    }
    for _ in 0..rng.random_range(1..6) {
        script.push(match rng.random_range(0..4) {
            0 => "tool:probe".into(),
            1 => format!("say:w{} ", rng.random_range(0..9)),
            2 => format!("sleep:{}", rng.random_range(0..2)),
            _ => "tool:probe;say:x ".into(),
        });
    }
    script.join(";")
}

/// Runs `n` scripts at once in batches on the setup's engine; returns each run's outcome and
/// events.
async fn run_batch(
    s: &mut Setup,
    scripts: Vec<String>,
) -> Vec<(String, RunOutcome, Vec<EventEnvelope>)> {
    let mut all = Vec::new();
    for chunk in scripts.chunks(100) {
        let mut handles = Vec::new();
        for script in chunk {
            let ctx = s.ctx.new_run();
            handles.push((
                script.clone(),
                s.engine.spawn(&ctx, "script", script.as_str()).unwrap(),
            ));
        }
        let mut outcomes = Vec::new();
        for (script, h) in handles {
            outcomes.push((script, h.outcome().await.unwrap()));
        }
        let mut runs = by_run(&drain(&mut s.sub));
        for (script, outcome) in outcomes {
            let events = runs.remove(&outcome.run_id).expect("events of the run");
            check_run(&events).unwrap_or_else(|e| panic!("{e}: {events:#?}"));
            all.push((script, outcome, events));
        }
    }
    all
}

const RUNS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_input_trip_runs_no_tool_and_streams_no_text() {
    let clock = Arc::new(AtomicU64::new(0));
    let trips = Arc::new(Mutex::new(HashMap::new()));
    let probe = Counter::on(&clock);
    let check = Randomised {
        clock: Arc::clone(&clock),
        trips: Arc::clone(&trips),
    };
    let mut s = setup(
        base()
            .tool("probe", probe.clone())
            .guardrail(InputGuardrail::new("randomised", Check::code_async(check))),
    );
    let mut rng = rand::rngs::SmallRng::seed_from_u64(31);
    let scripts: Vec<String> = (0..RUNS)
        .map(|i| random_script(&mut rng, i % 4 != 0))
        .collect();
    let mut tripped = 0;
    for (script, outcome, events) in run_batch(&mut s, scripts).await {
        if script.contains("#trip") {
            tripped += 1;
            assert_eq!(outcome.status(), RunStatus::GuardrailTripped, "{script}");
            assert_eq!(
                kinds(&events),
                ["agent_started", "guardrail_tripped", "agent_completed"],
                "{script}"
            );
            assert!(
                !probe.starts.lock().unwrap().contains_key(&outcome.run_id),
                "a tool ran: {script}"
            );
        } else {
            assert_eq!(outcome.status(), RunStatus::Completed, "{script}");
        }
    }
    assert_eq!(tripped, RUNS * 3 / 4);
    assert!(probe.calls() > 0, "untripped runs call the tool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_input_trip_cancels_the_agent_and_no_tool_starts_after_it() {
    let clock = Arc::new(AtomicU64::new(0));
    let trips = Arc::new(Mutex::new(HashMap::new()));
    let probe = Counter::on(&clock);
    let check = Randomised {
        clock: Arc::clone(&clock),
        trips: Arc::clone(&trips),
    };
    let mut s = setup(
        base()
            .tool("probe", probe.clone())
            .guardrail(InputGuardrail::new("randomised", Check::code_async(check)).parallel()),
    );
    let mut rng = rand::rngs::SmallRng::seed_from_u64(32);
    let scripts: Vec<String> = (0..RUNS)
        .map(|i| random_script(&mut rng, i % 4 != 0))
        .collect();
    let (mut tools_before_trip, mut tripped) = (0, 0);
    for (script, outcome, events) in run_batch(&mut s, scripts).await {
        if !script.contains("#trip") {
            assert_eq!(outcome.status(), RunStatus::Completed, "{script}");
            continue;
        }
        tripped += 1;
        assert_eq!(outcome.status(), RunStatus::GuardrailTripped, "{script}");
        let trip = trips.lock().unwrap()[&outcome.run_id];
        let starts = probe
            .starts
            .lock()
            .unwrap()
            .get(&outcome.run_id)
            .cloned()
            .unwrap_or_default();
        assert!(
            starts.iter().all(|&t| t < trip),
            "a tool started after the trip was known: {starts:?} vs {trip}: {script}"
        );
        tools_before_trip += starts.len();
        // Nothing of the agent after the trip: the trip is followed only by the closing of
        // what was open, the retraction, and the terminal event.
        let at = events
            .iter()
            .position(|e| e.event.kind() == "guardrail_tripped")
            .unwrap();
        for e in &events[at + 1..] {
            assert!(
                matches!(
                    e.event,
                    AgentEvent::ToolCompleted {
                        status: ToolStatus::Cancelled,
                        ..
                    } | AgentEvent::AnswerRetracted { .. }
                        | AgentEvent::AgentCompleted { .. }
                ),
                "{:?} after the trip: {script}",
                e.event
            );
        }
        let shown = deltas(&events[..at]);
        assert_eq!(
            events.iter().any(|e| e.event.kind() == "answer_retracted"),
            !shown.is_empty(),
            "streamed text is retracted: {script}"
        );
    }
    assert_eq!(tripped, RUNS * 3 / 4);
    assert!(
        tools_before_trip > 0,
        "the timing lets agents call tools before some trips (the race is exercised)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_input_trip_never_runs_the_tool() {
    let clock = Arc::new(AtomicU64::new(0));
    let trips = Arc::new(Mutex::new(HashMap::new()));
    let probe = Counter::on(&clock);
    let denied_probe = Counter::on(&clock);
    let end_run = Randomised {
        clock: Arc::clone(&clock),
        trips: Arc::clone(&trips),
    };
    struct OnMarker(Randomised);
    #[async_trait]
    impl GuardrailCheck for OnMarker {
        async fn check(&self, input: &GuardrailInput<'_>) -> Result<Verdict, BoxError> {
            let v = self.0.check(input).await?;
            // Only calls of the tool named `guarded_probe` trip.
            let engine_core::Checked::ToolCall { tool, .. } = input.checked else {
                return Ok(Verdict::Pass);
            };
            Ok(if tool == "guarded_probe" {
                v
            } else {
                Verdict::Pass
            })
        }
    }
    let mut s = setup(
        base()
            .tool("probe", probe.clone())
            .tool("guarded_probe", denied_probe.clone())
            .guardrail_for(
                "script",
                ToolGuardrail::input("randomised", Check::code_async(OnMarker(end_run))),
            ),
    );
    let mut rng = rand::rngs::SmallRng::seed_from_u64(33);
    let scripts: Vec<String> = (0..RUNS)
        .map(|_| {
            let mut script = random_script(&mut rng, false);
            let args = format!(
                r##"{{"m":"#jitter:{},#wait:{},#trip"}}"##,
                rng.random_range(0..20),
                rng.random_range(0..2)
            );
            // The guarded call somewhere in the script.
            script.push_str(&format!(";tool:guarded_probe:{args};tool:probe"));
            script
        })
        .collect();
    for (script, outcome, events) in run_batch(&mut s, scripts).await {
        assert_eq!(outcome.status(), RunStatus::GuardrailTripped, "{script}");
        let (_, kind, _, _) = trip_of(&events);
        assert_eq!(kind, GuardrailKind::ToolInput);
    }
    assert_eq!(denied_probe.calls(), 0, "a tripped call never ran");
    assert!(probe.calls() > 0);
    // Nor does any tool start after a tool-input trip that ends the run.
    let trips = trips.lock().unwrap();
    for (run, starts) in probe.starts.lock().unwrap().iter() {
        let trip = trips[run];
        assert!(
            starts.iter().all(|&t| t < trip),
            "{run}: {starts:?} vs {trip}"
        );
    }
}

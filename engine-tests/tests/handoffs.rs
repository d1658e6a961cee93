//! Handoffs through the public API: chains, loops against the limit, the input filter, a
//! handoff while an approval is pending, cancellation during a handoff, refusals, and the
//! answering agent's guardrails; every run's events pass `check_run` (one terminal event
//! naming the agent that answered, deltas after the last retraction adding up).

use std::sync::Arc;
use std::time::Duration;

use engine_core::{
    async_trait, Agent, AgentEvent, AgentRegistryBuilder, ApprovalDecision, BoxError, EngineError,
    EventEnvelope, OutputGuardrail, RetractCause, RunContext, RunOutcome, RunStatus, ToolStatus,
    UserExecutionContext,
};
use engine_factory::{EngineHandle, ExecutionEngineFactory, FactoryConfig, Subscription};
use engine_tests::{
    check_run, drain, script_registry_builder, trips_on, Observations, ScriptAgent,
};

struct Setup {
    _factory: ExecutionEngineFactory,
    engine: EngineHandle,
    sub: Subscription,
    ctx: UserExecutionContext,
}

/// The script registry plus `billing` and `refunds` (script agents): `script` may hand off to
/// `billing`, `billing` to `refunds`.
fn registry() -> AgentRegistryBuilder {
    let observed = Arc::new(Observations::default());
    let (b, r) = (Arc::clone(&observed), Arc::clone(&observed));
    script_registry_builder(&observed)
        .agent("billing", move || ScriptAgent::new(Arc::clone(&b)))
        .agent("refunds", move || ScriptAgent::new(Arc::clone(&r)))
        .handoffs("script", ["billing"])
        .handoffs("billing", ["refunds"])
}

fn setup(builder: AgentRegistryBuilder) -> Setup {
    let factory =
        ExecutionEngineFactory::new(FactoryConfig::default(), builder.build().unwrap()).unwrap();
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
    async fn run(&mut self, agent: &str, input: &str) -> (RunOutcome, Vec<EventEnvelope>) {
        let ctx = self.ctx.new_run();
        let outcome = self.engine.execute(&ctx, agent, input).await.unwrap();
        let events = drain(&mut self.sub);
        check_run(&events).unwrap_or_else(|e| panic!("{e}: {events:#?}"));
        (outcome, events)
    }

    /// Receives events until one matches `want`; returns everything received.
    async fn until(&mut self, seen: &mut Vec<EventEnvelope>, want: impl Fn(&AgentEvent) -> bool) {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), self.sub.recv())
                .await
                .expect("the event came")
                .expect("subscribed");
            let hit = want(&e.event);
            seen.push(e);
            if hit {
                return;
            }
        }
    }
}

fn kinds(events: &[EventEnvelope]) -> Vec<&'static str> {
    events.iter().map(|e| e.event.kind()).collect()
}

fn handoffs(events: &[EventEnvelope]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::Handoff { from, to, .. } => Some((from.to_string(), to.to_string())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_chain_of_handoffs_ends_with_the_agent_that_answered() {
    let mut s = setup(registry());
    let (outcome, events) = s
        .run(
            "script",
            "say:let me transfer you ;handoff:billing:think:in billing|handoff:refunds:say:refund done ",
        )
        .await;
    assert_eq!(outcome.status(), RunStatus::Completed);
    assert_eq!(&*outcome.agent_name, "script");
    assert_eq!(&*outcome.answered_by, "refunds");
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "answer_delta",
            "answer_retracted",
            "handoff",
            "agent_thinking",
            "handoff",
            "answer_delta",
            "answer_delta",
            "agent_completed"
        ]
    );
    assert!(matches!(
        events[2].event,
        AgentEvent::AnswerRetracted {
            cause: RetractCause::Handoff
        }
    ));
    assert_eq!(
        handoffs(&events),
        [
            ("script".into(), "billing".into()),
            ("billing".into(), "refunds".into())
        ]
    );
    let AgentEvent::AgentCompleted {
        agent_name, result, ..
    } = &events[8].event
    else {
        unreachable!()
    };
    assert_eq!(&**agent_name, "refunds");
    assert_eq!(result.as_deref(), Some("refund doneanswer for alice []"));
    // Every event of the run carries the run's own request: the agent that answers is the
    // run's top-level agent.
    assert!(events.iter().all(|e| e.request_id == events[0].request_id));
    assert_eq!(
        serde_json::to_value(&events[3].event).unwrap(),
        serde_json::json!({"type": "handoff", "from": "script", "to": "billing"})
    );
}

/// Hands the run to `to` with a reason, ignoring a refusal if `swallow`.
struct Bouncer {
    to: &'static str,
    swallow: bool,
}

#[async_trait]
impl Agent for Bouncer {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let asked = ctx.handoff_with(engine_core::Handoff::to(self.to, input).reason("bounce"));
        match asked {
            Ok(text) => Ok(text),
            Err(_) if self.swallow => Ok("I will answer myself".into()),
            Err(e) => Err(e.into()),
        }
    }
}

fn bouncing(swallow: bool, limit: Option<u32>) -> AgentRegistryBuilder {
    let mut b = registry()
        .agent("ping", move || Bouncer {
            to: "pong",
            swallow,
        })
        .agent("pong", move || Bouncer {
            to: "ping",
            swallow,
        })
        .handoffs("ping", ["pong"])
        .handoffs("pong", ["ping"]);
    if let Some(limit) = limit {
        b = b.max_handoffs(limit);
    }
    b
}

#[tokio::test]
async fn a_handoff_loop_ends_the_run_with_a_clear_error() {
    for swallow in [false, true] {
        let mut s = setup(bouncing(swallow, None));
        let (outcome, events) = s.run("ping", "hello").await;
        assert_eq!(outcome.status(), RunStatus::Failed, "swallow {swallow}");
        let error = outcome.error().unwrap();
        assert!(
            error.contains("limit of 8 handoffs")
                && error.contains(
                    "ping -> pong -> ping -> pong -> ping -> pong -> ping -> pong -> ping -> pong"
                ),
            "{error}"
        );
        assert_eq!(handoffs(&events).len(), 8);
        assert_eq!(
            events.iter().filter(|e| e.event.is_terminal()).count(),
            1,
            "one terminal event"
        );
        let AgentEvent::Handoff { reason, .. } = &events[1].event else {
            panic!("{events:#?}")
        };
        assert_eq!(reason.as_deref(), Some("bounce"));
    }
    let mut s = setup(bouncing(false, Some(0)));
    let (outcome, events) = s.run("ping", "hello").await;
    assert_eq!(outcome.status(), RunStatus::Failed);
    assert!(handoffs(&events).is_empty());
    assert!(outcome.error().unwrap().contains("ping -> pong"));
}

#[tokio::test]
async fn the_target_runs_on_what_its_input_filter_returns() {
    let mut s = setup(registry().handoff_filter("billing", |h| {
        format!(
            "answer:{} handed {} bytes from {} (message {} bytes)",
            h.to,
            h.input.len(),
            h.from,
            h.message.len()
        )
    }));
    let (outcome, _) = s.run("script", "handoff:billing:secret history").await;
    assert_eq!(
        outcome.result(),
        Some("billing handed 14 bytes from script (message 30 bytes)")
    );
}

#[tokio::test]
async fn refused_handoffs_are_typed_errors() {
    let mut s = setup(registry());
    let (outcome, events) = s.run("script", "handoff:refunds:x").await;
    assert_eq!(outcome.status(), RunStatus::Failed);
    assert!(
        outcome.error().unwrap().contains(
            "agent `script` may not hand off to `refunds` (allowed: assistant, billing, script)"
        ),
        "{:?}",
        outcome.error()
    );
    assert!(handoffs(&events).is_empty());
    // A sub-agent reports back; it cannot hand the run off.
    let (outcome, events) = s.run("script", "sub:handoff:billing:x").await;
    assert_eq!(outcome.status(), RunStatus::Completed);
    assert!(
        outcome.result().unwrap().contains("cannot hand off"),
        "{:?}",
        outcome.result()
    );
    assert!(handoffs(&events).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_handoff_while_an_approval_is_pending_closes_the_wait() {
    let mut s = setup(registry());
    let ctx = s.ctx.new_run();
    // The first agent gives up on a call waiting for approval and hands off; the target asks
    // for its own approval.
    let run = s
        .engine
        .spawn(
            &ctx,
            "script",
            "abandon:guarded;handoff:billing:tool:guarded",
        )
        .unwrap();
    let mut seen = Vec::new();
    s.until(&mut seen, |e| {
        matches!(e, AgentEvent::ApprovalRequested { call_id: 2, .. })
    })
    .await;
    assert_eq!(s.engine.pending_approvals(ctx.run_id()), [2]);
    assert_eq!(
        s.engine
            .approve(ctx.run_id(), 1, ApprovalDecision::Approve)
            .unwrap_err(),
        EngineError::UnknownApproval {
            run_id: ctx.run_id().clone(),
            call_id: 1
        }
    );
    s.engine
        .approve(ctx.run_id(), 2, ApprovalDecision::Approve)
        .unwrap();
    let outcome = run.outcome().await.unwrap();
    seen.extend(drain(&mut s.sub));
    check_run(&seen).unwrap_or_else(|e| panic!("{e}: {seen:#?}"));
    assert_eq!(outcome.status(), RunStatus::Completed);
    assert_eq!(&*outcome.answered_by, "billing");
    assert_eq!(
        kinds(&seen)[..6],
        [
            "agent_started",
            "tool_executing",
            "approval_requested",
            "tool_completed",
            "handoff",
            "tool_executing"
        ]
    );
    assert!(matches!(
        seen[3].event,
        AgentEvent::ToolCompleted {
            call_id: 1,
            status: ToolStatus::Cancelled,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn cancelling_during_a_handoff_ends_the_run_once_naming_the_target() {
    for target in ["wait_cancel", "tool:guarded", "tool:slow"] {
        let mut s = setup(registry());
        let ctx = s.ctx.new_run();
        let run = s
            .engine
            .spawn(&ctx, "script", format!("handoff:billing:{target}"))
            .unwrap();
        let mut seen = Vec::new();
        s.until(&mut seen, |e| matches!(e, AgentEvent::Handoff { .. }))
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        run.cancel();
        let outcome = run.outcome().await.unwrap();
        seen.extend(drain(&mut s.sub));
        check_run(&seen).unwrap_or_else(|e| panic!("{e}: {seen:#?}"));
        // (`wait_cancel` sees the cancellation and returns: still cancelled.)
        assert_eq!(outcome.status(), RunStatus::Cancelled, "{target}");
        assert_eq!(&*outcome.answered_by, "billing");
        let AgentEvent::AgentCompleted { agent_name, .. } = &seen.last().unwrap().event else {
            unreachable!()
        };
        assert_eq!(&**agent_name, "billing");
        assert!(s.engine.pending_approvals(ctx.run_id()).is_empty());
    }
}

#[tokio::test]
async fn the_answering_agent_s_output_guardrail_holds_its_answer() {
    let hold = OutputGuardrail::new("billing_hold", trips_on("card number"));
    let mut s = setup(registry().guardrail_for("billing", hold));
    let (outcome, events) = s
        .run(
            "script",
            "say:one moment ;handoff:billing:say:your balance is 0 ",
        )
        .await;
    assert_eq!(outcome.status(), RunStatus::Completed);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "answer_delta",
            "answer_retracted",
            "handoff",
            "answer_delta",
            "agent_completed"
        ]
    );
    let (outcome, events) = s
        .run("script", "handoff:billing:say:your card number is 4111 ")
        .await;
    assert_eq!(outcome.status(), RunStatus::GuardrailTripped);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "handoff",
            "guardrail_tripped",
            "agent_completed"
        ]
    );
}

//! Chat semantics through the public API: what a second message on a busy thread does under
//! each multitask policy (exact event order), streamed answer text, and tool calls that wait for
//! the user's approval (approve, deny, timeout, cancel and shutdown while waiting, another user's
//! answer refused).

use std::time::Duration;

use engine_core::{
    AgentEvent, ApprovalDecision, EngineConfig, EngineError, EventEnvelope, MultitaskPolicy, RunId,
    RunOptions, RunStatus, UserExecutionContext,
};
use engine_factory::{EngineHandle, ExecutionEngineFactory, FactoryConfig, Subscription};
use engine_tests::{by_run, check_run, drain, script_registry};

fn factory(engine: EngineConfig) -> ExecutionEngineFactory {
    let (registry, _) = script_registry();
    let config = FactoryConfig::builder().engine(engine).build().unwrap();
    ExecutionEngineFactory::new(config, registry).expect("factory")
}

fn setup(
    user: &str,
) -> (
    ExecutionEngineFactory,
    UserExecutionContext,
    Subscription,
    EngineHandle,
) {
    let f = factory(EngineConfig::default());
    let ctx = UserExecutionContext::new(user, "t1", "r0").unwrap();
    let sub = f.subscribe(ctx.user_id());
    let engine = f.create_for_user(&ctx).unwrap();
    (f, ctx, sub, engine)
}

fn with(policy: MultitaskPolicy) -> RunOptions {
    RunOptions::new().multitask(policy)
}

/// `(run index, event kind)` in arrival order, runs numbered by their position in `runs`.
fn timeline(events: &[EventEnvelope], runs: &[&RunId]) -> Vec<(usize, &'static str)> {
    events
        .iter()
        .filter_map(|e| {
            let i = runs.iter().position(|r| **r == e.run_id)?;
            Some((i, e.event.kind()))
        })
        .collect()
}

/// Position of the first event of `kind` of run `i` in a timeline.
fn at(timeline: &[(usize, &str)], i: usize, kind: &str) -> usize {
    timeline
        .iter()
        .position(|&(r, k)| r == i && k == kind)
        .unwrap_or_else(|| panic!("run {i} has no {kind}: {timeline:?}"))
}

#[tokio::test(start_paused = true)]
async fn enqueue_runs_a_threads_messages_one_after_another_in_order() {
    let (_f, ctx, mut sub, engine) = setup("alice");
    let (a, b, c) = (ctx.new_run(), ctx.new_run(), ctx.new_run());
    let other = UserExecutionContext::new("alice", "t2", "r-other").unwrap();
    let enqueue = with(MultitaskPolicy::Enqueue);
    let ha = engine
        .spawn_with(&a, "script", "sleep:100;think:a", enqueue)
        .unwrap();
    let hb = engine
        .spawn_with(&b, "script", "sleep:10;think:b", enqueue)
        .unwrap();
    let hc = engine.spawn_with(&c, "script", "think:c", enqueue).unwrap();
    let ho = engine
        .spawn_with(&other, "script", "sleep:50;think:o", enqueue)
        .unwrap();
    for h in [ha, hb, hc, ho] {
        assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Completed);
    }
    let events = drain(&mut sub);
    let t = timeline(
        &events,
        &[a.run_id(), b.run_id(), c.run_id(), other.run_id()],
    );
    // One thread: a's terminal, then b starts; b's terminal, then c starts.
    assert!(
        at(&t, 0, "agent_completed") < at(&t, 1, "agent_started"),
        "{t:?}"
    );
    assert!(
        at(&t, 1, "agent_completed") < at(&t, 2, "agent_started"),
        "{t:?}"
    );
    // The other thread ran meanwhile: it started before a ended, and ended before a did.
    assert!(
        at(&t, 3, "agent_started") < at(&t, 0, "agent_completed"),
        "{t:?}"
    );
    assert!(
        at(&t, 3, "agent_completed") < at(&t, 0, "agent_completed"),
        "{t:?}"
    );
    for run in by_run(&events).values() {
        check_run(run).unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn reject_refuses_a_second_message_without_any_event() {
    let (_f, ctx, mut sub, engine) = setup("alice");
    let (a, b) = (ctx.new_run(), ctx.new_run());
    let ha = engine
        .spawn_with(&a, "script", "sleep:100", with(MultitaskPolicy::Reject))
        .unwrap();
    let err = engine
        .spawn_with(&b, "script", "think:b", with(MultitaskPolicy::Reject))
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::ThreadBusy { thread_id, live_runs: 1 } if thread_id.as_str() == "t1"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("enqueue"),
        "says what to do: {err}"
    );
    // Another thread is not busy.
    let other = UserExecutionContext::new("alice", "t2", "r-other").unwrap();
    let ho = engine
        .spawn_with(&other, "script", "think:o", with(MultitaskPolicy::Reject))
        .unwrap();
    ha.outcome().await.unwrap();
    ho.outcome().await.unwrap();
    let runs = by_run(&drain(&mut sub));
    assert!(
        !runs.contains_key(b.run_id()),
        "the refused run emitted nothing"
    );
    assert_eq!(runs.len(), 2);
    // The thread is free again once its run ended.
    let again = engine.spawn_with(&b, "script", "think:b", with(MultitaskPolicy::Reject));
    assert_eq!(
        again.unwrap().outcome().await.unwrap().status(),
        RunStatus::Completed
    );
}

#[tokio::test(start_paused = true)]
async fn interrupt_cancels_the_live_runs_and_their_terminals_come_first() {
    let (_f, ctx, mut sub, engine) = setup("alice");
    let (a, b, c) = (ctx.new_run(), ctx.new_run(), ctx.new_run());
    let ha = engine
        .spawn(&a, "script", "say:partial ;wait_cancel")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // b waits behind a (enqueue); c interrupts both.
    let hb = engine.spawn(&b, "script", "think:b").unwrap();
    let hc = engine
        .spawn_with(
            &c,
            "script",
            "say:new answer",
            with(MultitaskPolicy::Interrupt),
        )
        .unwrap();
    let (oa, ob, oc) = (
        ha.outcome().await.unwrap(),
        hb.outcome().await.unwrap(),
        hc.outcome().await.unwrap(),
    );
    assert_eq!(oa.status(), RunStatus::Cancelled);
    assert_eq!(ob.status(), RunStatus::Cancelled);
    assert_eq!(oc.status(), RunStatus::Completed);
    let events = drain(&mut sub);
    let t = timeline(&events, &[a.run_id(), b.run_id(), c.run_id()]);
    let c_started = at(&t, 2, "agent_started");
    assert!(at(&t, 0, "agent_completed") < c_started, "{t:?}");
    assert!(at(&t, 1, "agent_completed") < c_started, "{t:?}");
    // a streamed before it was cancelled: its deltas are followed by its one terminal event.
    let runs = by_run(&events);
    let kinds: Vec<_> = runs[a.run_id()].iter().map(|e| e.event.kind()).collect();
    assert_eq!(kinds, ["agent_started", "answer_delta", "agent_completed"]);
    for run in runs.values() {
        check_run(run).unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_engine_default_policy_applies_when_the_request_chooses_none() {
    let f = factory(
        EngineConfig::builder()
            .multitask(MultitaskPolicy::Reject)
            .build()
            .unwrap(),
    );
    let ctx = UserExecutionContext::new("alice", "t1", "r0").unwrap();
    let engine = f.create_for_user(&ctx).unwrap();
    let h = engine.spawn(&ctx.new_run(), "script", "sleep:10").unwrap();
    let busy = engine.spawn(&ctx.new_run(), "script", "sleep:10");
    assert!(matches!(busy, Err(EngineError::ThreadBusy { .. })));
    // Parallel, chosen per request, overrides it.
    let side = engine
        .spawn_with(
            &ctx.new_run(),
            "script",
            "sleep:10",
            with(MultitaskPolicy::Parallel),
        )
        .unwrap();
    h.outcome().await.unwrap();
    side.outcome().await.unwrap();
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

#[tokio::test(start_paused = true)]
async fn streamed_deltas_add_up_to_the_answer_and_stay_with_their_user() {
    let f = factory(EngineConfig::default());
    let users = ["alice", "bob", "carol"];
    let mut subs = Vec::new();
    let mut runs = Vec::new();
    for u in users {
        let ctx = UserExecutionContext::new(u, "t1", "r0").unwrap();
        subs.push(f.subscribe(ctx.user_id()));
        let engine = f.create_for_user(&ctx).unwrap();
        let script = format!("say:{u}:;sleep:1;say:hello;sleep:1;say:,world");
        let h = engine.spawn(&ctx, "script", script).unwrap();
        runs.push((engine, h));
    }
    for ((_engine, h), (u, sub)) in runs.into_iter().zip(users.iter().zip(&mut subs)) {
        let out = h.outcome().await.unwrap();
        let answer = out.result().unwrap().to_owned();
        // The script answers with its streamed text and more: the engine streamed the rest.
        assert!(answer.starts_with(&format!("{u}:hello,world")), "{answer}");
        let events = drain(sub);
        assert!(
            events.iter().all(|e| e.user_id.as_str() == *u),
            "cross-user delta"
        );
        assert_eq!(deltas(&events), answer);
        assert!(!deltas(&events).contains(users.iter().find(|o| *o != u).unwrap()));
        check_run(&events).unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_that_contradicts_the_stream_fails_the_run() {
    let (_f, ctx, mut sub, engine) = setup("alice");
    let out = engine
        .execute(&ctx, "script", "say:yes;answer:no")
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Failed);
    assert!(
        out.error().unwrap().contains("streamed"),
        "{:?}",
        out.error()
    );
    let events = drain(&mut sub);
    let kinds: Vec<_> = events.iter().map(|e| e.event.kind()).collect();
    assert_eq!(
        kinds,
        [
            "agent_started",
            "answer_delta",
            "agent_error",
            "agent_completed"
        ]
    );
}

/// The events of one approval, as kinds plus the decision and the tool status.
fn approval_story(events: &[EventEnvelope]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.event {
            AgentEvent::ApprovalDecided { outcome, .. } => format!("approval_decided:{outcome:?}"),
            AgentEvent::ToolCompleted { status, .. } => format!("tool_completed:{status:?}"),
            other => other.kind().to_owned(),
        })
        .collect()
}

async fn wait_for_request(engine: &EngineHandle, run: &RunId) -> u32 {
    for _ in 0..1000 {
        if let Some(&call) = engine.pending_approvals(run).first() {
            return call;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("run {run} never asked for approval");
}

#[tokio::test(start_paused = true)]
async fn an_approved_call_runs_the_tool() {
    let (_f, ctx, mut sub, engine) = setup("alice");
    let h = engine
        .spawn(&ctx, "script", r#"tool:guarded:{"x":1}"#)
        .unwrap();
    let call = wait_for_request(&engine, ctx.run_id()).await;
    assert_eq!(call, 1);
    engine
        .approve(ctx.run_id(), call, ApprovalDecision::Approve)
        .unwrap();
    let out = h.outcome().await.unwrap();
    assert!(
        out.result().unwrap().contains(r#"guarded={"echo":{"x":1}"#),
        "{out:?}"
    );
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(
        approval_story(&events),
        [
            "agent_started",
            "tool_executing",
            "approval_requested",
            "approval_decided:Approved",
            "tool_completed:Success",
            "agent_completed"
        ]
    );
    // The decision is spent.
    let again = engine.approve(ctx.run_id(), call, ApprovalDecision::Approve);
    assert!(matches!(again, Err(EngineError::UnknownRun { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_denied_call_gives_the_agent_a_tool_error() {
    let (_f, ctx, mut sub, engine) = setup("alice");
    let h = engine.spawn(&ctx, "script", "tool:guarded").unwrap();
    let call = wait_for_request(&engine, ctx.run_id()).await;
    let wrong = engine.approve(ctx.run_id(), call + 1, ApprovalDecision::Approve);
    assert!(
        matches!(wrong, Err(EngineError::UnknownApproval { call_id, .. }) if call_id == call + 1)
    );
    engine
        .approve(ctx.run_id(), call, ApprovalDecision::Deny)
        .unwrap();
    let out = h.outcome().await.unwrap();
    assert_eq!(out.status(), RunStatus::Completed, "the agent went on");
    assert!(
        out.result().unwrap().contains("guarded!the user denied"),
        "{out:?}"
    );
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(
        approval_story(&events)[3..5],
        ["approval_decided:Denied", "tool_completed:Denied"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_call_times_out_and_the_wait_does_not_count_against_the_run() {
    // The approval timeout (10 s) is longer than the run timeout (1 s): waiting for the user
    // does not use up the run's time.
    let f = factory(
        EngineConfig::builder()
            .run_timeout(Duration::from_secs(1))
            .approval_timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    let ctx = UserExecutionContext::new("alice", "t1", "r0").unwrap();
    let mut sub = f.subscribe(ctx.user_id());
    let engine = f.create_for_user(&ctx).unwrap();
    let started = tokio::time::Instant::now();
    let out = engine
        .execute(&ctx, "script", "tool:guarded;sleep:500")
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Completed, "{out:?}");
    assert!(started.elapsed() >= Duration::from_millis(10_500));
    assert!(out.result().unwrap().contains("waited 10000 ms"), "{out:?}");
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(
        approval_story(&events)[3..5],
        ["approval_decided:TimedOut", "tool_completed:Timeout"]
    );
    // Past the approval wait, the run timeout still applies to the agent's own time.
    let slow = engine
        .execute(&ctx.new_run(), "script", "sleep:2000")
        .await
        .unwrap();
    assert_eq!(slow.status(), RunStatus::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn cancel_or_shutdown_while_waiting_ends_the_run_once() {
    let (f, ctx, mut sub, engine) = setup("alice");
    let h = engine.spawn(&ctx, "script", "tool:guarded").unwrap();
    wait_for_request(&engine, ctx.run_id()).await;
    engine.cancel(ctx.run_id()).unwrap();
    assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Cancelled);
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(
        approval_story(&events)[3..],
        ["tool_completed:Cancelled", "agent_completed"]
    );

    let second = ctx.new_run();
    let h = engine.spawn(&second, "script", "tool:guarded").unwrap();
    wait_for_request(&engine, second.run_id()).await;
    f.shutdown().await;
    assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Cancelled);
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(approval_story(&events).last().unwrap(), "agent_completed");
}

#[tokio::test(start_paused = true)]
async fn another_users_approval_is_an_unknown_run() {
    let f = factory(EngineConfig::default());
    let alice = UserExecutionContext::new("alice", "t1", "r-alice").unwrap();
    let bob = UserExecutionContext::new("bob", "t1", "r-bob").unwrap();
    let alice_engine = f.create_for_user(&alice).unwrap();
    let bob_engine = f.create_for_user(&bob).unwrap();
    let h = alice_engine
        .spawn(&alice, "script", "tool:guarded")
        .unwrap();
    let call = wait_for_request(&alice_engine, alice.run_id()).await;
    let refused = bob_engine.approve(alice.run_id(), call, ApprovalDecision::Approve);
    assert!(
        matches!(refused, Err(EngineError::UnknownRun { .. })),
        "{refused:?}"
    );
    assert!(bob_engine.pending_approvals(alice.run_id()).is_empty());
    // Alice's call still waits for her.
    assert_eq!(alice_engine.pending_approvals(alice.run_id()), [call]);
    alice_engine
        .approve(alice.run_id(), call, ApprovalDecision::Deny)
        .unwrap();
    assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Completed);
}

/// The interrupt ordering holds on a multi-thread runtime too, where the interrupted run's task
/// and the new one run on different workers: 200 interrupts, each checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_ordering_holds_across_workers() {
    let (_f, ctx, mut sub, engine) = setup("alice");
    let runs = 201;
    // Read as the runs go, so no event waits on a full buffer.
    let reader = tokio::spawn(async move {
        let (mut events, mut ended) = (Vec::new(), 0);
        while ended < runs {
            let e = sub.recv().await.expect("subscription open");
            ended += usize::from(e.event.is_terminal());
            events.push(e);
        }
        events
    });
    let mut previous = engine.spawn(&ctx, "script", "wait_cancel").unwrap();
    let mut ids = vec![ctx.run_id().clone()];
    for _ in 0..200 {
        let next = ctx.new_run();
        let h = engine
            .spawn_with(
                &next,
                "script",
                "say:x;wait_cancel",
                with(MultitaskPolicy::Interrupt),
            )
            .unwrap();
        assert_eq!(
            previous.outcome().await.unwrap().status(),
            RunStatus::Cancelled
        );
        previous = h;
        ids.push(next.run_id().clone());
    }
    engine.cancel(ids.last().unwrap()).unwrap();
    previous.outcome().await.unwrap();
    let events = reader.await.unwrap();
    let refs: Vec<&RunId> = ids.iter().collect();
    let t = timeline(&events, &refs);
    for i in 1..ids.len() {
        assert!(
            at(&t, i - 1, "agent_completed") < at(&t, i, "agent_started"),
            "run {i} started before run {} ended",
            i - 1
        );
    }
}

/// Reports 10 prompt and 3 completion tokens, and asks its sub-agent to do the same.
struct Counting {
    nested: bool,
}

#[engine_core::async_trait]
impl engine_core::Agent for Counting {
    async fn run(
        &mut self,
        ctx: &mut engine_core::RunContext,
        _input: &str,
    ) -> Result<String, engine_core::BoxError> {
        ctx.record_usage(engine_core::TokenUsage::new(10, 3));
        if self.nested {
            ctx.run_agent("counting_leaf", "x").await?;
        }
        Ok("counted".into())
    }
}

#[tokio::test]
async fn model_tokens_of_a_run_and_its_sub_agents_add_up_in_its_outcome() {
    let registry = engine_core::AgentRegistry::builder()
        .agent("counting", || Counting { nested: true })
        .agent("counting_leaf", || Counting { nested: false })
        .build()
        .unwrap();
    let factory = ExecutionEngineFactory::new(FactoryConfig::default(), registry).unwrap();
    let ctx = engine_core::UserExecutionContext::new("alice", "thread-1", "run-tokens").unwrap();
    let engine = factory.create_for_user(&ctx).unwrap();
    let outcome = engine.execute(&ctx, "counting", "go").await.unwrap();
    assert_eq!(outcome.usage, engine_core::TokenUsage::new(20, 6));
    assert_eq!(outcome.usage.total(), 26);
    let other = ctx.with_run_id(RunId::new("run-tokens-2").unwrap());
    let again = engine.execute(&other, "counting_leaf", "go").await.unwrap();
    assert_eq!(
        again.usage,
        engine_core::TokenUsage::new(10, 3),
        "per run, not per engine"
    );
}

//! Supervisor runs: sub-agents inside a run (one at a time and fanned out), the nested terminal
//! invariant, `agent_death`, pipelines step by step, cleanup actions, and the legacy golden
//! path in its original sense: one message fanning out to four agents, for 15 users at once.

use std::sync::Arc;
use std::time::Duration;

use engine_core::{
    async_trait, Agent, AgentEvent, AgentRegistry, BoxError, EngineConfig, EngineError,
    EventEnvelope, Pipeline, PipelineStep, RunContext, RunEnd, RunOptions, RunStatus,
    UserExecutionContext,
};
use engine_factory::{EngineHandle, ExecutionEngineFactory, FactoryConfig, Subscription};
use engine_tests::{
    check_run, demo_registry_builder, drain, script_registry, script_registry_builder,
    Observations, Supervisor,
};

fn kinds(events: &[EventEnvelope]) -> Vec<&'static str> {
    events.iter().map(|e| e.event.kind()).collect()
}

fn count(events: &[EventEnvelope], kind: &str) -> usize {
    events.iter().filter(|e| e.event.kind() == kind).count()
}

fn factory_of(registry: AgentRegistry, engine: EngineConfig) -> ExecutionEngineFactory {
    let config = FactoryConfig::builder().engine(engine).build().unwrap();
    ExecutionEngineFactory::new(config, registry).expect("factory")
}

/// Alice's root context, her subscription (made before any run) and an engine for her.
fn alice(f: &ExecutionEngineFactory) -> (UserExecutionContext, Subscription, EngineHandle) {
    let ctx = UserExecutionContext::new("alice", "t1", "r1").unwrap();
    let sub = f.subscribe(ctx.user_id());
    let engine = f.create_for_user(&ctx).unwrap();
    (ctx, sub, engine)
}

/// Thinks, then panics: a team member that dies mid-fan-out.
struct Crasher;

#[async_trait]
impl Agent for Crasher {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        ctx.think("crasher: about to fail hard").await;
        panic!("the crasher crashed")
    }
}

#[tokio::test]
async fn one_message_fans_out_to_four_agents() {
    let f = factory_of(
        demo_registry_builder().build().unwrap(),
        EngineConfig::default(),
    );
    let (ctx, mut sub, engine) = alice(&f);
    let out = engine
        .execute(&ctx, "supervisor", "what is 6 * 7?")
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Completed, "{out:?}");
    let answer = out.result().unwrap();
    for role in ["triage", "data", "optimization", "reporting"] {
        assert!(answer.contains(&format!("{role} found")), "{answer}");
    }
    assert!(answer.contains("42"), "the optimizer computed: {answer}");
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(count(&events, "sub_agent_started"), 4);
    assert_eq!(count(&events, "sub_agent_completed"), 4);
    assert!(
        count(&events, "agent_thinking") >= 8,
        "{:?}",
        kinds(&events)
    );
    assert_eq!(
        count(&events, "tool_executing"),
        count(&events, "tool_completed")
    );
    assert_eq!(count(&events, "agent_completed"), 1);
    // Every sub-agent's events carry its own request id, a child of the run's.
    for e in &events {
        if let AgentEvent::SubAgentStarted {
            request_id,
            parent_request_id,
            depth,
            ..
        } = &e.event
        {
            assert_eq!(parent_request_id, ctx.request_id());
            assert_eq!(*depth, 1);
            assert!(events.iter().any(|x| &x.request_id == request_id));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_users_run_the_supervisor_at_once_and_keep_their_events() {
    let f = factory_of(
        demo_registry_builder().build().unwrap(),
        EngineConfig::default(),
    );
    let tasks: Vec<_> = (0..15)
        .map(|u| {
            let f = f.clone();
            tokio::spawn(async move {
                let ctx = UserExecutionContext::new(format!("sup-{u}"), "t", "r").unwrap();
                let mut sub = f.subscribe(ctx.user_id());
                let engine = f.create_for_user(&ctx).unwrap();
                let question = format!("what is {u} + 1?");
                let out = engine.execute(&ctx, "supervisor", question).await.unwrap();
                assert_eq!(out.status(), RunStatus::Completed);
                assert!(out.result().unwrap().contains(&format!("{}", u + 1)));
                let events = drain(&mut sub);
                assert!(events.iter().all(|e| e.user_id == *ctx.user_id()));
                check_run(&events).unwrap();
                assert_eq!(count(&events, "sub_agent_completed"), 4);
                (ctx.user_id().clone(), events)
            })
        })
        .collect();
    for t in tasks {
        let (user, events) = t.await.unwrap();
        let foreign = events.iter().filter(|e| e.user_id != user).count();
        assert_eq!(foreign, 0, "{user} received another user's events");
    }
}

#[tokio::test]
async fn a_sub_agent_that_panics_mid_fan_out_dies_alone() {
    let registry = demo_registry_builder()
        .agent("crasher", || Crasher)
        .agent("crew", || {
            Supervisor::with_team(vec!["data", "crasher", "optimization"])
        })
        .build()
        .unwrap();
    let f = factory_of(registry, EngineConfig::default());
    let (ctx, mut sub, engine) = alice(&f);
    let out = engine
        .execute(&ctx, "crew", "what is 2 * 3?")
        .await
        .unwrap();
    // The supervisor decides: it reports the death and answers with what the others found.
    assert_eq!(out.status(), RunStatus::Completed, "{out:?}");
    let answer = out.result().unwrap();
    assert!(answer.contains("sub-agent `crasher` died"), "{answer}");
    assert!(answer.contains("optimization found 6"), "{answer}");
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    let deaths: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::AgentDeath {
                agent_name, reason, ..
            } => Some((agent_name.to_string(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        deaths,
        [("crasher".to_owned(), "the crasher crashed".to_owned())]
    );
    let ends: Vec<(String, RunStatus)> = events
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::SubAgentCompleted {
                agent_name, status, ..
            } => Some((agent_name.to_string(), *status)),
            _ => None,
        })
        .collect();
    assert!(
        ends.contains(&("crasher".into(), RunStatus::Failed)),
        "{ends:?}"
    );
    assert!(
        ends.contains(&("data".into(), RunStatus::Completed)),
        "{ends:?}"
    );
    assert!(
        ends.contains(&("optimization".into(), RunStatus::Completed)),
        "{ends:?}"
    );
    assert_eq!(ends.len(), 5, "triage, three team members, reporting");
}

#[tokio::test]
async fn a_top_level_panic_is_an_agent_death_then_the_terminal_event() {
    let (registry, _) = script_registry();
    let f = factory_of(registry, EngineConfig::default());
    let (ctx, mut sub, engine) = alice(&f);
    let out = engine
        .execute(&ctx, "script", "think:a;panic:boom")
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Failed);
    let events = drain(&mut sub);
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "agent_thinking",
            "agent_death",
            "agent_completed"
        ]
    );
    // An error (not a panic) stays an agent_error.
    let out = engine
        .execute(&ctx.new_run(), "script", "fail:nope")
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Failed);
    let events = drain(&mut sub);
    assert_eq!(
        kinds(&events),
        ["agent_started", "agent_error", "agent_completed"]
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_or_timing_out_a_fan_out_closes_every_sub_agent_and_tool_call() {
    let (registry, _) = script_registry();
    let f = factory_of(
        registry,
        EngineConfig::builder()
            .run_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    );
    let (ctx, mut sub, engine) = alice(&f);
    // Three sub-agents, each inside a slow tool call, each with a nested sub-agent too.
    let script = "fanout:3:sub:tool:slow|tool:slow";
    let h = engine.spawn(&ctx, "script", script).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.cancel(ctx.run_id()).unwrap();
    assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Cancelled);
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(count(&events, "sub_agent_started"), 6);
    assert_eq!(count(&events, "sub_agent_completed"), 6);

    let out = engine
        .execute(&ctx.new_run(), "script", script)
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::TimedOut);
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(count(&events, "sub_agent_completed"), 6);
    assert!(events.iter().any(|e| matches!(
        &e.event,
        AgentEvent::SubAgentCompleted {
            status: RunStatus::TimedOut,
            ..
        }
    )));
}

#[tokio::test]
async fn nesting_stops_at_the_depth_limit_with_a_typed_error() {
    let registry = script_registry_builder(&Arc::new(Observations::default()))
        .agent("nest", || Nest)
        .build()
        .unwrap();
    let f = factory_of(registry, EngineConfig::default());
    let (ctx, mut sub, engine) = alice(&f);
    let out = engine.execute(&ctx, "nest", "").await.unwrap();
    assert_eq!(out.status(), RunStatus::Completed, "{out:?}");
    assert!(
        out.result().unwrap().contains("operation depth limit"),
        "{:?}",
        out.result()
    );
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    // Depths 1 to 9 start; the 10th level is refused before it starts.
    assert_eq!(count(&events, "sub_agent_started"), 9);
}

/// Starts itself as a sub-agent until the depth limit refuses, and answers with the refusal.
struct Nest;

#[async_trait]
impl Agent for Nest {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        match ctx.run_agent("nest", "").await {
            Ok(deeper) => Ok(deeper),
            Err(e) => Ok(e.to_string()),
        }
    }
}

fn progress(events: &[EventEnvelope]) -> Vec<(u32, u32, String)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            AgentEvent::ProgressUpdate {
                step,
                of,
                agent_name,
            } => Some((*step, *of, agent_name.to_string())),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn pipelines_run_step_by_step_and_stop_or_go_on_after_a_failure() {
    let (registry, _) = script_registry();
    let f = factory_of(registry, EngineConfig::default());
    let (ctx, mut sub, engine) = alice(&f);

    // Each step's answer feeds the next; the run answers with the last step's answer.
    let pipeline = Pipeline::new([
        PipelineStep::new("script").input("think:one"),
        PipelineStep::new("assistant").input("think:two"),
        PipelineStep::new("script").input("answer:three"),
    ]);
    let h = engine
        .spawn_pipeline(&ctx, pipeline, "", RunOptions::new())
        .unwrap();
    let out = h.outcome().await.unwrap();
    assert_eq!(out.status(), RunStatus::Completed);
    assert_eq!(out.result(), Some("three"));
    assert_eq!(out.steps.len(), 3);
    assert!(out
        .steps
        .iter()
        .all(|s| matches!(s.end, Some(RunEnd::Completed { .. }))));
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "progress_update",
            "sub_agent_started",
            "agent_thinking",
            "sub_agent_completed",
            "progress_update",
            "sub_agent_started",
            "agent_thinking",
            "sub_agent_completed",
            "progress_update",
            "sub_agent_started",
            "sub_agent_completed",
            // A completed pipeline streams its answer (the last step's), so its deltas add
            // up to its result like any completed run's.
            "answer_delta",
            "agent_completed"
        ]
    );
    assert_eq!(
        progress(&events),
        [
            (1, 3, "script".into()),
            (2, 3, "assistant".into()),
            (3, 3, "script".into())
        ]
    );

    // A failing second step stops the pipeline; the third never runs.
    let failing = [
        PipelineStep::new("script").input("answer:first"),
        PipelineStep::new("script").input("fail:broken"),
        PipelineStep::new("script").input("answer:third"),
    ];
    let out = engine
        .spawn_pipeline(
            &ctx.new_run(),
            Pipeline::new(failing.clone()),
            "",
            RunOptions::new(),
        )
        .unwrap()
        .outcome()
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Failed);
    assert!(out.error().unwrap().contains("step 2 of 3"), "{out:?}");
    assert!(matches!(out.steps[0].end, Some(RunEnd::Completed { .. })));
    assert!(matches!(out.steps[1].end, Some(RunEnd::Failed { .. })));
    assert_eq!(out.steps[2].end, None, "never ran");
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(progress(&events).len(), 2);

    // With continue_on_error the third step runs and answers.
    let out = engine
        .spawn_pipeline(
            &ctx.new_run(),
            Pipeline::new(failing).continue_on_error(true),
            "",
            RunOptions::new(),
        )
        .unwrap()
        .outcome()
        .await
        .unwrap();
    assert_eq!(out.status(), RunStatus::Completed);
    assert_eq!(out.result(), Some("third"));
    assert!(matches!(out.steps[2].end, Some(RunEnd::Completed { .. })));
    let events = drain(&mut sub);
    check_run(&events).unwrap();
    assert_eq!(progress(&events).len(), 3);

    // A step's own timeout, inside the run's.
    let slow = Pipeline::new([
        PipelineStep::new("script")
            .input("sleep:5000")
            .timeout(Duration::from_millis(100)),
        PipelineStep::new("script").input("answer:after"),
    ])
    .continue_on_error(true);
    let out = engine
        .spawn_pipeline(&ctx.new_run(), slow, "", RunOptions::new())
        .unwrap()
        .outcome()
        .await
        .unwrap();
    assert!(
        matches!(out.steps[0].end, Some(RunEnd::TimedOut { .. })),
        "{out:?}"
    );
    assert_eq!(out.result(), Some("after"));
    check_run(&drain(&mut sub)).unwrap();

    // Refused before anything runs: no step, an unknown agent.
    let empty = engine.spawn_pipeline(&ctx.new_run(), Pipeline::new([]), "", RunOptions::new());
    assert!(matches!(empty, Err(EngineError::InvalidPipeline { .. })));
    let unknown = Pipeline::new([PipelineStep::new("nobody")]);
    let refused = engine.spawn_pipeline(&ctx.new_run(), unknown, "", RunOptions::new());
    assert!(matches!(refused, Err(EngineError::UnknownAgent { .. })));
    assert!(drain(&mut sub).is_empty());
}

#[tokio::test(start_paused = true)]
async fn cleanup_actions_run_newest_first_whatever_the_ending() {
    let observed = Arc::new(Observations::default());
    let registry = script_registry_builder(&observed).build().unwrap();
    let f = factory_of(
        registry,
        EngineConfig::builder()
            .run_timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let ctx = UserExecutionContext::new("alice", "t1", "r1").unwrap();
    let engine = f.create_for_user(&ctx).unwrap();
    let take = || std::mem::take(&mut *observed.cleanups.lock().unwrap());
    let with = |tail: &str| format!("cleanup:a;cleanup_fail:b;cleanup_panic:c;cleanup:d;{tail}");

    let cases = [
        ("think:ok", RunStatus::Completed),
        ("fail:no", RunStatus::Failed),
        ("panic:no", RunStatus::Failed),
        ("sleep:5000", RunStatus::TimedOut),
    ];
    for (tail, status) in cases {
        let out = engine
            .execute(&ctx.new_run(), "script", with(tail))
            .await
            .unwrap();
        assert_eq!(out.status(), status, "{tail}");
        assert_eq!(take(), ["d", "c", "b", "a"], "{tail}: LIFO, all of them");
    }
    // Cancelled, and shut down.
    let h = engine
        .spawn(&ctx.new_run(), "script", with("wait_cancel"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.cancel();
    assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Cancelled);
    assert_eq!(take(), ["d", "c", "b", "a"]);
    let h = engine
        .spawn(&ctx.new_run(), "script", with("wait_cancel"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    f.shutdown().await;
    assert_eq!(h.outcome().await.unwrap().status(), RunStatus::Cancelled);
    assert_eq!(take(), ["d", "c", "b", "a"]);
}

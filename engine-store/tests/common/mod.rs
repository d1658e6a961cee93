//! Agents, a factory on a store, and the checks both store suites share.

#![allow(dead_code)]

use std::sync::Arc;

use engine_core::{
    async_trait, Agent, AgentRegistry, BoxError, EngineConfig, EventEnvelope, RunContext, Tool,
    ToolContext, UserExecutionContext,
};
use engine_factory::{ExecutionEngineFactory, FactoryConfig, RunStore, Seams};
use engine_store::SqlStore;
use serde_json::{json, Value};

/// Thinks, streams its answer word by word, and answers `echo: <input>`.
pub(crate) struct Talker;

#[async_trait]
impl Agent for Talker {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        ctx.think("reading").await;
        let answer = format!("echo: {input}");
        for (i, word) in answer.split(' ').enumerate() {
            let piece = if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            };
            ctx.stream(piece).await;
        }
        Ok(answer)
    }
}

/// Calls `save`, which needs the user's approval, and so waits for it.
pub(crate) struct Saver;

#[async_trait]
impl Agent for Saver {
    async fn run(&mut self, ctx: &mut RunContext, input: &str) -> Result<String, BoxError> {
        let saved = ctx.call_tool("save", json!({ "text": input })).await?;
        Ok(saved.to_string())
    }
}

/// Never answers (until cancelled).
pub(crate) struct Forever;

#[async_trait]
impl Agent for Forever {
    async fn run(&mut self, ctx: &mut RunContext, _input: &str) -> Result<String, BoxError> {
        ctx.think("working").await;
        std::future::pending::<()>().await;
        Ok(String::new())
    }
}

struct Save;

#[async_trait]
impl Tool for Save {
    async fn call(&self, args: Value, _ctx: &ToolContext) -> Result<Value, BoxError> {
        Ok(args)
    }
}

pub(crate) fn registry() -> AgentRegistry {
    AgentRegistry::builder()
        .agent("talker", || Talker)
        .agent("saver", || Saver)
        .agent("forever", || Forever)
        .tool_requiring_approval("save", Save)
        .build()
        .expect("a registry")
}

/// A factory whose engines record their runs in `store`.
pub(crate) fn factory(store: &SqlStore) -> ExecutionEngineFactory {
    let config = FactoryConfig::builder()
        .max_engines_per_user(4)
        .engine(
            EngineConfig::builder()
                .max_concurrent_runs(8)
                .max_queued_runs(64)
                .approval_timeout(std::time::Duration::from_secs(600))
                .run_timeout(std::time::Duration::from_secs(600))
                .build()
                .expect("an engine config"),
        )
        .build()
        .expect("a factory config");
    let seams = Seams::default().run_store(Arc::new(store.clone()));
    ExecutionEngineFactory::with_seams(config, registry(), seams).expect("a factory")
}

pub(crate) fn ctx(user: &str, thread: &str, run: &str) -> UserExecutionContext {
    UserExecutionContext::new(user, thread, run).expect("valid ids")
}

/// Reads every stored event of `user`'s run, in pages of 7 (so paging is exercised).
pub(crate) async fn stored_events(
    store: &SqlStore,
    ctx: &UserExecutionContext,
) -> Vec<EventEnvelope> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .events_after(ctx.user_id(), ctx.run_id(), after, 7)
            .await
            .expect("a read")
            .expect("the user's run");
        assert!(page.gaps.is_empty(), "no gap expected: {:?}", page.gaps);
        after = page.events.last().map_or(after, |e| e.seq);
        all.extend(page.events);
        if !page.more {
            return all;
        }
    }
}

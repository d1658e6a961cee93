//! Cancels and approval decisions for runs on another node: a request over that node's
//! pub/sub channel, answered on the asking node's channel with the same typed answers as a
//! local call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use engine_core::{ApprovalDecision, EngineError, RunId, UserId};
use engine_factory::ExecutionEngineFactory;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::keys::Keys;

/// Why a cancel or an approval did not reach a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No node runs this run for this user (finished, never started, or another user's).
    #[error("no active run {0} of this user on any node")]
    UnknownRun(RunId),
    /// The run has no tool call with this id waiting for approval.
    #[error("run {run_id} has no tool call {call_id} waiting for approval")]
    UnknownApproval {
        /// The run.
        run_id: RunId,
        /// The call.
        call_id: u32,
    },
    /// The node running the run did not answer in time (it may have stopped).
    #[error("node {node} did not answer within {timeout_ms} ms; the run may have ended with it")]
    NodeUnreachable {
        /// The node that runs the run.
        node: String,
        /// How long the request waited.
        timeout_ms: u64,
    },
    /// Redis failed.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    Cancel,
    Approve {
        call_id: u32,
        decision: ApprovalDecision,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok,
    UnknownRun,
    UnknownApproval,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Message {
    Req {
        id: u64,
        reply_to: String,
        user: UserId,
        run: RunId,
        #[serde(flatten)]
        op: Op,
    },
    Resp {
        id: u64,
        user: UserId,
        answer: Answer,
    },
}

fn answer_of(r: Result<(), EngineError>) -> Answer {
    match r {
        Ok(()) => Answer::Ok,
        Err(EngineError::UnknownApproval { .. }) => Answer::UnknownApproval,
        Err(_) => Answer::UnknownRun,
    }
}

pub(crate) struct Control {
    conn: ConnectionManager,
    keys: Keys,
    node: String,
    channel: String,
    timeout: Duration,
    health: Arc<Health>,
    factory: OnceLock<ExecutionEngineFactory>,
    next_id: AtomicU64,
    /// Requests waiting for their answer, per user: an answer completes only a request of the
    /// user it names.
    pending: Mutex<HashMap<UserId, HashMap<u64, oneshot::Sender<Answer>>>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Control {
    pub(crate) fn new(
        conn: ConnectionManager,
        keys: Keys,
        node: String,
        timeout: Duration,
        health: Arc<Health>,
    ) -> Self {
        let channel = keys.node_channel(&node);
        Self {
            conn,
            keys,
            node,
            channel,
            timeout,
            health,
            factory: OnceLock::new(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Serves requests with `factory` from now on; `false` if a factory was already set.
    pub(crate) fn set_factory(&self, factory: ExecutionEngineFactory) -> bool {
        self.factory.set(factory).is_ok()
    }

    /// Listens on this node's channel until `stop`, reconnecting after failures. The returned
    /// future resolves once the first subscription is in place.
    pub(crate) async fn listen(self: &Arc<Self>, client: Client, stop: CancellationToken) {
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut backoff = Duration::from_millis(50);
            while !stop.is_cancelled() {
                let pubsub = match client.get_async_pubsub().await {
                    Ok(mut p) => match p.subscribe(&me.channel).await {
                        Ok(()) => Some(p),
                        Err(e) => {
                            me.health.failed("subscribe control channel", &e);
                            None
                        }
                    },
                    Err(e) => {
                        me.health.failed("connect control channel", &e);
                        None
                    }
                };
                let Some(mut pubsub) = pubsub else {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                };
                backoff = Duration::from_millis(50);
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                let mut messages = pubsub.on_message();
                loop {
                    let msg = tokio::select! {
                        () = stop.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let Ok(text) = msg.get_payload::<String>() else {
                        continue;
                    };
                    me.handle(&text).await;
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
    }

    async fn handle(&self, text: &str) {
        let Ok(message) = serde_json::from_str::<Message>(text) else {
            tracing::warn!("unreadable control message ignored");
            return;
        };
        match message {
            Message::Resp { id, user, answer } => {
                let waiter = self.take_waiter(&user, id);
                if let Some(tx) = waiter {
                    let _ = tx.send(answer);
                }
            }
            Message::Req {
                id,
                reply_to,
                user,
                run,
                op,
            } => {
                let answer = self.apply_locally(&user, &run, op);
                let reply = Message::Resp { id, user, answer };
                let text = serde_json::to_string(&reply).unwrap_or_default();
                let mut conn = self.conn.clone();
                if let Err(e) = redis::cmd("PUBLISH")
                    .arg(&reply_to)
                    .arg(text)
                    .query_async::<i64>(&mut conn)
                    .await
                {
                    self.health.failed("answer control request", &e);
                }
            }
        }
    }

    /// Applies `op` to `user`'s run on this node's factory (only `user`'s engines are searched).
    fn apply_locally(&self, user: &UserId, run: &RunId, op: Op) -> Answer {
        let Some(factory) = self.factory.get() else {
            return Answer::UnknownRun;
        };
        answer_of(match op {
            Op::Cancel => factory.cancel_run(user, run),
            Op::Approve { call_id, decision } => factory.approve_run(user, run, call_id, decision),
        })
    }

    /// Which node runs `user`'s run `run`, from the user's own run record.
    async fn node_of(&self, user: &UserId, run: &RunId) -> Result<Option<String>, ControlError> {
        let mut conn = self.conn.clone();
        let record: Option<String> = redis::cmd("GET")
            .arg(self.keys.run(user, run))
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                self.health.failed("find run", &e);
                ControlError::Unavailable(e.to_string())
            })?;
        self.health.ok();
        Ok(record.and_then(|r| r.rsplit_once(' ').map(|(node, _)| node.to_owned())))
    }

    /// Cancels or decides on `user`'s run wherever it runs.
    pub(crate) async fn apply(
        &self,
        user: &UserId,
        run: &RunId,
        op: Op,
    ) -> Result<(), ControlError> {
        let answer = match self.apply_locally(user, run, op) {
            Answer::UnknownRun => self.forward(user, run, op).await?,
            local => local,
        };
        match answer {
            Answer::Ok => Ok(()),
            Answer::UnknownRun => Err(ControlError::UnknownRun(run.clone())),
            Answer::UnknownApproval => Err(ControlError::UnknownApproval {
                run_id: run.clone(),
                call_id: match op {
                    Op::Approve { call_id, .. } => call_id,
                    Op::Cancel => 0,
                },
            }),
        }
    }

    async fn forward(&self, user: &UserId, run: &RunId, op: Op) -> Result<Answer, ControlError> {
        let Some(node) = self.node_of(user, run).await? else {
            return Ok(Answer::UnknownRun);
        };
        if node == self.node {
            return Ok(Answer::UnknownRun);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(user.clone())
            .or_default()
            .insert(id, tx);
        let request = Message::Req {
            id,
            reply_to: self.channel.clone(),
            user: user.clone(),
            run: run.clone(),
            op,
        };
        let text = serde_json::to_string(&request).unwrap_or_default();
        let mut conn = self.conn.clone();
        let sent = redis::cmd("PUBLISH")
            .arg(self.keys.node_channel(&node))
            .arg(text)
            .query_async::<i64>(&mut conn)
            .await;
        self.health.forwarded.fetch_add(1, Ordering::Relaxed);
        let result = match sent {
            Err(e) => {
                self.health.failed("forward control request", &e);
                Err(ControlError::Unavailable(e.to_string()))
            }
            // Nobody listens on the node's channel: the node is gone.
            Ok(0) => Err(self.unreachable(node)),
            Ok(_) => match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                _ => Err(self.unreachable(node)),
            },
        };
        self.take_waiter(user, id);
        result
    }

    fn take_waiter(&self, user: &UserId, id: u64) -> Option<oneshot::Sender<Answer>> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = pending.get_mut(user)?;
        let waiter = mine.remove(&id);
        if mine.is_empty() {
            pending.remove(user);
        }
        waiter
    }

    fn unreachable(&self, node: String) -> ControlError {
        ControlError::NodeUnreachable {
            node,
            timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

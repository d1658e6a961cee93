//! Client frames: what each one does, for the token's user only.

use std::sync::atomic::Ordering;
use std::time::Duration;

use engine_core::{
    ApprovalDecision, EngineError, MultitaskPolicy, Pipeline, PipelineStep, RunId, RunOptions,
    ThreadId, UserExecutionContext, UserId,
};
use engine_factory::{FactoryError, RunStore};
use engine_redis::ControlError;

use crate::metrics::GatewayMetrics;
use crate::protocol::{ClientFrame, ErrorCode, ServerFrame};
use crate::session::{lock, Outgoing, UserSession};
use crate::Gateway;

impl Gateway {
    pub(crate) async fn handle_frame(
        &self,
        session: &UserSession,
        conn: u64,
        text: &str,
    ) -> Option<ServerFrame> {
        if text.len() > self.inner.config.max_frame_bytes {
            return Some(ServerFrame::error(
                ErrorCode::FrameTooLarge,
                format!(
                    "frame of {} bytes exceeds the limit of {} bytes",
                    text.len(),
                    self.inner.config.max_frame_bytes
                ),
            ));
        }
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                return Some(ServerFrame::error(
                    ErrorCode::BadFrame,
                    format!(
                        "cannot read frame: {e}; expected user_message, pipeline, cancel, resume or approve"
                    ),
                ))
            }
        };
        if self.inner.shutting_down.load(Ordering::Acquire) {
            if let ClientFrame::UserMessage { .. } = frame {
                return Some(ServerFrame::error(
                    ErrorCode::ShuttingDown,
                    "the server is shutting down; reconnect later",
                ));
            }
        }
        match frame {
            ClientFrame::UserMessage {
                thread_id,
                text,
                client_request_id,
                multitask,
                agent,
            } => {
                let agent = agent.unwrap_or_else(|| self.inner.config.default_agent.clone());
                let work = Work::Agent(agent);
                let start = Start {
                    thread_id,
                    text,
                    client_request_id,
                    options: options(multitask),
                    work,
                };
                self.start_run(session, conn, start).await
            }
            ClientFrame::Pipeline {
                thread_id,
                text,
                steps,
                continue_on_error,
                client_request_id,
                multitask,
            } => {
                let steps = steps.into_iter().map(|s| {
                    let mut step = PipelineStep::new(s.agent);
                    if let Some(input) = s.input {
                        step = step.input(input);
                    }
                    if let Some(ms) = s.timeout_ms {
                        step = step.timeout(Duration::from_millis(ms));
                    }
                    step
                });
                let pipeline = Pipeline::new(steps).continue_on_error(continue_on_error);
                let start = Start {
                    thread_id,
                    text,
                    client_request_id,
                    options: options(multitask),
                    work: Work::Pipeline(pipeline),
                };
                self.start_run(session, conn, start).await
            }
            ClientFrame::Approve {
                run_id,
                call_id,
                decision,
            } => {
                let Ok(run) = RunId::new(&run_id) else {
                    return Some(ServerFrame::error(
                        ErrorCode::BadRequest,
                        "run_id is not a valid run id",
                    ));
                };
                // Only this user's runs are asked: another user's run id is unknown everywhere.
                self.approve(session, &run, call_id, decision).await.err()
            }
            ClientFrame::Cancel { run_id } => {
                let Ok(run) = RunId::new(&run_id) else {
                    return Some(ServerFrame::error(
                        ErrorCode::BadRequest,
                        "run_id is not a valid run id",
                    ));
                };
                self.cancel(session, &run).await.err()
            }
            ClientFrame::Resume { run_id, after_seq } => {
                let Ok(run) = RunId::new(&run_id) else {
                    return Some(ServerFrame::error(
                        ErrorCode::UnknownRun,
                        format!("no run {run_id} of yours to resume"),
                    ));
                };
                let cfg = &self.inner.config;
                if !session.allow_resume(cfg.resumes_per_minute) {
                    GatewayMetrics::refused(
                        &self.inner.metrics.limit_hits,
                        ErrorCode::RateLimited.as_str(),
                    );
                    return Some(ServerFrame::error(
                        ErrorCode::RateLimited,
                        format!(
                            "at most {} resumes per minute; wait and retry",
                            cfg.resumes_per_minute
                        ),
                    ));
                }
                match self.resume(session, &run, after_seq).await {
                    Ok(frames) => {
                        let frames = fit(frames, session.room(conn), &run);
                        for f in frames {
                            session.send_to(conn, Outgoing::plain(f.to_json()));
                        }
                        None
                    }
                    Err(frame) => Some(frame),
                }
            }
        }
    }

    /// Cancels one of the user's runs: on this node's engine, or in cluster mode on the node
    /// that runs it.
    pub(crate) async fn cancel(
        &self,
        session: &UserSession,
        run: &RunId,
    ) -> Result<(), ServerFrame> {
        let local = session.engine.lock().await.as_ref().map(|e| e.cancel(run));
        match (local, &self.inner.cluster) {
            (Some(Ok(())), _) => Ok(()),
            (_, Some(cluster)) => cluster
                .cancel(&session.user, run)
                .await
                .map_err(|e| control_frame(run, &e)),
            _ => Err(unknown_run(run)),
        }
    }

    /// Decides a tool call of one of the user's runs, wherever it runs.
    pub(crate) async fn approve(
        &self,
        session: &UserSession,
        run: &RunId,
        call_id: u32,
        decision: ApprovalDecision,
    ) -> Result<(), ServerFrame> {
        let local = session
            .engine
            .lock()
            .await
            .as_ref()
            .map(|e| e.approve(run, call_id, decision));
        match (local, &self.inner.cluster) {
            (Some(Ok(())), _) => Ok(()),
            (Some(Err(EngineError::UnknownApproval { .. })), _) => {
                Err(unknown_approval(run, call_id))
            }
            (_, Some(cluster)) => cluster
                .approve(&session.user, run, call_id, decision)
                .await
                .map_err(|e| control_frame(run, &e)),
            _ => Err(unknown_run(run)),
        }
    }

    /// The frames that bring a client up to date on one of the user's runs: from this node's
    /// replay buffer, or in cluster mode from the user's Redis stream (any node's runs), and
    /// else from the run store (runs of an earlier process or evicted from both).
    pub(crate) async fn resume(
        &self,
        session: &UserSession,
        run: &RunId,
        after_seq: u64,
    ) -> Result<Vec<ServerFrame>, ServerFrame> {
        let store = self.inner.factory.run_store();
        let Some(bus) = self.inner.factory.event_bus() else {
            let local = lock(&session.replay).resume(run, after_seq);
            return match (local, store) {
                (Some(frames), _) => Ok(frames),
                (None, Some(store)) => {
                    resume_from_store(&**store, &session.user, run, after_seq).await
                }
                (None, None) => Err(no_run_to_resume(run)),
            };
        };
        // A run that ended is whole in the store (its events were queued before its end); one
        // that ended `interrupted` (its node died) has its terminal event only there.
        if let Some(store) = store {
            let record = tokio::time::timeout(STORE_READ_TIMEOUT, store.run(&session.user, run));
            if let Ok(Ok(Some(record))) = record.await {
                if record.status.is_some() {
                    return resume_from_store(&**store, &session.user, run, after_seq).await;
                }
            }
        }
        let replayed = match (bus.replay(&session.user, run, after_seq).await, store) {
            (Ok(Some(replayed)), _) => replayed,
            // Not (or no longer) in the user's stream, or Redis is down: the store has it.
            (Ok(None) | Err(_), Some(store)) => {
                return resume_from_store(&**store, &session.user, run, after_seq).await;
            }
            (Ok(None), None) => return Err(no_run_to_resume(run)),
            (Err(e), None) => {
                tracing::warn!(run_id = %run, error = %e, "resume: the cluster could not be read");
                return Err(ServerFrame::error(
                    ErrorCode::ClusterUnavailable,
                    format!("cannot read run {run} from the cluster right now; retry the resume"),
                ));
            }
        };
        Ok(bus_frames(run, after_seq, replayed))
    }

    /// Starts a run for a socket; answers `run_accepted` itself (before any event of the run
    /// reaches the connection), or returns the error frame.
    async fn start_run(
        &self,
        session: &UserSession,
        conn: u64,
        start: Start,
    ) -> Option<ServerFrame> {
        self.launch(session, start, Origin::Socket(conn))
            .await
            .err()
    }

    /// Starts a run with the socket's admission, limits and multitask policy: for a socket
    /// (`run_accepted` goes to it before any event of the run), or for the HTTP API.
    pub(crate) async fn launch(
        &self,
        session: &UserSession,
        start: Start,
        origin: Origin,
    ) -> Result<Launched, ServerFrame> {
        let Start {
            thread_id,
            text,
            client_request_id,
            options,
            work,
        } = start;
        let thread_id = thread_id.as_str();
        let cfg = &self.inner.config;
        if !session.allow_message(cfg.messages_per_minute) {
            GatewayMetrics::refused(
                &self.inner.metrics.limit_hits,
                ErrorCode::RateLimited.as_str(),
            );
            tracing::warn!(user_id = %session.user, limit = cfg.messages_per_minute, "message refused: rate limit");
            return Err(ServerFrame::error(
                ErrorCode::RateLimited,
                format!(
                    "at most {} messages per minute; wait and retry",
                    cfg.messages_per_minute
                ),
            ));
        }
        if let Err(e) = ThreadId::new(thread_id) {
            return Err(ServerFrame::error(ErrorCode::BadRequest, e.to_string()));
        }
        let ctx = match UserExecutionContext::builder()
            .user_id(&session.user)
            .thread_id(thread_id)
            .run_id(RunId::generate())
            .connection_id(match origin {
                Origin::Socket(conn) => format!("conn-{conn}"),
                Origin::Http => "http".to_owned(),
            })
            .build()
        {
            Ok(c) => c,
            Err(e) => return Err(ServerFrame::error(ErrorCode::BadRequest, e.to_string())),
        };
        session.wait_live().await;
        let mut engine = session.engine.lock().await;
        if engine.as_ref().is_none_or(|e| !e.is_active()) {
            let root = ctx.with_run_id(RunId::generate());
            match self.inner.factory.create(&root).await {
                Ok(e) => *engine = Some(e),
                Err(e) => {
                    // The user's own limit is theirs to know; what went wrong inside (Redis,
                    // the factory) is the operator's: logged, and a stable message sent.
                    let (code, message) = match &e {
                        FactoryError::ShutDown => (ErrorCode::ShuttingDown, e.to_string()),
                        FactoryError::UserLimitReached { .. } => {
                            (ErrorCode::TooManyEngines, e.to_string())
                        }
                        FactoryError::Admission(_) => (
                            ErrorCode::ClusterUnavailable,
                            "the cluster cannot admit new runs right now; try again shortly"
                                .to_owned(),
                        ),
                        _ => (
                            ErrorCode::Internal,
                            "the server could not start your run; try again".to_owned(),
                        ),
                    };
                    if matches!(code, ErrorCode::ClusterUnavailable | ErrorCode::Internal) {
                        tracing::warn!(user_id = %session.user, error = %e, "engine not created");
                    }
                    return Err(ServerFrame::error(code, message));
                }
            }
        }
        let Some(engine) = engine.as_ref() else {
            return Err(ServerFrame::error(ErrorCode::Internal, "no engine"));
        };
        // Registered before the run starts so its first event finds it; forgotten again if the
        // engine refuses the run.
        lock(&session.replay).register(ctx.run_id());
        let hold = session.hold_delivery();
        let launched = Launched {
            context: ctx.clone(),
            agent_name: match &work {
                Work::Agent(agent) => agent.clone(),
                Work::Pipeline(_) => "pipeline".to_owned(),
            },
            input: text.clone(),
            accepted_at_us: engine_factory::now_us(),
        };
        let spawned = match work {
            Work::Agent(agent) => engine.spawn_with(&ctx, &agent, text, options),
            Work::Pipeline(pipeline) => engine.spawn_pipeline(&ctx, pipeline, text, options),
        };
        match spawned {
            Ok(run) => {
                if let Origin::Socket(conn) = origin {
                    let accepted = ServerFrame::RunAccepted {
                        run_id: ctx.run_id().clone(),
                        client_request_id,
                    };
                    hold.send_to(conn, Outgoing::plain(accepted.to_json()));
                }
                drop(hold);
                // The run goes on by itself; this only records how it ends.
                let gw = self.clone();
                let user = session.user.clone();
                tokio::spawn(async move {
                    let run_id = run.run_id().clone();
                    let outcome = run.outcome().await;
                    gw.run_ended();
                    match outcome {
                        Ok(outcome) => {
                            gw.inner.metrics.run_ended(&outcome);
                            let total = outcome.queue_wait + outcome.execution_time;
                            tracing::info!(
                                user_id = %user,
                                run_id = %run_id,
                                status = outcome.status().as_str(),
                                duration_ms = u64::try_from(total.as_millis()).unwrap_or(u64::MAX),
                                "run ended"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(user_id = %user, run_id = %run_id, error = %e, "run lost");
                        }
                    }
                });
                Ok(launched)
            }
            Err(e) => {
                lock(&session.replay).forget(ctx.run_id());
                // The engine decides how many runs a user may have; the gateway reports it.
                let code = match e {
                    EngineError::QueueFull { .. } => ErrorCode::TooManyRuns,
                    EngineError::ThreadBusy { .. } => ErrorCode::ThreadBusy,
                    EngineError::UnknownAgent { .. } | EngineError::InvalidPipeline { .. } => {
                        ErrorCode::BadRequest
                    }
                    _ => ErrorCode::Internal,
                };
                if matches!(code, ErrorCode::TooManyRuns | ErrorCode::ThreadBusy) {
                    GatewayMetrics::refused(&self.inner.metrics.limit_hits, code.as_str());
                    tracing::warn!(user_id = %session.user, run_id = %ctx.run_id(), code = code.as_str(), "message refused: {e}");
                }
                Err(ServerFrame::error(code, e.to_string()))
            }
        }
    }
}

/// What a `user_message` or `pipeline` frame (or `POST /v1/threads/{id}/runs`) asks to start.
pub(crate) struct Start {
    pub(crate) thread_id: String,
    pub(crate) text: String,
    pub(crate) client_request_id: Option<String>,
    pub(crate) options: RunOptions,
    pub(crate) work: Work,
}

/// An agent's run or a pipeline's.
pub(crate) enum Work {
    Agent(String),
    Pipeline(Pipeline),
}

/// Who asked for a run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// A socket's frame: `run_accepted` goes to that connection.
    Socket(u64),
    /// The HTTP API: the caller gets the run record in the response.
    Http,
}

/// A run [`Gateway::launch`] started.
pub(crate) struct Launched {
    pub(crate) context: UserExecutionContext,
    pub(crate) agent_name: String,
    pub(crate) input: String,
    pub(crate) accepted_at_us: u64,
}

pub(crate) fn options(multitask: Option<MultitaskPolicy>) -> RunOptions {
    multitask.map_or_else(RunOptions::new, |p| RunOptions::new().multitask(p))
}

fn unknown_run(run: &RunId) -> ServerFrame {
    ServerFrame::error(
        ErrorCode::UnknownRun,
        format!("no active run {run} of yours"),
    )
}

/// The frames of a replay from the cluster's streams: a `gap` frame for the retained window's
/// start and one before each stretch of seqs the stream does not hold (a batch Redis never
/// stored, or trimmed), so a client never sees a seq jump unannounced.
fn bus_frames(run: &RunId, after_seq: u64, replayed: engine_factory::Replayed) -> Vec<ServerFrame> {
    let mut frames = Vec::with_capacity(replayed.events.len() + 1);
    let mut last = after_seq;
    if let Some((from_seq, to_seq)) = replayed.gap {
        frames.push(ServerFrame::Gap {
            run_id: run.clone(),
            from_seq,
            to_seq,
        });
        last = last.max(to_seq);
    }
    for envelope in replayed.events {
        if envelope.seq > last + 1 {
            frames.push(ServerFrame::Gap {
                run_id: run.clone(),
                from_seq: last + 1,
                to_seq: envelope.seq - 1,
            });
        }
        last = last.max(envelope.seq);
        frames.push(ServerFrame::Event {
            envelope: std::sync::Arc::new(envelope),
        });
    }
    frames
}

/// The frames of a replay that fit in `room` places of the connection's queue: when they do
/// not all fit, the last place goes to a `gap` frame naming the events not sent (the client
/// resumes again from the last seq it got), never a silent cut.
fn fit(mut frames: Vec<ServerFrame>, room: usize, run: &RunId) -> Vec<ServerFrame> {
    if frames.len() <= room {
        return frames;
    }
    let keep = room.saturating_sub(1);
    let seq_of = |f: &ServerFrame| match f {
        ServerFrame::Event { envelope } => Some(envelope.seq),
        ServerFrame::Gap { from_seq, .. } => Some(*from_seq),
        _ => None,
    };
    let last_of = |f: &ServerFrame| match f {
        ServerFrame::Event { envelope } => Some(envelope.seq),
        ServerFrame::Gap { to_seq, .. } => Some(*to_seq),
        _ => None,
    };
    let cut = frames.split_off(keep);
    let from_seq = cut.iter().find_map(seq_of);
    let to_seq = cut.iter().rev().find_map(last_of);
    if let (Some(from_seq), Some(to_seq)) = (from_seq, to_seq) {
        frames.push(ServerFrame::Gap {
            run_id: run.clone(),
            from_seq,
            to_seq,
        });
    }
    frames
}

/// Events read from the store per page, and pages per resume at most (a longer run resumes in
/// several `resume`s, each from the last seq it got).
const STORE_PAGE: usize = 500;
const STORE_PAGES: usize = 40;
/// Longest one read of the store may take before `resume` answers `store_unavailable` (the
/// socket's other frames wait behind it).
const STORE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A run's stored events after `after_seq`, with a `gap` frame before each stretch of sequence
/// numbers that was not stored.
async fn resume_from_store(
    store: &dyn RunStore,
    user: &UserId,
    run: &RunId,
    mut after_seq: u64,
) -> Result<Vec<ServerFrame>, ServerFrame> {
    let mut frames = Vec::new();
    for _ in 0..STORE_PAGES {
        let read = store.events_after(user, run, after_seq, STORE_PAGE);
        let page = tokio::time::timeout(STORE_READ_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| {
                Err(engine_factory::StoreError::Unavailable(format!(
                    "no answer within {STORE_READ_TIMEOUT:?}"
                )))
            })
            .map_err(|e| {
                tracing::warn!(run_id = %run, error = %e, "resume: the run store could not be read");
                ServerFrame::error(
                    ErrorCode::StoreUnavailable,
                    format!("cannot read run {run} from the store right now; retry the resume"),
                )
            })?
            .ok_or_else(|| no_run_to_resume(run))?;
        let mut gaps = page.gaps.iter().peekable();
        for envelope in page.events {
            while let Some((from_seq, to_seq)) = gaps.next_if(|(_, to)| *to < envelope.seq) {
                frames.push(ServerFrame::Gap {
                    run_id: run.clone(),
                    from_seq: *from_seq,
                    to_seq: *to_seq,
                });
            }
            after_seq = envelope.seq;
            frames.push(ServerFrame::Event {
                envelope: std::sync::Arc::new(envelope),
            });
        }
        if !page.more {
            return Ok(frames);
        }
    }
    Ok(frames)
}

fn no_run_to_resume(run: &RunId) -> ServerFrame {
    ServerFrame::error(
        ErrorCode::UnknownRun,
        format!("no run {run} of yours to resume"),
    )
}

fn unknown_approval(run: &RunId, call_id: u32) -> ServerFrame {
    ServerFrame::error(
        ErrorCode::UnknownApproval,
        format!("run {run} has no tool call {call_id} waiting for approval"),
    )
}

/// The frame for a cancel or approval the cluster could not deliver.
fn control_frame(run: &RunId, e: &ControlError) -> ServerFrame {
    match e {
        ControlError::UnknownApproval { call_id, .. } => unknown_approval(run, *call_id),
        ControlError::NodeUnreachable { .. } | ControlError::Unavailable(_) => {
            // Redis's own text and node ids are the operator's.
            tracing::warn!(run_id = %run, error = %e, "cancel or approval not delivered");
            ServerFrame::error(
                ErrorCode::ClusterUnavailable,
                format!("the node running {run} cannot be reached right now; try again shortly"),
            )
        }
        _ => unknown_run(run),
    }
}

#[cfg(test)]
mod tests {
    use engine_core::{AgentEvent, EventEnvelope, RequestId, ThreadId, UserId};

    use super::*;

    fn event(seq: u64) -> EventEnvelope {
        EventEnvelope {
            user_id: UserId::new("u").unwrap(),
            thread_id: ThreadId::new("t").unwrap(),
            run_id: RunId::new("r").unwrap(),
            request_id: RequestId::new("q").unwrap(),
            seq,
            timestamp_us: 1,
            event: AgentEvent::AgentThinking {
                reasoning: "x".into(),
            },
        }
    }

    fn shape(frames: &[ServerFrame]) -> Vec<(u64, u64)> {
        frames
            .iter()
            .map(|f| match f {
                ServerFrame::Event { envelope } => (envelope.seq, envelope.seq),
                ServerFrame::Gap {
                    from_seq, to_seq, ..
                } => (*from_seq, *to_seq),
                _ => (0, 0),
            })
            .collect()
    }

    /// After which seq, the window's gap, the seqs the stream held, the frames expected.
    type Case = (
        u64,
        Option<(u64, u64)>,
        &'static [u64],
        &'static [(u64, u64)],
    );

    /// Table: what the stream held after the asked seq, and the frames a client gets (an
    /// event as (seq, seq), a gap as (from, to)).
    #[test]
    fn a_replay_announces_every_stretch_the_stream_does_not_hold() {
        let run = RunId::new("r").unwrap();
        let cases: &[Case] = &[
            (0, None, &[1, 2, 3], &[(1, 1), (2, 2), (3, 3)]),
            (2, None, &[3, 4], &[(3, 3), (4, 4)]),
            (0, Some((1, 4)), &[5, 6], &[(1, 4), (5, 5), (6, 6)]),
            (
                0,
                None,
                &[1, 2, 6, 7],
                &[(1, 1), (2, 2), (3, 5), (6, 6), (7, 7)],
            ),
            (3, Some((4, 5)), &[6, 9], &[(4, 5), (6, 6), (7, 8), (9, 9)]),
        ];
        for (after, gap, seqs, want) in cases {
            let replayed =
                engine_factory::Replayed::new(*gap, seqs.iter().map(|s| event(*s)).collect());
            let frames = bus_frames(&run, *after, replayed);
            assert_eq!(
                shape(&frames),
                *want,
                "after {after}, gap {gap:?}, {seqs:?}"
            );
        }
    }
}

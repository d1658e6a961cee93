//! Runs whose process died: each gets one terminal record and one terminal event, status
//! `interrupted`, exactly once. Exactly-once is the database's: the mark is one conditional
//! `UPDATE ... WHERE status = 'running'`, and the terminal event is written in the same
//! transaction, so two nodes sweeping at once cannot both mark a run.
//!
//! Which runs: on SQLite (one process per file), every running run, at start. On Postgres (a
//! cluster), at start the runs of this node id's earlier process, and always every running run
//! of a node whose heartbeat row is older than the node lease, by whichever node sweeps first
//! (each node sweeps every heartbeat).
//!
//! The interrupted terminal event's sequence number leaves room for the events the dead
//! process delivered live but had not stored yet (its buffer and one batch): no client ever
//! holds an event with that number, and a resume reports the stretch as a `gap`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use engine_core::{AgentEvent, RunStatus};
use sqlx::Row;

use crate::writer::{enqueue_webhook, i64_of, time_out_approvals, Shared};

/// The error of an interrupted run, as its record and terminal event carry it.
pub const INTERRUPTED: &str = "the server stopped while this run was in progress";

/// Sequence numbers the interrupted terminal event leaves after the last stored one: the most
/// events of a run a process can have delivered and not yet stored (its buffer and one batch).
pub(crate) fn unstored_margin(shared: &Shared) -> i64 {
    i64_of((shared.buffer + shared.batch_size) as u64)
}

/// Which runs a sweep may mark.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sweep {
    /// Every running run, whatever its node (single node, at start, before any run of this
    /// process: they are all an earlier process's).
    Everything,
    /// Running runs of this node id (an earlier process that had the same `--node-id`; this
    /// one has no run yet) and of nodes without a heartbeat within `lease` (a cluster node, at
    /// start).
    MineAndDead { lease: Duration },
    /// Running runs of other nodes without a heartbeat within `lease` (a cluster node, at
    /// each heartbeat).
    DeadNodes { lease: Duration },
}

/// Writes (or refreshes) this node's heartbeat on the database's clock.
pub(crate) async fn heartbeat(shared: &Shared) -> Result<(), sqlx::Error> {
    let now = shared.backend.now_us();
    let sql = format!(
        "INSERT INTO nodes (node_id, started_us, heartbeat_us) VALUES ($1, {now}, {now}) \
         ON CONFLICT (node_id) DO UPDATE SET heartbeat_us = excluded.heartbeat_us"
    );
    sqlx::query(&sql)
        .bind(shared.node_id.as_str())
        .execute(&shared.pool)
        .await?;
    Ok(())
}

/// Marks the runs `sweep` selects as `interrupted`, with their terminal events; returns how
/// many this call marked.
pub(crate) async fn interrupt(shared: &Shared, sweep: Sweep) -> Result<u64, sqlx::Error> {
    let now = shared.backend.now_us();
    let fresh = format!("(SELECT node_id FROM nodes WHERE heartbeat_us > {now} - $3)");
    let which = match sweep {
        Sweep::Everything => "$2 = $2".to_owned(),
        Sweep::MineAndDead { .. } => format!("(node_id = $2 OR node_id NOT IN {fresh})"),
        Sweep::DeadNodes { .. } => format!("node_id <> $2 AND node_id NOT IN {fresh}"),
    };
    let mut sql = format!(
        "UPDATE runs SET status = 'interrupted', error = $1, ended_us = {now} \
         WHERE status = 'running' AND {which}"
    );
    sql.push_str(" RETURNING user_id, run_id, request_id, agent_name, accepted_us, ended_us");
    let mut tx = shared.pool.begin().await?;
    let mut query = sqlx::query(&sql)
        .bind(INTERRUPTED)
        .bind(shared.node_id.as_str());
    if let Sweep::DeadNodes { lease } | Sweep::MineAndDead { lease } = sweep {
        query = query.bind(i64_of(u64::try_from(lease.as_micros()).unwrap_or(u64::MAX)));
    }
    let marked = query.fetch_all(&mut *tx).await?;
    for row in &marked {
        let user: String = row.try_get(0)?;
        let run: String = row.try_get(1)?;
        let request: String = row.try_get(2)?;
        let agent: String = row.try_get(3)?;
        let accepted: i64 = row.try_get(4)?;
        let ended: i64 = row.try_get(5)?;
        // After every stored event and recorded gap of the run, and after every event the
        // dead process may have delivered live but not stored: at most its buffer and one
        // batch. A client that saw some of them gets a `gap` for the rest on resume, and no
        // number it already holds is reused.
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM events WHERE user_id = $1 AND run_id = $2 \
             UNION ALL SELECT MAX(to_seq) AS s FROM gaps WHERE user_id = $1 AND run_id = $2) AS last",
        )
        .bind(user.as_str())
        .bind(run.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let event = AgentEvent::AgentCompleted {
            agent_name: Arc::from(agent.as_str()),
            status: RunStatus::Interrupted,
            success: false,
            result: None,
            error: Some(INTERRUPTED.to_owned()),
            duration_ms: u64::try_from((ended - accepted).max(0) / 1000).unwrap_or(0),
        };
        let body = serde_json::to_string(&event).unwrap_or_else(|_| "{}".to_owned());
        sqlx::query(
            "INSERT INTO events (user_id, run_id, seq, request_id, timestamp_us, body) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, run_id, seq) DO NOTHING",
        )
        .bind(user.as_str())
        .bind(run.as_str())
        .bind(last.unwrap_or(0) + unstored_margin(shared) + 1)
        .bind(request.as_str())
        .bind(ended)
        .bind(body)
        .execute(&mut *tx)
        .await?;
        time_out_approvals(&mut tx, &user, &run, ended).await?;
        if let Some(now) = shared.webhook_clock() {
            enqueue_webhook(&mut tx, now, &user, &run, Duration::ZERO).await?;
        }
    }
    tx.commit().await?;
    let n = marked.len() as u64;
    if n > 0 {
        shared
            .counters
            .runs_interrupted
            .fetch_add(n, Ordering::Relaxed);
        tracing::warn!(
            runs = n,
            "runs of a stopped process marked interrupted (one terminal record and event each)"
        );
    }
    Ok(n)
}

-- engine-store schema 1 (SQLite). Append-only: a thread's history is never rewritten per turn.
-- Every key starts with the user id: no read can reach another user's rows.

CREATE TABLE threads (
    user_id     TEXT    NOT NULL,
    thread_id   TEXT    NOT NULL,
    created_us  INTEGER NOT NULL,
    updated_us  INTEGER NOT NULL,
    run_count   INTEGER NOT NULL DEFAULT 0,
    preview     TEXT,
    PRIMARY KEY (user_id, thread_id)
) WITHOUT ROWID;
CREATE INDEX threads_by_update ON threads (user_id, updated_us DESC, thread_id DESC);

CREATE TABLE runs (
    user_id           TEXT    NOT NULL,
    run_id            TEXT    NOT NULL,
    thread_id         TEXT    NOT NULL,
    request_id        TEXT    NOT NULL,
    agent_name        TEXT    NOT NULL,
    node_id           TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    input             TEXT    NOT NULL,
    result            TEXT,
    error             TEXT,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    queue_ms          INTEGER NOT NULL DEFAULT 0,
    execution_ms      INTEGER NOT NULL DEFAULT 0,
    steps             TEXT,
    accepted_us       INTEGER NOT NULL,
    ended_us          INTEGER,
    PRIMARY KEY (user_id, run_id)
) WITHOUT ROWID;
CREATE INDEX runs_by_thread ON runs (user_id, thread_id, accepted_us);
CREATE INDEX runs_running ON runs (node_id) WHERE status = 'running';

CREATE TABLE events (
    user_id      TEXT    NOT NULL,
    run_id       TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    request_id   TEXT    NOT NULL,
    timestamp_us INTEGER NOT NULL,
    body         TEXT    NOT NULL,
    PRIMARY KEY (user_id, run_id, seq)
) WITHOUT ROWID;

CREATE TABLE gaps (
    user_id  TEXT    NOT NULL,
    run_id   TEXT    NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq   INTEGER NOT NULL,
    PRIMARY KEY (user_id, run_id, from_seq)
) WITHOUT ROWID;

CREATE TABLE messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT    NOT NULL,
    thread_id  TEXT    NOT NULL,
    run_id     TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    content    TEXT    NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE INDEX messages_by_thread ON messages (user_id, thread_id, id);

CREATE TABLE approvals (
    user_id      TEXT    NOT NULL,
    run_id       TEXT    NOT NULL,
    call_id      INTEGER NOT NULL,
    tool_name    TEXT    NOT NULL,
    arguments    TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    requested_us INTEGER NOT NULL,
    decided_us   INTEGER,
    PRIMARY KEY (user_id, run_id, call_id)
) WITHOUT ROWID;

CREATE TABLE nodes (
    node_id      TEXT    NOT NULL PRIMARY KEY,
    started_us   INTEGER NOT NULL,
    heartbeat_us INTEGER NOT NULL
) WITHOUT ROWID;

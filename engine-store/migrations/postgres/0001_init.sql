-- engine-store schema 1 (PostgreSQL). Append-only: a thread's history is never rewritten per turn.
-- Every key starts with the user id: no read can reach another user's rows.

CREATE TABLE threads (
    user_id     TEXT    NOT NULL,
    thread_id   TEXT    NOT NULL,
    created_us  BIGINT  NOT NULL,
    updated_us  BIGINT  NOT NULL,
    run_count   BIGINT  NOT NULL DEFAULT 0,
    preview     TEXT,
    PRIMARY KEY (user_id, thread_id)
);
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
    prompt_tokens     BIGINT  NOT NULL DEFAULT 0,
    completion_tokens BIGINT  NOT NULL DEFAULT 0,
    queue_ms          BIGINT  NOT NULL DEFAULT 0,
    execution_ms      BIGINT  NOT NULL DEFAULT 0,
    steps             TEXT,
    accepted_us       BIGINT  NOT NULL,
    ended_us          BIGINT ,
    PRIMARY KEY (user_id, run_id)
);
CREATE INDEX runs_by_thread ON runs (user_id, thread_id, accepted_us);
CREATE INDEX runs_running ON runs (node_id) WHERE status = 'running';

CREATE TABLE events (
    user_id      TEXT    NOT NULL,
    run_id       TEXT    NOT NULL,
    seq          BIGINT  NOT NULL,
    request_id   TEXT    NOT NULL,
    timestamp_us BIGINT  NOT NULL,
    body         TEXT    NOT NULL,
    PRIMARY KEY (user_id, run_id, seq)
);

CREATE TABLE gaps (
    user_id  TEXT    NOT NULL,
    run_id   TEXT    NOT NULL,
    from_seq BIGINT  NOT NULL,
    to_seq   BIGINT  NOT NULL,
    PRIMARY KEY (user_id, run_id, from_seq)
);

CREATE TABLE messages (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    thread_id  TEXT    NOT NULL,
    run_id     TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    content    TEXT    NOT NULL,
    created_us BIGINT  NOT NULL
);
CREATE INDEX messages_by_thread ON messages (user_id, thread_id, id);

CREATE TABLE approvals (
    user_id      TEXT    NOT NULL,
    run_id       TEXT    NOT NULL,
    call_id      BIGINT  NOT NULL,
    tool_name    TEXT    NOT NULL,
    arguments    TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    requested_us BIGINT  NOT NULL,
    decided_us   BIGINT ,
    PRIMARY KEY (user_id, run_id, call_id)
);

CREATE TABLE nodes (
    node_id      TEXT    NOT NULL PRIMARY KEY,
    started_us   BIGINT  NOT NULL,
    heartbeat_us BIGINT  NOT NULL
);

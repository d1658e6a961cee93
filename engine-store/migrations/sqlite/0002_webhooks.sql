-- engine-store schema 2 (SQLite): webhook deliveries of ended runs, kept until delivered or
-- given up (at least once: a claimed delivery is due again once its lease passes).

CREATE TABLE webhooks (
    user_id     TEXT    NOT NULL,
    run_id      TEXT    NOT NULL,
    due_us      INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    enqueued_us INTEGER NOT NULL,
    PRIMARY KEY (user_id, run_id)
) WITHOUT ROWID;
CREATE INDEX webhooks_due ON webhooks (due_us);

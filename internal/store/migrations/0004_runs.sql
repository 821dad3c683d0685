-- Runs: one command in a fresh VM, owned by the daemon from create to
-- delete (POST /v1/runs). record is JSON, owned by internal/run.
CREATE TABLE runs (
    id         TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    record     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_created_at ON runs(created_at);

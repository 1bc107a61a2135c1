-- rekey schema, version 1.
-- Times are INTEGER unix microseconds UTC (NULL = not set); durations are
-- INTEGER nanoseconds. Wrapped DEKs are stored; plaintext DEKs never are.

CREATE TABLE keys (
    name            TEXT    PRIMARY KEY,
    backend         TEXT    NOT NULL,
    backend_ref     TEXT    NOT NULL,
    active_version  INTEGER NOT NULL CHECK (active_version > 0),
    expires_at      INTEGER,
    rotation_period INTEGER NOT NULL,
    rotate_within   INTEGER NOT NULL,
    notify_within   INTEGER NOT NULL,
    grace           INTEGER NOT NULL,
    destroy_after   INTEGER NOT NULL,
    created_at      INTEGER,
    updated_at      INTEGER
) STRICT;

CREATE TABLE key_versions (
    key          TEXT    NOT NULL REFERENCES keys (name),
    version      INTEGER NOT NULL CHECK (version > 0),
    state        TEXT    NOT NULL CHECK (state IN ('created', 'active', 'pending_retirement', 'retired', 'destroyed', 'compromised')),
    created_at   INTEGER,
    activated_at INTEGER,
    retire_after INTEGER,
    retired_at   INTEGER,
    destroyed_at INTEGER,
    PRIMARY KEY (key, version)
) STRICT, WITHOUT ROWID;

CREATE TABLE deks (
    id         TEXT    PRIMARY KEY,
    key        TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    wrapped    BLOB    NOT NULL,
    label      TEXT    NOT NULL DEFAULT '',
    created_at INTEGER,
    updated_at INTEGER
) STRICT;
-- No foreign key to key_versions here: it costs about a quarter of the
-- throughput of batched writes, and both writers already check in their
-- transaction (InsertDEKs: the key's active version; SwapDEKs: the
-- version exists).

-- Paging a key's DEKs in id order, and (with version) counting per version
-- and paging the DEKs of one version.
CREATE INDEX deks_key_id ON deks (key, id);
CREATE INDEX deks_key_version ON deks (key, version, id);

CREATE TABLE rotations (
    id           TEXT    PRIMARY KEY,
    key          TEXT    NOT NULL REFERENCES keys (name),
    from_version INTEGER NOT NULL,
    to_version   INTEGER NOT NULL DEFAULT 0,
    state        TEXT    NOT NULL CHECK (state IN ('claimed', 'version_created', 'rewrapping', 'committed', 'done')),
    reason       TEXT    NOT NULL,
    note         TEXT    NOT NULL DEFAULT '',
    compromised  INTEGER NOT NULL DEFAULT 0,
    deks_total   INTEGER NOT NULL DEFAULT 0,
    deks_done    INTEGER NOT NULL DEFAULT 0,
    deks_failed  INTEGER NOT NULL DEFAULT 0,
    cursor       TEXT    NOT NULL DEFAULT '',
    failed_deks  TEXT,   -- JSON array of DEK ids, NULL when empty
    started_at   INTEGER,
    updated_at   INTEGER,
    finished_at  INTEGER,
    owner        TEXT    NOT NULL,
    epoch        INTEGER NOT NULL,
    last_error   TEXT    NOT NULL DEFAULT ''
) STRICT;

-- Rule 1 of the state machine: one open rotation per key, enforced here.
CREATE UNIQUE INDEX rotations_one_open_per_key ON rotations (key) WHERE state <> 'done';
CREATE INDEX rotations_started ON rotations (started_at, id);
CREATE INDEX rotations_key_started ON rotations (key, started_at, id);

-- A lease is current while (owner, epoch) match and it is not released;
-- epochs only go up, so a released or expired lease keeps its row.
CREATE TABLE leases (
    key        TEXT    PRIMARY KEY,
    owner      TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    released   INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE audit_events (
    seq                INTEGER PRIMARY KEY,
    time               INTEGER,
    type               TEXT    NOT NULL,
    key                TEXT    NOT NULL,
    from_version       INTEGER NOT NULL,
    to_version         INTEGER NOT NULL,
    rotation_id        TEXT    NOT NULL,
    deks               INTEGER NOT NULL,
    status             TEXT    NOT NULL,
    error              TEXT    NOT NULL,
    actor              TEXT    NOT NULL,
    reason             TEXT    NOT NULL,
    backend_request_id TEXT    NOT NULL,
    prev_hash          TEXT    NOT NULL,
    hash               TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_events_key ON audit_events (key, seq);
CREATE INDEX audit_events_time ON audit_events (time);

-- The trail is append-only. These triggers stop a bug from rewriting it;
-- they do not stop someone with write access to the file, which is what
-- the hash chain and the MAC'd checkpoints below are for.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

-- Periodic checkpoints of the chain head, MAC'd with a key held in a backend.
CREATE TABLE audit_checkpoints (
    seq        INTEGER PRIMARY KEY,
    hash       TEXT    NOT NULL,
    mac        BLOB    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

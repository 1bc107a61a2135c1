-- rekey schema for PostgreSQL, version 1 (the same tables as SQLite's
-- versions 1 to 3). Times are timestamptz (microseconds; NULL = not set);
-- durations are bigint nanoseconds. Wrapped DEKs are stored; plaintext
-- DEKs never are. Unqualified names: the tables go into the first schema
-- of the connection's search_path.

CREATE TABLE keys (
    name            text        PRIMARY KEY,
    backend         text        NOT NULL,
    backend_ref     text        NOT NULL,
    active_version  integer     NOT NULL CHECK (active_version > 0),
    expires_at      timestamptz,
    rotation_period bigint      NOT NULL,
    rotate_within   bigint      NOT NULL,
    notify_within   bigint      NOT NULL,
    grace           bigint      NOT NULL,
    destroy_after   bigint      NOT NULL,
    created_at      timestamptz,
    updated_at      timestamptz
);

CREATE TABLE key_versions (
    key          text        NOT NULL REFERENCES keys (name),
    version      integer     NOT NULL CHECK (version > 0),
    state        text        NOT NULL CHECK (state IN ('created', 'active', 'pending_retirement', 'retired', 'destroyed', 'compromised')),
    created_at   timestamptz,
    activated_at timestamptz,
    expires_at   timestamptz,
    retire_after timestamptz,
    retired_at   timestamptz,
    destroyed_at timestamptz,
    PRIMARY KEY (key, version)
);

CREATE TABLE deks (
    id         text        PRIMARY KEY,
    key        text        NOT NULL,
    version    integer     NOT NULL,
    wrapped    bytea       NOT NULL,
    label      text        NOT NULL DEFAULT '',
    created_at timestamptz,
    updated_at timestamptz
);
-- No foreign key to key_versions, as in SQLite: both writers check in
-- their transaction, under a lock on the version row.
CREATE INDEX deks_key_id ON deks (key, id);
CREATE INDEX deks_key_version ON deks (key, version, id);

CREATE TABLE rotations (
    id           text        PRIMARY KEY,
    key          text        NOT NULL REFERENCES keys (name),
    from_version integer     NOT NULL,
    to_version   integer     NOT NULL DEFAULT 0,
    state        text        NOT NULL CHECK (state IN ('claimed', 'version_created', 'rewrapping', 'committed', 'done')),
    reason       text        NOT NULL,
    note         text        NOT NULL DEFAULT '',
    compromised  integer     NOT NULL DEFAULT 0, -- emergency: the version to re-wrap away first
    deks_total   bigint      NOT NULL DEFAULT 0,
    deks_done    bigint      NOT NULL DEFAULT 0,
    deks_failed  bigint      NOT NULL DEFAULT 0,
    cursor       text        NOT NULL DEFAULT '',
    failed_deks  text[],     -- NULL when empty
    started_at   timestamptz,
    updated_at   timestamptz,
    finished_at  timestamptz,
    owner        text        NOT NULL,
    epoch        bigint      NOT NULL,
    last_error   text        NOT NULL DEFAULT ''
);
-- Rule 1 of the state machine: one open rotation per key, enforced here.
CREATE UNIQUE INDEX rotations_one_open_per_key ON rotations (key) WHERE state <> 'done';
CREATE INDEX rotations_started ON rotations (started_at, id);
CREATE INDEX rotations_key_started ON rotations (key, started_at, id);

-- A lease is current while (owner, epoch) match and it is not released;
-- epochs only go up, so a released or expired lease keeps its row. Fenced
-- writes read the row FOR SHARE, so an acquisition (FOR UPDATE) waits for
-- them to commit and they never write under a lease that has moved on.
CREATE TABLE leases (
    key        text        PRIMARY KEY,
    owner      text        NOT NULL,
    epoch      bigint      NOT NULL,
    expires_at timestamptz NOT NULL,
    released   boolean     NOT NULL DEFAULT false
);

CREATE TABLE audit_events (
    seq                bigint      PRIMARY KEY,
    time               timestamptz,
    type               text        NOT NULL,
    key                text        NOT NULL,
    from_version       integer     NOT NULL,
    to_version         integer     NOT NULL,
    rotation_id        text        NOT NULL,
    deks               bigint      NOT NULL,
    status             text        NOT NULL,
    error              text        NOT NULL,
    actor              text        NOT NULL,
    reason             text        NOT NULL,
    backend_request_id text        NOT NULL,
    prev_hash          text        NOT NULL,
    hash               text        NOT NULL
);
CREATE INDEX audit_events_key ON audit_events (key, seq);
CREATE INDEX audit_events_time ON audit_events (time);

-- The chain head, one row. Every append locks it (SELECT ... FOR UPDATE)
-- in the transaction of the change it records, so appenders in several
-- processes serialise and the chain has no gap and no fork.
CREATE TABLE audit_head (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint  NOT NULL,
    hash text    NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (true, 0, '');

-- Periodic checkpoints of the chain head, MAC'd with a key held in a
-- backend; key_id names it ("local/audit.checkpoint"), for information.
CREATE TABLE audit_checkpoints (
    seq        bigint      PRIMARY KEY,
    hash       text        NOT NULL,
    mac        bytea       NOT NULL,
    key_id     text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL
);

-- The trail and its checkpoints are append-only. These triggers stop a
-- bug from rewriting them; they do not stop a superuser or the tables'
-- owner, which is what the hash chain and the MAC'd checkpoints are for.
CREATE FUNCTION rekey_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END;
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION rekey_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION rekey_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION rekey_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION rekey_append_only();

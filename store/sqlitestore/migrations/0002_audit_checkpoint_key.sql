-- rekey schema, version 2: audit checkpoints name the key that MAC'd them,
-- and are append-only like the events they vouch for.

-- Which backend and purpose made the MAC ("local/audit.checkpoint"). Only
-- informational: a verifier checks every checkpoint with the key it has.
ALTER TABLE audit_checkpoints ADD COLUMN key_id TEXT NOT NULL DEFAULT '';

-- As for audit_events: these stop a bug, not someone with write access to
-- the file. A forged or edited checkpoint fails its MAC, which needs a key
-- the database does not hold.
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;

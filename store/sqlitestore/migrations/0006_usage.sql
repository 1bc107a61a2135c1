-- rekey schema, version 6: rotation by usage. A key's policy gains
-- max_encryptions (wraps one version may do) and rotate_at (the fraction
-- of it at which the key is due); 0 means rekey's default (2^30 and 0.8).
-- wrap_counts counts the wraps under each backend key version whose
-- backend does not count them itself (the local keyring does): the
-- backend middleware reserves counts here, in blocks, before it wraps,
-- so a count never reads lower than the wraps done.
ALTER TABLE keys ADD COLUMN max_encryptions INTEGER NOT NULL DEFAULT 0 CHECK (max_encryptions >= 0);
ALTER TABLE keys ADD COLUMN rotate_at REAL NOT NULL DEFAULT 0 CHECK (rotate_at >= 0 AND rotate_at <= 1);
CREATE TABLE wrap_counts (
    backend TEXT NOT NULL,
    ref     TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    count   INTEGER NOT NULL CHECK (count >= 0),
    PRIMARY KEY (backend, ref, version)
);

-- rekey schema, version 4: a rotation's re-wrap split into id ranges
-- (rekey.RangeSharer), each worked under a lease of its own (lease key
-- rewrap/ROTATION/INDEX in leases). Range idx holds the DEKs of the
-- rotation's key with ids in (lo, hi]; hi '' means no upper bound. Rows are
-- written by SplitRewrap, updated by CommitRangeBatch, never deleted.
CREATE TABLE rewrap_ranges (
    rotation_id TEXT    NOT NULL REFERENCES rotations (id),
    idx         INTEGER NOT NULL CHECK (idx >= 0),
    key         TEXT    NOT NULL,
    lo          TEXT    NOT NULL,
    hi          TEXT    NOT NULL,
    cursor      TEXT    NOT NULL DEFAULT '',
    deks_done   INTEGER NOT NULL DEFAULT 0,
    deks_failed INTEGER NOT NULL DEFAULT 0,
    finished    INTEGER NOT NULL DEFAULT 0 CHECK (finished IN (0, 1)),
    PRIMARY KEY (rotation_id, idx)
) STRICT;

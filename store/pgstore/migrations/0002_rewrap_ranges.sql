-- rekey schema for PostgreSQL, version 2: a rotation's re-wrap split into
-- id ranges (rekey.RangeSharer), each worked under a lease of its own
-- (lease key rewrap/ROTATION/INDEX in leases). Range idx holds the DEKs of
-- the rotation's key with ids in (lo, hi]; hi '' means no upper bound.
-- Rows are written by SplitRewrap, updated by CommitRangeBatch, never
-- deleted.
CREATE TABLE rewrap_ranges (
    rotation_id text    NOT NULL REFERENCES rotations (id),
    idx         integer NOT NULL CHECK (idx >= 0),
    key         text    NOT NULL,
    lo          text    NOT NULL,
    hi          text    NOT NULL,
    cursor      text    NOT NULL DEFAULT '',
    deks_done   bigint  NOT NULL DEFAULT 0,
    deks_failed bigint  NOT NULL DEFAULT 0,
    finished    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (rotation_id, idx)
);

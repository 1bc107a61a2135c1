-- rekey schema, version 5: the DEKs per version come from counters, not
-- from an index on every row (README "Performance", "The lean DEK schema
-- (PostgreSQL)").
--   - deks_key_version (key, version, id) is gone: every re-wrap changed
--     each row's version, so every swap inserted a new entry in it (an
--     UPDATE of an indexed column is never HOT: each swap wrote the heap
--     and all three indexes). deks keeps its primary key (id) and
--     deks_key_id (key, id), whose columns a swap never changes;
--   - dek_counts holds the number of DEKs per (key, version), changed in
--     the same transaction by every write that inserts or swaps DEKs
--     (InsertDEKs, SwapDEKs, CommitBatch, CommitRangeBatch: the store's
--     code, not a trigger), always after the rows and in (key, version)
--     order, so two writers never wait for each other's counters in a
--     cycle. Status, metrics and the engine's plans read it (CountDEKs).
--     Retiring or destroying a version (ChangeVersionState with
--     RequireUnused) never trusts it: it counts the rows themselves.
-- The counters start from the rows, under a SHARE lock on deks (writers
-- wait for the end of this migration, readers do not), so none is missed.

LOCK TABLE deks IN SHARE MODE;

DROP INDEX deks_key_version;

-- n may reach 0 (a version whose DEKs all moved); CountDEKs leaves those
-- out. No CHECK (n >= 0): a counter set wrong by hand must not stop the
-- writes that move it. No foreign key, as for deks.
CREATE TABLE dek_counts (
    key     text    NOT NULL,
    version integer NOT NULL,
    n       bigint  NOT NULL,
    PRIMARY KEY (key, version)
);

INSERT INTO dek_counts (key, version, n)
    SELECT key, version, count(*) FROM deks GROUP BY key, version;

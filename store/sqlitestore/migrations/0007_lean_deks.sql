-- rekey schema, version 6: a lean deks table. Every re-wrap write moved
-- each row's entry in deks_key_version (key, version, id), which cost about
-- as much as the row itself. Now:
--   - deks is WITHOUT ROWID keyed by id (one B-tree holds the rows, where
--     a rowid table kept the rows and a separate index on id), with one
--     secondary index, deks_key_id, that a swap never moves (key and id do
--     not change);
--   - dek_counts holds the number of DEKs per (key, version), kept in the
--     same transaction by every write that inserts or swaps DEKs (the store
--     code, not a trigger: a trigger costs half the gain). Status, metrics
--     and the engine's plans read it (CountDEKs). Retiring or destroying a
--     version (ChangeVersionState with RequireUnused) never trusts it: it
--     counts the rows themselves.
-- One transaction like every migration: at 1,000,000 DEKs it rewrites the
-- table (see README "Performance" for the time it takes).

CREATE TABLE deks_lean (
    id         TEXT    PRIMARY KEY,
    key        TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    wrapped    BLOB    NOT NULL,
    label      TEXT    NOT NULL DEFAULT '',
    created_at INTEGER,
    updated_at INTEGER
) STRICT, WITHOUT ROWID;

INSERT INTO deks_lean (id, key, version, wrapped, label, created_at, updated_at)
    SELECT id, key, version, wrapped, label, created_at, updated_at FROM deks ORDER BY id;

DROP TABLE deks; -- and its indexes deks_key_id and deks_key_version
ALTER TABLE deks_lean RENAME TO deks;

-- Paging a key's DEKs in id order (ListDEKs, ranges); counting the rows of
-- one version for the retirement gate scans it too.
CREATE INDEX deks_key_id ON deks (key, id);

-- n may reach 0 (a version whose DEKs all moved); CountDEKs leaves those
-- out. No CHECK (n >= 0): a counter set wrong by hand must not stop the
-- writes that move it. No foreign key, as for deks.
CREATE TABLE dek_counts (
    key     TEXT    NOT NULL,
    version INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (key, version)
) STRICT, WITHOUT ROWID;

INSERT INTO dek_counts (key, version, n)
    SELECT key, version, count(*) FROM deks GROUP BY key, version;

-- rekey schema, version 3: each version records when its rotation period
-- ends (or ended), the period in force as a typed fact rather than text in
-- an audit reason. Set when the version becomes active, moved by a policy
-- change while it is active, kept afterwards; NULL for a version that was
-- never active.
ALTER TABLE key_versions ADD COLUMN expires_at INTEGER;

-- Back-fill. The active version ends when its key expires.
UPDATE key_versions SET expires_at = (SELECT k.expires_at FROM keys k WHERE k.name = key_versions.key)
WHERE version = (SELECT k.active_version FROM keys k WHERE k.name = key_versions.key);

-- An earlier version ran for the key's rotation period from its activation
-- (the best record there is of the period then in force; rotation_period is
-- in nanoseconds, times in microseconds).
UPDATE key_versions SET expires_at = activated_at + (SELECT k.rotation_period FROM keys k WHERE k.name = key_versions.key) / 1000
WHERE activated_at IS NOT NULL
  AND version <> (SELECT k.active_version FROM keys k WHERE k.name = key_versions.key);

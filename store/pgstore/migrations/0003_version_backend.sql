-- rekey schema for PostgreSQL, version 3: a version knows its backend, so
-- that a key can move to another backend as a rotation (rekey key move).
-- backend and backend_ref empty mean the key's own (every row written
-- before); the commit of a move stamps them with the key's old backend
-- before it changes the key's. backend_version is the version's number at
-- its backend, 0 meaning the same as version. A rotation records the
-- backend it moves the key to (to_backend, empty for an ordinary
-- rotation).
ALTER TABLE key_versions ADD COLUMN backend text NOT NULL DEFAULT '';
ALTER TABLE key_versions ADD COLUMN backend_ref text NOT NULL DEFAULT '';
ALTER TABLE key_versions ADD COLUMN backend_version integer NOT NULL DEFAULT 0 CHECK (backend_version >= 0);
ALTER TABLE rotations ADD COLUMN to_backend text NOT NULL DEFAULT '';

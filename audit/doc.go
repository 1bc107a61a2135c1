// Package audit verifies, checkpoints, exports and logs rekey's audit
// trail.
//
// # The trail
//
// Every state change the engine makes is recorded, in the same
// transaction, as a rekey.AuditEvent. The store numbers events 1, 2, 3, …
// and chains them: each event's Hash is a SHA-256 over a canonical
// encoding of all its fields and of PrevHash, the Hash of the event before
// it (rekey.GenesisHash for the first). Verify recomputes the chain and
// names the first event that was edited, deleted, inserted or reordered.
//
// # Checkpoints, and why their key lives in the backend
//
// A hash chain alone proves nothing against someone who can write to the
// database: SHA-256 needs no key, so an attacker who edits an event can
// recompute its hash and every later one, and the chain is consistent
// again. Checkpoint therefore MACs the chain head (seq and hash, in a
// domain-separated, length-prefixed message) with a key held by a backend
// (rekey.MACer: the local keyring's master key, an HSM, a cloud KMS) and
// stores the MAC in the database. The database never holds that key, so
// write access to it alone cannot make a checkpoint that verifies. A
// checkpoint at seq N vouches for events 1..N, because the hash at N
// depends on every event before it: rewriting any of them, however
// carefully, changes the hash at N, and Verify reports that the checkpoint
// no longer matches (checkpoint_mismatch) or, if the checkpoint row was
// rewritten too, that its MAC is wrong (checkpoint_mac). The earliest event
// it can name is the first one after the last checkpoint that still
// verifies: everything up to that checkpoint is proven intact.
//
// rekey writes a checkpoint at the end of every rotation and periodically
// from the worker. Checkpoint first checks the events written since the
// previous checkpoint (that checkpoint's MAC, and every hash and link since
// it), and refuses with an *InvalidChainError rather than vouch for a
// broken chain.
//
// # What is detected, and what is not
//
// Detected, by anyone running Verify with the backend key:
//   - an event edited without recomputing hashes (edited, at that event);
//   - an event deleted (deleted, at the missing seq), with or without the
//     later events renumbered;
//   - a forged event inserted, with the later events renumbered or under a
//     duplicate seq (inserted, at the forged event);
//   - two events swapped (reordered, at the first of them);
//   - any rewrite up to the last checkpoint, even with every later hash
//     recomputed (checkpoint_mismatch or checkpoint_mac, naming the first
//     event after the last good checkpoint as the earliest possibly
//     rewritten);
//   - a forged or edited checkpoint (checkpoint_mac);
//   - the tail of the trail deleted back past a checkpoint (truncated).
//
// Not detected:
//   - Events after the last checkpoint can be deleted, or rewritten with
//     their hashes recomputed, and forged events can be appended, by
//     someone with write access to the database: until a checkpoint covers
//     them, nothing keyed vouches for them. Worse, the next checkpoint then
//     vouches for the rewritten version (Checkpoint can only refuse chains
//     that are inconsistent). The window is the time between checkpoints;
//     Verify reports the events in it as an unchecked tail (informational,
//     not invalid). Shipping events to an external log as they are written
//     (LogEvent, Tail) narrows it further: a SIEM holds its own copy.
//   - Verify without a MACer (nil) checks the chain and that each
//     checkpoint's hash matches its event, but not the MACs: a rewrite of
//     the whole trail together with its checkpoints passes. The result
//     says so in Result.Unverifiable.
//   - Someone who can use the backend key (run MAC with it) can forge
//     checkpoints: protect the backend as the root of this trust. With the
//     embedded default the key derives from the local master key, whose
//     file sits next to the database in the data directory: whoever can
//     read that file can forge checkpoints. Production keeps the master key
//     elsewhere (REKEY_MASTER_KEY from a secret manager) or MACs with a
//     KMS or HSM.
//   - Checkpoints are checked with the key Verify is given. Replacing that
//     key (a new master key, another backend) makes every older checkpoint
//     fail with checkpoint_mac, and Checkpoint then refuses to go on: that
//     is a re-keying of the trail, to be done deliberately, not silently.
//   - A checkpoint's KeyID and CreatedAt are not covered by its MAC; they
//     are informational.
package audit

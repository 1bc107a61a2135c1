// Package rotation is the rotation engine: it finds root keys that are due,
// creates (or adopts) a new key version, re-wraps every DEK under it in
// streamed, checkpointed batches, commits the new version, and retires old
// versions once a count shows that no DEK references them.
//
// The engine sees only the root interfaces (rekey.Store, rekey.DEKSource,
// rekey.KMS and its optional capabilities, resolved with
// rekey.CapabilitiesOf because a decorated KMS offers every method). Every state change goes
// through the store's guarded writes (CreateRotation, AdvanceRotation,
// CommitBatch, ChangeVersionState) together with its audit events, carrying the key's
// lease as a fence, so that a crash at any point resumes from what is
// durable and a worker that lost its lease cannot write.
//
// How the rules of DESIGN.md ("The rotation state machine") are kept:
//
//  1. One open rotation per key: CreateRotation's uniqueness decides; a
//     claim that conflicts resumes the open rotation instead. Rotate and
//     RotateCompromised finish an open rotation before starting theirs.
//  2. One backend version per rotation: in state claimed the backend's
//     CurrentVersion is compared with from_version and a backend that is
//     ahead is adopted (version.adopted); RotateKey is never retried
//     blindly (after a transient failure the engine waits a backoff,
//     Config.RotateRetry, and looks at CurrentVersion again: the one retry
//     loop of the engine), the lease is confirmed right before it, and
//     to_version is recorded (version_created) before any DEK is touched.
//  3. Streaming re-wrap: ListDEKs{NotVersion: to_version, After: cursor,
//     Limit: BatchSize} in id order; per batch at most Concurrency backend
//     calls (RewrapBatch, Rewrap, or Unwrap+Wrap with the plaintext zeroed);
//     one compare-and-swap write (fenced) per batch, committed together
//     with the checkpoint (cursor, counters, rewrap.progress) in one
//     CommitBatch transaction, so deks_done never falls behind the DEKs (a
//     DEK source that is not the store gets SwapDEKs, then the checkpoint);
//     lost swaps re-read with GetDEK and re-wrapped from the current
//     value, never overwritten, each round its own write. Memory is one
//     batch. An emergency rotation re-wraps the compromised version's DEKs
//     first.
//  4. Commit activates to_version (expires_at = now + rotation_period, the
//     previous version pending_retirement with retire_after = now + grace),
//     then a final sweep re-lists every DEK not on to_version, then done.
//  5. Retirement on evidence only, decided by rekey.DecideVersion (the
//     rule's one home, which Plan shows too): after the grace, a count must
//     show zero DEKs (DEKs left are re-wrapped first, else
//     retirement.blocked); then the backend disables the version and
//     ChangeVersionState with RequireUnused records it.
//  6. Isolation: each key of a cycle runs on its own; a failure is logged,
//     audited (rotation.failed, also set as the rotation's last_error) and
//     counted, and the cycle goes on. Transient errors are retried with
//     exponential backoff and full jitter by the middleware the backends
//     and the store are wrapped in where they are opened (kms/kmsmw,
//     store/retrystore), once, never again by the engine; the rate limit
//     lives there too. A DEK that cannot be unwrapped
//     is skipped, reported by id and left unchanged; its version then
//     cannot retire.
//  7. A lease per key, renewed every LeaseTTL/3 in the background, is the
//     fence of every write; ErrFenced (from a write or a renewal) stops the
//     work on the key at once, and nothing more is written. A lease held
//     by a worker with the default owner id (DefaultOwner) of this host
//     whose process no longer exists is broken (rekey.Store.BreakLease, a
//     compare-and-swap) and taken over at once, so that a run right after
//     a crash resumes instead of waiting for the expiry; the dead holder's
//     fence is void from then on.
//  8. State and audit events travel in one store call (one transaction).
//  9. A cancelled context stops between batches: the batch whose backend
//     work is done is written and checkpointed on a context of its own, a
//     batch still at the backend is abandoned with nothing written, and the
//     lease is released.
//
// Failpoints (package failpoint) sit at the contract names, where the names
// say.
package rotation

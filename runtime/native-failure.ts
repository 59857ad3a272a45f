/**
 * What a native failure means for the peer: the one place that decides (docs/DESIGN.md, "Failure
 * rule"). The fault thread serves what the kernel allows and reports the rest, typed
 * (native/addon.ts, NativeFailure); this function turns each report into an action. Anything it
 * does not recognise fails the session closed: a peer must never be left asleep on a fault nobody
 * will answer.
 *
 * - A page the kernel refuses with ENOENT after narrowing is no longer registered with this uffd (the
 *   peer unmapped or unregistered it between the fault and the copy). Its waiters are woken once:
 *   they fault again (served normally if the range came back) or take the signal the peer's own
 *   mapping gives. A second refusal in the same chunk fails the chunk closed.
 * - Every other copy or zeropage error (EINVAL: a VMA that wants another page size; ENOMEM: the
 *   peer's memory cgroup cannot be charged; EFAULT) cannot be served by retrying: the peer is killed.
 *   Poisoning would not help: it needs the same page tables the copy could not get.
 * - A failed wake or poison, a stopped fault thread, a lost report, a fault outside the declared
 *   regions: nothing can answer the peer's faults any more, so it is killed.
 */
import type { NativeFailure } from '../native/index.js';

export type FailureAction =
  /** Wake the chunk's waiters so that they fault again (serve what can be served). */
  | { action: 'wake'; chunk: number; reason: string }
  /** Fail this chunk closed: poison it, or kill the peer where the kernel cannot poison. */
  | { action: 'fail-chunk'; chunk: number; reason: string }
  /** Kill the peer (SIGKILL through its pidfd). */
  | { action: 'kill'; reason: string };

/**
 * The action for one failure. `refusedBefore(chunk)` tells whether this session already saw a page of
 * that chunk refused (the second refusal is not retried).
 */
export function decideFailure(f: NativeFailure, refusedBefore: (chunk: number) => boolean): FailureAction {
  const reason = describeFailure(f);
  if ((f.kind === 'copy' || f.kind === 'zeropage') && f.code === 'ENOENT' && f.chunk !== undefined) {
    return refusedBefore(f.chunk)
      ? { action: 'fail-chunk', chunk: f.chunk, reason }
      : { action: 'wake', chunk: f.chunk, reason };
  }
  return { action: 'kill', reason };
}

/** One line for logs: what failed, where, and the errno. */
export function describeFailure(f: NativeFailure): string {
  const where =
    f.address !== undefined ? ` at 0x${f.address.toString(16)}${f.length ? ` (${f.length} bytes)` : ''}` : '';
  const chunk = f.chunk !== undefined ? ` of chunk ${f.chunk}` : '';
  switch (f.kind) {
    case 'copy':
    case 'zeropage':
    case 'poison':
    case 'wake':
      return `${f.syscall} refused${where}${chunk}: ${f.code}`;
    case 'event-read':
      return `reading the userfaultfd failed (${f.code}): the fault thread stopped`;
    case 'thread-exit':
      return `the fault thread stopped (${f.syscall}: ${f.code})`;
    case 'out-of-memory':
      return `a report of the fault thread was lost (${f.syscall}: ${f.code})`;
    case 'outside-regions':
      return `the peer faulted${where}, outside the memory it declared in the handshake`;
    default:
      return `native failure ${f.kind}${where}${chunk}: ${f.syscall} ${f.code}`;
  }
}

/**
 * The common shape of a fault case (docs/RELIABILITY.md): a small snapshot in a directory store,
 * a real `lazysnap serve` process, Firecracker-exact clients, and the three things every case
 * asserts: no wrong byte (a clean report, or a client that died of SIGBUS/SIGKILL by failing
 * closed), a bound on time (a hang detector, not a speed check), and exactly one warn/error log
 * line naming the fault.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'vitest';

import { runClient, type ClientResult } from './fc-client.js';
import { makeImage, type TestImage } from './images.js';
import { snapshotTo } from './serve.js';
import { bounded, type LogLine, type ServeProcess } from './serve-process.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
/** 4 MiB in 256 KiB chunks, every fourth zero: 16 chunks, 12 fetched. */
export const CHUNK = 256 * KiB;
export const IMAGE = 4 * MiB;
/** How long a client may take before the case counts as a hang. Restores here take well under 1 s. */
export const CLIENT_BOUND_MS = 30_000;

export interface Snapshot {
  image: TestImage;
  store: string;
  id: string;
}

export async function smallSnapshot(
  dir: string,
  id = 'vm',
  opts: { size?: number; name?: string } = {},
): Promise<Snapshot> {
  const image = makeImage(dir, opts.size ?? IMAGE, CHUNK, { zeroEvery: 4, name: opts.name ?? `${id}.img` });
  const store = path.join(dir, `store-${id}`);
  await snapshotTo(store, image.path, id, CHUNK);
  return { image, store, id };
}

/** One client restoring the whole image with one thread (so one chunk is fetched at a time), bounded. */
export function restore(socket: string, snap: Snapshot, extra: string[] = []): Promise<ClientResult> {
  return bounded(
    runClient(['--socket', socket, '--image', snap.image.path, '--threads', '1', ...extra]),
    CLIENT_BOUND_MS,
    'fc-client',
  );
}

/** Every page read back and equal to the snapshot. */
export function expectRestored(r: ClientResult, snap: Snapshot): void {
  expect({ code: r.code, signal: r.signal, stderr: r.stderr }).toEqual({ code: 0, signal: null, stderr: '' });
  expect(r.report).toMatchObject({ ok: true, mismatches: 0, pagesVerified: snap.image.bytes.length / 4096 });
}

/** Failed closed: the client died of SIGBUS (poison) or SIGKILL (kill) before it could read a wrong byte. */
export function expectFailedClosed(r: ClientResult, canPoison: boolean): void {
  expect({ signal: r.signal, report: r.report }).toEqual({
    signal: canPoison ? 'SIGBUS' : 'SIGKILL',
    report: null,
  });
}

/**
 * Waits for the session summaries (the last lines a session writes), then asserts that exactly one
 * warn/error line was logged and that it matches. Returns it.
 */
export async function expectOneProblem(
  serve: ServeProcess,
  sessions: number,
  match: RegExp,
): Promise<LogLine> {
  await serve.waitForLog(
    () => serve.logs.filter((l) => l.msg === 'restore session summary').length >= sessions,
    20_000,
    `${sessions} session summaries`,
  );
  // Some problems surface after the sessions (cache writes run once loads are idle): wait for the
  // expected line, then there must be exactly that one.
  await serve
    .waitForLog((l) => l.level >= 40 && match.test(JSON.stringify(l)), 10_000, `a line matching ${match}`)
    .catch(() => {});
  const problems = serve.problems();
  // Whole lines in the comparison, so a failure shows what was logged.
  expect(problems.map((l) => JSON.stringify(l))).toEqual([expect.stringMatching(match)]);
  return problems[0]!;
}

/**
 * Why suites that mount a small or read-only tmpfs (a real full or unwritable disk) skip: mount(2)
 * needs root with CAP_SYS_ADMIN. Empty when mounting works.
 */
export const mountSkipReason = (() => {
  const probe = mkdtempSync(path.join(tmpdir(), 'lazysnap-mount-probe-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe], { stdio: 'pipe' });
    execFileSync('umount', [probe]);
    return '';
  } catch (e) {
    return `needs mount(2) (root with CAP_SYS_ADMIN): ${(e as Error).message.split('\n')[0]}`;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
})();
if (mountSkipReason)
  console.warn(`[lazysnap tests] skipping full/read-only disk cache fault cases: ${mountSkipReason}`);

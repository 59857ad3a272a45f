/**
 * Handshake fuzzing. `handshake.parse` feeds parseHandshake every kind of payload and fd count
 * in-process. `handshake.socket` sends payloads with 0, 1, 2 or many fds of every kind (uffds,
 * /dev/null, pipes, sockets, a pipe of forged uffd messages) through the real socket of a live
 * RestoreServer, one connection per case, via test/fixtures/raw-handshake; the server must decide
 * exactly as the parser does (and accept only a real userfaultfd), close every connection, and
 * afterwards still restore a good client byte for byte with no fd leaked.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';

import fc from 'fast-check';
import { pino } from 'pino';

import { HandshakeError } from '../../core/errors.js';
import type { PageSize } from '../../native/index.js';
import { parseHandshake, type SnapshotShape } from '../../runtime/handshake.js';
import { runClient } from '../helpers/fc-client.js';
import { rawHandshakePath } from '../helpers/fixtures.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { serve, snapshotTo } from '../helpers/serve.js';
import { hasUffd, uffdSkipReason } from '../helpers/skip.js';
import { anyPayload, checkAccepted, type Payload } from './handshake-payloads.js';
import {
  CaseClock,
  Tally,
  expectTyped,
  outcome,
  params,
  type FuzzTarget,
  type Outcome,
  type RunOptions,
} from './target.js';

const shapeArb: fc.Arbitrary<SnapshotShape> = fc
  .tuple(fc.constantFrom<PageSize>(4096, 2097152), fc.integer({ min: 1, max: 1 << 16 }))
  .map(([pageSize, pages]) => ({ pageSize, totalSize: pages * pageSize }));

/** What the server would be told: fd counts as recvWithFds reports them (at most 4 kept). */
const fdCountArb = fc.oneof(
  { weight: 8, arbitrary: fc.constant(1) },
  { weight: 1, arbitrary: fc.constant(0) },
  { weight: 1, arbitrary: fc.integer({ min: 2, max: 253 }) },
);

export const handshakeParse: FuzzTarget = {
  name: 'handshake.parse',
  surface: 'UFFD handshake payload + fd count (parser)',
  weight: 20,
  quickRuns: 600,
  async run(o: RunOptions): Promise<Outcome> {
    const clock = new CaseClock();
    const tally = new Tally();
    const prop = fc.property(
      shapeArb.chain((snap) => fc.tuple(fc.constant(snap), anyPayload(snap, 64 * 1024), fdCountArb)),
      ([snap, p, fds]) => {
        let h;
        try {
          h = clock.time(() => parseHandshake(p.bytes, fds, snap));
        } catch (e) {
          expectTyped(e, ['LAZYSNAP_BAD_HANDSHAKE'], 'parseHandshake');
          tally.add(`${p.kind} rejected`);
          if (p.valid && fds === 1)
            throw new Error(`a valid ${p.kind} payload was rejected: ${(e as Error).message}`, { cause: e });
          return;
        }
        tally.add(`${p.kind} accepted`);
        if (fds !== 1) throw new Error(`accepted with ${fds} fds`);
        const bad = checkAccepted(h, snap);
        if (bad) throw new Error(bad);
        if (p.valid) {
          const got = h.regions.map((r) => `${r.base}:${r.size}:${r.offset}`).join(' ');
          const want = p.valid.regions.map((r) => `${r.base}:${r.size}:${r.offset}`).join(' ');
          if (got !== want || h.shape !== p.valid.shape)
            throw new Error(`parsed ${got} (${h.shape}), expected ${want} (${p.valid.shape})`);
        }
      },
    );
    return { ...outcome(this.name, fc.check(prop, params(o)), clock), notes: String(tally) };
  },
};

/**
 * fd kinds raw-handshake can attach (see its header). u, b, n and e are real userfaultfds, but only u
 * and b can be served: n was never initialized (UFFDIO_API) and e lacks UFFD_FEATURE_EVENT_REMOVE, and
 * the server refuses both at the handshake (runtime/handshake.ts).
 */
const KINDS = ['u', 'b', 'n', 'e', 'd', 'r', 'w', 's', 'p'] as const;
const SERVABLE_KINDS = new Set<string>(['u', 'b']);

const fdKindsArb: fc.Arbitrary<string[]> = fc.oneof(
  { weight: 6, arbitrary: fc.constant<string[]>(['u']) },
  { weight: 4, arbitrary: fc.constantFrom(...KINDS).map((k): string[] => [k]) },
  { weight: 1, arbitrary: fc.constant([] as string[]) },
  { weight: 2, arbitrary: fc.array(fc.constantFrom<string>(...KINDS), { minLength: 2, maxLength: 6 }) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.constantFrom(...KINDS), fc.integer({ min: 7, max: 253 }))
      .map(([k, n]) => Array<string>(n).fill(k)),
  },
);

/** Payloads past what the server reads in one message: only "closed, server fine" is asserted. */
const hugePayload = fc
  .tuple(fc.integer({ min: 70_000, max: 1 << 20 }), fc.constantFrom('x', '[', ' ', '{"size":4096},'))
  .map(([n, s]): Payload => ({ bytes: Buffer.from(s.repeat(Math.ceil(n / s.length))), kind: 'huge' }));

/** The line-oriented client: one case per line in, one verdict per line out. */
class RawClient {
  readonly #child;
  readonly #lines: AsyncIterator<string>;
  constructor(socket: string, timeoutMs: number) {
    this.#child = spawn(rawHandshakePath(), [socket, String(timeoutMs)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.#lines = createInterface({ input: this.#child.stdout })[Symbol.asyncIterator]();
  }
  get pid(): number {
    return this.#child.pid!;
  }
  async send(kinds: string[], payload: Buffer): Promise<string> {
    this.#child.stdin.write(
      `${kinds.length ? kinds.join('') : '-'} ${payload.length ? payload.toString('hex') : '-'}\n`,
    );
    const r = await this.#lines.next();
    if (r.done)
      throw new Error(
        `raw-handshake exited (${this.#child.exitCode ?? this.#child.signalCode}): the server killed it or it crashed`,
      );
    return r.value;
  }
  async close(): Promise<void> {
    this.#child.stdin.end();
    if (this.#child.exitCode === null && this.#child.signalCode === null) await once(this.#child, 'close');
  }
}

const openFds = () => readdirSync('/proc/self/fd').length;

async function settleFds(want: number): Promise<number> {
  let n = openFds();
  for (let i = 0; i < 200 && n !== want; i++) {
    await new Promise((r) => setTimeout(r, 10));
    n = openFds();
  }
  return n;
}

export const handshakeSocket: FuzzTarget = {
  name: 'handshake.socket',
  surface:
    'UFFD handshake over the real socket: payload x fds (0, 1, 2, many; uffd, /dev/null, pipes, socket, forged uffd messages)',
  weight: 15,
  quickRuns: 150,
  async run(o: RunOptions): Promise<Outcome> {
    const clock = new CaseClock();
    const tally = new Tally();
    if (!hasUffd)
      return {
        target: this.name,
        cases: 0,
        failed: false,
        seed: 0,
        report: '',
        slowestMs: 0,
        skipped: uffdSkipReason,
      };
    const tmp = tempDir('lazysnap-fuzz-');
    const CS = 256 * 1024;
    const img = makeImage(tmp.dir, 4 << 20, CS, { zeroEvery: 4 });
    const store = path.join(tmp.dir, 'store');
    await snapshotTo(store, img.path, 'vm', CS);
    const snap: SnapshotShape = { totalSize: 4 << 20, pageSize: 4096 };
    let rejected = 0;
    // pino writes each line synchronously to a plain { write } destination.
    const sink = {
      write(line: string) {
        if (line.includes('handshake rejected')) rejected++;
      },
    };
    const server = await serve(tmp.dir, {
      stores: [store],
      id: 'vm',
      handshakeTimeoutMs: 5000,
      prefetch: 'off',
      logger: pino({ level: 'info' }, sink),
    });
    // Counted by event: server.summaries keeps only the last 1024, and a long run has more sessions.
    let ended = 0;
    server.on('sessionEnd', () => ended++);
    try {
      const fdsBefore = openFds();
      const client = new RawClient(server.socketPath, 10_000);
      const caseArb = fc.record({
        kinds: fdKindsArb,
        payload: fc.oneof(
          { weight: 30, arbitrary: anyPayload(snap, 8192) },
          { weight: 1, arbitrary: hugePayload },
        ),
      });
      const prop = fc.asyncProperty(caseArb, async ({ kinds, payload }) => {
        const acc0 = ended;
        const rej0 = rejected;
        const verdict = await clock.timeAsync(() => client.send(kinds, payload.bytes));
        if (verdict !== 'closed') throw new Error(`raw-handshake: ${verdict}`);
        // The rejection is logged, or the summary kept, before the server closes the connection.
        const accepted = ended - acc0;
        const rejects = rejected - rej0;
        if (accepted + rejects !== 1)
          throw new Error(`one connection ended as ${accepted} sessions and ${rejects} rejections`);
        if (server.sessions.size !== 0 || server.stats().pendingHandshakes !== 0)
          throw new Error(
            `the server still holds ${server.sessions.size} sessions / ${server.stats().pendingHandshakes} pending handshakes`,
          );
        tally.add(
          `${accepted ? 'accepted' : 'rejected'} ${kinds.length === 1 ? kinds[0] : kinds.length > 6 ? '7-253 fds' : `${kinds.length} fds`}`,
        );
        if (payload.kind === 'huge') return;
        let parses = true;
        try {
          parseHandshake(payload.bytes, kinds.length, snap);
        } catch (e) {
          if (!(e instanceof HandshakeError)) throw e;
          parses = false;
        }
        const expected = parses && kinds.length === 1 && SERVABLE_KINDS.has(kinds[0]!);
        if ((accepted === 1) !== expected)
          throw new Error(
            `the server ${accepted ? 'accepted' : 'rejected'} a handshake the parser ${parses ? 'accepts' : 'rejects'} with fds [${kinds.join('')}]`,
          );
      });
      const details = await fc.check(prop, params(o));
      const result = { ...outcome(this.name, details, clock), notes: String(tally) };
      await client.close();
      if (result.failed) return result;
      // After all that, the same server restores a good client, every byte, and holds no extra fd.
      const fdsAfter = await settleFds(fdsBefore);
      const good = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '2']);
      const fdsEnd = await settleFds(fdsBefore);
      const problems = [
        good.report?.ok === true && good.report.mismatches === 0 && good.report.pagesVerified === 1024
          ? ''
          : `the good client after the fuzz cases failed: ${JSON.stringify(good.report)} ${good.stderr}`,
        fdsAfter === fdsBefore ? '' : `fd leak: ${fdsBefore} fds before the cases, ${fdsAfter} after`,
        fdsEnd === fdsBefore ? '' : `fd leak: ${fdsBefore} fds before the good client, ${fdsEnd} after`,
      ].filter(Boolean);
      return problems.length ? { ...result, failed: true, report: problems.join('\n') } : result;
    } finally {
      await server.close(0);
      tmp.cleanup();
    }
  },
};

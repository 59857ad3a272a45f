/**
 * Chaos soak (docs/RELIABILITY.md, "Chaos"; issue 11: "never a hung peer, never an exhausted host"):
 * `clients` restores at a time through ONE `lazysnap serve` process for `durationMs`, a new one
 * starting whenever one ends, each drawing one scenario that injects a failure: VMA splits, mlock, a
 * balloon, origins that answer 5xx / lie / stall / send zstd bombs or endless bodies, peers SIGKILLed
 * mid-restore, peers in a memory cgroup too small for them. Shared by `npm run chaos` (bench/chaos.ts)
 * and its short version in the test suite (test/unit/chaos.test.ts).
 *
 * Expectations must be unambiguous although 32 restores share one serve, whose memory tier and
 * in-flight fetches are shared by every session (a chunk one session fetched is resident for the
 * others). So the image is cut in two:
 *
 * - the good region, which every scenario reads. Faults injected there are only ones serve must
 *   recover from (a 5xx, a truncated body, an answer slower than the attempt timeout, lying bytes
 *   with a second, honest origin): whoever's fetch they land on, every restore must be whole. A
 *   restore of such a scenario arms one-shot faults on the chunks it is about to read, chosen among
 *   the chunks read least recently (so likely evicted from serve's memory budget, so refetched);
 * - the fail pools, the last chunks of the image, which both origins always fail (stall, zstd bomb,
 *   endless body) and only the scenarios that expect to fail closed read. They are never fetched, so
 *   never resident: whoever reads one must get SIGBUS on exactly its pages the balloon did not
 *   remove (or die of SIGKILL in kill mode), with serve's error line naming the chunk.
 *
 * Each peer is test/fixtures/uffd-peer.c, which classifies every page it reads (image bytes, zeros,
 * other bytes, SIGBUS). Read steps are laid out so each has one expectation (image bytes; zeros where
 * the balloon removed pages; SIGBUS): a page that reads anything else is a wrong byte, whatever
 * happened to the restore. A peer that has neither ended nor died within the fail timeout plus 10 s
 * is a hung peer: its threads' wait channels are recorded, then it is killed.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';

import { chunkKey } from '../../store/keys.js';
import { chunkHash, type SnapshotIndex } from '../../store/manifest.js';
import { loadIndex } from '../../store/reader.js';
import { FileStore } from '../../store/file-store.js';
import { writeZeroRichImage } from '../../bench/lib/image.js';
import { memoryCgroup, type MemoryCgroup } from './cgroup.js';
import { fakeOrigin, zstdBomb, type Fault } from './fault-origin.js';
import { seededRandom } from './seeded-random.js';
import { snapshotTo } from './serve.js';
import { startServe, until, type FdKinds, type LogLine, type ServeProcess } from './serve-process.js';
import { startPeer, type Peer, type PeerResult, type ReadReport } from './uffd-peer.js';

const PAGE = 4096;
const MiB = 1024 * 1024;

export const SCENARIOS = [
  'plain',
  'split-before',
  'split-during',
  'mlock',
  'balloon',
  'origin-5xx',
  'origin-lie',
  'origin-stall',
  'origin-bomb',
  'origin-endless',
  'peer-killed',
  'memory-pressure',
] as const;
export type Scenario = (typeof SCENARIOS)[number];

/** What each scenario injects and what it must come to (for the report and docs). */
export const SCENARIO_NOTES: Record<Scenario, string> = {
  plain: 'no fault: good chunks read by 1-4 threads; must restore whole',
  'split-before': 'mprotect one page in every 1-8 of each range before reading (hundreds of VMAs); whole',
  'split-during': 'another thread splits the range while 1-4 threads fault it; whole',
  mlock: 'mlock of a range (faults it in, splits the VMA), then reads; whole',
  balloon: 'MADV_DONTNEED of a page range before reading it: those pages read zero, the rest whole',
  'origin-5xx':
    'each of its chunks answers once or twice 500/503, a truncated body, or (once) slower than the attempt timeout: retried, whole',
  'origin-lie': 'its chunks answer lying or bit-flipped bytes on origin 0, origin 1 is honest: whole',
  'origin-stall':
    'one chunk whose origins never answer (beyond the fail timeout), half the time part of it ballooned: SIGBUS on exactly its non-removed pages',
  'origin-bomb':
    '1-2 chunks answered with a 48 KB zstd frame decoding to 1.5 GiB: SIGBUS on them, memory bounded',
  'origin-endless': 'one chunk answered with an endless body: SIGBUS on it, memory bounded',
  'peer-killed': 'SIGKILLed by the test at a random moment (half of them waiting on a stalled chunk)',
  'memory-pressure':
    'joins a memory cgroup smaller than what it reads after its handshake: OOM-killed or failed closed',
};

export const OUTCOMES = [
  'ok',
  'failed closed',
  'killed by test',
  'oom-killed',
  'hung',
  'unexpected',
] as const;
export type Outcome = (typeof OUTCOMES)[number];

export interface ChaosOptions {
  /** A private directory for the image, the store and the socket. */
  dir: string;
  durationMs: number;
  clients: number;
  /** @default 128 MiB */
  imageBytes?: number;
  /** @default 256 KiB */
  chunkSize?: number;
  /** serve --memory-budget. @default 64 MiB */
  memoryBudget?: number;
  /** serve --fail-timeout. @default 3000 */
  failTimeoutMs?: number;
  /** serve --attempt-timeout. @default 1000 */
  attemptTimeoutMs?: number;
  /** serve --fail-closed. @default 'auto' */
  failClosed?: 'auto' | 'poison' | 'kill';
  /** serve --fetch-concurrency. @default 16 */
  fetchConcurrency?: number;
  /** The scenarios drawn from (uniformly). @default all */
  scenarios?: readonly Scenario[];
  /** memory-pressure: the cgroup's limit. @default 4 MiB */
  cgroupLimitBytes?: number;
  /** A peer alive this long after it started is hung. @default fail timeout + 10 s */
  hangBoundMs?: number;
  /** Seeds the choices (scenarios, chunks, kill times); timing still varies run to run. */
  seed?: number;
  sampleMs?: number;
  onSample?: (s: ChaosSample) => void;
}

export interface ChaosSample {
  ms: number;
  rssBytes: number;
  fds: number;
  restoresDone: number;
  running: number;
}

/** One read step's expectation: every page of [off, off+len) reads one way. */
interface StepExpect {
  off: number;
  pages: number;
  /** image: the image's bytes; removed: zeros (image bytes where the image is zero); fail: SIGBUS. */
  kind: 'image' | 'removed' | 'fail';
  /** Pages of the range that lie in zero chunks of the image (they read as image bytes either way). */
  imageZeroPages: number;
}

interface Plan {
  scenario: Scenario;
  steps: (string | number)[];
  expect: StepExpect[];
  /** Chunks the peer must fail closed on. */
  failChunks: number[];
  /** peer-killed: when to SIGKILL it, from its start. */
  killAfterMs?: number;
  /** memory-pressure: the peer waits after its handshake to be put in a cgroup. */
  cgroup?: boolean;
}

export interface RestoreRecord {
  n: number;
  scenario: Scenario;
  pid: number | undefined;
  outcome: Outcome;
  /** Why, for anything but ok. */
  detail: string;
  ms: number;
  pagesRead: number;
  wrongPages: number;
  failChunks: number[];
  /** failed closed: serve's log line naming the chunk (message and first error), if found. */
  reasonLogged?: string;
  /** hung: the wait channel of each of the peer's threads (/proc/<pid>/task/<tid>/wchan). */
  wchan?: string[];
}

export interface ChaosResult {
  restores: RestoreRecord[];
  byScenario: Record<Scenario, Record<Outcome, number>>;
  hung: number;
  wrongPages: number;
  pagesRead: number;
  unexpected: RestoreRecord[];
  failedClosed: { total: number; reasonLogged: number; reasons: Record<string, number> };
  /** Faults the origins actually served, by kind (armed one-shot faults may land on any restore's fetch). */
  injected: Record<string, number>;
  /** One-shot faults armed that no fetch consumed (the chunk stayed resident). */
  armedLeft: number;
  /** memory-pressure was left out, and why (no cgroup here). */
  skipped: Partial<Record<Scenario, string>>;
  serve: {
    sessionsStarted: number;
    summaries: number;
    warnLines: number;
    errorLines: number;
    /** Error lines of sessions no failing scenario explains. */
    unexplainedErrors: LogLine[];
    exit: { code: number | null; signal: NodeJS.Signals | null };
  };
  rss: {
    baselineBytes: number;
    peakSampledBytes: number;
    hwmBytes: number;
    finalBytes: number;
    memoryBudget: number;
    /** baseline + memory budget + fetch buffers + clients x ACTIVE_SESSION_BYTES + loaders + supervisor + SLACK_BYTES. */
    boundBytes: number;
  };
  fds: { before: FdKinds; after: FdKinds; settledMs: number | null };
  elapsedMs: number;
  config: Required<Omit<ChaosOptions, 'dir' | 'onSample' | 'scenarios'>> & { scenarios: Scenario[] };
}

/**
 * serve's memory bound as the soak measured it (docs/RELIABILITY.md, "Memory vs the budget"):
 * baseline + memory budget + 2 x fetch concurrency x chunk size (compressed and decoded buffers)
 * + about 0.6 MiB per active session + 32 MiB per chunk loader thread (runtime/chunk-loader.ts: a V8
 * isolate of its own and its read buffer) + the supervisor's heap + SLACK_BYTES.
 * SLACK_BYTES is the worker's allocator and GC slack under churn. Measured with seed 333613238
 * (RSS per mapping from /proc/<worker>/smaps, sampled every 6 s): glibc's main-thread heap (brk) grows from ~5 to
 * ~145 MiB and then stays there (90 s, 3500 restores: a plateau, not a leak), because 256 KiB Buffers
 * above glibc's adaptive mmap threshold are carved from it and freed ones wait for V8's next GC. With
 * 64 MiB here a CI runner peaked 2.8 MiB over the bound; 96 MiB leaves ~30 MiB over the worst seen.
 * A 1.5 GiB bomb or an endless body that was buffered would still blow far past it.
 */
export const SLACK_BYTES = 96 * MiB;
export const ACTIVE_SESSION_BYTES = 0.6 * MiB;
export const LOADER_THREAD_BYTES = 32 * MiB;
/**
 * serve is two processes (runtime/supervisor/): the supervisor's own heap grows with the connections
 * it accepts and hands over (about 20 MiB over ~900 restores in 25 s, measured), apart from the worker's.
 */
export const SUPERVISOR_BYTES = 32 * MiB;
/** serve's default loader threads (runtime/serve-options.ts). */
export const LOADER_THREADS = Math.min(4, availableParallelism());

export const nonTcp = (k: FdKinds) => k.uffd + k.pidfd + k.memfd + k.unix + k.file + k.other;

/** The driver's random choices, replayed from --seed. */
function rng(seed: number) {
  const next = seededRandom(seed);
  const int = (n: number) => Math.floor(next() * n);
  return {
    next,
    int,
    pick: <T>(xs: readonly T[]): T => xs[int(xs.length)]!,
    shuffle<T>(xs: T[]): T[] {
      for (let i = xs.length - 1; i > 0; i--) {
        const j = int(i + 1);
        [xs[i], xs[j]] = [xs[j]!, xs[i]!];
      }
      return xs;
    },
  };
}
type Rng = ReturnType<typeof rng>;

/** Which chunks are where, and one-shot faults armed per chunk key (origin 0). */
class Layout {
  readonly count: number;
  /** The good region is chunks [0, goodEnd). */
  readonly goodEnd: number;
  readonly pools: Record<'stall' | 'bomb' | 'endless', number[]>;
  readonly poolOf = new Map<string, 'stall' | 'bomb' | 'endless'>();
  readonly armed = new Map<string, Fault[]>();
  readonly injected: Record<string, number> = {};
  /** When a plan last included each chunk (performance.now()): the coldest are likeliest evicted. */
  readonly lastPlanned: Float64Array;
  readonly #ix: SnapshotIndex;
  readonly cs: number;

  constructor(ix: SnapshotIndex, cs: number) {
    this.#ix = ix;
    this.cs = cs;
    this.count = ix.count;
    this.lastPlanned = new Float64Array(ix.count);
    // The last 16 chunks (12 of them data) are the fail pools, 4 data chunks each.
    this.goodEnd = ix.count - 16;
    const data = [...Array(16).keys()].map((i) => this.goodEnd + i).filter((c) => !this.isZero(c));
    this.pools = { stall: [], bomb: [], endless: [] };
    const kinds = ['stall', 'bomb', 'endless'] as const;
    data.forEach((c, i) => {
      const kind = kinds[i % 3]!;
      this.pools[kind].push(c);
      this.poolOf.set(this.key(c), kind);
    });
  }

  isZero(c: number): boolean {
    return chunkHash(this.#ix, c) === null;
  }

  key(c: number): string {
    return chunkKey(chunkHash(this.#ix, c)!, 'zstd');
  }

  /** Pages of [off, off+len) that lie in zero chunks. */
  zeroPages(off: number, len: number): number {
    let n = 0;
    for (let p = off; p < off + len; p += PAGE) if (this.isZero(Math.floor(p / this.cs))) n++;
    return n;
  }

  count1(kind: string): void {
    this.injected[kind] = (this.injected[kind] ?? 0) + 1;
  }

  /** Origin 0: the pools always fail; an armed fault fires once; everything else is answered. */
  plan0 = (_n: number, url: string): Fault => {
    const key = url.slice(1);
    const pool = this.poolOf.get(key);
    if (pool) return (this.count1(pool), pool);
    const q = this.armed.get(key);
    const f = q?.shift();
    if (q && q.length === 0) this.armed.delete(key);
    if (f === undefined) return 'ok';
    this.count1(typeof f === 'object' ? 'slow' : f);
    return f;
  };

  /** Origin 1, the honest second origin: it fails the pools too (no origin has them), else answers. */
  plan1 = (_n: number, url: string): Fault => {
    const pool = this.poolOf.get(url.slice(1));
    return pool ? (this.count1(pool), pool) : 'ok';
  };
}

/** Builds one restore's peer steps and their expectations. */
function planRestore(scenario: Scenario, L: Layout, r: Rng, o: Resolved): Plan {
  const cs = L.cs;
  const now = performance.now();
  const prefix: (string | number)[] = [];
  const reads: { step: (string | number)[]; expect: StepExpect }[] = [];
  const failChunks: number[] = [];
  const threads = () => 1 + r.int(4);
  const step = (kind: StepExpect['kind'], off: number, len: number, extra?: (string | number)[]) => {
    if (len <= 0) return;
    reads.push({
      step: extra ?? ['read', off, len, threads()],
      expect: { off, pages: len / PAGE, kind, imageZeroPages: L.zeroPages(off, len) },
    });
  };
  /** Chunks this plan reads already: runs are kept apart, or a later run would read a ballooned page as its own. */
  const used = new Set<number>();
  /** A run of 1..maxLen consecutive chunks of the good region, apart from the plan's other runs. */
  const run = (maxLen = 4) => {
    let len = 0;
    let c = 0;
    for (let tries = 0; tries < 100; tries++) {
      len = 1 + r.int(maxLen);
      c = r.int(L.goodEnd - len + 1);
      if (![...Array(len).keys()].some((i) => used.has(c + i))) break;
    }
    for (let i = c; i < c + len; i++) {
      used.add(i);
      L.lastPlanned[i] = now;
    }
    return { off: c * cs, len: len * cs };
  };
  /** Reads [off, off+len) as `kind`, except a ballooned page range inside it (removed first). */
  const withBalloon = (kind: 'image' | 'fail', off: number, len: number) => {
    const pages = len / PAGE;
    const a = off + r.int(pages) * PAGE;
    const b = Math.min(off + len, a + (1 + r.int(pages)) * PAGE);
    prefix.push('dontneed', a, b - a);
    step(kind, off, a - off);
    step('removed', a, b - a);
    step(kind, b, off + len - b);
  };
  const goodRuns = (n: number) => {
    for (let i = 0; i < n; i++) {
      const x = run();
      step('image', x.off, x.len);
    }
  };
  /** `n` distinct data chunks of the good region among the least recently planned quarter. */
  const coldChunks = (n: number) => {
    // Not a chunk with faults still armed: stacked one-shot faults (three slow answers in a row) could
    // outlast the fail timeout on origin 0 alone, and then no restore could be expected to be whole.
    const data = [...Array(L.goodEnd).keys()].filter(
      (c) => !L.isZero(c) && !used.has(c) && !L.armed.has(L.key(c)),
    );
    data.sort((a, b) => L.lastPlanned[a]! - L.lastPlanned[b]!);
    const cold = r.shuffle(data.slice(0, Math.max(n, data.length >> 2))).slice(0, n);
    for (const c of cold) {
      used.add(c);
      L.lastPlanned[c] = now;
    }
    return cold;
  };
  const failChunk = (pool: 'stall' | 'bomb' | 'endless', balloon: boolean) => {
    const c = r.pick(L.pools[pool]);
    failChunks.push(c);
    if (balloon) withBalloon('fail', c * cs, cs);
    else step('fail', c * cs, cs);
  };
  let killAfterMs: number | undefined;
  let cgroup = false;

  switch (scenario) {
    case 'plain':
      goodRuns(2 + r.int(2));
      break;
    case 'split-before':
      for (let i = 0; i < 2; i++) {
        const x = run();
        prefix.push('split', x.off, x.len, r.pick([1, 2, 3, 8]));
        step('image', x.off, x.len);
      }
      break;
    case 'split-during':
      for (let i = 0; i < 2; i++) {
        const x = run();
        step('image', x.off, x.len, ['readsplit', x.off, x.len, threads(), r.pick([1, 2, 3, 8])]);
      }
      break;
    case 'mlock': {
      const x = run();
      prefix.push('mlock', x.off, x.len);
      step('image', x.off, x.len);
      goodRuns(1);
      break;
    }
    case 'balloon': {
      const x = run();
      withBalloon('image', x.off, x.len);
      goodRuns(1);
      break;
    }
    case 'origin-5xx':
    case 'origin-lie':
      for (const c of coldChunks(3 + r.int(4))) {
        // At most one answer slower than the attempt timeout and two failures in all per chunk: with
        // --retries 2 the third attempt on origin 0 answers, well within the fail timeout.
        const slow: Fault = { delayMs: Math.round(o.attemptTimeoutMs * 1.5) };
        const faults: Fault[] =
          scenario === 'origin-lie'
            ? [r.pick(['lie', 'corrupt'] as const)]
            : [
                r.pick<Fault>(['500', '503', 'truncate', slow]),
                ...(r.next() < 0.5 ? [r.pick<Fault>(['500', '503', 'truncate'])] : []),
              ];
        L.armed.set(L.key(c), faults);
        step('image', c * cs, cs);
      }
      break;
    case 'origin-stall':
      goodRuns(1);
      failChunk('stall', r.next() < 0.5);
      break;
    case 'origin-bomb':
      goodRuns(1);
      failChunk('bomb', false);
      if (r.next() < 0.5) failChunk('bomb', false);
      break;
    case 'origin-endless':
      goodRuns(1);
      failChunk('endless', false);
      break;
    case 'peer-killed':
      goodRuns(3);
      // Killed while its faults are served (a few hundred ms), or while one waits on a stalled chunk.
      if (r.next() < 0.5) {
        failChunk('stall', false);
        killAfterMs = Math.round(r.next() * o.failTimeoutMs * 1.2);
      } else killAfterMs = Math.round(r.next() * 300);
      break;
    case 'memory-pressure': {
      // Three times the cgroup's limit, in runs: what is installed is charged to the group.
      cgroup = true;
      let total = 0;
      while (total < 3 * o.cgroupLimitBytes) {
        const x = run(8);
        step('image', x.off, x.len);
        total += x.len;
      }
      break;
    }
  }
  // Splits, mlock and balloon first, then the reads in a random order (one expectation per step).
  r.shuffle(reads);
  if (failChunks.length > 1 && new Set(failChunks).size < failChunks.length) {
    // The same bomb chunk drawn twice: read once.
    const seen = new Set<number>();
    for (let i = reads.length - 1; i >= 0; i--) {
      const e = reads[i]!.expect;
      if (e.kind !== 'fail') continue;
      const c = Math.floor(e.off / cs);
      if (seen.has(c)) reads.splice(i, 1);
      seen.add(c);
    }
  }
  return {
    scenario,
    steps: [...(cgroup ? ['wait'] : []), ...prefix, ...reads.flatMap((x) => x.step)],
    expect: reads.map((x) => x.expect),
    failChunks: [...new Set(failChunks)],
    ...(killAfterMs !== undefined ? { killAfterMs } : {}),
    cgroup,
  };
}

/** Wrong pages in one read report (any page that read something other than what it must), and surprises. */
function judgeStep(rep: ReadReport, e: StepExpect): { wrong: number; surprise: string | undefined } {
  let wrong = rep.mismatch;
  let surprise: string | undefined;
  if (rep.off !== e.off || rep.pages !== e.pages)
    return { wrong, surprise: `read report at ${rep.off} (${rep.pages} pages) for a step at ${e.off}` };
  if (e.kind === 'image') {
    wrong += rep.zero; // a data page that read zeros (zero chunks read as image bytes)
    if (rep.sigbus > 0)
      surprise = `SIGBUS on ${rep.sigbus} pages that had to restore (at ${rep.firstSigbus})`;
  } else if (e.kind === 'removed') {
    // Removed pages must read zero; image bytes only where the image itself is zero.
    wrong += Math.max(0, rep.match - e.imageZeroPages);
    if (rep.sigbus > 0) surprise = `SIGBUS on ${rep.sigbus} removed pages (must read zero)`;
  } else {
    wrong += rep.zero; // fail chunks are data: a zero page is not theirs
    if (rep.match > 0) surprise = `${rep.match} pages of a chunk that must fail closed were served`;
  }
  if (rep.mismatch > 0) surprise = `${rep.mismatch} pages read other bytes (first at ${rep.firstMismatch})`;
  return { wrong, surprise };
}

type Resolved = Required<Omit<ChaosOptions, 'onSample' | 'scenarios'>> & {
  scenarios: Scenario[];
  onSample?: ChaosOptions['onSample'];
};

interface Finished {
  n: number;
  plan: Plan;
  pid: number | undefined;
  result: PeerResult;
  ms: number;
  killedByTest: boolean;
  hung: boolean;
  wchan?: string[];
  /** From the spawn on: where this peer's session lines start in serve's log. */
  logFrom: number;
  oomKills?: number;
}

function wchans(pid: number): string[] {
  try {
    return readdirSync(`/proc/${pid}/task`).map((t) => {
      try {
        return readFileSync(`/proc/${pid}/task/${t}/wchan`, 'utf8').trim() || '0';
      } catch {
        return '?';
      }
    });
  } catch {
    return [];
  }
}

export async function runChaos(opts: ChaosOptions): Promise<ChaosResult> {
  const o: Resolved = {
    imageBytes: 128 * MiB,
    chunkSize: 256 * 1024,
    memoryBudget: 64 * MiB,
    failTimeoutMs: 3000,
    attemptTimeoutMs: 1000,
    failClosed: 'auto',
    fetchConcurrency: 16,
    cgroupLimitBytes: 4 * MiB,
    seed: 1,
    sampleMs: 250,
    ...opts,
    hangBoundMs: opts.hangBoundMs ?? (opts.failTimeoutMs ?? 3000) + 10_000,
    scenarios: [...(opts.scenarios ?? SCENARIOS)],
  };
  const cs = o.chunkSize;
  if (o.imageBytes % cs !== 0 || o.imageBytes / cs < 64)
    throw new Error('the image must be a whole number of at least 64 chunks');
  const r = rng(o.seed);

  // memory-pressure needs a memory cgroup; where none can be made it is left out, visibly.
  const skipped: Partial<Record<Scenario, string>> = {};
  if (o.scenarios.includes('memory-pressure')) {
    const probe = memoryCgroup('lazysnap-chaos-probe', o.cgroupLimitBytes);
    if ('reason' in probe) {
      skipped['memory-pressure'] = probe.reason;
      o.scenarios = o.scenarios.filter((s) => s !== 'memory-pressure');
    } else probe.remove();
  }
  if (o.scenarios.length === 0) throw new Error('no scenario left to run');
  // origin-5xx's slow answer plus a retry must fit in the fail timeout for "must restore whole" to hold.
  if (o.failTimeoutMs < 2 * o.attemptTimeoutMs + 500)
    throw new Error('the fail timeout must be at least twice the attempt timeout plus 500 ms');

  const image = writeZeroRichImage(path.join(o.dir, 'chaos.img'), o.imageBytes, cs, (i) => i % 4 === 3);
  const storeDir = path.join(o.dir, 'store');
  await snapshotTo(storeDir, image, 'chaos', cs);
  const L = new Layout(await loadIndex(new FileStore(storeDir), 'chaos'), cs);
  zstdBomb(); // built now (~1 s of CPU), not inside the origin's first answer

  const origin0 = await fakeOrigin(storeDir, L.plan0);
  const origin1 = await fakeOrigin(storeDir, L.plan1);
  let serve: ServeProcess | undefined;
  const live = new Map<Peer, () => void>();
  const cgroups = new Set<MemoryCgroup>();
  let sampler: NodeJS.Timeout | undefined;
  try {
    serve = await startServe(path.join(o.dir, 'run', 'chaos.sock'), [
      ...['--store', origin0.url, '--store', origin1.url, '--id', 'chaos'],
      ...['--memory-budget', String(o.memoryBudget), '--fetch-concurrency', String(o.fetchConcurrency)],
      ...['--fail-timeout', `${o.failTimeoutMs}ms`, '--attempt-timeout', `${o.attemptTimeoutMs}ms`],
      ...['--retries', '2', '--fail-closed', o.failClosed, '--prefetch', 'off', '--shutdown-grace', '5s'],
    ]);
    const sp = serve;
    await new Promise((res) => setTimeout(res, 500)); // startup garbage settles before the baseline
    const baseline = sp.rssBytes();
    sp.resetPeakRss(); // the bound is on what the run adds to the baseline, not on start-up's peak
    const before = sp.fdKinds();

    const finished: Finished[] = [];
    const samples: ChaosSample[] = [];
    let peak = baseline;
    const t0 = performance.now();
    const deadline = t0 + o.durationMs;
    sampler = setInterval(() => {
      try {
        const s = {
          ms: Math.round(performance.now() - t0),
          rssBytes: sp.rssBytes(),
          fds: sp.fdCount(),
          restoresDone: finished.length,
          running: live.size,
        };
        peak = Math.max(peak, s.rssBytes);
        samples.push(s);
        o.onSample?.(s);
      } catch {
        // serve exited: reported below
      }
    }, o.sampleMs);

    let n = 0;
    const restore = async (): Promise<void> => {
      const k = n++;
      const plan = planRestore(r.pick(o.scenarios), L, r, o);
      const logFrom = sp.logs.length;
      const start = performance.now();
      const peer = startPeer(sp.socket, image, plan.steps, ['--seed', String(o.seed * 100_003 + k)]);
      live.set(peer, () => peer.child.kill('SIGKILL'));
      const pid = peer.child.pid;
      const f: Partial<Finished> = { n: k, plan, pid, logFrom, killedByTest: false, hung: false };
      const timers: NodeJS.Timeout[] = [];
      // The hang detector: the bound is generous (fail timeout + 10 s); a peer past it is a finding.
      timers.push(
        setTimeout(() => {
          if (peer.child.exitCode !== null || peer.child.signalCode !== null) return;
          f.hung = true;
          f.wchan = pid ? wchans(pid) : [];
          peer.child.kill('SIGKILL');
        }, o.hangBoundMs),
      );
      if (plan.killAfterMs !== undefined)
        timers.push(
          setTimeout(() => {
            if (peer.child.exitCode !== null || peer.child.signalCode !== null) return;
            f.killedByTest = true;
            peer.child.kill('SIGKILL');
          }, plan.killAfterMs),
        );
      let group: MemoryCgroup | undefined;
      if (plan.cgroup) {
        const g = memoryCgroup(`lazysnap-chaos-${k}`, o.cgroupLimitBytes);
        if ('reason' in g) throw new Error(`memory cgroup: ${g.reason}`);
        group = g;
        cgroups.add(g);
        // After the handshake, before the first fault: every page installed is charged to the group.
        const got = await Promise.race([peer.handshake, peer.result.then(() => undefined)]);
        if (got !== undefined) {
          try {
            g.add(got);
          } catch {
            // it died in between: judged by its result
          }
          peer.go();
        }
      }
      const result = await peer.result;
      for (const t of timers) clearTimeout(t);
      live.delete(peer);
      if (group) {
        f.oomKills = group.oomKills();
        group.remove();
        cgroups.delete(group);
      }
      finished.push({ ...(f as Finished), result, ms: performance.now() - start });
    };
    await Promise.all(
      Array.from({ length: o.clients }, async () => {
        while (performance.now() < deadline) await restore();
      }),
    );
    const elapsedMs = performance.now() - t0;

    // Sessions end when serve reads each peer's EOF; their fds close then, asynchronously.
    const tSettle = performance.now();
    const settled = await until(() => nonTcp(sp.fdKinds()) === nonTcp(before), 15_000, 50);
    const started = () => sp.logs.filter((l) => l.msg === 'restore session started').length;
    const summaries = () => sp.logs.filter((l) => l.msg === 'restore session summary').length;
    await until(() => summaries() >= started(), 10_000, 50);
    clearInterval(sampler);
    const after = sp.fdKinds();
    const finalBytes = sp.rssBytes();
    const hwmBytes = sp.peakRssBytes();
    peak = Math.max(peak, finalBytes);
    const logs = sp.logs.slice();
    const exit = await sp.stop();

    const judged = judgeAll(finished, logs, o);
    const byScenario = Object.fromEntries(
      SCENARIOS.map((s) => [s, Object.fromEntries(OUTCOMES.map((x) => [x, 0]))]),
    ) as ChaosResult['byScenario'];
    for (const j of judged.records) byScenario[j.scenario][j.outcome]++;
    const fc = judged.records.filter((j) => j.outcome === 'failed closed');
    const reasons: Record<string, number> = {};
    for (const j of fc) if (j.reasonLogged) reasons[j.reasonLogged] = (reasons[j.reasonLogged] ?? 0) + 1;
    return {
      restores: judged.records,
      byScenario,
      hung: judged.records.filter((j) => j.outcome === 'hung').length,
      wrongPages: judged.records.reduce((s, j) => s + j.wrongPages, 0),
      pagesRead: judged.records.reduce((s, j) => s + j.pagesRead, 0),
      unexpected: judged.records.filter((j) => j.outcome === 'unexpected'),
      failedClosed: { total: fc.length, reasonLogged: fc.filter((j) => j.reasonLogged).length, reasons },
      injected: { ...L.injected },
      armedLeft: [...L.armed.values()].reduce((s, q) => s + q.length, 0),
      skipped,
      serve: {
        sessionsStarted: logs.filter((l) => l.msg === 'restore session started').length,
        summaries: logs.filter((l) => l.msg === 'restore session summary').length,
        warnLines: logs.filter((l) => l.level === 40).length,
        errorLines: logs.filter((l) => l.level >= 50).length,
        unexplainedErrors: judged.unexplainedErrors,
        exit,
      },
      rss: {
        baselineBytes: baseline,
        peakSampledBytes: peak,
        hwmBytes,
        finalBytes,
        memoryBudget: o.memoryBudget,
        boundBytes:
          baseline +
          o.memoryBudget +
          2 * o.fetchConcurrency * cs +
          o.clients * ACTIVE_SESSION_BYTES +
          LOADER_THREADS * LOADER_THREAD_BYTES +
          SUPERVISOR_BYTES +
          SLACK_BYTES,
      },
      fds: { before, after, settledMs: settled ? Math.round(performance.now() - tSettle) : null },
      elapsedMs,
      config: {
        durationMs: o.durationMs,
        clients: o.clients,
        imageBytes: o.imageBytes,
        chunkSize: cs,
        memoryBudget: o.memoryBudget,
        failTimeoutMs: o.failTimeoutMs,
        attemptTimeoutMs: o.attemptTimeoutMs,
        failClosed: o.failClosed,
        fetchConcurrency: o.fetchConcurrency,
        cgroupLimitBytes: o.cgroupLimitBytes,
        hangBoundMs: o.hangBoundMs,
        seed: o.seed,
        sampleMs: o.sampleMs,
        scenarios: o.scenarios,
      },
    };
  } finally {
    clearInterval(sampler);
    for (const kill of live.values()) kill();
    await serve?.stop('SIGKILL');
    for (const g of cgroups) g.remove();
    await origin0.close();
    await origin1.close();
  }
}

const FAIL_LINE = /could not be served: failing closed|was refused again: failing closed/;
const KILL_LINE = /killing the peer/;

/** A fail-closed line's first error, short: what the table shows as "the reason logged". */
function reasonOf(l: LogLine): string {
  const first = (l.errors as string[] | undefined)?.[0] ?? (l.reason as string | undefined) ?? '';
  const why = first
    .replace(/^https?:\/\/[^:]+:\d+: /, '')
    .replace(/\d+ ms/g, 'N ms')
    .replace(/got \d+/g, 'got N')
    .replace(/chunks\/\S+/g, 'KEY')
    .slice(0, 120);
  return `${l.msg.replace(/^chunk \d+/, 'chunk N')}: ${why}`;
}

/** Classifies every restore against its scenario's expectation, with serve's log lines of its session. */
function judgeAll(
  finished: Finished[],
  logs: LogLine[],
  o: Resolved,
): { records: RestoreRecord[]; unexplainedErrors: LogLine[] } {
  // A session's lines carry its restoreId and the peer's pid (peerPid); the first session of a pid after its spawn is its own.
  const sessionOf = new Map<number, { at: number; restoreId: string }[]>();
  const linesOf = new Map<string, LogLine[]>();
  logs.forEach((l, i) => {
    if (typeof l.restoreId !== 'string') return;
    const id = l.restoreId;
    const mine = linesOf.get(id) ?? [];
    if (mine.length === 0) linesOf.set(id, mine);
    mine.push(l);
    if (l.msg !== 'restore session started') return;
    const pid = Number(l.peerPid);
    const of = sessionOf.get(pid) ?? [];
    if (of.length === 0) sessionOf.set(pid, of);
    of.push({ at: i, restoreId: id });
  });
  const explained = new Set<string>();
  const records = finished
    .sort((a, b) => a.n - b.n)
    .map((f): RestoreRecord => {
      const { plan, result } = f;
      const session = f.pid === undefined ? undefined : sessionOf.get(f.pid)?.find((s) => s.at >= f.logFrom);
      const lines = session ? (linesOf.get(session.restoreId) ?? []) : [];
      let wrong = 0;
      let pages = 0;
      const surprises: string[] = [];
      result.reads.forEach((rep, i) => {
        pages += rep.pages;
        const e = plan.expect[i];
        if (!e) return void surprises.push(`an extra read report at ${rep.off}`);
        const j = judgeStep(rep, e);
        wrong += j.wrong;
        if (j.surprise) surprises.push(j.surprise);
      });
      const base = {
        n: f.n,
        scenario: plan.scenario,
        pid: f.pid,
        ms: Math.round(f.ms),
        pagesRead: pages,
        wrongPages: wrong,
        failChunks: plan.failChunks,
      };
      const failLines = lines.filter((l) => FAIL_LINE.test(l.msg));
      const killLines = lines.filter((l) => KILL_LINE.test(l.msg));
      const mayFail = plan.failChunks.length > 0 || plan.cgroup === true;
      if (session && mayFail) explained.add(session.restoreId);
      const rec = (outcome: Outcome, detail: string, extra: Partial<RestoreRecord> = {}): RestoreRecord => ({
        ...base,
        outcome,
        detail,
        ...extra,
      });
      if (f.hung) return rec('hung', `alive after ${o.hangBoundMs} ms`, { wchan: f.wchan ?? [] });
      // Whatever became of the peer, serve must have ended its session (and said so), or it leaks.
      const summary = lines.find((l) => l.msg === 'restore session summary');
      if (session && !summary) return rec('unexpected', `serve never ended session ${session.restoreId}`);
      // What the peer read before it ended counts whatever ended it.
      if (surprises.length > 0) return rec('unexpected', surprises.join('; '));
      if (f.killedByTest && result.signal === 'SIGKILL')
        return rec('killed by test', `SIGKILL after ${plan.killAfterMs} ms`);
      const named = (c: number) => failLines.find((l) => Number(l.chunk) === c);
      if (result.code === 0 && result.done) {
        if (result.reads.length !== plan.expect.length)
          return rec('unexpected', `${result.reads.length} read reports for ${plan.expect.length} steps`);
        if (plan.failChunks.length === 0) return rec('ok', '');
        // SIGBUS exactly where expected (judged per step above); serve must say why, per chunk.
        const missing = plan.failChunks.filter((c) => !named(c));
        const first = named(plan.failChunks[0]!);
        // When a line is missing, say what serve did log for the session found, so that a rare case
        // explains itself: which session was matched to the peer, and its lines.
        const seen = () =>
          `; session ${session?.restoreId ?? 'none'} logged: ${lines.map((l) => `${String(l.msg)}${l.chunk !== undefined ? ` (chunk ${JSON.stringify(l.chunk)})` : ''}`).join(' | ')}`;
        return rec(
          'failed closed',
          missing.length ? `no fail-closed line for chunk(s) ${missing.join(', ')}${seen()}` : 'SIGBUS',
          missing.length === 0 && first ? { reasonLogged: reasonOf(first) } : {},
        );
      }
      if (result.signal === 'SIGKILL') {
        // Killed by serve failing closed: the line must name one of the chunks that had to fail (kill mode);
        // under a cgroup, any kill serve logged (a native failure such as ENOMEM on the copy) or the OOM killer.
        const failing = failLines.find((l) => plan.failChunks.includes(Number(l.chunk)));
        const why = failing ?? (plan.cgroup ? (failLines[0] ?? killLines[0]) : undefined);
        if (why) return rec('failed closed', 'SIGKILL by serve', { reasonLogged: reasonOf(why) });
        if (plan.cgroup && (f.oomKills ?? 0) > 0) return rec('oom-killed', 'the cgroup OOM killer');
        return rec('unexpected', 'SIGKILL that neither serve nor the OOM killer accounts for');
      }
      return rec(
        'unexpected',
        `exit ${result.code ?? result.signal}${result.stderr ? `: ${result.stderr.trim().slice(0, 200)}` : ''}`,
      );
    });
  const unexplainedErrors = logs.filter(
    (l) => l.level >= 50 && !(typeof l.restoreId === 'string' && explained.has(l.restoreId)),
  );
  return { records, unexplainedErrors };
}

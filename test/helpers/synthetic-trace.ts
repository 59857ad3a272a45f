/**
 * A restore session as `serve --trace-dir` would record it, made up but shaped like one: a guest whose
 * few vCPU and I/O threads fault in bursts, a replayed profile prefetching a few hundred chunks over a
 * handful of connections, demand fetches from the host disk cache, a first origin and (after a miss) a
 * second, zero chunks mapped without a fetch, chunks already resident, the milestones. Deterministic for
 * a seed (test/helpers/seeded-random.ts), self-consistent (totals, stall and chunk map agree with the
 * faults and fetches), so tests can compare what the page shows with what the trace holds.
 */
import {
  TRACE_FORMAT,
  TRACE_VERSION,
  type ChunkMapChar,
  type TraceFault,
  type TraceFetch,
  type TraceFile,
} from '../../runtime/trace-format.js';
import { seededRandom } from './seeded-random.js';

export interface SyntheticOptions {
  seed?: number;
  chunkCount?: number;
  /** Guest threads that fault. */
  threads?: number;
  /** Faults each thread takes that wait for a fetch. */
  faultsPerThread?: number;
  /** Profile chunks prefetched. */
  prefetches?: number;
  /** Prefetch connections to origin0 (how many run at once). */
  prefetchConcurrency?: number;
  /** Demand fetches that fail (every origin refused): chunks failed closed. */
  failures?: number;
  snapshotId?: string;
  restoreId?: string;
}

const CHUNK = 512 * 1024;

export function syntheticTrace(o: SyntheticOptions = {}): TraceFile {
  const rnd = seededRandom(o.seed ?? 42);
  const between = (a: number, b: number) => a + (b - a) * rnd();
  const r3 = (v: number) => Math.round(v * 1000) / 1000;
  const count = o.chunkCount ?? 384;
  const map: ChunkMapChar[] = new Array<ChunkMapChar>(count).fill('.');

  // A third of the chunks are zero (partly empty guest memory); most of those get touched.
  const zero = new Set<number>();
  for (let c = 0; c < count; c++) if (rnd() < 0.33) zero.add(c);
  let zeroFaults = 0;
  for (const c of zero)
    if (rnd() < 0.8) {
      map[c] = 'z';
      zeroFaults += 1 + Math.floor(rnd() * 3);
    }
  const data = [...Array(count).keys()].filter((c) => !zero.has(c));
  const shuffled = data
    .map((c) => [rnd(), c] as const)
    .sort((a, b) => a[0] - b[0])
    .map(([, c]) => c);

  const fetches: TraceFetch[] = [];
  const faults: TraceFault[] = [];

  // The profile: prefetched in order from t≈1 ms, `prefetchConcurrency` at a time, from the disk cache
  // when it has the chunk, else origin0.
  const nPrefetch = Math.min(o.prefetches ?? Math.floor(data.length * 0.45), shuffled.length);
  const profile = shuffled.slice(0, nPrefetch);
  const slots: number[] = new Array<number>(o.prefetchConcurrency ?? 6).fill(1 + rnd());
  const prefetchEnd = new Map<number, number>();
  for (const chunk of profile) {
    const slot = slots.indexOf(Math.min(...slots));
    const disk = rnd() < 0.2;
    const startMs = slots[slot]! + between(0.02, 0.3);
    const transfer = disk ? between(0.4, 1.5) : between(4, 18) * (rnd() < 0.05 ? 4 : 1);
    const decodeMs = between(0.3, 1.1);
    const verifyMs = between(0.2, 0.5);
    const endMs = startMs + transfer + decodeMs + verifyMs;
    slots[slot] = endMs;
    fetches.push({
      chunk,
      priority: 'prefetch',
      tier: disk ? 'disk' : 'origin0',
      queuedMs: r3(1 + rnd() * 0.5),
      startMs: r3(startMs),
      endMs: r3(endMs),
      bytes: Math.round(CHUNK * between(0.35, 0.7)),
      attempts: 1,
      hedge: 'none',
      decodeMs: r3(decodeMs),
      verifyMs: r3(verifyMs),
    });
    prefetchEnd.set(chunk, endMs);
    map[chunk] = 'p';
  }

  // Demand faults: each thread runs, faults, waits, runs on; early faults come in a burst (boot).
  const demandPool = shuffled.slice(nPrefetch);
  let failuresLeft = o.failures ?? 0;
  let demandIx = 0;
  let memoryHits = 0;
  const threads = o.threads ?? 3;
  for (let t = 0; t < threads; t++) {
    let now = between(2, 6) + t * between(0.5, 3);
    for (let k = 0; k < (o.faultsPerThread ?? 22); k++) {
      now += k < 6 ? between(0.2, 3) : between(3, 45);
      // Now and then a fault on a chunk the profile is still fetching: served from memory when it lands.
      const inFlight = profile.find(
        (c) => map[c] === 'p' && prefetchEnd.get(c)! > now && prefetchEnd.get(c)! - now < 8,
      );
      if (inFlight !== undefined && rnd() < 0.25) {
        const waitMs = prefetchEnd.get(inFlight)! - now + between(0.05, 0.2);
        faults.push({
          chunk: inFlight,
          atMs: r3(now),
          waitMs: r3(waitMs),
          tier: 'memory',
          queueMs: r3(waitMs - 0.1),
          fetchMs: {},
          decodeMs: 0,
          verifyMs: 0,
          installMs: 0.1,
        });
        // A fault waited for it: demanded, though the fetch was the profile's.
        map[inFlight] = 'd';
        memoryHits++;
        now += waitMs;
        continue;
      }
      const chunk = demandPool[demandIx++];
      if (chunk === undefined) break;
      const fail = failuresLeft > 0 && k === 10;
      if (fail) failuresLeft--;
      const r = rnd();
      const tier = fail ? 'failed' : r < 0.15 ? 'disk' : r < 0.85 ? 'origin0' : 'origin1';
      const queueMs = between(0.03, 0.4) * (rnd() < 0.1 ? 10 : 1);
      const transfer = fail
        ? between(40, 60)
        : tier === 'disk'
          ? between(0.3, 1.2)
          : tier === 'origin0'
            ? between(3, 14) * (rnd() < 0.06 ? 5 : 1)
            : between(12, 30);
      const decodeMs = fail ? 0 : between(0.3, 1.2);
      const verifyMs = fail ? 0 : between(0.15, 0.5);
      const installMs = between(0.04, 0.2);
      const queuedMs = now + 0.02;
      const startMs = queuedMs + queueMs;
      const endMs = startMs + transfer + decodeMs + verifyMs;
      const waitMs = endMs + installMs - now;
      fetches.push({
        chunk,
        priority: 'demand',
        tier,
        queuedMs: r3(queuedMs),
        startMs: r3(startMs),
        endMs: r3(endMs),
        bytes: fail ? 0 : Math.round(CHUNK * between(0.35, 0.7)),
        attempts: fail ? 6 : tier === 'origin1' ? 2 : rnd() < 0.05 ? 2 : 1,
        hedge: tier === 'origin0' && transfer > 14 ? (rnd() < 0.5 ? 'won' : 'lost') : 'none',
        decodeMs: r3(decodeMs),
        verifyMs: r3(verifyMs),
      });
      const fetchMs: Record<string, number> = {};
      if (tier === 'origin1') {
        // A miss on origin0 first, then origin1: the fetch part is split between them.
        fetchMs.origin0 = r3(transfer * 0.2);
        fetchMs.origin1 = r3(transfer * 0.8);
      } else fetchMs[tier === 'failed' ? 'origin0' : tier] = r3(transfer);
      faults.push({
        chunk,
        atMs: r3(now),
        waitMs: r3(waitMs),
        tier,
        queueMs: r3(queueMs + 0.02),
        fetchMs,
        decodeMs: r3(decodeMs),
        verifyMs: r3(verifyMs),
        installMs: r3(installMs),
      });
      map[chunk] = fail ? 'x' : 'd';
      now += waitMs;
    }
  }
  // Chunks another session of the snapshot had made resident: the fault thread copies them in C, no fetch.
  for (const c of demandPool.slice(demandIx))
    if (rnd() < 0.08) {
      map[c] = 'm';
      memoryHits++;
    }
  faults.sort((a, b) => a.atMs - b.atMs);
  fetches.sort((a, b) => a.startMs - b.startMs);

  const lastEvent = Math.max(...faults.map((f) => f.atMs + f.waitMs), ...fetches.map((f) => f.endMs));
  const durationMs = r3(lastEvent + between(20, 60));
  const delivered = fetches.filter((f) => f.tier !== 'failed');
  const hitsByTier: Record<string, number> = {};
  for (const f of delivered) hitsByTier[f.tier] = (hitsByTier[f.tier] ?? 0) + 1;
  if (memoryHits) hitsByTier.memory = memoryHits;
  const sum = (pick: (f: TraceFault) => number) => r3(faults.reduce((n, f) => n + pick(f), 0));
  const stallFetch: Record<string, number> = {};
  for (const f of faults)
    for (const [t, v] of Object.entries(f.fetchMs)) stallFetch[t] = r3((stallFetch[t] ?? 0) + v);
  const first = faults[0]!;
  const profileDone = Math.max(...profile.map((c) => prefetchEnd.get(c)!));

  return {
    format: TRACE_FORMAT,
    version: TRACE_VERSION,
    snapshotId: o.snapshotId ?? 'fn-42',
    restoreId: o.restoreId ?? 'r-7f3a91c2',
    peerPid: 48213,
    shape: 'firecracker-v1',
    regions: 1,
    pageSize: 4096,
    chunkSize: CHUNK,
    chunkCount: count,
    startedAt: '2025-06-01T12:00:00.000Z',
    durationMs,
    outcome: o.failures ? 'killed' : 'ended',
    origins: { origin0: 'http://cache.internal/snaps', origin1: 's3://snaps/prod' },
    milestones: [
      // t = 0 is the handshake, as the recorder marks it.
      { name: 'handshake', atMs: 0 },
      { name: 'first-fault-served', atMs: r3(first.atMs + first.waitMs) },
      { name: 'profile-installed', atMs: r3(profileDone) },
      { name: 'peer-exited', atMs: r3(durationMs - between(1, 5)) },
    ],
    faults,
    fetches,
    chunks: map.join(''),
    stall: {
      totalMs: sum((f) => f.waitMs),
      faults: faults.length,
      queueMs: sum((f) => f.queueMs),
      fetchMs: stallFetch,
      decodeMs: sum((f) => f.decodeMs),
      verifyMs: sum((f) => f.verifyMs),
      installMs: sum((f) => f.installMs),
    },
    totals: {
      faults: faults.length + zeroFaults + Math.floor(rnd() * 40),
      zeroFaults,
      fetchedChunks: delivered.length,
      bytesFetched: delivered.reduce((n, f) => n + f.bytes, 0),
      prefetchedChunks: delivered.filter((f) => f.priority === 'prefetch').length,
      failedChunks: fetches.length - delivered.length,
      hitsByTier,
    },
  };
}

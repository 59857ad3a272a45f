/**
 * Prometheus metrics for `serve`, one registry per server (tests run several in one process).
 * Native per-session counters are folded in when a session ends and read live on each scrape.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { FetchEvent } from './fetcher.js';
import type { StallSplit } from './trace-format.js';

export class RuntimeMetrics {
  readonly registry = new Registry();
  readonly faults = new Counter({
    name: 'lazysnap_faults_total',
    help: 'Page faults read from userfaultfds',
    registers: [this.registry],
  });
  readonly zeroFaults = new Counter({
    name: 'lazysnap_zero_faults_total',
    help: 'Faults on zero chunks, mapped without a fetch',
    registers: [this.registry],
  });
  readonly jsFaults = new Counter({
    name: 'lazysnap_forwarded_faults_total',
    help: 'Faults on chunks that were not resident (served through a fetch)',
    registers: [this.registry],
  });
  readonly fetches = new Counter({
    name: 'lazysnap_fetches_total',
    help: 'Chunk fetches by tier (disk, origin0, origin1, ..., failed)',
    labelNames: ['tier', 'priority'],
    registers: [this.registry],
  });
  readonly fetchBytes = new Counter({
    name: 'lazysnap_fetch_bytes_total',
    help: 'Bytes fetched by tier (stored size for origins)',
    labelNames: ['tier'],
    registers: [this.registry],
  });
  readonly fetchSeconds = new Histogram({
    name: 'lazysnap_fetch_seconds',
    help: 'Time to fetch and verify a chunk, by tier',
    labelNames: ['tier'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly faultSeconds = new Histogram({
    name: 'lazysnap_fault_service_seconds',
    help: 'From the fault thread reading a fault on a non-resident chunk to JS seeing its install reported (the stall plus the report back to JS)',
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
    registers: [this.registry],
  });
  readonly stallSeconds = new Histogram({
    name: 'lazysnap_fault_stall_seconds',
    help: 'How long each fault that crossed into JS kept its thread waiting: from the fault thread reading it to the install waking the peer (fault thread time stamps)',
    buckets: [
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ],
    registers: [this.registry],
  });
  /** Stall seconds by phase (and tier) not yet in stallPhaseSeconds: added per fault, folded in at scrape. */
  readonly #stallPending = new Map<string, number>();
  readonly stallPhaseSeconds: Counter<'phase' | 'tier'> = new Counter({
    name: 'lazysnap_fault_stall_phase_seconds_total',
    help: 'Where fault stall time went (runtime/stall.ts): phase queue, fetch (with the tier that answered), decode, verify or install',
    labelNames: ['phase', 'tier'],
    registers: [this.registry],
    // Five labelled increments per fault cost more than the fault's accounting: sums wait here for a scrape.
    collect: () => this.#flushStall(),
  });
  readonly prefetchChunks = new Counter({
    name: 'lazysnap_prefetch_chunks_total',
    help: 'Prefetched chunks (profile replay, fill) by outcome: ahead (installed before any fault asked), late (a fault asked first and waited), failed (dropped; a fault fetches it again)',
    labelNames: ['outcome'],
    registers: [this.registry],
  });
  readonly prefetchMisses = new Counter({
    name: 'lazysnap_prefetch_misses_total',
    help: 'Demand faults on chunks the replayed profile lacked',
    registers: [this.registry],
  });
  readonly sessions = new Gauge({
    name: 'lazysnap_sessions_active',
    help: 'Restore sessions being served',
    registers: [this.registry],
  });
  readonly sessionsTotal = new Counter({
    name: 'lazysnap_sessions_total',
    help: 'Restore sessions by outcome',
    labelNames: ['outcome'],
    registers: [this.registry],
  });
  readonly failClosed = new Counter({
    name: 'lazysnap_fail_closed_total',
    help: 'Chunks no origin could deliver, by action taken',
    labelNames: ['action'],
    registers: [this.registry],
  });
  readonly nativeFailures = new Counter({
    name: 'lazysnap_native_failures_total',
    help: 'Failures the fault thread reported (runtime/native-failure.ts), by kind, errno name and the action taken',
    labelNames: ['kind', 'code', 'action'],
    registers: [this.registry],
  });
  readonly sessionsAdopted = new Counter({
    name: 'lazysnap_sessions_adopted_total',
    help: 'Sessions taken over from a crashed worker or a previous serve (crash recovery, upgrade)',
    registers: [this.registry],
  });
  readonly adoptionsRefused = new Counter({
    name: 'lazysnap_adoptions_refused_total',
    help: 'Sessions whose recorded state could not be read (another version): their peers were killed',
    registers: [this.registry],
  });
  readonly faultsAcrossRestart = new Counter({
    name: 'lazysnap_faults_across_restart_total',
    help: 'Faults that waited while no one served their session (pending at adoption, or sent back by its wake), counted when the session ends',
    registers: [this.registry],
  });
  readonly workerRestarts = new Counter({
    name: 'lazysnap_worker_restarts_total',
    help: "Times the supervisor replaced a worker process that died (the worker's counters restart from zero; this one is carried over)",
    registers: [this.registry],
  });
  readonly unservedSeconds = new Counter({
    name: 'lazysnap_unserved_seconds_total',
    help: 'Time with live sessions and no worker serving them: from a worker death (or a handover start) to adoption',
    registers: [this.registry],
  });
  readonly hedges = new Counter({
    name: 'lazysnap_hedged_requests_total',
    help: "Demand requests hedged (not answered by the origin's p95), by which answered first (won: a hedge)",
    labelNames: ['outcome'],
    registers: [this.registry],
  });
  readonly handshakeErrors = new Counter({
    name: 'lazysnap_handshake_errors_total',
    help: 'Connections closed for a malformed handshake',
    registers: [this.registry],
  });
  readonly peersRefused = new Counter({
    name: 'lazysnap_peers_refused_total',
    help: 'Connections closed unread because the peer uid is not in the allowlist',
    registers: [this.registry],
  });

  /** One fault's stall split (runtime/stall.ts), in ms: into the fault stall metrics. */
  addStall(waitMs: number, s: StallSplit): void {
    this.stallSeconds.observe(waitMs / 1000);
    const p = this.#stallPending;
    const add = (key: string, ms: number) => ms > 0 && p.set(key, (p.get(key) ?? 0) + ms);
    add('queue\n', s.queueMs);
    for (const tier in s.fetchMs) add(`fetch\n${tier}`, s.fetchMs[tier]!);
    add('decode\n', s.decodeMs);
    add('verify\n', s.verifyMs);
    add('install\n', s.installMs);
  }

  #flushStall(): void {
    for (const [key, ms] of this.#stallPending) {
      const [phase, tier] = key.split('\n') as [string, string];
      this.stallPhaseSeconds.inc({ phase, tier }, ms / 1000);
    }
    this.#stallPending.clear();
  }

  onFetch = (e: FetchEvent): void => {
    this.fetches.inc({ tier: e.tier, priority: e.priority });
    if (e.tier !== 'failed') {
      this.fetchBytes.inc({ tier: e.tier }, e.bytes);
      this.fetchSeconds.observe({ tier: e.tier }, e.ms / 1000);
    }
  };

  /** Serves GET /metrics on 127.0.0.1:port (0 = any free port); resolves with the bound port. */
  async listen(port: number, host = '127.0.0.1'): Promise<{ port: number; close: () => Promise<void> }> {
    const server: Server = createServer((req, res) => {
      if (req.method !== 'GET' || req.url !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        () => res.writeHead(500).end(),
      );
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
    const addr = server.address();
    return {
      port: typeof addr === 'object' && addr ? addr.port : port,
      close: () => new Promise((resolve) => server.close(() => resolve())),
    };
  }
}

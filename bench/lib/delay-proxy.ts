/**
 * A userspace TCP proxy that makes a local origin (nginx, s3rver) look like S3 seen from a VM: each
 * response's first byte is held back and every connection's download is paced. P3 in docs/DESIGN.md needs
 * this because this kernel has no netem, so the network stack itself cannot add latency or shape.
 *
 * Model: one upstream connection per accepted connection. Client→upstream bytes pass at once. A
 * "response" is the first upstream data after the client has sent something; it reaches the client
 * no sooner than firstByteMs after the client's last request byte, then drains through a token bucket
 * at bytesPerSecond. That is server-side time to first byte, not a simulated RTT: connects and
 * uploads are instant, which matches how S3's latency figure (mostly request processing) behaves.
 * Caveat: a client that sends again while a response is still arriving (pipelining, or an upload
 * during a download) makes the rest of that response pay the first-byte delay again.
 *
 * Tail (tailFraction > 0): object stores answer a few requests far later than the rest (a slow disk, a
 * cold partition), which is what hedged requests are for. A seeded fraction of responses waits
 * tailFactor × firstByteMs for its first byte instead. The draw is per response, not per object: a
 * second request for the same key is as likely to be fast as any other, as with S3, so a hedge to the
 * same origin can win. The draws come from one generator per proxy in the order responses begin, so
 * the seed fixes the sequence of slow and fast answers, not which request gets which when several
 * connections race.
 */
import net from 'node:net';

import { InvalidArgumentError } from '../../core/errors.js';
import { seededRandom } from '../../test/helpers/seeded-random.js';

export interface DelayProxyOptions {
  /** Upstream to forward to. */
  target: { host: string; port: number };
  /** Added before the first byte of each response: the gap between the client finishing a request
   * burst and the upstream's reply reaching it. @default 30 */
  firstByteMs?: number;
  /** Per-connection cap on upstream→client bytes per second. @default 90e6 */
  bytesPerSecond?: number;
  /** Fraction of responses (0..1, drawn per response) whose first byte waits tailFactor × firstByteMs.
   * @default 0 (no tail) */
  tailFraction?: number;
  /** How many times firstByteMs a tail response waits (≥ 1). @default 20 */
  tailFactor?: number;
  /** Seed of the tail draws (an integer 0..2^32-1). @default 1 */
  tailSeed?: number;
  /** Listen address. @default 127.0.0.1, port 0 */
  host?: string;
  port?: number;
}

/** Totals since start: accepted connections, requests seen, bytes to the client and upstream. */
export interface DelayProxyStats {
  connections: number;
  requests: number;
  bytesDown: number;
  bytesUp: number;
  /** Responses held back as the tail (always 0 without tailFraction). */
  tailResponses: number;
}

export interface DelayProxy {
  url: string;
  host: string;
  port: number;
  stats(): DelayProxyStats;
  close(): Promise<void>;
}

type ResolvedDelayProxyOptions = Required<DelayProxyOptions>;

/** What an idle connection may send unpaced, like a TCP window already open. */
const BURST = 64 * 1024;
/** Stop reading upstream above this much queued: bounds memory per connection. */
const HIGH_WATER = 256 * 1024;
/** Don't wake for less than this: timers fire ≥1 ms apart anyway, tiny writes only add syscalls. */
const MIN_SEND = 16 * 1024;

function resolveDelayProxyOptions(o: DelayProxyOptions): ResolvedDelayProxyOptions {
  if (typeof o !== 'object' || o === null) throw new InvalidArgumentError('options', 'an object', o);
  const {
    target,
    firstByteMs = 30,
    bytesPerSecond = 90e6,
    tailFraction = 0,
    tailFactor = 20,
    tailSeed = 1,
    host = '127.0.0.1',
    port = 0,
  } = o;
  if (
    typeof target?.host !== 'string' ||
    !Number.isInteger(target.port) ||
    target.port < 1 ||
    target.port > 65535
  ) {
    throw new InvalidArgumentError('target', 'a { host, port } with port 1-65535', target);
  }
  if (!Number.isFinite(firstByteMs) || firstByteMs < 0)
    throw new InvalidArgumentError('firstByteMs', 'a finite number ≥ 0', firstByteMs);
  if (!Number.isFinite(bytesPerSecond) || bytesPerSecond <= 0)
    throw new InvalidArgumentError('bytesPerSecond', 'a finite number > 0', bytesPerSecond);
  if (typeof tailFraction !== 'number' || !(tailFraction >= 0 && tailFraction <= 1))
    throw new InvalidArgumentError('tailFraction', 'a number 0-1', tailFraction);
  if (!Number.isFinite(tailFactor) || tailFactor < 1)
    throw new InvalidArgumentError('tailFactor', 'a finite number ≥ 1', tailFactor);
  if (!Number.isInteger(tailSeed) || tailSeed < 0 || tailSeed > 0xffffffff)
    throw new InvalidArgumentError('tailSeed', 'an integer 0-4294967295', tailSeed);
  if (typeof host !== 'string') throw new InvalidArgumentError('host', 'a string', host);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new InvalidArgumentError('port', 'an integer 0-65535', port);
  return {
    target: { host: target.host, port: target.port },
    firstByteMs,
    bytesPerSecond,
    tailFraction,
    tailFactor,
    tailSeed,
    host,
    port,
  };
}

export async function startDelayProxy(options: DelayProxyOptions): Promise<DelayProxy> {
  const o = resolveDelayProxyOptions(options);
  const counters: DelayProxyStats = {
    connections: 0,
    requests: 0,
    bytesDown: 0,
    bytesUp: 0,
    tailResponses: 0,
  };
  // Shared by every connection: one sequence of draws per proxy, so the seed fixes the tail's share.
  const random = seededRandom(o.tailSeed);
  /** The first-byte delay of the response beginning now. */
  const firstByteMs = (): number => {
    // No draw without a tail: the proxy behaves exactly as it did before the option existed.
    if (o.tailFraction === 0 || random() >= o.tailFraction) return o.firstByteMs;
    counters.tailResponses++;
    return o.firstByteMs * o.tailFactor;
  };
  // Both ends of every pair, so close() can destroy them and wait for their handles to go.
  const live = new Set<net.Socket>();
  const track = (s: net.Socket): void => {
    live.add(s);
    s.once('close', () => live.delete(s));
  };
  // allowHalfOpen: a client's FIN is forwarded, but the reply still has to drain through the pacer.
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    counters.connections++;
    track(client);
    track(relay(client, o, counters, firstByteMs));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { address, port } = server.address() as net.AddressInfo;
  return {
    url: `http://${address.includes(':') ? `[${address}]` : address}:${port}`,
    host: address,
    port,
    stats: () => ({ ...counters }),
    async close() {
      const closed = [...live].map((s) => new Promise((r) => s.once('close', r)));
      const stopped = new Promise((r) => server.close(r)); // an error (already closed) is fine too
      for (const s of live) s.destroy();
      await Promise.all([stopped, ...closed]);
    },
  };
}

/** notBefore: performance.now() before which buf must not be written; set on a response's first chunk. */
interface Pending {
  buf: Buffer;
  notBefore: number;
}

/** Wires one client to a fresh upstream connection; returns the upstream socket. */
function relay(
  client: net.Socket,
  o: ResolvedDelayProxyOptions,
  counters: DelayProxyStats,
  firstByteMs: () => number,
): net.Socket {
  const upstream = net.connect({ host: o.target.host, port: o.target.port, allowHalfOpen: true });
  client.setNoDelay(true).on('end', () => upstream.end());
  upstream.setNoDelay(true).on('drain', () => client.resume());
  const perMs = o.bytesPerSecond / 1000;
  const queue: Pending[] = [];
  let queued = 0; // bytes in queue
  let awaitingResponse = false; // the client sent bytes that no upstream data has answered yet
  let requestAt = 0;
  let [tokens, refilledAt] = [BURST, performance.now()];
  // True while stopped only for tokens. setTimeout fires ≥1 ms late, longer than a 64 KiB burst
  // lasts at 90 MB/s, so credit earned meanwhile is owed, not idle credit: clamping it would pace
  // well below bytesPerSecond. Idle, held or client-blocked time is clamped to one burst.
  let pacing = false;
  let timer: NodeJS.Timeout | undefined;
  let blocked = false; // waiting for the client's 'drain'
  let upstreamEnded = false;

  const refill = (now: number): void => {
    tokens += (now - refilledAt) * perMs;
    if (!pacing) tokens = Math.min(tokens, BURST);
    refilledAt = now;
  };
  const wake = (ms: number): void => {
    timer = setTimeout(
      () => {
        timer = undefined;
        pump();
      },
      Math.max(1, Math.ceil(ms)),
    );
  };

  function pump(): void {
    if (timer !== undefined || blocked || client.destroyed) return;
    for (let head = queue[0]; head !== undefined; head = queue[0]) {
      const now = performance.now();
      refill(now);
      // Timers run on libuv's coarse clock and may fire a fraction early; re-check, never release early.
      if (head.notBefore > now) {
        pacing = false;
        return wake(head.notBefore - now);
      }
      const need = Math.min(head.buf.length, MIN_SEND);
      if (tokens < need) {
        pacing = true;
        return wake((need - tokens) / perMs);
      }
      const n = Math.min(Math.floor(tokens), head.buf.length);
      const out = n === head.buf.length ? head.buf : head.buf.subarray(0, n);
      if (n === head.buf.length) queue.shift();
      else head.buf = head.buf.subarray(n);
      tokens -= n;
      queued -= n;
      counters.bytesDown += n;
      if (upstream.isPaused() && queued < HIGH_WATER / 2) upstream.resume();
      if (!client.write(out)) {
        blocked = true;
        pacing = false;
        client.once('drain', () => {
          blocked = false;
          pump();
        });
        return;
      }
    }
    pacing = false;
    if (upstreamEnded && !client.writableEnded) client.end();
  }

  client.on('data', (buf: Buffer) => {
    if (!awaitingResponse) counters.requests++;
    awaitingResponse = true;
    requestAt = performance.now(); // last byte of the burst so far: the delay counts from here
    counters.bytesUp += buf.length;
    if (!upstream.write(buf)) client.pause();
  });

  upstream.on('data', (buf: Buffer) => {
    refill(performance.now()); // before queuing, so time spent idle is clamped to one burst
    queue.push({ buf, notBefore: awaitingResponse ? requestAt + firstByteMs() : 0 });
    awaitingResponse = false;
    queued += buf.length;
    if (queued >= HIGH_WATER) upstream.pause();
    pump();
  });
  upstream.on('end', () => {
    upstreamEnded = true; // the client gets its FIN once the queue has drained
    pump();
  });

  // A failure on either side tears down the pair; 'close' always follows 'error'.
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
  upstream.on('close', () => {
    if (!upstreamEnded) client.destroy(); // reset, not a clean FIN: nothing more will come
  });
  client.on('close', () => {
    clearTimeout(timer);
    timer = undefined;
    queue.length = 0;
    upstream.destroy();
  });
  return upstream;
}

/**
 * Serve options as the CLI hands them over (durations parsed from text, or numbers from the SDK):
 * resolveServeOptions either refuses a value with InvalidArgumentError or returns one every timer
 * can honour. Node's timers fire after 1 ms when asked for more than 2^31-1 ms, so an accepted
 * `--fail-timeout 30d` would fail every fetch at once and fail the VM closed.
 */
import fc from 'fast-check';

import { parseDuration } from '../../core/units.js';
import { resolveServeOptions, type ServeOptions } from '../../runtime/serve-options.js';
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

const TIMERS = [
  'failTimeoutMs',
  'attemptTimeoutMs',
  'handshakeTimeoutMs',
  'shutdownGraceMs',
  'recordIdleMs',
] as const;
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A duration as a user types it, or a number as an SDK caller passes it. */
const durationArb: fc.Arbitrary<{ text?: string; ms?: number }> = fc.oneof(
  fc
    .tuple(
      fc.oneof(fc.nat(100), fc.nat(), fc.constantFrom(24, 25, 30, 365, 999999999999999)),
      fc.constantFrom('ms', 's', 'm', 'h', 'd'),
    )
    .map(([n, u]) => ({ text: `${n}${u}` })),
  fc.constantFrom('', 's', '1.5s', '-1s', '1e3ms', ' 5s', '5S').map((text) => ({ text })),
  fc
    .oneof(
      fc.integer(),
      fc.constantFrom(
        0,
        1,
        MAX_TIMER_MS,
        MAX_TIMER_MS + 1,
        2 ** 32,
        2 ** 53 - 1,
        2 ** 53,
        1.5,
        -1,
        Infinity,
        NaN,
      ),
    )
    .map((ms) => ({ ms })),
);

export const serveOptions: FuzzTarget = {
  name: 'serve.options',
  surface: 'serve durations and limits (CLI text -> parseDuration -> resolveServeOptions)',
  weight: 5,
  quickRuns: 300,
  async run(o: RunOptions): Promise<Outcome> {
    const clock = new CaseClock();
    const tally = new Tally();
    const prop = fc.property(fc.constantFrom(...TIMERS), durationArb, (name, d) => {
      const opts: ServeOptions = { stores: ['/nonexistent'], id: 'vm', socketPath: '/tmp/x.sock' };
      let resolved;
      try {
        const ms = d.text !== undefined ? parseDuration(d.text, name) : d.ms!;
        resolved = clock.time(() => resolveServeOptions({ ...opts, [name]: ms }));
      } catch (e) {
        expectTyped(e, ['LAZYSNAP_INVALID_ARGUMENT'], `${name} ${JSON.stringify(d)}`);
        tally.add('refused');
        return;
      }
      tally.add('accepted');
      const v = resolved[name];
      if (!Number.isSafeInteger(v) || v < 0 || v > MAX_TIMER_MS)
        throw new Error(
          `${name} ${JSON.stringify(d)} accepted as ${v} ms: a Node timer fires after 1 ms instead`,
        );
    });
    return { ...outcome(this.name, fc.check(prop, params(o)), clock), notes: String(tally) };
  },
};

/**
 * Every fuzz target, in the order they run. `npm test` runs each briefly (test/unit/fuzz.test.ts);
 * `npm run fuzz` (scripts/fuzz.ts) runs each with its share of >= 100,000 cases.
 */
import { cliArgs } from './cli.js';
import { handshakeParse, handshakeSocket } from './handshake.js';
import { manifestInspect, manifestParse, manifestRoundTrip } from './manifest.js';
import { serveOptions } from './serve-options.js';
import { storeKeys, storeUrls } from './store.js';
import type { FuzzTarget } from './target.js';

export type { FuzzTarget, Outcome, RunOptions } from './target.js';

export const TARGETS: FuzzTarget[] = [
  handshakeParse,
  handshakeSocket,
  manifestParse,
  manifestRoundTrip,
  manifestInspect,
  storeKeys,
  storeUrls,
  cliArgs,
  serveOptions,
];

/**
 * The delay proxy (delay-proxy.ts) as its own process, so that its JS pacing does not share an event
 * loop with the runtime being measured:
 *
 *   node --import tsx bench/lib/delay-proxy-main.ts --target-port N [--target-host H]
 *        [--first-byte-ms MS] [--bytes-per-second B]
 *        [--tail-fraction F --tail-factor X --tail-seed S]
 *
 * stdout: one JSON line `{"url":…,"port":…}` once listening; then, for every `stats` line read on
 * stdin, one JSON line of DelayProxyStats. When stdin ends (the driver closed it, or died), the
 * proxy closes and the process exits, so it never outlives its driver.
 */
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { startDelayProxy } from './delay-proxy.js';

const { values } = parseArgs({
  options: {
    'target-host': { type: 'string', default: '127.0.0.1' },
    'target-port': { type: 'string' },
    'first-byte-ms': { type: 'string', default: '30' },
    'bytes-per-second': { type: 'string', default: '90e6' },
    // Absent: no tail, as before the option existed (delay-proxy.ts picks the defaults).
    'tail-fraction': { type: 'string' },
    'tail-factor': { type: 'string' },
    'tail-seed': { type: 'string' },
  },
  strict: true,
});
const port = Number(values['target-port']);
if (!Number.isInteger(port)) {
  console.error(
    'usage: delay-proxy-main --target-port N [--target-host H] [--first-byte-ms MS] [--bytes-per-second B] ' +
      '[--tail-fraction F] [--tail-factor X] [--tail-seed S]',
  );
  process.exit(2);
}

const proxy = await startDelayProxy({
  target: { host: values['target-host'], port },
  firstByteMs: Number(values['first-byte-ms']),
  bytesPerSecond: Number(values['bytes-per-second']),
  ...(values['tail-fraction'] !== undefined ? { tailFraction: Number(values['tail-fraction']) } : {}),
  ...(values['tail-factor'] !== undefined ? { tailFactor: Number(values['tail-factor']) } : {}),
  ...(values['tail-seed'] !== undefined ? { tailSeed: Number(values['tail-seed']) } : {}),
});
console.log(JSON.stringify({ url: proxy.url, port: proxy.port }));

const rl = createInterface({ input: process.stdin });
rl.on('line', (l) => {
  if (l.trim() === 'stats') console.log(JSON.stringify(proxy.stats()));
});
rl.on('close', () => {
  void proxy.close().then(() => process.exit(0));
});

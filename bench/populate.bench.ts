/**
 * P2, full populate from a local store (docs/DESIGN.md, "Performance targets"): GB/s of touching every
 * chunk of a 1 GiB image once, lazysnap ≥ 80% of the pure-C reference at the same chunk size.
 *
 *   node --import tsx bench/populate.bench.ts      (or `npm run bench` for every scenario + report)
 *
 * A plain script rather than a vitest `bench`: the timed phase runs inside the faulting client
 * process (fc-client's elapsedNs) or, for the install stream, inside the handler; vitest's bench
 * would time the driver's own JS. The machine is shared and noisy, so the cases alternate round by
 * round (reference, lazysnap resident, lazysnap install, reference, …) and the report takes medians.
 */
import assert from 'node:assert/strict';
import path from 'node:path';

import { tempDir } from '../test/helpers/images.js';
import { writeRandomImage } from './lib/image.js';
import { runRound, type HandlerSpec } from './lib/procs.js';
import { environment, median, range, roundCount, writeResult, type ResultRow } from './lib/results.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const IMAGE_BYTES = 1024 * MiB;
const CHUNKS = [64 * KiB, 512 * KiB, 2 * MiB];
const ROUNDS = roundCount(7);
const TIMEOUT_MS = 180_000;
const TARGET = 0.8;
const PIN = { handler: '0', client: '1' } as const;
const CASES = [
  { id: 'reference', kind: 'reference', mode: undefined },
  { id: 'lazysnap', kind: 'lazysnap', mode: 'resident' },
  { id: 'lazysnap-install', kind: 'lazysnap', mode: 'install' },
] as const;

const sizeLabel = (n: number) => (n >= MiB ? `${n / MiB} MiB` : `${n / KiB} KiB`);

const tmp = tempDir('lazysnap-bench-');
const rounds: Record<string, unknown>[] = [];
try {
  const image = writeRandomImage(path.join(tmp.dir, 'p2.img'), IMAGE_BYTES);
  const socket = path.join(tmp.dir, 'uffd.sock');
  for (const chunkSize of CHUNKS) {
    // Round 0 is a warm-up, recorded but left out of the medians.
    for (let round = 0; round <= ROUNDS; round++) {
      for (const c of CASES) {
        const handler: HandlerSpec = {
          kind: c.kind,
          image,
          socket,
          chunkSize,
          ...(c.mode ? { mode: c.mode } : {}),
        };
        const r = await runRound({
          handler,
          clientArgs: [
            '--image',
            image,
            '--touch',
            'chunk',
            '--chunk-size',
            String(chunkSize),
            '--order',
            'seq',
            '--threads',
            '1',
          ],
          handlerCpus: PIN.handler,
          clientCpus: PIN.client,
          timeoutMs: TIMEOUT_MS,
        });
        assert.equal(r.client.pagesVerified, IMAGE_BYTES / 4096, 'the client must have verified every page');
        const clientGBps = IMAGE_BYTES / r.client.elapsedNs;
        let gbps = clientGBps;
        if (c.mode === 'install') {
          gbps = r.handler.installGBps as number;
          assert.ok(gbps > 0, 'the install stream reported no time');
        } else if (c.kind === 'lazysnap') {
          const st = r.handler.stats as { forwardedFaults: number };
          assert.equal(st.forwardedFaults, 0, 'a fault was forwarded to JS in resident mode');
        }
        rounds.push({
          chunkSize,
          round,
          warmup: round === 0,
          case: c.id,
          gbps,
          clientElapsedNs: r.client.elapsedNs,
          clientGBps,
          handlerStats: r.handler,
        });
        console.error(
          `P2 ${sizeLabel(chunkSize)} ${round === 0 ? 'warm-up' : `round ${round}/${ROUNDS}`} ${c.id}: ${gbps.toFixed(3)} GB/s`,
        );
      }
    }
  }
} finally {
  tmp.cleanup();
}

const medians: Record<string, number> = {};
const rows: ResultRow[] = [];
for (const chunkSize of CHUNKS) {
  const xs = (id: string) =>
    rounds
      .filter((r) => r.chunkSize === chunkSize && r.case === id && !r.warmup)
      .map((r) => r.gbps as number);
  const ref = median(xs('reference'));
  const lazy = median(xs('lazysnap'));
  const install = median(xs('lazysnap-install'));
  const spread = (id: string) => ({ referenceRange: range(xs('reference')), lazysnapRange: range(xs(id)) });
  Object.assign(medians, {
    [`${chunkSize}.reference.GBps`]: ref,
    [`${chunkSize}.lazysnap.GBps`]: lazy,
    [`${chunkSize}.lazysnap-install.GBps`]: install,
  });
  rows.push(
    {
      case: `populate, ${sizeLabel(chunkSize)} chunks (resident, faults resolved in C)`,
      unit: 'GB/s',
      reference: ref,
      lazysnap: lazy,
      ...spread('lazysnap'),
      ratio: lazy / ref,
      target: `≥ ${TARGET * 100}%`,
      met: lazy / ref >= TARGET,
    },
    {
      case: `install stream, ${sizeLabel(chunkSize)} chunks (JS read + put + install(); extra row)`,
      unit: 'GB/s',
      reference: ref,
      lazysnap: install,
      ...spread('lazysnap-install'),
      ratio: install / ref,
      target: null,
      met: null,
    },
  );
}

const file = writeResult({
  scenario: 'populate',
  title: 'P2: full populate from a local store',
  howMeasured:
    `A ${IMAGE_BYTES / MiB} MiB random image. fc-client (test/fixtures/fc-client.c) does Firecracker's handshake, then one ` +
    `thread reads one byte of every chunk in order (\`--touch chunk --chunk-size N --order seq --threads 1\`), so every ` +
    `fault makes the handler UFFDIO_COPY one whole chunk; GB/s = image bytes / the client's timed phase (elapsedNs), ` +
    `1 GB = 10^9 bytes. The reference is bench/ref/ref-handler.c; lazysnap resident is bench/lib/lazysnap-handler.ts ` +
    `--mode resident (the image read chunk by chunk and put in the ChunkTable before listening; every fault is answered ` +
    `by the native fault thread, none reaches JS, checked each round). The extra "install stream" row is ` +
    `lazysnap-handler --mode install: the table starts empty and, once the handshake arrives, JS reads, puts and ` +
    `install()s each chunk in order (the client waits meanwhile, then verifies every byte); its GB/s = image bytes / ` +
    `time from the first install() to the last \`installed\` event, so it includes the file read and the put() copy; ` +
    `its reference column repeats the reference populate for scale. Handlers run under taskset -c ${PIN.handler} ` +
    `(every Node thread included), the client under taskset -c ${PIN.client}. ${ROUNDS} rounds per case and chunk size ` +
    `after one discarded warm-up round, cases alternating (reference, lazysnap, install, reference, …); the table ` +
    `shows medians (min–max over rounds beneath), ratio = lazysnap median / reference median.`,
  env: environment(),
  config: {
    imageBytes: IMAGE_BYTES,
    chunkSizes: CHUNKS,
    rounds: ROUNDS,
    pinning: PIN,
    target: `lazysnap ≥ ${TARGET * 100}% of reference GB/s`,
  },
  rows,
  rounds,
  medians,
});
console.error(`P2 results written to ${file}`);

/**
 * CLI argument fuzzing, in-process through main() with a capturing Io: any argv ends with exit 0, 1
 * or 2, and an error is one clear line ("lazysnap: ..."), never a stack trace, an internal JS
 * error message or an uncaught exception, and every fd the command opened is closed again.
 *
 * Safety, since argv can name real paths and real work: the property runs with its cwd in a deep
 * sandbox directory; generated tokens never contain ':' (no URL the pools did not choose: all
 * network stays on 127.0.0.1), never start with '/' and climb at most four '..'; --pid only ever
 * gets values that name no process; `demo` always runs with an aborted signal (its work is real
 * by design: only its argument handling is fuzzed); every other command gets a signal that aborts
 * after 1.5 s (`serve`: 0.3 s), so a server that did start stops again.
 */
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import fc from 'fast-check';

import { main } from '../../cli/main.js';
import { COMMAND_SPECS } from '../../cli/specs/index.js';
import { createRootLogger } from '../../core/logger.js';
import { tempDir } from '../helpers/images.js';
import { otlpExport } from '../helpers/otlp-export.js';
import { snapshotTo } from '../helpers/serve.js';
import { syntheticTrace } from '../helpers/synthetic-trace.js';
import {
  CaseClock,
  Tally,
  outcome,
  params,
  type FuzzTarget,
  type Outcome,
  type RunOptions,
} from './target.js';

const COMMANDS = COMMAND_SPECS.map((c) => c.name);
/** Messages that mean an internal error escaped as the user-facing line. */
const INTERNAL =
  /Cannot read propert|Cannot convert|is not a function|is not defined|is not iterable|Maximum call stack|Invalid array length|Invalid string length|out of memory|\[object Object\]/;

const token: fc.Arbitrary<string> = fc
  .oneof(
    fc.string({ maxLength: 12 }),
    fc.string({ unit: 'binary', maxLength: 8 }),
    fc.constantFrom(
      '',
      '-',
      '--',
      '---',
      '-h',
      '--help',
      '-v',
      '--version',
      '--x',
      '-x',
      '..',
      '%2e%2e',
      '\\',
      '\0',
      'é',
      'a'.repeat(300),
    ),
  )
  .filter(
    (t) =>
      !t.includes(':') &&
      !t.startsWith('/') &&
      (t.match(/\.\./g)?.length ?? 0) <= 4 &&
      !(t.startsWith('-') && t.includes('pid')),
  );

interface Pools {
  [option: string]: string[];
}

function pools(sb: string): Pools {
  const numbers = [
    '2',
    '0',
    '1',
    '8',
    '-1',
    '1.5',
    '1e3',
    '0x10',
    'NaN',
    'Infinity',
    '99999999999999999999',
    ' 3 ',
    '',
    'abc',
  ];
  const sizes = [
    '64KiB',
    '4096',
    '4KiB',
    '512KiB',
    '1MiB',
    '2MiB',
    '4097',
    '0',
    '-4KiB',
    '1.5KiB',
    '1TiB',
    '4096TiB',
    '9999999TiB',
    '1e3',
    'KiB',
    '',
    '8 k',
  ];
  const durations = ['5s', '0ms', '1ms', '500ms', '1h', '30d', '999999999999999d', '1.5s', '-1s', 's', ''];
  const stores = [
    path.join(sb, 'tiny'),
    path.join(sb, 'nope'),
    path.join(sb, 'empty'),
    `file://${path.join(sb, 'tiny')}`,
    'file://remote/x',
    's3://bucket-x/p',
    's3://Bad_Bucket',
    'http://127.0.0.1:9/x',
    'ftp://x/y',
    '',
    ' ',
    'rel-store',
  ];
  return {
    store: stores,
    'cache-dir': [path.join(sb, 'cache'), 'rel-cache', '', path.join(sb, 'tiny', 'image.bin')],
    id: ['vm', 'nope', '..', '../x', '', '-x', 'a'.repeat(200), 'a/b', 'vm\0'],
    parent: ['vm', 'nope', '..', ''],
    socket: [
      path.join(sb, 'run', 's.sock'),
      path.join(sb, 'x'.repeat(120)),
      '',
      'rel.sock',
      path.join(sb, 'tiny'),
    ],
    'mem-file': [
      path.join(sb, 'image.bin'),
      path.join(sb, 'nope.bin'),
      sb,
      '/dev/null',
      path.join(sb, 'empty.bin'),
    ],
    vmstate: [path.join(sb, 'image.bin'), path.join(sb, 'nope.bin'), sb, ''],
    pid: ['0', '-1', '4194304', '4194305', 'abc', '1.5', '', '0x0'],
    'metrics-port': ['0', '65536', '-1', 'x', ''],
    'metrics-host': ['127.0.0.1', '::1', 'not a host', '', '256.0.0.1'],
    's3-endpoint': ['http://127.0.0.1:9', 'not-a-url', '', 'ftp://127.0.0.1'],
    'allow-uid': ['0', '-1', '4294967296', 'root', ''],
    compress: ['none', 'zstd', 'gzip', ''],
    progress: ['auto', 'tty', 'json', 'quiet', 'x'],
    prefetch: ['auto', 'off', 'record', 'replay', 'x'],
    'fail-closed': ['auto', 'poison', 'kill', 'x'],
    'page-size': ['4KiB', '2MiB', '4096', '8KiB', 'x'],
    regions: ['64KiB', '32KiB,32KiB', '1MiB', '0', 'x,y', '', ','],
    'working-set': ['0.1', '1', '0', '2', '-1', 'NaN', 'x'],
    'latency-ms': ['0', '2', '-1', 'NaN', '1e9'],
    output: [path.join(sb, 'out', 'page.html'), '-', '', sb, path.join(sb, 'r-1.trace.json'), 'rel.html'],
    restore: ['r-a', 'r-b', 'r-1', 'nope', ''],
    ...Object.fromEntries(['chunk-size', 'size', 'cache-budget', 'memory-budget'].map((o) => [o, sizes])),
    ...Object.fromEntries(
      ['fail-timeout', 'attempt-timeout', 'handshake-timeout', 'shutdown-grace', 'grace'].map((o) => [
        o,
        durations,
      ]),
    ),
    ...Object.fromEntries(
      ['level', 'concurrency', 'retries', 'prefetch-window', 'fetch-concurrency'].map((o) => [o, numbers]),
    ),
  };
}

/**
 * Each command's own options, from their one definition (cli/specs/), so most cases get past
 * parseArgs and a flag added to a command is fuzzed without editing this file.
 */
const OPTIONS: Record<string, string[]> = Object.fromEntries(
  COMMAND_SPECS.map((c) => [c.name, Object.keys(c.options)]),
);
const BOOL_OPTS = [
  ...new Set(
    COMMAND_SPECS.flatMap((c) =>
      Object.entries(c.options)
        .filter(([, o]) => o.type === 'boolean')
        .map(([n]) => n),
    ),
  ),
];
/** A string option with no pool of its own above gets these (the first is the one most likely valid). */
const GENERIC = ['1', 'x', '', '-1', 'a'.repeat(200)];

/** The options without which each command stops at once; snapshot's source is one of two. */
const CORE: Record<string, string[]> = {
  snapshot: ['mem-file', 'store', 'id'],
  inspect: ['store', 'id'],
  serve: ['store', 'id', 'socket'],
  gc: ['store'],
  trace: [],
  demo: ['size'],
};

/** The operands a command takes (`lazysnap trace FILE`), from a pool each; there 7 times in 8. */
function operands(sb: string): Record<string, string[]> {
  return {
    trace: [
      path.join(sb, 'r-1.trace.json'),
      path.join(sb, 'otlp.json'),
      path.join(sb, 'image.bin'),
      path.join(sb, 'empty.bin'),
      path.join(sb, 'nope.json'),
      sb,
      '',
      '-',
    ],
  };
}

function argvArb(pools: Pools, operandPools: Record<string, string[]>): fc.Arbitrary<string[]> {
  const p: Pools = { ...pools };
  for (const n of Object.values(OPTIONS).flat()) if (!BOOL_OPTS.includes(n)) p[n] ??= GENERIC;
  const names = Object.keys(p);
  /** One option with a value from its pool (sometimes a random token, as `--o=v`, or missing). */
  const opt = (n: string): fc.Arbitrary<string[]> => {
    if (BOOL_OPTS.includes(n))
      return fc.oneof(
        { weight: 8, arbitrary: fc.constant<string[]>([`--${n}`]) },
        { weight: 1, arbitrary: fc.constant<string[]>([`--${n}=x`]) },
      );
    // Pools start with a value that works, so many cases get past validation to the real work.
    const v =
      n === 'pid'
        ? fc.constantFrom(...p.pid!)
        : fc.oneof(
            { weight: 4, arbitrary: fc.constant(p[n]![0]!) },
            { weight: 6, arbitrary: fc.constantFrom(...p[n]!) },
            { weight: 1, arbitrary: token },
          );
    return fc.oneof(
      { weight: 20, arbitrary: v.map((x) => [`--${n}`, x]) },
      { weight: 5, arbitrary: v.map((x) => [`--${n}=${x}`]) },
      // A missing value: the next token becomes it, or there is none. Never for --pid.
      { weight: n === 'pid' ? 0 : 1, arbitrary: fc.constant<string[]>([`--${n}`]) },
    );
  };
  const noise = fc.oneof(
    fc.constantFrom(...names.filter((n) => n !== 'pid'), ...BOOL_OPTS).chain((n) => opt(n)),
    token.map((t) => [t]),
  );
  const forCommand = fc.constantFrom(...COMMANDS).chain((c) =>
    fc
      .tuple(
        // The options a run needs are there 7 times in 8; the others come and go.
        fc
          .tuple(
            ...OPTIONS[c]!.map((n) =>
              fc.boolean().chain((b) => fc.nat(7).map((k) => (CORE[c]!.includes(n) ? k > 0 : b))),
            ),
          )
          .chain((on) => fc.tuple(...OPTIONS[c]!.filter((_, i) => on[i]).map(opt))),
        fc.oneof(
          { weight: 3, arbitrary: fc.constant([] as string[][]) },
          { weight: 1, arbitrary: fc.array(noise, { minLength: 1, maxLength: 2 }) },
        ),
        operandPools[c]
          ? fc
              .nat(7)
              .chain((k) =>
                k > 0
                  ? fc.constantFrom(...operandPools[c]!).map((v) => [[v]])
                  : fc.constant([] as string[][]),
              )
          : fc.constant([] as string[][]),
        fc.nat(),
      )
      .map(([own, extra, operand, rot]) => {
        const items = [...own, ...extra, ...operand];
        const r = items.length ? rot % items.length : 0;
        return [c, ...[...items.slice(r), ...items.slice(0, r)].flat()];
      }),
  );
  const anything = fc
    .tuple(fc.oneof(fc.constantFrom(...COMMANDS), token), fc.array(noise, { maxLength: 8 }))
    .map(([c, items]) => [c, ...items.flat()]);
  return fc.oneof({ weight: 8, arbitrary: forCommand }, { weight: 1, arbitrary: anything });
}

export const cliArgs: FuzzTarget = {
  name: 'cli.argv',
  surface: 'CLI arguments (snapshot, inspect, serve, gc, trace, demo; in-process main())',
  weight: 10,
  quickRuns: 150,
  async run(o: RunOptions): Promise<Outcome> {
    const clock = new CaseClock();
    const tally = new Tally();
    const tmp = tempDir('lazysnap-fuzz-');
    const sb = tmp.dir;
    const cwd = path.join(sb, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h');
    mkdirSync(cwd, { recursive: true });
    mkdirSync(path.join(sb, 'empty'));
    writeFileSync(path.join(sb, 'image.bin'), Buffer.alloc(64 * 1024, 7));
    writeFileSync(path.join(sb, 'empty.bin'), Buffer.alloc(0));
    await snapshotTo(path.join(sb, 'tiny'), path.join(sb, 'image.bin'), 'vm', 16 * 1024);
    mkdirSync(path.join(sb, 'out'));
    const small = { chunkCount: 64, threads: 2, faultsPerThread: 5 };
    writeFileSync(
      path.join(sb, 'r-1.trace.json'),
      JSON.stringify(syntheticTrace({ ...small, restoreId: 'r-1' })),
    );
    writeFileSync(
      path.join(sb, 'otlp.json'),
      otlpExport([
        syntheticTrace({ ...small, restoreId: 'r-a' }),
        syntheticTrace({ ...small, restoreId: 'r-b' }),
      ]),
    );
    const saved = { cwd: process.cwd(), env: { ...process.env } };
    // No AWS credential lookup may leave the machine (instance metadata), no log noise.
    Object.assign(process.env, {
      AWS_ACCESS_KEY_ID: 'fuzz',
      AWS_SECRET_ACCESS_KEY: 'fuzz',
      AWS_REGION: 'us-east-1',
      AWS_EC2_METADATA_DISABLED: 'true',
      AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:9',
    });
    createRootLogger({ level: 'silent' });
    const stray: unknown[] = [];
    const onStray = (e: unknown) => stray.push(e);
    process.on('uncaughtException', onStray);
    process.on('unhandledRejection', onStray);
    process.chdir(cwd);
    // Warm up every path once: first use loads modules and opens fds for good (io_uring, the AWS
    // SDK's agents), which the per-case fd check below must not count as leaks.
    const quiet = { out: () => {}, err: () => {} };
    for (const argv of [
      ['inspect', '--store', path.join(sb, 'tiny'), '--id', 'vm'],
      ['inspect', '--store', 's3://bucket-x/p', '--id', 'vm'],
      ['inspect', '--store', 'http://127.0.0.1:9/x', '--id', 'vm'],
      ['gc', '--store', path.join(sb, 'tiny'), '--dry-run'],
      ['snapshot', '--mem-file', path.join(sb, 'image.bin'), '--store', path.join(sb, 'warm'), '--id', 'vm'],
      [
        'serve',
        '--store',
        path.join(sb, 'tiny'),
        '--id',
        'vm',
        '--socket',
        path.join(sb, 'run', 'warm.sock'),
        '--metrics-port',
        '0',
      ],
      ['trace', path.join(sb, 'r-1.trace.json'), '-o', '-'],
      ['demo'],
    ]) {
      await main(argv, quiet, argv[0] === 'demo' ? AbortSignal.abort() : AbortSignal.timeout(300));
    }
    const prop = fc.asyncProperty(argvArb(pools(sb), operands(sb)), async (argv) => {
      let out = '';
      let err = '';
      const io = { out: (s: string) => (out += s), err: (s: string) => (err += s) };
      const signal =
        argv[0] === 'demo' ? AbortSignal.abort() : AbortSignal.timeout(argv[0] === 'serve' ? 300 : 1500);
      const fds0 = readdirSync('/proc/self/fd').length;
      let code: number;
      try {
        code = await clock.timeAsync(() => main(argv, io, signal));
      } catch (e) {
        throw new Error(`main() rejected: ${(e as Error)?.stack ?? String(e)}`, { cause: e });
      }
      await new Promise((r) => setImmediate(r));
      // Every file, socket and store a command opened is closed by the time main() returns.
      let fds = readdirSync('/proc/self/fd').length;
      for (let i = 0; i < 20 && fds > fds0; i++) {
        await new Promise((r) => setTimeout(r, 5));
        fds = readdirSync('/proc/self/fd').length;
      }
      if (fds > fds0) throw new Error(`${fds - fds0} fd(s) left open (${JSON.stringify(err.trim())})`);
      if (stray.length) throw new Error(`uncaught: ${String((stray.splice(0)[0] as Error)?.stack ?? '')}`);
      tally.add(`${COMMANDS.includes(argv[0]!) ? argv[0] : '(other)'} exit ${code}`);
      if (process.env.FUZZ_CLI_TRACE) console.log(code, JSON.stringify(argv), err.trim().slice(0, 200));
      if (![0, 1, 2].includes(code)) throw new Error(`exit code ${code}`);
      if (/\n\s+at .+[:(]/.test(err) || /\n\s+at .+[:(]/.test(out))
        throw new Error(`stack trace printed:\n${err}`);
      if (code !== 0) {
        const last = err.endsWith('\n') ? err.slice(0, -1).split('\n').pop()! : '';
        if (!/^lazysnap: \S/.test(last))
          throw new Error(`exit ${code} without one clear error line: ${JSON.stringify(err)}`);
        if (INTERNAL.test(last)) throw new Error(`an internal error reached the user: ${last}`);
      }
    });
    try {
      return { ...outcome(this.name, await fc.check(prop, params(o)), clock), notes: String(tally) };
    } finally {
      process.chdir(saved.cwd);
      for (const k of Object.keys(process.env)) if (!(k in saved.env)) delete process.env[k];
      Object.assign(process.env, saved.env);
      process.off('uncaughtException', onStray);
      process.off('unhandledRejection', onStray);
      tmp.cleanup();
    }
  },
};

/**
 * The `lazysnap` command. Exit codes: 0 ok, 1 runtime failure, 2 usage error; errors are one clear
 * line on stderr. Each command's options are defined once in cli/specs/ (parser, --help, README
 * tables); its code lives in cli/commands/ and exports that `spec` and `run`.
 */
import { readFileSync } from 'node:fs';

import {
  InvalidArgumentError,
  InvalidUrlError,
  LazysnapError,
  OtelConfigError,
  SourceError,
  StoreReadOnlyError,
} from '../core/errors.js';
import { UsageError, type Io } from './common.js';
import { asFlagError, formatHelp, type CommandSpec } from './option-spec.js';
import { COMMAND_SPECS } from './specs/index.js';

export type { Io };

interface Command {
  spec: CommandSpec;
  run(argv: string[], io: Io, signal?: AbortSignal): Promise<number>;
}

/** Loaded on use: `lazysnap gc` never loads the runtime. */
const LOADERS: Record<string, () => Promise<Command>> = {
  snapshot: () => import('./commands/snapshot.js'),
  inspect: () => import('./commands/inspect.js'),
  serve: () => import('./commands/serve.js'),
  gc: () => import('./commands/gc.js'),
  trace: () => import('./commands/trace.js'),
  demo: () => import('./commands/demo.js'),
};

const USAGE = `usage: lazysnap <command> [options]

commands:
${COMMAND_SPECS.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`).join('\n')}

options:
  -h, --help     show help (also: lazysnap <command> --help)
  -v, --version  print the version
`;

/** The package version: package.json is one level up from cli/ in the source, two from dist/cli/. */
function version(): string {
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'lazysnap' && pkg.version) return pkg.version;
    } catch {
      // Not this layout (source or dist): try the other.
    }
  }
  return 'unknown';
}

function isUsage(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return (
    e instanceof UsageError ||
    e instanceof InvalidArgumentError ||
    e instanceof InvalidUrlError ||
    e instanceof OtelConfigError ||
    e instanceof StoreReadOnlyError ||
    (e instanceof SourceError && e.input) ||
    (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))
  );
}

export async function main(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const [name, ...rest] = argv;
  let spec: CommandSpec | undefined;
  try {
    if (name === undefined || name === '-h' || name === '--help' || name === 'help')
      return (io.out(USAGE), name === undefined ? 2 : 0);
    if (name === '-v' || name === '--version') return (io.out(`${version()}\n`), 0);
    // Own keys only: `lazysnap toString` must not find Object.prototype.toString.
    const load = Object.hasOwn(LOADERS, name) ? LOADERS[name] : undefined;
    if (!load) throw new UsageError(`unknown command ${JSON.stringify(name)} (run lazysnap --help)`);
    const cmd = await load();
    spec = cmd.spec;
    if (rest.includes('-h') || rest.includes('--help')) return (io.out(formatHelp(cmd.spec)), 0);
    return await cmd.run(rest, io, signal);
  } catch (thrown) {
    // An API's complaint about an option is reported as the flag the user typed.
    const e = spec ? asFlagError(spec, thrown, rest) : thrown;
    const msg = e instanceof LazysnapError || e instanceof Error ? e.message : String(e);
    io.err(`lazysnap: ${msg.split('\n')[0]}\n`);
    return isUsage(e) ? 2 : 1;
  }
}

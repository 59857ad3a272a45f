/**
 * The `lazysnap` command. Exit codes: 0 ok, 1 runtime failure, 2 usage error; errors are one clear
 * line on stderr. Each command lives in cli/commands/ and exports `usage` and `run`.
 */
import { readFileSync } from 'node:fs';

import {
  InvalidArgumentError,
  InvalidUrlError,
  LazysnapError,
  SourceError,
  StoreReadOnlyError,
} from '../core/errors.js';
import { UsageError, type Io } from './common.js';

export type { Io };

interface Command {
  usage: string;
  run(argv: string[], io: Io, signal?: AbortSignal): Promise<number>;
}

const COMMANDS: Record<string, { summary: string; load: () => Promise<Command> }> = {
  snapshot: {
    summary: 'chunk VM or process memory into a store',
    load: () => import('./commands/snapshot.js'),
  },
  inspect: { summary: "show a snapshot's manifest", load: () => import('./commands/inspect.js') },
  serve: {
    summary: 'serve a snapshot to Firecracker (UFFD backend) or processes, faulting pages in on demand',
    load: () => import('./commands/serve.js'),
  },
  gc: { summary: 'delete chunks no manifest references', load: () => import('./commands/gc.js') },
  demo: {
    summary: "restore a process's memory lazily, in-process, on the embedded default",
    load: () => import('./commands/demo.js'),
  },
};

const USAGE = `usage: lazysnap <command> [options]

commands:
${Object.entries(COMMANDS)
  .map(([n, c]) => `  ${n.padEnd(10)} ${c.summary}`)
  .join('\n')}

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
    } catch {}
  }
  return 'unknown';
}

function isUsage(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  return (
    e instanceof UsageError ||
    e instanceof InvalidArgumentError ||
    e instanceof InvalidUrlError ||
    e instanceof StoreReadOnlyError ||
    (e instanceof SourceError && e.input) ||
    (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))
  );
}

export async function main(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  const [name, ...rest] = argv;
  try {
    if (name === undefined || name === '-h' || name === '--help' || name === 'help')
      return (io.out(USAGE), name === undefined ? 2 : 0);
    if (name === '-v' || name === '--version') return (io.out(`${version()}\n`), 0);
    // Own keys only: `lazysnap toString` must not find Object.prototype.toString.
    const entry = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
    if (!entry) throw new UsageError(`unknown command ${JSON.stringify(name)} (run lazysnap --help)`);
    const cmd = await entry.load();
    if (rest.includes('-h') || rest.includes('--help')) return (io.out(cmd.usage), 0);
    return await cmd.run(rest, io, signal);
  } catch (e) {
    const msg = e instanceof LazysnapError || e instanceof Error ? e.message : String(e);
    io.err(`lazysnap: ${msg.split('\n')[0]}\n`);
    return isUsage(e) ? 2 : 1;
  }
}

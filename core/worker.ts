/**
 * Starting a worker thread or child process from one of our own modules. The published build runs compiled .js, which
 * a Worker loads directly. Source runs (tests, tsx) load .ts, and Node 20 workers do not inherit the
 * parent's loader hooks, so the worker boots through tsx's API instead.
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';

/** `moduleUrl`: the module's URL as compiled, e.g. `new URL('./worker.js', import.meta.url)`. */
export function startModuleWorker(moduleUrl: URL, options: Omit<WorkerOptions, 'eval'> = {}): Worker {
  const caller = new URL(moduleUrl);
  // Our sources import each other as .js; a source run has only the .ts beside it. Compare paths, not
  // URLs: a module tsx loaded inside a worker carries a query (?tsx-namespace=...) in its URL.
  const isSource = new URL(import.meta.url).pathname.endsWith('.ts');
  if (!isSource) return new Worker(caller, options);
  caller.search = '';
  const file = caller.href.replace(/\.js$/, '.ts');
  const api = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(api)}).then((m) => m.tsImport(${JSON.stringify(file)}, ${JSON.stringify(file)}))`;
  return new Worker(boot, { ...options, eval: true });
}

/** The node command line that runs one of our modules as a child process (tsx for source runs). */
export function moduleCommand(moduleUrl: URL): { command: string; args: string[] } {
  const isSource = new URL(import.meta.url).pathname.endsWith('.ts');
  const file = new URL(moduleUrl).pathname;
  if (!isSource) return { command: process.execPath, args: [file] };
  return {
    command: process.execPath,
    args: ['--import', import.meta.resolve('tsx/esm'), file.replace(/\.js$/, '.ts')],
  };
}

/**
 * Headless Chromium for checking a page as a browser renders it: a screenshot, the DOM after the page's
 * scripts ran, and what the page printed to its console. Debian's `chromium` package (.ci/run installs
 * it); suites skip with the reason when it is missing.
 *
 * Console messages reach stderr only with `--enable-logging=stderr`, one line each as
 * `[pid:tid:time:INFO:CONSOLE:line] "message", source: URL (line)`, at INFO whatever their level
 * (console.log, console.error and an uncaught exception look alike), so a page that must not log is
 * checked for any such line. The test holds itself to that with a page that throws.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const chromiumPath: string | undefined = (() => {
  const r = spawnSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
})();

export const chromiumSkipReason = chromiumPath
  ? ''
  : 'needs chromium (apt-get install -y chromium; .ci/run installs it)';
if (!chromiumPath) console.warn(`[lazysnap tests] skipping headless Chromium checks: ${chromiumSkipReason}`);

export interface HeadlessRun {
  stdout: string;
  stderr: string;
  /** The page's console lines (and uncaught exceptions) from stderr. */
  console: string[];
}

/**
 * Runs headless Chromium once on `url` with `args` (`--dump-dom`, `--screenshot=FILE`, ...), in a
 * profile of its own that is removed afterwards. `--no-sandbox`: the tests may run as root, where
 * Chromium refuses its sandbox.
 */
export function headless(url: string, args: string[], timeoutMs = 60_000): Promise<HeadlessRun> {
  const profile = mkdtempSync(path.join(tmpdir(), 'lazysnap-chromium-'));
  const argv = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--hide-scrollbars',
    `--user-data-dir=${profile}`,
    '--enable-logging=stderr',
    '--v=0',
    ...args,
    url,
  ];
  return new Promise((resolve, reject) => {
    execFile(
      chromiumPath!,
      argv,
      { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        rmSync(profile, { recursive: true, force: true });
        if (err) return reject(new Error(`chromium ${args.join(' ')} failed: ${err.message}\n${stderr}`));
        resolve({ stdout, stderr, console: consoleLines(stderr) });
      },
    );
  });
}

/** The lines of Chromium's stderr that the page's console or an uncaught exception produced. */
export function consoleLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => /:CONSOLE[:(]/.test(l) || /\bUncaught\b/.test(l));
}

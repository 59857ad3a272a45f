/**
 * Progress for long work: a one-line bar redrawn at most 10 times a second on a terminal, JSON lines
 * when asked (machines), nothing otherwise. Always on stderr: stdout is for the result.
 */
import { formatBytes } from '../core/units.js';
import type { Io } from './common.js';

export type ProgressMode = 'auto' | 'tty' | 'json' | 'quiet';

export function progressReporter(mode: ProgressMode, io: Io, label: string) {
  const m = mode === 'auto' ? (io.isTTY ? 'tty' : 'quiet') : mode;
  let last = 0;
  const t0 = performance.now();
  return {
    update(done: number, total: number, force = false) {
      if (m === 'quiet') return;
      const now = performance.now();
      if (!force && now - last < 100 && done < total) return;
      last = now;
      const mbps = done / 1e6 / Math.max(1e-3, (now - t0) / 1000);
      if (m === 'json')
        io.err(`${JSON.stringify({ progress: label, done, total, mbps: Math.round(mbps) })}\n`);
      else {
        const w = 30;
        const f = total > 0 ? Math.round((w * done) / total) : w;
        io.err(
          `\r${label} [${'#'.repeat(f)}${'.'.repeat(w - f)}] ${formatBytes(done)} / ${formatBytes(total)}  ${mbps.toFixed(0)} MB/s`,
        );
      }
    },
    finish() {
      if (m === 'tty') io.err('\n');
    },
  };
}

/**
 * Every command's definition, in `lazysnap --help` order. Pure data (no command code is loaded), so
 * the top-level help and scripts/cli-docs.ts read it without starting anything.
 */
import type { CommandSpec } from '../option-spec.js';
import { demoSpec } from './demo.js';
import { gcSpec } from './gc.js';
import { inspectSpec } from './inspect.js';
import { serveSpec } from './serve.js';
import { snapshotSpec } from './snapshot.js';
import { traceSpec } from './trace.js';

export { demoSpec, gcSpec, inspectSpec, serveSpec, snapshotSpec, traceSpec };

export const COMMAND_SPECS: readonly CommandSpec[] = [
  snapshotSpec,
  inspectSpec,
  serveSpec,
  gcSpec,
  traceSpec,
  demoSpec,
];

/**
 * `serve --trace-dir`: the directory each session's trace file goes to (runtime/session-trace.ts). Its own
 * module, so that the supervisor process can check it at start without loading the runtime.
 */
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';

import { InvalidArgumentError } from '../core/errors.js';
import { makeDirs } from '../core/make-dirs.js';

/** The trace directory, created 0700 when missing; refused at start when it cannot be written. */
export async function prepareTraceDir(dir: string): Promise<void> {
  try {
    await makeDirs(dir, 0o700);
    await access(dir, constants.W_OK);
  } catch (e) {
    throw new InvalidArgumentError(
      'traceDir',
      'a directory this user can write',
      `${dir} (${(e as Error).message})`,
    );
  }
}

/** Drives test/fixtures/uffd-peer (a scripted peer: VMA splits, balloon, per-page SIGBUS) as a child. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

import { uffdPeerPath } from './fixtures.js';

/** One `read` step's verdict: how every page of the range read. */
export interface ReadReport {
  off: number;
  pages: number;
  /** The image's bytes. */
  match: number;
  /** All zeros (a removed page, or a zero chunk of the image). */
  zero: number;
  /** Other bytes: a wrong byte. */
  mismatch: number;
  /** The read raised SIGBUS (a poisoned page). */
  sigbus: number;
  firstMismatch: number;
  firstSigbus: number;
}

export interface PeerResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  reads: ReadReport[];
  done: boolean;
  stderr: string;
}

export interface Peer {
  child: ChildProcess;
  /** The peer's pid, once its handshake is sent. */
  handshake: Promise<number>;
  /** Resolves with each read report as it is printed. */
  reads: ReadReport[];
  /** Unblocks a `wait` step. */
  go(): void;
  result: Promise<PeerResult>;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** Starts the peer: `uffd-peer --socket S --image F [options] STEP...`. */
export function startPeer(
  socket: string,
  image: string,
  steps: (string | number)[],
  options: string[] = [],
): Peer {
  const child = spawn(
    uffdPeerPath(),
    ['--socket', socket, '--image', image, ...options, ...steps.map(String)],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  live.add(child);
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const reads: ReadReport[] = [];
  let done = false;
  let onHandshake!: (pid: number) => void;
  const handshake = new Promise<number>((res) => (onHandshake = res));
  createInterface({ input: child.stdout }).on('line', (line) => {
    const o = JSON.parse(line) as { handshake?: string; pid?: number; read?: ReadReport; done?: boolean };
    if (o.handshake) onHandshake(o.pid!);
    if (o.read) reads.push(o.read);
    if (o.done) done = true;
  });
  const result = new Promise<PeerResult>((resolve) =>
    child.once('close', (code, signal) => {
      live.delete(child);
      resolve({ code, signal, reads, done, stderr });
    }),
  );
  return { child, handshake, reads, go: () => child.stdin.write('\n'), result };
}

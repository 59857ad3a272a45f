/** Handshake and process primitives: SCM_RIGHTS, SO_PEERCRED, pidfds, memory helpers, fd watching. */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import {
  chmodSync,
  copyFileSync,
  fstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { isSystemError } from '../../core/errors.js';
import {
  acceptUnix,
  addressOf,
  arrayBufferAt,
  closeFd,
  connectUnix,
  kill,
  listenUnix,
  madvise,
  mmapAnonymous,
  munmap,
  peerCredentials,
  peerPidfd,
  pidfdOpen,
  pidfdSendSignal,
  processVmRead,
  recvWithFds,
  sendWithFds,
  watchFd,
  constants,
} from '../../native/index.js';
import { repoRoot } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/images.js';

async function until<T>(f: () => T | null | undefined, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== null && v !== undefined) return v;
    if (Date.now() > end) throw new Error('timed out');
    await sleep(2);
  }
}

describe('unix socket handshake primitives', () => {
  let tmp: ReturnType<typeof tempDir>;
  let lfd: number;
  let sock: string;
  const open: number[] = [];
  beforeEach(() => {
    tmp = tempDir();
    sock = path.join(tmp.dir, 's.sock');
    lfd = listenUnix(sock);
  });
  afterEach(() => {
    for (const fd of open.splice(0)) closeFd(fd);
    closeFd(lfd);
    tmp.cleanup();
  });
  const pair = (): [number, number] => {
    const c = connectUnix(sock);
    const s = acceptUnix(lfd);
    open.push(c, s);
    return [c, s];
  };

  it('creates the socket mode 0600 and accepts non-blockingly', () => {
    expect(statSync(sock).mode & 0o777).toBe(0o600);
    expect(statSync(sock).isSocket()).toBe(true);
    expect(acceptUnix(lfd)).toBe(-1);
  });

  it('receives data with exactly the fds sent (0, 1, 2) and reports how many arrived', () => {
    const [c, s] = pair();
    expect(recvWithFds(s, 1024, 4)).toBeNull();
    for (const n of [0, 1, 2]) {
      const payload = Buffer.from(`[{"n":${n}}]`);
      const fds = Array.from({ length: n }, () => connectUnix(sock));
      open.push(...fds);
      for (let i = 0; i < n; i++) open.push(acceptUnix(lfd));
      expect(sendWithFds(c, payload, fds)).toBe(payload.length);
      const m = recvWithFds(s, 1024, 4)!;
      expect(m.data.equals(payload)).toBe(true);
      expect(m.fds).toHaveLength(n);
      expect(m.truncated || m.fdsTruncated).toBe(false);
      for (const fd of m.fds) {
        expect(fstatSync(fd).isSocket()).toBe(true); // a live, distinct descriptor
        expect(fds).not.toContain(fd);
        closeFd(fd);
      }
    }
  });

  it('flags fds beyond the limit (the kernel closes the extras); stream data beyond the buffer stays queued', () => {
    const [c, s] = pair();
    const extra = [connectUnix(sock), connectUnix(sock), connectUnix(sock)];
    open.push(...extra);
    sendWithFds(c, Buffer.alloc(100, 1), extra);
    const m = recvWithFds(s, 10, 1)!;
    expect(m.data.length).toBe(10);
    expect(m.fdsTruncated).toBe(true);
    expect(m.fds).toHaveLength(1);
    closeFd(m.fds[0]!);
    // SOCK_STREAM has no message boundary (MSG_TRUNC is for datagrams): the rest comes next, fd-less.
    const rest = recvWithFds(s, 1000, 4)!;
    expect(rest.data.length).toBe(90);
    expect(rest.fds).toEqual([]);
    expect(rest.truncated).toBe(false);
  });

  it('sees EOF as an empty read and wakes a watcher for it', async () => {
    const [c, s] = pair();
    let calls = 0;
    const w = watchFd(s, { readable: true }, () => calls++);
    sendWithFds(c, Buffer.from('x'));
    await until(() => (calls > 0 ? true : null));
    expect(recvWithFds(s, 16, 0)!.data.toString()).toBe('x');
    closeFd(c);
    open.splice(open.indexOf(c), 1);
    await until(() => (calls > 1 ? true : null));
    expect(recvWithFds(s, 16, 0)!.data.length).toBe(0);
    w.stop();
    w.stop();
  });

  it('identifies the peer (SO_PEERCRED) and holds it as a pidfd that a recycled PID cannot fool', async () => {
    const child = spawn(process.execPath, [
      '-e',
      `require('net').connect(${JSON.stringify(sock)}); setInterval(() => {}, 1000)`,
    ]);
    const s = await until(() => {
      const fd = acceptUnix(lfd);
      return fd >= 0 ? fd : null;
    });
    open.push(s);
    const cred = peerCredentials(s);
    expect(cred).toEqual({ pid: child.pid, uid: process.getuid!(), gid: process.getgid!() });
    const pidfd = peerPidfd(s);
    const opened = pidfdOpen(child.pid!);
    pidfdSendSignal(pidfd, 'SIGKILL');
    const [, signal] = await once(child, 'exit');
    expect(signal).toBe('SIGKILL');
    // Reaped: the pidfd now refers to a dead process, never to whoever gets the PID next.
    expect(() => pidfdSendSignal(opened, 'SIGKILL')).toThrow(expect.objectContaining({ code: 'ESRCH' }));
    closeFd(pidfd);
    closeFd(opened);
  });

  it('fails to connect to a missing socket with a system error', () => {
    let e: unknown;
    try {
      connectUnix(path.join(tmp.dir, 'missing.sock'));
    } catch (err) {
      e = err;
    }
    expect(isSystemError(e) && e.code === 'ENOENT' && e.syscall === 'connect').toBe(true);
  });
});

describe('memory and process helpers', () => {
  it('maps anonymous memory, exposes it as an ArrayBuffer, and reads it back with process_vm_readv', () => {
    const len = 8 * 4096;
    const addr = mmapAnonymous(len);
    const view = new Uint8Array(arrayBufferAt(addr, len));
    view.set(Buffer.from('lazysnap'), 4096);
    const got = Buffer.alloc(len);
    expect(processVmRead(process.pid, addr, got)).toBe(len);
    expect(got.subarray(4096, 4104).toString()).toBe('lazysnap');
    expect(addressOf(view)).toBe(addr);
    // MADV_DONTNEED on private anonymous memory: the page reads as zero again.
    madvise(addr + 4096n, 4096, constants().MADV_DONTNEED);
    processVmRead(process.pid, addr, got);
    expect(got.subarray(4096, 8192).every((b) => b === 0)).toBe(true);
    munmap(addr, len);
  });

  it('reads process memory by address and fails cleanly on an unmapped address', () => {
    const self = Buffer.from('a known pattern in this process');
    const got = Buffer.alloc(self.length);
    expect(processVmRead(process.pid, addressOf(self), got)).toBe(self.length);
    expect(got.equals(self)).toBe(true);
    expect(() => processVmRead(process.pid, 4096n, Buffer.alloc(16))).toThrow(
      expect.objectContaining({ code: 'EFAULT' }),
    );
  });

  it('signals a process by pid', async () => {
    const child = spawn('sleep', ['30']);
    kill(child.pid!, 'SIGTERM');
    const [, signal] = await once(child, 'exit');
    expect(signal).toBe('SIGTERM');
    expect(() => kill(child.pid!, 'SIGNOPE' as NodeJS.Signals)).toThrow(/signal must be a signal name/);
  });
});

const asRoot = process.getuid?.() === 0 && spawnSync('id', ['nobody']).status === 0;
describe.skipIf(!asRoot)(
  `without privilege${asRoot ? '' : ' [SKIPPED: needs root and a nobody user to switch to]'}`,
  () => {
    it('says what to do when userfaultfd is refused, and allows user-mode-only handling', () => {
      const open =
        (statSync('/dev/userfaultfd').mode & 0o006) !== 0 ||
        readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim() === '1';
      // A world-readable build of the typed edge and the addon, so nobody can load it wherever the checkout is.
      const dir = mkdtempSync(path.join(tmpdir(), 'lazysnap-nobody-'));
      try {
        chmodSync(dir, 0o755);
        execFileSync(process.execPath, [
          path.join(repoRoot, 'node_modules/typescript/bin/tsc'),
          '-p',
          path.join(repoRoot, 'tsconfig.build.json'),
          '--outDir',
          path.join(dir, 'dist'),
        ]);
        mkdirSync(path.join(dir, 'native/build/Release'), { recursive: true });
        copyFileSync(
          path.join(repoRoot, 'native/build/Release/lazysnap.node'),
          path.join(dir, 'native/build/Release/lazysnap.node'),
        );
        writeFileSync(path.join(dir, 'package.json'), '{"type":"module"}');
        execFileSync('chmod', ['-R', 'a+rX', dir]);
        const script = `import('${dir}/dist/native/index.js').then(({probeUffd}) => console.log(JSON.stringify([probeUffd(), probeUffd({userModeOnly: true})])))`;
        const out = execFileSync(
          'su',
          ['-s', '/bin/sh', 'nobody', '-c', `${process.execPath} -e "${script}"`],
          { cwd: dir, encoding: 'utf8' },
        );
        const [full, umo] = JSON.parse(out.trim().split('\n').pop()!) as { ok: boolean; reason?: string }[];
        expect(umo!.ok).toBe(true);
        if (open) return; // this machine lets everyone use userfaultfd: nothing to refuse
        expect(full!.ok).toBe(false);
        expect(full!.reason).toMatch(/CAP_SYS_PTRACE|unprivileged_userfaultfd/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }, 60_000);
  },
);

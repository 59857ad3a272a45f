/**
 * runtime/supervisor/systemd.ts: the parts of systemd's interfaces serve reads without a systemd here
 * (the notify socket and descriptor store are exercised end to end with test/fixtures/fd-store.c in
 * supervisor.test.ts). The list-jobs lines are systemctl 252's, as `systemctl restart` leaves them.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { jobRestarts, notifySocket, ownUnit, takeListenFds } from '../../runtime/supervisor/systemd.js';
import { tempDir } from '../helpers/images.js';

const tmp = tempDir('lazysnap-systemd-unit-');
afterAll(() => tmp.cleanup());

describe('systemd glue', () => {
  it('a restart job of our own unit means a successor will adopt; a stop, another unit or no job does not', () => {
    const jobs = [
      '1234 lazysnap@fn-1.service restart running',
      '1235 lazysnap@fn-2.service stop    running',
      '1236 network-online.target start waiting',
    ].join('\n');
    expect(jobRestarts(jobs, 'lazysnap@fn-1.service')).toBe(true);
    expect(jobRestarts(jobs, 'lazysnap@fn-2.service')).toBe(false);
    expect(jobRestarts(jobs, 'lazysnap@fn-3.service')).toBe(false);
    expect(jobRestarts('5 lazysnap@fn-3.service try-restart running', 'lazysnap@fn-3.service')).toBe(true);
    // systemctl failed or timed out: no answer is a stop, and sessions are drained, never abandoned.
    expect(jobRestarts('', 'lazysnap@fn-1.service')).toBe(false);
  });

  it('finds its unit in /proc/self/cgroup (cgroup v2 and v1 lines), none outside a service', () => {
    const f = path.join(tmp.dir, 'cgroup');
    writeFileSync(f, '0::/system.slice/system-lazysnap.slice/lazysnap@fn-1.service\n');
    expect(ownUnit(f)).toBe('lazysnap@fn-1.service');
    writeFileSync(
      f,
      '12:pids:/system.slice/lazysnap@vm.service\n1:name=systemd:/system.slice/lazysnap@vm.service\n',
    );
    expect(ownUnit(f)).toBe('lazysnap@vm.service');
    writeFileSync(f, '0::/user.slice/user-0.slice/session-3.scope\n');
    expect(ownUnit(f)).toBeUndefined();
    expect(ownUnit(path.join(tmp.dir, 'missing'))).toBeUndefined();
  });

  it('takes LISTEN_FDS only when they are meant for this process, and clears them for its children', () => {
    const env: NodeJS.ProcessEnv = {
      LISTEN_FDS: '2',
      LISTEN_PID: String(process.pid + 1),
      LISTEN_FDNAMES: 'a:b',
    };
    // Another pid's descriptors (inherited through an exec chain) are not ours to close or adopt.
    expect(takeListenFds(env).size).toBe(0);
    expect(env).toEqual({});
  });

  it('accepts only a path or an abstract socket as NOTIFY_SOCKET', () => {
    expect(notifySocket({ NOTIFY_SOCKET: '/run/systemd/notify' })).toBe('/run/systemd/notify');
    expect(notifySocket({ NOTIFY_SOCKET: '@/org/freedesktop/systemd1/notify/1' })).toMatch(/^@/);
    expect(notifySocket({ NOTIFY_SOCKET: 'vsock:2:1234' })).toBeUndefined();
    expect(notifySocket({})).toBeUndefined();
  });
});

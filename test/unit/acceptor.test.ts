/**
 * The acceptor's front door (runtime/acceptor.ts): a handshake already in the socket when its
 * connection is accepted is received in that same call, not on a later turn of the event loop (a
 * wake-up that the time to the first page, P6, would pay for); one that comes later still arrives.
 */
import { connect, type Socket } from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

import { discardingLogger, rootLogger } from '../../core/logger.js';
import { closeFd, listenUnix } from '../../native/index.js';
import { Acceptor } from '../../runtime/acceptor.js';
import type { HandshakeMessage, Peer } from '../../runtime/session-host.js';
import { tempDir } from '../helpers/images.js';

describe('Acceptor', () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanups.splice(0).reverse()) c();
  });

  const start = () => {
    const tmp = tempDir('lazysnap-acceptor-');
    const socket = path.join(tmp.dir, 'a.sock');
    const lfd = listenUnix(socket);
    const got: { peer: Peer; msg: HandshakeMessage }[] = [];
    const acceptor = new Acceptor(lfd, {
      allowUids: undefined,
      handshakeTimeoutMs: 5000,
      log: discardingLogger(rootLogger()),
      onMessage: (peer, msg) => got.push({ peer, msg }),
      onRefused: () => {},
      onPeerRefused: () => {},
    });
    cleanups.push(() => {
      acceptor.stop();
      for (const g of got) {
        closeFd(g.peer.fd);
        closeFd(g.peer.pidfd);
      }
      closeFd(lfd);
      tmp.cleanup();
    });
    return { socket, acceptor, got };
  };
  const client = (socket: string) =>
    new Promise<Socket>((resolve, reject) => {
      const c: Socket = connect(socket, () => resolve(c)).once('error', reject);
      cleanups.push(() => c.destroy());
    });
  const written = (c: Socket, data: string) => new Promise<void>((r) => c.write(data, () => r()));

  it('receives a handshake that is already there in the call that accepts its connection', async () => {
    const { socket, acceptor, got } = start();
    acceptor.stop(); // accepted by hand below, at a known moment
    const c = await client(socket);
    await written(c, 'hello');
    acceptor.acceptAll();
    expect(got.map((g) => g.msg.data.toString())).toEqual(['hello']); // synchronously
    expect(acceptor.pending).toBe(0);
  });

  it('still receives a handshake that comes after the connection is accepted', async () => {
    const { socket, acceptor, got } = start();
    acceptor.stop();
    const c = await client(socket);
    acceptor.acceptAll();
    expect(got).toEqual([]);
    expect(acceptor.pending).toBe(1);
    await written(c, 'later');
    for (let i = 0; i < 200 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(got.map((g) => g.msg.data.toString())).toEqual(['later']);
    expect(acceptor.pending).toBe(0);
  });
});

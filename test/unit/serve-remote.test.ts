/**
 * `serve` with real origins (s3rver, nginx), the balloon, 2 MiB pages, budgets, and the CLI process
 * itself under SIGTERM.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { createSnapshot } from '../../snapshotter/snapshot.js';
import { openMemoryFile } from '../../snapshotter/source.js';
import { S3Store } from '../../store/s3-store.js';
import { repoRoot } from '../helpers/fixtures.js';
import { runClient } from '../helpers/fc-client.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { nginxSkipReason, startNginx } from '../helpers/nginx.js';
import { startS3rver, useS3rverEnv, type S3rverHandle } from '../helpers/s3rver.js';
import { serve, snapshotTo, summaries } from '../helpers/serve.js';
import { hasUffd, hugepageSkipReason, uffdSuite } from '../helpers/skip.js';

const MiB = 1024 * 1024;
const CS = 512 * 1024;

function dirBytes(dir: string): number {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .reduce((n, d) => n + statSync(path.join(d.parentPath, d.name)).size, 0);
}

describe.skipIf(!hasUffd)(uffdSuite('lazysnap serve with remote origins'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let img: ReturnType<typeof makeImage>;
  let s3: S3rverHandle;
  let restoreEnv = () => {};
  beforeAll(async () => {
    tmp = tempDir();
    img = makeImage(tmp.dir, 16 * MiB, CS, { zeroEvery: 3 });
    await snapshotTo(path.join(tmp.dir, 'store'), img.path, 'vm', CS);
    s3 = await startS3rver('snaps');
    restoreEnv = useS3rverEnv();
    const src = await openMemoryFile(img.path);
    await createSnapshot({
      source: src,
      store: new S3Store({ bucket: 'snaps', prefix: 'prod', endpoint: s3.endpoint }),
      id: 'vm',
      chunkSize: CS,
    });
    await src.close();
  });
  afterAll(async () => {
    await s3.stop();
    restoreEnv();
    tmp.cleanup();
  });

  it('serves from s3rver, with the balloon: removed pages read zero, the rest the snapshot', async () => {
    const server = await serve(tmp.dir, { stores: ['s3://snaps/prod'], s3Endpoint: s3.endpoint, id: 'vm' });
    try {
      const r = await runClient([
        '--socket',
        server.socketPath,
        '--image',
        img.path,
        '--threads',
        '4',
        '--balloon',
        `${3 * MiB}:${2 * MiB}`,
      ]);
      expect(r.report).toMatchObject({
        ok: true,
        mismatches: 0,
        balloon: { zeroPages: 512, nonZeroPages: 0, outsideOk: true },
      });
      const [s] = await summaries(server, 1);
      expect(s!.hitsByTier.origin0).toBeGreaterThan(0);
    } finally {
      await server.close(0);
    }
  });

  it.skipIf(!!nginxSkipReason)(
    `serves from nginx in front of the store, S3 as the fallback${nginxSkipReason ? ` [SKIPPED: ${nginxSkipReason}]` : ''}`,
    async () => {
      const nginx = await startNginx(path.join(tmp.dir, 'store'));
      const server = await serve(tmp.dir, {
        stores: [nginx.url, 's3://snaps/prod'],
        s3Endpoint: s3.endpoint,
        id: 'vm',
        memoryBudgetBytes: 2 * MiB,
        cacheDir: path.join(tmp.dir, 'cache'),
        cacheBudgetBytes: 4 * MiB,
      });
      try {
        s3.reset();
        const r = await runClient(['--socket', server.socketPath, '--image', img.path, '--threads', '4']);
        expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
        const [s] = await summaries(server, 1);
        // The cache tier answered every chunk, except that a demand fetch nginx had not answered by its
        // recent p95 sends a hedge to S3 (hedging is on by default): on a loaded runner S3 may win a few.
        // So S3 was asked only for hedges, and answered no more chunks than hedges it won.
        const hedges = await server.metrics.registry.getSingleMetric('lazysnap_hedged_requests_total')!.get();
        const hedged = (outcome: string) =>
          hedges.values.filter((v) => v.labels.outcome === outcome).reduce((n, v) => n + v.value, 0);
        const s3Gets = s3.requests.filter((q) => q.method === 'GET').length;
        expect(s3Gets).toBeLessThanOrEqual(hedged('won') + hedged('lost'));
        expect(s!.hitsByTier.origin1 ?? 0).toBeLessThanOrEqual(hedged('won'));
        expect(s!.hitsByTier.origin0).toBeGreaterThan(0);
        // Budgets hold after the session: resident memory now, the disk cache once its background
        // writes have finished (close() waits for them; while they run it may hold up to
        // fetch concurrency x chunk size more).
        const st = server.stats();
        expect(st.residentBytes).toBeLessThanOrEqual(2 * MiB);
        expect(st.memoryEvictions).toBeGreaterThan(0);
        expect(st).toMatchObject({ sessions: 0, pendingHandshakes: 0 });
        await server.close(0);
        expect(dirBytes(path.join(tmp.dir, 'cache'))).toBeLessThanOrEqual(4 * MiB);
      } finally {
        await server.close(0);
        await nginx.stop();
      }
    },
  );

  it.skipIf(!existsSync('/dev/kvm'))(
    `restores a KVM guest's memory from the directory store, s3rver and nginx${existsSync('/dev/kvm') ? '' : ' [SKIPPED: no /dev/kvm]'}`,
    async () => {
      const nginx = nginxSkipReason ? undefined : await startNginx(path.join(tmp.dir, 'store'));
      const origins: [string, string[]][] = [
        ['directory', [path.join(tmp.dir, 'store')]],
        ['s3rver', ['s3://snaps/prod']],
        ...(nginx ? [['nginx', [nginx.url]] as [string, string[]]] : []),
      ];
      try {
        for (const [name, stores] of origins) {
          const server = await serve(tmp.dir, { stores, s3Endpoint: s3.endpoint, id: 'vm' });
          try {
            // Every guest access faults inside KVM_RUN and is served through the socket.
            const r = await runClient([
              '--socket',
              server.socketPath,
              '--image',
              img.path,
              '--kvm',
              '--threads',
              '2',
              '--regions',
              '12M,4M',
            ]);
            expect({ name, code: r.code, stderr: r.stderr }).toEqual({ name, code: 0, stderr: '' });
            expect(r.report, name).toMatchObject({
              ok: true,
              mode: 'kvm',
              mismatches: 0,
              pagesVerified: 4096,
            });
            const [s] = await summaries(server, 1);
            expect(s!.faults, name).toBeGreaterThanOrEqual(1);
          } finally {
            await server.close(0);
          }
        }
      } finally {
        await nginx?.stop();
      }
    },
  );

  it('runs as a process: lazysnap serve, then SIGTERM drains and exits 0', async () => {
    const sock = path.join(tmp.dir, 'cli', 'fc.sock');
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'cli/bin.ts',
        'serve',
        '--store',
        path.join(tmp.dir, 'store'),
        '--id',
        'vm',
        '--socket',
        sock,
        '--shutdown-grace',
        '2s',
      ],
      {
        cwd: repoRoot,
        env: { ...process.env, LAZYSNAP_LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    for (let i = 0; i < 300 && !err.includes('serving vm on'); i++)
      await new Promise((r) => setTimeout(r, 20));
    expect(err).toContain(`serving vm on ${sock}`);
    const r = await runClient(['--socket', sock, '--image', img.path, '--threads', '2']);
    expect(r.report).toMatchObject({ ok: true });
    child.kill('SIGTERM');
    const [code] = await once(child, 'exit');
    expect(code).toBe(0);
  });
});

const hugeReason = hasUffd ? hugepageSkipReason(16) : 'needs userfaultfd';
describe.skipIf(hugeReason !== '')(
  `lazysnap serve on 2 MiB pages${hugeReason ? ` [SKIPPED: ${hugeReason}]` : ''}`,
  () => {
    it('restores a hugepage snapshot whole, zero chunks by copy', async () => {
      const tmp = tempDir();
      try {
        const img = makeImage(tmp.dir, 16 * MiB, 2 * MiB, { zeroChunks: [2, 5] });
        const src = await openMemoryFile(img.path, { pageSize: 2097152 });
        const { FileStore } = await import('../../store/file-store.js');
        await createSnapshot({
          source: src,
          store: new FileStore(path.join(tmp.dir, 'store')),
          id: 'huge',
          chunkSize: 2 * MiB,
        });
        await src.close();
        const server = await serve(tmp.dir, { stores: [path.join(tmp.dir, 'store')], id: 'huge' });
        try {
          const r = await runClient([
            '--socket',
            server.socketPath,
            '--image',
            img.path,
            '--page-size',
            '2097152',
            '--threads',
            '4',
          ]);
          expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
          expect(r.report).toMatchObject({ ok: true, mismatches: 0 });
          const [s] = await summaries(server, 1);
          expect(s!.fetchedChunks).toBe(6);
        } finally {
          await server.close(0);
        }
      } finally {
        tmp.cleanup();
      }
    });
  },
);

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import {
  closeSync,
  existsSync,
  openSync,
  readFileSync,
  readdirSync,
  truncateSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { SourceError } from '../../core/errors.js';
import { collectGarbage } from '../../snapshotter/gc.js';
import { openProcess } from '../../snapshotter/process-source.js';
import { createSnapshot } from '../../snapshotter/snapshot.js';
import { openMemoryFile } from '../../snapshotter/source.js';
import { FileStore } from '../../store/file-store.js';
import { loadIndex } from '../../store/reader.js';
import { buildC } from '../helpers/fixtures.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { countingStore, reassemble } from '../helpers/reassemble.js';
import { cli } from '../helpers/cli.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 256 * KiB;

function files(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => path.relative(dir, path.join(d.parentPath, d.name)));
}

describe('snapshotter with the directory store', () => {
  let tmp: ReturnType<typeof tempDir>;
  let storeDir: string;
  beforeEach(() => {
    tmp = tempDir();
    storeDir = path.join(tmp.dir, 'store');
  });
  afterEach(() => tmp.cleanup());

  it('round-trips an image and stores neither zero chunks nor duplicates', async () => {
    const img = makeImage(tmp.dir, 8 * MiB, CS, { zeroEvery: 3 });
    img.bytes.copy(img.bytes, 20 * CS, 1 * CS, 2 * CS); // chunk 20 duplicates chunk 1
    writeFileSync(img.path, img.bytes);
    const store = countingStore(new FileStore(storeDir));
    const source = await openMemoryFile(img.path);
    const s = await createSnapshot({ source, store, id: 'img', chunkSize: CS });
    await source.close();
    expect((await reassemble(store, 'img')).equals(img.bytes)).toBe(true);
    expect(s).toMatchObject({
      chunks: 32,
      zeroChunks: img.zeroChunks.length,
      uniqueChunks: 32 - img.zeroChunks.length - 1,
    });
    const chunkFiles = files(path.join(storeDir, 'chunks'));
    expect(chunkFiles).toHaveLength(s.uniqueChunks);
    expect(chunkFiles.every((f) => f.endsWith('.zstd'))).toBe(true);
    // The manifest is the last write: it commits the snapshot.
    expect(store.puts.at(-1)).toBe('manifests/img.json');
  });

  it('uploads only the changed chunks of a second snapshot, stored uncompressed when asked', async () => {
    const img = makeImage(tmp.dir, 4 * MiB, CS);
    const store = countingStore(new FileStore(storeDir));
    let src = await openMemoryFile(img.path);
    await createSnapshot({ source: src, store, id: 'a', chunkSize: CS, codec: 'none' });
    await src.close();
    const changed = Buffer.from(img.bytes);
    changed.fill(7, 3 * CS + 100, 3 * CS + 200);
    changed.fill(9, 9 * CS, 9 * CS + 4096);
    writeFileSync(path.join(tmp.dir, 'b.img'), changed);
    store.puts.length = 0;
    src = await openMemoryFile(path.join(tmp.dir, 'b.img'));
    const s = await createSnapshot({ source: src, store, id: 'b', chunkSize: CS, codec: 'none' });
    await src.close();
    expect(store.puts.filter((k) => k.startsWith('chunks/'))).toHaveLength(2);
    expect(s.uploadedChunks).toBe(2);
    expect((await reassemble(store, 'b')).equals(changed)).toBe(true);
  });

  it('turns a sparse diff plus its parent into a complete snapshot', async () => {
    const base = makeImage(tmp.dir, 4 * MiB, CS, { zeroChunks: [5], name: 'base.img' });
    const store = new FileStore(storeDir);
    let src = await openMemoryFile(base.path);
    await createSnapshot({
      source: src,
      store,
      id: 'base',
      chunkSize: CS,
      vmstate: Buffer.from('vmstate-v1'),
    });
    await src.close();
    // A Firecracker diff: full-size sparse file, only dirty pages written.
    const next = Buffer.from(base.bytes);
    const diffPath = path.join(tmp.dir, 'diff.mem');
    const fd = openSync(diffPath, 'w');
    const dirty = [2 * CS + 8192, 5 * CS, 6 * CS, 6 * CS + 4096, 15 * CS + CS - 4096];
    for (const off of dirty) {
      const page = Buffer.alloc(4096, (off / 4096) & 0xff);
      page.copy(next, off);
      writeSync(fd, page, 0, 4096, off);
    }
    // Whole chunk 10 rewritten.
    const whole = Buffer.alloc(CS, 0xab);
    whole.copy(next, 10 * CS);
    writeSync(fd, whole, 0, CS, 10 * CS);
    closeSync(fd);
    truncateSync(diffPath, 4 * MiB);
    src = await openMemoryFile(diffPath, { diff: true });
    expect(src.dataRanges.length).toBeGreaterThan(1);
    const s = await createSnapshot({ source: src, store, id: 'next', chunkSize: CS, parent: 'base' });
    await src.close();
    expect((await reassemble(store, 'next')).equals(next)).toBe(true);
    expect(s.inheritedChunks).toBe(16 - 5); // chunks 2, 5, 6, 10 and 15 are dirty; the rest come from the parent
    const ix = await loadIndex(store, 'next');
    expect(ix.manifest.parent).toBe('base');
    const noParent = await openMemoryFile(diffPath, { diff: true });
    await expect(createSnapshot({ source: noParent, store, id: 'orphan', chunkSize: CS })).rejects.toThrow(
      /--parent/,
    );
    await noParent.close();
  });

  it('snapshots a live process: its private writable memory at the original addresses, resumed after', async () => {
    const bin = buildC('test/fixtures/pattern-proc.c');
    const child = spawn(bin, [String(4 * MiB)], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      const [line] = (await once(child.stdout, 'data')) as [Buffer];
      const [, addrHex, size] = line.toString().trim().split(' ');
      const store = new FileStore(storeDir);
      const src = await openProcess(child.pid!);
      expect(readFileSync(`/proc/${child.pid}/stat`, 'utf8')).toMatch(/\) [tT] /);
      await createSnapshot({ source: src, store, id: 'proc', chunkSize: 64 * KiB });
      await src.close();
      expect(readFileSync(`/proc/${child.pid}/stat`, 'utf8')).not.toMatch(/\) [tT] /);
      const ix = await loadIndex(store, 'proc');
      const region = ix.manifest.regions.find((r) => r.address === `0x${addrHex}`);
      expect(region?.size).toBe(Number(size));
      const image = await reassemble(store, 'proc');
      const mem = image.subarray(region!.offset, region!.offset + region!.size);
      for (const off of [0, 8, 4096 * 3, 4096 * 3 + 8, 4096 * 5 + 16, Number(size) - 8]) {
        const want = ((BigInt(off) * 0x9e3779b97f4a7c15n) & ((1n << 64n) - 1n)) ^ 0x6c617a79736e6170n;
        expect(mem.readBigUInt64LE(off), `offset ${off}`).toBe(Math.floor(off / 4096) % 4 === 3 ? 0n : want);
      }
      expect(ix.manifest.source.kind).toBe('process');
    } finally {
      child.stdin.end();
      await once(child, 'exit');
    }
  });

  it('snapshots just an address range of a process (--maps 0xA-0xB), clipping the mapping around it', async () => {
    const bin = buildC('test/fixtures/pattern-proc.c');
    const child = spawn(bin, [String(4 * MiB)], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      const [line] = (await once(child.stdout, 'data')) as [Buffer];
      const base = BigInt(`0x${line.toString().trim().split(' ')[1]}`);
      // One MiB from the middle of the 4 MiB mapping.
      const lo = base + BigInt(MiB);
      const hi = lo + BigInt(MiB);
      const r = await cli([
        'snapshot',
        '--pid',
        String(child.pid),
        '--maps',
        `0x${lo.toString(16)}-0x${hi.toString(16)}`,
        '--store',
        storeDir,
        '--id',
        'part',
        '--chunk-size',
        '64KiB',
        '--progress',
        'quiet',
        '--json',
      ]);
      expect(r.err).toBe('');
      expect(JSON.parse(r.out)).toMatchObject({ totalSize: MiB });
      const ix = await loadIndex(new FileStore(storeDir), 'part');
      expect(ix.manifest.regions).toEqual([{ offset: 0, size: MiB, address: `0x${lo.toString(16)}` }]);
      const image = await reassemble(new FileStore(storeDir), 'part');
      for (const off of [0, 4096 * 3 + 8, MiB - 8]) {
        const abs = BigInt(MiB + off);
        const want = ((abs * 0x9e3779b97f4a7c15n) & ((1n << 64n) - 1n)) ^ 0x6c617a79736e6170n;
        expect(image.readBigUInt64LE(off), `offset ${off}`).toBe(
          Math.floor((MiB + off) / 4096) % 4 === 3 ? 0n : want,
        );
      }
      const bad = await cli([
        'snapshot',
        '--pid',
        String(child.pid),
        '--maps',
        '0x1001-0x2000',
        '--store',
        storeDir,
        '--id',
        'bad',
      ]);
      expect(bad).toMatchObject({
        code: 2,
        err: expect.stringMatching(/maps must be address ranges 0xSTART-0xEND, page-aligned/),
      });
    } finally {
      child.stdin.end();
      await once(child, 'exit');
    }
  });

  it('reports an unreadable process as a source error and leaves it running', async () => {
    await expect(openProcess(2 ** 22 - 1)).rejects.toThrow(SourceError);
    expect(
      (await cli(['snapshot', '--pid', String(2 ** 22 - 1), '--store', storeDir, '--id', 'x'])).code,
    ).toBe(2);
  });

  it('resumes an interrupted snapshot without re-uploading and never publishes a partial manifest', async () => {
    const img = makeImage(tmp.dir, 8 * MiB, CS);
    const store = countingStore(new FileStore(storeDir));
    const ac = new AbortController();
    let src = await openMemoryFile(img.path);
    const first = createSnapshot({
      source: src,
      store,
      id: 'big',
      chunkSize: CS,
      concurrency: 2,
      signal: ac.signal,
      onProgress: (p) => p.chunksDone === 10 && ac.abort(new Error('interrupted')),
    });
    await expect(first).rejects.toThrow('interrupted');
    await src.close();
    expect(existsSync(path.join(storeDir, 'manifests', 'big.json'))).toBe(false);
    const before = files(path.join(storeDir, 'chunks')).length; // completed uploads (an aborted one leaves nothing)
    expect(before).toBeGreaterThan(0);
    expect(before).toBeLessThan(32);
    store.puts.length = 0;
    src = await openMemoryFile(img.path);
    const s = await createSnapshot({ source: src, store, id: 'big', chunkSize: CS });
    await src.close();
    expect(s.uploadedChunks).toBe(32 - before);
    expect((await reassemble(store, 'big')).equals(img.bytes)).toBe(true);
  });

  it('gc removes exactly the unreferenced chunks past the grace period', async () => {
    const a = makeImage(tmp.dir, 2 * MiB, CS, { name: 'a.img' });
    const b = Buffer.from(a.bytes);
    b.fill(1, 0, CS); // b shares 7 of 8 chunks with a
    writeFileSync(path.join(tmp.dir, 'b.img'), b);
    const store = new FileStore(storeDir);
    for (const [id, p] of [
      ['a', a.path],
      ['b', path.join(tmp.dir, 'b.img')],
    ] as const) {
      const src = await openMemoryFile(p);
      await createSnapshot({ source: src, store, id, chunkSize: CS });
      await src.close();
    }
    const bIndex = await loadIndex(store, 'b');
    unlinkSync(path.join(storeDir, 'manifests', 'b.json'));
    const onlyB = `chunks/${bIndex.hashes.toString('hex', 0, 1)}/${bIndex.hashes.toString('hex', 0, 32)}.zstd`;
    // Young: kept by the default grace period.
    expect((await collectGarbage({ store })).deleted).toEqual([]);
    const old = Date.now() / 1000 - 7200;
    utimesSync(path.join(storeDir, ...onlyB.split('/')), old, old);
    const dry = await collectGarbage({ store, dryRun: true });
    expect(dry.deleted).toEqual([onlyB]);
    expect(existsSync(path.join(storeDir, ...onlyB.split('/')))).toBe(true);
    const r = await collectGarbage({ store });
    expect(r).toMatchObject({ manifests: 1, referencedChunks: 8, deleted: [onlyB] });
    expect(existsSync(path.join(storeDir, ...onlyB.split('/')))).toBe(false);
    expect((await reassemble(store, 'a')).equals(a.bytes)).toBe(true);
  });

  it('gc removes temp files of interrupted writes past the grace period, and only those', async () => {
    const img = makeImage(tmp.dir, 1 * MiB, CS);
    const store = new FileStore(storeDir);
    const src = await openMemoryFile(img.path);
    await createSnapshot({ source: src, store, id: 'a', chunkSize: CS });
    await src.close();
    const chunk = files(storeDir).find((f) => f.startsWith('chunks/'))!;
    // What a snapshotter killed mid-write leaves (FileStore's own temp naming), one old, one recent.
    const stale = `${chunk}.tmp-4242-00c0ffee`;
    const manifestTmp = 'manifests/b.json.tmp-4242-0badf00d';
    const recent = `${chunk}.tmp-4343-deadbeef`;
    for (const k of [stale, manifestTmp, recent])
      writeFileSync(path.join(storeDir, ...k.split('/')), 'partial');
    const old = Date.now() / 1000 - 7200;
    for (const k of [stale, manifestTmp]) utimesSync(path.join(storeDir, ...k.split('/')), old, old);
    const before = files(storeDir).length;

    const dry = await collectGarbage({ store, dryRun: true });
    expect(dry.deletedTemp).toEqual([manifestTmp, stale].sort());
    expect(files(storeDir)).toHaveLength(before);
    const r = await collectGarbage({ store });
    expect(r).toMatchObject({ manifests: 1, deleted: [], deletedTemp: [manifestTmp, stale].sort() });
    expect(existsSync(path.join(storeDir, ...stale.split('/')))).toBe(false);
    expect(existsSync(path.join(storeDir, ...manifestTmp.split('/')))).toBe(false);
    expect(existsSync(path.join(storeDir, ...recent.split('/')))).toBe(true);
    expect(files(storeDir)).toHaveLength(before - 2);
    expect((await reassemble(store, 'a')).equals(img.bytes)).toBe(true);
    await expect(store.deleteTemp(chunk)).rejects.toMatchObject({ code: 'LAZYSNAP_INVALID_ARGUMENT' });
  });

  it('rejects bad input with one clear line, exit 2, and writes nothing', async () => {
    const img = makeImage(tmp.dir, 1 * MiB, CS);
    const cases: [string[], RegExp][] = [
      [
        ['snapshot', '--mem-file', path.join(tmp.dir, 'missing'), '--store', storeDir, '--id', 'x'],
        /cannot open memory file .*missing: no such file/,
      ],
      [['snapshot', '--mem-file', img.path, '--store', storeDir, '--id', 'a/b'], /id must be a snapshot id/],
      [['snapshot', '--mem-file', img.path, '--store', storeDir, '--id', '..'], /id must be a snapshot id/],
      [
        ['snapshot', '--mem-file', img.path, '--store', 'ftp://host/x', '--id', 'x'],
        /unsupported scheme ftp:\/\//,
      ],
      [['snapshot', '--mem-file', img.path, '--store', 's3://', '--id', 'x'], /invalid store URL "s3:\/\/"/],
      [
        ['snapshot', '--mem-file', img.path, '--store', 's3://Bad_Bucket/p', '--id', 'x'],
        /invalid store URL/,
      ],
      [
        ['inspect', '--store', 'https://user:hunter2@cdn.example/x?sig=abc', '--id', 'x?'],
        /--id must be a snapshot id/,
      ],
      [
        ['snapshot', '--mem-file', img.path, '--store', storeDir, '--id', 'x', '--chunk-size', '3000'],
        /--chunk-size must be a power of two/,
      ],
      [
        ['snapshot', '--mem-file', img.path, '--store', storeDir, '--id', 'x', '--compress', 'lz4'],
        /--compress must be one of none, zstd/,
      ],
      [
        ['snapshot', '--mem-file', img.path, '--store', storeDir, '--id', 'x', '--regions', '512KiB'],
        /region sizes add up to 524288 bytes but the file has 1048576/,
      ],
      [['snapshot', '--store', storeDir, '--id', 'x'], /exactly one source/],
      [['inspect', '--store', storeDir], /--id is required/],
      [['gc', '--store', storeDir, '--grace', 'soon'], /--grace must be a duration/],
    ];
    for (const [argv, msg] of cases) {
      const r = await cli(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(msg);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
    expect(files(storeDir)).toEqual([]);
  });

  it('inspect rejects corrupt and future-version manifests with a clear error', async () => {
    const img = makeImage(tmp.dir, 1 * MiB, CS);
    expect(
      (
        await cli([
          'snapshot',
          '--mem-file',
          img.path,
          '--store',
          storeDir,
          '--id',
          'ok',
          '--chunk-size',
          '256KiB',
          '--progress',
          'quiet',
        ])
      ).code,
    ).toBe(0);
    const good = JSON.parse(readFileSync(path.join(storeDir, 'manifests', 'ok.json'), 'utf8'));
    expect((await cli(['inspect', '--store', storeDir, '--id', 'ok'])).out).toMatch(
      /4 total, 0 zero, 4 unique \(4 zstd\)/,
    );
    writeFileSync(path.join(storeDir, 'manifests', 'bad.json'), '{"format": "lazysnap/1", "id": "bad"');
    writeFileSync(
      path.join(storeDir, 'manifests', 'future.json'),
      JSON.stringify({ ...good, id: 'future', format: 'lazysnap/2' }),
    );
    writeFileSync(
      path.join(storeDir, 'manifests', 'short.json'),
      JSON.stringify({ ...good, id: 'short', totalSize: 2 * MiB }),
    );
    expect(await cli(['inspect', '--store', storeDir, '--id', 'bad'])).toMatchObject({
      code: 1,
      err: expect.stringMatching(/invalid manifest: \(document\): not JSON/),
    });
    expect(await cli(['inspect', '--store', storeDir, '--id', 'future'])).toMatchObject({
      code: 1,
      err: expect.stringMatching(/format "lazysnap\/2" is not supported.*upgrade lazysnap/),
    });
    expect(await cli(['inspect', '--store', storeDir, '--id', 'short'])).toMatchObject({
      code: 1,
      err: expect.stringMatching(/regions: sizes add up to 1048576, not totalSize 2097152/),
    });
    expect(await cli(['inspect', '--store', storeDir, '--id', 'nope'])).toMatchObject({
      code: 1,
      err: expect.stringMatching(/manifests\/nope.json not found/),
    });
  });
});

/**
 * attach(): a snapshot restored lazily into this process's own memory, with the runtime in a worker
 * thread while this (the test's main) thread faults. The proof is a WebAssembly function computing
 * over restored linear memory and getting the answer it gets over the original bytes.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import type {} from '../../core/webassembly.js';
import { moduleCommand, startModuleWorker } from '../../core/worker.js';
import { FileStore } from '../../store/file-store.js';
import { chunkKey } from '../../store/keys.js';
import { chunkCodec, chunkHash } from '../../store/manifest.js';
import { loadIndex } from '../../store/reader.js';
import { attach, type Attachment } from '../../sdk/attach.js';
import { makeImage, tempDir } from '../helpers/images.js';
import { snapshotTo } from '../helpers/serve.js';
import { hasUffd, kernelHasPoison, uffdSuite } from '../helpers/skip.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CS = 256 * KiB;
const WASM_PAGE = 64 * KiB;

/**
 * (module (import "env" "mem" (memory 1))
 *   (func (export "hash") (param $p i32) (param $n i32) (result i64) (local $acc i64)
 *     block loop
 *       local.get $n  i32.eqz  br_if 1
 *       local.get $acc  i64.const 31  i64.mul  local.get $p  i64.load8_u  i64.add  local.set $acc
 *       local.get $p  i32.const 1  i32.add  local.set $p
 *       local.get $n  i32.const 1  i32.sub  local.set $n
 *       br 0
 *     end end
 *     local.get $acc))
 * An order-sensitive hash over [p, p+n): any wrong, missing or misplaced byte changes it.
 */
const HASH_WASM = Uint8Array.from([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x07, 0x01, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7e, 0x02,
  0x0c, 0x01, 0x03, 0x65, 0x6e, 0x76, 0x03, 0x6d, 0x65, 0x6d, 0x02, 0x00, 0x01, 0x03, 0x02, 0x01, 0x00, 0x07,
  0x08, 0x01, 0x04, 0x68, 0x61, 0x73, 0x68, 0x00, 0x00, 0x0a, 0x30, 0x01, 0x2e, 0x01, 0x01, 0x7e, 0x02, 0x40,
  0x03, 0x40, 0x20, 0x01, 0x45, 0x0d, 0x01, 0x20, 0x02, 0x42, 0x1f, 0x7e, 0x20, 0x00, 0x31, 0x00, 0x00, 0x7c,
  0x21, 0x02, 0x20, 0x00, 0x41, 0x01, 0x6a, 0x21, 0x00, 0x20, 0x01, 0x41, 0x01, 0x6b, 0x21, 0x01, 0x0c, 0x00,
  0x0b, 0x0b, 0x20, 0x02, 0x0b,
]);

function hasher(memory: WebAssembly.Memory): (p: number, n: number) => bigint {
  const instance = new WebAssembly.Instance(new WebAssembly.Module(HASH_WASM), { env: { mem: memory } });
  return instance.exports.hash as (p: number, n: number) => bigint;
}

describe.skipIf(!hasUffd)(uffdSuite('attach() in-process restore'), () => {
  let tmp: ReturnType<typeof tempDir>;
  let store: string;
  let img: ReturnType<typeof makeImage>;
  let att: Attachment | undefined;
  beforeEach(async () => {
    tmp = tempDir();
    store = path.join(tmp.dir, 'store');
    img = makeImage(tmp.dir, 8 * MiB, CS, { zeroEvery: 3 });
    await snapshotTo(store, img.path, 'wasm', CS);
  });
  afterEach(async () => {
    await att?.detach().catch(() => {});
    att = undefined;
    tmp.cleanup();
  });

  it("a WebAssembly function over lazily restored linear memory gets the original bytes' answer, fetching only what it reads", async () => {
    // The oracle: the same function over a memory holding the image, copied in the ordinary way.
    const reference = new WebAssembly.Memory({ initial: (8 * MiB) / WASM_PAGE });
    new Uint8Array(reference.buffer).set(img.bytes);
    const want = hasher(reference);

    // Restored memory starts with other contents: attach() must drop them, not mix them in.
    const memory = new WebAssembly.Memory({ initial: (8 * MiB) / WASM_PAGE + 1 });
    new Uint8Array(memory.buffer).fill(0xee);
    att = await attach(memory, { stores: [store], id: 'wasm', prefetch: 'off' });
    expect(att.size).toBe(8 * MiB);
    const hash = hasher(memory);

    // Two chunks first: one with data, one zero. Only the data chunk is fetched.
    const data = [...Array(32).keys()].find((i) => !img.zeroChunks.includes(i))!;
    const zero = img.zeroChunks[1]!;
    expect(hash(data * CS, CS)).toBe(want(data * CS, CS));
    expect(hash(zero * CS, CS)).toBe(want(zero * CS, CS));
    const partial = await att.stats();
    expect(partial).toMatchObject({ fetchedChunks: 1, bytesFetched: expect.any(Number) });
    expect(partial.zeroFaults).toBeGreaterThanOrEqual(1);

    // Then the whole snapshot, and the page past it, which attach() left as it was.
    expect(hash(0, 8 * MiB)).toBe(want(0, 8 * MiB));
    expect(new Uint8Array(memory.buffer)[8 * MiB]).toBe(0xee);
    const full = await att.stats();
    expect(full.fetchedChunks).toBe(32 - img.zeroChunks.length);

    // Detached, the memory stays restored and no longer needs the runtime.
    const summary = await att.detach();
    expect(summary).toMatchObject({ outcome: 'ended', failedChunks: [] });
    expect(hash(0, 8 * MiB)).toBe(want(0, 8 * MiB));
  });

  it('detach() populates what was never read, so the memory is complete without the runtime', async () => {
    att = await attach({ size: 8 * MiB }, { stores: [store], id: 'wasm', prefetch: 'off' });
    const summary = await att.detach();
    expect(summary!.fetchedChunks).toBe(32 - img.zeroChunks.length);
    expect(Buffer.from(att.buffer as ArrayBuffer).equals(img.bytes)).toBe(true);
    att.unmap();
  });

  it('user-mode-only (what an unprivileged process gets): a kernel access to an unrestored page fails with EFAULT, a user access restores it', async () => {
    att = await attach(
      { size: 8 * MiB },
      { stores: [store], id: 'wasm', prefetch: 'off', userModeOnly: true },
    );
    expect(att.userModeOnly).toBe(true);
    const data = [...Array(32).keys()].find((i) => !img.zeroChunks.includes(i))!;
    const page = new Uint8Array(att.buffer as ArrayBuffer, data * CS, 4096);
    const out = path.join(tmp.dir, 'out');
    const fd = openSync(out, 'w');
    try {
      // write(2) reads the page in kernel mode: the uffd does not see that fault, the kernel fails it.
      expect(() => writeSync(fd, page)).toThrow(expect.objectContaining({ code: 'EFAULT' }));
      void page[0]; // a user-mode read faults the chunk in
      expect(writeSync(fd, page)).toBe(4096);
    } finally {
      closeSync(fd);
    }
    expect(readFileSync(out).equals(img.bytes.subarray(data * CS, data * CS + 4096))).toBe(true);
    await att.detach();
    att.unmap();
    att = undefined;
  });

  it('fails closed: a chunk no store can deliver poisons its pages, the toucher gets SIGBUS instead of a wrong byte or a hang', async () => {
    // Delete one data chunk's object from the store after the snapshot: the manifest still names it.
    const data = [...Array(32).keys()].filter((i) => !img.zeroChunks.includes(i))[2]!;
    const ix = await loadIndex(new FileStore(store), 'wasm');
    rmSync(path.join(store, ...chunkKey(chunkHash(ix, data)!, chunkCodec(ix, data)!).split('/')));
    const { command, args } = moduleCommand(new URL('../fixtures/attach-touch.js', import.meta.url));
    const r = spawnSync(command, [...args, store, 'wasm', String(data), String(CS)], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.stdout).toBe('attached\n');
    expect(r.signal).toBe(kernelHasPoison() ? 'SIGBUS' : 'SIGKILL');
    expect(r.stderr).toMatch(new RegExp(`chunk ${data} could not be served: failing closed`));
  });

  it('refuses memory and options that would deadlock or corrupt, before registering anything', async () => {
    // A plain ArrayBuffer comes from the allocator: it starts inside a page it shares with other
    // objects, or (where the allocator happened to page-align it) inside a mapping that is not the
    // buffer's alone. Either way it is refused before anything is registered.
    await expect(attach(new ArrayBuffer(8 * MiB), { stores: [store], id: 'wasm' })).rejects.toMatchObject({
      code: 'LAZYSNAP_INVALID_ARGUMENT',
      message: expect.stringMatching(/page-aligned memory|private anonymous read-write memory/),
    });
    // Objects and callbacks would have to run on the thread that is blocked in the fault.
    await expect(
      attach({ size: 8 * MiB }, { stores: [{ url: store }] as never, id: 'wasm' }),
    ).rejects.toMatchObject({
      code: 'LAZYSNAP_INVALID_ARGUMENT',
      message: expect.stringMatching(/store URLs/),
    });
    await expect(
      attach({ size: 8 * MiB }, { stores: [store], id: 'wasm', onFault: () => {} } as never),
    ).rejects.toMatchObject({ code: 'LAZYSNAP_INVALID_ARGUMENT', message: expect.stringMatching(/onFault/) });
    // Too small for the snapshot.
    await expect(
      attach(new WebAssembly.Memory({ initial: 1 }), { stores: [store], id: 'wasm' }),
    ).rejects.toMatchObject({
      code: 'LAZYSNAP_INVALID_ARGUMENT',
      message: expect.stringMatching(/at least the snapshot's 8388608 bytes/),
    });
    // A snapshot that is not there: the runtime's own error, with its code.
    await expect(attach({ size: 8 * MiB }, { stores: [store], id: 'nope' })).rejects.toMatchObject({
      code: 'LAZYSNAP_NOT_FOUND',
    });
  });

  it('a runtime worker terminated while serving does not take the process down (native handles close before the environment goes)', async () => {
    const w = startModuleWorker(new URL('../../sdk/attach-worker.js', import.meta.url), {
      workerData: {
        serve: { stores: [store], id: 'wasm', socketPath: path.join(tmp.dir, 'w.sock') },
        logLevel: 'silent',
      },
    });
    await new Promise((resolve) => w.once('message', resolve));
    // Before the fix, libuv's close callback ran N-API calls on the dead environment: SIGSEGV here.
    expect(await w.terminate()).toBe(1);
  });
});

/**
 * Contract tests of the Firecracker API client against a fake that validates every request
 * against Firecracker's own swagger spec (test/helpers/fake-firecracker.ts). The fake is first
 * shown to catch the mistakes that matter (a misspelt field, a wrong-case enum), so a clean run of
 * the client against it means the client's wire format matches the spec.
 */
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { afterEach, beforeEach, describe, expect, expectTypeOf, it } from 'vitest';

import {
  FirecrackerConnectionError,
  FirecrackerError,
  InvalidArgumentError,
  LazysnapError,
} from '../../core/errors.js';
import {
  FirecrackerClient,
  type CallOptions,
  type LoadSnapshotParams,
} from '../../sdk/firecracker-client.js';
import {
  rawRequest,
  startFakeFirecracker,
  validateSchema,
  type FakeFirecracker,
} from '../helpers/fake-firecracker.js';
import { tempDir } from '../helpers/images.js';

let fc: FakeFirecracker;
let client: FirecrackerClient;

beforeEach(async () => {
  fc = await startFakeFirecracker();
  client = new FirecrackerClient({ socketPath: fc.socketPath });
});

afterEach(async () => {
  await client.close();
  await fc.close();
});

const uffdLoad: LoadSnapshotParams = {
  snapshotPath: '/snap/vmstate',
  memBackend: { backendType: 'Uffd', backendPath: '/run/lazysnap/fn.sock' },
  resumeVm: true,
};

/** Waits until the fake has received `n` requests (a call is in flight). */
async function received(n: number): Promise<void> {
  for (let i = 0; i < 200 && fc.requests.length < n; i++) await sleep(5);
  expect(fc.requests.length).toBe(n);
}

describe('the fake Firecracker catches spec violations', () => {
  const load = (body: unknown) => rawRequest(fc.socketPath, 'PUT', '/snapshot/load', JSON.stringify(body));

  it.each([
    [
      'a misspelt field (mem_backnd)',
      { snapshot_path: '/s', mem_backnd: { backend_type: 'Uffd', backend_path: '/u' } },
      /unknown field `mem_backnd`/,
    ],
    [
      'a wrong-case enum (backend_type "uffd")',
      { snapshot_path: '/s', mem_backend: { backend_type: 'uffd', backend_path: '/u' } },
      /\$\.mem_backend\.backend_type: "uffd" is not one of "File", "Uffd"/,
    ],
    [
      'a camelCase nested field (backendPath)',
      { snapshot_path: '/s', mem_backend: { backend_type: 'Uffd', backendPath: '/u' } },
      /unknown field `backendPath`/,
    ],
    [
      'a missing required field',
      { mem_backend: { backend_type: 'Uffd', backend_path: '/u' } },
      /missing required field `snapshot_path`/,
    ],
    [
      'a wrong type',
      { snapshot_path: '/s', mem_backend: { backend_type: 'Uffd', backend_path: '/u' }, resume_vm: 'true' },
      /\$\.resume_vm: expected boolean, got string/,
    ],
    [
      'mem_file_path together with mem_backend',
      { snapshot_path: '/s', mem_file_path: '/m', mem_backend: { backend_type: 'File', backend_path: '/m' } },
      /too many fields/,
    ],
  ])('rejects %s with 400 and a fault_message', async (_name, body, problem) => {
    const res = await load(body);
    expect(res.status).toBe(400);
    expect((JSON.parse(res.body) as { fault_message: string }).fault_message).toMatch(problem);
    expect(fc.violations).toEqual(
      expect.arrayContaining([expect.stringMatching(new RegExp(`^PUT /snapshot/load: .*${problem.source}`))]),
    );
  });

  it('checks minimum/maximum, paths, methods and the transport rules of micro_http', async () => {
    expect(
      (
        await rawRequest(
          fc.socketPath,
          'PUT',
          '/machine-config',
          JSON.stringify({ vcpu_count: 0, mem_size_mib: 128 }),
        )
      ).status,
    ).toBe(400);
    expect(
      (
        await rawRequest(
          fc.socketPath,
          'PUT',
          '/machine-config',
          JSON.stringify({ vcpu_count: 33, mem_size_mib: 128 }),
        )
      ).status,
    ).toBe(400);
    expect((await rawRequest(fc.socketPath, 'PUT', '/snapshots/load', '{}')).status).toBe(404);
    expect((await rawRequest(fc.socketPath, 'POST', '/snapshot/load', '{}')).status).toBe(405);
    expect(
      (
        await rawRequest(fc.socketPath, 'PATCH', '/vm', JSON.stringify({ state: 'Paused' }), {
          'content-length': undefined,
          'transfer-encoding': 'chunked',
        })
      ).status,
    ).toBe(400);
    expect((await rawRequest(fc.socketPath, 'PATCH', '/vm')).status).toBe(400);
    expect(fc.violations).toEqual([
      expect.stringMatching(/^PUT \/machine-config: \$\.vcpu_count: 0 is below the minimum 1$/),
      expect.stringMatching(/^PUT \/machine-config: \$\.vcpu_count: 33 is above the maximum 32$/),
      expect.stringMatching(/^PUT \/snapshots\/load: no path/),
      expect.stringMatching(/^POST \/snapshot\/load: \/snapshot\/load has no POST/),
      expect.stringMatching(/Content-Length only/),
      expect.stringMatching(/^PATCH \/vm: PATCH \/vm needs a JSON body/),
    ]);
  });

  it('accepts the exact body of docs/PROTOCOL.md and resolves $refs, items and path templates', async () => {
    const res = await load({
      snapshot_path: '/s/vmstate',
      mem_backend: { backend_type: 'Uffd', backend_path: '/run/lazysnap/fn.sock' },
      resume_vm: true,
    });
    expect(res.status).toBe(204);
    const defs = fc.spec.definitions;
    expect(
      validateSchema(
        { $ref: '#/definitions/SnapshotLoadParams' },
        { snapshot_path: '/s', network_overrides: [{ iface_id: 'eth0' }] },
        defs,
      ),
    ).toEqual(['$.network_overrides[0]: missing required field `host_dev_name`']);
    expect(validateSchema({ $ref: '#/definitions/Nope' }, {}, defs)).toEqual([
      '$: unresolvable $ref #/definitions/Nope',
    ]);
    const drive = await rawRequest(
      fc.socketPath,
      'PUT',
      '/drives/rootfs',
      JSON.stringify({ drive_id: 'rootfs', is_root_device: true, path_on_host: '/r' }),
    );
    expect(drive.status).toBe(204);
    expect(fc.violations).toEqual([]);
  });
});

describe('FirecrackerClient against the spec', () => {
  it('sends every call with the spec paths, methods and snake_case field names', async () => {
    expect(await client.describeInstance()).toEqual({
      appName: 'Firecracker',
      id: 'anonymous-instance',
      state: 'Not started',
      vmmVersion: '1.16.1',
    });
    await client.putMachineConfig({
      vcpuCount: 2,
      memSizeMib: 256,
      smt: false,
      trackDirtyPages: true,
      hugePages: 'None',
    });
    expect(await client.getMachineConfig()).toEqual({
      vcpuCount: 2,
      memSizeMib: 256,
      smt: false,
      trackDirtyPages: true,
      hugePages: 'None',
    });
    await client.pause();
    await client.createSnapshot({
      snapshotPath: '/snap/vmstate',
      memFilePath: '/snap/mem',
      snapshotType: 'Diff',
    });
    await client.resume();
    await client.loadSnapshot(uffdLoad);
    expect((await client.describeInstance()).state).toBe('Running');
    await client.loadSnapshot({
      snapshotPath: '/snap/vmstate',
      memBackend: { backendType: 'File', backendPath: '/snap/mem' },
      resumeVm: false,
      trackDirtyPages: true,
      networkOverrides: [{ ifaceId: 'eth0', hostDevName: 'tap7' }],
      vsockOverride: { udsPath: '/run/v.sock' },
      clockRealtime: true,
    });
    await client.loadSnapshot({ ...uffdLoad, enableDiffSnapshots: true });

    expect(fc.violations).toEqual([]);
    expect(fc.requests.map((r) => `${r.method} ${r.path} ${r.status}`)).toEqual([
      'GET / 200',
      'PUT /machine-config 204',
      'GET /machine-config 200',
      'PATCH /vm 204',
      'PUT /snapshot/create 204',
      'PATCH /vm 204',
      'PUT /snapshot/load 204',
      'GET / 200',
      'PUT /snapshot/load 204',
      'PUT /snapshot/load 204',
    ]);
    const bodies = fc.requests.map((r) => r.body);
    expect(bodies[1]).toEqual({
      vcpu_count: 2,
      mem_size_mib: 256,
      smt: false,
      track_dirty_pages: true,
      huge_pages: 'None',
    });
    expect(bodies[3]).toEqual({ state: 'Paused' });
    expect(bodies[4]).toEqual({
      snapshot_path: '/snap/vmstate',
      mem_file_path: '/snap/mem',
      snapshot_type: 'Diff',
    });
    expect(bodies[5]).toEqual({ state: 'Resumed' });
    // Exactly the call of docs/PROTOCOL.md: mem_backend, never mem_file_path with it.
    expect(bodies[6]).toEqual({
      snapshot_path: '/snap/vmstate',
      mem_backend: { backend_type: 'Uffd', backend_path: '/run/lazysnap/fn.sock' },
      resume_vm: true,
    });
    expect(bodies[8]).toEqual({
      snapshot_path: '/snap/vmstate',
      mem_backend: { backend_type: 'File', backend_path: '/snap/mem' },
      resume_vm: false,
      track_dirty_pages: true,
      network_overrides: [{ iface_id: 'eth0', host_dev_name: 'tap7' }],
      vsock_override: { uds_path: '/run/v.sock' },
      clock_realtime: true,
    });
    expect(bodies[9]).toMatchObject({ enable_diff_snapshots: true });
    for (const r of fc.requests.filter((q) => q.method !== 'GET')) {
      expect(r.headers['content-type']).toBe('application/json');
      expect(r.headers['content-length']).toBe(String(Buffer.byteLength(r.raw)));
    }
    expect(
      fc.requests
        .filter((r) => r.path === '/snapshot/load')
        .every((r) => !('mem_file_path' in (r.body as object))),
    ).toBe(true);
  });

  it('surfaces Firecracker fault messages in a typed error', async () => {
    const fault =
      'Load snapshot error: Cannot connect to UDS in order to send information on handling guest memory page-faults';
    fc.failNext(400, fault);
    const err = await client.loadSnapshot(uffdLoad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FirecrackerError);
    expect(err).toBeInstanceOf(LazysnapError);
    expect(err).toMatchObject({
      code: 'LAZYSNAP_FIRECRACKER',
      name: 'FirecrackerError',
      statusCode: 400,
      faultMessage: fault,
      method: 'PUT',
      path: '/snapshot/load',
    });
    expect((err as Error).message).toBe(`PUT /snapshot/load: 400 Bad Request: ${fault}`);
    expect(fc.violations).toEqual([]); // the request itself was valid
    await client.pause(); // the connection is still usable
  });

  it('reports a response that is not the spec Error object, or not the promised body', async () => {
    fc.answerNext(500, 'internal error');
    await expect(client.pause()).rejects.toMatchObject({
      code: 'LAZYSNAP_FIRECRACKER',
      statusCode: 500,
      faultMessage: undefined,
      message: 'PATCH /vm: 500 Internal Server Error: unexpected response body "internal error"',
    });
    fc.answerNext(200, '{"app_name": "Firecracker"}');
    await expect(client.describeInstance()).rejects.toThrow(
      'GET /: 200 OK: response field id is not a string',
    );
    fc.answerNext(200, 'not json');
    await expect(client.getMachineConfig()).rejects.toThrow(/response body is not JSON/);
  });

  it('cancels a call the fake never answers with the signal reason, and stays usable', async () => {
    fc.hangNext();
    const ac = new AbortController();
    const call = client.loadSnapshot(uffdLoad, { signal: ac.signal });
    await received(1);
    const reason = new Error('restore cancelled');
    ac.abort(reason);
    await expect(call).rejects.toBe(reason);
    expect((await client.describeInstance()).state).toBe('Not started');
    // Already aborted: rejected before anything is sent.
    await expect(client.pause({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(fc.requests).toHaveLength(2);
  });

  it('times out a call the fake never answers', async () => {
    fc.hangNext();
    const started = Date.now();
    const err = await client.pause({ timeoutMs: 150 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FirecrackerConnectionError);
    expect(err).toMatchObject({
      code: 'LAZYSNAP_FIRECRACKER_CONNECTION',
      timedOut: true,
      method: 'PATCH',
      path: '/vm',
    });
    expect((err as Error).message).toMatch(/no response within 150 ms/);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('gives a typed connection error with the cause when the socket is missing', async () => {
    const { dir, cleanup } = tempDir('lazysnap-fc-missing-');
    const missing = new FirecrackerClient({ socketPath: path.join(dir, 'firecracker.sock') });
    try {
      const err = await missing.describeInstance().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(FirecrackerConnectionError);
      expect(err).toMatchObject({
        code: 'LAZYSNAP_FIRECRACKER_CONNECTION',
        timedOut: false,
        socketPath: path.join(dir, 'firecracker.sock'),
        cause: { code: 'ENOENT' },
      });
      expect((err as Error).message).toMatch(
        /^GET \/: Firecracker API at .*firecracker\.sock: connect ENOENT/,
      );
    } finally {
      await missing.close();
      cleanup();
    }
    await client.close();
    await expect(client.pause()).rejects.toMatchObject({
      code: 'LAZYSNAP_FIRECRACKER_CONNECTION',
      message: expect.stringMatching(/the client is closed$/),
    });
  });

  it('validates arguments at the boundary, before anything is sent', async () => {
    const bad: Array<[() => unknown, RegExp]> = [
      [() => new FirecrackerClient({ socketPath: '' }), /^socketPath must be a non-empty string/],
      [
        () => new FirecrackerClient({ socketPath: `/tmp/${'x'.repeat(120)}` }),
        /^socketPath must be at most 107 bytes/,
      ],
      [
        () => new FirecrackerClient({ socketPath: '/s', timeoutMs: 0 }),
        /^timeoutMs must be an integer >= 1, received 0$/,
      ],
      [
        () => new FirecrackerClient({ socketPath: '/s', socketpath: '/s' } as never),
        /^options must be an object with keys among socketPath, timeoutMs, received "socketpath"$/,
      ],
      [
        () => client.putMachineConfig({ vcpuCount: 33, memSizeMib: 128 }),
        /^config\.vcpuCount must be an integer from 1 to 32, received 33$/,
      ],
      [
        () => client.putMachineConfig({ vcpuCount: 2, memSizeMib: 128, hugePages: '1G' as never }),
        /^config\.hugePages must be one of "None", "2M", received "1G"$/,
      ],
      [
        () => client.createSnapshot({ snapshotPath: '/s', memFilePath: '' }),
        /^params\.memFilePath must be a non-empty string/,
      ],
      [
        () =>
          client.loadSnapshot({
            ...uffdLoad,
            memBackend: { backendType: 'uffd' as never, backendPath: '/u' },
          }),
        /^params\.memBackend\.backendType must be one of "Uffd", "File", received "uffd"$/,
      ],
      [
        () => client.loadSnapshot({ ...uffdLoad, memFilePath: '/m' } as never),
        /^params\.memFilePath must be absent: use memBackend: \{ backendType: 'File', backendPath \}/,
      ],
      [
        () => client.loadSnapshot({ ...uffdLoad, trackDirtyPages: true, enableDiffSnapshots: true }),
        /^params\.enableDiffSnapshots must be absent when trackDirtyPages is given/,
      ],
      [
        () =>
          client.loadSnapshot({
            snapshotPath: '/s',
            memBackend: { backendType: 'Uffd', backend_path: '/u' },
          } as never),
        /^params\.memBackend must be an object with keys among backendType, backendPath, received "backend_path"$/,
      ],
      [() => client.pause({ signal: {} } as CallOptions), /^options\.signal must be an AbortSignal/],
    ];
    for (const [call, message] of bad) {
      // Constructors throw, methods reject: the async wrapper turns both into a rejection.
      const err = await (async () => call())().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, String(message)).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).toMatch(message);
    }
    expect(fc.requests).toEqual([]);
  });

  it('types the wire-facing unions', () => {
    expectTypeOf<LoadSnapshotParams['memBackend']['backendType']>().toEqualTypeOf<'Uffd' | 'File'>();
    expectTypeOf(() => client.describeInstance())
      .returns.resolves.toHaveProperty('state')
      .toEqualTypeOf<'Not started' | 'Running' | 'Paused'>();
    expectTypeOf<CallOptions>().toEqualTypeOf<{ signal?: AbortSignal; timeoutMs?: number }>();
  });
});

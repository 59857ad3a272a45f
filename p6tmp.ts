import path from 'node:path';
import { startClient } from '/work/main/test/helpers/fc-client.js';
import { snapshotTo } from '/work/main/test/helpers/serve.js';
import { startServe } from '/work/main/test/helpers/serve-process.js';
import { writeRandomImage } from '/work/main/bench/lib/image.js';
const dir = '/tmp/p6';
const image = path.join(dir, 'img'); const store = path.join(dir, 'store');
for (let i = 0; i < 4; i++) for (const extra of [[], ['--no-supervisor']]) {
  const sock = path.join(dir, 'run', `s${i}${extra.length}.sock`);
  const sp = await startServe(sock, ['--store', store, '--id', 'p6', ...extra], { dist: true });
  await new Promise((r) => setTimeout(r, 300));
  const out = [];
  for (let k = 0; k < 3; k++) {
  const c = startClient(['--socket', sock, '--image', image, '--touch', 'all', '--order', 'seq', '--threads', '1']);
  c.release();
  const r = await c.result;
  out.push((r.report!.firstTouchNs! / 1e6).toFixed(2));
  }
  console.log(extra.join(' ') || 'supervised', out.join(' '), 'ms');
  await sp.stop();
}

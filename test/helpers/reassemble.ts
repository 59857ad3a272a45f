import type { StoreBackend } from '../../store/backend.js';
import type { KeyProvider } from '../../store/key-provider.js';
import { loadIndex, readChunk } from '../../store/reader.js';

/** Rebuilds a snapshot's full image from the store, verifying every chunk's hash on the way. */
export async function reassemble(store: StoreBackend, id: string, keys?: KeyProvider): Promise<Buffer> {
  const ix = await loadIndex(store, id, undefined, keys ? { keys } : {});
  const out = Buffer.alloc(ix.manifest.totalSize);
  for (let i = 0; i < ix.count; i++) (await readChunk(store, ix, i)).copy(out, i * ix.manifest.chunkSize);
  return out;
}

/** Wraps a store to count the writes that reach it (by key prefix). */
export function countingStore<T extends StoreBackend>(store: T): T & { puts: string[] } {
  const puts: string[] = [];
  return new Proxy(store, {
    get(target, prop, recv) {
      if (prop === 'puts') return puts;
      if (prop === 'put')
        return (key: string, body: Buffer, o?: object) => (puts.push(key), target.put(key, body, o));
      const v = Reflect.get(target, prop, recv) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }) as T & { puts: string[] };
}

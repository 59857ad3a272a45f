/**
 * The WebAssembly globals lazysnap uses. TypeScript declares them only in lib.dom, which a Node
 * project should not pull in (it brings browser globals such as `window` with it).
 */
declare global {
  namespace WebAssembly {
    interface MemoryDescriptor {
      initial: number;
      maximum?: number;
      shared?: boolean;
    }
    class Memory {
      constructor(descriptor: MemoryDescriptor);
      readonly buffer: ArrayBuffer;
      grow(delta: number): number;
    }
    class Module {
      constructor(bytes: BufferSource);
    }
    class Instance {
      constructor(module: Module, imports?: Record<string, Record<string, unknown>>);
      readonly exports: Record<string, unknown>;
    }
    type BufferSource = ArrayBufferView | ArrayBuffer;
  }
}

export {};

/**
 * Memory that O_DIRECT can write from: it must start on a page boundary, which no
 * Node Buffer promises. WebAssembly memories do (V8 maps them by whole pages), so a
 * page-aligned slab is one of those, viewed as a Buffer. This module knows which
 * memory it handed out; it does not pool or reuse it (`BufferPool` does).
 */

/** What O_DIRECT asks of a write's memory, offset and length (the page size covers every device's logical block). */
export const DIRECT_ALIGN = 4096;
const WASM_PAGE = 65536;
/** The most one WebAssembly memory holds. */
export const MAX_ALIGNED_BYTES = 65535 * WASM_PAGE;

// The WebAssembly global of Node (not in the typings this project compiles with).
declare const WebAssembly: { Memory: new (size: { initial: number; maximum: number }) => { readonly buffer: ArrayBuffer } };

/** Memory known to start on a page boundary. */
const pageAligned = new WeakSet<ArrayBufferLike>();

export const alignUp = (n: number, to = DIRECT_ALIGN): number => Math.ceil(n / to) * to;

/**
 * `bytes` (at most MAX_ALIGNED_BYTES) of zeroed, page-aligned memory, its pages taken
 * from the system as they are first touched; undefined when there is no room for it
 * (a `ulimit -v`: each WebAssembly memory reserves several GiB of address space).
 */
export function alignedMemory(bytes: number): Buffer | undefined {
  const pages = Math.ceil(bytes / WASM_PAGE);
  try {
    const { buffer } = new WebAssembly.Memory({ initial: pages, maximum: pages });
    pageAligned.add(buffer);
    return Buffer.from(buffer, 0, bytes);
  } catch {
    return undefined;
  }
}

/**
 * Whether `buf` can be written with O_DIRECT: it starts on a page boundary, and the
 * bytes up to the next page boundary past its end are addressable (a write of the
 * last partial page writes them too, and the file is then truncated to `buf.length`).
 */
export function directWritable(buf: Buffer): boolean {
  return pageAligned.has(buf.buffer) && buf.byteOffset % DIRECT_ALIGN === 0 && buf.byteOffset + alignUp(buf.length) <= buf.buffer.byteLength;
}

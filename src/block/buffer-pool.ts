/**
 * Reuses whole-block buffers. Every `Buffer.allocUnsafe` of a block (4 MiB by default)
 * is a new ArrayBuffer outside V8's heap; a stream of them makes V8 run a full
 * mark-compact every few blocks ("GC in old space requested" at a 24 MB heap), which
 * halved the network read path. A pool keeps `keep` block buffers and hands them out
 * again; more at once are allocated and left to the GC.
 *
 * The pool's own buffers are slots of one page-aligned slab, so that a block in one of
 * them can go to disk with O_DIRECT (see `directWritable`). Its pages are taken from
 * the system only as slots are first used.
 *
 * A buffer may be given back only when nothing else holds it: `giveLater` waits for the
 * current turn of the event loop to end, so readers that obtained the buffer in this
 * turn (through a resolved promise) have copied from it before it can be refilled.
 */

/** What O_DIRECT asks of a write's memory, offset and length here (ext4, xfs: the page size covers every device). */
export const DIRECT_ALIGN = 4096;
const WASM_PAGE = 65536;
const WASM_MAX_PAGES = 65535;

/** Memory known to start on a page boundary: WebAssembly memories, which V8 maps by whole pages. */
const pageAligned = new WeakSet<ArrayBufferLike>();

// The WebAssembly global of Node (not in the typings this project compiles with).
declare const WebAssembly: { Memory: new (size: { initial: number; maximum: number }) => { readonly buffer: ArrayBuffer } };

const alignUp = (n: number, to: number): number => Math.ceil(n / to) * to;

/**
 * Whether `buf` can be written with O_DIRECT: it starts on a page boundary, and the
 * bytes up to the next page boundary past its end are addressable (a write of the
 * last partial page writes them too, and the file is then truncated to `buf.length`).
 */
export function directWritable(buf: Buffer): boolean {
  return pageAligned.has(buf.buffer) && buf.byteOffset % DIRECT_ALIGN === 0 && buf.byteOffset + alignUp(buf.length, DIRECT_ALIGN) <= buf.buffer.byteLength;
}

export class BufferPool {
  /** Slot numbers free for `take`. */
  private readonly free: number[] = [];
  private slab?: Buffer;
  private slots = 0;
  private readonly slotSize: number;
  private readonly capacity: number;

  /** `size`: the length of pooled buffers; `keep`: how many the pool holds. */
  constructor(readonly size: number, keep: number) {
    this.slotSize = alignUp(size, DIRECT_ALIGN);
    this.capacity = Math.max(0, Math.min(keep, Math.floor((WASM_MAX_PAGES * WASM_PAGE) / this.slotSize)));
  }

  /** A buffer of `length` bytes, uninitialised; a slot of the pool when `length` is at most the pool's size and one is free. */
  take(length: number): Buffer {
    if (length > this.size) return Buffer.allocUnsafeSlow(length);
    const slot = this.free.pop() ?? this.newSlot();
    if (slot === undefined) return Buffer.allocUnsafeSlow(length);
    const at = slot * this.slotSize;
    return this.slab!.subarray(at, at + length);
  }

  /** Gives `buf` back once this turn of the event loop is over; buffers that are not the pool's are left to GC. */
  giveLater(buf: Buffer): void {
    const slab = this.slab;
    if (!slab || buf.buffer !== slab.buffer || (buf.byteOffset - slab.byteOffset) % this.slotSize !== 0) return;
    const slot = (buf.byteOffset - slab.byteOffset) / this.slotSize;
    setImmediate(() => this.free.push(slot));
  }

  get freeCount(): number {
    return this.free.length;
  }

  private newSlot(): number | undefined {
    if (this.slots >= this.capacity) return undefined;
    if (!this.slab) {
      const pages = Math.ceil((this.capacity * this.slotSize) / WASM_PAGE);
      let memory: { readonly buffer: ArrayBuffer };
      try {
        memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
      } catch {
        // No address space for it (e.g. a ulimit -v): unpooled buffers still work, written through the page cache.
        this.slots = this.capacity;
        return undefined;
      }
      pageAligned.add(memory.buffer);
      this.slab = Buffer.from(memory.buffer);
    }
    return this.slots++;
  }
}

/**
 * BufferPool: block buffers are reused, but never while the turn that gave one back
 * is still running (a reader that got the block in this turn copies from it first);
 * the pool's buffers start on page boundaries, so O_DIRECT can write them.
 */
import { closeSync, constants, openSync, readFileSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { DIRECT_ALIGN, directWritable } from '../src/block/aligned-memory.js';
import { BufferPool } from '../src/block/buffer-pool.js';

const sameMemory = (a: Buffer, b: Buffer): boolean => a.buffer === b.buffer && a.byteOffset === b.byteOffset;

describe('BufferPool', () => {
  it('hands a given-back block buffer out again, only after the current turn', async () => {
    const pool = new BufferPool(1024, 2);
    const a = pool.take(1024);
    a.fill(7);
    pool.giveLater(a);
    // Same turn: still in use by whoever read it, so another buffer comes out.
    const b = pool.take(1024);
    expect(sameMemory(a, b)).toBe(false);
    b.fill(9);
    expect(a.every((x) => x === 7)).toBe(true);
    await nextTurn();
    expect(pool.freeCount).toBe(1);
    expect(sameMemory(pool.take(1024), a)).toBe(true);
    expect(pool.freeCount).toBe(0);
  });

  it('owns `keep` buffers: more at once are plain allocations, and buffers not its own are never pooled', async () => {
    const pool = new BufferPool(1024, 2);
    const taken = [pool.take(1024), pool.take(1024), pool.take(1024)];
    expect(taken.map((b) => b.buffer === taken[0]!.buffer)).toEqual([true, true, false]);
    for (const buf of taken) pool.giveLater(buf);
    pool.giveLater(Buffer.allocUnsafeSlow(1024));
    pool.giveLater(taken[0]!.subarray(512)); // a view inside a slot is not a slot
    await nextTurn();
    expect(pool.freeCount).toBe(2);
    // A shorter buffer (a file's last block) is a slot too.
    const small = pool.take(100);
    expect(small.length).toBe(100);
    expect(pool.freeCount).toBe(1);
    // Longer than the pool's size: allocated.
    expect(pool.take(2048).buffer).not.toBe(small.buffer);
  });

  it('hands out buffers that O_DIRECT writes as they are, and tells which others it could not', async () => {
    const size = 3 * DIRECT_ALIGN + 100;
    const pool = new BufferPool(size, 3);
    const bufs = [pool.take(size), pool.take(size), pool.take(5000)];
    for (const buf of bufs) expect(directWritable(buf)).toBe(true);
    expect(directWritable(bufs[0]!.subarray(1))).toBe(false);
    expect(directWritable(Buffer.allocUnsafeSlow(size))).toBe(false);
    expect(directWritable(pool.take(size))).toBe(false); // past the pool's buffers: allocated, unaligned
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-direct-'));
    try {
      for (const [i, buf] of bufs.entries()) {
        buf.fill(i + 1);
        const file = path.join(dir, `b${i}`);
        const fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT);
        try {
          // The kernel refuses (EINVAL) memory that is not aligned; the padding up to the page is the slot's own.
          const padded = Math.ceil(buf.length / DIRECT_ALIGN) * DIRECT_ALIGN;
          expect(writeSync(fd, Buffer.from(buf.buffer, buf.byteOffset, padded), 0, padded, 0)).toBe(padded);
        } finally {
          closeSync(fd);
        }
        expect(readFileSync(file).subarray(0, buf.length).equals(buf)).toBe(true);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

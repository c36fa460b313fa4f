/**
 * MemoryBlocks gives every block's buffer back to the pool when the block leaves
 * memory, however it leaves: the pool owns a fixed number of buffers, and one that is
 * never given back is lost to every later fetch.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { BufferPool } from '../src/block/buffer-pool.js';
import { MemoryBlocks } from '../src/cache/memory-blocks.js';

const KiB = 1024;

function fill(pool: BufferPool, byte: number) {
  return async () => ({ data: pool.take(KiB).fill(byte), from: 'ufs' as const });
}

describe('MemoryBlocks', () => {
  it('gives a block\'s buffer back when it is read to the end, pushed out, or cleared', async () => {
    const pool = new BufferPool(KiB, 3);
    const memory = new MemoryBlocks(2 * KiB, pool);
    await memory.load('a', fill(pool, 1));
    await memory.load('b', fill(pool, 2));
    memory.consumed('a', KiB);
    await nextTurn();
    expect(pool.freeCount).toBe(1);
    await memory.load('c', fill(pool, 3));
    await memory.load('d', fill(pool, 4)); // pushes b out
    await nextTurn();
    expect(memory.get('b')).toBeUndefined();
    expect(pool.freeCount).toBe(1);
    memory.clear();
    await nextTurn();
    expect(pool.freeCount).toBe(3);
  });

  it('gives back the buffer of a block larger than the whole budget once its callers have it', async () => {
    const pool = new BufferPool(KiB, 1);
    const memory = new MemoryBlocks(KiB / 2, pool);
    const held = await memory.load('a', fill(pool, 5));
    expect(held.data.every((x) => x === 5)).toBe(true);
    expect(memory.get('a')).toBeUndefined();
    await nextTurn();
    expect(pool.freeCount).toBe(1);
  });
});

/**
 * BufferPool: block buffers are reused, but never while the turn that gave one back
 * is still running (a reader that got the block in this turn copies from it first).
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { BufferPool } from '../src/block/buffer-pool.js';

describe('BufferPool', () => {
  it('hands a given-back block buffer out again, only after the current turn', async () => {
    const pool = new BufferPool(1024, 2);
    const a = pool.take(1024);
    a.fill(7);
    pool.giveLater(a);
    // Same turn: still in use by whoever read it, so a fresh buffer comes out.
    const b = pool.take(1024);
    expect(b).not.toBe(a);
    expect(a.every((x) => x === 7)).toBe(true);
    await nextTurn();
    expect(pool.freeCount).toBe(1);
    expect(pool.take(1024)).toBe(a);
    expect(pool.freeCount).toBe(0);
  });

  it('keeps at most `keep` free buffers and ignores other sizes and views', async () => {
    const pool = new BufferPool(1024, 2);
    for (const buf of [pool.take(1024), pool.take(1024), pool.take(1024)]) pool.giveLater(buf);
    pool.giveLater(Buffer.allocUnsafeSlow(512));
    pool.giveLater(Buffer.allocUnsafeSlow(2048).subarray(0, 1024));
    pool.giveLater(Buffer.allocUnsafeSlow(2048).subarray(1024));
    await nextTurn();
    expect(pool.freeCount).toBe(2);
    const small = pool.take(100);
    expect(small.length).toBe(100);
    expect(pool.freeCount).toBe(2);
  });
});

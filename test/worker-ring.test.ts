/**
 * `WorkerRing`, the rendezvous hashing of blocks over a cache group's workers: the
 * order does not depend on how the members were listed, every worker owns a fair
 * share, and a worker joining or leaving moves only its own share of the blocks,
 * leaving every other block's fallback order as it was.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { WorkerRing, type RingMember } from '../src/client/worker-ring.js';

const BLOCKS = Array.from({ length: 2000 }, (_, i) => createHash('sha1').update(`block ${i}`).digest('hex'));
const members = (...ids: string[]): RingMember[] => ids.map((id) => ({ id }));
const ids = (ms: readonly RingMember[]): string[] => ms.map((m) => m.id);

describe('WorkerRing', () => {
  it('orders the workers of a block the same however they are listed, the owner first', () => {
    const a = new WorkerRing(members('w1', 'w2', 'w3', 'w4', 'w5'));
    const b = new WorkerRing(members('w4', 'w2', 'w5', 'w1', 'w3'));
    const orders = new Set<string>();
    for (const block of BLOCKS.slice(0, 500)) {
      const order = ids(a.order(block));
      expect(ids(b.order(block))).toEqual(order);
      expect([...order].sort()).toEqual(['w1', 'w2', 'w3', 'w4', 'w5']);
      expect(a.owner(block)?.id).toBe(order[0]);
      orders.add(order.join(','));
    }
    // The order depends on the block: many of the 120 orders of five workers occur.
    expect(orders.size).toBeGreaterThan(60);
  });

  it('gives every worker a fair share of the blocks', () => {
    const ring = new WorkerRing(members('w1', 'w2', 'w3', 'w4'));
    const owned = new Map<string, number>();
    for (const block of BLOCKS) owned.set(ring.owner(block)!.id, (owned.get(ring.owner(block)!.id) ?? 0) + 1);
    expect([...owned.keys()].sort()).toEqual(['w1', 'w2', 'w3', 'w4']);
    // 500 each on average; a binomial spread of 2000 blocks stays well inside ±15%.
    for (const n of owned.values()) expect(Math.abs(n - 500)).toBeLessThan(75);
  });

  it('moves only the blocks the joining worker takes, and keeps every other order', () => {
    const before = new WorkerRing(members('w1', 'w2', 'w3', 'w4'));
    const after = new WorkerRing(members('w1', 'w2', 'w3', 'w4', 'w5'));
    let moved = 0;
    for (const block of BLOCKS) {
      const was = before.owner(block)!.id;
      const is = after.owner(block)!.id;
      if (was !== is) {
        moved++;
        expect(is).toBe('w5');
      }
      // The old workers keep their relative order: fallbacks do not reshuffle.
      expect(ids(after.order(block)).filter((id) => id !== 'w5')).toEqual(ids(before.order(block)));
    }
    // The newcomer's fair share, a fifth.
    expect(Math.abs(moved - BLOCKS.length / 5)).toBeLessThan(BLOCKS.length * 0.04);
  });

  it('hands a leaving worker\'s blocks each to its next worker in order, and moves nothing else', () => {
    const before = new WorkerRing(members('w1', 'w2', 'w3', 'w4'));
    const after = new WorkerRing(members('w1', 'w3', 'w4'));
    let moved = 0;
    for (const block of BLOCKS) {
      const order = ids(before.order(block));
      expect(ids(after.order(block))).toEqual(order.filter((id) => id !== 'w2'));
      if (order[0] === 'w2') {
        moved++;
        expect(after.owner(block)!.id).toBe(order[1]);
      } else expect(after.owner(block)!.id).toBe(order[0]);
    }
    expect(Math.abs(moved - BLOCKS.length / 4)).toBeLessThan(BLOCKS.length * 0.04);
  });

  it('has no owner and no order when empty, and one worker owns everything alone', () => {
    const empty = new WorkerRing<RingMember>([]);
    expect(empty.size).toBe(0);
    expect(empty.owner(BLOCKS[0]!)).toBeUndefined();
    expect(empty.order(BLOCKS[0]!)).toEqual([]);
    const one = new WorkerRing(members('solo'));
    for (const block of BLOCKS.slice(0, 50)) expect(ids(one.order(block))).toEqual(['solo']);
  });

  it('keeps the records it was given, listed by id', () => {
    const records = [{ id: 'b', address: '127.0.0.1:2' }, { id: 'a', address: '127.0.0.1:1' }];
    const ring = new WorkerRing(records);
    expect(ring.all).toEqual([records[1], records[0]]);
    expect(ring.order(BLOCKS[0]!).every((w) => records.includes(w))).toBe(true);
  });
});

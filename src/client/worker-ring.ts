/**
 * `WorkerRing`: rendezvous (highest-random-weight) hashing of block ids over the
 * live workers of a cache group. Each block's workers are ordered by a hash of
 * (worker id, block id): adding or losing a worker moves only that worker's
 * share of blocks, and the order is the fallback order when the owner fails.
 */
import { createHash } from 'node:crypto';

export interface RingMember {
  id: string;
}

export class WorkerRing<W extends RingMember> {
  private readonly members: readonly W[];

  constructor(members: readonly W[]) {
    this.members = [...members].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  get size(): number {
    return this.members.length;
  }

  get all(): readonly W[] {
    return this.members;
  }

  /** The owner of a block, or undefined for an empty ring. */
  owner(blockId: string): W | undefined {
    let best: W | undefined;
    let bestScore = -1n;
    for (const m of this.members) {
      const s = score(m.id, blockId);
      if (s > bestScore) {
        best = m;
        bestScore = s;
      }
    }
    return best;
  }

  /** Every member, most preferred first: the owner, then who takes over if it fails. */
  order(blockId: string): W[] {
    return this.members
      .map((m) => ({ m, s: score(m.id, blockId) }))
      .sort((a, b) => (a.s > b.s ? -1 : a.s < b.s ? 1 : 0))
      .map((x) => x.m);
  }
}

function score(memberId: string, blockId: string): bigint {
  return createHash('sha256').update(memberId).update('\0').update(blockId).digest().readBigUInt64BE(0);
}

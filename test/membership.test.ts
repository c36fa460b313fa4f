/**
 * `Membership`, a client's view of its cache group, against a real master on
 * 127.0.0.1: the live workers of its own group as a rendezvous ring, refreshed as
 * workers join and leave; a worker that failed a read is skipped (the next in
 * rendezvous order comes first) and the master asked at once, until the worker
 * registers again or its suspicion runs out; the last ring stays while the master
 * is down.
 */
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { RegisterWorkerRequest } from '../src/master/api.js';
import { MasterClient } from '../src/master/client.js';
import { MemoryMetaStore } from '../src/master/memory-store.js';
import { MasterServer } from '../src/master/server.js';
import { Membership } from '../src/client/membership.js';
import { silentLogger } from '../src/log.js';
import { waitFor } from './support/processes.js';

const BLOCK = createHash('sha1').update('a block').digest('hex');
const opened: { close(): Promise<void> }[] = [];

afterEach(async () => {
  for (const x of opened.splice(0).reverse()) await x.close();
});

async function cluster(): Promise<{ master: MasterServer; client: MasterClient; register(id: string, extra?: Partial<RegisterWorkerRequest>): Promise<void> }> {
  const master = await MasterServer.start({ store: new MemoryMetaStore(), host: '127.0.0.1', port: 0, workerTimeoutMs: 60_000, withProcessMetrics: false });
  opened.push(master);
  const client = new MasterClient(`127.0.0.1:${master.port}`, { retries: 0, timeoutMs: 1000 });
  opened.push(client);
  const register = async (id: string, extra: Partial<RegisterWorkerRequest> = {}): Promise<void> => {
    await client.registerWorker({
      id,
      cacheGroup: 'g',
      address: `127.0.0.1:${30000 + Number(id.replace(/\D/g, '') || 0)}`,
      hostname: 'node-a',
      domainSocketPath: '',
      startedAt: 1000,
      instance: `${id}-first`,
      capacityBytes: 100,
      usedBytes: 0,
      blocks: 0,
      tiers: [],
      ...extra,
    });
  };
  return { master, client, register };
}

async function membership(client: MasterClient, intervalMs: number, group = 'g'): Promise<Membership> {
  const m = new Membership(client, group, silentLogger, intervalMs);
  opened.push(m);
  await m.start();
  return m;
}

const ids = (ws: readonly { id: string }[]): string[] => ws.map((w) => w.id);

describe('Membership', () => {
  it('starts with the live workers of its own cache group, as a rendezvous ring', async () => {
    const { client, register } = await cluster();
    await register('w1');
    await register('w2');
    await register('w3', { cacheGroup: 'other' });
    const m = await membership(client, 60_000);
    expect(ids(m.ring.all)).toEqual(['w1', 'w2']);
    expect(ids(m.candidates(BLOCK))).toEqual(ids(m.ring.order(BLOCK)));
    expect(ids(m.candidates(BLOCK)).sort()).toEqual(['w1', 'w2']);
  });

  it('takes in a worker that joins and lets go of one that leaves, on its next poll', async () => {
    const { client, register } = await cluster();
    await register('w1');
    await register('w2');
    const m = await membership(client, 50);
    await register('w3');
    await waitFor(() => m.ring.size === 3, { timeoutMs: 5000, what: 'w3 in the ring' });
    await client.removeWorker('w1');
    await waitFor(() => !ids(m.ring.all).includes('w1'), { timeoutMs: 5000, what: 'w1 out of the ring' });
    expect(ids(m.ring.all)).toEqual(['w2', 'w3']);
    expect(ids(m.candidates(BLOCK)).sort()).toEqual(['w2', 'w3']);
  });

  it('skips a suspect worker, the next in rendezvous order first, and asks the master at once', async () => {
    const { client, register } = await cluster();
    for (const id of ['w1', 'w2', 'w3', 'w4']) await register(id);
    // No poll comes by itself during the test: only suspicion makes the membership ask.
    const m = await membership(client, 60_000);
    const order = ids(m.ring.order(BLOCK));
    m.suspect(order[0]!);
    expect(ids(m.candidates(BLOCK))).toEqual(order.slice(1));
    m.suspect(order[2]!);
    expect(ids(m.candidates(BLOCK))).toEqual([order[1], order[3]]);
    // The master no longer lists the third; a suspicion makes the membership find out now.
    await client.removeWorker(order[3]!);
    m.suspect(order[1]!);
    await waitFor(() => !ids(m.ring.all).includes(order[3]!), { timeoutMs: 3000, what: 'the ring to lose the removed worker' });
    expect(m.candidates(BLOCK)).toEqual([]);
  });

  it('trusts a suspect again once it registers anew, and the others after five seconds', async () => {
    const { client, register } = await cluster();
    await register('w1');
    await register('w2');
    const m = await membership(client, 100);
    m.suspect('w1');
    m.suspect('w2');
    expect(m.candidates(BLOCK)).toEqual([]);
    // Still suspect across polls while nothing changes...
    await sleep(300);
    expect(m.candidates(BLOCK)).toEqual([]);
    // ...until w1's process starts again (a new instance; the master lets the id go first):
    // the master's news clears it.
    await client.removeWorker('w1');
    await register('w1', { startedAt: 2000, instance: 'w1-second' });
    await waitFor(() => ids(m.candidates(BLOCK)).includes('w1'), { timeoutMs: 3000, what: 'w1 trusted again' });
    expect(ids(m.candidates(BLOCK))).toEqual(['w1']);
    await waitFor(() => m.candidates(BLOCK).length === 2, { timeoutMs: 7000, intervalMs: 200, what: 'w2 trusted again' });
  }, 15_000);

  it('keeps the last ring while the master is down, and starts empty without one', async () => {
    const { master, client, register } = await cluster();
    await register('w1');
    await register('w2');
    const m = await membership(client, 50);
    await master.close();
    await sleep(300);
    expect(ids(m.ring.all)).toEqual(['w1', 'w2']);
    expect(m.candidates(BLOCK)).toHaveLength(2);
    // A mount whose master does not answer starts anyway and reads from the UFS.
    const alone = await membership(client, 50);
    expect(alone.ring.size).toBe(0);
    expect(alone.candidates(BLOCK)).toEqual([]);
  });
});

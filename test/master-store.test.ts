/**
 * The MetaStore contract, run against both implementations, and the LMDB
 * store's persistence across close and reopen of the same meta dir.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LmdbMetaStore } from '../src/master/lmdb-store.js';
import { MemoryMetaStore } from '../src/master/memory-store.js';
import type { MetaStore } from '../src/master/meta-store.js';

const dirs: string[] = [];
const open: MetaStore[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-meta-'));
  dirs.push(dir);
  return dir;
}

afterEach(async () => {
  for (const s of open.splice(0)) await s.close().catch(() => undefined);
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

const implementations: [string, () => Promise<MetaStore>][] = [
  ['memory', async () => new MemoryMetaStore()],
  ['lmdb', async () => LmdbMetaStore.open(await tempDir())],
];

describe.each(implementations)('%s meta store', (_name, create) => {
  async function store(): Promise<MetaStore> {
    const s = await create();
    open.push(s);
    return s;
  }

  it('gets what was put and nothing for unknown keys', async () => {
    const s = await store();
    await s.put('mount//data', { uri: 's3://bucket/p', options: { 's3.endpoint': 'http://x' } });
    expect(await s.get('mount//data')).toEqual({ uri: 's3://bucket/p', options: { 's3.endpoint': 'http://x' } });
    expect(await s.get('mount//other')).toBeUndefined();
  });

  it('lists by key prefix in key order, and only that prefix', async () => {
    const s = await store();
    await s.put('worker/b', 2);
    await s.put('worker/a', 1);
    await s.put('workers', 'not a worker');
    await s.put('mount//x', 3);
    expect(await s.list('worker/')).toEqual([
      { key: 'worker/a', value: 1 },
      { key: 'worker/b', value: 2 },
    ]);
    expect(await s.list('nothing/')).toEqual([]);
  });

  it('deletes and says whether the key existed', async () => {
    const s = await store();
    await s.put('k', 'v');
    expect(await s.delete('k')).toBe(true);
    expect(await s.delete('k')).toBe(false);
    expect(await s.get('k')).toBeUndefined();
  });

  it('commits a batch of puts and deletes together', async () => {
    const s = await store();
    await s.put('worker/old', 1);
    await s.commit([{ key: 'worker/a', value: { state: 'lost' } }, { key: 'worker/old', delete: true }, { key: 'worker/b', value: [1, 2] }]);
    expect(await s.list('worker/')).toEqual([
      { key: 'worker/a', value: { state: 'lost' } },
      { key: 'worker/b', value: [1, 2] },
    ]);
  });

  it('refuses calls after close', async () => {
    const s = await create();
    await s.close();
    await expect(s.get('k')).rejects.toMatchObject({ code: 'IO' });
  });
});

describe('lmdb meta store', () => {
  it('keeps everything across close and reopen of the same meta dir', async () => {
    const dir = await tempDir();
    const first = await LmdbMetaStore.open(dir);
    await first.put('mount//data', { uri: 's3://bucket/data' });
    await first.commit([{ key: 'worker/w1', value: { id: 'w1' } }, { key: 'worker/w2', value: { id: 'w2' } }]);
    await first.delete('worker/w2');
    await first.close();

    const second = await LmdbMetaStore.open(dir);
    open.push(second);
    expect(await second.get('mount//data')).toEqual({ uri: 's3://bucket/data' });
    expect(await second.list('worker/')).toEqual([{ key: 'worker/w1', value: { id: 'w1' } }]);
  });

  it('creates a missing meta dir, even one whose name has a dot', async () => {
    const dir = path.join(await tempDir(), 'nested', 'meta.d');
    const s = await LmdbMetaStore.open(dir);
    open.push(s);
    await s.put('k', 1);
    expect(await s.get('k')).toBe(1);
  });
});

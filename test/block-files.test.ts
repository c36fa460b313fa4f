/**
 * Block files are checked whole before their first bytes are served, and the verdict is
 * remembered by device, inode and ctime after their fd is closed: reopened unchanged,
 * a file is not read and hashed again; written to, it is. A file the store wrote itself is
 * taken on the store's word (its identity right after the write, the checksum of the bytes
 * written) and not read back, until it changes.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile, open as openFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockChecksumError, BlockFiles, type BlockFile } from '../src/cache/block-files.js';
import { blockSum } from '../src/block/checksum.js';
import { TieredStore } from '../src/cache/tiered-store.js';
import { silentLogger } from '../src/log.js';
import { Metrics } from '../src/metrics/metrics.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-block-files-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function blockFile(name: string, bytes: Buffer): Promise<BlockFile> {
  const file = path.join(dir, name);
  await writeFile(file, bytes);
  return { id: name, path: file, length: bytes.length, sum: blockSum(bytes) };
}

async function readAll(files: BlockFiles, file: BlockFile): Promise<Buffer> {
  const dest = Buffer.alloc(file.length);
  await files.read(file, dest, 0, file.length, 0);
  return dest;
}

describe('BlockFiles', () => {
  it('checks a file once while it is unchanged, even after its fd was closed, and again once it was written to', async () => {
    const aBytes = randomBytes(64 * 1024);
    const a = await blockFile('a', aBytes);
    const b = await blockFile('b', randomBytes(64 * 1024));
    const files = new BlockFiles(1); // one idle fd: reading b closes a's
    expect(await readAll(files, a)).toEqual(aBytes);
    await readAll(files, b);
    expect(files.wholeChecks).toBe(2);
    expect(await readAll(files, a)).toEqual(aBytes);
    expect(files.wholeChecks).toBe(2);

    await readAll(files, b); // closes a's fd again
    // A byte flipped in place moves the ctime: the next open checks the whole file again and finds it.
    const handle = await openFile(a.path, 'r+');
    await handle.write(Buffer.from([aBytes[100]! ^ 0xff]), 0, 1, 100);
    await handle.close();
    await expect(readAll(files, a)).rejects.toBeInstanceOf(BlockChecksumError);
    expect(files.wholeChecks).toBe(3);
  });

  it('takes a block the store wrote on its word, and still finds bytes changed after the write', async () => {
    const store = new TieredStore({ tiers: [{ medium: 'SSD', dir: path.join(dir, 'tier'), quotaBytes: 64 << 20 }], high: 0.9, low: 0.7 }, new Metrics(false), silentLogger);
    await store.open();
    try {
      const files = new BlockFiles(1);
      store.onWritten((id, identity, sum) => files.vouch(id, identity, sum));
      const bytes = [randomBytes(64 * 1024), randomBytes(64 * 1024)];
      const ids = ['c'.repeat(40), 'd'.repeat(40)];
      const stored = [await store.put(ids[0]!, bytes[0]!), await store.put(ids[1]!, bytes[1]!)];
      const file = (i: number): BlockFile => ({ id: ids[i]!, path: stored[i]!.path, length: bytes[i]!.length, sum: stored[i]!.sum });
      expect(await readAll(files, file(0))).toEqual(bytes[0]);
      expect(await readAll(files, file(1))).toEqual(bytes[1]); // closes c's fd
      expect(files.wholeChecks).toBe(0);

      const handle = await openFile(stored[0]!.path, 'r+');
      await handle.write(Buffer.from([bytes[0]![7]! ^ 0xff]), 0, 1, 7);
      await handle.close();
      await expect(readAll(files, file(0))).rejects.toBeInstanceOf(BlockChecksumError);
      expect(files.wholeChecks).toBe(1);
    } finally {
      await store.close();
    }
  });
});

/**
 * BlockClient's read of a range that spans blocks: one block read per block, and the
 * read settles only when all of them have.
 */
import { describe, expect, it } from 'vitest';
import { BlockClient } from '../src/client/block-client.js';
import type { BlockRead, BlockSource } from '../src/client/block-source.js';
import { CachefsError } from '../src/errors.js';

const MiB = 1024 * 1024;
const object = { mount: 'm', key: 'k', etag: 'e', size: 4 * MiB };
const openFile = (client: BlockClient) => ({ id: 1, signal: new AbortController().signal, object, readahead: client.newReadahead() });

describe('BlockClient', () => {
  it('fails a read spanning two blocks only after the other block read has stopped writing into its buffer', async () => {
    let lateWriteDone = false;
    const source: BlockSource = {
      read: async (req: BlockRead) => {
        if (req.ref.index === 0) throw new CachefsError('IO', 'block 0 is unreadable');
        await new Promise((r) => setTimeout(r, 50));
        req.dest.fill(7, req.destOffset, req.destOffset + req.length);
        lateWriteDone = true;
        return req.length;
      },
      prefetch: () => undefined,
      close: async () => undefined,
    };
    const client = new BlockClient(source, { blockSize: MiB, readaheadBytes: 0 });
    const dest = Buffer.alloc(MiB);
    const read = client.read(openFile(client), { position: MiB / 2, length: MiB, dest });
    await expect(read).rejects.toThrow('block 0 is unreadable');
    expect(lateWriteDone).toBe(true);
  });

  it('adds up the bytes of every block a read spans', async () => {
    const source: BlockSource = {
      read: async (req: BlockRead) => {
        req.dest.fill(req.ref.index + 1, req.destOffset, req.destOffset + req.length);
        return req.length;
      },
      prefetch: () => undefined,
      close: async () => undefined,
    };
    const client = new BlockClient(source, { blockSize: MiB, readaheadBytes: 0 });
    const dest = Buffer.alloc(MiB);
    expect(await client.read(openFile(client), { position: MiB / 2, length: MiB, dest })).toBe(MiB);
    expect(dest[0]).toBe(1);
    expect(dest[MiB / 2 - 1]).toBe(1);
    expect(dest[MiB / 2]).toBe(2);
    expect(dest[MiB - 1]).toBe(2);
  });
});

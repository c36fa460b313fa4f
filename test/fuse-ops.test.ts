/**
 * The FUSE ops as the kernel drives them, request by request, against a filesystem and a
 * session that only record: the init the kernel gets, lookups that name nodes the kernel
 * can forget, and reads of one file that wait their turn without stalling the ones that
 * need not wait. (Mounted behaviour is in the mount suites.)
 */
import { describe, expect, it } from 'vitest';
import { createLogger } from '../src/log.js';
import { Metrics } from '../src/metrics/metrics.js';
import { FuseOps } from '../src/fuse/ops.js';
import { IN_HEADER, Op, putU64, type RequestHeader } from '../src/fuse/protocol.js';
import type { FuseSession } from '../src/fuse/session.js';
import type { Filesystem } from '../src/vfs/filesystem.js';
import type { Attr } from '../src/vfs/entry.js';
import { CachefsError } from '../src/errors.js';

interface Reply {
  unique: number;
  error: number;
  body: Buffer;
}

function harness(fs: Partial<Filesystem>) {
  const replies: Reply[] = [];
  const session = {
    deviceId: undefined,
    begin: () => undefined,
    reply: (unique: number, error: number, ...body: Buffer[]) => replies.push({ unique, error, body: Buffer.concat(body) }),
  } as unknown as FuseSession;
  const ops = new FuseOps(fs as Filesystem, session, { attrTimeoutSec: 1, entryTimeoutSec: 1, maxReadahead: 8 << 20 }, new Metrics(), createLogger('silent'));
  let unique = 0;
  const send = (opcode: number, nodeid: number, body: Buffer): number => {
    const header: RequestHeader = { len: IN_HEADER + body.length, opcode, unique: (unique += 2), nodeid, uid: 0, gid: 0, pid: 1 };
    ops.request(header, body);
    return header.unique;
  };
  const read = (fh: number, offset: number, size: number): number => {
    const body = Buffer.alloc(40);
    putU64(body, 0, fh);
    putU64(body, 8, offset);
    body.writeUInt32LE(size, 16);
    return send(Op.READ, 1, body);
  };
  return { replies, send, read };
}

const fileAttr: Attr = { mode: 0o100444, size: 10, mtimeMs: 1_700_000_000_123, nlink: 1, uid: 0, gid: 0, blocks: 1, blksize: 4096 };

describe('FUSE ops', () => {
  it('asks the kernel for 1 MiB reads and the readahead it was given, among the flags the kernel offers', () => {
    const { replies, send } = harness({});
    const init = Buffer.alloc(64);
    init.writeUInt32LE(7, 0);
    init.writeUInt32LE(40, 4);
    init.writeUInt32LE(0xffffffff, 12); // the kernel offers everything
    send(Op.INIT, 0, init);
    const out = replies[0]!.body;
    expect(replies[0]!.error).toBe(0);
    expect(out.readUInt32LE(8)).toBe(8 << 20); // max_readahead
    expect(out.readUInt32LE(12) & (1 << 22)).not.toBe(0); // FUSE_MAX_PAGES
    expect(out.readUInt16LE(28)).toBe(256); // max_pages: 1 MiB
    const none = Buffer.alloc(64);
    none.writeUInt32LE(7, 0);
    none.writeUInt32LE(40, 4);
    send(Op.INIT, 0, none);
    expect(replies[1]!.body.readUInt32LE(12)).toBe(0); // nothing the kernel did not offer
  });

  it('gives a name looked up twice one node id, and a new one once the kernel forgot it', async () => {
    const { replies, send } = harness({
      getattr: async (path: string) => {
        if (path === '/a.bin') return fileAttr;
        throw new CachefsError('NOT_FOUND', `no such file or directory: ${path}`);
      },
    });
    const name = (n: string): Buffer => Buffer.from(`${n}\0`);
    const settle = (): Promise<void> => new Promise((r) => setImmediate(r));
    const lookup = async (n: string): Promise<Reply> => {
      send(Op.LOOKUP, 1, name(n));
      await settle();
      return replies.at(-1)!;
    };
    const first = await lookup('a.bin');
    const id = Number(first.body.readBigUInt64LE(0));
    expect(id).toBeGreaterThan(1);
    expect(Number(first.body.readBigUInt64LE(40))).toBe(id); // attr.ino
    expect(Number(first.body.readBigUInt64LE(40 + 8))).toBe(10); // attr.size
    expect(first.body.readUInt32LE(40 + 52)).toBe(123_000_000); // mtime nanoseconds
    expect(Number((await lookup('a.bin')).body.readBigUInt64LE(0))).toBe(id);
    const forget = Buffer.alloc(8);
    putU64(forget, 0, 2);
    send(Op.FORGET, id, forget);
    expect(Number((await lookup('a.bin')).body.readBigUInt64LE(0))).not.toBe(id);
    expect((await lookup('missing')).error).toBe(-2); // ENOENT
  });

  it('queues the reads of a file past eight waiting ones, and answers every queued one once they settle, including those answered from memory', async () => {
    const waiting: (() => void)[] = [];
    let calls = 0;
    const { replies, read } = harness({
      // The first eight wait for their bytes; the rest are in memory and answered at once.
      read: (_fh: number, dest: Buffer, length: number) => {
        calls += 1;
        if (calls <= 8) return new Promise<number>((resolve) => waiting.push(() => resolve(dest.fill(1, 0, length) && length)));
        return length;
      },
    });
    const sent = Array.from({ length: 20 }, (_, i) => read(7, i * 4096, 4096));
    expect(calls).toBe(8); // the other twelve wait their turn
    expect(replies).toHaveLength(0);
    waiting.shift()!();
    await new Promise((r) => setImmediate(r));
    // One waiting read settled: every queued read that needs no wait is taken at once.
    expect(calls).toBe(20);
    expect(replies.map((r) => r.unique).sort((a, b) => a - b)).toEqual(sent.slice(0, 1).concat(sent.slice(8)).sort((a, b) => a - b));
    for (const w of waiting.splice(0)) w();
    await new Promise((r) => setImmediate(r));
    expect(replies).toHaveLength(20);
    expect(replies.every((r) => r.error === 0 && r.body.length === 4096)).toBe(true);
  });
});

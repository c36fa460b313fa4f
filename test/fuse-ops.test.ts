/**
 * The FUSE ops as the kernel drives them, request by request, against a filesystem that
 * only records and the real request table writing into a list: INIT's negotiation, the
 * requests refused before any op runs (before INIT, after DESTROY, too short), BATCH_FORGET
 * checked against its body, and INTERRUPT answering a waiting read EINTR at once while the
 * read's own answer is dropped (or its request, when the INTERRUPT was read first). (Mounted behaviour is in the mount suites.)
 */
import { constants } from 'node:os';
import { describe, expect, it } from 'vitest';
import { CachefsError } from '../src/errors.js';
import { FuseOps, type FuseFilesystem, type FuseOpsOptions } from '../src/fuse/ops.js';
import { IN_HEADER, InSize, Op, putU64, type RequestHeader } from '../src/fuse/protocol.js';
import { FuseRequests } from '../src/fuse/requests.js';
import { createLogger } from '../src/log.js';
import { Metrics } from '../src/metrics/metrics.js';
import type { StatFs } from '../src/vfs/filesystem.js';
import type { NodeToLetGo } from '../src/vfs/nodes.js';
import type { BackingFiles } from '../src/vfs/passthrough.js';
import type { Cancellation, DirEntryOut, DirPlusEntryOut, NodeAttr, NodeEntry, OpenedDir, OpenedFile, ReadReply } from '../src/vfs/vfs.js';

const E = constants.errno;

interface Reply {
  unique: number;
  error: number;
  body: Buffer;
}

const fileAttr = (ino: number): NodeAttr => ({ ino, mode: 0o100444, size: 10, mtimeMs: 1_700_000_000_123, nlink: 1, uid: 0, gid: 0, blocks: 1, blksize: 4096 });

/** A filesystem of one file, `/a.bin` (node 2), whose reads wait until the test lets them go. */
class RecordingFilesystem implements FuseFilesystem {
  readonly calls: string[] = [];
  readonly forgotten: [number, number][] = [];
  readonly reads: { cancel: Cancellation; reply: ReadReply; fill(byte: number): void }[] = [];

  async lookup(parentId: number, name: string): Promise<NodeEntry> {
    this.calls.push(`lookup ${parentId} ${name}`);
    if (parentId === 1 && name === 'a.bin') return { nodeId: 2, attr: fileAttr(2) };
    throw new CachefsError('NOT_FOUND', `no such file or directory: /${name}`);
  }
  forget(nodeId: number, count: number): void {
    this.forgotten.push([nodeId, count]);
  }
  async getattr(nodeId: number): Promise<NodeAttr> {
    this.calls.push(`getattr ${nodeId}`);
    return fileAttr(nodeId);
  }
  /** What opens are answered with, once passthrough is on. */
  backingId?: number;
  passthrough?: BackingFiles;
  async open(nodeId: number): Promise<OpenedFile> {
    this.calls.push(`open ${nodeId}`);
    return { fh: 7, keepCache: false, backingId: this.backingId };
  }
  usePassthrough(backings: BackingFiles): void {
    this.passthrough = backings;
  }
  read(fh: number, offset: number, size: number, cancel: Cancellation, reply: ReadReply): void {
    this.calls.push(`read ${fh} ${offset} ${size}`);
    const dest = Buffer.alloc(size);
    this.reads.push({ cancel, reply, fill: (byte) => reply.data(dest.fill(byte)) });
  }
  release(fh: number): void {
    this.calls.push(`release ${fh}`);
  }
  async opendir(): Promise<OpenedDir> {
    return { fh: 9, keepCache: false, cacheDir: true };
  }
  /** What readdir answers: entries now, or a promise of them (a page being listed). */
  listing: Iterable<DirEntryOut> | Promise<Iterable<DirEntryOut>> = [];
  readdir(): Iterable<DirEntryOut> | Promise<Iterable<DirEntryOut>> {
    return this.listing;
  }
  readdirplus(): Iterable<DirPlusEntryOut> {
    return [];
  }
  releasedir(): void {}
  statfs(): StatFs {
    return { bsize: 4096, frsize: 4096, blocks: 1, bfree: 0, bavail: 0, files: 1, ffree: 0, favail: 0, namemax: 255 };
  }
  async access(): Promise<void> {}
  refuseWrite(nodeId: number): never {
    throw new CachefsError('READ_ONLY', `read-only file system: node ${nodeId}`);
  }
  heldFiles(): number[] {
    return [2];
  }
  /** Set by a test: the entries the kernel is to be asked to drop. */
  nodesToLetGo?: (quiet: boolean) => NodeToLetGo[];
  pathOf(nodeId: number): string {
    return `#${nodeId}`;
  }
  handlePath(fh: number): string {
    return `#${fh}`;
  }
}

function harness(backings?: BackingFiles, notifications?: FuseOpsOptions['notifications']) {
  const fs = new RecordingFilesystem();
  const replies: Reply[] = [];
  const write = (unique: number, parts: Buffer[]): void => {
    const all = Buffer.concat(parts);
    replies.push({ unique, error: all.readInt32LE(4), body: all.subarray(16) });
  };
  const requests = new FuseRequests(write, 60_000, createLogger('silent'));
  const metrics = new Metrics(false);
  const ops = new FuseOps(fs, requests, { attrTimeoutSec: 1, entryTimeoutSec: 1, maxReadahead: 8 << 20, backings, notifications }, metrics, createLogger('silent'));
  let unique = 0;
  const send = (opcode: number, nodeid: number, body: Buffer): number => {
    const header: RequestHeader = { len: IN_HEADER + body.length, opcode, unique: (unique += 2), nodeid, uid: 0, gid: 0, pid: 1 };
    ops.request(header, body);
    return header.unique;
  };
  const init = (major = 7, minor = 40, flags = 0xffffffff, flags2 = 0): Reply => {
    const body = Buffer.alloc(64);
    body.writeUInt32LE(major, 0);
    body.writeUInt32LE(minor, 4);
    body.writeUInt32LE(flags, 12);
    body.writeUInt32LE(flags2, 16);
    const u = send(Op.INIT, 0, body);
    return replies.find((r) => r.unique === u)!;
  };
  const read = (fh: number, offset: number, size: number, bodyLength = 40): number => {
    const body = Buffer.alloc(bodyLength);
    putU64(body, 0, fh);
    putU64(body, 8, offset);
    if (bodyLength >= 20) body.writeUInt32LE(size, 16);
    return send(Op.READ, 2, body);
  };
  const replyTo = (u: number): Reply[] => replies.filter((r) => r.unique === u);
  return { fs, ops, replies, requests, metrics, send, init, read, replyTo };
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('FUSE ops', () => {
  it('asks the kernel for 1 MiB reads and the readahead it was given, among the flags the kernel offers, at the lower of the two minors', () => {
    const { init } = harness();
    const out = init(7, 40).body;
    expect(out.readUInt32LE(0)).toBe(7);
    expect(out.readUInt32LE(4)).toBe(31); // capped to the minor we implement
    expect(out.readUInt32LE(8)).toBe(8 << 20); // max_readahead
    expect(out.readUInt32LE(12) & (1 << 22)).not.toBe(0); // FUSE_MAX_PAGES
    expect(out.readUInt16LE(28)).toBe(256); // max_pages: 1 MiB
    expect(out.length).toBe(64);

    const older = harness().init(7, 22, 1 << 0);
    expect(older.body.readUInt32LE(4)).toBe(22); // the kernel's own minor
    expect(older.body.length).toBe(24); // fuse_init_out as 7.22 knows it
    expect(older.body.readUInt32LE(12)).toBe(1); // ASYNC_READ: the only flag offered and wanted

    expect(harness().init(7, 40, 0).body.readUInt32LE(12)).toBe(0); // nothing the kernel did not offer
  });

  it('agrees to passthrough only when wanted and offered (flags2, with INIT_EXT), with a stack depth of 1, and answers an open with its backing id', async () => {
    const backings = { open: () => 5, close: () => true };
    const PASSTHROUGH = 1 << 5; // bit 37 of the 64-bit flags
    const INIT_EXT = 1 << 30;
    const h = harness(backings);
    const out = h.init(7, 40, 0xffffffff, PASSTHROUGH).body;
    expect(out.readUInt32LE(12) & INIT_EXT).not.toBe(0);
    expect(out.readUInt32LE(32)).toBe(PASSTHROUGH); // flags2
    expect(out.readUInt32LE(36)).toBe(1); // max_stack_depth
    expect(h.fs.passthrough).toBe(backings);
    h.fs.backingId = 5;
    const u = h.send(Op.OPEN, 2, Buffer.alloc(8));
    await settle();
    const open = h.replyTo(u)[0]!.body;
    expect(open.readUInt32LE(8)).toBe(1 << 7); // FOPEN_PASSTHROUGH
    expect(open.readInt32LE(12)).toBe(5);

    for (const [h2, flags, flags2] of [
      [harness(), 0xffffffff, PASSTHROUGH], // not wanted (--no-passthrough)
      [harness(backings), 0xffffffff, 0], // not offered
      [harness(backings), (0xffffffff & ~INIT_EXT) >>> 0, PASSTHROUGH], // flags2 not valid without INIT_EXT
    ] as const) {
      const body = h2.init(7, 40, flags, flags2).body;
      expect(body.readUInt32LE(12) & INIT_EXT).toBe(0);
      expect(body.readUInt32LE(32)).toBe(0);
      expect(body.readUInt32LE(36)).toBe(0);
      expect(h2.fs.passthrough).toBeUndefined();
    }
  });

  it('answers a readdir that waits for its listing with the size and handle of its own request, not of the one read into the same buffer since', async () => {
    const h = harness();
    h.init();
    let listed!: (entries: DirEntryOut[]) => void;
    h.fs.listing = new Promise((resolve) => (listed = resolve));
    // One buffer for both requests, as the device read has it.
    const body = Buffer.alloc(InSize.READ);
    putU64(body, 0, 9);
    putU64(body, 8, 2);
    body.writeUInt32LE(4096, 16);
    const u = h.send(Op.READDIR, 1, body);
    body.fill(0);
    putU64(body, 0, 7);
    body.writeUInt32LE(3, 16); // the next request: a size no entry fits in
    listed(Array.from({ length: 10 }, (_, i) => ({ name: `f${i}`, ino: 10 + i, mode: 0o100444, next: 3 + i })));
    await settle();
    const [reply] = h.replyTo(u);
    expect(reply!.error).toBe(0);
    expect(reply!.body.length).toBe(10 * 32); // every entry (24 bytes and its name, 8-aligned): not an empty page, which the kernel takes for the end
  });

  it('asks the kernel to drop entries once lookups paused, as one NOTIFY_PRUNE and the same as NOTIFY_INVAL_ENTRYs should it refuse that; while they go on, only when far over', async () => {
    const sent: { tags: number[]; bytes: Buffer; instead?: Buffer }[] = [];
    const h = harness(undefined, { send: (tags, bytes, instead) => void sent.push({ tags, bytes, instead }) });
    const asked: boolean[] = [];
    h.fs.nodesToLetGo = (quiet) => {
      asked.push(quiet);
      return quiet ? [{ id: 2, parentId: 1, name: 'a.bin' }] : [];
    };
    h.init();
    const name = Buffer.from('a.bin\0');
    h.send(Op.LOOKUP, 1, name);
    h.send(Op.LOOKUP, 1, name);
    expect(asked).toEqual([false, false]); // far over only: none while lookups come
    await new Promise((r) => setTimeout(r, 20));
    expect(asked).toEqual([false, false, true]);
    expect(sent.length).toBe(1);
    const { tags, bytes, instead } = sent[0]!;
    expect(tags).toEqual([2]);
    // fuse_out_header (len, NOTIFY_PRUNE = 9, unique 0), fuse_notify_prune_out (count 1), the node id.
    expect([instead!.readUInt32LE(0), instead!.readInt32LE(4), instead!.readUInt32LE(16), Number(instead!.readBigUInt64LE(32))]).toEqual([40, 9, 1, 2]);
    // NOTIFY_INVAL_ENTRY = 3 of parent 1, name 'a.bin' (5 bytes and its NUL).
    expect([bytes.readUInt32LE(0), bytes.readInt32LE(4), Number(bytes.readBigUInt64LE(16)), bytes.readUInt32LE(24), bytes.toString('latin1', 32, 37)]).toEqual([38, 3, 1, 5, 'a.bin']);
  });

  it('asks for readdirplus always, never the adaptive mode (READDIRPLUS_AUTO): the filesystem decides entry by entry', () => {
    const DO_READDIRPLUS = 1 << 13;
    const READDIRPLUS_AUTO = 1 << 14;
    const flags = harness().init(7, 31).body.readUInt32LE(12);
    expect(flags & DO_READDIRPLUS).not.toBe(0);
    expect(flags & READDIRPLUS_AUTO).toBe(0);
  });

  it('tells a kernel of a newer major its own version and serves nothing until a 7.x INIT; refuses an older major or a minor below 7.15 with EPROTO', async () => {
    const h = harness();
    const newer = h.init(8, 0);
    expect(newer.error).toBe(0);
    expect(newer.body.readUInt32LE(0)).toBe(7);
    expect(newer.body.readUInt32LE(4)).toBe(31);
    const lookup = h.send(Op.LOOKUP, 1, Buffer.from('a.bin\0'));
    expect(h.replyTo(lookup)[0]!.error).toBe(-E.EIO); // still not initialised
    expect(h.init(7, 31).error).toBe(0); // the kernel retries with 7

    expect(harness().init(6, 99).error).toBe(-E.EPROTO);
    expect(harness().init(7, 14).error).toBe(-E.EPROTO);
  });

  it('answers EIO, without calling the filesystem, to requests before INIT, after DESTROY, a second INIT, and requests too short for their op', async () => {
    const h = harness();
    const early = h.send(Op.GETATTR, 1, Buffer.alloc(16));
    expect(h.replyTo(early)[0]!.error).toBe(-E.EIO);
    h.init();
    expect(h.init().error).toBe(-E.EIO);
    const short = h.read(7, 0, 4096, 20); // fuse_read_in is 40 bytes
    expect(h.replyTo(short)[0]!.error).toBe(-E.EIO);
    const shortOpen = h.send(Op.OPEN, 2, Buffer.alloc(4));
    expect(h.replyTo(shortOpen)[0]!.error).toBe(-E.EIO);
    expect(h.fs.calls).toEqual([]);

    const ok = h.send(Op.GETATTR, 2, Buffer.alloc(16));
    await settle();
    expect(h.replyTo(ok)[0]!.error).toBe(0);
    const destroy = h.send(Op.DESTROY, 0, Buffer.alloc(0));
    expect(h.replyTo(destroy)[0]!.error).toBe(0);
    const late = h.send(Op.GETATTR, 2, Buffer.alloc(16));
    expect(h.replyTo(late)[0]!.error).toBe(-E.EIO);
    expect(h.fs.calls).toEqual(['getattr 2']);
    expect(h.metrics.registry.getSingleMetric('cachefs_fuse_errors_total')).toBeDefined();
  });

  it('forgets only the nodes a BATCH_FORGET body holds, whatever count it claims', () => {
    const h = harness();
    h.init();
    const body = Buffer.alloc(8 + 2 * 16);
    body.writeUInt32LE(5, 0); // claims five, holds two
    putU64(body, 8, 2);
    putU64(body, 16, 1);
    putU64(body, 24, 3);
    putU64(body, 32, 4);
    h.send(Op.BATCH_FORGET, 0, body);
    expect(h.fs.forgotten).toEqual([
      [2, 1],
      [3, 4],
    ]);
    expect(h.replies).toHaveLength(1); // INIT's only: forgets are never answered
  });

  it('answers a read from memory before the request returns', () => {
    const h = harness();
    h.init();
    const fs = h.fs;
    fs.read = (_fh, _offset, size, _cancel, reply) => reply.data(Buffer.alloc(size, 3));
    const u = h.read(7, 0, 4096);
    expect(h.replyTo(u)).toHaveLength(1);
    expect(h.replyTo(u)[0]!.body).toEqual(Buffer.alloc(4096, 3));
  });

  it('answers an interrupted read EINTR at once, aborts its signal, and drops the answer its read gives later', async () => {
    const h = harness();
    h.init();
    const u = h.read(7, 0, 4096);
    const other = h.read(7, 4096, 4096);
    const [waiting, sibling] = h.fs.reads;
    const signal = waiting!.cancel.signal;
    expect(signal.aborted).toBe(false);

    const interrupt = Buffer.alloc(8);
    putU64(interrupt, 0, u);
    h.send(Op.INTERRUPT, 0, interrupt);
    expect(h.replyTo(u).map((r) => r.error)).toEqual([-E.EINTR]);
    expect(waiting!.cancel.aborted).toBe(true);
    expect(signal.aborted).toBe(true);
    expect(signal.reason).toMatchObject({ code: 'INTERRUPTED' });

    waiting!.fill(1); // the read ends anyway: its answer goes nowhere
    expect(h.replyTo(u)).toHaveLength(1);
    sibling!.fill(2); // the other read is untouched
    expect(h.replyTo(other).map((r) => [r.error, r.body.length])).toEqual([[0, 4096]]);
    expect(h.requests.inFlight).toBe(0);

    // An INTERRUPT of a request answered already asks for nothing.
    const again = h.replies.length;
    h.send(Op.INTERRUPT, 0, interrupt);
    expect(h.replies).toHaveLength(again);
    const interrupted = await h.metrics.registry.getSingleMetricAsString('cachefs_fuse_errors_total');
    expect(interrupted).toContain('op="read",errno="EINTR"} 1');
  });

  it('keeps an INTERRUPT read before its request, and answers that request EINTR as it comes without serving it', () => {
    const h = harness();
    h.init();
    const interrupt = Buffer.alloc(8);
    putU64(interrupt, 0, 100); // a request the session has not handed over yet
    h.send(Op.INTERRUPT, 0, interrupt);
    const body = Buffer.alloc(40);
    putU64(body, 0, 7);
    body.writeUInt32LE(4096, 16);
    h.fs.calls.length = 0;
    const header: RequestHeader = { len: IN_HEADER + 40, opcode: Op.READ, unique: 100, nodeid: 2, uid: 0, gid: 0, pid: 1 };
    h.ops.request(header, body);
    expect(h.replyTo(100).map((r) => r.error)).toEqual([-E.EINTR]);
    expect(h.fs.calls).toEqual([]);
    expect(h.requests.inFlight).toBe(0);
  });

  it('answers a request past its timeout ETIMEDOUT and aborts it; its op gets a signal already aborted', async () => {
    const h = harness();
    h.init();
    const u = h.read(7, 0, 4096);
    h.requests.sweep(Date.now() + 60_001);
    expect(h.replyTo(u).map((r) => r.error)).toEqual([-E.ETIMEDOUT]);
    const [read] = h.fs.reads;
    expect(read!.cancel.signal.aborted).toBe(true);
    expect(read!.cancel.signal.reason).toMatchObject({ code: 'TIMEOUT' });
    read!.reply.error(new CachefsError('TIMEOUT', 'the store did not answer'));
    expect(h.replyTo(u)).toHaveLength(1);
  });

  it('gives a lookup the node id the filesystem names, and ENOENT for a missing name', async () => {
    const h = harness();
    h.init();
    const found = h.send(Op.LOOKUP, 1, Buffer.from('a.bin\0'));
    const missing = h.send(Op.LOOKUP, 1, Buffer.from('nope\0'));
    await settle();
    const entry = h.replyTo(found)[0]!.body;
    expect(Number(entry.readBigUInt64LE(0))).toBe(2);
    expect(Number(entry.readBigUInt64LE(40))).toBe(2); // attr.ino
    expect(entry.readUInt32LE(40 + 52)).toBe(123_000_000); // mtime nanoseconds
    expect(h.replyTo(missing)[0]!.error).toBe(-E.ENOENT);
  });
});

describe('directory answers (DirentPage)', () => {
  const S_IFREG = 0o100000;
  const S_IFDIR = 0o040000;
  /** The entries of a READDIRPLUS answer: node id, attribute size, inode, next offset, type and name of each. */
  const decodePlus = (b: Buffer): [number, number, number, number, number, string][] => {
    const out: [number, number, number, number, number, string][] = [];
    for (let at = 0; at < b.length; ) {
      const nodeid = Number(b.readBigUInt64LE(at));
      const size = Number(b.readBigUInt64LE(at + 40 + 8));
      const d = at + 128;
      const len = b.readUInt32LE(d + 16);
      out.push([nodeid, size, Number(b.readBigUInt64LE(d)), Number(b.readBigUInt64LE(d + 8)), b.readUInt32LE(d + 20), b.toString('utf8', d + 24, d + 24 + len)]);
      // A name-only entry's fuse_entry_out is all zero, its name's padding too.
      if (nodeid === 0) expect(b.subarray(at, d).every((x) => x === 0)).toBe(true);
      expect(b.subarray(d + 24 + len, d + ((24 + len + 7) & ~7)).every((x) => x === 0)).toBe(true);
      at = d + ((24 + len + 7) & ~7);
    }
    return out;
  };
  const attr: NodeAttr = { ino: 7, mode: S_IFREG | 0o444, size: 4321, mtimeMs: 1_700_000_000_123, nlink: 1, uid: 0, gid: 0, blocks: 9, blksize: 4096 };

  it('writes name-only entries all zero but their dirent, over the bytes of an answer with attributes written before; UTF-8 names whole; nothing past the size', async () => {
    const { DirentPage } = await import('../src/fuse/protocol.js');
    const names = ['a', 'ünïcødé-名前', 'x'.repeat(200), 'b.bin'];
    // Every entry with attributes first: the kept buffer holds non-zero bytes where the next answer's entries go.
    const full = new DirentPage(1 << 20, true);
    for (const [i, name] of names.entries()) full.add(name, full.room(name), 100 + i, i + 3, attr.mode, { nodeid: 100 + i, attr, entrySec: 1, attrSec: 1 });
    expect(decodePlus(full.done()).map((e) => e.slice(0, 2))).toEqual(names.map((_, i) => [100 + i, 4321]));
    const page = new DirentPage(1 << 20, true);
    for (const [i, name] of names.entries()) page.add(name, page.room(name), 0xffffffff, i + 3, S_IFREG);
    expect(decodePlus(page.done())).toEqual(names.map((name, i) => [0, 0, 0xffffffff, i + 3, 8, name]));
    // Only what fits the size the kernel takes: two entries of 152 + 24 bytes, not a third.
    const small = new DirentPage(2 * 176 + 100, true);
    const fitted = ['a', 'b', 'c'].filter((n) => {
      const bytes = small.room(n);
      if (bytes < 0) return false;
      small.add(n, bytes, 1, 2, S_IFDIR);
      return true;
    });
    expect(fitted).toEqual(['a', 'b']);
    expect(decodePlus(small.done()).map((e) => [e[4], e[5]])).toEqual([[4, 'a'], [4, 'b']]);
  });
});

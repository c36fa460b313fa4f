// The floor of cachefs's FUSE layer: serves one file, held in memory, as /<name> of
// MOUNTPOINT through cachefs's own FUSE session and ops (dist/fuse), with a filesystem
// whose read is one copy from a Buffer and nothing else. Mounted with cachefs's kernel
// options (read-only, 1 MiB reads, the same readahead), so the kernel sends it what it
// sends cachefs. Runs until SIGTERM, then unmounts.
// Usage: node memory-fs.mjs MOUNTPOINT FILE MAX_READAHEAD_BYTES
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { CachefsError } from '../../dist/errors.js';
import { createLogger } from '../../dist/log.js';
import { Metrics } from '../../dist/metrics/metrics.js';
import { FuseMount } from '../../dist/fuse/fuse-mount.js';

const [mountpoint, file, maxReadahead] = process.argv.slice(2);
const data = readFileSync(file);
const name = `/${path.basename(file)}`;
const now = Date.now();
const ROOT = 1;
const FILE = 2;
const attr = (ino, mode, size) => ({ ino, mode, size, mtimeMs: now, nlink: 1, uid: 0, gid: 0, blocks: Math.ceil(size / 512), blksize: 4096 });
const dirAttr = attr(ROOT, 0o40755, 4096);
const fileAttr = attr(FILE, 0o100444, data.length);
const notFound = () => new CachefsError('NOT_FOUND', 'no such file');
const entries = [
  { name: '.', ino: ROOT, mode: dirAttr.mode, next: 1 },
  { name: '..', ino: ROOT, mode: dirAttr.mode, next: 2 },
  { name: name.slice(1), ino: FILE, mode: fileAttr.mode, next: 3 },
];
/** The FUSE layer's filesystem (fuse/ops.ts FuseFilesystem): one directory, one file. */
const memoryFs = {
  lookup: (parentId, child) => {
    if (parentId === ROOT && `/${child}` === name) return { nodeId: FILE, attr: fileAttr };
    throw notFound();
  },
  forget: () => undefined,
  getattr: async (nodeId) => {
    if (nodeId === ROOT) return dirAttr;
    if (nodeId === FILE) return fileAttr;
    throw notFound();
  },
  open: async () => ({ fh: 1, keepCache: false }),
  read: (_fh, offset, size, _cancel, reply) => {
    const end = Math.min(data.length, offset + size);
    const out = Buffer.allocUnsafe(Math.max(0, end - offset));
    data.copy(out, 0, offset, end);
    reply.data(out);
  },
  release: () => undefined,
  opendir: async () => ({ fh: 2, keepCache: true, cacheDir: true }),
  readdir: (_fh, offset) => entries.slice(offset),
  readdirplus: (_fh, offset) => entries.slice(offset).map((e) => ({ ...e, take: () => (e.ino === FILE ? { nodeId: FILE, attr: fileAttr } : undefined) })),
  releasedir: () => undefined,
  statfs: () => ({ bsize: 4096, frsize: 4096, blocks: 0, bfree: 0, bavail: 0, files: 1, ffree: 0, favail: 0, namemax: 255 }),
  access: async () => undefined,
  refuseWrite: () => {
    throw new CachefsError('READ_ONLY', 'read-only file system');
  },
  heldFiles: () => [FILE],
  pathOf: (nodeId) => (nodeId === FILE ? name : '/'),
  handlePath: () => name,
};
const mount = await FuseMount.mount(mountpoint, memoryFs, new Metrics(), createLogger('warn'), {
  attrTimeoutSec: 60,
  entryTimeoutSec: 60,
  allowOther: false,
  maxReadahead: Number(maxReadahead),
  opTimeoutMs: 60_000,
}).catch((err) => {
  console.error(`memory-fs: cannot mount ${mountpoint}: ${err.message}`);
  process.exit(1);
});
process.stdout.write('MOUNTED\n');
process.on('SIGTERM', () => mount.unmount().finally(() => process.exit(0)));

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
const attr = (mode, size) => ({ mode, size, mtimeMs: now, nlink: 1, uid: 0, gid: 0, blocks: Math.ceil(size / 512), blksize: 4096 });
const dir = attr(0o40755, 4096);
const notFound = () => new CachefsError('NOT_FOUND', 'no such file');
const memoryFs = {
  getattr: (p) => {
    if (p === '/') return dir;
    if (p === name) return attr(0o100444, data.length);
    throw notFound();
  },
  readdir: () => [{ name: '.', attr: dir }, { name: '..', attr: dir }, { name: name.slice(1), attr: attr(0o100444, data.length) }],
  open: () => 1,
  read: (_fh, dest, length, position) => data.copy(dest, 0, position, Math.min(data.length, position + length)),
  release: () => undefined,
  access: () => undefined,
  statfs: () => ({ bsize: 4096, frsize: 4096, blocks: 0, bfree: 0, bavail: 0, files: 1, ffree: 0, favail: 0, namemax: 255 }),
  refuseWrite: () => {
    throw new CachefsError('READ_ONLY', 'read-only file system');
  },
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

// The floor of a fuse-native filesystem's cost: serves one file, held in memory, as
// /<name> of MOUNTPOINT; a read is one copy and one reply, nothing else. Mounted with
// cachefs's own kernel options (read-only, auto_cache, the same max_readahead), so the
// kernel sends it what it sends cachefs. Runs until SIGTERM, then unmounts.
// Usage: node memory-fs.mjs MOUNTPOINT FILE MAX_READAHEAD_BYTES
import { readFileSync } from 'node:fs';
import path from 'node:path';
import Fuse from 'fuse-native';

const [mountpoint, file, maxReadahead] = process.argv.slice(2);
const data = readFileSync(file);
const name = `/${path.basename(file)}`;
const now = new Date();
const stat = (mode, size) => ({ mtime: now, atime: now, ctime: now, nlink: 1, size, mode, uid: 0, gid: 0 });
const fuse = new Fuse(
  mountpoint,
  {
    getattr: (p, cb) => (p === '/' ? cb(0, stat(0o40755, 4096)) : p === name ? cb(0, stat(0o100444, data.length)) : cb(Fuse.ENOENT)),
    readdir: (_p, cb) => cb(0, [name.slice(1)]),
    open: (_p, _flags, cb) => cb(0, 1),
    release: (_p, _fd, cb) => cb(0),
    read: (_p, _fd, buf, len, pos, cb) => cb(data.copy(buf, 0, pos, Math.min(data.length, pos + len))),
  },
  { subtype: `memoryfs,ro,max_readahead=${maxReadahead}`, autoCache: true },
);
fuse.mount((err) => {
  if (err) {
    console.error(`memory-fs: cannot mount ${mountpoint}: ${err.message}`);
    process.exit(1);
  }
  process.stdout.write('MOUNTED\n');
});
process.on('SIGTERM', () => fuse.unmount(() => process.exit(0)));

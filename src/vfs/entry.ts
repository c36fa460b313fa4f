/**
 * The filesystem's view of one path: a directory or a regular file backed by an
 * object (size, mtime, ETag). What `getattr` reports and what a file handle reads.
 */
export type Entry =
  | { kind: 'dir'; key: string; mtimeMs: number }
  | { kind: 'file'; key: string; size: number; mtimeMs: number; etag: string };

export interface Attr {
  mode: number;
  size: number;
  mtimeMs: number;
  nlink: number;
  uid: number;
  gid: number;
  blocks: number;
  blksize: number;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

export function attrOf(entry: Entry, owner: { uid: number; gid: number }): Attr {
  if (entry.kind === 'dir') {
    return { mode: S_IFDIR | 0o555, size: 4096, mtimeMs: entry.mtimeMs, nlink: 2, blocks: 8, blksize: 4096, ...owner };
  }
  return { mode: S_IFREG | 0o444, size: entry.size, mtimeMs: entry.mtimeMs, nlink: 1, blocks: Math.ceil(entry.size / 512), blksize: 128 * 1024, ...owner };
}

/**
 * The filesystem's view of one path: a directory or a regular file backed by an
 * object (size, mtime, ETag). What `getattr` reports and what a file handle reads.
 */
import { createHash } from 'node:crypto';
import type { UfsObject } from '../ufs/ufs.js';
import type { StatBatch } from './stat-batch.js';

export type Entry =
  | { kind: 'dir'; key: string; mtimeMs: number }
  | { kind: 'file'; key: string; size: number; mtimeMs: number; etag: string };
export type FileEntry = Extract<Entry, { kind: 'file' }>;

/**
 * A file a listing gave by name alone (a folder's, whose attributes cost a stat each):
 * its attributes are asked of the store when first needed, with the other files of its
 * page (`batch`). A plain readdir needs none of them.
 */
export interface ListedFile {
  kind: 'listed';
  key: string;
  batch: StatBatch;
}

/** What a listing or the metadata cache knows of a child: an entry, or a file by name alone. */
export type Known = Entry | ListedFile;

export interface Attr {
  /** The object's version (its ETag) for a file, '' for a directory: a new one drops the kernel's pages at the next open. */
  version: string;
  /**
   * A file's entry, which these attributes are of: a node keeps it as the version the
   * kernel was told, rather than a copy of its ETag, mtime and size (a million-file walk
   * held 220,000 such copies, 10 MiB). Undefined for a directory.
   */
  file: FileEntry | undefined;
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
/**
 * A directory's st_blksize: glibc's readdir reads a directory in buffers of its
 * st_blksize (32 KiB to 1 MiB), and the kernel asks a FUSE readdir for as many bytes:
 * 1 MiB lets a listing come in ~30 round trips per million names instead of ~1,000.
 */
const DIR_BLKSIZE = 1024 * 1024;
const S_IFREG = 0o100000;

/** The file type and permissions of a child, as a plain readdir gives them. */
export function modeOf(entry: Known): number {
  return entry.kind === 'dir' ? S_IFDIR | 0o555 : S_IFREG | 0o444;
}

export function attrOf(entry: Entry, owner: { uid: number; gid: number }): Attr {
  if (entry.kind === 'dir') {
    return { version: '', file: undefined, mode: S_IFDIR | 0o555, size: 4096, mtimeMs: entry.mtimeMs, nlink: 2, blocks: 8, blksize: DIR_BLKSIZE, uid: owner.uid, gid: owner.gid };
  }
  return { version: entry.etag, file: entry, mode: S_IFREG | 0o444, size: entry.size, mtimeMs: entry.mtimeMs, nlink: 1, blocks: Math.ceil(entry.size / 512), blksize: 128 * 1024, uid: owner.uid, gid: owner.gid };
}

/**
 * The entry of a file object. Object stores give Last-Modified in whole seconds, and the
 * kernel keeps a file's page cache while its size and mtime stay the same (auto_cache), so
 * an object rewritten with the same size within the same second would keep serving its old
 * bytes. Such an mtime gets a millisecond part derived from the ETag: still within the
 * second the store reported, and different for another version (but for 1 in 1000).
 */
export function fileEntry(object: UfsObject): Entry {
  return { kind: 'file', key: object.key, size: object.size, mtimeMs: versionedMtime(object.mtimeMs, object.etag), etag: object.etag };
}

export function versionedMtime(mtimeMs: number, etag: string): number {
  if (mtimeMs % 1000 !== 0 || etag === '') return mtimeMs;
  return mtimeMs + (createHash('sha1').update(etag.toLowerCase()).digest().readUInt32BE(0) % 1000);
}

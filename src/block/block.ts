/**
 * Block identity and math. A file is cut into fixed-size blocks; a block is named
 * by (mount, object key, ETag/version, block size, index) and its id is a hash of
 * those, so a changed object (new ETag) can never be served from old blocks. No I/O.
 */
import { createHash } from 'node:crypto';
import { CachefsError } from '../errors.js';

export const MIN_BLOCK_SIZE = 1024 * 1024;
export const MAX_BLOCK_SIZE = 256 * 1024 * 1024;
export const DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024;

/** The object a file handle reads: what blocks are derived from. */
export interface ObjectRef {
  /** Identifies the mount's UFS root (its URI), so two mounts of different buckets never share ids. */
  mount: string;
  key: string;
  etag: string;
  size: number;
}

export interface BlockRef {
  /** 40 lowercase hex characters. */
  id: string;
  object: ObjectRef;
  index: number;
  blockSize: number;
  /** Byte offset of the block in the object. */
  offset: number;
  /** Bytes in this block (the last block may be short). */
  length: number;
}

const ID_PATTERN = /^[0-9a-f]{40}$/;

export function isBlockId(id: string): boolean {
  return ID_PATTERN.test(id);
}

export function blockCount(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}

/**
 * Refs already made, per object and block size: every FUSE read asks for its
 * block's ref, and hashing the name each time (a native Hash object per read) made the
 * garbage collector the busiest part of a mount serving 1 GB/s.
 */
const made = new WeakMap<ObjectRef, Map<number, BlockRef[]>>();

export function blockRef(object: ObjectRef, blockSize: number, index: number): BlockRef {
  const count = blockCount(object.size, blockSize);
  if (!Number.isInteger(index) || index < 0 || index >= count) {
    throw new CachefsError('INVALID_ARGUMENT', `block index ${index} out of range 0..${count - 1} for ${object.key}`);
  }
  let bySize = made.get(object);
  if (!bySize) made.set(object, (bySize = new Map()));
  let refs = bySize.get(blockSize);
  if (!refs) bySize.set(blockSize, (refs = []));
  return (refs[index] ??= makeRef(object, blockSize, index));
}

function makeRef(object: ObjectRef, blockSize: number, index: number): BlockRef {
  const offset = index * blockSize;
  const id = createHash('sha256')
    .update(JSON.stringify([object.mount, object.key, object.etag, object.size, blockSize, index]))
    .digest('hex')
    .slice(0, 40);
  return Object.freeze({ id, object, index, blockSize, offset, length: Math.min(blockSize, object.size - offset) });
}

/** The blocks that hold bytes [offset, offset + length) of the object. */
export function blocksCovering(object: ObjectRef, blockSize: number, offset: number, length: number): BlockRef[] {
  const end = Math.min(object.size, offset + length);
  if (offset >= end) return [];
  const first = Math.floor(offset / blockSize);
  const last = Math.floor((end - 1) / blockSize);
  const refs: BlockRef[] = [];
  for (let i = first; i <= last; i++) refs.push(blockRef(object, blockSize, i));
  return refs;
}

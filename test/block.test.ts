/**
 * Block identity: ids name (mount, key, etag, size, block size, index), whatever object
 * value carries them, and refs made once per object are the same refs when asked again.
 */
import { describe, expect, it } from 'vitest';
import { blockRef, blocksCovering, isBlockId, type ObjectRef } from '../src/block/block.js';

const MiB = 1024 * 1024;
const object = (etag = '"e1"'): ObjectRef => ({ mount: 's3://bucket', key: 'dir/f.bin', etag, size: 10 * MiB + 5 });

describe('block refs', () => {
  it('names a block by its object and place, not by the object value that asked', () => {
    const a = object();
    const ref = blockRef(a, 4 * MiB, 2);
    expect(isBlockId(ref.id)).toBe(true);
    expect(ref).toMatchObject({ index: 2, offset: 8 * MiB, length: 2 * MiB + 5, blockSize: 4 * MiB });
    expect(blockRef(a, 4 * MiB, 2)).toBe(ref); // made once for this object
    expect(blockRef(object(), 4 * MiB, 2).id).toBe(ref.id); // an equal object: the same name
    expect(blockRef(object('"e2"'), 4 * MiB, 2).id).not.toBe(ref.id); // a changed object: never its old blocks
    expect(blockRef(a, 4 * MiB, 1).id).not.toBe(ref.id);
    expect(blockRef(a, 2 * MiB, 2).id).not.toBe(ref.id);
    expect(Object.isFrozen(ref)).toBe(true);
  });

  it('covers a range with the blocks that hold it, and refuses an index past the end', () => {
    const a = object();
    expect(blocksCovering(a, 4 * MiB, 4 * MiB - 1, 2).map((r) => r.index)).toEqual([0, 1]);
    expect(blocksCovering(a, 4 * MiB, 10 * MiB + 5, 1)).toEqual([]);
    expect(() => blockRef(a, 4 * MiB, 3)).toThrow('block index 3 out of range 0..2 for dir/f.bin');
  });
});

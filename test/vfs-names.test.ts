/**
 * Which object names can be POSIX names, and how FUSE paths map to keys.
 */
import { describe, expect, it } from 'vitest';
import { baseName, isPosixName, keyOfPath, parentKey } from '../src/vfs/names.js';

describe('object names', () => {
  it('refuses empty segments, dot segments, NUL and names over 255 bytes', () => {
    for (const bad of ['', '.', '..', 'a\0b', 'n'.repeat(256), 'é'.repeat(128)]) expect(isPosixName(bad), JSON.stringify(bad.slice(0, 10))).toBe(false);
    for (const good of ['a', '...', 'with space', 'ünïcødé 名前.txt', 'n'.repeat(255), 'é'.repeat(127)]) expect(isPosixName(good), good.slice(0, 10)).toBe(true);
  });
  it('maps FUSE paths to keys and back to parents and names', () => {
    expect(keyOfPath('/')).toBe('');
    expect(keyOfPath('/a/b c/d')).toBe('a/b c/d');
    expect(parentKey('a/b c/d')).toBe('a/b c');
    expect(parentKey('top')).toBe('');
    expect(baseName('a/b c/d')).toBe('d');
  });
});

/**
 * The readahead policy: a contiguous reader becomes a stream after its threshold and
 * gets a doubling window of blocks; random readers, even ones whose reads often land
 * near the last one, never become streams (whole-block memory reads would multiply
 * what they read).
 */
import { describe, expect, it } from 'vitest';
import { Readahead } from '../src/client/readahead.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('Readahead', () => {
  it('calls a contiguous reader a stream once it has read the threshold, and prefetches a doubling window', () => {
    const ra = new Readahead(16, 8 * MiB);
    const windows: number[][] = [];
    for (let off = 0; off < 8 * MiB; off += 128 * KiB) {
      expect(ra.observe(off, 128 * KiB)).toBe('sequential');
      expect(ra.streaming).toBe(off + 128 * KiB >= 8 * MiB);
      const got = ra.blocksToPrefetch(Math.floor(off / (4 * MiB)), 100);
      if (got.length) windows.push(got);
    }
    expect(windows).toEqual([[1], [2, 3]]);
    // A seek ends the stream.
    expect(ra.observe(500 * MiB, 128 * KiB)).toBe('random');
    expect(ra.streaming).toBe(false);
  });

  it('never calls random 128 KiB reads of a 256 MiB file a stream, though some look sequential', () => {
    let seed = 42;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const ra = new Readahead(16, 8 * MiB);
    let sequential = 0;
    for (let i = 0; i < 100_000; i++) {
      const off = Math.floor(random() * 2048) * 128 * KiB;
      if (ra.observe(off, 128 * KiB) === 'sequential') sequential++;
      expect(ra.streaming).toBe(false);
    }
    expect(sequential).toBeGreaterThan(5000); // the reorder slack at work
  });
});

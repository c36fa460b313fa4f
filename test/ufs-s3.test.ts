/**
 * S3Ufs reads against s3rver: byte-exact ranges received into the caller's buffers
 * (concurrently, over kept-alive connections), the ends of objects, and the error
 * contract of object reads through the SDK's signing and error parsing: NOT_FOUND,
 * ACCESS_DENIED on an unknown key id, cancellation.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CachefsError } from '../src/errors.js';
import { openUfs, openUfsOnUse } from '../src/ufs/open-ufs.js';
import type { Ufs } from '../src/ufs/ufs.js';
import { parseUfsUri } from '../src/ufs/uri.js';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

const MiB = 1024 * 1024;
const BIG = randomBytes(9 * MiB + 77);
let server: S3TestServer;
let ufs: Ufs;

async function open(accessKeyId = 'S3RVER'): Promise<Ufs> {
  return openUfs(parseUfsUri('s3://data/p/'), {
    's3.endpoint': server.endpoint,
    's3.region': 'us-east-1',
    's3.accessKeyId': accessKeyId,
    's3.secretAccessKey': 'S3RVER',
  });
}

async function failure(p: Promise<unknown>): Promise<CachefsError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof CachefsError) return err;
    throw err;
  }
  throw new Error('expected a failure');
}

beforeAll(async () => {
  server = await startS3Server({ buckets: ['data'] });
  await server.putObject('data', 'p/big.bin', BIG);
  ufs = await open();
});

afterAll(async () => {
  await ufs?.close();
  await server?.close();
});

describe('S3Ufs.readInto', () => {
  it('reads ranges byte-exactly into the given buffers, fewer bytes only at the end', async () => {
    // Not [0, 1], and no ranges of empty objects: s3rver 3.7.1 answers `bytes=0-0` with
    // the whole object, and a range of an empty object with a Content-Length of 1 and no byte.
    const cases: [number, number][] = [
      [1, 1],
      [0, 2],
      [0, 4 * MiB],
      [12345, MiB],
      [BIG.length - 100, 100],
      [BIG.length - 100, 4096],
    ];
    for (const [offset, length] of cases) {
      const dest = Buffer.alloc(length);
      const n = await ufs.readInto('big.bin', offset, dest);
      expect(n, `${offset}+${length}`).toBe(Math.min(length, BIG.length - offset));
      expect(dest.subarray(0, n).equals(BIG.subarray(offset, offset + n)), `${offset}+${length}`).toBe(true);
    }
    expect(await ufs.readInto('big.bin', BIG.length, Buffer.alloc(10))).toBe(0);
    expect(await ufs.readInto('big.bin', 0, Buffer.alloc(0))).toBe(0);
    const ranges = server.requestLog().filter((r) => r.method === 'GET' && r.key === 'p/big.bin').map((r) => r.range);
    expect(ranges).toContain(`bytes=12345-${12345 + MiB - 1}`);
  });

  it('reads every 1 MiB of a 9 MiB object, 10 at a time, into reused buffers', async () => {
    const buffers = Array.from({ length: 10 }, () => Buffer.alloc(MiB));
    const blocks = Math.ceil(BIG.length / MiB);
    for (let round = 0; round < 3; round++) {
      const ok = await Promise.all(
        Array.from({ length: blocks }, async (_, i) => {
          const dest = buffers[i]!;
          const n = await ufs.readInto('big.bin', i * MiB, dest, { etag: (await ufs.stat('big.bin'))!.etag });
          return dest.subarray(0, n).equals(BIG.subarray(i * MiB, (i + 1) * MiB));
        }),
      );
      expect(ok.every(Boolean)).toBe(true);
    }
  });

  it('fills several buffers in order from one GET, telling progress as the body arrives', async () => {
    const parts = [Buffer.alloc(3 * MiB), Buffer.alloc(1), Buffer.alloc(4 * MiB)];
    const told: number[] = [];
    const before = server.requestLog().length;
    const n = await ufs.readInto('big.bin', 777, parts, { onProgress: (filled) => told.push(filled) });
    expect(n).toBe(7 * MiB + 1);
    expect(Buffer.concat(parts).equals(BIG.subarray(777, 777 + n))).toBe(true);
    expect(server.requestLog().slice(before).filter((r) => r.method === 'GET')).toHaveLength(1);
    // Rising, several times over 7 MiB of socket reads, ending at the count returned.
    expect(told.length).toBeGreaterThan(2);
    expect(told.every((x, i) => i === 0 || x > told[i - 1]!)).toBe(true);
    expect(told.at(-1)).toBe(n);
    // A run reaching past the end fills what there is.
    const tail = [Buffer.alloc(MiB), Buffer.alloc(MiB)];
    expect(await ufs.readInto('big.bin', BIG.length - MiB - 5, tail)).toBe(MiB + 5);
    expect(Buffer.concat(tail).subarray(0, MiB + 5).equals(BIG.subarray(BIG.length - MiB - 5))).toBe(true);
  });

  // Not STALE: s3rver 3.7.1 ignores If-Match on GET (the OSS and COS servers check it).
  it('fails with NOT_FOUND, ACCESS_DENIED and on cancellation, naming the object', async () => {
    const missing = await failure(ufs.readInto('missing.bin', 0, Buffer.alloc(10)));
    expect(missing).toMatchObject({ code: 'NOT_FOUND', message: 'not found: s3://data/p/missing.bin' });
    // s3rver checks the access key id, not the signature.
    const wrong = await open('NOT-A-KEY-ID');
    try {
      const denied = await failure(wrong.readInto('big.bin', 0, Buffer.alloc(10)));
      expect(denied).toMatchObject({ code: 'ACCESS_DENIED', message: 'access denied to s3://data/p/big.bin: InvalidAccessKeyId' });
    } finally {
      await wrong.close();
    }
    const cancelled = await failure(ufs.readInto('big.bin', 0, Buffer.alloc(4 * MiB), { signal: AbortSignal.abort() }));
    expect(cancelled.code).not.toBe('NOT_FOUND');
    // The connections are still good after the errors.
    const dest = Buffer.alloc(10);
    expect(await ufs.readInto('big.bin', 5, dest)).toBe(10);
    expect(dest.equals(BIG.subarray(5, 15))).toBe(true);
  });
});

describe('S3Ufs GETs after the first', () => {
  it('skip the SDK, signed so that the server checks them, also for keys that need escaping', async () => {
    const keys = ['p/a b+c=d/ü (1)!.bin', "p/x/it's*~.bin"];
    const bodies = keys.map(() => randomBytes(3000));
    for (const [i, key] of keys.entries()) await server.putObject('data', key, bodies[i]!);
    const fresh = await open();
    try {
      server.clearRequestLog();
      for (let round = 0; round < 2; round++) {
        for (const [i, key] of keys.entries()) {
          const dest = Buffer.alloc(1000);
          expect(await fresh.readInto(key.slice(2), 1000, dest)).toBe(1000);
          expect(dest.equals(bodies[i]!.subarray(1000, 2000))).toBe(true);
        }
      }
      const gets = server.requestLog().filter((r) => r.method === 'GET');
      // The first went through the SDK (its shape learnt); the three after it did not, and were accepted.
      expect(gets.map((r) => [r.key, r.sdk])).toEqual([
        [keys[0], true],
        [keys[1], false],
        [keys[0], false],
        [keys[1], false],
      ]);
    } finally {
      await fresh.close();
    }
  });

  it('go again through the SDK when the short way is answered with an error, which is named as before', async () => {
    const fresh = await open();
    try {
      expect(await fresh.readInto('big.bin', 0, Buffer.alloc(10))).toBe(10);
      server.clearRequestLog();
      const missing = await failure(fresh.readInto('gone.bin', 0, Buffer.alloc(10)));
      expect(missing).toMatchObject({ code: 'NOT_FOUND', message: 'not found: s3://data/p/gone.bin' });
      expect(server.requestLog().map((r) => [r.method, r.key, r.sdk])).toEqual([
        ['GET', 'p/gone.bin', false],
        ['GET', 'p/gone.bin', true],
      ]);
      // Still short after an error the object answered.
      server.clearRequestLog();
      expect(await fresh.readInto('big.bin', 3, Buffer.alloc(10))).toBe(10);
      expect(server.requestLog().map((r) => r.sdk)).toEqual([false]);
    } finally {
      await fresh.close();
    }
  });
});

describe('openUfsOnUse', () => {
  it('opens the backend at its first use: its errors are that call\'s, and it reads as the backend does', async () => {
    const bad = openUfsOnUse('s3://data/p/', { 's3.endpoint': 'not a url' });
    expect(bad.displayUri).toBe('s3://data/p/');
    await bad.close(); // never opened: nothing to close
    const err = await failure(bad.stat('big.bin'));
    expect(err).toMatchObject({ code: 'INVALID_ARGUMENT', message: "invalid s3.endpoint 'not a url': expected http(s)://host[:port]" });
    const good = openUfsOnUse(parseUfsUri('s3://data/p/'), { 's3.endpoint': server.endpoint, 's3.region': 'us-east-1', 's3.accessKeyId': 'S3RVER', 's3.secretAccessKey': 'S3RVER' });
    try {
      const dest = Buffer.alloc(100);
      expect(await good.readInto('big.bin', 50, dest)).toBe(100);
      expect(dest.equals(BIG.subarray(50, 150))).toBe(true);
      expect((await good.stat('big.bin'))?.size).toBe(BIG.length);
    } finally {
      await good.close();
    }
  });
});

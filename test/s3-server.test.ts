/**
 * The test S3 server against S3's documented listing behaviour (ListObjectsV2 and
 * V1 with a delimiter), through the real @aws-sdk/client-s3: the correction of
 * s3rver 3.7.1's listing that the other tests rely on.
 */
import { GetObjectCommand, ListObjectsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startS3Server, type S3TestServer } from './support/s3-server.js';

let s3: S3TestServer;
let client: S3Client;

beforeAll(async () => {
  s3 = await startS3Server({ buckets: ['deep', 'mixed', 'many'] });
  client = s3.client();
  await s3.putObject('deep', 'b/c/y', 'y');
  await s3.putObjects('mixed', ['a1', 'd1/x', 'd1/y/z', 'd2/deep/er/k', 'e1', 'f/', 'g1', 'h/i', 'z9'].map((key) => ({ key, body: key })));
  await s3.putObjects('many', Array.from({ length: 3000 }, (_, i) => ({ key: `k/${String(i).padStart(4, '0')}`, body: String(i) })), { concurrency: 64 });
}, 120_000);

afterAll(async () => {
  await s3?.close();
});

/** Every page of a V2 listing, with what each page said. */
async function listAllV2(bucket: string, prefix: string, maxKeys: number) {
  const keys: string[] = [];
  const prefixes: string[] = [];
  const counts: number[] = [];
  let token: string | undefined;
  do {
    const out = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, Delimiter: '/', MaxKeys: maxKeys, ContinuationToken: token }));
    const page = [...(out.Contents ?? []).map((c) => c.Key!), ...(out.CommonPrefixes ?? []).map((p) => p.Prefix!)];
    expect(out.KeyCount).toBe(page.length);
    expect(page.length).toBeLessThanOrEqual(maxKeys);
    keys.push(...(out.Contents ?? []).map((c) => c.Key!));
    prefixes.push(...(out.CommonPrefixes ?? []).map((p) => p.Prefix!));
    counts.push(page.length);
    token = out.IsTruncated ? out.NextContinuationToken : undefined;
    if (out.IsTruncated) expect(token).toBeTruthy();
  } while (token);
  return { keys, prefixes, counts };
}

describe('listing with a delimiter', () => {
  it('yields the common prefix of a key two levels below the listed prefix', async () => {
    const out = await client.send(new ListObjectsV2Command({ Bucket: 'deep', Delimiter: '/' }));
    expect(out.Contents ?? []).toEqual([]);
    expect(out.CommonPrefixes?.map((p) => p.Prefix)).toEqual(['b/']);
    const inner = await client.send(new ListObjectsV2Command({ Bucket: 'deep', Prefix: 'b/', Delimiter: '/' }));
    expect(inner.CommonPrefixes?.map((p) => p.Prefix)).toEqual(['b/c/']);
  });

  it('pages across objects and prefixes without losing or repeating any, counting prefixes toward MaxKeys', async () => {
    const all = await listAllV2('mixed', '', 1000);
    expect(all.keys).toEqual(['a1', 'e1', 'g1', 'z9']);
    expect(all.prefixes).toEqual(['d1/', 'd2/', 'f/', 'h/']);
    for (const maxKeys of [1, 2, 3]) {
      const paged = await listAllV2('mixed', '', maxKeys);
      expect(paged.keys, `MaxKeys ${maxKeys}`).toEqual(all.keys);
      expect(paged.prefixes, `MaxKeys ${maxKeys}`).toEqual(all.prefixes);
      expect(paged.counts.reduce((a, b) => a + b, 0)).toBe(8);
    }
  });

  it('lists a prefix: its objects and deeper prefixes only', async () => {
    const d1 = await listAllV2('mixed', 'd1/', 1000);
    expect(d1.keys).toEqual(['d1/x']);
    expect(d1.prefixes).toEqual(['d1/y/']);
  });

  it('pages V1 listings with Marker and NextMarker', async () => {
    const seen: string[] = [];
    let marker: string | undefined;
    for (;;) {
      const out = await client.send(new ListObjectsCommand({ Bucket: 'mixed', Delimiter: '/', MaxKeys: 3, Marker: marker }));
      const page = [...(out.Contents ?? []).map((c) => c.Key!), ...(out.CommonPrefixes ?? []).map((p) => p.Prefix!)];
      seen.push(...page);
      if (!out.IsTruncated) break;
      marker = out.NextMarker;
      expect(marker).toBeTruthy();
    }
    expect(seen.sort()).toEqual(['a1', 'd1/', 'd2/', 'e1', 'f/', 'g1', 'h/', 'z9']);
  });

  it('pages a 3,000-key listing 1,000 at a time', async () => {
    const out = await listAllV2('many', 'k/', 1000);
    expect(out.counts).toEqual([1000, 1000, 1000]);
    expect(new Set(out.keys).size).toBe(3000);
    expect(out.keys[0]).toBe('k/0000');
    expect(out.keys[2999]).toBe('k/2999');
  });
});

describe('objects', () => {
  it('answers a ranged GET with 206 and exactly the bytes asked for', async () => {
    const body = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
    await s3.putObject('mixed', 'ranged.bin', body);
    const out = await client.send(new GetObjectCommand({ Bucket: 'mixed', Key: 'ranged.bin', Range: 'bytes=100-199' }));
    expect(out.$metadata.httpStatusCode).toBe(206);
    expect(out.ContentRange).toBe('bytes 100-199/1000');
    expect(Buffer.from(await out.Body!.transformToByteArray())).toEqual(body.subarray(100, 200));
  });
});

describe('a distant store (shapeResponses)', () => {
  it('delays every request by the time to first byte and paces each connection to its bandwidth', async () => {
    const body = Buffer.alloc(4 * 1024 * 1024, 7);
    await s3.putObject('mixed', 'paced.bin', body);
    const timed = async (run: () => Promise<unknown>): Promise<number> => {
      const t0 = performance.now();
      await run();
      return performance.now() - t0;
    };
    const get = async (): Promise<void> => {
      const out = await client.send(new GetObjectCommand({ Bucket: 'mixed', Key: 'paced.bin' }));
      // equals, not toEqual: vitest's deep comparison of 4 MiB takes a minute.
      expect(Buffer.from(await out.Body!.transformToByteArray()).equals(body)).toBe(true);
    };
    const list = () => client.send(new ListObjectsV2Command({ Bucket: 'mixed', MaxKeys: 5 }));
    s3.shapeResponses({ firstByteMs: 60, connectionBytesPerSecond: 10e6 });
    try {
      expect(await timed(list)).toBeGreaterThanOrEqual(60);
      // 4 MiB at 10 MB/s: 420 ms after the first byte.
      expect(await timed(get)).toBeGreaterThanOrEqual(60 + 400);
    } finally {
      s3.shapeResponses(undefined);
    }
    expect(() => s3.shapeResponses({ firstByteMs: -1 })).toThrow(/firstByteMs >= 0/);
  });
});

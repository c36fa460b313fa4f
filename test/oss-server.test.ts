/**
 * The local OSS test server against the real ali-oss SDK: signatures (V1 and V4)
 * accepted and rejected with the service's codes, ranged and conditional reads,
 * HEAD errors, and delimiter listings that paginate like the service.
 */
import { createHmac } from 'node:crypto';
import { request } from 'node:http';
import OSS from 'ali-oss';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startOssServer, type OssTestServer } from './support/oss-server.js';

const AK = 'LTAI5tTestAccessKeyId';
const SECRET = 'oss-test-secret-0123456789';
const BUCKET = 'cachefs-oss-test';

let server: OssTestServer;

function client(overrides: Partial<OSS.Options> = {}): OSS {
  return new OSS({ accessKeyId: AK, accessKeySecret: SECRET, endpoint: server.endpoint, region: server.region, bucket: BUCKET, ...overrides });
}

async function rejection(work: Promise<unknown>): Promise<{ status?: number; code?: string; name?: string }> {
  try {
    await work;
  } catch (err) {
    return err as { status?: number; code?: string; name?: string };
  }
  throw new Error('expected the request to fail');
}

/** A plain GET with our own headers (fetch would not let a test set Host). */
function rawGet(path: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${server.endpoint}${path}`, { headers: { Host: `${BUCKET}.${server.region}.aliyuncs.com`, ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** A V1 request signed here by hand, from the algorithm as OSS documents it. */
function signedGet(path: string, date: Date, secret = SECRET): Promise<{ status: number; body: string }> {
  const dateText = date.toUTCString();
  const stringToSign = ['GET', '', '', dateText, `/${BUCKET}${path}`].join('\n');
  const signature = createHmac('sha1', secret).update(stringToSign).digest('base64');
  return rawGet(path, { Date: dateText, Authorization: `OSS ${AK}:${signature}` });
}

beforeAll(async () => {
  server = await startOssServer({ buckets: [BUCKET, 'other-bucket'], accessKeyId: AK, secret: SECRET });
});

afterAll(async () => {
  await server.close();
});

beforeEach(() => {
  server.clearRequestLog();
});

describe('OSS test server with ali-oss', () => {
  it('accepts V1 signatures: put, get, head and list round-trip through the SDK', async () => {
    const oss = client();
    const put = await oss.put('dir/hello.txt', Buffer.from('hello oss'));
    expect(put.res.status).toBe(200);
    const got = await oss.get('dir/hello.txt');
    expect(Buffer.from(got.content as Buffer).toString()).toBe('hello oss');
    const head = await oss.head('dir/hello.txt');
    const headers = head.res.headers as Record<string, string>;
    expect(headers['content-length']).toBe('9');
    expect(headers.etag).toMatch(/^"[0-9A-F]{32}"$/);
    expect(new Date(headers['last-modified']!).getTime()).toBeGreaterThan(Date.now() - 60_000);
    const listed = await oss.listV2({ prefix: 'dir/', 'max-keys': 10 }, {});
    expect(listed.objects.map((o) => o.name)).toEqual(['dir/hello.txt']);
    const auth = server.requestLog()[0]!.headers.authorization;
    expect(auth).toMatch(new RegExp(`^OSS ${AK}:`));
  });

  it('accepts V4 signatures and rejects V4 with a wrong secret or region', async () => {
    server.put(BUCKET, 'v4/object.bin', 'four');
    const v4 = client({ authorizationV4: true });
    const got = await v4.get('v4/object.bin');
    expect(Buffer.from(got.content as Buffer).toString()).toBe('four');
    const listed = await v4.listV2({ prefix: 'v4/', delimiter: '/', 'max-keys': 5 }, {});
    expect(listed.objects.map((o) => o.name)).toEqual(['v4/object.bin']);
    expect(server.requestLog()[0]!.headers.authorization).toMatch(/^OSS4-HMAC-SHA256 Credential=/);

    const wrongSecret = await rejection(client({ authorizationV4: true, accessKeySecret: 'nope' }).get('v4/object.bin'));
    expect(wrongSecret).toMatchObject({ status: 403, code: 'SignatureDoesNotMatch' });
    const wrongRegion = await rejection(client({ authorizationV4: true, region: 'oss-cn-beijing' }).get('v4/object.bin'));
    expect(wrongRegion).toMatchObject({ status: 403, code: 'SignatureDoesNotMatch' });
  });

  it('rejects a wrong secret, an unknown key id and a missing signature with 403 and the service codes', async () => {
    server.put(BUCKET, 'secret.txt', 'x');
    expect(await rejection(client({ accessKeySecret: 'wrong' }).get('secret.txt'))).toMatchObject({ status: 403, code: 'SignatureDoesNotMatch' });
    expect(await rejection(client({ accessKeyId: 'LTAIunknown' }).listV2({ 'max-keys': 1 }, {}))).toMatchObject({
      status: 403,
      code: 'InvalidAccessKeyId',
    });
    const anonymous = await rawGet('/secret.txt', {});
    expect(anonymous.status).toBe(403);
    expect(anonymous.body).toContain('<Code>AccessDenied</Code>');
  });

  it('verifies signatures computed from the documented V1 algorithm and enforces the 15-minute clock skew', async () => {
    server.put(BUCKET, 'hand.txt', 'signed by hand');
    const ok = await signedGet('/hand.txt', new Date());
    expect(ok).toEqual({ status: 200, body: 'signed by hand' });
    const bad = await signedGet('/hand.txt', new Date(), 'other-secret');
    expect(bad.status).toBe(403);
    expect(bad.body).toContain('<Code>SignatureDoesNotMatch</Code>');
    const skewed = await signedGet('/hand.txt', new Date(Date.now() - 20 * 60 * 1000));
    expect(skewed.status).toBe(403);
    expect(skewed.body).toContain('<Code>RequestTimeTooSkewed</Code>');
  });

  it('answers ranges with 206 and Content-Range, and out-of-range requests as OSS does', async () => {
    const body = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
    server.put(BUCKET, 'range.bin', body);
    const oss = client();
    const mid = await oss.get('range.bin', { headers: { Range: 'bytes=100-199' } });
    expect(mid.res.status).toBe(206);
    expect((mid.res.headers as Record<string, string>)['content-range']).toBe('bytes 100-199/1000');
    expect(Buffer.compare(mid.content as Buffer, body.subarray(100, 200))).toBe(0);
    const tail = await oss.get('range.bin', { headers: { Range: 'bytes=990-2000' } });
    expect(tail.res.status).toBe(206);
    expect(Buffer.compare(tail.content as Buffer, body.subarray(990))).toBe(0);
    const suffix = await oss.get('range.bin', { headers: { Range: 'bytes=-10' } });
    expect(Buffer.compare(suffix.content as Buffer, body.subarray(990))).toBe(0);
    // Legacy behaviour: an unsatisfiable range is ignored and the whole object sent.
    const legacy = await oss.get('range.bin', { headers: { Range: 'bytes=5000-6000' } });
    expect(legacy.res.status).toBe(200);
    expect((legacy.content as Buffer).length).toBe(1000);
    const standard = await rejection(oss.get('range.bin', { headers: { Range: 'bytes=5000-6000', 'x-oss-range-behavior': 'standard' } }));
    expect(standard).toMatchObject({ status: 416, code: 'InvalidRange' });
  });

  it('honours If-Match with 412 PreconditionFailed', async () => {
    const etag = server.put(BUCKET, 'cond.txt', 'v1');
    const oss = client();
    const same = await oss.get('cond.txt', { headers: { 'If-Match': `"${etag}"` } });
    expect(Buffer.from(same.content as Buffer).toString()).toBe('v1');
    const stale = await rejection(oss.get('cond.txt', { headers: { 'If-Match': '"0123456789ABCDEF0123456789ABCDEF"' } }));
    expect(stale).toMatchObject({ status: 412, code: 'PreconditionFailed' });
  });

  it('reports missing keys and buckets, including HEAD errors carried in x-oss-err', async () => {
    const oss = client();
    expect(await rejection(oss.get('nope.txt'))).toMatchObject({ status: 404, code: 'NoSuchKey' });
    expect(await rejection(oss.head('nope.txt'))).toMatchObject({ status: 404, code: 'NoSuchKey' });
    expect(await rejection(client({ bucket: 'missing-bucket' }).listV2({}, {}))).toMatchObject({ status: 404, code: 'NoSuchBucket' });
    server.put(BUCKET, 'head.txt', 'h');
    expect(await rejection(client({ accessKeySecret: 'wrong' }).head('head.txt'))).toMatchObject({ status: 403, code: 'SignatureDoesNotMatch' });
  });

  it('injects throttling faults with the service code', async () => {
    server.failNext(503, 'SlowDown');
    expect(await rejection(client().listV2({}, {}))).toMatchObject({ status: 503, code: 'SlowDown' });
    await expect(client().listV2({ 'max-keys': 1 }, {})).resolves.toBeDefined();
  });

  describe('listing', () => {
    const keys = [
      'ls/a.txt',
      'ls/a/1',
      'ls/a/2',
      'ls/a/deep/3',
      'ls/a.zip',
      'ls/b/1',
      'ls/b0',
      'ls/c/',
      'ls/c/x',
      'ls/d',
      'ls/e/f/g/h',
      'ls/space name+plus%.txt',
      'ls/ünïcødé/文件',
    ];
    const expectedEntries = [
      'ls/a.txt',
      'ls/a.zip',
      'ls/a/',
      'ls/b/',
      'ls/b0',
      'ls/c/',
      'ls/d',
      'ls/e/',
      'ls/space name+plus%.txt',
      'ls/ünïcødé/',
    ];

    beforeAll(() => {
      for (const key of keys) server.put('other-bucket', key, key);
    });

    it('derives common prefixes from all keys and counts them toward max-keys (V1 marker paging)', async () => {
      const oss = client({ bucket: 'other-bucket' });
      for (const maxKeys of [1, 2, 3, 1000]) {
        const seen: string[] = [];
        let marker: string | undefined;
        for (let page = 0; page < 50; page++) {
          const out = await oss.list({ prefix: 'ls/', delimiter: '/', 'max-keys': maxKeys, ...(marker ? { marker } : {}) }, {});
          const names = [...out.objects.map((o) => o.name), ...(out.prefixes ?? [])];
          expect(names.length).toBeLessThanOrEqual(maxKeys);
          seen.push(...names);
          if (!out.isTruncated) break;
          marker = out.nextMarker ?? undefined;
        }
        expect(seen.sort()).toEqual([...expectedEntries].sort());
      }
    });

    it('paginates with continuation tokens across prefixes (V2) and URL-encodes names on request', async () => {
      const oss = client({ bucket: 'other-bucket' });
      const seen: string[] = [];
      let token: string | undefined;
      for (let page = 0; page < 50; page++) {
        const out = await oss.listV2(
          { prefix: 'ls/', delimiter: '/', 'max-keys': 2, 'encoding-type': 'url', ...(token ? { 'continuation-token': token } : {}) },
          {},
        );
        const names = [...out.objects.map((o) => o.name), ...(out.prefixes ?? [])].map((n) => decodeURIComponent(n));
        expect(names.length).toBeLessThanOrEqual(2);
        seen.push(...names);
        if (!out.isTruncated) break;
        token = out.nextContinuationToken;
      }
      expect(seen.sort()).toEqual([...expectedEntries].sort());
      expect(server.requestLog().some((r) => r.query.has('continuation-token'))).toBe(true);
    });

    it('lists a nested prefix without a delimiter as flat keys', async () => {
      const out = await client({ bucket: 'other-bucket' }).listV2({ prefix: 'ls/a/', 'max-keys': 100 }, {});
      expect(out.objects.map((o) => o.name)).toEqual(['ls/a/1', 'ls/a/2', 'ls/a/deep/3']);
      expect(out.prefixes ?? []).toEqual([]);
    });
  });
});

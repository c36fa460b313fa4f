/**
 * The local COS test server against the real cos-nodejs-sdk-v5: q-sign signatures
 * accepted and rejected with the service's codes, expiry of the signing window,
 * ranged and conditional reads, and GET Bucket listings that paginate with
 * delimiter and marker like the service.
 */
import { createHash, createHmac } from 'node:crypto';
import { request } from 'node:http';
import COS from 'cos-nodejs-sdk-v5';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startCosServer, type CosTestServer } from './support/cos-server.js';

const SECRET_ID = 'AKIDcachefsTestSecretId';
const SECRET_KEY = 'cos-test-secret-key-0123456789';
const BUCKET = 'cachefs-1250000000';
const OTHER = 'listing-1250000000';

let server: CosTestServer;

function client(overrides: Partial<COS.COSOptions> = {}): COS {
  return new COS({ SecretId: SECRET_ID, SecretKey: SECRET_KEY, Ip: `127.0.0.1:${server.port}`, Protocol: 'http:', ...overrides });
}

async function rejection(work: Promise<unknown>): Promise<{ statusCode?: number; code?: string }> {
  try {
    await work;
  } catch (err) {
    return err as { statusCode?: number; code?: string };
  }
  throw new Error('expected the request to fail');
}

function host(bucket = BUCKET): string {
  return `${bucket}.cos.${server.region}.myqcloud.com`;
}

function rawGet(path: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${server.endpoint}${path}`, { headers: { Host: host(), ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** A GET signed here by hand, step by step as Tencent documents the algorithm. */
function signedGet(key: string, signTime: string, secret = SECRET_KEY): Promise<{ status: number; body: string }> {
  const signKey = createHmac('sha1', secret).update(signTime).digest('hex');
  const httpString = ['get', `/${key}`, '', `host=${host()}`, ''].join('\n');
  const stringToSign = ['sha1', signTime, createHash('sha1').update(httpString).digest('hex'), ''].join('\n');
  const signature = createHmac('sha1', signKey).update(stringToSign).digest('hex');
  const auth = `q-sign-algorithm=sha1&q-ak=${SECRET_ID}&q-sign-time=${signTime}&q-key-time=${signTime}&q-header-list=host&q-url-param-list=&q-signature=${signature}`;
  return rawGet(`/${key}`, { Authorization: auth });
}

beforeAll(async () => {
  server = await startCosServer({ buckets: [BUCKET, OTHER], accessKeyId: SECRET_ID, secret: SECRET_KEY });
});

afterAll(async () => {
  await server.close();
});

beforeEach(() => {
  server.clearRequestLog();
});

describe('COS test server with cos-nodejs-sdk-v5', () => {
  const region = (): string => server.region;

  it('accepts SDK signatures: put, get, head and list round-trip', async () => {
    const cos = client();
    const put = await cos.putObject({ Bucket: BUCKET, Region: region(), Key: 'dir/hello.txt', Body: Buffer.from('hello cos') });
    expect(put.statusCode).toBe(200);
    const got = await cos.getObject({ Bucket: BUCKET, Region: region(), Key: 'dir/hello.txt' });
    expect(got.Body.toString()).toBe('hello cos');
    const head = await cos.headObject({ Bucket: BUCKET, Region: region(), Key: 'dir/hello.txt' });
    expect(head.headers?.['content-length']).toBe('9');
    expect(head.ETag).toMatch(/^"[0-9a-f]{32}"$/);
    const listed = await cos.getBucket({ Bucket: BUCKET, Region: region(), Prefix: 'dir/' });
    expect(listed.Contents.map((c) => c.Key)).toEqual(['dir/hello.txt']);
    const auth = server.requestLog()[0]!.headers.authorization ?? '';
    expect(auth).toMatch(/^q-sign-algorithm=sha1&q-ak=AKIDcachefsTestSecretId&q-sign-time=\d+;\d+&/);
    expect(server.requestLog()[0]!.headers.host).toBe(host());
    // The listing's query parameters are signed too, so the server verified them.
    expect(server.requestLog()[3]!.headers.authorization).toContain('&q-url-param-list=prefix&');
  });

  it('rejects a wrong SecretKey, an unknown SecretId and a missing signature with 403 and the service codes', async () => {
    server.put(BUCKET, 'secret.txt', 'x');
    const wrongKey = await rejection(client({ SecretKey: 'wrong' }).getObject({ Bucket: BUCKET, Region: region(), Key: 'secret.txt' }));
    expect(wrongKey).toMatchObject({ statusCode: 403, code: 'SignatureDoesNotMatch' });
    const unknownId = await rejection(client({ SecretId: 'AKIDunknown' }).getBucket({ Bucket: BUCKET, Region: region() }));
    expect(unknownId).toMatchObject({ statusCode: 403, code: 'InvalidAccessKeyId' });
    const anonymous = await rawGet('/secret.txt', {});
    expect(anonymous.status).toBe(403);
    expect(anonymous.body).toContain('<Code>AccessDenied</Code>');
  });

  it('verifies signatures computed from the documented algorithm and refuses expired ones', async () => {
    server.put(BUCKET, 'hand.txt', 'signed by hand');
    const now = Math.floor(Date.now() / 1000);
    expect(await signedGet('hand.txt', `${now - 5};${now + 600}`)).toEqual({ status: 200, body: 'signed by hand' });
    const bad = await signedGet('hand.txt', `${now - 5};${now + 600}`, 'other-secret');
    expect(bad.status).toBe(403);
    expect(bad.body).toContain('<Code>SignatureDoesNotMatch</Code>');
    const expired = await signedGet('hand.txt', `${now - 3600};${now - 1800}`);
    expect(expired.status).toBe(403);
    expect(expired.body).toContain('<Message>Request has expired</Message>');
  });

  it('answers ranges with 206 and Content-Range, and 416 InvalidRange past the end', async () => {
    const body = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 251));
    server.put(BUCKET, 'range.bin', body);
    const cos = client();
    const mid = await cos.getObject({ Bucket: BUCKET, Region: region(), Key: 'range.bin', Range: 'bytes=100-199' });
    expect(mid.statusCode).toBe(206);
    expect(mid.headers?.['content-range']).toBe('bytes 100-199/1000');
    expect(Buffer.compare(mid.Body, body.subarray(100, 200))).toBe(0);
    const tail = await cos.getObject({ Bucket: BUCKET, Region: region(), Key: 'range.bin', Range: 'bytes=990-5000' });
    expect(Buffer.compare(tail.Body, body.subarray(990))).toBe(0);
    const past = await rejection(cos.getObject({ Bucket: BUCKET, Region: region(), Key: 'range.bin', Range: 'bytes=1000-1099' }));
    expect(past).toMatchObject({ statusCode: 416, code: 'InvalidRange' });
  });

  it('honours If-Match with 412 PreconditionFailed', async () => {
    const etag = server.put(BUCKET, 'cond.txt', 'v1');
    const cos = client();
    const same = await cos.getObject({ Bucket: BUCKET, Region: region(), Key: 'cond.txt', IfMatch: `"${etag}"` });
    expect(same.Body.toString()).toBe('v1');
    const stale = await rejection(cos.getObject({ Bucket: BUCKET, Region: region(), Key: 'cond.txt', IfMatch: '"0123456789abcdef0123456789abcdef"' }));
    expect(stale).toMatchObject({ statusCode: 412, code: 'PreconditionFailed' });
  });

  it('reports missing keys and buckets; HEAD errors have no body', async () => {
    const cos = client();
    expect(await rejection(cos.getObject({ Bucket: BUCKET, Region: region(), Key: 'nope.txt' }))).toMatchObject({ statusCode: 404, code: 'NoSuchKey' });
    expect(await rejection(cos.headObject({ Bucket: BUCKET, Region: region(), Key: 'nope.txt' }))).toMatchObject({ statusCode: 404, code: '404' });
    expect(await rejection(cos.getBucket({ Bucket: 'missing-1250000000', Region: region() }))).toMatchObject({ statusCode: 404, code: 'NoSuchBucket' });
  });

  it('injects throttling faults with the service code', async () => {
    server.failNext(429, 'SlowDown');
    expect(await rejection(client().getBucket({ Bucket: BUCKET, Region: region() }))).toMatchObject({ statusCode: 429, code: 'SlowDown' });
    await expect(client().getBucket({ Bucket: BUCKET, Region: region(), MaxKeys: 1 })).resolves.toBeDefined();
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
    const expectedEntries = ['ls/a.txt', 'ls/a.zip', 'ls/a/', 'ls/b/', 'ls/b0', 'ls/c/', 'ls/d', 'ls/e/', 'ls/space name+plus%.txt', 'ls/ünïcødé/'];

    beforeAll(() => {
      for (const key of keys) server.put(OTHER, key, key);
    });

    it('derives common prefixes from all keys, counts them toward max-keys and pages with NextMarker', async () => {
      const cos = client();
      for (const maxKeys of [1, 2, 3, 1000]) {
        for (const encoded of [false, true]) {
          const seen: string[] = [];
          let marker: string | undefined;
          for (let page = 0; page < 50; page++) {
            const out = await cos.getBucket({
              Bucket: OTHER,
              Region: region(),
              Prefix: 'ls/',
              Delimiter: '/',
              MaxKeys: maxKeys,
              ...(marker !== undefined ? { Marker: marker } : {}),
              ...(encoded ? { EncodingType: 'url' } : {}),
            });
            const decode = (s: string): string => (encoded ? decodeURIComponent(s) : s);
            const names = [...out.Contents.map((c) => decode(c.Key)), ...out.CommonPrefixes.map((p) => decode(p.Prefix))];
            expect(names.length).toBeLessThanOrEqual(maxKeys);
            seen.push(...names);
            if (out.IsTruncated !== 'true') break;
            marker = decode(out.NextMarker ?? '');
          }
          expect(seen.sort()).toEqual([...expectedEntries].sort());
        }
      }
    });

    it('lists a nested prefix without a delimiter as flat keys', async () => {
      const out = await client().getBucket({ Bucket: OTHER, Region: region(), Prefix: 'ls/a/' });
      expect(out.Contents.map((c) => c.Key)).toEqual(['ls/a/1', 'ls/a/2', 'ls/a/deep/3']);
      expect(out.CommonPrefixes).toEqual([]);
    });
  });
});

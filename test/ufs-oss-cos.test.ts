/**
 * OssUfs and CosUfs against the local protocol servers, from one table of cases:
 * check(), stat, delimiter listings with nested directories and pagination over
 * thousands of keys, byte-exact ranged reads, STALE on a changed object, and the
 * error contract (ACCESS_DENIED naming the bucket and never a credential,
 * BUCKET_NOT_FOUND, THROTTLED, UNREACHABLE within seconds).
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CachefsError } from '../src/errors.js';
import { CosUfs } from '../src/ufs/cos.js';
import { openUfs } from '../src/ufs/open-ufs.js';
import { OssUfs } from '../src/ufs/oss.js';
import type { Ufs, UfsListPage, UfsObject, UfsOptions, UfsReadOptions } from '../src/ufs/ufs.js';
import { parseUfsUri } from '../src/ufs/uri.js';
import { startCosServer, type CosTestServer } from './support/cos-server.js';
import { startOssServer, type OssTestServer } from './support/oss-server.js';

/** The bytes `readInto` puts in a buffer of `length`: what the range holds. */
async function readRange(ufs: Ufs, key: string, offset: number, length: number, options?: UfsReadOptions): Promise<Buffer> {
  const dest = Buffer.alloc(length);
  return dest.subarray(0, await ufs.readInto(key, offset, dest, options));
}

const OSS_AK = 'LTAI5tUfsTestKeyId';
const OSS_SECRET = 'oss-ufs-secret-DO-NOT-LEAK-42';
const COS_ID = 'AKIDufsTestSecretId';
const COS_KEY = 'cos-ufs-secret-DO-NOT-LEAK-42';

interface Backend {
  name: 'oss' | 'cos';
  scheme: string;
  bucket: string;
  missingBucket: string;
  accessKeyId: string;
  secret: string;
  idOption: string;
  secretOption: string;
  tokenOption: string;
  tokenHeader: string;
  start(): Promise<void>;
  close(): Promise<void>;
  put(key: string, body: Buffer | string): string;
  options(): Record<string, string>;
  /** Makes the server answer the next requests with 503 SlowDown, enough to outlast the SDK's own retries. */
  throttle(): void;
  lastRequestHeaders(): Record<string, string | string[] | undefined>;
}

function ossBackend(): Backend {
  let server: OssTestServer;
  return {
    name: 'oss',
    scheme: 'oss',
    bucket: 'cachefs-data',
    missingBucket: 'no-such-bucket',
    accessKeyId: OSS_AK,
    secret: OSS_SECRET,
    idOption: 'oss.accessKeyId',
    secretOption: 'oss.accessKeySecret',
    tokenOption: 'oss.securityToken',
    tokenHeader: 'x-oss-security-token',
    async start() {
      server = await startOssServer({ buckets: ['cachefs-data'], accessKeyId: OSS_AK, secret: OSS_SECRET });
    },
    close: () => server.close(),
    put: (key, body) => server.put('cachefs-data', key, body),
    options: () => server.ufsOptions(),
    throttle: () => server.failNext(503, 'SlowDown', 1),
    lastRequestHeaders: () => server.requestLog().at(-1)!.headers,
  };
}

function cosBackend(): Backend {
  let server: CosTestServer;
  return {
    name: 'cos',
    scheme: 'cosn',
    bucket: 'cachefs-1250000000',
    missingBucket: 'missing-1250000000',
    accessKeyId: COS_ID,
    secret: COS_KEY,
    idOption: 'cos.secretId',
    secretOption: 'cos.secretKey',
    tokenOption: 'cos.securityToken',
    tokenHeader: 'x-cos-security-token',
    async start() {
      server = await startCosServer({ buckets: ['cachefs-1250000000'], accessKeyId: COS_ID, secret: COS_KEY });
    },
    close: () => server.close(),
    put: (key, body) => server.put('cachefs-1250000000', key, body),
    options: () => server.ufsOptions(),
    // The COS SDK retries a 5xx three times before giving up.
    throttle: () => server.failNext(503, 'SlowDown', 4),
    lastRequestHeaders: () => server.requestLog().at(-1)!.headers,
  };
}

async function failure(work: Promise<unknown>): Promise<CachefsError> {
  try {
    await work;
  } catch (err) {
    expect(err).toBeInstanceOf(CachefsError);
    return err as CachefsError;
  }
  throw new Error('expected the call to fail');
}

async function listAll(ufs: Ufs, prefix: string, maxKeys?: number): Promise<{ objects: UfsObject[]; prefixes: string[]; pages: number }> {
  const objects: UfsObject[] = [];
  const prefixes: string[] = [];
  let token: string | undefined;
  let pages = 0;
  do {
    const page: UfsListPage = await ufs.list(prefix, { token, maxKeys });
    pages++;
    objects.push(...page.objects);
    prefixes.push(...page.prefixes);
    token = page.nextToken;
  } while (token !== undefined && pages < 1000);
  return { objects, prefixes, pages };
}

/** A port on 127.0.0.1 that nothing listens on. */
async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as { port: number };
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

const BIG = randomBytes(3 * 1024 * 1024 + 123);
const MANY = 2500;

describe.each([ossBackend(), cosBackend()])('$name UFS', (backend) => {
  const opened: Ufs[] = [];
  const uri = (bucket = backend.bucket, prefix = 'data/'): string => `${backend.scheme}://${bucket}/${prefix}`;
  const open = async (options: UfsOptions = backend.options(), text = uri()): Promise<Ufs> => {
    const ufs = await openUfs(text, options);
    opened.push(ufs);
    return ufs;
  };

  beforeAll(async () => {
    await backend.start();
    backend.put('data/big.bin', BIG);
    backend.put('data/empty', '');
    backend.put('data/dir/', '');
    backend.put('data/dir/a.txt', 'a');
    backend.put('data/dir/sub/b.txt', 'bb');
    backend.put('data/dir/sub/deeper/c.txt', 'ccc');
    backend.put('data/ünïcødé 文件 +%.txt', 'unicode');
    backend.put('outside.txt', 'not under the root');
    for (let i = 0; i < MANY; i++) backend.put(`data/many/f${String(i).padStart(5, '0')}`, String(i));
    for (let i = 0; i < 30; i++) backend.put(`data/many/d${String(i).padStart(2, '0')}/x`, 'x');
  });

  afterAll(async () => {
    for (const ufs of opened) await ufs.close();
    await backend.close();
  });

  it('is opened from its URI by openUfs and shows the URI as given', async () => {
    const ufs = await open();
    expect(ufs).toBeInstanceOf(backend.name === 'oss' ? OssUfs : CosUfs);
    expect(ufs.displayUri).toBe(uri());
  });

  it('check() passes for an existing bucket with working credentials', async () => {
    await expect((await open()).check()).resolves.toBeUndefined();
  });

  it('stats objects relative to the root, and answers null for what is not there', async () => {
    const ufs = await open();
    const big = await ufs.stat('big.bin');
    expect(big).toMatchObject({ key: 'big.bin', size: BIG.length });
    expect(big!.etag).toMatch(/^[0-9a-fA-F]{32}$/);
    expect(big!.mtimeMs).toBeGreaterThan(Date.now() - 10 * 60_000);
    expect(await ufs.stat('empty')).toMatchObject({ size: 0 });
    expect(await ufs.stat('dir/')).toMatchObject({ key: 'dir/', size: 0 });
    expect(await ufs.stat('ünïcødé 文件 +%.txt')).toMatchObject({ size: 7 });
    expect(await ufs.stat('missing.txt')).toBeNull();
    expect(await ufs.stat('dir')).toBeNull();
    expect(await ufs.stat('outside.txt')).toBeNull();
  });

  it('lists nested directories one level at a time, relative to the root', async () => {
    const ufs = await open();
    const top = await listAll(ufs, '');
    expect(top.objects.map((o) => o.key).sort()).toEqual(['big.bin', 'empty', 'ünïcødé 文件 +%.txt'].sort());
    expect(top.prefixes.sort()).toEqual(['dir/', 'many/']);
    const dir = await listAll(ufs, 'dir/');
    expect(dir.objects.map((o) => o.key)).toEqual(['dir/', 'dir/a.txt']);
    expect(dir.prefixes).toEqual(['dir/sub/']);
    const sub = await listAll(ufs, 'dir/sub/');
    expect(sub.objects.map((o) => ({ key: o.key, size: o.size }))).toEqual([{ key: 'dir/sub/b.txt', size: 2 }]);
    expect(sub.prefixes).toEqual(['dir/sub/deeper/']);
    expect(sub.objects[0]!.etag).toMatch(/^[0-9a-fA-F]{32}$/);
    expect(await listAll(ufs, 'nothing/')).toEqual({ objects: [], prefixes: [], pages: 1 });
  });

  it(`pages through ${MANY} keys and 30 sub-directories without losing or repeating any`, async () => {
    const ufs = await open();
    const all = await listAll(ufs, 'many/');
    expect(all.pages).toBe(3);
    expect(all.objects).toHaveLength(MANY);
    expect(new Set(all.objects.map((o) => o.key)).size).toBe(MANY);
    expect(all.objects[0]).toMatchObject({ key: 'many/f00000', size: 1 });
    expect(all.prefixes).toHaveLength(30);
    const small = await listAll(ufs, 'many/', 7);
    expect(small.pages).toBe(Math.ceil((MANY + 30) / 7));
    expect([...small.objects.map((o) => o.key), ...small.prefixes].sort()).toEqual([...all.objects.map((o) => o.key), ...all.prefixes].sort());
  });

  it('reads ranges byte-exact, including across and at the end of the object', async () => {
    const ufs = await open();
    const cases: [number, number][] = [
      [0, 1],
      [0, 4 * 1024 * 1024],
      [12345, 1024 * 1024],
      [BIG.length - 100, 100],
      [BIG.length - 100, 4096],
      [BIG.length - 1, 1],
    ];
    for (const [offset, length] of cases) {
      const got = await readRange(ufs, 'big.bin', offset, length);
      expect(Buffer.compare(got, BIG.subarray(offset, offset + length)), `${offset}+${length}`).toBe(0);
    }
    expect((await readRange(ufs, 'big.bin', BIG.length, 10)).length).toBe(0);
    expect((await readRange(ufs, 'big.bin', BIG.length + 5000, 10)).length).toBe(0);
    expect((await readRange(ufs, 'empty', 0, 10)).length).toBe(0);
    expect((await readRange(ufs, 'big.bin', 10, 0)).length).toBe(0);
    const etag = (await ufs.stat('big.bin'))!.etag;
    expect(Buffer.compare(await readRange(ufs, 'big.bin', 7, 9, { etag }), BIG.subarray(7, 16))).toBe(0);
    expect((await failure(readRange(ufs, 'missing.bin', 0, 10))).code).toBe('NOT_FOUND');
  });

  it('fills several buffers in order from one read, progress rising to the count returned', async () => {
    const ufs = await open();
    const parts = [Buffer.alloc(1024 * 1024), Buffer.alloc(0), Buffer.alloc(2 * 1024 * 1024 + 500)];
    const told: number[] = [];
    const n = await ufs.readInto('big.bin', 99, parts, { onProgress: (filled) => told.push(filled) });
    expect(n).toBe(BIG.length - 99);
    expect(Buffer.concat(parts).subarray(0, n).equals(BIG.subarray(99))).toBe(true);
    expect(told.every((x, i) => i === 0 || x >= told[i - 1]!)).toBe(true);
    if (told.length > 0) expect(told.at(-1)).toBe(n);
  });

  it('fails with STALE when the object changed since its ETag was taken', async () => {
    const ufs = await open();
    backend.put('data/changing.txt', 'version one');
    const before = (await ufs.stat('changing.txt'))!;
    backend.put('data/changing.txt', 'version two!');
    const err = await failure(readRange(ufs, 'changing.txt', 0, 5, { etag: before.etag }));
    expect(err.code).toBe('STALE');
    expect(err.message).toContain(`${backend.scheme}://${backend.bucket}/data/changing.txt`);
  });

  it('maps a wrong secret to ACCESS_DENIED naming the bucket and never the credentials', async () => {
    const wrong = 'wrong-secret-DO-NOT-LEAK-7';
    const ufs = await open({ ...backend.options(), [backend.secretOption]: wrong });
    const errors = [await failure(ufs.check()), await failure(ufs.list('')), await failure(readRange(ufs, 'big.bin', 0, 10)), await failure(ufs.stat('big.bin'))];
    for (const err of errors) {
      expect(err.code).toBe('ACCESS_DENIED');
      expect(err.message).toMatch(new RegExp(`^access denied to ${backend.scheme}://${backend.bucket}`));
      const everything = `${err.message}\n${err.stack}\n${inspect(err, { depth: 10 })}\n${JSON.stringify(err)}`;
      for (const secret of [wrong, backend.secret, backend.accessKeyId]) expect(everything).not.toContain(secret);
    }
    expect(errors[0]!.message).toBe(`access denied to ${backend.scheme}://${backend.bucket}: SignatureDoesNotMatch`);
  });

  it('maps an unknown access key to ACCESS_DENIED', async () => {
    const ufs = await open({ ...backend.options(), [backend.idOption]: 'unknown-key-id' });
    const err = await failure(ufs.check());
    expect(err.code).toBe('ACCESS_DENIED');
    expect(err.message).toBe(`access denied to ${backend.scheme}://${backend.bucket}: InvalidAccessKeyId`);
    expect(inspect(err, { depth: 10 })).not.toContain('unknown-key-id');
  });

  it('maps a missing bucket to BUCKET_NOT_FOUND naming it', async () => {
    const ufs = await open(backend.options(), uri(backend.missingBucket, ''));
    const err = await failure(ufs.check());
    expect(err.code).toBe('BUCKET_NOT_FOUND');
    expect(err.message).toBe(`bucket not found: ${backend.scheme}://${backend.missingBucket}`);
    expect((await failure(ufs.list('x/'))).code).toBe('BUCKET_NOT_FOUND');
  });

  it('maps 503 SlowDown to THROTTLED', async () => {
    const ufs = await open();
    backend.throttle();
    expect((await failure(ufs.list(''))).code).toBe('THROTTLED');
    await expect(ufs.list('')).resolves.toBeDefined();
  });

  it('fails fast with UNREACHABLE when nothing listens at the endpoint', async () => {
    const endpointOption = backend.name === 'oss' ? 'oss.endpoint' : 'cos.endpoint';
    const ufs = await open({ ...backend.options(), [endpointOption]: `http://127.0.0.1:${await closedPort()}` });
    const started = Date.now();
    const err = await failure(ufs.check());
    expect(err.code).toBe('UNREACHABLE');
    expect(err.message).toContain(`${backend.scheme}://${backend.bucket}`);
    expect(Date.now() - started).toBeLessThan(5000);
    expect((await failure(readRange(ufs, 'big.bin', 0, 1))).code).toBe('UNREACHABLE');
  });

  it('takes credentials from the environment when no option names them', async () => {
    const envId = backend.name === 'oss' ? 'OSS_ACCESS_KEY_ID' : 'COS_SECRET_ID';
    const envSecret = backend.name === 'oss' ? 'OSS_ACCESS_KEY_SECRET' : 'COS_SECRET_KEY';
    const options = { ...backend.options() };
    delete options[backend.idOption];
    delete options[backend.secretOption];
    process.env[envId] = backend.accessKeyId;
    process.env[envSecret] = backend.secret;
    try {
      await expect((await open(options)).check()).resolves.toBeUndefined();
    } finally {
      delete process.env[envId];
      delete process.env[envSecret];
    }
    const missing = await failure(open(options));
    expect(missing.code).toBe('INVALID_ARGUMENT');
    expect(missing.message).toContain(backend.secretOption);
  });

  it('sends an STS security token when one is given', async () => {
    const ufs = await open({ ...backend.options(), [backend.tokenOption]: 'sts-token-value' });
    await ufs.stat('big.bin');
    expect(backend.lastRequestHeaders()[backend.tokenHeader]).toBe('sts-token-value');
  });

  it('rejects a malformed endpoint with INVALID_ARGUMENT', async () => {
    const endpointOption = backend.name === 'oss' ? 'oss.endpoint' : 'cos.endpoint';
    const err = await failure(open({ ...backend.options(), [endpointOption]: 'ftp://host/path?x' }));
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toContain('ftp://host/path?x');
  });

  it('gives up on an aborted signal without waiting for the store', async () => {
    const ufs = await open();
    const err = await failure(readRange(ufs, 'big.bin', 0, 10, { signal: AbortSignal.abort() }));
    expect(err.code).toBe('IO');
    const timedOut = await failure(ufs.list('', { signal: AbortSignal.timeout(0) }));
    expect(['TIMEOUT', 'IO']).toContain(timedOut.code);
  });
});

describe('OSS specifics', () => {
  let server: OssTestServer;
  beforeAll(async () => {
    server = await startOssServer({ buckets: ['v4-bucket'], accessKeyId: OSS_AK, secret: OSS_SECRET, region: 'cn-beijing' });
    server.put('v4-bucket', 'k', 'v4 works');
  });
  afterAll(() => server.close());

  it('signs with V4 when asked, scoped to the configured region', async () => {
    const ufs = new OssUfs(parseUfsUri('oss://v4-bucket'), { ...server.ufsOptions(), 'oss.signatureVersion': 'v4', 'oss.region': 'cn-beijing' });
    expect((await readRange(ufs, 'k', 0, 100)).toString()).toBe('v4 works');
    expect(server.requestLog().at(-1)!.headers.authorization).toMatch(/^OSS4-HMAC-SHA256 Credential=LTAI5tUfsTestKeyId\/\d{8}\/cn-beijing\/oss\//);
    await ufs.close();
  });

  it('derives the region from a standard endpoint and requires one otherwise', () => {
    expect(() => new OssUfs(parseUfsUri('oss://b-1'), { 'oss.endpoint': 'oss-cn-beijing-internal.aliyuncs.com', 'oss.accessKeyId': 'a', 'oss.accessKeySecret': 's' })).not.toThrow();
    expect(() => new OssUfs(parseUfsUri('oss://b-1'), { 'oss.accessKeyId': 'a', 'oss.accessKeySecret': 's' })).toThrow(/oss.endpoint .* or oss.region/);
    expect(() =>
      new OssUfs(parseUfsUri('oss://b-1'), { 'oss.endpoint': 'http://10.0.0.1:8080', 'oss.signatureVersion': 'v4', 'oss.accessKeyId': 'a', 'oss.accessKeySecret': 's' }),
    ).toThrow(/oss.region is required for V4/);
  });
});

describe('COS specifics', () => {
  it('derives the region from a standard endpoint and requires one otherwise', () => {
    const creds = { 'cos.secretId': 'a', 'cos.secretKey': 's' };
    expect(() => new CosUfs(parseUfsUri('cosn://b-1250000000'), { ...creds, 'cos.endpoint': 'cos.ap-beijing.myqcloud.com' })).not.toThrow();
    expect(() => new CosUfs(parseUfsUri('cos://b-1250000000'), { ...creds, 'cos.endpoint': 'cos-internal.ap-shanghai.tencentcos.cn' })).not.toThrow();
    expect(() => new CosUfs(parseUfsUri('cosn://b-1250000000'), creds)).toThrow(/cos.region/);
  });
});

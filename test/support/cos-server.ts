/**
 * A local Tencent Cloud COS server for tests: node:http on 127.0.0.1 with a free
 * port and an in-memory bucket store, speaking enough of the COS XML API that
 * cos-nodejs-sdk-v5 cannot tell it from the service. It owns:
 *
 * - virtual-hosted addressing (`Host: bucket-appid.cos.<region>.myqcloud.com`, which
 *   the SDK sends when its `Ip` option points it at this server);
 * - signature verification of `q-sign-algorithm=sha1&q-ak=…&q-sign-time=…&q-key-time=…
 *   &q-header-list=…&q-url-param-list=…&q-signature=…` as Tencent documents it:
 *   SignKey = HMAC-SHA1(SecretKey, KeyTime); HttpString = method, path, the listed
 *   parameters and headers (keys lower-cased, keys and values URL-encoded, sorted);
 *   StringToSign = sha1, SignTime, SHA1(HttpString); Signature = HMAC-SHA1(SignKey,
 *   StringToSign). A request outside its q-sign-time is refused as expired. Failures
 *   answer 403 with AccessDenied, InvalidAccessKeyId or SignatureDoesNotMatch;
 * - GetObject with Range (206, Content-Range; 416 InvalidRange when unsatisfiable),
 *   If-Match / If-None-Match, HeadObject (no body on errors, as the service),
 *   PutObject, DeleteObject, and GET Bucket (ListObjects) with prefix, delimiter,
 *   marker, max-keys and encoding-type=url, common prefixes derived from all keys and
 *   counted toward max-keys, NextMarker on every truncated page;
 * - error XML bodies (`<Error><Code>…<Resource>…<RequestId>…<TraceId>`).
 *
 * Everything cachefs never calls (multipart, ACLs, versioning, CI) is left out.
 * Faults are injected with `failNext` and requests are recorded for tests to count.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface StartCosServerOptions {
  /** Bucket names with their APPID, e.g. `data-1250000000`. */
  buckets: readonly string[];
  /** The SecretId. */
  accessKeyId: string;
  /** The SecretKey. */
  secret: string;
  /** Default ap-guangzhou. */
  region?: string;
}

export interface RecordedCosRequest {
  method: string;
  bucket: string;
  key: string;
  query: URLSearchParams;
  headers: IncomingMessage['headers'];
}

export interface CosTestServer {
  /** `http://127.0.0.1:<port>` */
  readonly endpoint: string;
  readonly port: number;
  readonly region: string;
  /** The options a CosUfs needs to reach this server with the right credentials. */
  ufsOptions(): Record<string, string>;
  /** Stores an object directly, bypassing the protocol; returns its ETag without quotes. */
  put(bucket: string, key: string, body: Buffer | string): string;
  remove(bucket: string, key: string): void;
  /** Answers the next `count` requests with this error instead of serving them. */
  /** The next `count` requests (for `key` only, when given) fail with this status and code. */
  failNext(status: number, code: string, count?: number, key?: string): void;
  requestLog(): readonly RecordedCosRequest[];
  clearRequestLog(): void;
  close(): Promise<void>;
}

interface StoredObject {
  body: Buffer;
  /** Lower-case MD5 hex, as COS reports it for simple uploads. */
  etag: string;
  /** Whole seconds, so that Last-Modified and the listing agree. */
  mtimeMs: number;
}

class Bucket {
  readonly objects = new Map<string, StoredObject>();
  private sorted: string[] | undefined;

  set(key: string, object: StoredObject): void {
    if (!this.objects.has(key)) this.sorted = undefined;
    this.objects.set(key, object);
  }

  delete(key: string): void {
    if (this.objects.delete(key)) this.sorted = undefined;
  }

  keys(): string[] {
    this.sorted ??= [...this.objects.keys()].sort(compareBytes);
    return this.sorted;
  }
}

interface ListEntry {
  name: string;
  object?: StoredObject;
}

class CosError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const OWNER_ID = 'qcs::cam::uin/100000000001:uin/100000000001';

export async function startCosServer(options: StartCosServerOptions): Promise<CosTestServer> {
  const region = options.region ?? 'ap-guangzhou';
  const buckets = new Map<string, Bucket>(options.buckets.map((name) => [name, new Bucket()]));
  const log: RecordedCosRequest[] = [];
  const faults: { status: number; code: string; key?: string }[] = [];
  const sockets = new Set<Socket>();

  const putObject = (bucket: Bucket, key: string, body: Buffer): StoredObject => {
    const object = { body, etag: createHash('md5').update(body).digest('hex'), mtimeMs: Math.floor(Date.now() / 1000) * 1000 };
    bucket.set(key, object);
    return object;
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) sendError(req, res, new CosError(500, 'InternalError', String(err)), '', '');
      else res.destroy();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = randomBytes(18).toString('base64url');
    res.setHeader('Server', 'tencent-cos');
    res.setHeader('x-cos-request-id', requestId);
    res.setHeader('Date', new Date().toUTCString());
    const url = new URL(req.url ?? '/', 'http://cos.invalid');
    const host = (header(req, 'host') ?? '').replace(/:\d+$/, '');
    const dot = host.indexOf('.');
    const bucketName = dot > 0 ? host.slice(0, dot) : '';
    const key = decodeURIComponent(url.pathname.slice(1));
    const method = req.method ?? 'GET';
    log.push({ method, bucket: bucketName, key, query: url.searchParams, headers: req.headers });
    const body = await readBody(req);
    const resource = `${host}/${key}`;
    try {
      const at = faults.findIndex((f) => f.key === undefined || f.key === key);
      const fault = at < 0 ? undefined : faults.splice(at, 1)[0];
      if (fault) throw new CosError(fault.status, fault.code, 'Injected fault.');
      authenticate(req, method, url, key);
      const bucket = buckets.get(bucketName);
      if (!bucket) throw new CosError(404, 'NoSuchBucket', 'The specified bucket does not exist.');
      if (key === '') {
        if (method !== 'GET') throw new CosError(405, 'MethodNotAllowed', 'The specified method is not allowed against this resource.');
        return sendXml(res, listXml(bucketName, bucket, url.searchParams));
      }
      switch (method) {
        case 'GET':
        case 'HEAD':
          return getObject(req, res, bucket, key, method === 'HEAD');
        case 'PUT': {
          const md5 = header(req, 'content-md5');
          if (md5 !== undefined && md5 !== createHash('md5').update(body).digest('base64')) {
            throw new CosError(400, 'InvalidDigest', 'The Content-MD5 you specified did not match what we received.');
          }
          const object = putObject(bucket, key, body);
          res.setHeader('ETag', `"${object.etag}"`);
          res.setHeader('Content-Length', 0);
          res.end();
          return;
        }
        case 'DELETE':
          bucket.delete(key);
          res.statusCode = 204;
          res.end();
          return;
        default:
          throw new CosError(405, 'MethodNotAllowed', 'The specified method is not allowed against this resource.');
      }
    } catch (err) {
      if (!(err instanceof CosError)) throw err;
      sendError(req, res, err, requestId, resource);
    }
  }

  function authenticate(req: IncomingMessage, method: string, url: URL, key: string): void {
    const auth = header(req, 'authorization');
    if (!auth) throw new CosError(403, 'AccessDenied', 'Access Denied.');
    const fields = new Map<string, string>();
    for (const part of auth.split('&')) {
      const eq = part.indexOf('=');
      if (eq > 0) fields.set(part.slice(0, eq), part.slice(eq + 1));
    }
    const signTime = fields.get('q-sign-time') ?? '';
    const keyTime = fields.get('q-key-time') ?? '';
    const provided = fields.get('q-signature') ?? '';
    if (fields.get('q-sign-algorithm') !== 'sha1' || !signTime || !keyTime || !provided || !fields.has('q-ak')) {
      throw new CosError(403, 'AccessDenied', 'Authorization header format is invalid.');
    }
    if (fields.get('q-ak') !== options.accessKeyId) {
      throw new CosError(403, 'InvalidAccessKeyId', 'The Access Key Id you provided does not exist in our records.');
    }
    const [start, end] = signTime.split(';').map(Number);
    const now = Date.now() / 1000;
    if (start === undefined || end === undefined || !(start <= now + 1 && now <= end)) throw new CosError(403, 'AccessDenied', 'Request has expired');

    const listed = (name: string): string[] => (fields.get(name) ?? '').split(';').filter((k) => k !== '');
    const params = new Map<string, string>();
    for (const [k, v] of url.searchParams) params.set(cosEncode(k).toLowerCase(), cosEncode(v));
    const headers = new Map<string, string>();
    for (const [k, v] of Object.entries(req.headers)) headers.set(cosEncode(k).toLowerCase(), cosEncode(Array.isArray(v) ? v.join(',') : (v ?? '')));
    const pairs = (names: string[], values: Map<string, string>): string =>
      [...names]
        .sort(compareBytes)
        .map((k) => `${k}=${values.get(k) ?? ''}`)
        .join('&');
    const httpString = [method.toLowerCase(), `/${key}`, pairs(listed('q-url-param-list'), params), pairs(listed('q-header-list'), headers), ''].join('\n');
    const stringToSign = ['sha1', signTime, createHash('sha1').update(httpString, 'utf8').digest('hex'), ''].join('\n');
    const signKey = createHmac('sha1', options.secret).update(keyTime).digest('hex');
    const expected = createHmac('sha1', signKey).update(stringToSign).digest('hex');
    if (!sameText(expected, provided)) {
      throw new CosError(403, 'SignatureDoesNotMatch', 'The Signature you specified is invalid.');
    }
  }

  function getObject(req: IncomingMessage, res: ServerResponse, bucket: Bucket, key: string, head: boolean): void {
    const object = bucket.objects.get(key);
    if (!object) throw new CosError(404, 'NoSuchKey', 'The specified key does not exist.');
    const ifMatch = header(req, 'if-match');
    if (ifMatch !== undefined && !etagListMatches(ifMatch, object.etag)) {
      throw new CosError(412, 'PreconditionFailed', 'Precondition not match.');
    }
    res.setHeader('ETag', `"${object.etag}"`);
    res.setHeader('Last-Modified', new Date(object.mtimeMs).toUTCString());
    res.setHeader('Accept-Ranges', 'bytes');
    res.setHeader('Content-Type', 'application/octet-stream');
    res.setHeader('x-cos-hash-crc64ecma', '0');
    const ifNoneMatch = header(req, 'if-none-match');
    if (ifNoneMatch !== undefined && etagListMatches(ifNoneMatch, object.etag)) {
      res.statusCode = 304;
      res.end();
      return;
    }
    const size = object.body.length;
    let start = 0;
    let end = size - 1;
    const range = head ? undefined : header(req, 'range');
    if (range !== undefined) {
      const parsed = parseRange(range, size);
      if (!parsed) {
        res.setHeader('Content-Range', `bytes */${size}`);
        throw new CosError(416, 'InvalidRange', 'The Range you specified is not valid.');
      }
      [start, end] = parsed;
      res.statusCode = 206;
      res.setHeader('Content-Range', `bytes ${start}-${end}/${size}`);
    }
    res.setHeader('Content-Length', end - start + 1);
    if (head) res.end();
    else res.end(object.body.subarray(start, end + 1));
  }

  function sendError(req: IncomingMessage, res: ServerResponse, err: CosError, requestId: string, resource: string): void {
    res.statusCode = err.status;
    if (req.method === 'HEAD') {
      res.setHeader('Content-Length', 0);
      res.end();
      return;
    }
    const xml =
      "<?xml version='1.0' encoding='utf-8' ?>\n<Error>\n" +
      `\t<Code>${err.code}</Code>\n\t<Message>${escapeXml(err.message)}</Message>\n` +
      `\t<Resource>${escapeXml(resource)}</Resource>\n\t<RequestId>${requestId}</RequestId>\n` +
      `\t<TraceId>${randomBytes(24).toString('base64')}</TraceId>\n</Error>\n`;
    res.setHeader('Content-Type', 'application/xml');
    res.setHeader('Content-Length', Buffer.byteLength(xml));
    res.end(xml);
  }

  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const endpoint = `http://127.0.0.1:${port}`;

  return {
    endpoint,
    port,
    region,
    ufsOptions: () => ({
      'cos.endpoint': endpoint,
      'cos.region': region,
      'cos.secretId': options.accessKeyId,
      'cos.secretKey': options.secret,
    }),
    put(bucketName, key, body) {
      const bucket = buckets.get(bucketName);
      if (!bucket) throw new Error(`no bucket ${bucketName} on this COS test server`);
      return putObject(bucket, key, Buffer.from(body)).etag;
    },
    remove(bucketName, key) {
      buckets.get(bucketName)?.delete(key);
    },
    failNext(status, code, count = 1, key) {
      for (let i = 0; i < count; i++) faults.push({ status, code, key });
    },
    requestLog: () => log,
    clearRequestLog: () => {
      log.length = 0;
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        for (const socket of sockets) socket.destroy();
      }),
  };
}

function listXml(bucketName: string, bucket: Bucket, q: URLSearchParams): string {
  const prefix = q.get('prefix') ?? '';
  const delimiter = q.get('delimiter') ?? '';
  const marker = q.get('marker') ?? '';
  const encodingType = q.get('encoding-type');
  if (encodingType !== null && encodingType !== 'url') throw new CosError(400, 'InvalidArgument', 'The encoding-type parameter must be url.');
  const maxKeysText = q.get('max-keys');
  const maxKeys = maxKeysText === null || maxKeysText === '' ? 1000 : Number(maxKeysText);
  if (!Number.isInteger(maxKeys) || maxKeys < 0 || maxKeys > 1000) throw new CosError(400, 'InvalidArgument', 'max-keys must be an integer between 0 and 1000.');
  const enc = (s: string): string => escapeXml(encodingType === 'url' ? encodeURIComponent(s) : s);
  const { entries, truncated } = listPage(bucket, prefix, delimiter, marker, maxKeys);
  const lines = ["<?xml version='1.0' encoding='utf-8' ?>", '<ListBucketResult>', `\t<Name>${escapeXml(bucketName)}</Name>`];
  if (encodingType) lines.push('\t<EncodingType>url</EncodingType>');
  lines.push(`\t<Prefix>${enc(prefix)}</Prefix>`, `\t<Marker>${enc(marker)}</Marker>`, `\t<MaxKeys>${maxKeys}</MaxKeys>`);
  if (delimiter) lines.push(`\t<Delimiter>${enc(delimiter)}</Delimiter>`);
  lines.push(`\t<IsTruncated>${truncated}</IsTruncated>`);
  const last = entries.at(-1)?.name;
  if (truncated && last !== undefined) lines.push(`\t<NextMarker>${enc(last)}</NextMarker>`);
  for (const entry of entries) {
    if (!entry.object) lines.push(`\t<CommonPrefixes>\n\t\t<Prefix>${enc(entry.name)}</Prefix>\n\t</CommonPrefixes>`);
  }
  for (const entry of entries) {
    if (!entry.object) continue;
    lines.push(
      '\t<Contents>',
      `\t\t<Key>${enc(entry.name)}</Key>`,
      `\t\t<LastModified>${new Date(entry.object.mtimeMs).toISOString()}</LastModified>`,
      `\t\t<ETag>&quot;${entry.object.etag}&quot;</ETag>`,
      `\t\t<Size>${entry.object.body.length}</Size>`,
      `\t\t<Owner>\n\t\t\t<ID>${OWNER_ID}</ID>\n\t\t\t<DisplayName>100000000001</DisplayName>\n\t\t</Owner>`,
      '\t\t<StorageClass>STANDARD</StorageClass>',
      '\t</Contents>',
    );
  }
  lines.push('</ListBucketResult>', '');
  return lines.join('\n');
}

/**
 * One page of a delimiter listing: objects and common prefixes merged in key order,
 * each counting one toward maxKeys. A common prefix sorts at its own name, so a page
 * that ends on one resumes after every key beneath it.
 */
function listPage(bucket: Bucket, prefix: string, delimiter: string, after: string, maxKeys: number): { entries: ListEntry[]; truncated: boolean } {
  const keys = bucket.keys();
  const entries: ListEntry[] = [];
  let i = lowerBound(keys, prefix > after ? prefix : after);
  while (i < keys.length) {
    const key = keys[i]!;
    if (!key.startsWith(prefix)) break;
    if (compareBytes(key, after) <= 0) {
      i++;
      continue;
    }
    const cut = delimiter ? key.indexOf(delimiter, prefix.length) : -1;
    if (cut >= 0) {
      const common = key.slice(0, cut + delimiter.length);
      if (compareBytes(common, after) > 0) {
        if (entries.length === maxKeys) return { entries, truncated: true };
        entries.push({ name: common });
      }
      while (i < keys.length && keys[i]!.startsWith(common)) i++;
      continue;
    }
    if (entries.length === maxKeys) return { entries, truncated: true };
    entries.push({ name: key, object: bucket.objects.get(key)! });
    i++;
  }
  return { entries, truncated: false };
}

/** The SDK's camSafeUrlEncode: encodeURIComponent plus ! ' ( ) *. */
function cosEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** Byte-wise (UTF-16 code unit) order, which matches UTF-8 byte order outside surrogate pairs. */
function compareBytes(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function lowerBound(sorted: readonly string[], value: string): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareBytes(sorted[mid]!, value) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Satisfiable `bytes=a-b`, `bytes=a-` or `bytes=-n` as [start, end], or undefined. */
function parseRange(range: string, size: number): [number, number] | undefined {
  const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0 || size === 0) return undefined;
    return [Math.max(0, size - n), size - 1];
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || start > end) return undefined;
  return [start, end];
}

function etagListMatches(list: string, etag: string): boolean {
  return list.split(',').some((t) => {
    const v = t.trim().replace(/^W\//, '').replace(/^"|"$/g, '');
    return v === '*' || v === etag;
  });
}

function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function sendXml(res: ServerResponse, xml: string): void {
  res.statusCode = 200;
  res.setHeader('Content-Type', 'application/xml');
  res.setHeader('Content-Length', Buffer.byteLength(xml));
  res.end(xml);
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

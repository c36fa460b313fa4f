/**
 * The core of the object-store test servers (oss-server.ts, cos-server.ts): node:http
 * on 127.0.0.1 with a free port and an in-memory store of buckets. It owns what the
 * services have in common:
 *
 * - the request skeleton: record the request, read its body, answer an injected
 *   fault (`failNext`), authenticate, find the bucket, then serve the bucket itself
 *   (GET only) or one of its objects (GET, HEAD, PUT, DELETE);
 * - GetObject and HeadObject: If-Match (412) and If-None-Match (304), Range (206 with
 *   Content-Range; `bytes=a-b`, `bytes=a-`, `bytes=-n`), PutObject with its
 *   Content-MD5 checked;
 * - one page of a delimiter listing (`listPage`), common prefixes counted toward
 *   max-keys so that pagination never repeats or skips a prefix;
 * - closing: the server and every connection it holds.
 *
 * A dialect owns what tells the services apart: addressing, the signature check,
 * the headers of every answer, ETags, the bucket's documents (listings, bucket info),
 * what an unsatisfiable range gets, messages, and the error document. Nothing here
 * knows a service's wire format beyond HTTP.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface StoredObject {
  body: Buffer;
  /** As the service reports it for simple uploads (the dialect's `etagOf`), without quotes. */
  etag: string;
  /** Whole seconds, so that Last-Modified and the listing agree. */
  mtimeMs: number;
}

export class Bucket {
  readonly objects = new Map<string, StoredObject>();
  private sorted: string[] | undefined;

  set(key: string, object: StoredObject): void {
    if (!this.objects.has(key)) this.sorted = undefined;
    this.objects.set(key, object);
  }

  delete(key: string): void {
    if (this.objects.delete(key)) this.sorted = undefined;
  }

  /** Keys in byte order (UTF-8 code unit order equals code point order for what tests use). */
  keys(): string[] {
    this.sorted ??= [...this.objects.keys()].sort(compareBytes);
    return this.sorted;
  }
}

export interface ListEntry {
  /** The object key, or the common prefix (ending in the delimiter). */
  name: string;
  object?: StoredObject;
}

export interface ListPage {
  entries: ListEntry[];
  truncated: boolean;
}

/** A service error: its HTTP status, its code, its message, and fields some dialects add to the error document. */
export class ObjectStoreError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: Record<string, string> = {},
  ) {
    super(message);
  }
}

export interface RecordedRequest {
  method: string;
  bucket: string;
  key: string;
  query: URLSearchParams;
  headers: IncomingMessage['headers'];
}

/** What an error document may name: the request's id, and what it addressed (empty for a request that failed before). */
export interface ErrorContext {
  requestId: string;
  key: string;
}

export interface ObjectStoreDialect {
  /** The service, for messages: `OSS`, `COS`. */
  readonly name: string;
  /** The ETag of a simple upload of `body`, without quotes. */
  etagOf(body: Buffer): string;
  /** Sets the headers every answer carries (Server, request id); returns the request id. */
  begin(res: ServerResponse): string;
  /** The bucket and key a request addresses (`bucketName` empty when none). */
  address(req: IncomingMessage, url: URL): { bucketName: string; key: string };
  /** Throws an ObjectStoreError unless the request is signed with the server's credentials. */
  authenticate(req: IncomingMessage, method: string, bucketName: string, key: string, url: URL): void;
  /** The error for a bucket name that names no bucket of this server (it may be empty). */
  noSuchBucket(bucketName: string): ObjectStoreError;
  /** The XML document a GET of the bucket itself answers (a listing, bucket info). */
  bucketDocument(bucketName: string, bucket: Bucket, query: URLSearchParams): string;
  /** Headers of a GetObject or HeadObject answer beyond ETag, Last-Modified, Accept-Ranges and Content-Type. */
  readonly objectHeaders: Readonly<Record<string, string>>;
  /** The error for a Range no byte of the object satisfies, or undefined to answer the whole object (200). */
  unsatisfiableRange(req: IncomingMessage, range: string, size: number): ObjectStoreError | undefined;
  readonly messages: { badDigest: string; preconditionFailed: string };
  /** Answers the error in the service's form (HEAD answers carry no body). */
  sendError(req: IncomingMessage, res: ServerResponse, err: ObjectStoreError, context: ErrorContext): void;
}

export interface FakeObjectServer {
  /** `http://127.0.0.1:<port>` */
  readonly endpoint: string;
  readonly port: number;
  /** Stores an object directly, bypassing the protocol; returns its ETag without quotes. */
  put(bucket: string, key: string, body: Buffer | string): string;
  remove(bucket: string, key: string): void;
  /** The next `count` requests (for `key` only, when given) fail with this status and code. */
  failNext(status: number, code: string, count?: number, key?: string): void;
  requestLog(): readonly RecordedRequest[];
  clearRequestLog(): void;
  close(): Promise<void>;
}

export async function startFakeObjectServer(bucketNames: readonly string[], dialect: ObjectStoreDialect): Promise<FakeObjectServer> {
  const buckets = new Map<string, Bucket>(bucketNames.map((name) => [name, new Bucket()]));
  const log: RecordedRequest[] = [];
  const faults: { status: number; code: string; key?: string }[] = [];
  const sockets = new Set<Socket>();

  const putObject = (bucket: Bucket, key: string, body: Buffer): StoredObject => {
    const object = { body, etag: dialect.etagOf(body), mtimeMs: Math.floor(Date.now() / 1000) * 1000 };
    bucket.set(key, object);
    return object;
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) dialect.sendError(req, res, new ObjectStoreError(500, 'InternalError', String(err)), { requestId: '', key: '' });
      else res.destroy();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = dialect.begin(res);
    res.setHeader('Date', new Date().toUTCString());
    const url = new URL(req.url ?? '/', 'http://object-store.invalid');
    const { bucketName, key } = dialect.address(req, url);
    const method = req.method ?? 'GET';
    log.push({ method, bucket: bucketName, key, query: url.searchParams, headers: req.headers });
    const body = await readBody(req);
    try {
      const at = faults.findIndex((f) => f.key === undefined || f.key === key);
      const fault = at < 0 ? undefined : faults.splice(at, 1)[0];
      if (fault) throw new ObjectStoreError(fault.status, fault.code, 'Injected fault.');
      dialect.authenticate(req, method, bucketName, key, url);
      const bucket = buckets.get(bucketName);
      if (!bucket) throw dialect.noSuchBucket(bucketName);
      if (key === '') {
        if (method !== 'GET') throw methodNotAllowed();
        return sendXml(res, dialect.bucketDocument(bucketName, bucket, url.searchParams));
      }
      switch (method) {
        case 'GET':
        case 'HEAD':
          return getObject(req, res, bucket, key, method === 'HEAD');
        case 'PUT': {
          const md5 = header(req, 'content-md5');
          if (md5 !== undefined && md5 !== createHash('md5').update(body).digest('base64')) {
            throw new ObjectStoreError(400, 'InvalidDigest', dialect.messages.badDigest);
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
          throw methodNotAllowed();
      }
    } catch (err) {
      if (!(err instanceof ObjectStoreError)) throw err;
      dialect.sendError(req, res, err, { requestId, key });
    }
  }

  function getObject(req: IncomingMessage, res: ServerResponse, bucket: Bucket, key: string, head: boolean): void {
    const object = bucket.objects.get(key);
    if (!object) throw new ObjectStoreError(404, 'NoSuchKey', 'The specified key does not exist.', { Key: key });
    const ifMatch = header(req, 'if-match');
    if (ifMatch !== undefined && !etagListMatches(ifMatch, object.etag)) {
      throw new ObjectStoreError(412, 'PreconditionFailed', dialect.messages.preconditionFailed, { Condition: 'If-Match' });
    }
    res.setHeader('ETag', `"${object.etag}"`);
    res.setHeader('Last-Modified', new Date(object.mtimeMs).toUTCString());
    res.setHeader('Accept-Ranges', 'bytes');
    res.setHeader('Content-Type', 'application/octet-stream');
    for (const [name, value] of Object.entries(dialect.objectHeaders)) res.setHeader(name, value);
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
      if (parsed) {
        [start, end] = parsed;
        res.statusCode = 206;
        res.setHeader('Content-Range', `bytes ${start}-${end}/${size}`);
      } else {
        const refused = dialect.unsatisfiableRange(req, range, size);
        if (refused) {
          res.setHeader('Content-Range', `bytes */${size}`);
          throw refused;
        }
      }
    }
    res.setHeader('Content-Length', end - start + 1);
    if (head) res.end();
    else res.end(object.body.subarray(start, end + 1));
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

  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    put(bucketName, key, body) {
      const bucket = buckets.get(bucketName);
      if (!bucket) throw new Error(`no bucket ${bucketName} on this ${dialect.name} test server`);
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

function methodNotAllowed(): ObjectStoreError {
  return new ObjectStoreError(405, 'MethodNotAllowed', 'The specified method is not allowed against this resource.');
}

/**
 * One page of a delimiter listing after the key `after`: objects and common prefixes
 * merged in key order, each counting one toward maxKeys. A common prefix sorts at its
 * own name, so a page that ends on one resumes after every key beneath it.
 */
export function listPage(bucket: Bucket, prefix: string, delimiter: string, after: string, maxKeys: number): ListPage {
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

/** Byte-wise (UTF-16 code unit) order, which matches UTF-8 byte order outside surrogate pairs. */
export function compareBytes(a: string, b: string): number {
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

/** encodeURIComponent plus `! ' ( ) *`, as both services' signatures encode names and values. */
export function encodeRfc3986(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** A request header as one string (repeated headers joined), or undefined when absent. */
export function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

/** Compares signatures in constant time. */
export function sameText(a: string, b: string): boolean {
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

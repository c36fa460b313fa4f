/**
 * A real S3 protocol server for tests: s3rver, in-process, on 127.0.0.1 with a
 * free port and a fresh temporary directory, with a client already pointed at it.
 *
 * It corrects one s3rver 3.7.1 bug that our listing code would trip over, here
 * and never in product code: s3rver's filesystem store prunes directories beneath
 * a common prefix before reading their keys, so a key two or more levels below
 * the listed prefix never yields its common prefix (a root listing of only
 * `b/c/y` returns nothing). It also counts common prefixes outside MaxKeys,
 * lists in readdir order and derives its continuation token from the last key
 * only. So ListObjects (V1) and ListObjectsV2 requests on an existing bucket are
 * answered here, from a sorted key index of the bucket, as S3 documents; every
 * other request (and any list request this code does not recognise, so that
 * s3rver answers it or rejects it with its usual error) goes to s3rver
 * untouched. Objects must be written
 * through the HTTP API (the index is invalidated by any mutating request), not
 * by writing into `directory`.
 *
 * s3rver checks only the access key id of a SigV4 request, not its signature: this server
 * checks every SigV4 signature itself (`checkSignature`, written from AWS's documentation
 * of SigV4, sharing no code with the SDK) and answers a wrong one 403
 * SignatureDoesNotMatch, as S3 does.
 *
 * It records requests so that a test can count what reached the object store,
 * and injects faults: a store that hangs (`stallObjectReads`, `stallListings`), which accepts a
 * GET of an object and never answers it. It can also behave like a distant store
 * (`shapeResponses`): every request waits a time to first byte, and each connection's
 * response bytes are paced to a bandwidth, by timers (the server spends no CPU waiting).
 */
import { createHash, createHmac } from 'node:crypto';
import type { Dirent } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';

export interface StartS3ServerOptions {
  /** Buckets created before the server answers its first request. */
  buckets?: readonly string[];
}

/** How a distant store answers: see `S3TestServer.shapeResponses`. */
export interface ResponseShape {
  /** Every request (GET, HEAD, listing, PUT) waits this long before it is handled. */
  firstByteMs: number;
  /** Response bytes per second on one connection; undefined: as fast as the server goes. */
  connectionBytesPerSecond?: number;
}

/** One request as the server saw it, for tests that count object store traffic. */
export interface RecordedS3Request {
  method: string;
  bucket: string;
  /** Object key, '' for bucket and service requests. */
  key: string;
  query: URLSearchParams;
  /** The Range header, if any. */
  range: string | undefined;
  /** Sent through the AWS SDK's middleware (it marks each request with an invocation id). */
  sdk: boolean;
}

export interface ObjectToPut {
  key: string;
  body: Buffer | string;
}

export interface S3TestServer {
  /** `http://127.0.0.1:<port>` */
  readonly endpoint: string;
  readonly port: number;
  readonly accessKeyId: 'S3RVER';
  readonly secretAccessKey: 'S3RVER';
  readonly region: 'us-east-1';
  /** s3rver's store; deleted by close(). Read-only for tests: write through the API. */
  readonly directory: string;
  /** Configuration for an S3Client of your own (path style, no streaming checksums). */
  clientConfig(): S3ClientConfig;
  /** A client shared by this server's helpers; destroyed by close(). */
  client(): S3Client;
  createBucket(bucket: string): Promise<void>;
  /** Uploads one object; resolves to its ETag without quotes. */
  putObject(bucket: string, key: string, body: Buffer | string): Promise<string>;
  /** Uploads many objects, `concurrency` (default 32) at a time; resolves to how many. */
  putObjects(bucket: string, objects: Iterable<ObjectToPut>, options?: { concurrency?: number }): Promise<number>;
  deleteObject(bucket: string, key: string): Promise<void>;
  /** Requests received since start or the last clearRequestLog(), oldest first. */
  requestLog(): readonly RecordedS3Request[];
  clearRequestLog(): void;
  /**
   * From now on, GETs of objects whose key matches are accepted and never answered (the
   * connection stays open until the client gives up or close()); `undefined` stops it for
   * new requests. HEADs and listings are answered as usual.
   */
  stallObjectReads(match: ((key: string) => boolean) | undefined): void;
  /**
   * From now on, list requests (GETs of a bucket) whose query matches are accepted and never
   * answered, like stallObjectReads; `undefined` stops it, and drops the connections of the
   * listings it held (the client sees them reset, and may ask again).
   */
  stallListings(match: ((query: URLSearchParams) => boolean) | undefined): void;
  /**
   * From now on, requests wait `firstByteMs` before they are handled, and each connection's
   * response bodies go out at no more than `connectionBytesPerSecond` (one S3 connection
   * carries ~100 MB/s): a write past the pace tells the writer to wait for 'drain', which
   * comes on a timer. `undefined` answers as fast as it can again.
   */
  shapeResponses(shape: ResponseShape | undefined): void;
  /** GETs stalled so far, and how many of their connections the client still holds open. */
  stalledReads(): { total: number; open: number };
  /** Stops the server (dropping open connections) and deletes `directory`. */
  close(): Promise<void>;
}

const ACCESS_KEY_ID = 'S3RVER';
const SECRET_ACCESS_KEY = 'S3RVER';
const REGION = 'us-east-1';
const OWNER = { id: '123456789000', displayName: 'S3rver' };

/** s3rver stores the bytes of key `a/b` at `<bucket>/a/b._S3rver_object`. */
const OBJECT_FILE_SUFFIX = '._S3rver_object';
/** S3 never returns more than this many entries in one list response. */
const MAX_KEYS_LIMIT = 1000;
const CONTINUATION_TOKEN_TAG = 'cachefs-test-list:';

// --- the parts of s3rver (CommonJS, untyped) this wrapper uses -------------------

interface S3rverOptions {
  address: string;
  port: number;
  silent: boolean;
  directory: string;
  vhostBuckets: boolean;
  configureBuckets: Array<{ name: string; configs: string[] }>;
}

interface StoredObjectMetadata {
  etag: string;
  'last-modified': string;
  'content-length': number;
}

interface S3rverStore {
  getBucket(bucket: string): Promise<object | null>;
  getMetadata(bucket: string, key: string): Promise<StoredObjectMetadata>;
}

interface S3rverApp {
  store: S3rverStore;
  logger: { close(): void };
  configureBuckets(): Promise<unknown>;
  /** Koa's request handler. */
  callback(): (req: IncomingMessage, res: ServerResponse) => void;
}

type S3rverConstructor = new (options: S3rverOptions) => S3rverApp;

const S3rver = createRequire(import.meta.url)('s3rver') as S3rverConstructor;

// --- server ----------------------------------------------------------------------

export async function startS3Server(options: StartS3ServerOptions = {}): Promise<S3TestServer> {
  const directory = await mkdtemp(join(tmpdir(), 'cachefs-s3rver-'));
  try {
    return await listen(directory, options);
  } catch (err) {
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
}

async function listen(directory: string, options: StartS3ServerOptions): Promise<S3TestServer> {
  const app = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    // Path-style only, so that the first path segment is always the bucket.
    vhostBuckets: false,
    configureBuckets: (options.buckets ?? []).map((name) => ({ name, configs: [] })),
  });
  await app.configureBuckets();

  const s3rverHandler = app.callback();
  const index = new KeyIndex(directory, app.store);
  const log: RecordedS3Request[] = [];
  let stall: ((key: string) => boolean) | undefined;
  let stallList: ((query: URLSearchParams) => boolean) | undefined;
  let stalledTotal = 0;
  const stalledOpen = new Set<ServerResponse>();
  /** The stalled ones that are listings. */
  const stalledLists = new Set<ServerResponse>();

  let shape: ResponseShape | undefined;
  const server: Server = createServer((req, res) => {
    if (shape === undefined) {
      handle(req, res);
      return;
    }
    if (shape.connectionBytesPerSecond !== undefined) pace(res, shape.connectionBytesPerSecond);
    if (shape.firstByteMs > 0) setTimeout(() => handle(req, res), shape.firstByteMs);
    else handle(req, res);
  });
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    if (res.destroyed) return;
    const target = parseTarget(req);
    log.push({ ...target, method: req.method ?? '', range: req.headers.range, sdk: req.headers['amz-sdk-invocation-id'] !== undefined });
    if (!checkSignature(req)) {
      res.writeHead(403, { 'content-type': 'application/xml' });
      res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error>');
      return;
    }
    if (req.method === 'GET' && (target.key !== '' ? stall?.(target.key) : target.bucket !== '' && stallList?.(target.query))) {
      stalledTotal += 1;
      stalledOpen.add(res);
      if (target.key === '') stalledLists.add(res);
      res.once('close', () => {
        stalledOpen.delete(res);
        stalledLists.delete(res);
      });
      return;
    }
    if (isMutation(req.method)) {
      // Before, so a listing never serves a cached index older than this write;
      // after, so a walk that ran concurrently with it is not kept either.
      index.invalidate(target.bucket);
      res.once('close', () => index.invalidate(target.bucket));
      s3rverHandler(req, res);
      return;
    }
    answerOurselves(app, index, req, res, target).then(
      (answered) => {
        if (!answered) s3rverHandler(req, res);
      },
      (err: unknown) => {
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`list failed: ${err instanceof Error ? err.message : String(err)}`);
      },
    );
  };
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });

  const port = (server.address() as AddressInfo).port;
  const endpoint = `http://127.0.0.1:${port}`;
  const clientConfig = (): S3ClientConfig => ({
    endpoint,
    region: REGION,
    forcePathStyle: true,
    credentials: { accessKeyId: ACCESS_KEY_ID, secretAccessKey: SECRET_ACCESS_KEY },
    // Otherwise the SDK sends aws-chunked bodies with trailing checksums, which
    // s3rver stores framing and all.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  let shared: S3Client | undefined;
  const client = (): S3Client => (shared ??= new S3Client(clientConfig()));

  const putObject = async (bucket: string, key: string, body: Buffer | string): Promise<string> => {
    const out = await client().send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    return (out.ETag ?? '').replace(/"/g, '');
  };

  let closed = false;
  return {
    endpoint,
    port,
    accessKeyId: ACCESS_KEY_ID,
    secretAccessKey: SECRET_ACCESS_KEY,
    region: REGION,
    directory,
    clientConfig,
    client,
    async createBucket(bucket) {
      await client().send(new CreateBucketCommand({ Bucket: bucket }));
    },
    putObject,
    async putObjects(bucket, objects, opts = {}) {
      let count = 0;
      await forEachConcurrently(objects, opts.concurrency ?? 32, async ({ key, body }) => {
        await putObject(bucket, key, body);
        count += 1;
      });
      return count;
    },
    async deleteObject(bucket, key) {
      await client().send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
    },
    requestLog: () => log,
    clearRequestLog() {
      log.length = 0;
    },
    stallObjectReads(match) {
      stall = match;
    },
    stallListings(match) {
      stallList = match;
      if (match) return;
      for (const res of stalledLists) res.destroy();
      stalledLists.clear();
    },
    shapeResponses(next) {
      if (next !== undefined && !(next.firstByteMs >= 0 && (next.connectionBytesPerSecond ?? 1) > 0)) {
        throw new Error(`shapeResponses: expected firstByteMs >= 0 and connectionBytesPerSecond > 0, got ${JSON.stringify(next)}`);
      }
      shape = next;
    },
    stalledReads: () => ({ total: stalledTotal, open: stalledOpen.size }),
    async close() {
      if (closed) return;
      closed = true;
      shared?.destroy();
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await stopped;
      app.logger.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/** How far ahead of its pace a response may run before it waits on a timer: 4 ms is 400 KB at 100 MB/s. */
const PACE_SLACK_MS = 4;
/** When each connection may send its next byte, at the pace of its bandwidth. */
const connectionDue = new WeakMap<object, number>();

/**
 * Paces the body of `res` to `bytesPerSecond` on its connection: each write moves the
 * response's due time on by the chunk's share of a second; a write that leaves it more
 * than PACE_SLACK_MS ahead of the clock returns false, and 'drain' comes when the time is
 * due (the socket's own 'drain' is held back until then), so a piped body (s3rver's)
 * waits on a timer. A response that fell behind (the process was not scheduled) catches
 * up: bytes sent never exceed the pace from the response's start. Requests on one
 * keep-alive connection come one after another, so a response starts no earlier than the
 * previous one's due time: the pace is the connection's; an idle one gains no credit.
 */
function pace(res: ServerResponse, bytesPerSecond: number): void {
  const socket = res.socket;
  if (socket === null) return;
  const write = res.write.bind(res) as (chunk: unknown, ...rest: unknown[]) => boolean;
  const emit = res.emit.bind(res) as (event: string | symbol, ...args: unknown[]) => boolean;
  let due: number | undefined;
  let timer: NodeJS.Timeout | undefined;
  const ahead = (): number => (due ?? 0) - performance.now();
  const wakeWhenDue = (): void => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (!res.writableNeedDrain) res.emit('drain');
    }, ahead() - PACE_SLACK_MS / 2);
  };
  res.once('close', () => clearTimeout(timer));
  res.write = ((chunk: unknown, ...rest: unknown[]): boolean => {
    const ok = write(chunk, ...rest);
    const bytes = typeof chunk === 'string' ? Buffer.byteLength(chunk) : (chunk as Uint8Array).byteLength;
    due ??= Math.max(connectionDue.get(socket) ?? 0, performance.now());
    due += (bytes * 1000) / bytesPerSecond;
    connectionDue.set(socket, due);
    if (ahead() <= PACE_SLACK_MS) return ok;
    wakeWhenDue();
    return false;
  }) as ServerResponse['write'];
  res.emit = ((event: string | symbol, ...args: unknown[]): boolean => {
    if (event === 'drain' && ahead() > PACE_SLACK_MS) {
      wakeWhenDue();
      return false;
    }
    return emit(event, ...args);
  }) as ServerResponse['emit'];
}

interface RequestTarget {
  bucket: string;
  key: string;
  query: URLSearchParams;
}

function parseTarget(req: IncomingMessage): RequestTarget {
  const url = new URL(req.url ?? '/', 'http://s3.invalid');
  const path = url.pathname.slice(1);
  const slash = path.indexOf('/');
  const bucket = slash === -1 ? path : path.slice(0, slash);
  const key = slash === -1 ? '' : path.slice(slash + 1);
  return { bucket: safeDecode(bucket), key: safeDecode(key), query: url.searchParams };
}

function safeDecode(component: string): string {
  try {
    return decodeURIComponent(component);
  } catch {
    return component;
  }
}

function isMutation(method: string | undefined): boolean {
  return method !== 'GET' && method !== 'HEAD' && method !== 'OPTIONS';
}

async function forEachConcurrently<T>(
  items: Iterable<T>,
  concurrency: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  const iterator = items[Symbol.iterator]();
  let failed = false;
  const lane = async (): Promise<void> => {
    for (let next = iterator.next(); !next.done && !failed; next = iterator.next()) {
      try {
        await work(next.value);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, lane));
}

// --- requests answered here: HeadBucket and listings ------------------------------

/**
 * Answers HeadBucket and list requests on an existing bucket; resolves false for
 * everything else, including list requests with arguments s3rver should reject.
 */
async function answerOurselves(
  app: S3rverApp,
  index: KeyIndex,
  req: IncomingMessage,
  res: ServerResponse,
  target: RequestTarget,
): Promise<boolean> {
  if (target.bucket === '' || target.key !== '' || !hasOurAccessKey(req, target.query)) return false;
  const isHead = req.method === 'HEAD' && [...target.query.keys()].length === 0;
  const list = req.method === 'GET' ? parseListRequest(target.query) : undefined;
  if (!isHead && list === undefined) return false;
  if ((await app.store.getBucket(target.bucket)) === null) return false;

  if (isHead) {
    res.writeHead(200, { 'x-amz-bucket-region': REGION });
    res.end();
    return true;
  }
  if (list === undefined) return false;
  const keys = await index.keys(target.bucket);
  const page = listPage(keys, list);
  const contents = await Promise.all(
    page.items.filter((item) => item.kind === 'object').map((item) => index.facts(target.bucket, item.key)),
  );
  const body = renderListResult(target.bucket, list, page, contents);
  res.writeHead(200, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
  res.end(body);
  return true;
}

/** RFC 3986 escaping, as SigV4's canonical query wants it. */
function uriEscape(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

const hmac = (key: Buffer | string, data: string): Buffer => createHmac('sha256', key).update(data).digest();
const sha256 = (data: string): string => createHash('sha256').update(data).digest('hex');

/**
 * True unless the request carries a SigV4 Authorization header of our key whose signature is not the
 * one its method, path (as sent: S3 signs the escaped path unchanged), query, signed
 * headers and payload hash give with our secret key.
 */
function checkSignature(req: IncomingMessage): boolean {
  const auth = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]+)$/.exec(
    req.headers.authorization ?? '',
  );
  // Another key id: s3rver answers InvalidAccessKeyId.
  if (!auth || auth[1] !== ACCESS_KEY_ID) return true;
  const [, , date, region, service, signedHeaders, signature] = auth;
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  const query = (q < 0 ? '' : url.slice(q + 1))
    .split('&')
    .filter((part) => part !== '')
    .map((part) => {
      const eq = part.indexOf('=');
      const name = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
      const value = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1));
      return [uriEscape(name), uriEscape(value)] as const;
    })
    .sort(([a, x], [b, y]) => (a < b ? -1 : a > b ? 1 : x < y ? -1 : x > y ? 1 : 0))
    .map(([name, value]) => `${name}=${value}`)
    .join('&');
  const names = signedHeaders!.split(';');
  const headers = names.map((name) => {
    const value = req.headers[name];
    return `${name}:${(Array.isArray(value) ? value.join(',') : (value ?? '')).trim().replace(/\s+/g, ' ')}\n`;
  });
  const payload = String(req.headers['x-amz-content-sha256'] ?? sha256(''));
  const canonical = [req.method, path, query, headers.join(''), signedHeaders, payload].join('\n');
  const scope = `${date}/${region}/${service}/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', String(req.headers['x-amz-date']), scope, sha256(canonical)].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${SECRET_ACCESS_KEY}`, date!), region!), service!), 'aws4_request');
  return createHmac('sha256', key).update(toSign).digest('hex') === signature;
}

/** Anonymous or our key; s3rver answers (and rejects) requests signed with another key. */
function hasOurAccessKey(req: IncomingMessage, query: URLSearchParams): boolean {
  const authorization = req.headers.authorization;
  if (authorization !== undefined) {
    return authorization.includes(`Credential=${ACCESS_KEY_ID}/`) || authorization.startsWith(`AWS ${ACCESS_KEY_ID}:`);
  }
  const credential = query.get('X-Amz-Credential');
  return credential === null || credential.startsWith(`${ACCESS_KEY_ID}/`);
}

interface ListRequest {
  version: 1 | 2;
  /** UTF-8 bytes of each argument as a latin1 string, so that `<` is binary order. */
  prefix: string;
  delimiter: string;
  /** List entries strictly after this: StartAfter, the continuation token or Marker. */
  after: string;
  maxKeys: number;
  /** As sent, echoed back. */
  requestedMaxKeys: number;
  startAfter: string | undefined;
  continuationToken: string | undefined;
  marker: string;
  fetchOwner: boolean;
  urlEncoded: boolean;
}

const LIST_PARAMETERS = new Set([
  'list-type',
  'prefix',
  'delimiter',
  'max-keys',
  'marker',
  'start-after',
  'continuation-token',
  'fetch-owner',
  'encoding-type',
  'x-id',
]);

/** undefined when this is not a list request, or one whose error s3rver should answer. */
function parseListRequest(query: URLSearchParams): ListRequest | undefined {
  for (const name of query.keys()) {
    if (!LIST_PARAMETERS.has(name) && !name.toLowerCase().startsWith('x-amz-')) return undefined;
  }
  const listType = query.get('list-type');
  if (listType !== null && listType !== '2') return undefined;
  const version = listType === '2' ? 2 : 1;
  if (version === 2 && query.has('marker')) return undefined;
  if (version === 1 && (query.has('continuation-token') || query.has('start-after'))) return undefined;

  const encodingType = query.get('encoding-type');
  if (encodingType !== null && encodingType !== 'url') return undefined;

  const maxKeysText = query.get('max-keys') ?? String(MAX_KEYS_LIMIT);
  if (!/^\d{1,10}$/.test(maxKeysText)) return undefined;
  const requestedMaxKeys = Number(maxKeysText);
  // s3rver's answer to max-keys=0 (an empty, untruncated page) is the usual one.
  if (requestedMaxKeys === 0 || requestedMaxKeys > 2_147_483_647) return undefined;

  const continuationToken = query.get('continuation-token') ?? undefined;
  let after: string;
  if (continuationToken !== undefined) {
    const decoded = decodeContinuationToken(continuationToken);
    if (decoded === undefined) return undefined;
    after = decoded;
  } else {
    after = toBinary(query.get(version === 2 ? 'start-after' : 'marker') ?? '');
  }

  return {
    version,
    prefix: toBinary(query.get('prefix') ?? ''),
    delimiter: toBinary(query.get('delimiter') ?? ''),
    after,
    maxKeys: Math.min(MAX_KEYS_LIMIT, requestedMaxKeys),
    requestedMaxKeys,
    startAfter: query.get('start-after') ?? undefined,
    continuationToken,
    marker: query.get('marker') ?? '',
    fetchOwner: version === 1 || query.get('fetch-owner') === 'true',
    urlEncoded: encodingType === 'url',
  };
}

/** Opaque to clients: the binary string of the last entry returned. */
function encodeContinuationToken(after: string): string {
  return Buffer.concat([Buffer.from(CONTINUATION_TOKEN_TAG), Buffer.from(after, 'latin1')]).toString('base64');
}

function decodeContinuationToken(token: string): string | undefined {
  const bytes = Buffer.from(token, 'base64');
  const tag = Buffer.from(CONTINUATION_TOKEN_TAG);
  if (bytes.length < tag.length || !bytes.subarray(0, tag.length).equals(tag)) return undefined;
  return bytes.subarray(tag.length).toString('latin1');
}

/** A string whose UTF-16 order is the UTF-8 byte order of `text`. */
function toBinary(text: string): string {
  return Buffer.from(text, 'utf8').toString('latin1');
}

function fromBinary(binary: string): string {
  return Buffer.from(binary, 'latin1').toString('utf8');
}

type ListItem = { kind: 'object'; key: string } | { kind: 'prefix'; prefix: string };

interface ListPage {
  /** In binary order; objects carry their real key, prefixes their binary form. */
  items: ListItem[];
  isTruncated: boolean;
  /** Binary form of the last item, where the next page starts. */
  last: string | undefined;
}

/**
 * One page of a listing over `keys` (binary strings, sorted): keys after
 * `after` under `prefix`, each rolled up into its common prefix when the
 * delimiter occurs past the prefix; a common prefix counts as one entry toward
 * MaxKeys, at the position of its first key, and is returned once — never again
 * on a later page, since a token or marker inside it skips the whole group.
 */
function listPage(keys: readonly string[], request: ListRequest): ListPage {
  const { prefix, delimiter, after, maxKeys } = request;
  const items: ListItem[] = [];
  let last: string | undefined;
  let isTruncated = false;
  let i = Math.max(lowerBound(keys, prefix), upperBound(keys, after));
  while (i < keys.length) {
    const key = keys[i];
    if (!key.startsWith(prefix)) break;
    const cut = delimiter === '' ? -1 : key.indexOf(delimiter, prefix.length);
    const entry = cut === -1 ? key : key.slice(0, cut + delimiter.length);
    if (cut !== -1 && after.startsWith(entry)) {
      // Already returned: the token or marker lies inside this common prefix.
      i = lowerBound(keys, entry + GREATER_THAN_ANY_BYTE);
      continue;
    }
    if (items.length === maxKeys) {
      isTruncated = true;
      break;
    }
    last = entry;
    if (cut === -1) {
      items.push({ kind: 'object', key: fromBinary(key) });
      i += 1;
    } else {
      items.push({ kind: 'prefix', prefix: entry });
      i = lowerBound(keys, entry + GREATER_THAN_ANY_BYTE);
    }
  }
  return { items, isTruncated, last };
}

/** Sorts after every binary string that starts with what precedes it. */
const GREATER_THAN_ANY_BYTE = '\u0100';

/** First index whose key is >= value. */
function lowerBound(keys: readonly string[], value: string): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keys[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** First index whose key is > value. */
function upperBound(keys: readonly string[], value: string): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keys[mid] <= value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

interface ObjectFacts {
  key: string;
  etag: string;
  size: number;
  lastModified: Date;
}

function renderListResult(
  bucket: string,
  request: ListRequest,
  page: ListPage,
  contents: ReadonlyArray<ObjectFacts | undefined>,
): string {
  const encode = (text: string): string => (request.urlEncoded ? encodeURIComponent(text) : text);
  const element = (name: string, value: string | number | boolean): string =>
    `<${name}>${escapeXml(String(value))}</${name}>`;
  const parts: string[] = [
    '<?xml version="1.0" encoding="UTF-8"?>\n',
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
    element('Name', bucket),
    element('Prefix', encode(fromBinary(request.prefix))),
  ];
  const prefixes = page.items.flatMap((item) => (item.kind === 'prefix' ? [fromBinary(item.prefix)] : []));
  const objects = contents.filter((facts): facts is ObjectFacts => facts !== undefined);
  if (request.version === 2) {
    if (request.startAfter !== undefined) parts.push(element('StartAfter', encode(request.startAfter)));
    if (request.continuationToken !== undefined) parts.push(element('ContinuationToken', request.continuationToken));
    if (page.isTruncated && page.last !== undefined) {
      parts.push(element('NextContinuationToken', encodeContinuationToken(page.last)));
    }
    parts.push(element('KeyCount', objects.length + prefixes.length));
  } else {
    parts.push(element('Marker', encode(request.marker)));
    // S3 sends NextMarker only with a delimiter; without one the last Key serves.
    if (page.isTruncated && request.delimiter !== '' && page.last !== undefined) {
      parts.push(element('NextMarker', encode(fromBinary(page.last))));
    }
  }
  parts.push(element('MaxKeys', request.requestedMaxKeys));
  if (request.delimiter !== '') parts.push(element('Delimiter', encode(fromBinary(request.delimiter))));
  if (request.urlEncoded) parts.push(element('EncodingType', 'url'));
  parts.push(element('IsTruncated', page.isTruncated));
  for (const facts of objects) {
    parts.push(
      '<Contents>',
      element('Key', encode(facts.key)),
      element('LastModified', facts.lastModified.toISOString()),
      element('ETag', facts.etag),
      element('Size', facts.size),
      request.fetchOwner
        ? `<Owner>${element('ID', OWNER.id)}${element('DisplayName', OWNER.displayName)}</Owner>`
        : '',
      element('StorageClass', 'STANDARD'),
      '</Contents>',
    );
  }
  for (const prefix of prefixes) parts.push(`<CommonPrefixes>${element('Prefix', encode(prefix))}</CommonPrefixes>`);
  parts.push('</ListBucketResult>');
  return parts.join('');
}

function escapeXml(text: string): string {
  return text.replace(/[&<>"'\r]/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

// --- the key index -----------------------------------------------------------------

interface BucketSnapshot {
  /** Every key of the bucket as a binary string, sorted. */
  keys: Promise<string[]>;
  facts: Map<string, Promise<ObjectFacts | undefined>>;
}

/**
 * Sorted keys of each bucket, read from s3rver's directory once and kept until
 * the next mutating request on that bucket, so paging through 100,000 keys walks
 * the disk once, not once per page.
 */
class KeyIndex {
  private readonly snapshots = new Map<string, BucketSnapshot>();

  constructor(
    private readonly directory: string,
    private readonly store: S3rverStore,
  ) {}

  invalidate(bucket: string): void {
    this.snapshots.delete(bucket);
  }

  keys(bucket: string): Promise<string[]> {
    return this.snapshot(bucket).keys;
  }

  /** Size, ETag and mtime of one object; undefined if it vanished since the walk. */
  facts(bucket: string, key: string): Promise<ObjectFacts | undefined> {
    const snapshot = this.snapshot(bucket);
    let facts = snapshot.facts.get(key);
    if (facts === undefined) {
      facts = readFacts(this.store, bucket, key);
      snapshot.facts.set(key, facts);
    }
    return facts;
  }

  private snapshot(bucket: string): BucketSnapshot {
    let snapshot = this.snapshots.get(bucket);
    if (snapshot === undefined) {
      const keys = walkKeys(join(this.directory, bucket)).then((found) => found.sort());
      snapshot = { keys, facts: new Map() };
      const created = snapshot;
      // A failed walk is not kept; the next request tries again.
      keys.catch(() => {
        if (this.snapshots.get(bucket) === created) this.snapshots.delete(bucket);
      });
      this.snapshots.set(bucket, snapshot);
    }
    return snapshot;
  }
}

/** Through s3rver's own reader: it knows its file layout and computes missing MD5s. */
async function readFacts(store: S3rverStore, bucket: string, key: string): Promise<ObjectFacts | undefined> {
  try {
    const metadata = await store.getMetadata(bucket, key);
    return {
      key,
      etag: metadata.etag,
      size: Number(metadata['content-length']),
      lastModified: new Date(metadata['last-modified']),
    };
  } catch (err) {
    if (isErrnoCode(err, 'ENOENT')) return undefined;
    throw err;
  }
}

async function walkKeys(bucketDirectory: string): Promise<string[]> {
  const keys: string[] = [];
  const visit = async (directory: string, keyPrefix: string): Promise<void> => {
    let entries: Dirent[];
    try {
      entries = await readdir(directory, { withFileTypes: true });
    } catch (err) {
      if (isErrnoCode(err, 'ENOENT')) return;
      throw err;
    }
    const below: Promise<void>[] = [];
    for (const entry of entries) {
      if (entry.isDirectory()) {
        below.push(visit(join(directory, entry.name), `${keyPrefix}${entry.name}/`));
      } else if (entry.isFile() && entry.name.endsWith(OBJECT_FILE_SUFFIX)) {
        keys.push(toBinary(keyPrefix + entry.name.slice(0, -OBJECT_FILE_SUFFIX.length)));
      }
    }
    await Promise.all(below);
  };
  await visit(bucketDirectory, '');
  return keys;
}

function isErrnoCode(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}

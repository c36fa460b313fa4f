/**
 * A local Alibaba Cloud OSS server for tests: node:http on 127.0.0.1 with a free
 * port and an in-memory bucket store, speaking enough of the OSS protocol that
 * ali-oss cannot tell it from the service. It owns:
 *
 * - addressing as ali-oss does it: virtual-hosted (`Host: bucket.oss-<region>.aliyuncs.com`,
 *   which ali-oss sends when the endpoint is an IP address) and path style
 *   (`/bucket/key`, when the Host is an IP or `localhost`);
 * - signature verification, V1 (`OSS AK:base64(HMAC-SHA1)` over VERB, Content-MD5,
 *   Content-Type, date, CanonicalizedOSSHeaders and CanonicalizedResource with its
 *   signed sub-resources) and V4 (`OSS4-HMAC-SHA256`, ali-oss `authorizationV4`),
 *   plus the 15-minute clock skew rule; failures answer 403 with the service's codes
 *   (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, RequestTimeTooSkewed);
 * - GetObject with Range (206, Content-Range; an unsatisfiable range is ignored with
 *   a 200 unless `x-oss-range-behavior: standard` asks for 416 InvalidRange, as OSS
 *   documents), If-Match / If-None-Match, HeadObject (errors in the base64
 *   `x-oss-err` header, there being no body), PutObject (Content-MD5 checked),
 *   DeleteObject, GetBucketInfo, ListObjects (marker) and ListObjectsV2
 *   (continuation-token, start-after) with prefix, delimiter, max-keys and
 *   encoding-type=url, common prefixes derived from all keys and counted toward
 *   max-keys, so pagination never repeats or skips a prefix;
 * - error XML bodies (`<Error><Code>…`) with the service's codes and messages.
 *
 * It deliberately leaves out everything cachefs never calls (multipart, ACLs,
 * versioning, presigned URLs, STS token checks). Faults are injected with
 * `failNext` (e.g. 503 SlowDown) and requests are recorded for tests to count.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { isIP, type AddressInfo, type Socket } from 'node:net';

export interface StartOssServerOptions {
  buckets: readonly string[];
  accessKeyId: string;
  secret: string;
  /** Region the server answers as, `oss-` prefix optional; V4 signatures must be scoped to it. Default cn-hangzhou. */
  region?: string;
}

export interface RecordedOssRequest {
  method: string;
  bucket: string;
  key: string;
  query: URLSearchParams;
  headers: IncomingMessage['headers'];
}

export interface OssTestServer {
  /** `http://127.0.0.1:<port>` */
  readonly endpoint: string;
  readonly port: number;
  /** In ali-oss form, e.g. `oss-cn-hangzhou`. */
  readonly region: string;
  /** The options an OssUfs needs to reach this server with the right credentials. */
  ufsOptions(): Record<string, string>;
  /** Stores an object directly, bypassing the protocol; returns its ETag without quotes. */
  put(bucket: string, key: string, body: Buffer | string): string;
  remove(bucket: string, key: string): void;
  /** Answers the next `count` requests with this error instead of serving them. */
  /** The next `count` requests (for `key` only, when given) fail with this status and code. */
  failNext(status: number, code: string, count?: number, key?: string): void;
  requestLog(): readonly RecordedOssRequest[];
  clearRequestLog(): void;
  close(): Promise<void>;
}

interface StoredObject {
  body: Buffer;
  /** Upper-case MD5 hex, as OSS reports it for simple uploads. */
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

  /** Keys in byte order (UTF-8 code unit order equals code point order for what tests use). */
  keys(): string[] {
    this.sorted ??= [...this.objects.keys()].sort(compareBytes);
    return this.sorted;
  }
}

interface ListEntry {
  /** The object key, or the common prefix (ending in the delimiter). */
  name: string;
  object?: StoredObject;
}

interface ListPage {
  entries: ListEntry[];
  truncated: boolean;
}

/** Sub-resources that V1 signs in the CanonicalizedResource (from the OSS signature documentation). */
const SIGNED_SUBRESOURCES = new Set([
  'acl', 'append', 'asyncFetch', 'bucketInfo', 'cname', 'comp', 'continuation-token', 'cors', 'delete',
  'encryption', 'endTime', 'img', 'inventory', 'inventoryId', 'lifecycle', 'link', 'live', 'location',
  'logging', 'metaQuery', 'objectInfo', 'objectMeta', 'partNumber', 'policy', 'position', 'qos', 'referer',
  'replication', 'replicationLocation', 'replicationProgress', 'requestPayment', 'response-cache-control',
  'response-content-disposition', 'response-content-encoding', 'response-content-language',
  'response-content-type', 'response-expires', 'restore', 'security-token', 'sequential', 'startTime', 'stat',
  'status', 'style', 'styleName', 'symlink', 'tagging', 'transferAcceleration', 'uploadId', 'uploads',
  'versionId', 'versioning', 'versions', 'vod', 'website', 'worm', 'wormExtend', 'wormId', 'x-oss-process',
  'x-oss-request-payer', 'x-oss-traffic-limit',
]);
const MAX_SKEW_MS = 15 * 60 * 1000;
const OWNER_ID = '1234567890123456';

class OssError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: Record<string, string> = {},
  ) {
    super(message);
  }
}

export async function startOssServer(options: StartOssServerOptions): Promise<OssTestServer> {
  const region = (options.region ?? 'cn-hangzhou').replace(/^oss-/, '');
  const buckets = new Map<string, Bucket>(options.buckets.map((name) => [name, new Bucket()]));
  const log: RecordedOssRequest[] = [];
  const faults: { status: number; code: string; key?: string }[] = [];
  const sockets = new Set<Socket>();

  const putObject = (bucket: Bucket, key: string, body: Buffer): StoredObject => {
    const object = {
      body,
      etag: createHash('md5').update(body).digest('hex').toUpperCase(),
      mtimeMs: Math.floor(Date.now() / 1000) * 1000,
    };
    bucket.set(key, object);
    return object;
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) sendError(req, res, new OssError(500, 'InternalError', String(err)), '');
      else res.destroy();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const requestId = randomBytes(12).toString('hex').toUpperCase();
    res.setHeader('Server', 'AliyunOSS');
    res.setHeader('x-oss-request-id', requestId);
    res.setHeader('Date', new Date().toUTCString());
    const url = new URL(req.url ?? '/', 'http://oss.invalid');
    const { bucketName, key } = route(req, url);
    const method = req.method ?? 'GET';
    log.push({ method, bucket: bucketName, key, query: url.searchParams, headers: req.headers });
    const body = await readBody(req);
    try {
      const at = faults.findIndex((f) => f.key === undefined || f.key === key);
      const fault = at < 0 ? undefined : faults.splice(at, 1)[0];
      if (fault) throw new OssError(fault.status, fault.code, 'Injected fault.');
      authenticate(req, method, bucketName, key, url.searchParams);
      if (!bucketName) throw new OssError(400, 'InvalidRequest', 'This server serves bucket and object requests only.');
      const bucket = buckets.get(bucketName);
      if (!bucket) throw new OssError(404, 'NoSuchBucket', 'The specified bucket does not exist.', { BucketName: bucketName });
      if (key === '') {
        if (method !== 'GET') throw new OssError(405, 'MethodNotAllowed', 'The specified method is not allowed against this resource.');
        if (url.searchParams.has('bucketInfo')) return sendXml(res, bucketInfoXml(bucketName, region));
        return sendXml(res, listXml(bucketName, bucket, url.searchParams));
      }
      switch (method) {
        case 'GET':
        case 'HEAD':
          return getObject(req, res, bucket, key, method === 'HEAD');
        case 'PUT': {
          const md5 = req.headers['content-md5'];
          if (typeof md5 === 'string' && md5 !== createHash('md5').update(body).digest('base64')) {
            throw new OssError(400, 'InvalidDigest', 'The Content-MD5 you specified was invalid.');
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
          throw new OssError(405, 'MethodNotAllowed', 'The specified method is not allowed against this resource.');
      }
    } catch (err) {
      if (!(err instanceof OssError)) throw err;
      sendError(req, res, err, requestId);
    }
  }

  function authenticate(req: IncomingMessage, method: string, bucket: string, key: string, query: URLSearchParams): void {
    const auth = req.headers.authorization;
    if (!auth) throw new OssError(403, 'AccessDenied', 'You have no right to access this object because of bucket acl.');
    if (auth.startsWith('OSS4-HMAC-SHA256 ')) return verifyV4(req, auth, method, bucket, key, query);
    const m = /^OSS ([^:]+):(.+)$/.exec(auth);
    if (!m) throw new OssError(400, 'InvalidArgument', 'Authorization header is invalid.');
    const accessKeyId = m[1]!;
    const provided = m[2]!;
    if (accessKeyId !== options.accessKeyId) {
      throw new OssError(403, 'InvalidAccessKeyId', 'The OSS Access Key Id you provided does not exist in our records.', { OSSAccessKeyId: accessKeyId });
    }
    const date = header(req, 'x-oss-date') ?? header(req, 'date') ?? '';
    checkSkew(Date.parse(date));
    const stringToSign = canonicalStringV1(req, method, date, bucket, key, query);
    const expected = createHmac('sha1', options.secret).update(stringToSign, 'utf8').digest('base64');
    if (!sameText(expected, provided)) {
      throw new OssError(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your key and signing method.', {
        StringToSign: stringToSign,
        SignatureProvided: provided,
        OSSAccessKeyId: accessKeyId,
      });
    }
  }

  function verifyV4(req: IncomingMessage, auth: string, method: string, bucket: string, key: string, query: URLSearchParams): void {
    const fields = new Map<string, string>();
    for (const part of auth.slice('OSS4-HMAC-SHA256 '.length).split(',')) {
      const eq = part.indexOf('=');
      if (eq > 0) fields.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
    }
    const credential = (fields.get('Credential') ?? '').split('/');
    const provided = fields.get('Signature') ?? '';
    const [accessKeyId, day, scopeRegion, product, terminator] = credential;
    if (credential.length !== 5 || product !== 'oss' || terminator !== 'aliyun_v4_request' || !provided) {
      throw new OssError(400, 'InvalidArgument', 'Authorization header is invalid.');
    }
    if (accessKeyId !== options.accessKeyId) {
      throw new OssError(403, 'InvalidAccessKeyId', 'The OSS Access Key Id you provided does not exist in our records.', { OSSAccessKeyId: accessKeyId ?? '' });
    }
    const date = header(req, 'x-oss-date') ?? '';
    const dm = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(date);
    if (!dm) throw new OssError(403, 'AccessDenied', 'Invalid x-oss-date header for a V4 signature.');
    checkSkew(Date.UTC(+dm[1]!, +dm[2]! - 1, +dm[3]!, +dm[4]!, +dm[5]!, +dm[6]!));
    if (day !== date.slice(0, 8) || scopeRegion !== region) {
      throw new OssError(403, 'SignatureDoesNotMatch', `The credential scope must be ${date.slice(0, 8)}/${region}/oss/aliyun_v4_request.`);
    }
    const additional = (fields.get('AdditionalHeaders') ?? '').split(';').filter((h) => h !== '');
    const signedHeaders = new Set(additional);
    for (const name of Object.keys(req.headers)) {
      if (name === 'content-type' || name === 'content-md5' || name.startsWith('x-oss-')) signedHeaders.add(name);
    }
    const objectPath = `/${bucket ? `${bucket}/` : ''}${key}`;
    const canonicalQuery = [...query.entries()]
      .map(([k, v]) => [encodeRfc3986(k), v] as const)
      .sort(([a], [b]) => compareBytes(a, b))
      .map(([k, v]) => (v === '' ? k : `${k}=${encodeRfc3986(v)}`))
      .join('&');
    const canonicalRequest = [
      method,
      encodeRfc3986(objectPath).replace(/%2F/g, '/'),
      canonicalQuery,
      [...signedHeaders].sort().map((h) => `${h}:${(header(req, h) ?? '').trim()}\n`).join(''),
      additional.join(';'),
      header(req, 'x-oss-content-sha256') ?? 'UNSIGNED-PAYLOAD',
    ].join('\n');
    const stringToSign = [
      'OSS4-HMAC-SHA256',
      date,
      `${day}/${region}/oss/aliyun_v4_request`,
      createHash('sha256').update(canonicalRequest).digest('hex'),
    ].join('\n');
    let signingKey = createHmac('sha256', `aliyun_v4${options.secret}`).update(day).digest();
    for (const part of [region, 'oss', 'aliyun_v4_request']) signingKey = createHmac('sha256', signingKey).update(part).digest();
    const expected = createHmac('sha256', signingKey).update(stringToSign).digest('hex');
    if (!sameText(expected, provided)) {
      throw new OssError(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your key and signing method.', {
        CanonicalRequest: canonicalRequest,
        StringToSign: stringToSign,
        SignatureProvided: provided,
        OSSAccessKeyId: accessKeyId,
      });
    }
  }

  function getObject(req: IncomingMessage, res: ServerResponse, bucket: Bucket, key: string, head: boolean): void {
    const object = bucket.objects.get(key);
    if (!object) throw new OssError(404, 'NoSuchKey', 'The specified key does not exist.', { Key: key });
    const quoted = `"${object.etag}"`;
    const ifMatch = header(req, 'if-match');
    if (ifMatch !== undefined && !etagListMatches(ifMatch, object.etag)) {
      throw new OssError(412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold.', { Condition: 'If-Match' });
    }
    const ifNoneMatch = header(req, 'if-none-match');
    res.setHeader('ETag', quoted);
    res.setHeader('Last-Modified', new Date(object.mtimeMs).toUTCString());
    res.setHeader('x-oss-object-type', 'Normal');
    res.setHeader('x-oss-storage-class', 'Standard');
    res.setHeader('Accept-Ranges', 'bytes');
    res.setHeader('Content-Type', 'application/octet-stream');
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
      } else if (header(req, 'x-oss-range-behavior') === 'standard') {
        res.setHeader('Content-Range', `bytes */${size}`);
        throw new OssError(416, 'InvalidRange', 'The requested range cannot be satisfied', { RangeRequested: range, ActualObjectSize: String(size) });
      }
      // Otherwise OSS ignores an unsatisfiable range and answers the whole object with 200.
    }
    res.setHeader('Content-Length', end - start + 1);
    if (head) res.end();
    else res.end(object.body.subarray(start, end + 1));
  }

  function sendError(req: IncomingMessage, res: ServerResponse, err: OssError, requestId: string): void {
    const extras = Object.entries(err.extra).map(([k, v]) => `  <${k}>${escapeXml(v)}</${k}>\n`).join('');
    const xml =
      '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n' +
      `  <Code>${err.code}</Code>\n  <Message>${escapeXml(err.message)}</Message>\n` +
      `  <RequestId>${requestId}</RequestId>\n  <HostId>${escapeXml(header(req, 'host') ?? '')}</HostId>\n${extras}</Error>\n`;
    res.statusCode = err.status;
    if (req.method === 'HEAD') {
      // A HEAD answer has no body; OSS carries the error document in a header instead.
      res.setHeader('x-oss-err', Buffer.from(xml).toString('base64'));
      res.setHeader('Content-Length', 0);
      res.end();
      return;
    }
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
    region: `oss-${region}`,
    ufsOptions: () => ({
      'oss.endpoint': endpoint,
      'oss.region': `oss-${region}`,
      'oss.accessKeyId': options.accessKeyId,
      'oss.accessKeySecret': options.secret,
    }),
    put(bucketName, key, body) {
      const bucket = buckets.get(bucketName);
      if (!bucket) throw new Error(`no bucket ${bucketName} on this OSS test server`);
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

/** Virtual-hosted style unless the Host is an IP address or localhost, then path style. */
function route(req: IncomingMessage, url: URL): { bucketName: string; key: string } {
  const host = (header(req, 'host') ?? '').replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  const path = url.pathname.slice(1);
  if (isIP(host) !== 0 || host === 'localhost') {
    const slash = path.indexOf('/');
    if (slash < 0) return { bucketName: decodeURIComponent(path), key: '' };
    return { bucketName: decodeURIComponent(path.slice(0, slash)), key: decodeURIComponent(path.slice(slash + 1)) };
  }
  const dot = host.indexOf('.');
  return { bucketName: dot > 0 ? host.slice(0, dot) : '', key: decodeURIComponent(path) };
}

function canonicalStringV1(req: IncomingMessage, method: string, date: string, bucket: string, key: string, query: URLSearchParams): string {
  const ossHeaders = Object.keys(req.headers)
    .filter((h) => h.startsWith('x-oss-'))
    .sort()
    .map((h) => `${h}:${(header(req, h) ?? '').trim()}`);
  const subresources = [...query.entries()]
    .filter(([k]) => SIGNED_SUBRESOURCES.has(k))
    .sort(([a], [b]) => compareBytes(a, b))
    .map(([k, v]) => (v === '' ? k : `${k}=${v}`));
  const resource = (bucket ? `/${bucket}/${key}` : '/') + (subresources.length ? `?${subresources.join('&')}` : '');
  return [method, header(req, 'content-md5') ?? '', header(req, 'content-type') ?? '', date, ...ossHeaders, resource].join('\n');
}

function checkSkew(time: number): void {
  if (Number.isNaN(time)) throw new OssError(403, 'AccessDenied', 'OSS authentication requires a valid Date.');
  if (Math.abs(Date.now() - time) > MAX_SKEW_MS) {
    throw new OssError(403, 'RequestTimeTooSkewed', 'The difference between the request time and the current time is too large.', {
      RequestTime: new Date(time).toISOString(),
      ServerTime: new Date().toISOString(),
    });
  }
}

function listXml(bucketName: string, bucket: Bucket, q: URLSearchParams): string {
  const v2 = q.get('list-type') === '2';
  const prefix = q.get('prefix') ?? '';
  const delimiter = q.get('delimiter') ?? '';
  const encodingType = q.get('encoding-type');
  if (encodingType !== null && encodingType !== 'url') throw new OssError(400, 'InvalidArgument', 'The encoding-type parameter must be url.');
  const maxKeysText = q.get('max-keys');
  const maxKeys = maxKeysText === null ? 100 : Number(maxKeysText);
  if (!Number.isInteger(maxKeys) || maxKeys < 0 || maxKeys > 1000) {
    throw new OssError(400, 'InvalidArgument', 'max-keys must be an integer between 0 and 1000.', { ArgumentName: 'max-keys', ArgumentValue: maxKeysText ?? '' });
  }
  const enc = (s: string): string => escapeXml(encodingType === 'url' ? encodeURIComponent(s) : s);
  let after = '';
  const head: string[] = [`  <Name>${escapeXml(bucketName)}</Name>`, `  <Prefix>${enc(prefix)}</Prefix>`];
  if (v2) {
    const token = q.get('continuation-token');
    const startAfter = q.get('start-after') ?? '';
    if (token !== null) {
      const decoded = decodeToken(token);
      if (decoded === undefined) throw new OssError(400, 'InvalidArgument', 'The continuation token provided is incorrect.');
      after = decoded;
      head.push(`  <ContinuationToken>${escapeXml(token)}</ContinuationToken>`);
    } else {
      after = startAfter;
    }
    if (startAfter) head.push(`  <StartAfter>${enc(startAfter)}</StartAfter>`);
  } else {
    after = q.get('marker') ?? '';
    head.push(`  <Marker>${enc(after)}</Marker>`);
  }
  head.push(`  <MaxKeys>${maxKeys}</MaxKeys>`, `  <Delimiter>${enc(delimiter)}</Delimiter>`);
  if (encodingType) head.push('  <EncodingType>url</EncodingType>');
  const page = listPage(bucket, prefix, delimiter, after, maxKeys);
  head.push(`  <IsTruncated>${page.truncated}</IsTruncated>`);
  const last = page.entries.at(-1)?.name;
  if (page.truncated && last !== undefined) {
    head.push(v2 ? `  <NextContinuationToken>${encodeToken(last)}</NextContinuationToken>` : `  <NextMarker>${enc(last)}</NextMarker>`);
  }
  if (v2) head.push(`  <KeyCount>${page.entries.length}</KeyCount>`);
  const contents: string[] = [];
  const prefixes: string[] = [];
  for (const entry of page.entries) {
    if (!entry.object) {
      prefixes.push(`  <CommonPrefixes>\n    <Prefix>${enc(entry.name)}</Prefix>\n  </CommonPrefixes>`);
      continue;
    }
    const owner = v2 && q.get('fetch-owner') !== 'true' ? '' : `    <Owner>\n      <ID>${OWNER_ID}</ID>\n      <DisplayName>${OWNER_ID}</DisplayName>\n    </Owner>\n`;
    contents.push(
      '  <Contents>\n' +
        `    <Key>${enc(entry.name)}</Key>\n` +
        `    <LastModified>${new Date(entry.object.mtimeMs).toISOString()}</LastModified>\n` +
        `    <ETag>&quot;${entry.object.etag}&quot;</ETag>\n` +
        '    <Type>Normal</Type>\n' +
        `    <Size>${entry.object.body.length}</Size>\n` +
        '    <StorageClass>Standard</StorageClass>\n' +
        owner +
        '  </Contents>',
    );
  }
  return ['<?xml version="1.0" encoding="UTF-8"?>', '<ListBucketResult>', ...head, ...contents, ...prefixes, '</ListBucketResult>', ''].join('\n');
}

/**
 * One page of a delimiter listing: objects and common prefixes merged in key order,
 * each counting one toward maxKeys. A common prefix sorts at its own name, so a page
 * that ends on one resumes after every key beneath it.
 */
function listPage(bucket: Bucket, prefix: string, delimiter: string, after: string, maxKeys: number): ListPage {
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

function bucketInfoXml(name: string, region: string): string {
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<BucketInfo>',
    '  <Bucket>',
    `    <CreationDate>${new Date(0).toISOString()}</CreationDate>`,
    `    <ExtranetEndpoint>oss-${region}.aliyuncs.com</ExtranetEndpoint>`,
    `    <IntranetEndpoint>oss-${region}-internal.aliyuncs.com</IntranetEndpoint>`,
    `    <Location>oss-${region}</Location>`,
    `    <Name>${escapeXml(name)}</Name>`,
    '    <StorageClass>Standard</StorageClass>',
    `    <Owner>\n      <DisplayName>${OWNER_ID}</DisplayName>\n      <ID>${OWNER_ID}</ID>\n    </Owner>`,
    '    <AccessControlList>\n      <Grant>private</Grant>\n    </AccessControlList>',
    '  </Bucket>',
    '</BucketInfo>',
    '',
  ].join('\n');
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

function encodeToken(name: string): string {
  return Buffer.from(name, 'utf8').toString('base64url');
}

function decodeToken(token: string): string | undefined {
  if (!/^[A-Za-z0-9_-]+$/.test(token)) return undefined;
  return Buffer.from(token, 'base64url').toString('utf8');
}

function encodeRfc3986(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
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

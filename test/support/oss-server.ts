/**
 * A local Alibaba Cloud OSS server for tests, speaking enough of the OSS protocol
 * that ali-oss cannot tell it from the service: the OSS dialect of the shared
 * fake-object-server.ts (which owns the store, the request skeleton, conditions,
 * ranges and listing pages). It owns:
 *
 * - addressing as ali-oss does it: virtual-hosted (`Host: bucket.oss-<region>.aliyuncs.com`,
 *   which ali-oss sends when the endpoint is an IP address) and path style
 *   (`/bucket/key`, when the Host is an IP or `localhost`);
 * - signature verification, V1 (`OSS AK:base64(HMAC-SHA1)` over VERB, Content-MD5,
 *   Content-Type, date, CanonicalizedOSSHeaders and CanonicalizedResource with its
 *   signed sub-resources) and V4 (`OSS4-HMAC-SHA256`, ali-oss `authorizationV4`),
 *   plus the 15-minute clock skew rule; failures answer 403 with the service's codes
 *   (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, RequestTimeTooSkewed);
 * - an unsatisfiable range ignored with a 200 unless `x-oss-range-behavior: standard`
 *   asks for 416 InvalidRange, as OSS documents; upper-case MD5 ETags;
 * - GetBucketInfo, ListObjects (marker) and ListObjectsV2 (continuation-token,
 *   start-after) documents with prefix, delimiter, max-keys and encoding-type=url;
 * - error XML bodies (`<Error><Code>…`) with the service's codes and messages, in the
 *   base64 `x-oss-err` header for HEAD (there being no body).
 *
 * It deliberately leaves out everything cachefs never calls (multipart, ACLs,
 * versioning, presigned URLs, STS token checks). Faults are injected with
 * `failNext` (e.g. 503 SlowDown) and requests are recorded for tests to count.
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import {
  compareBytes,
  encodeRfc3986,
  escapeXml,
  header,
  listPage,
  ObjectStoreError,
  sameText,
  startFakeObjectServer,
  type Bucket,
  type ErrorContext,
  type FakeObjectServer,
  type ObjectStoreDialect,
} from './fake-object-server.js';

export interface StartOssServerOptions {
  buckets: readonly string[];
  accessKeyId: string;
  secret: string;
  /** Region the server answers as, `oss-` prefix optional; V4 signatures must be scoped to it. Default cn-hangzhou. */
  region?: string;
}

export interface OssTestServer extends FakeObjectServer {
  /** In ali-oss form, e.g. `oss-cn-hangzhou`. */
  readonly region: string;
  /** The options an OssUfs needs to reach this server with the right credentials. */
  ufsOptions(): Record<string, string>;
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

export async function startOssServer(options: StartOssServerOptions): Promise<OssTestServer> {
  const region = (options.region ?? 'cn-hangzhou').replace(/^oss-/, '');

  function authenticate(req: IncomingMessage, method: string, bucket: string, key: string, query: URLSearchParams): void {
    const auth = req.headers.authorization;
    if (!auth) throw new ObjectStoreError(403, 'AccessDenied', 'You have no right to access this object because of bucket acl.');
    if (auth.startsWith('OSS4-HMAC-SHA256 ')) return verifyV4(req, auth, method, bucket, key, query);
    const m = /^OSS ([^:]+):(.+)$/.exec(auth);
    if (!m) throw new ObjectStoreError(400, 'InvalidArgument', 'Authorization header is invalid.');
    const accessKeyId = m[1]!;
    const provided = m[2]!;
    if (accessKeyId !== options.accessKeyId) {
      throw new ObjectStoreError(403, 'InvalidAccessKeyId', 'The OSS Access Key Id you provided does not exist in our records.', { OSSAccessKeyId: accessKeyId });
    }
    const date = header(req, 'x-oss-date') ?? header(req, 'date') ?? '';
    checkSkew(Date.parse(date));
    const stringToSign = canonicalStringV1(req, method, date, bucket, key, query);
    const expected = createHmac('sha1', options.secret).update(stringToSign, 'utf8').digest('base64');
    if (!sameText(expected, provided)) {
      throw new ObjectStoreError(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your key and signing method.', {
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
      throw new ObjectStoreError(400, 'InvalidArgument', 'Authorization header is invalid.');
    }
    if (accessKeyId !== options.accessKeyId) {
      throw new ObjectStoreError(403, 'InvalidAccessKeyId', 'The OSS Access Key Id you provided does not exist in our records.', { OSSAccessKeyId: accessKeyId ?? '' });
    }
    const date = header(req, 'x-oss-date') ?? '';
    const dm = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(date);
    if (!dm) throw new ObjectStoreError(403, 'AccessDenied', 'Invalid x-oss-date header for a V4 signature.');
    checkSkew(Date.UTC(+dm[1]!, +dm[2]! - 1, +dm[3]!, +dm[4]!, +dm[5]!, +dm[6]!));
    if (day !== date.slice(0, 8) || scopeRegion !== region) {
      throw new ObjectStoreError(403, 'SignatureDoesNotMatch', `The credential scope must be ${date.slice(0, 8)}/${region}/oss/aliyun_v4_request.`);
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
      throw new ObjectStoreError(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your key and signing method.', {
        CanonicalRequest: canonicalRequest,
        StringToSign: stringToSign,
        SignatureProvided: provided,
        OSSAccessKeyId: accessKeyId,
      });
    }
  }

  const dialect: ObjectStoreDialect = {
    name: 'OSS',
    etagOf: (body) => createHash('md5').update(body).digest('hex').toUpperCase(),
    begin(res) {
      const requestId = randomBytes(12).toString('hex').toUpperCase();
      res.setHeader('Server', 'AliyunOSS');
      res.setHeader('x-oss-request-id', requestId);
      return requestId;
    },
    address: route,
    authenticate: (req, method, bucketName, key, url) => authenticate(req, method, bucketName, key, url.searchParams),
    noSuchBucket: (bucketName) =>
      bucketName
        ? new ObjectStoreError(404, 'NoSuchBucket', 'The specified bucket does not exist.', { BucketName: bucketName })
        : new ObjectStoreError(400, 'InvalidRequest', 'This server serves bucket and object requests only.'),
    bucketDocument: (bucketName, bucket, query) => (query.has('bucketInfo') ? bucketInfoXml(bucketName, region) : listXml(bucketName, bucket, query)),
    objectHeaders: { 'x-oss-object-type': 'Normal', 'x-oss-storage-class': 'Standard' },
    unsatisfiableRange: (req, range, size) =>
      header(req, 'x-oss-range-behavior') === 'standard'
        ? new ObjectStoreError(416, 'InvalidRange', 'The requested range cannot be satisfied', { RangeRequested: range, ActualObjectSize: String(size) })
        : undefined,
    messages: {
      badDigest: 'The Content-MD5 you specified was invalid.',
      preconditionFailed: 'At least one of the pre-conditions you specified did not hold.',
    },
    sendError,
  };
  const server = await startFakeObjectServer(options.buckets, dialect);
  return {
    ...server,
    region: `oss-${region}`,
    ufsOptions: () => ({
      'oss.endpoint': server.endpoint,
      'oss.region': `oss-${region}`,
      'oss.accessKeyId': options.accessKeyId,
      'oss.accessKeySecret': options.secret,
    }),
  };
}

function sendError(req: IncomingMessage, res: ServerResponse, err: ObjectStoreError, context: ErrorContext): void {
  const extras = Object.entries(err.extra).map(([k, v]) => `  <${k}>${escapeXml(v)}</${k}>\n`).join('');
  const xml =
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n' +
    `  <Code>${err.code}</Code>\n  <Message>${escapeXml(err.message)}</Message>\n` +
    `  <RequestId>${context.requestId}</RequestId>\n  <HostId>${escapeXml(header(req, 'host') ?? '')}</HostId>\n${extras}</Error>\n`;
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
  if (Number.isNaN(time)) throw new ObjectStoreError(403, 'AccessDenied', 'OSS authentication requires a valid Date.');
  if (Math.abs(Date.now() - time) > MAX_SKEW_MS) {
    throw new ObjectStoreError(403, 'RequestTimeTooSkewed', 'The difference between the request time and the current time is too large.', {
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
  if (encodingType !== null && encodingType !== 'url') throw new ObjectStoreError(400, 'InvalidArgument', 'The encoding-type parameter must be url.');
  const maxKeysText = q.get('max-keys');
  const maxKeys = maxKeysText === null ? 100 : Number(maxKeysText);
  if (!Number.isInteger(maxKeys) || maxKeys < 0 || maxKeys > 1000) {
    throw new ObjectStoreError(400, 'InvalidArgument', 'max-keys must be an integer between 0 and 1000.', { ArgumentName: 'max-keys', ArgumentValue: maxKeysText ?? '' });
  }
  const enc = (s: string): string => escapeXml(encodingType === 'url' ? encodeURIComponent(s) : s);
  let after = '';
  const head: string[] = [`  <Name>${escapeXml(bucketName)}</Name>`, `  <Prefix>${enc(prefix)}</Prefix>`];
  if (v2) {
    const token = q.get('continuation-token');
    const startAfter = q.get('start-after') ?? '';
    if (token !== null) {
      const decoded = decodeToken(token);
      if (decoded === undefined) throw new ObjectStoreError(400, 'InvalidArgument', 'The continuation token provided is incorrect.');
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

function encodeToken(name: string): string {
  return Buffer.from(name, 'utf8').toString('base64url');
}

function decodeToken(token: string): string | undefined {
  if (!/^[A-Za-z0-9_-]+$/.test(token)) return undefined;
  return Buffer.from(token, 'base64url').toString('utf8');
}

/**
 * A local Tencent Cloud COS server for tests, speaking enough of the COS XML API
 * that cos-nodejs-sdk-v5 cannot tell it from the service: the COS dialect of the
 * shared fake-object-server.ts (which owns the store, the request skeleton,
 * conditions, ranges and listing pages). It owns:
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
 * - 416 InvalidRange for an unsatisfiable range; lower-case MD5 ETags;
 * - the GET Bucket (ListObjects) document with prefix, delimiter, marker, max-keys and
 *   encoding-type=url, NextMarker on every truncated page;
 * - error XML bodies (`<Error><Code>…<Resource>…<RequestId>…<TraceId>`), none on HEAD
 *   answers, as the service.
 *
 * Everything cachefs never calls (multipart, ACLs, versioning, CI) is left out.
 * Faults are injected with `failNext` and requests are recorded for tests to count.
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
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

export interface CosTestServer extends FakeObjectServer {
  readonly region: string;
  /** The options a CosUfs needs to reach this server with the right credentials. */
  ufsOptions(): Record<string, string>;
}

const OWNER_ID = 'qcs::cam::uin/100000000001:uin/100000000001';

export async function startCosServer(options: StartCosServerOptions): Promise<CosTestServer> {
  const region = options.region ?? 'ap-guangzhou';

  function authenticate(req: IncomingMessage, method: string, url: URL, key: string): void {
    const auth = header(req, 'authorization');
    if (!auth) throw new ObjectStoreError(403, 'AccessDenied', 'Access Denied.');
    const fields = new Map<string, string>();
    for (const part of auth.split('&')) {
      const eq = part.indexOf('=');
      if (eq > 0) fields.set(part.slice(0, eq), part.slice(eq + 1));
    }
    const signTime = fields.get('q-sign-time') ?? '';
    const keyTime = fields.get('q-key-time') ?? '';
    const provided = fields.get('q-signature') ?? '';
    if (fields.get('q-sign-algorithm') !== 'sha1' || !signTime || !keyTime || !provided || !fields.has('q-ak')) {
      throw new ObjectStoreError(403, 'AccessDenied', 'Authorization header format is invalid.');
    }
    if (fields.get('q-ak') !== options.accessKeyId) {
      throw new ObjectStoreError(403, 'InvalidAccessKeyId', 'The Access Key Id you provided does not exist in our records.');
    }
    const [start, end] = signTime.split(';').map(Number);
    const now = Date.now() / 1000;
    if (start === undefined || end === undefined || !(start <= now + 1 && now <= end)) throw new ObjectStoreError(403, 'AccessDenied', 'Request has expired');

    const listed = (name: string): string[] => (fields.get(name) ?? '').split(';').filter((k) => k !== '');
    const params = new Map<string, string>();
    for (const [k, v] of url.searchParams) params.set(encodeRfc3986(k).toLowerCase(), encodeRfc3986(v));
    const headers = new Map<string, string>();
    for (const [k, v] of Object.entries(req.headers)) headers.set(encodeRfc3986(k).toLowerCase(), encodeRfc3986(Array.isArray(v) ? v.join(',') : (v ?? '')));
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
      throw new ObjectStoreError(403, 'SignatureDoesNotMatch', 'The Signature you specified is invalid.');
    }
  }

  const dialect: ObjectStoreDialect = {
    name: 'COS',
    etagOf: (body) => createHash('md5').update(body).digest('hex'),
    begin(res) {
      const requestId = randomBytes(18).toString('base64url');
      res.setHeader('Server', 'tencent-cos');
      res.setHeader('x-cos-request-id', requestId);
      return requestId;
    },
    // Virtual-hosted only: the SDK, pointed here by its `Ip` option, sends `Host: bucket-appid.cos.<region>.myqcloud.com`.
    address(req, url) {
      const host = hostOf(req);
      const dot = host.indexOf('.');
      return { bucketName: dot > 0 ? host.slice(0, dot) : '', key: decodeURIComponent(url.pathname.slice(1)) };
    },
    authenticate: (req, method, _bucketName, key, url) => authenticate(req, method, url, key),
    noSuchBucket: () => new ObjectStoreError(404, 'NoSuchBucket', 'The specified bucket does not exist.'),
    bucketDocument: listXml,
    objectHeaders: { 'x-cos-hash-crc64ecma': '0' },
    unsatisfiableRange: () => new ObjectStoreError(416, 'InvalidRange', 'The Range you specified is not valid.'),
    messages: {
      badDigest: 'The Content-MD5 you specified did not match what we received.',
      preconditionFailed: 'Precondition not match.',
    },
    sendError,
  };
  const server = await startFakeObjectServer(options.buckets, dialect);
  return {
    ...server,
    region,
    ufsOptions: () => ({
      'cos.endpoint': server.endpoint,
      'cos.region': region,
      'cos.secretId': options.accessKeyId,
      'cos.secretKey': options.secret,
    }),
  };
}

function hostOf(req: IncomingMessage): string {
  return (header(req, 'host') ?? '').replace(/:\d+$/, '');
}

function sendError(req: IncomingMessage, res: ServerResponse, err: ObjectStoreError, context: ErrorContext): void {
  res.statusCode = err.status;
  if (req.method === 'HEAD') {
    res.setHeader('Content-Length', 0);
    res.end();
    return;
  }
  const resource = context.requestId ? `${hostOf(req)}/${context.key}` : '';
  const xml =
    "<?xml version='1.0' encoding='utf-8' ?>\n<Error>\n" +
    `\t<Code>${err.code}</Code>\n\t<Message>${escapeXml(err.message)}</Message>\n` +
    `\t<Resource>${escapeXml(resource)}</Resource>\n\t<RequestId>${context.requestId}</RequestId>\n` +
    `\t<TraceId>${randomBytes(24).toString('base64')}</TraceId>\n</Error>\n`;
  res.setHeader('Content-Type', 'application/xml');
  res.setHeader('Content-Length', Buffer.byteLength(xml));
  res.end(xml);
}

function listXml(bucketName: string, bucket: Bucket, q: URLSearchParams): string {
  const prefix = q.get('prefix') ?? '';
  const delimiter = q.get('delimiter') ?? '';
  const marker = q.get('marker') ?? '';
  const encodingType = q.get('encoding-type');
  if (encodingType !== null && encodingType !== 'url') throw new ObjectStoreError(400, 'InvalidArgument', 'The encoding-type parameter must be url.');
  const maxKeysText = q.get('max-keys');
  const maxKeys = maxKeysText === null || maxKeysText === '' ? 1000 : Number(maxKeysText);
  if (!Number.isInteger(maxKeys) || maxKeys < 0 || maxKeys > 1000) throw new ObjectStoreError(400, 'InvalidArgument', 'max-keys must be an integer between 0 and 1000.');
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

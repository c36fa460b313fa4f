/**
 * Tencent Cloud COS backend (`cosn://bucket-appid/prefix`, also `cos://`), on
 * cos-nodejs-sdk-v5. Options:
 *
 * - `cos.region`: e.g. `ap-guangzhou`; taken from a standard endpoint when absent.
 * - `cos.endpoint`: a domain the bucket is prefixed to (`cos.ap-guangzhou.myqcloud.com`,
 *   `cos-internal.ap-guangzhou.tencentcos.cn`, reached over HTTPS; `{Bucket}` may place
 *   it), or a full `http(s)://host[:port]` URL. For an IP address the SDK connects to
 *   it and names the bucket in the Host header (`bucket-appid.cos.<region>.myqcloud.com`),
 *   which is how a local test server is reached.
 * - `cos.secretId`, `cos.secretKey`, `cos.securityToken` (STS), else the env vars
 *   `COS_SECRET_ID`, `COS_SECRET_KEY`, `COS_SESSION_TOKEN`.
 *
 * It owns the SDK specifics: its one `Timeout` knob (connect, then each gap between
 * bytes; the SDK retries network failures and 5xx itself, up to three times),
 * URL-encoded listings so that any key survives XML, and turning the SDK's errors
 * (bodiless answers arrive with the HTTP status as `code`) into CachefsErrors whose
 * messages and causes carry no credential. No caching and no retries of its own.
 */
import { isIP } from 'node:net';
import COS from 'cos-nodejs-sdk-v5';
import { Scatter } from '../block/scatter.js';
import { CachefsError, isCachefsError } from '../errors.js';
import { serviceError, type ServiceErrorFacts } from './service-errors.js';
import type { Ufs, UfsListOptions, UfsListPage, UfsObject, UfsOptions, UfsReadOptions } from './ufs.js';
import type { UfsUri } from './uri.js';
import { abortable, decodeListed, sanitizedCause, checkVersion, stripQuotes } from './sdk-call.js';

/** cos-request applies it to connecting and to every silence between bytes afterwards. */
const SOCKET_TIMEOUT_MS = 5000;
const MAX_LIST_KEYS = 1000;

export class CosUfs implements Ufs {
  readonly displayUri: string;
  private readonly client: COS;
  private readonly bucket: string;
  private readonly region: string;
  private readonly root: string;
  private readonly scheme: string;

  constructor(uri: UfsUri, options: UfsOptions) {
    this.displayUri = uri.text;
    this.bucket = uri.bucket;
    this.root = uri.root;
    this.scheme = /^cos:/i.test(uri.text) ? 'cos' : 'cosn';
    const endpoint = options['cos.endpoint'];
    const target = endpoint === undefined ? undefined : parseEndpoint(endpoint);
    const region = options['cos.region'] || (target && regionOfHost(target.host));
    if (!region) {
      throw new CachefsError('INVALID_ARGUMENT', `COS needs cos.region (e.g. ap-guangzhou) for ${uri.text}`);
    }
    if (!/^[a-z0-9-]+$/.test(region)) throw new CachefsError('INVALID_ARGUMENT', `invalid cos.region '${region}': expected e.g. ap-guangzhou`);
    this.region = region;
    const secretId = options['cos.secretId'] ?? process.env.COS_SECRET_ID;
    const secretKey = options['cos.secretKey'] ?? process.env.COS_SECRET_KEY;
    if (!secretId || !secretKey) {
      throw new CachefsError('INVALID_ARGUMENT', `COS credentials missing for ${uri.text}: set cos.secretId and cos.secretKey, or COS_SECRET_ID and COS_SECRET_KEY`);
    }
    const securityToken = options['cos.securityToken'] ?? process.env.COS_SESSION_TOKEN;
    const sdkOptions: COS.COSOptions = { SecretId: secretId, SecretKey: secretKey, Timeout: SOCKET_TIMEOUT_MS, KeepAlive: true };
    if (securityToken) sdkOptions.SecurityToken = securityToken;
    if (target) {
      sdkOptions.Protocol = target.protocol;
      // An IP cannot carry the bucket as a subdomain: keep the standard domain for Host and the signature, connect to the IP.
      if (isIP(target.host) !== 0) sdkOptions.Ip = target.port ? `${target.host}:${target.port}` : target.host;
      else sdkOptions.Domain = (target.host.includes('{Bucket}') ? target.host : `{Bucket}.${target.host}`) + (target.port ? `:${target.port}` : '');
    }
    this.client = new COS(sdkOptions);
  }

  private where(key?: string): string {
    return key === undefined ? `${this.scheme}://${this.bucket}` : `${this.scheme}://${this.bucket}/${this.root}${key}`;
  }

  /**
   * The CachefsError for anything the SDK threw; a missing bucket is named as the
   * bucket, not the key. `bucketLevel` marks requests on the bucket itself (listings),
   * where a 404 of whatever kind can only mean that the bucket is not there.
   */
  private fail(err: unknown, key?: string, bucketLevel = false): CachefsError {
    if (isCachefsError(err)) return err;
    const facts = cosErrorFacts(err);
    if (bucketLevel && facts.status === 404) facts.code = 'NoSuchBucket';
    const where = facts.code === 'NoSuchBucket' ? this.where() : this.where(key);
    return serviceError(facts, where, sanitizedCause('COS', facts));
  }

  async check(signal?: AbortSignal): Promise<void> {
    try {
      await abortable(this.client.getBucket({ Bucket: this.bucket, Region: this.region, Prefix: this.root, MaxKeys: 1 }), signal, this.where());
    } catch (err) {
      throw this.fail(err, undefined, true);
    }
  }

  async stat(key: string, signal?: AbortSignal): Promise<UfsObject | null> {
    // An empty key would address the bucket itself.
    if (this.root + key === '') return null;
    try {
      const out = await abortable(this.client.headObject({ Bucket: this.bucket, Region: this.region, Key: this.root + key }), signal, this.where(key));
      const headers: Record<string, unknown> = out.headers ?? {};
      return {
        key,
        size: Number(headers['content-length'] ?? 0),
        mtimeMs: Date.parse(String(headers['last-modified'] ?? '')) || 0,
        etag: stripQuotes(String(headers.etag ?? out.ETag ?? '')),
      };
    } catch (err) {
      if (cosErrorFacts(err).status === 404) return null;
      throw this.fail(err, key);
    }
  }

  async list(prefix: string, options: UfsListOptions = {}): Promise<UfsListPage> {
    let out: COS.GetBucketResult;
    try {
      out = await abortable(
        this.client.getBucket({
          Bucket: this.bucket,
          Region: this.region,
          Prefix: this.root + prefix,
          Delimiter: '/',
          Marker: options.token,
          MaxKeys: Math.min(Math.max(options.maxKeys ?? MAX_LIST_KEYS, 1), MAX_LIST_KEYS),
          EncodingType: 'url',
        }),
        options.signal,
        this.where(prefix),
      );
    } catch (err) {
      throw this.fail(err, prefix, true);
    }
    const cut = this.root.length;
    const objects = out.Contents.map((o) => ({
      key: decodeListed(o.Key).slice(cut),
      size: Number(o.Size),
      mtimeMs: Date.parse(o.LastModified) || 0,
      etag: stripQuotes(o.ETag),
    }));
    const prefixes = out.CommonPrefixes.map((p) => decodeListed(p.Prefix).slice(cut));
    // The next page starts after the greatest name of this one, which is what NextMarker
    // holds; computing it spares relying on whether the service URL-encodes NextMarker.
    let nextToken: string | undefined;
    if (out.IsTruncated === 'true') {
      for (const name of [...objects.map((o) => o.key), ...prefixes]) {
        if (nextToken === undefined || Buffer.compare(Buffer.from(name), Buffer.from(nextToken)) > 0) nextToken = name;
      }
      if (nextToken !== undefined) nextToken = this.root + nextToken;
    }
    return { objects, prefixes, nextToken };
  }

  async readInto(key: string, offset: number, dest: Buffer | readonly Buffer[], options: UfsReadOptions = {}): Promise<number> {
    const scatter = new Scatter(dest);
    const { length } = scatter;
    if (length <= 0) return 0;
    let out: COS.GetObjectResult;
    try {
      out = await abortable(
        this.client.getObject({
          Bucket: this.bucket,
          Region: this.region,
          Key: this.root + key,
          Range: `bytes=${offset}-${offset + length - 1}`,
          IfMatch: options.etag ? `"${options.etag}"` : undefined,
        }),
        options.signal,
        this.where(key),
      );
    } catch (err) {
      if (cosErrorFacts(err).status === 416) return 0; // starts at or past the end
      throw this.fail(err, key);
    }
    const answered = (out.headers as Record<string, unknown> | undefined)?.etag ?? out.ETag;
    checkVersion(options.etag, typeof answered === 'string' ? answered : undefined, this.where(key));
    const body = out.Body ?? Buffer.alloc(0);
    // A 200 carries the whole object from byte 0.
    const bytes = out.statusCode === 206 ? body : body.subarray(offset, offset + length);
    if (bytes.length > length) throw new CachefsError('IO', `object store sent more than the ${length} bytes asked for from ${this.where(key)}`);
    return scatter.copyIn(bytes, 0);
  }

  async close(): Promise<void> {
    // The SDK keeps no state worth releasing; its keep-alive sockets close when idle.
  }
}

interface EndpointTarget {
  protocol: 'http:' | 'https:';
  host: string;
  port?: string;
}

function parseEndpoint(endpoint: string): EndpointTarget {
  const m = /^(?:(https?):\/\/)?([A-Za-z0-9.{}-]+)(?::(\d{1,5}))?\/?$/.exec(endpoint);
  if (!m) {
    throw new CachefsError('INVALID_ARGUMENT', `invalid cos.endpoint '${endpoint}': expected a domain such as cos.ap-guangzhou.myqcloud.com or http(s)://host[:port]`);
  }
  return { protocol: m[1] === 'http' ? 'http:' : 'https:', host: m[2]!, port: m[3] };
}

/** `cos.ap-guangzhou.myqcloud.com`, `cos-internal.ap-guangzhou.tencentcos.cn` → the region. */
function regionOfHost(host: string): string | undefined {
  return /(?:^|\.)cos(?:-internal)?\.([a-z0-9-]+)\.(?:myqcloud\.com|tencentcos\.cn)$/.exec(host)?.[1];
}

/**
 * What a COS SDK error says. Service errors carry `code` and `statusCode`; a bodiless
 * answer (HEAD) has the status as its code; network failures carry the errno as code.
 */
function cosErrorFacts(err: unknown): ServiceErrorFacts & { requestId?: string } {
  if (typeof err !== 'object' || err === null) return {};
  const e = err as Record<string, unknown>;
  const status = typeof e.statusCode === 'number' ? e.statusCode : undefined;
  const rawCode = typeof e.code === 'string' ? e.code : undefined;
  const code = rawCode && !/^\d+$/.test(rawCode) ? rawCode : undefined;
  const requestId = typeof e.RequestId === 'string' ? e.RequestId : undefined;
  return { code, status, requestId };
}



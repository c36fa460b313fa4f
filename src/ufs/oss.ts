/**
 * Alibaba Cloud OSS backend (`oss://bucket/prefix`), on ali-oss. Options:
 *
 * - `oss.endpoint`: a host (`oss-cn-beijing-internal.aliyuncs.com`, reached over
 *   HTTPS) or a full `http(s)://host[:port]` URL. For an IP address ali-oss connects
 *   to it and names the bucket in the Host header (`bucket.<region>.aliyuncs.com`),
 *   which is how a local test server is reached.
 * - `oss.region`: `cn-beijing` or `oss-cn-beijing`; taken from a standard endpoint
 *   when absent. One of endpoint and region is required.
 * - `oss.accessKeyId`, `oss.accessKeySecret`, `oss.securityToken` (STS), else the
 *   env vars `OSS_ACCESS_KEY_ID`, `OSS_ACCESS_KEY_SECRET`, `OSS_SESSION_TOKEN`.
 * - `oss.signatureVersion`: `v1` (ali-oss's default) or `v4`.
 *
 * It owns the ali-oss specifics: per-request `[connect, response]` timeouts (the
 * SDK's instance timeout is one number for both, 60 s by default), ranged reads that
 * ask for the standard 416 instead of OSS's legacy "ignore a bad range, send it all",
 * URL-encoded listings so that any key survives XML, and turning the SDK's errors
 * (network failures arrive as status -1/-2 with the errno only in the message) into
 * CachefsErrors whose messages and causes carry no credential. No caching, no
 * retries (ali-oss's `retryMax` stays 0).
 */
import type { Readable } from 'node:stream';
import OSS from 'ali-oss';
import { Scatter } from '../block/scatter.js';
import { CachefsError, isCachefsError } from '../errors.js';
import { serviceError, type ServiceErrorFacts } from './service-errors.js';
import type { Ufs, UfsListOptions, UfsListPage, UfsObject, UfsOptions, UfsReadOptions } from './ufs.js';
import type { UfsUri } from './uri.js';
import { abortError, abortable, decodeListed, sanitizedCause, checkVersion, stripQuotes } from './sdk-call.js';

const CONNECT_TIMEOUT_MS = 3000;
/** Until the response headers (streamed reads) or the whole response (listings, HEAD). */
const RESPONSE_TIMEOUT_MS = 30_000;
/** A body that sends nothing for this long is given up on. */
const IDLE_TIMEOUT_MS = 30_000;
const TIMEOUTS: [number, number] = [CONNECT_TIMEOUT_MS, RESPONSE_TIMEOUT_MS];
const MAX_LIST_KEYS = 1000;
const STS_REFRESH_UNUSED_MS = 3_600_000;

/**
 * The slice of ali-oss this backend calls, typed as the SDK behaves at run time:
 * a per-request `timeout` goes to urllib untouched, so it may be `[connect, response]`,
 * and `prefixes` is null when there are none.
 */
interface OssCallOptions {
  timeout: [number, number];
  headers?: Record<string, string>;
}
interface OssResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
}
interface OssListResult {
  objects: { name: string; lastModified: string; etag: string; size: number }[];
  prefixes: string[] | null;
  isTruncated: boolean;
  nextContinuationToken: string | null;
}
interface OssClient {
  head(name: string, options: OssCallOptions): Promise<{ res: OssResponse }>;
  getStream(name: string, options: OssCallOptions): Promise<{ stream: Readable; res: OssResponse }>;
  listV2(query: Record<string, string | number>, options: OssCallOptions): Promise<OssListResult>;
}

export class OssUfs implements Ufs {
  readonly displayUri: string;
  private readonly client: OssClient;
  private readonly bucket: string;
  private readonly root: string;

  constructor(uri: UfsUri, options: UfsOptions) {
    this.displayUri = uri.text;
    this.bucket = uri.bucket;
    this.root = uri.root;
    const endpoint = options['oss.endpoint'];
    const endpointHost = endpoint === undefined ? undefined : parseEndpoint(endpoint);
    const region = normalizeRegion(options['oss.region']) ?? regionOfEndpoint(endpointHost);
    if (endpoint === undefined && region === undefined) {
      throw new CachefsError('INVALID_ARGUMENT', `OSS needs oss.endpoint (e.g. oss-cn-beijing.aliyuncs.com) or oss.region (e.g. cn-beijing) for ${uri.text}`);
    }
    const accessKeyId = options['oss.accessKeyId'] ?? process.env.OSS_ACCESS_KEY_ID;
    const accessKeySecret = options['oss.accessKeySecret'] ?? process.env.OSS_ACCESS_KEY_SECRET;
    if (!accessKeyId || !accessKeySecret) {
      throw new CachefsError(
        'INVALID_ARGUMENT',
        `OSS credentials missing for ${uri.text}: set oss.accessKeyId and oss.accessKeySecret, or OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET`,
      );
    }
    const stsToken = options['oss.securityToken'] ?? process.env.OSS_SESSION_TOKEN;
    const authorizationV4 = parseSignatureVersion(options['oss.signatureVersion']) === 'v4';
    if (authorizationV4 && region === undefined) {
      throw new CachefsError('INVALID_ARGUMENT', `oss.region is required for V4 signatures with oss.endpoint '${endpoint}' (${uri.text})`);
    }
    const sdkOptions: OSS.Options = { accessKeyId, accessKeySecret, bucket: this.bucket, secure: true, authorizationV4, timeout: RESPONSE_TIMEOUT_MS };
    // Only what is known: an explicit undefined would replace ali-oss's defaults.
    if (endpoint !== undefined) sdkOptions.endpoint = endpoint;
    if (region !== undefined) sdkOptions.region = region;
    if (stsToken) {
      sdkOptions.stsToken = stsToken;
      // ali-oss warns on every client built with a token and no refresh settings. The
      // interval is unused without a refreshSTSToken callback: a new token means new options.
      sdkOptions.refreshSTSTokenInterval = STS_REFRESH_UNUSED_MS;
    }
    try {
      this.client = new OSS(sdkOptions) as unknown as OssClient;
    } catch (err) {
      // ali-oss rejects bad bucket names, endpoints and regions here; its messages hold no secrets.
      throw new CachefsError('INVALID_ARGUMENT', `invalid OSS configuration for ${uri.text}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private where(key?: string): string {
    return key === undefined ? `oss://${this.bucket}` : `oss://${this.bucket}/${this.root}${key}`;
  }

  /**
   * The CachefsError for anything the SDK threw; a missing bucket is named as the
   * bucket, not the key. `bucketLevel` marks requests on the bucket itself (listings),
   * where a 404 of whatever kind can only mean that the bucket is not there.
   */
  private fail(err: unknown, key?: string, bucketLevel = false): CachefsError {
    if (isCachefsError(err)) return err;
    const facts = ossErrorFacts(err);
    if (bucketLevel && facts.status === 404) facts.code = 'NoSuchBucket';
    const where = facts.code === 'NoSuchBucket' ? this.where() : this.where(key);
    return serviceError(facts, where, sanitizedCause('OSS', facts));
  }

  async check(signal?: AbortSignal): Promise<void> {
    const query: Record<string, string | number> = { 'max-keys': 1 };
    if (this.root) query.prefix = this.root;
    try {
      await abortable(this.client.listV2(query, { timeout: TIMEOUTS }), signal, this.where());
    } catch (err) {
      throw this.fail(err, undefined, true);
    }
  }

  async stat(key: string, signal?: AbortSignal): Promise<UfsObject | null> {
    // An empty name would address the bucket itself.
    if (this.root + key === '') return null;
    try {
      const { res } = await abortable(this.client.head(this.root + key, { timeout: TIMEOUTS }), signal, this.where(key));
      return {
        key,
        size: Number(headerValue(res, 'content-length') ?? 0),
        mtimeMs: Date.parse(headerValue(res, 'last-modified') ?? '') || 0,
        etag: stripQuotes(headerValue(res, 'etag') ?? ''),
      };
    } catch (err) {
      if (ossErrorFacts(err).status === 404) return null;
      throw this.fail(err, key);
    }
  }

  async list(prefix: string, options: UfsListOptions = {}): Promise<UfsListPage> {
    const query: Record<string, string | number> = {
      delimiter: '/',
      'max-keys': Math.min(Math.max(options.maxKeys ?? MAX_LIST_KEYS, 1), MAX_LIST_KEYS),
      'encoding-type': 'url',
    };
    // ali-oss would send an empty prefix as `prefix=`; leave it out instead.
    if (this.root + prefix) query.prefix = this.root + prefix;
    if (options.token) query['continuation-token'] = options.token;
    let out: OssListResult;
    try {
      out = await abortable(this.client.listV2(query, { timeout: TIMEOUTS }), options.signal, this.where(prefix));
    } catch (err) {
      throw this.fail(err, prefix, true);
    }
    const cut = this.root.length;
    return {
      objects: out.objects.map((o) => ({
        key: decodeListed(o.name).slice(cut),
        size: Number(o.size),
        mtimeMs: Date.parse(o.lastModified) || 0,
        etag: stripQuotes(o.etag),
      })),
      prefixes: (out.prefixes ?? []).map((p) => decodeListed(p).slice(cut)),
      nextToken: out.isTruncated && out.nextContinuationToken ? out.nextContinuationToken : undefined,
    };
  }

  async readInto(key: string, offset: number, dest: Buffer | readonly Buffer[], options: UfsReadOptions = {}): Promise<number> {
    const scatter = new Scatter(dest);
    const { length } = scatter;
    if (length <= 0) return 0;
    const headers: Record<string, string> = {
      Range: `bytes=${offset}-${offset + length - 1}`,
      // Without it OSS answers a range past the end with the whole object and a 200.
      'x-oss-range-behavior': 'standard',
    };
    if (options.etag) headers['If-Match'] = `"${options.etag}"`;
    let response: { stream: Readable; res: OssResponse };
    try {
      response = await abortable(this.client.getStream(this.root + key, { timeout: TIMEOUTS, headers }), options.signal, this.where(key), (late) =>
        late.stream.destroy(),
      );
    } catch (err) {
      if (ossErrorFacts(err).status === 416) return 0; // starts at or past the end
      throw this.fail(err, key);
    }
    try {
      checkVersion(options.etag, headerValue(response.res, 'etag'), this.where(key));
    } catch (err) {
      response.stream.destroy();
      throw err;
    }
    const partial = response.res.status === 206;
    let count: number;
    try {
      // A 200 carries the whole object from byte 0.
      count = await readBody(response.stream, partial ? 0 : offset, scatter, partial, options, this.where(key));
    } catch (err) {
      throw this.fail(err, key);
    }
    const range = /^bytes (\d+)-(\d+)\/\d+$/.exec(headerValue(response.res, 'content-range') ?? '');
    if (partial && range && count !== Number(range[2]) - Number(range[1]) + 1) {
      throw new CachefsError('IO', `object store sent ${count} of ${Number(range[2]) - Number(range[1]) + 1} bytes from ${this.where(key)}`);
    }
    return count;
  }

  async close(): Promise<void> {
    // ali-oss shares process-wide keep-alive agents whose idle sockets are unref'd: nothing to release.
  }
}

function parseEndpoint(endpoint: string): string {
  const m = /^(?:(https?):\/\/)?([A-Za-z0-9.-]+)(?::(\d{1,5}))?\/?$/.exec(endpoint);
  if (!m) {
    throw new CachefsError('INVALID_ARGUMENT', `invalid oss.endpoint '${endpoint}': expected a host such as oss-cn-beijing.aliyuncs.com or http(s)://host[:port]`);
  }
  return m[2]!.toLowerCase();
}

function normalizeRegion(region: string | undefined): string | undefined {
  if (region === undefined || region === '') return undefined;
  if (!/^[a-z0-9-]+$/.test(region)) throw new CachefsError('INVALID_ARGUMENT', `invalid oss.region '${region}': expected e.g. cn-beijing`);
  return region.startsWith('oss-') ? region : `oss-${region}`;
}

/** `oss-cn-beijing[-internal].aliyuncs.com` → `oss-cn-beijing`. */
function regionOfEndpoint(host: string | undefined): string | undefined {
  return host === undefined ? undefined : /^(oss-[a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com$/.exec(host)?.[1];
}

function parseSignatureVersion(value: string | undefined): 'v1' | 'v4' {
  if (value === undefined || value === 'v1' || value === '1') return 'v1';
  if (value === 'v4' || value === '4') return 'v4';
  throw new CachefsError('INVALID_ARGUMENT', `invalid oss.signatureVersion '${value}': expected v1 or v4`);
}

/**
 * What an ali-oss error says. Service errors carry `code` and `status`; a network
 * failure comes as status -1 (or -2 for a timeout) named `RequestError` or
 * `ConnectionTimeoutError`, with the errno only in the message.
 */
function ossErrorFacts(err: unknown): ServiceErrorFacts & { requestId?: string } {
  if (typeof err !== 'object' || err === null) return {};
  const e = err as Record<string, unknown>;
  const status = typeof e.status === 'number' ? e.status : undefined;
  const requestId = typeof e.requestId === 'string' ? e.requestId : undefined;
  const name = typeof e.name === 'string' ? e.name : '';
  const message = typeof e.message === 'string' ? e.message : '';
  if (status === -1 || status === -2 || name === 'ResponseTimeoutError') {
    const errno = /\b(E[A-Z]{3,})\b/.exec(message)?.[1];
    return { code: errno ?? (status === -1 ? 'ECONNRESET' : 'ConnectionTimeoutError') };
  }
  const code = typeof e.code === 'string' && e.code !== '' ? e.code : undefined;
  return { code, status: status !== undefined && status > 0 ? status : undefined, requestId };
}

/**
 * Copies the body into `out` after skipping `skip` bytes. `exact` (a 206): more than
 * fits is an error; otherwise (a 200, the whole object) reading stops once `out` is full.
 */
async function readBody(stream: Readable, skip: number, out: Scatter, exact: boolean, options: UfsReadOptions, where: string): Promise<number> {
  const { signal } = options;
  const length = out.length;
  let at = 0;
  let toSkip = skip;
  const idle = setTimeout(() => {
    stream.destroy(new CachefsError('TIMEOUT', `no data from the object store for ${IDLE_TIMEOUT_MS / 1000} s while reading ${where}`));
  }, IDLE_TIMEOUT_MS);
  const onAbort = (): void => {
    if (signal) stream.destroy(abortError(signal, where));
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (signal?.aborted) onAbort();
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      idle.refresh();
      let bytes = chunk;
      if (toSkip > 0) {
        const n = Math.min(toSkip, bytes.length);
        bytes = bytes.subarray(n);
        toSkip -= n;
      }
      if (exact && at + bytes.length > length) throw new CachefsError('IO', `object store sent more than the ${length} bytes asked for from ${where}`);
      at += out.copyIn(bytes, at);
      options.onProgress?.(at);
      if (!exact && at === length) break; // the rest of a whole-object answer is not needed
    }
  } finally {
    clearTimeout(idle);
    signal?.removeEventListener('abort', onAbort);
  }
  return at;
}

function headerValue(res: OssResponse, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}


/**
 * The S3 client's HTTP handler. A GET sent inside `S3GetHandler.into(dest, ...)` is
 * received over a body connection (net/body-connection.ts): the object's bytes land
 * in `dest` (one buffer or several, filled in order) straight from the socket. Every other request, and GETs sent outside
 * `into`, go to the SDK's node:http handler.
 *
 * The SDK builds, signs, retries and parses every other request, and the first GET of
 * an object store: where a GET's body goes changes. Receiving through the SDK's stream
 * cost a cold read ~1 s of CPU per 512 MiB (a fresh Buffer per 64 KiB socket read,
 * stream machinery, one more copy), about three times what this does, and it was most
 * of what held cold reads back on small machines.
 *
 * Later GETs take a short way (`get`): the handler keeps what the SDK made of a GET it
 * sent (where it went, its query and headers, the region and service it was signed for)
 * and sends the next ones like it, signed by the SDK's own signer with the client's
 * credentials, without the SDK's middleware (endpoint rules, schemas, retry bookkeeping:
 * ~2-3 ms of CPU per GET, most of a worker's CPU for a block of 128 KiB). Whatever that
 * way does not answer with a 2xx — an error status, a connection that failed — goes
 * again through the SDK, which retries and names the error; an answer that says the
 * kept shape is wrong (a redirect, a refused signature) drops it until the SDK's next GET.
 * Only GETs signed with plain SigV4 take it (not SigV4a, not S3 Express sessions).
 */
import { Readable } from 'node:stream';
import { buildQueryString, HttpRequest, HttpResponse, type HttpHandler } from '@smithy/core/protocols';
import type { NodeHttpHandler } from '@smithy/node-http-handler';
import type { HttpHandlerOptions, NodeHttpHandlerOptions, QueryParameterBag, RequestSigner } from '@smithy/types';
import { CachefsError } from '../errors.js';
import { BodyConnectionPool, type BodyResponse, type ConnectionTimeouts } from '../net/body-connection.js';

/** How GETs of an object store are sent, learnt from one the SDK built and signed. */
interface GetShape {
  protocol: string;
  hostname: string;
  port?: number;
  /** The path before the escaped key: `/bucket/` (path style) or `/`. */
  pathPrefix: string;
  query: QueryParameterBag;
  /** The headers every GET carries (host, user agent), without those of one request or its signature. */
  headers: Record<string, string>;
  region: string;
  service: string;
}

/** The signing the short way needs: the SDK's signer, and its correction of this machine's clock. */
export interface GetSigning {
  signer: () => Promise<RequestSigner>;
  clockOffsetMs: () => number;
}

/** Headers of one request or of its signature: not part of the kept shape. */
const PER_REQUEST = new Set(['authorization', 'x-amz-date', 'x-amz-security-token', 'x-amz-content-sha256', 'range', 'if-match', 'amz-sdk-invocation-id', 'amz-sdk-request']);
const SIGV4 = /^AWS4-HMAC-SHA256 Credential=[^/]+\/\d{8}\/([^/]+)\/([^/]+)\/aws4_request,/;

interface Target {
  /** The object key a GetObject was sent for (its shape is learnt from it). */
  key?: string;
  dest: Buffer | readonly Buffer[];
  onProgress?: (received: number) => void;
  /** Checks the answer's headers before its body is taken. */
  accept?: (headers: Readonly<Record<string, string>>) => void;
  /** Body bytes of the last successful answer. */
  length: number;
}

/**
 * The target of each GET sent by `into`, found by the abort signal the SDK hands the
 * handler unchanged. Not an AsyncLocalStorage: on Node 20 one of those puts a hook on
 * every promise the process makes, and a mount makes several per FUSE request.
 */
const targets = new WeakMap<AbortSignal, Target>();

export interface GetOptions {
  onProgress?: (received: number) => void;
  signal?: AbortSignal;
  /** Checks the answer's headers before any of its body is taken. */
  accept?: (headers: Readonly<Record<string, string>>) => void;
  /** The object key of a GetObject sent by `into`: its shape is learnt for the short way. */
  key?: string;
}

/** A key escaped as the SDK escapes a greedy path label (`{Key+}`): every segment, the slashes kept. */
export function escapeKey(key: string): string {
  return key
    .split('/')
    .map((s) => (/^[\w.~-]*$/.test(s) ? s : encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)))
    .join('/');
}

/** Learns a GET's shape from a request the SDK signed for `key`, if it is one the short way can repeat. */
function shapeOf(request: HttpRequest, key: string): GetShape | undefined {
  const auth = SIGV4.exec(request.headers.authorization ?? '');
  const escaped = escapeKey(key);
  if (!auth || request.headers['x-amz-s3session-token'] !== undefined || !request.path.endsWith(escaped)) return undefined;
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(request.headers)) if (!PER_REQUEST.has(name.toLowerCase())) headers[name] = value;
  return {
    protocol: request.protocol,
    hostname: request.hostname,
    port: request.port,
    pathPrefix: request.path.slice(0, request.path.length - escaped.length),
    query: { ...request.query },
    headers,
    region: auth[1]!,
    service: auth[2]!,
  };
}

export class S3GetHandler implements HttpHandler<NodeHttpHandlerOptions> {
  private readonly pools = new Map<string, BodyConnectionPool>();
  private shape?: GetShape;
  private signing?: GetSigning;

  constructor(
    private readonly fallback: NodeHttpHandler,
    private readonly connections: number,
    private readonly timeouts: ConnectionTimeouts,
  ) {}

  /**
   * Runs `send`, whose GET, sent with the abort signal it is given, writes its body into
   * `dest`, telling `onProgress` as it arrives; resolves with the body's length. The
   * signal given to `send` follows `signal`, and is this GET's alone. `accept` sees the
   * answer's headers before any of its body is taken.
   */
  static async into(
    dest: Buffer | readonly Buffer[],
    send: (signal: AbortSignal) => Promise<unknown>,
    options: GetOptions = {},
  ): Promise<number> {
    const { onProgress, signal, accept, key } = options;
    const own = signal ? AbortSignal.any([signal]) : new AbortController().signal;
    const target: Target = { key, dest, onProgress, accept, length: 0 };
    targets.set(own, target);
    await send(own);
    return target.length;
  }

  /** Lets GETs after the SDK's first take the short way, signed by `signing`. */
  signWith(signing: GetSigning): void {
    this.signing = signing;
  }

  /**
   * GETs `key` (unescaped, the bucket's full key) the short way into `dest`, with `range`
   * and `ifMatch` as headers: the body's length, or undefined when the short way cannot
   * answer (no shape learnt yet, an error status, a failed connection) and the SDK must.
   */
  async get(key: string, headers: { range: string; ifMatch?: string }, dest: Buffer | readonly Buffer[], options: GetOptions = {}): Promise<number | undefined> {
    const shape = this.shape;
    if (!shape || !this.signing) return undefined;
    const request = new HttpRequest({
      protocol: shape.protocol,
      hostname: shape.hostname,
      port: shape.port,
      method: 'GET',
      path: shape.pathPrefix + escapeKey(key),
      query: shape.query,
      headers: { ...shape.headers, range: headers.range, ...(headers.ifMatch ? { 'if-match': headers.ifMatch } : {}) },
    });
    let res;
    try {
      const signer = await this.signing.signer();
      const signed = (await signer.sign(request, {
        signingRegion: shape.region,
        signingService: shape.service,
        signingDate: new Date(Date.now() + this.signing.clockOffsetMs()),
      })) as HttpRequest;
      res = await this.send(signed, dest, options);
    } catch (err) {
      // Aborted, or a version check that failed: final. A failed connection: the SDK's retries take it.
      if (options.signal?.aborted || err instanceof CachefsError) throw err;
      return undefined;
    }
    if (res.status >= 200 && res.status < 300) return res.length;
    // Not found, changed, past the end: the object's answer, which the SDK names. Anything else may mean the shape is wrong.
    if (res.status !== 404 && res.status !== 412 && res.status !== 416 && res.status < 500) this.shape = undefined;
    return undefined;
  }

  async handle(request: HttpRequest, options: HttpHandlerOptions = {}): Promise<{ response: HttpResponse }> {
    const signal = options.abortSignal as AbortSignal | undefined;
    const target = signal && targets.get(signal);
    if (!target || request.method !== 'GET') return this.fallback.handle(request, options);
    if (!this.shape && target.key !== undefined) this.shape = shapeOf(request, target.key);
    const res = await this.send(request, target.dest, { ...target, signal });
    const ok = res.status >= 200 && res.status < 300;
    if (ok) target.length = res.length;
    // A 2xx body is in `dest` already; an error body goes to the SDK, which reads the error code from it.
    const body = Readable.from(ok || !res.errorBody ? [] : [res.errorBody]);
    return { response: new HttpResponse({ statusCode: res.status, headers: res.headers, body }) };
  }

  updateHttpClientConfig(key: keyof NodeHttpHandlerOptions, value: NodeHttpHandlerOptions[typeof key]): void {
    this.fallback.updateHttpClientConfig(key, value);
  }

  httpHandlerConfigs(): NodeHttpHandlerOptions {
    return this.fallback.httpHandlerConfigs();
  }

  destroy(): void {
    this.fallback.destroy();
    for (const pool of this.pools.values()) pool.close();
    this.pools.clear();
  }

  /** Sends the signed GET `request` over a body connection, its 2xx body into `dest`. */
  private send(request: HttpRequest, dest: Buffer | readonly Buffer[], options: GetOptions): Promise<BodyResponse> {
    const query = buildQueryString(request.query ?? {});
    return this.poolFor(request).request({
      path: query ? `${request.path}?${query}` : request.path,
      headers: request.headers,
      dest,
      onProgress: options.onProgress,
      accept: options.accept,
      signal: options.signal,
    });
  }

  private poolFor(request: HttpRequest): BodyConnectionPool {
    const tls = request.protocol === 'https:';
    const port = request.port ?? (tls ? 443 : 80);
    const host = request.hostname.replace(/^\[|\]$/g, ''); // an IPv6 literal comes in brackets
    const origin = `${request.protocol}//${request.hostname}:${port}`;
    let pool = this.pools.get(origin);
    if (!pool) {
      pool = new BodyConnectionPool({ host, port, tls: tls ? {} : undefined, size: this.connections, timeouts: this.timeouts });
      this.pools.set(origin, pool);
    }
    return pool;
  }
}

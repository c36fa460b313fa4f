/**
 * The S3 client's HTTP handler. A GET sent inside `S3GetHandler.into(dest, ...)` is
 * received over a body connection (net/body-connection.ts): the object's bytes land
 * in `dest` (one buffer or several, filled in order) straight from the socket. Every other request, and GETs sent outside
 * `into`, go to the SDK's node:http handler.
 *
 * The SDK still builds, signs, retries and parses every request; only where a GET's
 * body goes changes. Receiving through the SDK's stream cost a cold read ~1 s of CPU
 * per 512 MiB (a fresh Buffer per 64 KiB socket read, stream machinery, one more
 * copy), about three times what this does, and it was most of what held cold reads
 * back on small machines.
 */
import { Readable } from 'node:stream';
import { buildQueryString, HttpResponse, type HttpHandler, type HttpRequest } from '@smithy/core/protocols';
import type { NodeHttpHandler } from '@smithy/node-http-handler';
import type { HttpHandlerOptions, NodeHttpHandlerOptions } from '@smithy/types';
import { BodyConnectionPool, type ConnectionTimeouts } from '../net/body-connection.js';

interface Target {
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

export class S3GetHandler implements HttpHandler<NodeHttpHandlerOptions> {
  private readonly pools = new Map<string, BodyConnectionPool>();

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
    options: { onProgress?: (received: number) => void; signal?: AbortSignal; accept?: (headers: Readonly<Record<string, string>>) => void } = {},
  ): Promise<number> {
    const { onProgress, signal, accept } = options;
    const own = signal ? AbortSignal.any([signal]) : new AbortController().signal;
    const target: Target = { dest, onProgress, accept, length: 0 };
    targets.set(own, target);
    await send(own);
    return target.length;
  }

  async handle(request: HttpRequest, options: HttpHandlerOptions = {}): Promise<{ response: HttpResponse }> {
    const signal = options.abortSignal as AbortSignal | undefined;
    const target = signal && targets.get(signal);
    if (!target || request.method !== 'GET') return this.fallback.handle(request, options);
    const query = buildQueryString(request.query ?? {});
    const res = await this.poolFor(request).request({
      path: query ? `${request.path}?${query}` : request.path,
      headers: request.headers,
      dest: target.dest,
      onProgress: target.onProgress,
      accept: target.accept,
      signal,
    });
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

/**
 * Keep-alive HTTP/1.1 connections made for reading large bodies: the kernel copies a
 * response body straight into the caller's buffer (`net`/`tls` `onread` with a buffer
 * chosen per read), so a 4 MiB block costs no per-chunk allocations and no extra copy.
 * A general HTTP client (node:http, undici) hands out a fresh 16-64 KiB Buffer per
 * socket read, and that garbage, not the bytes, was what limited the read paths (V8 ran
 * a mark-compact every few blocks). Used for worker block reads (client/) and object
 * store GETs (ufs/).
 *
 * It speaks what those servers answer: a status line, headers, and a body of
 * Content-Length bytes. A 2xx body must have a Content-Length (it goes into the
 * caller's buffer); an error body may also come chunked, and is kept small.
 */
import net from 'node:net';
import tls from 'node:tls';
import { Scatter } from '../block/scatter.js';
import { CachefsError } from '../errors.js';

export interface BodyRequest {
  /** Request target: path and query, already escaped. */
  path: string;
  method?: 'GET';
  /** Headers to send; `host` defaults to the pool's host:port. */
  headers?: Readonly<Record<string, string>>;
  /** Where a 2xx body goes, several buffers filled in order; it must have room for all of it. */
  dest: Buffer | readonly Buffer[];
  signal?: AbortSignal;
  /** Told the count of 2xx body bytes in `dest` so far, after each socket read that brought some. */
  onProgress?: (received: number) => void;
  /**
   * Checks a 2xx answer's headers before any of its body is taken (a GET's ETag against
   * the version asked for); what it throws fails the request, and the connection is dropped.
   */
  accept?: (headers: Readonly<Record<string, string>>) => void;
}

export interface BodyResponse {
  status: number;
  /** Response headers, names in lower case (repeated ones joined with ", "). */
  headers: Record<string, string>;
  /** Body bytes written into the caller's buffer (2xx), or the error body's length. */
  length: number;
  errorBody?: Buffer;
}

export interface ConnectionTimeouts {
  connectMs: number;
  /** From the request to the end of the headers (a worker may fetch a cold block first). */
  headersMs: number;
  /** Longest silence while the body arrives. */
  bodyMs: number;
}

export interface PoolOptions {
  host: string;
  port: number;
  /** Connect with TLS: the server's certificate is checked (against `ca`, or Node's CAs), SNI from `host`. */
  tls?: { ca?: string | Buffer };
  /** Connections open at most; further requests wait for one. */
  size: number;
  timeouts: ConnectionTimeouts;
}

const HEAD_MAX = 16 * 1024;
const ERROR_BODY_MAX = 64 * 1024;

type Phase = 'head' | 'body' | 'error-body' | 'chunked-error';

interface Job {
  req: BodyRequest;
  dest: Scatter;
  phase: Phase;
  status: number;
  headers: Record<string, string>;
  length: number;
  at: number;
  errorBody?: Buffer;
  /** The server said it closes the connection after this response. */
  closeAfter: boolean;
  resolve(r: BodyResponse): void;
  reject(err: Error): void;
}

class Connection {
  private readonly socket: net.Socket;
  private readonly head = Buffer.allocUnsafe(HEAD_MAX);
  private headLength = 0;
  private job?: Job;
  private readonly ready: Promise<void>;
  broken = false;
  /** Counted out of its pool already. */
  retired = false;
  /** Responses completed on this connection. */
  served = 0;

  constructor(private readonly options: PoolOptions, private readonly onIdle: (c: Connection) => void) {
    const { host, port, timeouts } = options;
    const onread = { buffer: () => this.target(), callback: (n: number) => this.received(n) };
    this.socket = options.tls
      ? // Node supports `onread` on TLS sockets too; its types list it for net only.
        tls.connect({ host, port, ca: options.tls.ca, servername: net.isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'], onread } as tls.ConnectionOptions)
      : net.connect({ host, port, onread });
    this.socket.setNoDelay(true);
    const connected = options.tls ? 'secureConnect' : 'connect';
    this.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.socket.destroy(timeoutError(`connect to ${host}:${port} timed out after ${timeouts.connectMs} ms`)), timeouts.connectMs);
      this.socket.once(connected, () => {
        clearTimeout(timer);
        resolve();
      });
      this.socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    this.ready.catch(() => undefined);
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('close', () => this.fail(new Error('connection closed')));
    this.socket.on('timeout', () =>
      this.socket.destroy(timeoutError(this.job?.phase === 'head' ? `no answer within ${timeouts.headersMs} ms` : `body stalled for ${timeouts.bodyMs} ms`)),
    );
  }

  async request(req: BodyRequest): Promise<BodyResponse> {
    await this.ready;
    if (this.broken) throw new Error('connection closed');
    return new Promise<BodyResponse>((resolve, reject) => {
      const abort = (): void => {
        this.socket.destroy(new Error('cancelled'));
      };
      const done = (): void => req.signal?.removeEventListener('abort', abort);
      this.job = {
        req,
        dest: new Scatter(req.dest),
        phase: 'head',
        status: 0,
        headers: {},
        length: 0,
        at: 0,
        closeAfter: false,
        resolve: (r) => {
          done();
          resolve(r);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      };
      if (req.signal?.aborted) return abort();
      req.signal?.addEventListener('abort', abort, { once: true });
      this.socket.setTimeout(this.options.timeouts.headersMs);
      this.socket.write(requestHead(req, `${this.options.host}:${this.options.port}`));
    });
  }

  close(): void {
    this.broken = true;
    this.socket.destroy();
  }

  /**
   * Where the next socket read lands: the body's place in the caller's buffer, or a
   * scratch. Node asks for it after each read, for the next one: so it must already be
   * right when `received` returns (headers start at the scratch's beginning once a
   * response is done).
   */
  private target(): Buffer {
    const job = this.job;
    if (job?.phase === 'body') return job.dest.region(job.at).subarray(0, job.length - job.at);
    if (job?.phase === 'error-body') return job.errorBody!.subarray(job.at, job.length);
    if (job?.phase === 'chunked-error') return job.errorBody!.subarray(job.at);
    return this.head.subarray(this.headLength);
  }

  private received(n: number): boolean {
    const job = this.job;
    if (!job) {
      this.socket.destroy(new Error('data the server was not asked for'));
      return false;
    }
    if (job.phase === 'head') {
      this.headLength += n;
      this.parseHead(job);
    } else {
      job.at += n;
      if (job.phase === 'body') job.req.onProgress?.(job.at);
    }
    if (job.phase === 'chunked-error') this.chunkedProgress(job);
    else if (job.phase !== 'head' && job.at >= job.length) this.finish(job);
    return true;
  }

  private parseHead(job: Job): void {
    const end = this.head.subarray(0, this.headLength).indexOf('\r\n\r\n');
    if (end < 0) {
      if (this.headLength >= HEAD_MAX) this.socket.destroy(new Error('response headers too large'));
      return;
    }
    const lines = this.head.toString('latin1', 0, end).split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
    if (!status) {
      this.socket.destroy(new Error(`malformed response: ${JSON.stringify(lines[0] ?? '')}`));
      return;
    }
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      job.headers[name] = name in job.headers ? `${job.headers[name]}, ${value}` : value;
    }
    job.status = Number(status[1]);
    job.closeAfter = /\bclose\b/i.test(job.headers.connection ?? '');
    const ok = job.status >= 200 && job.status < 300;
    const declared = job.headers['content-length'];
    const chunked = /\bchunked\b/i.test(job.headers['transfer-encoding'] ?? '');
    const length = declared === undefined ? (chunked ? -1 : 0) : Number(declared);
    if (!Number.isSafeInteger(length) || (length < 0 && !chunked)) {
      this.socket.destroy(new Error(`malformed Content-Length: ${JSON.stringify(declared)}`));
      return;
    }
    if (ok && (chunked || declared === undefined) && job.status !== 204) {
      this.socket.destroy(new CachefsError('IO', `${job.status} response without a Content-Length`));
      return;
    }
    if (ok && length > job.dest.length) {
      this.socket.destroy(new CachefsError('IO', `server sent ${length} bytes, more than the ${job.dest.length} asked for`));
      return;
    }
    if (!ok && length > ERROR_BODY_MAX) {
      this.socket.destroy(new Error(`error body of ${length} bytes`));
      return;
    }
    if (ok && job.req.accept) {
      try {
        job.req.accept(job.headers);
      } catch (err) {
        this.socket.destroy(err as Error);
        return;
      }
    }
    if (!ok) job.errorBody = Buffer.allocUnsafe(chunked ? ERROR_BODY_MAX : length);
    job.phase = ok ? 'body' : chunked ? 'chunked-error' : 'error-body';
    job.length = Math.max(0, length);
    this.socket.setTimeout(this.options.timeouts.bodyMs);
    // Body bytes that came with the headers.
    const extra = this.head.subarray(end + 4, this.headLength);
    if (!chunked && extra.length > length) {
      this.socket.destroy(new Error('more bytes than the response holds'));
      return;
    }
    if (chunked && extra.length > ERROR_BODY_MAX) {
      this.socket.destroy(new Error('error body too large'));
      return;
    }
    job.at = ok ? job.dest.copyIn(extra, 0) : extra.copy(job.errorBody!, 0);
    if (ok && job.at > 0) job.req.onProgress?.(job.at);
  }

  /** A chunked error body so far in `errorBody[0, at)`: done once its last chunk is there. */
  private chunkedProgress(job: Job): void {
    const decoded = decodeChunked(job.errorBody!.subarray(0, job.at));
    if (decoded === 'malformed') this.socket.destroy(new Error('malformed chunked body'));
    else if (decoded) {
      job.errorBody = decoded.body;
      job.length = decoded.body.length;
      if (decoded.rest > 0) job.closeAfter = true; // bytes past the message: do not trust the connection
      this.finish(job);
    } else if (job.at >= ERROR_BODY_MAX) this.socket.destroy(new Error('error body too large'));
  }

  private finish(job: Job): void {
    this.job = undefined;
    this.headLength = 0;
    this.served++;
    this.socket.setTimeout(0);
    if (job.closeAfter) this.close();
    job.resolve({ status: job.status, headers: job.headers, length: job.length, errorBody: job.errorBody });
    if (!job.closeAfter) this.onIdle(this);
  }

  private fail(err: Error): void {
    this.broken = true;
    const job = this.job;
    this.job = undefined;
    job?.reject(err);
  }
}

/** At most `size` connections to one server, reused while they stay open. */
export class BodyConnectionPool {
  private readonly idle: Connection[] = [];
  private readonly waiting: ((c: Connection) => void)[] = [];
  private open = 0;
  private closed = false;

  constructor(private readonly options: PoolOptions) {}

  async request(req: BodyRequest): Promise<BodyResponse> {
    for (let attempt = 0; ; attempt++) {
      const conn = await this.acquire();
      try {
        return await conn.request(req);
      } catch (err) {
        conn.close();
        // A kept-alive connection the server closed as we reused it: once more on a new one.
        const stale = conn.served > 0 && !(err instanceof CachefsError) && (err as Error).name !== 'TimeoutError' && !req.signal?.aborted;
        if (!stale || attempt > 0) throw err;
      } finally {
        if (conn.broken) this.retire(conn);
      }
    }
  }

  close(): void {
    this.closed = true;
    for (const c of this.idle.splice(0)) c.close();
  }

  private acquire(): Promise<Connection> {
    if (this.closed) return Promise.reject(new Error('pool closed'));
    while (this.idle.length) {
      const c = this.idle.pop()!;
      if (!c.broken) return Promise.resolve(c);
      this.retire(c);
    }
    if (this.open < this.options.size) {
      this.open++;
      return Promise.resolve(this.connect());
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private connect(): Connection {
    return new Connection(this.options, (c) => this.release(c));
  }

  private release(c: Connection): void {
    const next = this.waiting.shift();
    if (next) next(c);
    else if (this.closed) c.close();
    else this.idle.push(c);
  }

  /** A connection went away (counted once): a waiter gets a new one in its place. */
  private retire(c: Connection): void {
    if (c.retired) return;
    c.retired = true;
    this.open--;
    const next = this.waiting.shift();
    if (next) {
      this.open++;
      next(this.connect());
    }
  }
}

function requestHead(req: BodyRequest, defaultHost: string): string {
  let head = `${req.method ?? 'GET'} ${req.path} HTTP/1.1\r\n`;
  let host = false;
  for (const [name, value] of Object.entries(req.headers ?? {})) {
    if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new CachefsError('INVALID_ARGUMENT', `header ${JSON.stringify(name)} holds a line break`);
    if (name.toLowerCase() === 'host') host = true;
    head += `${name}: ${value}\r\n`;
  }
  if (!host) head += `host: ${defaultHost}\r\n`;
  return `${head}\r\n`;
}

/** The decoded body of a complete chunked message, how many bytes followed it, null if incomplete. */
export function decodeChunked(raw: Buffer): { body: Buffer; rest: number } | null | 'malformed' {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = raw.indexOf('\r\n', at);
    if (eol < 0) return null;
    const size = Number.parseInt(raw.toString('latin1', at, eol).split(';')[0]!.trim(), 16);
    if (!Number.isSafeInteger(size) || size < 0) return 'malformed';
    if (size === 0) {
      // Trailers (usually none), then an empty line.
      const end = raw.indexOf('\r\n\r\n', eol);
      return end < 0 ? null : { body: Buffer.concat(parts), rest: raw.length - (end + 4) };
    }
    if (raw.length < eol + 2 + size + 2) return null;
    parts.push(raw.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
}

function timeoutError(message: string): Error {
  const err = new Error(message);
  err.name = 'TimeoutError';
  return err;
}

/**
 * Keep-alive HTTP/1.1 connections to one worker's block service, made for reading
 * block bytes: the kernel copies a response body straight into the caller's buffer
 * (`net` `onread` with a buffer chosen per read), so a 4 MiB block costs no
 * per-chunk allocations and no extra copy. A general HTTP client (undici) hands out a
 * fresh 64 KiB Buffer per socket read, and that garbage, not the bytes, was what
 * limited the network read path (V8 ran a mark-compact every few blocks).
 *
 * It speaks just what the block service answers: a status line, headers with a
 * Content-Length (the service sends one on every response), and that many bytes.
 */
import net from 'node:net';
import { CachefsError } from '../errors.js';

export interface BlockResponse {
  status: number;
  /** Body bytes written into the caller's buffer (2xx), or the error body. */
  length: number;
  errorBody?: string;
}

export interface BlockRequest {
  path: string;
  range?: string;
  /** Where a 2xx body goes; it must have room for all of it. */
  dest: Buffer;
  signal?: AbortSignal;
}

export interface ConnectionTimeouts {
  connectMs: number;
  /** From the request to the end of the headers (the worker may fetch a cold block first). */
  headersMs: number;
  /** Longest silence while the body arrives. */
  bodyMs: number;
}

const HEAD_MAX = 16 * 1024;
const ERROR_BODY_MAX = 64 * 1024;

interface Job {
  req: BlockRequest;
  phase: 'head' | 'body' | 'error-body';
  status: number;
  length: number;
  at: number;
  errorBody?: Buffer;
  resolve(r: BlockResponse): void;
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

  constructor(host: string, port: number, private readonly timeouts: ConnectionTimeouts, private readonly onIdle: (c: Connection) => void) {
    this.socket = net.connect({
      host,
      port,
      noDelay: true,
      onread: { buffer: () => this.target(), callback: (n: number) => this.received(n) },
    });
    this.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.socket.destroy(new Error(`connect timed out after ${timeouts.connectMs} ms`)), timeouts.connectMs);
      this.socket.once('connect', () => {
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
    this.socket.on('timeout', () => this.socket.destroy(new Error(this.job?.phase === 'head' ? `no answer within ${this.timeouts.headersMs} ms` : `body stalled for ${this.timeouts.bodyMs} ms`)));
  }

  async request(req: BlockRequest): Promise<BlockResponse> {
    await this.ready;
    if (this.broken) throw new Error('connection closed');
    return new Promise<BlockResponse>((resolve, reject) => {
      this.job = { req, phase: 'head', status: 0, length: 0, at: 0, resolve, reject };
      const abort = (): void => {
        this.socket.destroy(new Error('cancelled'));
      };
      if (req.signal?.aborted) return abort();
      req.signal?.addEventListener('abort', abort, { once: true });
      const done = (): void => req.signal?.removeEventListener('abort', abort);
      this.job.resolve = (r) => {
        done();
        resolve(r);
      };
      this.job.reject = (e) => {
        done();
        reject(e);
      };
      this.socket.setTimeout(this.timeouts.headersMs);
      this.socket.write(`GET ${req.path} HTTP/1.1\r\nhost: worker\r\n${req.range ? `range: ${req.range}\r\n` : ''}\r\n`);
    });
  }

  close(): void {
    this.broken = true;
    this.socket.destroy();
  }

  /**
   * Where the next socket read lands: the body's place in the caller's buffer, or the header
   * scratch. Node asks for it after each read, for the next one: so it must already be right
   * when `received` returns (headers start at the scratch's beginning once a response is done).
   */
  private target(): Buffer {
    const job = this.job;
    if (job?.phase === 'body') return job.req.dest.subarray(job.at, job.length);
    if (job?.phase === 'error-body') return job.errorBody!.subarray(job.at, job.length);
    return this.head.subarray(this.headLength);
  }

  private received(n: number): boolean {
    const job = this.job;
    if (!job) {
      this.socket.destroy(new Error('data the worker was not asked for'));
      return false;
    }
    if (job.phase === 'head') {
      this.headLength += n;
      this.parseHead(job);
    } else {
      job.at += n;
    }
    if (job.phase !== 'head' && job.at >= job.length) this.finish(job);
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
    let length = -1;
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon > 0 && line.slice(0, colon).trim().toLowerCase() === 'content-length') length = Number(line.slice(colon + 1).trim());
    }
    if (!status || !Number.isSafeInteger(length) || length < 0) {
      this.socket.destroy(new Error(`malformed response: ${JSON.stringify(lines[0] ?? '')}`));
      return;
    }
    job.status = Number(status[1]);
    job.length = length;
    const ok = job.status === 200 || job.status === 206;
    if (ok && length > job.req.dest.length) {
      this.socket.destroy(new CachefsError('IO', `worker sent ${length} bytes, more than the ${job.req.dest.length} asked for`));
      return;
    }
    if (!ok) {
      if (length > ERROR_BODY_MAX) {
        this.socket.destroy(new Error(`error body of ${length} bytes`));
        return;
      }
      job.errorBody = Buffer.allocUnsafe(length);
    }
    job.phase = ok ? 'body' : 'error-body';
    this.socket.setTimeout(this.timeouts.bodyMs);
    // Body bytes that came with the headers.
    const extra = this.head.subarray(end + 4, this.headLength);
    if (extra.length > length) {
      this.socket.destroy(new Error('more bytes than the response holds'));
      return;
    }
    extra.copy(ok ? job.req.dest : job.errorBody!, 0);
    job.at = extra.length;
  }

  private finish(job: Job): void {
    this.job = undefined;
    this.headLength = 0;
    this.served++;
    this.socket.setTimeout(0);
    job.resolve({ status: job.status, length: job.length, errorBody: job.errorBody?.toString('utf8') });
    this.onIdle(this);
  }

  private fail(err: Error): void {
    this.broken = true;
    const job = this.job;
    this.job = undefined;
    job?.reject(err);
  }
}

/** At most `size` connections to one worker, reused while they stay open. */
export class ConnectionPool {
  private readonly idle: Connection[] = [];
  private readonly waiting: ((c: Connection) => void)[] = [];
  private open = 0;
  private closed = false;

  constructor(private readonly host: string, private readonly port: number, private readonly size: number, private readonly timeouts: ConnectionTimeouts) {}

  async request(req: BlockRequest): Promise<BlockResponse> {
    for (let attempt = 0; ; attempt++) {
      const conn = await this.acquire();
      try {
        return await conn.request(req);
      } catch (err) {
        conn.close();
        // A kept-alive connection the worker closed as we reused it: once more on a new one.
        const stale = conn.served > 0 && !(err instanceof CachefsError) && !req.signal?.aborted;
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
    if (this.open < this.size) {
      this.open++;
      return Promise.resolve(new Connection(this.host, this.port, this.timeouts, (c) => this.release(c)));
    }
    return new Promise((resolve) => this.waiting.push(resolve));
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
      next(new Connection(this.host, this.port, this.timeouts, (c) => this.release(c)));
    }
  }
}

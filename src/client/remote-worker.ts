/**
 * The network read path to one worker: an undici pool of keep-alive connections
 * to its block service, bounded concurrency, and timeouts. Reads a block or a
 * range of it into a buffer; any failure is a CachefsError (the caller decides
 * whether to try another worker).
 */
import { Pool } from 'undici';
import type { BlockRef } from '../block/block.js';
import type { BufferPool } from '../block/buffer-pool.js';
import { CachefsError } from '../errors.js';
import { blockRequestPath, errorFromResponse } from '../worker/block-protocol.js';

/** A cold block may first be fetched from the UFS by the worker. */
const HEADERS_TIMEOUT_MS = 20_000;
const BODY_TIMEOUT_MS = 10_000;
const CONNECT_TIMEOUT_MS = 2000;

export class RemoteWorker {
  private readonly pool: Pool;

  constructor(readonly address: string, private readonly buffers: BufferPool, connections = 8) {
    this.pool = new Pool(`http://${address}`, {
      connections,
      connectTimeout: CONNECT_TIMEOUT_MS,
      headersTimeout: HEADERS_TIMEOUT_MS,
      bodyTimeout: BODY_TIMEOUT_MS,
      keepAliveTimeout: 30_000,
    });
  }

  /** Reads `length` bytes at `offset` of the block (the whole block by default). */
  async read(ref: BlockRef, offset = 0, length = ref.length, signal?: AbortSignal): Promise<Buffer> {
    const whole = offset === 0 && length === ref.length;
    let res;
    try {
      res = await this.pool.request({
        method: 'GET',
        path: blockRequestPath(ref),
        headers: whole ? {} : { range: `bytes=${offset}-${offset + length - 1}` },
        signal,
      });
    } catch (err) {
      throw new CachefsError('UNREACHABLE', `worker ${this.address} did not answer: ${(err as Error).message}`, { cause: err });
    }
    if (res.statusCode !== 200 && res.statusCode !== 206) throw errorFromResponse(res.statusCode, await res.body.text().catch(() => ''));
    const out = this.buffers.take(length);
    let at = 0;
    try {
      for await (const chunk of res.body) {
        const c = chunk as Buffer;
        if (at + c.length > length) throw new CachefsError('IO', `worker ${this.address} sent more than asked`);
        c.copy(out, at);
        at += c.length;
      }
    } catch (err) {
      throw err instanceof CachefsError ? err : new CachefsError('UNREACHABLE', `worker ${this.address} broke off: ${(err as Error).message}`, { cause: err });
    }
    if (at !== length) throw new CachefsError('IO', `worker ${this.address} sent ${at} of ${length} bytes`);
    return out;
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}

/**
 * The network read path to one worker: a pool of keep-alive connections to its
 * block service (net/body-connection.ts), bounded concurrency, and timeouts. Reads a
 * block or a range of it into a buffer; any failure is a CachefsError (the caller
 * decides whether to try another worker).
 */
import type { BlockRef } from '../block/block.js';
import type { BufferPool } from '../block/buffer-pool.js';
import { CachefsError } from '../errors.js';
import { parseHostPort } from '../net/host-port.js';
import { blockRequestPath, errorFromResponse } from '../net/block-protocol.js';
import { BodyConnectionPool, type PoolOptions } from '../net/body-connection.js';

/** A cold block may first be fetched from the UFS by the worker. */
const HEADERS_TIMEOUT_MS = 20_000;
const BODY_TIMEOUT_MS = 10_000;
const CONNECT_TIMEOUT_MS = 2000;

export class RemoteWorker {
  private readonly pool: BodyConnectionPool;

  /** `link`: the cluster secret's header and the CA to verify the worker with, when the cluster has them. */
  constructor(readonly address: string, private readonly buffers: BufferPool, link: Pick<PoolOptions, 'headers' | 'tls'> = {}, connections = 8) {
    const { host, port } = parseHostPort(address, 'worker address');
    this.pool = new BodyConnectionPool({ host, port, size: connections, timeouts: { connectMs: CONNECT_TIMEOUT_MS, headersMs: HEADERS_TIMEOUT_MS, bodyMs: BODY_TIMEOUT_MS }, ...link });
  }

  /** Reads `length` bytes at `offset` of the block (the whole block by default). */
  async read(ref: BlockRef, offset = 0, length = ref.length, signal?: AbortSignal): Promise<Buffer> {
    const whole = offset === 0 && length === ref.length;
    const dest = this.buffers.take(length);
    try {
      const res = await this.pool.request({ path: blockRequestPath(ref), headers: whole ? undefined : { range: `bytes=${offset}-${offset + length - 1}` }, dest, signal });
      if (res.status !== 200 && res.status !== 206) throw errorFromResponse(res.status, res.errorBody?.toString('utf8') ?? '');
      if (res.length !== length) throw new CachefsError('IO', `worker ${this.address} sent ${res.length} of ${length} bytes`);
      return dest;
    } catch (err) {
      this.buffers.giveLater(dest);
      if (err instanceof CachefsError) throw err;
      throw new CachefsError('UNREACHABLE', `worker ${this.address} did not answer: ${(err as Error).message}`, { cause: err });
    }
  }

  async close(): Promise<void> {
    this.pool.close();
  }
}

/**
 * The worker's HTTP service: block bytes for the network read path
 * (`GET /v1/blocks/<id>?...`, with ranges, keep-alive), plus `/metrics` and
 * `/healthz`. A block is read through the store (fetched from the UFS once if
 * missing), pinned while it is streamed, and checked against its expected length
 * before a byte leaves, so a damaged file is refetched rather than served.
 */
import { open } from 'node:fs/promises';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { BlockRef } from '../block/block.js';
import type { BufferPool } from '../block/buffer-pool.js';
import { asCachefsError, CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import { checkAuthorization, type ClusterAuth } from '../net/auth.js';
import { BLOCKS_PATH, parseBlockRequest, parseRange, statusForCode } from '../net/block-protocol.js';
import { createClusterServer, type ServerTls } from '../net/tls.js';
import type { ReadThrough } from '../cache/read-through.js';

export interface BlockServiceConfig {
  readThrough: ReadThrough;
  /** Buffers for blocks read from the store, each given back once its response is sent. */
  buffers: BufferPool;
  metrics: Metrics;
  registry: Registry;
  log: Logger;
  host: string;
  port: number;
  /** Block requests need the cluster secret (`/healthz` and `/metrics` do not), unless 'insecure'. */
  auth: ClusterAuth;
  /** Serve HTTPS with this certificate. */
  tls?: ServerTls;
  /** The only block size served (the `bs` of every request). */
  blockSize: number;
}

export class BlockService {
  private constructor(private readonly server: Server, readonly port: number) {}

  static async start(config: BlockServiceConfig): Promise<BlockService> {
    const server = createClusterServer(config.tls, (req, res) => {
      route(config, req, res).catch((err: unknown) => fail(config, res, err));
    });
    server.keepAliveTimeout = 30_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new CachefsError('CONFLICT', `cannot listen on ${config.host}:${config.port}: ${err.message}`)));
      server.listen(config.port, config.host, resolve);
    });
    return new BlockService(server, (server.address() as AddressInfo).port);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

async function route(config: BlockServiceConfig, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = req.url ?? '/';
  checkAuthorization(config.auth, req, url.split('?')[0]!);
  if (req.method === 'GET' && url.startsWith(BLOCKS_PATH)) return serveBlock(config, parseBlockRequest(url, config), req.headers.range, res);
  if (req.method === 'GET' && url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    return;
  }
  if (req.method === 'GET' && url === '/metrics') {
    res.writeHead(200, { 'content-type': config.registry.contentType }).end(await config.registry.metrics());
    return;
  }
  throw new CachefsError('NOT_FOUND', `no such resource: ${req.method} ${url.split('?')[0]}`);
}

async function serveBlock(config: BlockServiceConfig, ref: BlockRef, rangeHeader: string | undefined, res: ServerResponse): Promise<void> {
  const range = parseRange(rangeHeader, ref.length) ?? { start: 0, end: ref.length - 1 };
  const headers = (n: number): Record<string, string> => ({
    'content-type': 'application/octet-stream',
    'content-length': String(n),
    ...(rangeHeader ? { 'content-range': `bytes ${range.start}-${range.end}/${ref.length}` } : {}),
  });
  const status = rangeHeader ? 206 : 200;
  const count = range.end - range.start + 1;
  const { readThrough, metrics } = config;
  for (let attempt = 0; ; attempt++) {
    const ensured = await readThrough.ensure(ref);
    if (ensured.data) {
      res.writeHead(status, headers(count)).end(ensured.data.subarray(range.start, range.end + 1));
      return served(metrics, count);
    }
    const stored = ensured.stored!;
    readThrough.store.pin(ref.id);
    try {
      const handle = await open(stored.path, 'r').catch(() => undefined);
      const size = handle ? (await handle.stat()).size : -1;
      if (!handle || size !== ref.length) {
        await handle?.close();
        if (attempt > 0) throw new CachefsError('IO', `block ${ref.id} cannot be read from the store`);
        await readThrough.discard(ref, `block file has ${size} bytes, expected ${ref.length}`);
        continue;
      }
      // One positioned read into one buffer and one write: for whole blocks this is faster than a
      // stream of 64 KiB chunks, and the block is pinned only for as long as the read takes.
      const body = config.buffers.take(count);
      // 'close' comes once the socket has taken the last byte, or the client went away, or an
      // error was answered instead: nothing refers to the buffer any more.
      res.once('close', () => config.buffers.giveLater(body));
      let done = 0;
      try {
        while (done < count) {
          const { bytesRead } = await handle.read(body, done, count - done, range.start + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
      } finally {
        await handle.close();
      }
      if (done !== count) throw new CachefsError('IO', `block ${ref.id} ended after ${done} of ${count} bytes`);
      res.writeHead(status, headers(count)).end(body);
      return served(metrics, count);
    } finally {
      readThrough.store.unpin(ref.id);
    }
  }
}

function served(metrics: Metrics, bytes: number): void {
  metrics.workerServedBytes.inc({ path: 'remote' }, bytes);
  metrics.workerRequests.inc({ path: 'remote', status: 'ok' });
}

function fail(config: BlockServiceConfig, res: ServerResponse, err: unknown): void {
  const e = asCachefsError(err);
  config.metrics.workerRequests.inc({ path: 'remote', status: e.code });
  if (e.code !== 'NOT_FOUND' && e.code !== 'INVALID_ARGUMENT') config.log.warn({ code: e.code, err: e.message }, 'block request failed');
  if (res.headersSent) {
    res.destroy();
    return;
  }
  // Every response carries its length: clients read exactly that many bytes (net/body-connection.ts).
  const body = JSON.stringify({ error: { code: e.code, message: e.message } });
  res.writeHead(statusForCode(e.code), { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }).end(body);
}

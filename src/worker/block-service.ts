/**
 * The worker's HTTP service: block bytes for the network read path
 * (`GET /v1/blocks/<id>?...`, with ranges, keep-alive), plus `/metrics`, `/healthz`
 * (the process answers), `/readyz` (`ready()`: registered, store open) and the
 * dataset routes of `cachefs load` (`DatasetRoutes`). A block's bytes come through the
 * cache (`CachedBlocks`: fetched from the UFS once if missing, a damaged file dropped and refetched rather than served);
 * a client that goes away before its answer lets go of the fetch it waited for.
 *
 * The bytes a worker holds for requests in flight (each request's answer, and the block
 * a cold one fetches) stay within `inFlightBytes`: a request beyond it is answered 503
 * with Retry-After, and the client reads from the next worker or the UFS instead.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { BlockRef } from '../block/block.js';
import type { BufferPool } from '../block/buffer-pool.js';
import type { CachedBlocks } from '../cache/cached-blocks.js';
import { asCachefsError, CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import { checkAuthorization, type ClusterAuth } from '../net/auth.js';
import { BLOCKS_PATH, parseBlockRequest, parseRange, statusForCode } from '../net/block-protocol.js';
import { createClusterServer, type ServerTls } from '../net/tls.js';
import type { DatasetRoutes } from './dataset-routes.js';

export interface BlockServiceConfig {
  blocks: CachedBlocks;
  /** Buffers for the bytes of answers, each given back once its response is sent. */
  buffers: BufferPool;
  metrics: Metrics;
  registry: Registry;
  log: Logger;
  host: string;
  port: number;
  /** Most bytes held for requests in flight at once. */
  inFlightBytes: number;
  /** Block requests need the cluster secret (`/healthz` and `/metrics` do not), unless 'insecure'. */
  auth: ClusterAuth;
  /** Serve HTTPS with this certificate. */
  tls?: ServerTls;
  /** The only block size served (the `bs` of every request). */
  blockSize: number;
  /** Whether the worker is ready to serve (`/readyz`). */
  ready: () => boolean;
  /** The dataset routes (`cachefs load`, `report --dataset`): fill, inventory, evict. */
  dataset?: DatasetRoutes;
}

/** Seconds a client is told to wait before asking a worker over its in-flight budget again. */
const RETRY_AFTER_S = 1;

export class BlockService {
  private constructor(private readonly server: Server, readonly port: number) {}

  static async start(config: BlockServiceConfig): Promise<BlockService> {
    const budget = new InFlightBudget(config.inFlightBytes);
    const server = createClusterServer(config.tls, (req, res) => {
      route(config, budget, req, res).catch((err: unknown) => fail(config, res, err));
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

/** The bytes held for requests in flight, against their limit. */
class InFlightBudget {
  private held = 0;

  constructor(private readonly limit: number) {}

  /** Holds `bytes` until the response closes; THROTTLED when that would pass the limit. */
  hold(bytes: number, res: ServerResponse): void {
    if (this.held + bytes > this.limit) {
      throw new CachefsError('THROTTLED', `busy: ${this.held} bytes held for requests in flight, at most ${this.limit}`);
    }
    this.held += bytes;
    res.once('close', () => (this.held -= bytes));
  }
}

async function route(config: BlockServiceConfig, budget: InFlightBudget, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = req.url ?? '/';
  const pathname = url.split('?')[0]!;
  checkAuthorization(config.auth, req, pathname);
  if (config.dataset && (await config.dataset.handle(req, res, pathname))) return;
  if (req.method === 'GET' && url.startsWith(BLOCKS_PATH)) {
    const ref = parseBlockRequest(url, config);
    const range = parseRange(req.headers.range, ref.length) ?? { start: 0, end: ref.length - 1 };
    // The answer's bytes, and a block-sized fetch if the block is not cached.
    budget.hold(range.end - range.start + 1 + (config.blocks.readThrough.cached(ref) ? 0 : ref.length), res);
    return serveBlock(config, ref, range, req.headers.range !== undefined, res);
  }
  if (req.method === 'GET' && url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    return;
  }
  if (req.method === 'GET' && url === '/readyz') {
    const up = config.ready();
    res.writeHead(up ? 200 : 503, { 'content-type': 'text/plain' }).end(up ? 'ready\n' : 'not registered with the master\n');
    return;
  }
  if (req.method === 'GET' && url === '/metrics') {
    res.writeHead(200, { 'content-type': config.registry.contentType }).end(await config.registry.metrics());
    return;
  }
  throw new CachefsError('NOT_FOUND', `no such resource: ${req.method} ${url.split('?')[0]}`);
}

async function serveBlock(config: BlockServiceConfig, ref: BlockRef, range: { start: number; end: number }, ranged: boolean, res: ServerResponse): Promise<void> {
  const count = range.end - range.start + 1;
  const gone = new AbortController();
  const body = config.buffers.take(count);
  // 'close' comes once the socket has taken the last byte, or the client went away, or an
  // error was answered instead: nothing refers to the buffer any more.
  res.once('close', () => {
    gone.abort();
    config.buffers.giveLater(body);
  });
  const { bytes } = await config.blocks.read(ref, range.start, count, body, 0, gone.signal);
  if (bytes !== count) throw new CachefsError('IO', `block ${ref.id} ended after ${bytes} of ${count} bytes`);
  res
    .writeHead(ranged ? 206 : 200, {
      'content-type': 'application/octet-stream',
      'content-length': String(count),
      ...(ranged ? { 'content-range': `bytes ${range.start}-${range.end}/${ref.length}` } : {}),
    })
    .end(body);
  config.metrics.workerServedBytes.inc({ path: 'remote' }, count);
  config.metrics.workerRequests.inc({ path: 'remote', status: 'ok' });
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
  const retry = e.code === 'THROTTLED' ? { 'retry-after': String(RETRY_AFTER_S) } : {};
  res.writeHead(statusForCode(e.code), { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...retry }).end(body);
}

/**
 * The master process's HTTP server (node:http, or node:https with a certificate):
 * the JSON API of `api.ts` over the mount table, the worker registry and the
 * shared namespace cache (whose UFS backends it keeps in step with the table), plus the
 * probes `/healthz`, `/readyz` and `/metrics`. Every other path needs the cluster
 * secret (`net/auth.ts`): without it, 401 before anything else is looked at.
 * Translates between HTTP and the tables only: requests are decoded with the
 * `api.ts` decoders, failures become `{error:{code,message}}` with a 4xx/5xx
 * status. Owns the store it is given: `close()` stops the listener, waits for
 * requests in flight, stops the expiry timer, closes the UFS backends and the store.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { CachefsError, isCachefsError, type ErrorCode } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { checkAuthorization, type ClusterAuth } from '../net/auth.js';
import { createClusterServer, type ServerTls } from '../net/tls.js';
import {
  DEFAULT_MASTER_PORT,
  ROUTES,
  WORKER_CREDENTIAL_HEADER,
  decodeHeartbeatRequest,
  decodeNamespaceRefreshRequest,
  namespaceKeyOfPath,
  parseNamespaceKey,
  decodePutMountRequest,
  decodeRegisterWorkerRequest,
  parseCacheGroup,
  parseWorkerId,
  statusOf,
  type ApiErrorBody,
  type CacheGroupsResponse,
  type DeleteMountResponse,
  type HealthResponse,
  type HeartbeatResponse,
  type MountTableResponse,
  type NamespaceListResponse,
  type NamespaceRefreshResponse,
  type NamespaceStatResponse,
  type PutMountResponse,
  type ReadyResponse,
  type RegisterWorkerResponse,
  type ResolveMountResponse,
  type ResolvedMountTableResponse,
  type WorkerListResponse,
} from './api.js';
import type { MetaStore } from './meta-store.js';
import { MasterMetrics } from './metrics.js';
import { MountTable } from './mount-table.js';
import { DEFAULT_NAMESPACE_TTL_MS, NamespaceCache } from './namespace-cache.js';
import { UFS_PAGE_KEYS } from './namespace-page.js';
import { NamespaceSync } from './namespace-sync.js';
import { SecretBox } from './secret-box.js';
import { WorkerRegistry } from './worker-registry.js';

const MAX_BODY_BYTES = 1024 * 1024;
/** How long `close()` lets requests in flight finish before cutting connections. */
const CLOSE_GRACE_MS = 2000;

export interface MasterServerOptions {
  /** The state; the server closes it on `close()`. */
  store: MetaStore;
  /**
   * Who may use the API: holders of the cluster secret (whose key also seals secret
   * options at rest), or anyone (`'insecure'`: then no secret options are kept).
   */
  auth: ClusterAuth;
  /** Serve HTTPS with this certificate. */
  tls?: ServerTls;
  host?: string;
  /** 0 picks a free port; see `port` on the started server. */
  port?: number;
  workerTimeoutMs?: number;
  heartbeatIntervalMs?: number;
  /** How long the namespace cache answers a listing or a stat before asking the UFS again. */
  namespaceTtlMs?: number;
  logger?: Logger;
  /** Include Node process metrics on /metrics (default true). */
  withProcessMetrics?: boolean;
}

type Method = 'GET' | 'PUT' | 'POST' | 'DELETE';

interface Reply {
  status: number;
  body: unknown;
}

interface RequestContext {
  url: URL;
  req: IncomingMessage;
  /** The parsed JSON body; INVALID_ARGUMENT when it is not JSON. */
  json(): Promise<unknown>;
}

type Handler = (ctx: RequestContext) => Promise<Reply>;

/** An error answered with a status of its own rather than the one its code maps to. */
class HttpError extends CachefsError {
  constructor(readonly status: number, code: ErrorCode, message: string) {
    super(code, message);
  }
}

function ok(body: unknown, status = 200): Reply {
  return { status, body };
}

function parseMaxKeys(text: string | null): number {
  if (text === null || text === '') return UFS_PAGE_KEYS;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new CachefsError('INVALID_ARGUMENT', `invalid query parameter maxKeys='${text.slice(0, 32)}': expected a positive integer`);
  return n;
}

function query(url: URL, name: string): string {
  const value = url.searchParams.get(name);
  if (value === null || value === '') throw new CachefsError('INVALID_ARGUMENT', `missing query parameter '${name}'`);
  return value;
}

export class MasterServer {
  private readonly routes = new Map<string, Partial<Record<Method, Handler>>>();
  private readonly inFlight = new Set<Promise<void>>();
  private closing: Promise<void> | undefined;
  /**
   * The namespace's backends being opened (at the first namespace request: a master no
   * mount asks loads no store SDK), or catching up with mount-table changes: namespace
   * requests wait for it, so that none is answered (and cached) through a table older
   * than the last acknowledged change. Undefined until the first namespace request.
   */
  private namespaceFollowing: Promise<void> | undefined;

  private constructor(
    private readonly server: Server,
    private readonly store: MetaStore,
    private readonly auth: ClusterAuth,
    readonly mountTable: MountTable,
    readonly workers: WorkerRegistry,
    readonly metrics: MasterMetrics,
    private readonly namespaceSync: NamespaceSync,
    readonly namespace: NamespaceCache,
    private readonly logger: Logger,
  ) {
    this.defineRoutes();
    server.on('request', (req: IncomingMessage, res: ServerResponse) => this.track(req, res));
  }

  /** Loads the state from the store and starts listening. */
  static async start(options: MasterServerOptions): Promise<MasterServer> {
    const logger = options.logger ?? silentLogger;
    const host = options.host ?? '0.0.0.0';
    const port = options.port ?? DEFAULT_MASTER_PORT;
    const mountTable = await MountTable.load(options.store, logger, options.auth === 'insecure' ? undefined : new SecretBox(options.auth));
    const workers = await WorkerRegistry.load(options.store, logger, {
      workerTimeoutMs: options.workerTimeoutMs,
      heartbeatIntervalMs: options.heartbeatIntervalMs,
    });
    const metrics = new MasterMetrics(mountTable, workers, options.withProcessMetrics ?? true);
    const namespaceSync = new NamespaceSync({ mountTable: async () => ({ value: mountTable.all() }) }, logger);
    const namespace = new NamespaceCache(namespaceSync.ufs, options.store, options.namespaceTtlMs ?? DEFAULT_NAMESPACE_TTL_MS, metrics, logger);
    const server = createClusterServer(options.tls);
    const master = new MasterServer(server, options.store, options.auth, mountTable, workers, metrics, namespaceSync, namespace, logger);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(new CachefsError(err.code === 'EADDRINUSE' ? 'CONFLICT' : 'INVALID_ARGUMENT', `cannot listen on ${host}:${port}: ${err.message}`, { cause: err }));
      };
      server.once('error', onError);
      server.listen(port, host, () => {
        server.off('error', onError);
        resolve();
      });
    });
    workers.start();
    logger.info({ host, port: master.port, tls: options.tls !== undefined, mountEntries: mountTable.size, workers: workers.list().length }, 'master listening');
    return master;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Stops serving, lets requests in flight finish, stops timers and closes the store. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    await this.settleInFlight();
    this.server.closeAllConnections();
    await closed;
    // Their connections are gone: what is still running (a listing waiting on a store that
    // does not answer) can answer nobody, and must not keep the process from stopping.
    await this.settleInFlight();
    if (this.inFlight.size > 0) this.logger.warn({ requests: this.inFlight.size }, `stopping: left ${this.inFlight.size} request${this.inFlight.size === 1 ? '' : 's'} unanswered`);
    try {
      await this.workers.close();
      await this.mountTable.idle();
      await this.namespaceFollowing;
      await this.namespaceSync.close();
    } finally {
      await this.store.close();
    }
    this.logger.info('master stopped');
  }

  /** Waits for the requests in flight to end, at most CLOSE_GRACE_MS. */
  private async settleInFlight(): Promise<void> {
    let grace: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.inFlight]),
      new Promise<void>((resolve) => {
        grace = setTimeout(resolve, CLOSE_GRACE_MS);
      }),
    ]);
    clearTimeout(grace);
  }

  /** Handles a request and remembers it until it is answered, so that `close()` can wait for it. */
  private track(req: IncomingMessage, res: ServerResponse): void {
    const p: Promise<void> = this.handle(req, res)
      .catch((err: unknown) => {
        this.logger.error({ err: err instanceof Error ? err.stack : String(err) }, 'request handling failed');
        res.destroy();
      })
      .finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
  }

  private defineRoutes(): void {
    const { mountTable, workers, namespace } = this;
    this.route(ROUTES.healthz, { GET: async () => ok({ status: 'ok' } satisfies HealthResponse) });
    // Tables loaded and listening (a master only listens once loaded); 503 while shutting down, as every route.
    this.route(ROUTES.readyz, { GET: async () => ok({ status: 'ready' } satisfies ReadyResponse) });
    this.route(ROUTES.mountTable, {
      GET: async () => ok({ entries: mountTable.list() } satisfies MountTableResponse),
      PUT: async (ctx) => {
        const result = await mountTable.put(decodePutMountRequest(await ctx.json()), Date.now());
        await this.mountTableChanged(result.entry.path);
        return ok(result satisfies PutMountResponse, result.created ? 201 : 200);
      },
      DELETE: async (ctx) => {
        const removed = await mountTable.remove(query(ctx.url, 'path'));
        await this.mountTableChanged(removed.path);
        return ok({ removed } satisfies DeleteMountResponse);
      },
    });
    this.route(ROUTES.mountTableResolve, {
      GET: async (ctx) => ok(mountTable.resolve(query(ctx.url, 'path')) satisfies ResolveMountResponse),
    });
    this.route(ROUTES.mountTableResolveAll, {
      GET: async () => ok({ entries: mountTable.all() } satisfies ResolvedMountTableResponse),
    });
    this.route(ROUTES.workersRegister, {
      POST: async (ctx) => {
        const { worker, credential } = await workers.register(decodeRegisterWorkerRequest(await ctx.json()));
        return ok({ worker, credential, ...workers.timing } satisfies RegisterWorkerResponse);
      },
    });
    this.route(ROUTES.workersHeartbeat, {
      POST: async (ctx) => ok({ state: 'alive', ...workers.heartbeat(decodeHeartbeatRequest(await ctx.json())) } satisfies HeartbeatResponse),
    });
    this.route(ROUTES.workers, {
      GET: async (ctx) => {
        const group = ctx.url.searchParams.get('cacheGroup');
        const state = ctx.url.searchParams.get('state');
        if (state !== null && state !== 'alive' && state !== 'lost') {
          throw new CachefsError('INVALID_ARGUMENT', `invalid query parameter state='${state}': expected alive or lost`);
        }
        const list = workers.list({ cacheGroup: group === null ? undefined : parseCacheGroup(group), state: state ?? undefined });
        return ok({ workers: list, now: Date.now() } satisfies WorkerListResponse);
      },
      DELETE: async (ctx) => {
        const credential = ctx.req.headers[WORKER_CREDENTIAL_HEADER];
        const proof = { credential: typeof credential === 'string' ? credential : undefined, force: ctx.url.searchParams.get('force') === '1' };
        return ok({ removed: await workers.remove(parseWorkerId(query(ctx.url, 'id')), proof) });
      },
    });
    this.route(ROUTES.cacheGroups, { GET: async () => ok({ groups: workers.groups() } satisfies CacheGroupsResponse) });
    this.route(ROUTES.namespaceList, {
      GET: async (ctx) => {
        const prefix = parseNamespaceKey(ctx.url.searchParams.get('prefix') ?? '', 'prefix', true);
        const cursor = ctx.url.searchParams.get('cursor') ?? undefined;
        const maxKeys = parseMaxKeys(ctx.url.searchParams.get('maxKeys'));
        await this.namespaceReady();
        return ok((await namespace.list(prefix, cursor === '' ? undefined : cursor, maxKeys)) satisfies NamespaceListResponse);
      },
    });
    this.route(ROUTES.namespaceStat, {
      GET: async (ctx) => {
        const key = parseNamespaceKey(query(ctx.url, 'key'), 'key', false);
        await this.namespaceReady();
        return ok({ object: await namespace.stat(key) } satisfies NamespaceStatResponse);
      },
    });
    this.route(ROUTES.namespaceRefresh, {
      POST: async (ctx) => {
        const { path } = decodeNamespaceRefreshRequest(await ctx.json());
        return ok({ path, ...(await namespace.refresh(namespaceKeyOfPath(path))) } satisfies NamespaceRefreshResponse);
      },
    });
  }

  /**
   * A changed entry: what was cached at, below and above its path goes now, before the
   * change is answered; the namespace's backends follow the table in the background
   * (opening one may take seconds, longer than an admin command waits), and namespace
   * requests wait for that.
   */
  private async mountTableChanged(path: string): Promise<void> {
    // Set first, so that a request arriving while the cache is being cleared waits too.
    this.namespaceFollowing = this.namespaceFollowing
      ?.then(() => this.namespaceSync.poke())
      .catch((err: unknown) => this.logger.warn({ path, err: (err as Error).message }, 'cannot bring the namespace cache in step with the mount table'));
    await this.forgetNamespace(path);
  }

  /** Opens the namespace's backends at the first call; waits for them to follow the table. */
  private namespaceReady(): Promise<void> {
    this.namespaceFollowing ??= this.namespaceSync.start().catch((err: unknown) => this.logger.error({ err: (err as Error).message }, 'cannot open the namespace of the mount table'));
    return this.namespaceFollowing;
  }

  private async forgetNamespace(path: string): Promise<void> {
    const key = namespaceKeyOfPath(path);
    await this.namespace.refresh(key);
    // Every listing above shows the path's next component (NamespaceUfs makes it up when no store has it).
    const segments = key === '' ? [] : key.split('/');
    for (let n = 0; n < segments.length - 1; n++) await this.namespace.dropListing(n === 0 ? '' : `${segments.slice(0, n).join('/')}/`);
  }

  private route(path: string, handlers: Partial<Record<Method, Handler>>): void {
    this.routes.set(path, handlers);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    const url = new URL(req.url ?? '/', 'http://master');
    const routeLabel = this.routes.has(url.pathname) || url.pathname === ROUTES.metrics ? url.pathname : 'unknown';
    let status = 500;
    try {
      if (this.closing) {
        throw new HttpError(503, 'UNREACHABLE', 'master is shutting down');
      }
      checkAuthorization(this.auth, req, url.pathname);
      if (url.pathname === ROUTES.metrics && req.method === 'GET') {
        const text = await this.metrics.registry.metrics();
        status = 200;
        res.writeHead(200, { 'content-type': this.metrics.registry.contentType }).end(text);
        return;
      }
      const handlers = this.routes.get(url.pathname);
      if (!handlers) throw new HttpError(404, 'NOT_FOUND', `no such API path '${url.pathname}'`);
      const handler = handlers[req.method as Method];
      if (!handler) {
        res.setHeader('allow', Object.keys(handlers).join(', '));
        throw new HttpError(405, 'INVALID_ARGUMENT', `method ${req.method ?? '?'} is not allowed on ${url.pathname} (allowed: ${Object.keys(handlers).join(', ')})`);
      }
      const reply = await handler({ url, req, json: () => readJson(req) });
      status = reply.status;
      this.send(res, reply.status, reply.body);
    } catch (err) {
      status = err instanceof HttpError ? err.status : isCachefsError(err) ? statusOf(err.code) : 500;
      const code = isCachefsError(err) ? err.code : 'IO';
      const message = isCachefsError(err) ? err.message : 'internal error in the master (see its log)';
      if (status >= 500) this.logger.error({ method: req.method, path: url.pathname, err: err instanceof Error ? err.stack : String(err) }, 'request failed');
      else this.logger.debug({ method: req.method, path: url.pathname, status, code, message }, 'request rejected');
      if (status === 401) res.setHeader('www-authenticate', 'Bearer realm="cachefs"');
      this.send(res, status, { error: { code, message } } satisfies ApiErrorBody);
    } finally {
      this.metrics.requests.inc({ route: routeLabel, status: String(status) });
      this.metrics.requestSeconds.observe({ route: routeLabel }, (performance.now() - started) / 1000);
    }
  }

  private send(res: ServerResponse, status: number, body: unknown): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const text = JSON.stringify(body);
    // After an error the request body may be unread: do not reuse the connection.
    if (status >= 400 || this.closing) res.setHeader('connection', 'close');
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text) }).end(text);
  }
}

/** Reads and parses a JSON request body of at most 1 MiB. */
async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, 'INVALID_ARGUMENT', `request body is larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') throw new CachefsError('INVALID_ARGUMENT', 'request body is empty: expected a JSON object');
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new CachefsError('INVALID_ARGUMENT', `request body is not valid JSON: ${(err as Error).message}`);
  }
}

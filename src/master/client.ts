/**
 * `MasterClient`: how workers, mounts and the admin commands talk to the master
 * (an undici pool to one `host:port`, over TLS verified with the cluster's CA when
 * given one). Every request carries the cluster secret when the client has it.
 * Every call has a per-attempt timeout
 * (AbortSignal) and retries with capped exponential backoff while the master is
 * unreachable, times out or is shutting down; answers the master rejected are
 * never retried. With a `cacheDir`, the mount table and live worker lists are
 * remembered on disk (`state-cache.ts`) and served from there when the master
 * cannot be reached, so a mount starts and keeps reading during a master
 * restart. Failures are CachefsErrors: UNREACHABLE / TIMEOUT for a master that
 * does not answer, the master's own code (NOT_FOUND, CONFLICT, INVALID_ARGUMENT
 * for other 4xx) for rejected requests.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool } from 'undici';
import { CachefsError, isCachefsError, type ErrorCode } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { authHeaders, type ClusterSecret } from '../net/auth.js';
import { parseHostPort, type HostPort } from '../net/host-port.js';
import type { ClientTls } from '../net/tls.js';
import {
  ROUTES,
  WORKER_CREDENTIAL_HEADER,
  decodeApiError,
  decodeCacheGroupSummary,
  decodeMountEntry,
  decodeNamespaceList,
  decodeNamespaceRefresh,
  decodeNamespaceStat,
  decodeWorkerRecord,
  decodeWorkerTiming,
  type CacheGroupSummary,
  type HealthResponse,
  type HeartbeatRequest,
  type HeartbeatResponse,
  type MountEntry,
  type MountEntryView,
  type NamespaceListResponse,
  type NamespaceRefreshResponse,
  type PutMountRequest,
  type PutMountResponse,
  type RegisterWorkerRequest,
  type RegisterWorkerResponse,
  type ResolveMountResponse,
  type WorkerListResponse,
  type WorkerRecord,
  type WorkerState,
} from './api.js';
import { Fields } from './decode.js';
import { normalizeMountPath, resolveMountPath } from './mount-path.js';
import { MasterStateCache } from './state-cache.js';
import type { UfsObject } from '../ufs/ufs.js';

export interface MasterClientOptions {
  /** Time allowed for one attempt, default 5s. */
  timeoutMs?: number;
  /** Retries after the first attempt while the master does not answer, default 5. */
  retries?: number;
  /** First backoff delay, default 100ms; doubles on each retry. */
  backoffInitialMs?: number;
  /** Cap on the backoff delay, default 5s. */
  backoffMaxMs?: number;
  /** Where to remember the mount table and worker lists; none when absent. */
  cacheDir?: string;
  /** Concurrent connections to the master, default 4. */
  connections?: number;
  logger?: Logger;
  /** The cluster secret, sent with every request; none for a master that runs `--insecure`. */
  auth?: ClusterSecret;
  /** Speak HTTPS, trusting this CA. */
  tls?: ClientTls;
}

export interface CallOptions {
  /** Cancels the call, retries included (ends in TIMEOUT). */
  signal?: AbortSignal;
  /** Overrides the client's retries for this call (0: one attempt). */
  retries?: number;
  /** Overrides the client's per-attempt timeout for this call. */
  timeoutMs?: number;
}

/** An answer that may come from the on-disk cache instead of the master. */
export interface MaybeCached<T> {
  value: T;
  source: 'master' | 'cache';
  /** Epoch milliseconds when the master gave this answer. */
  fetchedAt: number;
}

export interface WorkerQuery {
  cacheGroup?: string;
  state?: WorkerState;
}

type Method = 'GET' | 'PUT' | 'POST' | 'DELETE';

const RETRYABLE: readonly ErrorCode[] = ['UNREACHABLE', 'TIMEOUT'];

function statusCode(status: number): ErrorCode {
  if (status === 404) return 'NOT_FOUND';
  if (status === 409) return 'CONFLICT';
  if (status === 401) return 'UNAUTHENTICATED';
  if (status === 403) return 'ACCESS_DENIED';
  if (status >= 400 && status < 500) return 'INVALID_ARGUMENT';
  if (status === 502 || status === 503 || status === 504) return 'UNREACHABLE';
  return 'IO';
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as NodeJS.ErrnoException).code;
  const inner = err.cause instanceof Error ? `: ${err.cause.message}` : '';
  return code && !err.message.includes(code) ? `${code} ${err.message}${inner}` : `${err.message}${inner}`;
}

export class MasterClient {
  readonly address: HostPort;
  private readonly pool: Pool;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly cache: MasterStateCache | undefined;
  private readonly logger: Logger;
  private readonly headers: Record<string, string>;

  /** `master` is `host:port` (INVALID_ARGUMENT otherwise). */
  constructor(master: string, options: MasterClientOptions = {}) {
    this.address = parseHostPort(master, '--master address');
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.retries = options.retries ?? 5;
    this.backoffInitialMs = options.backoffInitialMs ?? 100;
    this.backoffMaxMs = options.backoffMaxMs ?? 5000;
    this.cache = options.cacheDir === undefined ? undefined : new MasterStateCache(options.cacheDir);
    this.logger = options.logger ?? silentLogger;
    this.headers = { accept: 'application/json', ...authHeaders(options.auth) };
    const origin = options.tls ? `https://${this.address.text}` : this.address.origin;
    this.pool = new Pool(origin, { connections: options.connections ?? 4, keepAliveTimeout: 4000, connect: options.tls ? { ca: options.tls.ca } : undefined });
  }

  async health(opts: CallOptions = {}): Promise<HealthResponse> {
    await this.call('GET', ROUTES.healthz, undefined, opts);
    return { status: 'ok' };
  }

  // ------------------------------------------------------------ mount table

  /** The mount table as listings show it (secret values masked). */
  async listMounts(opts: CallOptions = {}): Promise<MountEntryView[]> {
    const f = Fields.of(await this.call('GET', ROUTES.mountTable, undefined, opts), 'mount table');
    return f.array('entries').map((e, i) => decodeMountEntry(e, `entries[${i}]`));
  }

  async addMount(req: PutMountRequest, opts: CallOptions = {}): Promise<PutMountResponse> {
    const f = Fields.of(await this.call('PUT', ROUTES.mountTable, req, opts), 'mount-table answer');
    return { entry: decodeMountEntry(f.raw('entry')), created: f.boolean('created', false) };
  }

  async removeMount(path: string, opts: CallOptions = {}): Promise<MountEntryView> {
    const f = Fields.of(await this.call('DELETE', withQuery(ROUTES.mountTable, { path }), undefined, opts), 'mount-table answer');
    return decodeMountEntry(f.raw('removed'));
  }

  /**
   * The whole mount table with secrets. Remembered in the cache dir; served
   * from there when the master does not answer (UNREACHABLE when there is no
   * cached copy either).
   */
  async mountTable(opts: CallOptions = {}): Promise<MaybeCached<MountEntry[]>> {
    try {
      const f = Fields.of(await this.call('GET', ROUTES.mountTableResolveAll, undefined, opts), 'mount table');
      const entries = f.array('entries').map((e, i) => decodeMountEntry(e, `entries[${i}]`));
      await this.remember('mount table', () => this.cache?.saveMountTable(entries));
      return { value: entries, source: 'master', fetchedAt: Date.now() };
    } catch (err) {
      const cached = await this.fallback(err, 'mount table', () => this.cache?.loadMountTable());
      return { value: cached.value, source: 'cache', fetchedAt: cached.savedAt };
    }
  }

  /** The entry covering `path` (with secrets) and the path below it; from the cached table when the master does not answer. */
  async resolveMount(path: string, opts: CallOptions = {}): Promise<MaybeCached<ResolveMountResponse>> {
    const normalized = normalizeMountPath(path);
    try {
      const f = Fields.of(await this.call('GET', withQuery(ROUTES.mountTableResolve, { path: normalized }), undefined, opts), 'resolved mount');
      return { value: { entry: decodeMountEntry(f.raw('entry')), subPath: f.string('subPath') }, source: 'master', fetchedAt: Date.now() };
    } catch (err) {
      const cached = await this.fallback(err, 'mount table', () => this.cache?.loadMountTable());
      const found = resolveMountPath(cached.value, normalized);
      if (!found) throw new CachefsError('NOT_FOUND', `no mount-table entry covers '${normalized}' (cached mount table; the master is unreachable)`);
      return { value: found, source: 'cache', fetchedAt: cached.savedAt };
    }
  }

  // ------------------------------------------------------------ workers

  async registerWorker(req: RegisterWorkerRequest, opts: CallOptions = {}): Promise<RegisterWorkerResponse> {
    const f = Fields.of(await this.call('POST', ROUTES.workersRegister, req, opts), 'registration answer');
    return { worker: decodeWorkerRecord(f.raw('worker')), credential: f.string('credential'), ...decodeWorkerTiming(f) };
  }

  /** NOT_FOUND means the master does not know this worker (any more): register again. */
  async heartbeat(req: HeartbeatRequest, opts: CallOptions = {}): Promise<HeartbeatResponse> {
    const f = Fields.of(await this.call('POST', ROUTES.workersHeartbeat, req, opts), 'heartbeat answer');
    return { state: 'alive', ...decodeWorkerTiming(f) };
  }

  /** Worker records, alive and lost unless `state` says which. */
  async listWorkers(query: WorkerQuery = {}, opts: CallOptions = {}): Promise<WorkerListResponse> {
    const f = Fields.of(await this.call('GET', withQuery(ROUTES.workers, { ...query }), undefined, opts), 'worker list');
    return { workers: f.array('workers').map((w, i) => decodeWorkerRecord(w, `workers[${i}]`)), now: f.count('now') };
  }

  /** The alive workers of a cache group (a client's ring); remembered and served from the cache dir like the mount table. */
  async liveWorkers(cacheGroup: string, opts: CallOptions = {}): Promise<MaybeCached<WorkerRecord[]>> {
    try {
      const { workers } = await this.listWorkers({ cacheGroup, state: 'alive' }, opts);
      await this.remember('worker list', () => this.cache?.saveWorkers(cacheGroup, workers));
      return { value: workers, source: 'master', fetchedAt: Date.now() };
    } catch (err) {
      const cached = await this.fallback(err, `worker list of cache group '${cacheGroup}'`, () => this.cache?.loadWorkers(cacheGroup));
      return { value: cached.value, source: 'cache', fetchedAt: cached.savedAt };
    }
  }

  /** Removes a worker: as the worker itself (`credential` of its registration), or as an admin (`force`). */
  async removeWorker(id: string, by: { credential: string } | { force: true }, opts: CallOptions = {}): Promise<WorkerRecord> {
    const forced = 'force' in by ? { force: '1' } : {};
    const headers: Record<string, string> = 'credential' in by ? { [WORKER_CREDENTIAL_HEADER]: by.credential } : {};
    const f = Fields.of(await this.call('DELETE', withQuery(ROUTES.workers, { id, ...forced }), undefined, opts, headers), 'worker answer');
    return decodeWorkerRecord(f.raw('removed'));
  }

  async cacheGroups(opts: CallOptions = {}): Promise<CacheGroupSummary[]> {
    const f = Fields.of(await this.call('GET', ROUTES.cacheGroups, undefined, opts), 'cache groups');
    return f.array('groups').map(decodeCacheGroupSummary);
  }

  // ------------------------------------------------------------ namespace cache

  /** One page of the shared namespace cache's listing of `prefix` ('' or ending in '/'). */
  async namespaceList(prefix: string, page: { cursor?: string; maxKeys?: number }, opts: CallOptions = {}): Promise<NamespaceListResponse> {
    const params = { prefix, cursor: page.cursor, maxKeys: page.maxKeys === undefined ? undefined : String(page.maxKeys) };
    return decodeNamespaceList(await this.call('GET', withQuery(ROUTES.namespaceList, params), undefined, opts));
  }

  /** The object at a namespace key, or null, from the shared namespace cache. */
  async namespaceStat(key: string, opts: CallOptions = {}): Promise<UfsObject | null> {
    return decodeNamespaceStat(await this.call('GET', withQuery(ROUTES.namespaceStat, { key }), undefined, opts)).object;
  }

  /** Drops what the namespace cache holds of a namespace path (e.g. `/data/train`), below it and its parent's listing. */
  async refreshNamespace(path: string, opts: CallOptions = {}): Promise<NamespaceRefreshResponse> {
    return decodeNamespaceRefresh(await this.call('POST', ROUTES.namespaceRefresh, { path: normalizeMountPath(path) }, opts));
  }

  async close(): Promise<void> {
    await this.pool.close();
  }

  // ------------------------------------------------------------ internals

  private async remember(what: string, save: () => Promise<void> | undefined): Promise<void> {
    try {
      await save();
    } catch (err) {
      this.logger.warn({ err: (err as Error).message, cacheDir: this.cache?.dir }, `cannot cache the ${what}`);
    }
  }

  /** The cached answer when `err` says the master does not answer and there is one; rethrows otherwise. */
  private async fallback<T>(err: unknown, what: string, load: () => Promise<{ value: T; savedAt: number } | undefined> | undefined): Promise<{ value: T; savedAt: number }> {
    if (!isCachefsError(err) || !RETRYABLE.includes(err.code)) throw err;
    if (!this.cache) throw err;
    const cached = await load();
    if (!cached) throw new CachefsError(err.code, `${err.message}; no cached ${what} in ${this.cache.dir}`, { cause: err });
    this.logger.warn({ master: this.address.text, savedAt: new Date(cached.savedAt).toISOString(), err: err.message }, `master unreachable: using the cached ${what}`);
    return cached;
  }

  /** One API call with retries; resolves to the parsed JSON body of a 2xx answer. */
  private async call(method: Method, path: string, body: unknown, opts: CallOptions, headers: Record<string, string> = {}): Promise<unknown> {
    const retries = opts.retries ?? this.retries;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.attempt(method, path, body, opts, headers);
      } catch (err) {
        if (!isCachefsError(err) || !RETRYABLE.includes(err.code) || attempt >= retries || opts.signal?.aborted) throw err;
        const ceiling = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** attempt);
        const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
        this.logger.debug({ method, path, attempt: attempt + 1, delayMs: delay, err: err.message }, 'master call failed, retrying');
        try {
          await sleep(delay, undefined, { signal: opts.signal });
        } catch {
          throw new CachefsError('TIMEOUT', `${method} ${path} to master ${this.address.text} was cancelled`, { cause: err });
        }
      }
    }
  }

  private async attempt(method: Method, path: string, body: unknown, opts: CallOptions, extraHeaders: Record<string, string>): Promise<unknown> {
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    let status: number;
    let text: string;
    try {
      const res = await this.pool.request({
        method,
        path,
        signal,
        headers: body === undefined ? { ...this.headers, ...extraHeaders } : { ...this.headers, ...extraHeaders, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      status = res.statusCode;
      text = await res.body.text();
    } catch (err) {
      const where = `master ${this.address.text}`;
      if (opts.signal?.aborted) throw new CachefsError('TIMEOUT', `${method} ${path} to ${where} was cancelled`, { cause: err });
      if (timeout.aborted) throw new CachefsError('TIMEOUT', `${where} did not answer ${method} ${path} within ${timeoutMs}ms`, { cause: err });
      throw new CachefsError('UNREACHABLE', `cannot reach ${where}: ${describe(err)}`, { cause: err });
    }
    let parsed: unknown;
    try {
      parsed = text === '' ? undefined : (JSON.parse(text) as unknown);
    } catch {
      parsed = undefined;
    }
    if (status >= 200 && status < 300) {
      if (parsed === undefined) throw new CachefsError('IO', `master ${this.address.text} answered ${method} ${path} with a body that is not JSON`);
      return parsed;
    }
    const apiError = decodeApiError(parsed);
    // A 503 is a master that cannot answer now, unless it says a store throttled it: that is no reason to go round it.
    const code = status === 503 && apiError?.code !== 'THROTTLED' ? 'UNREACHABLE' : (apiError?.code ?? statusCode(status));
    throw new CachefsError(code, apiError?.message ?? `master ${this.address.text} answered ${method} ${path} with HTTP ${status}`);
  }
}

function withQuery(path: string, params: Record<string, string | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, v);
  const s = q.toString();
  return s === '' ? path : `${path}?${s}`;
}

/**
 * The master's HTTP JSON API as types both sides share: paths, request and
 * response bodies, the error body, and the decoders that turn untrusted JSON
 * into these types (the server decodes requests with them, `MasterClient`
 * decodes responses, the store's records are decoded on load). Domain rules
 * that a request must satisfy (mount paths, UFS URIs, worker ids, cache group
 * names, addresses) are checked here, once. No I/O.
 */
import { CachefsError, type ErrorCode } from '../errors.js';
import type { UfsObject } from '../ufs/ufs.js';
import { parseUfsUri } from '../ufs/uri.js';
import { parseHostPort } from '../net/host-port.js';
import { Fields } from './decode.js';
import { normalizeMountPath } from './mount-path.js';

export const ROUTES = {
  /** GET: entries with secret values masked. PUT: add or replace an entry. DELETE `?path=`: remove one. */
  mountTable: '/v1/mount-table',
  /** GET `?path=`: the entry covering a path, secrets included, and the path below it. */
  mountTableResolve: '/v1/mount-table/resolve',
  /** GET: every entry with its secrets (what a mount caches to start without the master). */
  mountTableResolveAll: '/v1/mount-table/resolve-all',
  /**
   * GET `?cacheGroup=&state=`: worker records, alive and lost. DELETE `?id=`: forget a
   * worker; only the worker itself (its registration credential in the
   * `x-cachefs-worker-credential` header) or an admin saying so (`&force=1`) may.
   */
  workers: '/v1/workers',
  workersRegister: '/v1/workers/register',
  workersHeartbeat: '/v1/workers/heartbeat',
  /** GET: one summary per cache group. */
  cacheGroups: '/v1/cache-groups',
  /**
   * GET `?prefix=&cursor=&maxKeys=`: one page of the shared namespace cache's listing of a
   * directory (`prefix` '' for the root, else ending in '/'), fetched from the UFS on a miss.
   */
  namespaceList: '/v1/namespace/list',
  /** GET `?key=`: the object at a namespace key, or null. */
  namespaceStat: '/v1/namespace/stat',
  /** POST `{path}`: drops what the namespace cache holds of a path, below it and its parent's listing. */
  namespaceRefresh: '/v1/namespace/refresh',
  /** Probes: answered without the cluster secret, and carry none. */
  healthz: '/healthz',
  readyz: '/readyz',
  metrics: '/metrics',
} as const;

/** Where a worker presents its registration credential when it deregisters itself. */
export const WORKER_CREDENTIAL_HEADER = 'x-cachefs-worker-credential';

/** What listings show instead of a secret option's value. */
export const SECRET_PLACEHOLDER = '[secret]';

export const DEFAULT_MASTER_PORT = 19998;

// ---------------------------------------------------------------- errors

export interface ApiErrorBody {
  error: { code: ErrorCode; message: string };
}

const ERROR_CODES: readonly ErrorCode[] = [
  'NOT_FOUND', 'NOT_DIRECTORY', 'IS_DIRECTORY', 'READ_ONLY', 'ACCESS_DENIED', 'UNAUTHENTICATED', 'BUCKET_NOT_FOUND', 'THROTTLED',
  'UNREACHABLE', 'STALE', 'INVALID_ARGUMENT', 'BAD_HANDLE', 'CORRUPT_BLOCK', 'TIMEOUT', 'CONFLICT', 'IO',
];

/** The HTTP status the server answers for an error code. */
export function statusOf(code: ErrorCode): number {
  switch (code) {
    case 'INVALID_ARGUMENT': return 400;
    case 'UNAUTHENTICATED': return 401;
    case 'ACCESS_DENIED': return 403;
    case 'NOT_FOUND': return 404;
    case 'CONFLICT': return 409;
    case 'UNREACHABLE':
    case 'TIMEOUT':
    case 'THROTTLED': return 503;
    default: return 500;
  }
}

/** Reads an error body; undefined when the body is not one. */
export function decodeApiError(value: unknown): ApiErrorBody['error'] | undefined {
  try {
    const e = Fields.of(Fields.of(value, 'error response').raw('error'), 'error');
    const code = ERROR_CODES.find((c) => c === e.string('code'));
    return code === undefined ? undefined : { code, message: e.string('message') };
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------- mount table

/** One mount-table entry with everything a mount or worker needs to reach the UFS. */
export interface MountEntry {
  /** Normalized absolute path in the cachefs namespace, e.g. `/data`. */
  path: string;
  /** UFS URI, valid for `parseUfsUri`. */
  uri: string;
  /** Plain options, e.g. `s3.endpoint`. */
  options: Record<string, string>;
  /**
   * Options read from files (credentials), and plain options whose keys look secret
   * (`looksSecret`); never shown in listings or logs, encrypted at rest.
   */
  secretOptions: Record<string, string>;
  /** Epoch milliseconds when the entry was added or last replaced. */
  createdAt: number;
}

/** A mount-table entry as listings show it: secret values replaced by `[secret]`. */
export type MountEntryView = MountEntry;

export interface PutMountRequest {
  path: string;
  uri: string;
  options?: Record<string, string>;
  secretOptions?: Record<string, string>;
  /** Replace an existing, different entry at the same path (otherwise that is a CONFLICT). */
  replace?: boolean;
}

export interface PutMountResponse {
  entry: MountEntryView;
  /** False when an identical entry was already there (a retried add) or one was replaced. */
  created: boolean;
}

export interface MountTableResponse {
  entries: MountEntryView[];
}

export interface ResolvedMountTableResponse {
  entries: MountEntry[];
}

export interface ResolveMountResponse {
  entry: MountEntry;
  /** The part of the asked path below `entry.path`: '' or `a/b` (no leading slash). */
  subPath: string;
}

export interface DeleteMountResponse {
  removed: MountEntryView;
}

const OPTION_KEY = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const MAX_OPTION_VALUE = 64 * 1024;

/** Option keys whose values are masked in listings even when given as plain options. */
export function looksSecret(key: string): boolean {
  return /secret|password|passwd|token|credential|private/i.test(key);
}

function checkOptions(options: Record<string, string>, what: string): Record<string, string> {
  for (const [key, value] of Object.entries(options)) {
    if (!OPTION_KEY.test(key)) {
      throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} key '${key}': expected letters, digits, '.', '_' or '-', e.g. s3.endpoint`);
    }
    if (value.length > MAX_OPTION_VALUE) throw new CachefsError('INVALID_ARGUMENT', `${what} '${key}' is longer than ${MAX_OPTION_VALUE} characters`);
  }
  return options;
}

/**
 * Validates a mount-table addition: normalized path, parseable URI, option keys, no
 * key both plain and secret. A plain option whose key looks secret (`--option
 * s3.secretAccessKey=...`) becomes a secret option, so that it is kept like one.
 */
export function decodePutMountRequest(value: unknown): Required<PutMountRequest> {
  const f = Fields.of(value, 'mount-table entry');
  const path = normalizeMountPath(f.string('path'));
  const uri = f.string('uri');
  parseUfsUri(uri);
  const given = checkOptions(f.stringMap('options'), 'option');
  const secretOptions = checkOptions(f.stringMap('secretOptions'), 'secret option');
  const both = Object.keys(given).find((k) => k in secretOptions);
  if (both !== undefined) throw new CachefsError('INVALID_ARGUMENT', `option '${both}' is given both as a plain and as a secret option`);
  const options: Record<string, string> = {};
  for (const [k, v] of Object.entries(given)) {
    if (looksSecret(k)) secretOptions[k] = v;
    else options[k] = v;
  }
  return { path, uri, options, secretOptions, replace: f.boolean('replace', false) };
}

export function decodeMountEntry(value: unknown, what = 'mount-table entry'): MountEntry {
  const f = Fields.of(value, what);
  return {
    path: normalizeMountPath(f.string('path')),
    uri: f.string('uri'),
    options: f.stringMap('options'),
    secretOptions: f.stringMap('secretOptions'),
    createdAt: f.count('createdAt'),
  };
}

/** The listing form of an entry: secret values (and plain values of secret-looking keys) masked. */
export function toMountEntryView(entry: MountEntry): MountEntryView {
  const options: Record<string, string> = {};
  for (const [k, v] of Object.entries(entry.options)) options[k] = looksSecret(k) ? SECRET_PLACEHOLDER : v;
  const secretOptions: Record<string, string> = {};
  for (const k of Object.keys(entry.secretOptions)) secretOptions[k] = SECRET_PLACEHOLDER;
  return { path: entry.path, uri: entry.uri, options, secretOptions, createdAt: entry.createdAt };
}

// ---------------------------------------------------------------- workers

export const TIER_MEDIA = ['MEM', 'SSD', 'HDD'] as const;
export type TierMedium = (typeof TIER_MEDIA)[number];

export interface TierUsage {
  medium: TierMedium;
  dir: string;
  quotaBytes: number;
  usedBytes: number;
}

/** What a worker reports about its store, at registration and with each heartbeat. */
export interface WorkerUsage {
  capacityBytes: number;
  usedBytes: number;
  blocks: number;
  tiers: TierUsage[];
  /** Bytes handed to co-located clients by short-circuit reads since the worker started, if it counts them. */
  shortCircuitBytes?: number;
}

export interface RegisterWorkerRequest extends WorkerUsage {
  id: string;
  cacheGroup: string;
  /** `host:port` of the worker's HTTP block service, reachable by clients. */
  address: string;
  hostname: string;
  /** Unix socket of the worker for co-located clients; '' when it has none. */
  domainSocketPath: string;
  /** Epoch milliseconds when the worker process started. */
  startedAt: number;
  /**
   * A token unique to this worker process (e.g. a random uuid). Together with
   * `startedAt` it tells a restarted or second process from the one that
   * registered the id; when absent, `startedAt` alone is used.
   */
  instance?: string;
  /** The block size the worker's block service accepts (every block request names it). */
  blockSize?: number;
  /**
   * The credential of the registration this one replaces: a live worker's id is
   * only taken over by a caller that holds it (the same process registering again,
   * or a restart of it that kept the credential in its state dir).
   */
  credential?: string;
}

export interface HeartbeatRequest extends Partial<WorkerUsage> {
  id: string;
  startedAt: number;
  instance?: string;
  /** The credential the worker's registration was answered with. */
  credential: string;
}

export type WorkerState = 'alive' | 'lost';

export interface WorkerRecord extends Omit<RegisterWorkerRequest, 'credential'> {
  /** Epoch milliseconds of the (last) registration. */
  registeredAt: number;
  /** Epoch milliseconds of the last heartbeat or registration seen by the master. */
  lastHeartbeat: number;
  state: WorkerState;
}

/** The master's heartbeat schedule, sent back so workers and the master agree. */
export interface WorkerTiming {
  heartbeatIntervalMs: number;
  workerTimeoutMs: number;
}

export interface RegisterWorkerResponse extends WorkerTiming {
  worker: WorkerRecord;
  /**
   * Proves this registration from now on: sent with every heartbeat, needed to
   * deregister or to take the id over while the worker is live. The master keeps
   * only its SHA-256; it is never listed.
   */
  credential: string;
}

export interface HeartbeatResponse extends WorkerTiming {
  state: 'alive';
}

export interface WorkerListResponse {
  workers: WorkerRecord[];
  /** The master's clock when it answered, to compute heartbeat ages without clock skew. */
  now: number;
}

export interface CacheGroupSummary {
  name: string;
  alive: number;
  lost: number;
  /** Sums over the alive workers. */
  capacityBytes: number;
  usedBytes: number;
  blocks: number;
}

export interface CacheGroupsResponse {
  groups: CacheGroupSummary[];
}

export interface HealthResponse {
  status: 'ok';
}

export interface ReadyResponse {
  status: 'ready';
}

export const WORKER_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
export const CACHE_GROUP = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function parseWorkerId(text: string, what = 'worker id'): string {
  if (!WORKER_ID.test(text)) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text}': expected 1-128 letters, digits, '.', '_', ':' or '-'`);
  return text;
}

export function parseCacheGroup(text: string, what = 'cache group'): string {
  if (!CACHE_GROUP.test(text)) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text}': expected 1-63 letters, digits, '.', '_' or '-'`);
  return text;
}

/** The identity of one worker process: a re-registration with another identity is a different process. */
export function instanceOf(w: { startedAt: number; instance?: string }): string {
  return w.instance !== undefined && w.instance !== '' ? `${w.instance}@${w.startedAt}` : String(w.startedAt);
}

function decodeTier(value: unknown, what: string): TierUsage {
  const f = Fields.of(value, what);
  return { medium: f.oneOf('medium', TIER_MEDIA), dir: f.string('dir'), quotaBytes: f.count('quotaBytes'), usedBytes: f.count('usedBytes') };
}

function decodeTiers(values: unknown[]): TierUsage[] {
  return values.map((t, i) => decodeTier(t, `tiers[${i}]`));
}

function withOptional<T extends object>(base: T, extra: Record<string, unknown>): T {
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) Object.assign(base, { [k]: v });
  return base;
}

export function decodeRegisterWorkerRequest(value: unknown, what = 'worker registration'): RegisterWorkerRequest {
  const f = Fields.of(value, what);
  const req: RegisterWorkerRequest = {
    id: parseWorkerId(f.string('id')),
    cacheGroup: parseCacheGroup(f.string('cacheGroup')),
    address: parseHostPort(f.string('address'), 'worker address').text,
    hostname: f.string('hostname'),
    domainSocketPath: f.optionalString('domainSocketPath') ?? '',
    startedAt: f.count('startedAt'),
    capacityBytes: f.count('capacityBytes'),
    usedBytes: f.count('usedBytes'),
    blocks: f.count('blocks'),
    tiers: decodeTiers(f.optionalArray('tiers') ?? []),
  };
  if (req.hostname === '') throw new CachefsError('INVALID_ARGUMENT', `invalid ${what}.hostname: expected a non-empty string`);
  return withOptional(req, {
    shortCircuitBytes: f.optionalCount('shortCircuitBytes'),
    instance: f.optionalString('instance'),
    blockSize: f.optionalCount('blockSize'),
    credential: f.optionalString('credential'),
  });
}

export function decodeHeartbeatRequest(value: unknown): HeartbeatRequest {
  const f = Fields.of(value, 'heartbeat');
  const tiers = f.optionalArray('tiers');
  return withOptional<HeartbeatRequest>(
    { id: parseWorkerId(f.string('id')), startedAt: f.count('startedAt'), credential: f.string('credential') },
    {
      instance: f.optionalString('instance'),
      capacityBytes: f.optionalCount('capacityBytes'),
      usedBytes: f.optionalCount('usedBytes'),
      blocks: f.optionalCount('blocks'),
      tiers: tiers === undefined ? undefined : decodeTiers(tiers),
      shortCircuitBytes: f.optionalCount('shortCircuitBytes'),
    },
  );
}

export function decodeWorkerRecord(value: unknown, what = 'worker record'): WorkerRecord {
  const f = Fields.of(value, what);
  const { credential: _never, ...req } = decodeRegisterWorkerRequest(value, what);
  return { ...req, registeredAt: f.count('registeredAt'), lastHeartbeat: f.count('lastHeartbeat'), state: f.oneOf('state', ['alive', 'lost'] as const) };
}

export function decodeWorkerTiming(f: Fields): WorkerTiming {
  return { heartbeatIntervalMs: f.count('heartbeatIntervalMs'), workerTimeoutMs: f.count('workerTimeoutMs') };
}

export function decodeCacheGroupSummary(value: unknown): CacheGroupSummary {
  const f = Fields.of(value, 'cache group');
  return {
    name: f.string('name'),
    alive: f.count('alive'),
    lost: f.count('lost'),
    capacityBytes: f.count('capacityBytes'),
    usedBytes: f.count('usedBytes'),
    blocks: f.count('blocks'),
  };
}

// ---------------------------------------------------------------- namespace cache

export interface NamespaceListResponse {
  objects: UfsObject[];
  prefixes: string[];
  /** Pass back for the next page; absent after the listing's last entry. */
  cursor?: string;
}

export interface NamespaceStatResponse {
  object: UfsObject | null;
}

export interface NamespaceRefreshRequest {
  /** A namespace path, e.g. `/data/train`. */
  path: string;
}

export interface NamespaceRefreshResponse {
  path: string;
  /** Listings dropped: the path's, those below it, its parent's. */
  listings: number;
  /** Stats dropped: the path's and those below it. */
  stats: number;
}

/** A namespace key from a query: relative, '/'-separated, without empty, '.' or '..' segments. */
export function parseNamespaceKey(text: string, what: string, directory: boolean): string {
  if (directory && text === '') return '';
  const bad = (why: string): CachefsError => new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text.slice(0, 256)}': ${why}`);
  const body = directory ? text.slice(0, -1) : text;
  if (directory && !text.endsWith('/')) throw bad("expected '' or a directory key ending in '/', e.g. 'data/train/'");
  if (body === '' || body.startsWith('/') || body.endsWith('/')) throw bad("expected a key relative to the namespace root, e.g. 'data/train/a.tar'");
  if (body.split('/').some((s) => s === '' || s === '.' || s === '..')) throw bad("may not contain empty, '.' or '..' components");
  return text;
}

/** The namespace key of a path such as `/data/train` (`data/train`; '' for `/`). */
export function namespaceKeyOfPath(path: string): string {
  return normalizeMountPath(path).slice(1);
}

/** An object's attributes, from JSON (the master's answer or a stored record). */
export function decodeUfsObject(value: unknown, what = 'object'): UfsObject {
  const f = Fields.of(value, what);
  const mtimeMs = f.raw('mtimeMs');
  if (typeof mtimeMs !== 'number' || !Number.isFinite(mtimeMs)) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what}.mtimeMs: expected a number`);
  return { key: f.string('key'), size: f.count('size'), mtimeMs, etag: f.string('etag') };
}

export function decodeNamespaceList(value: unknown): NamespaceListResponse {
  const f = Fields.of(value, 'namespace listing');
  const cursor = f.optionalString('cursor');
  return {
    objects: f.array('objects').map((o, i) => decodeUfsObject(o, `objects[${i}]`)),
    prefixes: f.array('prefixes').map((p, i) => {
      if (typeof p !== 'string') throw new CachefsError('INVALID_ARGUMENT', `invalid namespace listing prefixes[${i}]: expected a string`);
      return p;
    }),
    ...(cursor === undefined ? {} : { cursor }),
  };
}

export function decodeNamespaceStat(value: unknown): NamespaceStatResponse {
  const object = Fields.of(value, 'namespace stat').raw('object');
  return { object: object === null || object === undefined ? null : decodeUfsObject(object) };
}

export function decodeNamespaceRefreshRequest(value: unknown): NamespaceRefreshRequest {
  return { path: normalizeMountPath(Fields.of(value, 'refresh request').string('path')) };
}

export function decodeNamespaceRefresh(value: unknown): NamespaceRefreshResponse {
  const f = Fields.of(value, 'refresh answer');
  return { path: f.string('path'), listings: f.count('listings'), stats: f.count('stats') };
}

/**
 * `cachefs mount` options parsed once into a typed, validated `MountConfig`. A mount reads
 * one `--ufs`, a cluster's namespace (`--master`), or several sources each at a path of
 * the mount (`namespace`, given by `fluid-config.ts`).
 */
import os from 'node:os';
import path from 'node:path';
import type { ShortCircuitMode } from '../client/cluster-source.js';
import { DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from '../block/block.js';
import { parseDuration, parsePort, parseSize } from '../config/units.js';
import { CachefsError } from '../errors.js';
import type { UfsOptions } from '../ufs/ufs.js';
import { parseUfsUri, type UfsUri } from '../ufs/uri.js';
import { parseHostPort } from '../net/host-port.js';
import { parseCacheGroup } from '../master/api.js';
import { hasClusterSecurityFlags, parseClusterSecurity, type ClusterSecurity, type ClusterSecurityFlags } from './cluster-options.js';
import { defaultCacheDir, parsePairs, readSecretFiles } from './options.js';
import { DIRECTORY_PREFETCH } from '../vfs/directory-prefetch.js';

export interface MountFlags extends ClusterSecurityFlags {
  ufs?: string;
  master?: string;
  cacheGroup: string;
  sharing: boolean;
  workerPort: string;
  advertiseHost?: string;
  shortCircuit?: string;
  hostname?: string;
  foreground?: boolean;
  cacheDir?: string;
  cacheSize: string;
  blockSize: string;
  readahead: string;
  /** Default: --meta-ttl (the kernel caches metadata as long as cachefs trusts it). */
  attrTimeout?: string;
  entryTimeout?: string;
  metaTtl: string;
  metaCacheSize: string;
  allowOther?: boolean;
  nonempty?: boolean;
  /** false with --no-passthrough. */
  passthrough?: boolean;
  /** A count (default MOUNT_DEFAULTS.prefetchFiles), or false with --no-prefetch-files. */
  prefetchFiles?: string | false;
  logLevel: string;
  logFile?: string;
  pidFile?: string;
  metricsPort?: string;
  metricsHost: string;
  s3Endpoint?: string;
  s3Region?: string;
  s3PathStyle?: boolean;
  option: string[];
  optionFromFile: string[];
}

/** A mount of the cluster's namespace: the master's mount table, blocks from the workers of a cache group. */
export interface ClusterConfig {
  master: string;
  cacheGroup: string;
  /** Run an embedded worker that joins the group (without --no-sharing). */
  sharing: boolean;
  workerPort: number;
  advertiseHost?: string;
  shortCircuit: ShortCircuitMode;
  hostname: string;
  /** The cluster secret and TLS, for the master, the workers and the embedded worker. */
  security: ClusterSecurity;
}

/** One source of an embedded mount of several: a UFS shown at `path` of the mount (a Fluid Dataset's mounts). */
export interface NamespaceSource {
  /** Where in the mount, e.g. `/images`. */
  path: string;
  uri: UfsUri;
  /** This source's own options, secrets among them. */
  options: UfsOptions;
}

export interface MountConfig {
  mountpoint: string;
  /**
   * What /proc/mounts shows as the mount's source (mount(8)'s device argument), so that
   * findmnt, df and umount by source work: the UFS URI as given (UFS URIs never carry
   * credentials: `parseUfsUri` refuses userinfo), the URIs of a namespace's sources
   * joined by commas, or `master=HOST:PORT`.
   */
  source: string;
  /** Set for a mount of one UFS with the embedded cache; the cluster mount has `cluster` instead. */
  ufs?: UfsUri;
  /** Set for an embedded mount of several sources, each at its path; `ufsOptions` is then empty. */
  namespace?: readonly NamespaceSource[];
  cluster?: ClusterConfig;
  ufsOptions: UfsOptions;
  foreground: boolean;
  cacheDir: string;
  cacheSize: number;
  blockSize: number;
  readaheadBytes: number;
  attrTimeoutMs: number;
  entryTimeoutMs: number;
  metaTtlMs: number;
  /** Budget of the metadata cache (entries and listings), bytes. */
  metaCacheBytes: number;
  allowOther: boolean;
  /** Mount over a directory that has files in it. */
  nonempty: boolean;
  /** Ask the kernel for FUSE passthrough: opens of files cached whole in one local file are read by the kernel from it. */
  passthrough: boolean;
  /** Small files of a directory being read whole fetched ahead at once (vfs/directory-prefetch.ts); 0: off. */
  prefetchFiles: number;
  logLevel: string;
  logFile?: string;
  pidFile?: string;
  metricsPort?: number;
  metricsHost: string;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** `namespace`, when given, is what the mount reads instead of `--ufs` or `--master`. */
export function parseMountConfig(mountpoint: string | undefined, flags: MountFlags, namespace?: readonly NamespaceSource[]): MountConfig {
  if (mountpoint === undefined) throw new CachefsError('INVALID_ARGUMENT', 'missing MOUNTPOINT: expected cachefs mount MOUNTPOINT --ufs URI, or --fluid-config FILE');
  if (namespace) {
    if (flags.ufs || flags.master) throw new CachefsError('INVALID_ARGUMENT', '--ufs and --master exclude a namespace of sources: the sources are given');
  } else if (!flags.ufs && !flags.master) {
    throw new CachefsError('INVALID_ARGUMENT', 'missing --ufs URI or --master: expected e.g. --ufs s3://bucket/prefix, --ufs file:///srv/data or --master host:19998');
  }
  if (flags.ufs && flags.master) throw new CachefsError('INVALID_ARGUMENT', "--ufs and --master exclude each other: a cluster mount's sources come from the master's mount table");
  if (!flags.master && hasClusterSecurityFlags(flags)) {
    throw new CachefsError('INVALID_ARGUMENT', '--auth-token-file, --insecure and --tls-* are for cluster mounts (--master): a mount of object stores talks to no cluster');
  }
  const ufs = flags.ufs ? parseUfsUri(flags.ufs) : undefined;
  const cluster = flags.master
    ? {
        master: parseHostPort(flags.master, '--master').text,
        cacheGroup: parseCacheGroup(flags.cacheGroup, '--cache-group'),
        sharing: flags.sharing,
        workerPort: parsePort(flags.workerPort, '--worker-port'),
        advertiseHost: flags.advertiseHost,
        shortCircuit: parseShortCircuit(flags.shortCircuit ?? MOUNT_DEFAULTS.shortCircuit),
        hostname: flags.hostname ?? os.hostname(),
        security: parseClusterSecurity(flags, 'mount'),
      }
    : undefined;
  if (!LOG_LEVELS.includes(flags.logLevel)) throw new CachefsError('INVALID_ARGUMENT', `invalid --log-level '${flags.logLevel}': expected one of ${LOG_LEVELS.join(', ')}`);
  const ufsOptions: Record<string, string> = { ...parsePairs(flags.option, '--option'), ...readSecretFiles(flags.optionFromFile) };
  if (flags.s3Endpoint !== undefined) ufsOptions['s3.endpoint'] = flags.s3Endpoint;
  if (flags.s3Region !== undefined) ufsOptions['s3.region'] = flags.s3Region;
  if (flags.s3PathStyle) ufsOptions['s3.pathStyle'] = 'true';
  const blockSize = parseSize(flags.blockSize, '--block-size', { min: MIN_BLOCK_SIZE, max: MAX_BLOCK_SIZE });
  const cacheSize = parseSize(flags.cacheSize, '--cache-size');
  if (cacheSize < blockSize) throw new CachefsError('INVALID_ARGUMENT', `invalid --cache-size '${flags.cacheSize}': must hold at least one block (${flags.blockSize})`);
  const metaTtlMs = parseDuration(flags.metaTtl, '--meta-ttl');
  return {
    mountpoint: path.resolve(mountpoint),
    source: ufs ? ufs.text : namespace ? namespace.map((s) => s.uri.text).join(',') : `master=${cluster!.master}`,
    ufs,
    namespace,
    cluster,
    ufsOptions,
    foreground: !!flags.foreground,
    cacheDir: path.resolve(flags.cacheDir ?? defaultCacheDir()),
    cacheSize,
    blockSize,
    readaheadBytes: parseSize(flags.readahead, '--readahead', { min: 0 }),
    attrTimeoutMs: flags.attrTimeout === undefined ? metaTtlMs : parseDuration(flags.attrTimeout, '--attr-timeout'),
    entryTimeoutMs: flags.entryTimeout === undefined ? metaTtlMs : parseDuration(flags.entryTimeout, '--entry-timeout'),
    metaTtlMs,
    metaCacheBytes: parseSize(flags.metaCacheSize, '--meta-cache-size', { min: 1024 * 1024 }),
    allowOther: !!flags.allowOther,
    nonempty: !!flags.nonempty,
    passthrough: flags.passthrough !== false,
    prefetchFiles: flags.prefetchFiles === false ? 0 : parsePrefetchFiles(flags.prefetchFiles ?? MOUNT_DEFAULTS.prefetchFiles),
    logLevel: flags.logLevel,
    logFile: flags.logFile ? path.resolve(flags.logFile) : undefined,
    pidFile: flags.pidFile ? path.resolve(flags.pidFile) : undefined,
    metricsPort: flags.metricsPort === undefined ? undefined : parsePort(flags.metricsPort, '--metrics-port'),
    metricsHost: flags.metricsHost,
  };
}

export const MOUNT_DEFAULTS = {
  cacheSize: '10GiB',
  blockSize: `${DEFAULT_BLOCK_SIZE / 1024 / 1024}MiB`,
  readahead: '64MiB',
  metaTtl: '5m',
  metaCacheSize: '256MiB',
  logLevel: 'info',
  metricsHost: '0.0.0.0',
  cacheGroup: 'default',
  workerPort: '0',
  shortCircuit: 'uuid',
  prefetchFiles: String(DIRECTORY_PREFETCH.files),
};

/**
 * At most 48: the S3 client keeps 64 connections, and the prefetch never takes the ones
 * readers need (demand reads come first).
 */
const MAX_PREFETCH_FILES = 48;

function parsePrefetchFiles(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n > MAX_PREFETCH_FILES) throw new CachefsError('INVALID_ARGUMENT', `invalid --prefetch-files '${text}': expected a whole number from 0 (off) to ${MAX_PREFETCH_FILES}`);
  return n;
}

function parseShortCircuit(text: string): ShortCircuitMode {
  if (text === 'uuid' || text === 'hostname' || text === 'off') return text;
  throw new CachefsError('INVALID_ARGUMENT', `invalid --short-circuit '${text}': expected uuid, hostname or off`);
}

/**
 * `cachefs master`: runs the master (mount table, worker registry, shared namespace cache) with its
 * state in `--meta-dir`, until SIGTERM or SIGINT, then closes cleanly. Parses
 * and validates the flags into a `MasterConfig` and wires the pieces; the
 * behaviour lives in `master/`.
 */
import { Command, Option } from 'commander';
import { CachefsError } from '../errors.js';
import { parseDuration, parsePort } from '../config/units.js';
import { createLogger, type Logger } from '../log.js';
import { DEFAULT_MASTER_PORT } from '../master/api.js';
import { LmdbMetaStore } from '../master/lmdb-store.js';
import { MasterServer } from '../master/server.js';
import { addClusterSecurityOptions, parseClusterSecurity, warnIfInsecure, type ClusterSecurity, type ClusterSecurityFlags } from './cluster-options.js';
import { runAction } from './exit.js';

export const MASTER_DEFAULTS = {
  metaDir: '/var/lib/cachefs/meta',
  port: String(DEFAULT_MASTER_PORT),
  host: '0.0.0.0',
  workerTimeout: '10s',
  namespaceTtl: '5m',
  logLevel: 'info',
} as const;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export interface MasterFlags extends ClusterSecurityFlags {
  metaDir: string;
  port: string;
  host: string;
  workerTimeout: string;
  namespaceTtl: string;
  logLevel: string;
  logFile?: string;
}

export interface MasterConfig {
  metaDir: string;
  port: number;
  host: string;
  workerTimeoutMs: number;
  namespaceTtlMs: number;
  logLevel: string;
  logFile?: string;
  security: ClusterSecurity;
}

export function parseMasterConfig(flags: MasterFlags): MasterConfig {
  if (flags.metaDir.trim() === '') throw new CachefsError('INVALID_ARGUMENT', 'invalid --meta-dir: expected a directory');
  const workerTimeoutMs = parseDuration(flags.workerTimeout, '--worker-timeout');
  if (workerTimeoutMs <= 0) throw new CachefsError('INVALID_ARGUMENT', `invalid --worker-timeout '${flags.workerTimeout}': must be more than 0`);
  const namespaceTtlMs = parseDuration(flags.namespaceTtl, '--namespace-ttl');
  if (namespaceTtlMs <= 0) throw new CachefsError('INVALID_ARGUMENT', `invalid --namespace-ttl '${flags.namespaceTtl}': must be more than 0`);
  if (!LOG_LEVELS.some((l) => l === flags.logLevel)) {
    throw new CachefsError('INVALID_ARGUMENT', `invalid --log-level '${flags.logLevel}': expected one of ${LOG_LEVELS.join(', ')}`);
  }
  if (flags.host.trim() === '') throw new CachefsError('INVALID_ARGUMENT', 'invalid --host: expected an address to listen on, e.g. 0.0.0.0');
  return {
    metaDir: flags.metaDir,
    port: parsePort(flags.port, '--port'),
    host: flags.host,
    workerTimeoutMs,
    namespaceTtlMs,
    logLevel: flags.logLevel,
    logFile: flags.logFile,
    security: parseClusterSecurity(flags, 'master'),
  };
}

function untilSignalled(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (signal: NodeJS.Signals): void => {
      process.off('SIGTERM', on).off('SIGINT', on);
      // A second signal while closing means: stop now.
      process.once('SIGTERM', () => process.exit(1)).once('SIGINT', () => process.exit(1));
      resolve(signal);
    };
    process.on('SIGTERM', on).on('SIGINT', on);
  });
}

function flush(log: Logger): Promise<void> {
  return new Promise((resolve) => log.flush(() => resolve()));
}

export async function runMaster(config: MasterConfig): Promise<void> {
  const log = createLogger(config.logLevel, config.logFile);
  const store = await LmdbMetaStore.open(config.metaDir);
  let master: MasterServer;
  try {
    const { auth, serverTls: tls } = config.security;
    master = await MasterServer.start({ store, auth, tls, host: config.host, port: config.port, workerTimeoutMs: config.workerTimeoutMs, namespaceTtlMs: config.namespaceTtlMs, logger: log });
  } catch (err) {
    await store.close();
    throw err;
  }
  warnIfInsecure(config.security, log, `anyone who reaches ${config.host}:${master.port} can read and change the mount table and register or remove workers`);
  const signalled = untilSignalled();
  process.stderr.write(`cachefs master: listening on ${config.host}:${master.port}${config.security.serverTls ? ' (TLS)' : ''} (meta dir ${config.metaDir})\n`);
  const signal = await signalled;
  log.info({ signal }, 'stopping master');
  await master.close();
  await flush(log);
}

export function registerMasterCommand(program: Command): void {
  const command = program
    .command('master')
    .description('run the master: mount table, worker registry and shared namespace cache, persisted in --meta-dir')
    .option('--meta-dir <dir>', 'where the master keeps its state (a PVC in Kubernetes)', MASTER_DEFAULTS.metaDir)
    .option('--port <port>', 'port of the API (0 picks one)', MASTER_DEFAULTS.port)
    .option('--host <host>', 'address to listen on', MASTER_DEFAULTS.host)
    .option('--worker-timeout <duration>', 'a worker without a heartbeat for this long is marked lost', MASTER_DEFAULTS.workerTimeout)
    .option('--namespace-ttl <duration>', 'how long the shared namespace cache answers a listing or stat before asking the object store again', MASTER_DEFAULTS.namespaceTtl)
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default(MASTER_DEFAULTS.logLevel))
    .option('--log-file <file>', 'log to this file instead of stderr');
  addClusterSecurityOptions(command, 'master')
    .action(
      runAction(async (flags: MasterFlags) => {
        await runMaster(parseMasterConfig(flags));
        process.exit(0);
      }),
    );
}

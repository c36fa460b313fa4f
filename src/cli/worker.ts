/**
 * `cachefs worker`: a cache worker of a cache group — tiered block store,
 * read-through from the UFS of the master's mount table, HTTP block service,
 * registration and heartbeats. Runs until SIGTERM/SIGINT.
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from '../block/block.js';
import { parseSize } from '../config/units.js';
import { createLogger } from '../log.js';
import { DEFAULT_MASTER_PORT } from '../master/api.js';
import { MasterClient } from '../master/client.js';
import { Metrics } from '../metrics/metrics.js';
import { CachefsError } from '../errors.js';
import { NamespaceSync } from '../master/namespace-sync.js';
import { Worker } from '../worker/worker.js';
import { addClusterSecurityOptions, parseClusterSecurity, warnIfInsecure, type ClusterSecurityFlags } from './cluster-options.js';
import { fail, runAction } from './exit.js';
import { collect } from './options.js';
import { parseGroup } from '../sys/groups.js';
import { checkTiers, defaultAdvertiseHost, parseCacheGroup, parsePort, parseTier, parseWatermarks, parseWorkerId } from './worker-config.js';

interface WorkerFlags extends ClusterSecurityFlags {
  master: string;
  blockSize: string;
  cacheGroup: string;
  tier: string[];
  high: string;
  low: string;
  host: string;
  port: string;
  advertiseHost?: string;
  hostname: string;
  id?: string;
  stateDir: string;
  domainSocketDir: string;
  domainSocketGroup?: string;
  passDescriptors: string;
  locality: string;
  logLevel: string;
  logFile?: string;
}

export function registerWorkerCommand(program: Command): void {
  const command = program
    .command('worker')
    .description('run a cache worker: tiered block store, read-through, block service')
    .requiredOption('--master <host:port>', `the master (port ${DEFAULT_MASTER_PORT} by default)`)
    .option('--cache-group <name>', 'cache group to join', 'default')
    .option('--block-size <size>', "the cache group's block size: the only one served (mounts of the group give the same)", `${DEFAULT_BLOCK_SIZE / 1024 / 1024}MiB`)
    .option('--tier <MEDIUM:DIR:SIZE>', 'a storage tier, repeatable: MEM, SSD or HDD, a directory, a quota', collect, [])
    .option('--high <fraction>', 'evict when a tier is fuller than this', '0.95')
    .option('--low <fraction>', 'evict down to this', '0.7')
    .option('--host <address>', 'address the block service listens on', '0.0.0.0')
    .option('--port <port>', 'block service port', '29999')
    .option('--advertise-host <host>', 'host clients use to reach this worker (default: first non-loopback IPv4)')
    .option('--hostname <name>', 'hostname for locality', os.hostname())
    .option('--id <id>', 'worker id, unique in the cluster (default: <hostname>-<port>)')
    .option('--domain-socket-dir <dir>', "Unix socket dir for co-located clients (a shared hostPath); 'none' disables", '/run/cachefs')
    .option('--domain-socket-group <group>', 'group (name or id) that may use the socket, e.g. a Kubernetes fsGroup, and, with --pass-descriptors off, read block files by path (default: the worker\'s own group)')
    .option('--pass-descriptors <on|off>', 'pass co-located mounts the open descriptors of block files, whose tier dirs and files are then 0700/0600 (off: 0750/0640 of --domain-socket-group, mounts read them by path, or over the socket)', 'on')
    .option('--locality <mode>', 'how clients know they are co-located: uuid (socket file <dir>/<uuid>, visible only where the dir is shared) or hostname (<dir>/worker.sock, same --hostname)', 'uuid')
    .option('--state-dir <dir>', 'where the worker keeps the last mount table it saw and its registration credential', '/var/lib/cachefs/worker')
    .option('--log-level <level>', 'log level', 'info')
    .option('--log-file <file>', 'log to a file instead of stderr');
  addClusterSecurityOptions(command, 'worker')
    .action(
      runAction(async (flags: WorkerFlags) => {
        const security = parseClusterSecurity(flags, 'worker');
        const blockSize = parseSize(flags.blockSize, '--block-size', { min: MIN_BLOCK_SIZE, max: MAX_BLOCK_SIZE });
        const tiers = flags.tier.map(parseTier);
        checkTiers(tiers);
        const { high, low } = parseWatermarks(flags.high, flags.low);
        const port = parsePort(flags.port, '--port');
        const cacheGroup = parseCacheGroup(flags.cacheGroup, '--cache-group');
        const id = parseWorkerId(flags.id ?? `${flags.hostname}-${port}`, '--id');
        const domainSocketPath = socketPathFor(flags.domainSocketDir, flags.locality);
        const group = flags.domainSocketGroup === undefined ? undefined : parseGroup(flags.domainSocketGroup, '--domain-socket-group');
        if (flags.passDescriptors !== 'on' && flags.passDescriptors !== 'off') throw new CachefsError('INVALID_ARGUMENT', `invalid --pass-descriptors '${flags.passDescriptors}': expected on or off`);
        const log = createLogger(flags.logLevel, flags.logFile);
        warnIfInsecure(security, log, `anyone who reaches port ${port} can read blocks of every source in the mount table`);
        const metrics = new Metrics();
        const master = new MasterClient(flags.master, { cacheDir: flags.stateDir, logger: log, auth: security.secret, tls: security.clientTls });
        const namespace = new NamespaceSync(master, log);
        await namespace.start();
        const worker = await Worker.start(
          {
            id,
            cacheGroup,
            tiers,
            high,
            low,
            host: flags.host,
            port,
            advertiseHost: flags.advertiseHost ?? defaultAdvertiseHost(flags.host),
            hostname: flags.hostname,
            domainSocketPath,
            group,
            passDescriptors: flags.passDescriptors === 'on',
            blockSize,
            auth: security.auth,
            tls: security.serverTls,
            stateDir: flags.stateDir,
          },
          {
            master,
            metrics,
            log,
            resolveUfs: namespace.resolver(),
            onFatal: (err) => fail(err),
          },
        );
        await new Promise<void>((resolve) => {
          process.once('SIGTERM', resolve);
          process.once('SIGINT', resolve);
        });
        log.info({ id }, 'worker stopping');
        await worker.close();
        await namespace.close();
        await master.close();
        log.flush();
        process.exit(0);
      }),
    );
}

/** uuid mode: a new `<dir>/<uuid>` each start, so a stale file never matches; hostname mode: `<dir>/worker.sock`. */
function socketPathFor(dir: string, locality: string): string {
  if (locality !== 'uuid' && locality !== 'hostname') throw new CachefsError('INVALID_ARGUMENT', `invalid --locality '${locality}': expected uuid or hostname`);
  if (dir === 'none') return '';
  if (!path.isAbsolute(dir)) throw new CachefsError('INVALID_ARGUMENT', `invalid --domain-socket-dir '${dir}': expected an absolute path or 'none'`);
  return path.join(dir, locality === 'uuid' ? randomUUID() : 'worker.sock');
}

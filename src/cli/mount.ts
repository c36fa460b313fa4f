/**
 * `cachefs mount MOUNTPOINT --ufs URI`: mounts an object store or folder with the
 * embedded block cache (or a cluster's namespace with `--master`).
 *
 * Three processes play a part, all this same command line:
 *
 * - without `--foreground`, the command detaches (`daemon.ts`): it re-runs itself
 *   with `--foreground` in the background and returns 0 once the mount answers;
 * - with `--foreground`, the process is the mount's **supervisor**: it serves the
 *   metrics port, writes the `--pid-file` (its own pid: SIGTERM to it unmounts and
 *   ends both processes) and runs the serving process, replacing it whenever it
 *   dies (`heal/supervisor.ts`);
 * - with the hidden `--supervised`, the process is the **serving process**: it
 *   mounts and answers FUSE requests, its metrics on a private port of 127.0.0.1
 *   that the supervisor merges into its own. On the supervisor's /dev/fuse
 *   (`--device-fd`) it may instead take over the connection of one that died
 *   (`--resume`), or wait to be told to (`--standby`).
 *
 * With `--upgrade`, a mount whose mount point a supervisor serves already asks that
 * supervisor to hand the mount to this build instead (`heal/supervisor-socket.ts`).
 */
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Command, Option } from 'commander';
import { DEVICE_READS } from '../fuse/session.js';
import { MountSupervisor, ServingStartError, type ServingCommand } from '../heal/supervisor.js';
import { SupervisorMetrics, SupervisorMetricsServer } from '../heal/supervisor-metrics.js';
import { askUpgrade, SupervisorSocket } from '../heal/supervisor-socket.js';
import { controlDirFor } from '../worker/control-socket.js';
import { MountAnchor } from '../heal/mount-anchor.js';
import { hasSupervisor, tellSupervisor, toldToTakeOver, whenSupervisorGone } from '../heal/serving-channel.js';
import { createLogger, type Logger } from '../log.js';
import { READY_ENV, reportFailure, reportReady, detach } from './daemon.js';
import { exitCodeOf, oneLine, runAction } from './exit.js';
import { addClusterSecurityOptions } from './cluster-options.js';
import { MOUNT_DEFAULTS, parseMountConfig, type MountConfig, type MountFlags } from './mount-config.js';
import { collect } from './options.js';
import { fluidMountConfig } from './fluid-config.js';
import type { KeptConnection } from './serve-mount.js';
import { CachefsError } from '../errors.js';

export function registerMountCommand(program: Command): void {
  const command = program
    .command('mount')
    .description('mount an object store (s3://, oss://, cosn://) or a folder (file://) read-only, with a local block cache')
    .argument('[mountpoint]', 'an existing empty directory (none with --fluid-config: its targetPath)')
    .option('--ufs <uri>', 'what to mount: s3://bucket/prefix, oss://bucket/prefix, cosn://bucket-appid/prefix, file:///path')
    .option('--fluid-config <file>', "mount what a Fluid ThinRuntime's config.json describes: each Dataset mount at <targetPath>/<name>")
    .option('--master <host:port>', 'mount the cluster namespace of this master (its mount table) instead of one --ufs')
    .option('--cache-group <name>', 'with --master: the cache group whose workers serve blocks', MOUNT_DEFAULTS.cacheGroup)
    .option('--no-sharing', 'with --master: only read from the group; run no embedded worker (for short-lived pods)')
    .option('--worker-port <port>', 'with --master and sharing: port of the embedded worker (0 picks one)', MOUNT_DEFAULTS.workerPort)
    .option('--advertise-host <host>', 'with --master and sharing: host other nodes reach the embedded worker at')
    .option('--short-circuit <mode>', "with --master: read co-located workers' block files directly: uuid (socket file visible), hostname (same --hostname), off", MOUNT_DEFAULTS.shortCircuit)
    .option('--hostname <name>', 'with --master: this node\'s hostname for --short-circuit hostname (default: the system hostname)')
    .option('-f, --foreground', 'stay in the foreground (default: detach once mounted)')
    .option('--cache-dir <dir>', 'where cached blocks are kept (default /var/cache/cachefs as root, ~/.cache/cachefs otherwise)')
    .option('--cache-size <size>', 'cache quota', MOUNT_DEFAULTS.cacheSize)
    .option('--block-size <size>', 'block size, 1MiB to 256MiB', MOUNT_DEFAULTS.blockSize)
    .option('--readahead <size>', 'most bytes fetched ahead of a sequential reader (0 disables)', MOUNT_DEFAULTS.readahead)
    .option('--attr-timeout <duration>', 'how long the kernel caches attributes (default: --meta-ttl)')
    .option('--entry-timeout <duration>', 'how long the kernel caches name lookups (default: --meta-ttl)')
    .option('--meta-ttl <duration>', 'how long cachefs trusts listed metadata before asking the store again', MOUNT_DEFAULTS.metaTtl)
    .option('--meta-cache-size <size>', 'memory for metadata: cached entries and listings (evicted least recently used) and the nodes readdirplus hands the kernel', MOUNT_DEFAULTS.metaCacheSize)
    .option('--nonempty', 'mount even if the mount point has files in it (hidden while mounted)')
    .option('--no-passthrough', 'read every file through cachefs: never let the kernel read cached files itself (FUSE passthrough, kernel 6.9+, as root)')
    .option('--prefetch-files <n>', 'small files (up to a block) of a directory being read whole fetched into the cache ahead of the readers at once, 0 to 48', MOUNT_DEFAULTS.prefetchFiles)
    .option('--no-prefetch-files', "never fetch a directory's small files before they are opened (same as --prefetch-files 0)")
    .option('--upgrade', 'if a cachefs supervisor serves the mount point, hand the mount to this build without unmounting (refused if the source or --allow-other would change)')
    .option('--allow-other', 'let other users access the mount (needs user_allow_other for non-root)')
    .addOption(new Option('--log-level <level>', 'log level').default(MOUNT_DEFAULTS.logLevel))
    .option('--log-file <file>', 'log to a file (default: stderr in the foreground, <cache-dir>/cachefs.log when detached)')
    .option('--pid-file <file>', 'write the pid of the mount supervisor here while mounted (SIGTERM to it unmounts)')
    .option('--metrics-port <port>', 'serve Prometheus metrics on /metrics at this port (0 picks one)')
    .option('--metrics-host <host>', 'address the metrics server listens on', MOUNT_DEFAULTS.metricsHost)
    .option('--s3-endpoint <url>', 'S3 endpoint, e.g. http://127.0.0.1:9000 (same as --option s3.endpoint=...)')
    .option('--s3-region <region>', 'S3 region (default from AWS_REGION, else us-east-1)')
    .option('--s3-path-style', 'address buckets by path, not by virtual host (default when --s3-endpoint is given)')
    .option('--option <key=value>', 'UFS option, repeatable: s3.endpoint, oss.endpoint, cos.region, ...', collect, [])
    .option('--option-from-file <key=path>', 'UFS option read from a file (e.g. a secret), repeatable', collect, [])
    .addOption(new Option('--supervised', 'internal: be the serving process of a supervisor').hideHelp())
    .addOption(new Option('--device-fd <fd>', "internal: the supervisor's /dev/fuse").hideHelp())
    .addOption(new Option('--resume', 'internal: take over the connection on --device-fd from a serving process that died').hideHelp())
    .addOption(new Option('--standby', 'internal: wait to be told to take over the connection on --device-fd').hideHelp());
  addClusterSecurityOptions(command, 'mount')
    .action(
      runAction(async (mountpoint: string | undefined, flags: MountFlags & ServingFlags) => {
        const config = flags.fluidConfig ? fluidMountConfig(flags.fluidConfig, mountpoint, flags) : parseMountConfig(mountpoint, flags);
        if (flags.supervised) return serve(config, keptConnection(flags));
        if (!config.foreground) {
          if (config.logFile) await detach(config.logFile);
          else await detach(path.join(config.cacheDir, 'cachefs.log'), `log file in the cache dir (is --cache-dir ${config.cacheDir} writable?)`);
          return;
        }
        return supervise(config, flags.upgrade === true);
      }),
    );
}

interface ServingFlags {
  supervised?: boolean;
  fluidConfig?: string;
  deviceFd?: string;
  resume?: boolean;
  standby?: boolean;
  upgrade?: boolean;
}

/** The supervisor's descriptor, as its serving process is told of it (`serving-channel.ts`). */
function keptConnection(flags: ServingFlags): KeptConnection | undefined {
  if (flags.deviceFd === undefined) return undefined;
  const deviceFd = Number(flags.deviceFd);
  if (!Number.isInteger(deviceFd) || deviceFd < 3) throw new CachefsError('INVALID_ARGUMENT', `--device-fd '${flags.deviceFd}': expected a descriptor number of 3 or more`);
  return { deviceFd, resume: flags.resume === true, standby: flags.standby === true };
}

/**
 * A standby loads what serving needs (the wiring, the UFS SDK) and waits to be told to take
 * the connection over; undefined once told, 'ended' if signalled or orphaned first.
 */
async function standBy(config: MountConfig, signalled: Promise<void>, log: Logger): Promise<'ended' | undefined> {
  const told = toldToTakeOver();
  await import('./serve-mount.js');
  const { loadUfsBackend } = await import('../ufs/open-ufs.js');
  for (const scheme of new Set([config.ufs?.scheme, ...(config.namespace ?? []).map((n) => n.uri.scheme)])) if (scheme) await loadUfsBackend(scheme);
  log.debug('standing by to take over the connection');
  await tellSupervisor({ kind: 'standing-by' });
  const orphaned = new Promise<void>((resolve) => whenSupervisorGone(resolve));
  return Promise.race([told.then(() => undefined), signalled.then(() => 'ended' as const), orphaned.then(() => 'ended' as const)]);
}

/** What the kernel mount is made with, which an upgrade must leave as it is: the source, allow_other, the owner. */
function fuseOptionsOf(config: MountConfig): string {
  return `source=${config.source},allow_other=${config.allowOther},user_id=${process.getuid?.() ?? 0},group_id=${process.getgid?.() ?? 0}`;
}

/** The supervisor: runs serving processes until SIGTERM/SIGINT/SIGHUP or the mount is ended on purpose. */
async function supervise(config: MountConfig, upgrade: boolean): Promise<void> {
  const log = createLogger(config.logLevel, config.logFile).child({ role: 'supervisor' });
  const runtimeDir = controlDirFor(config.mountpoint);
  // --upgrade, and a supervisor runs this mount already: this build takes its connection over.
  const upgraded = upgrade ? await askUpgrade(runtimeDir, { kind: 'upgrade', command: servingCommand(), fuseOptions: fuseOptionsOf(config) }) : undefined;
  if (upgraded) {
    if (!upgraded.ok) throw new CachefsError(upgraded.code, `cannot upgrade the mount at ${config.mountpoint}: ${upgraded.message}`);
    log.info({ mountpoint: config.mountpoint, servingPid: upgraded.servingPid }, 'upgraded: the running supervisor serves the mount with this build');
    reportReady();
    exitAfterFlush(log, 0);
  }
  const metrics = new SupervisorMetrics();
  const supervisor = new MountSupervisor({ mountpoint: config.mountpoint, command: servingCommand(), log, metrics, fuseOptions: fuseOptionsOf(config) });
  const stop = (): void => void supervisor.stop();
  for (const s of SIGNALS) process.on(s, stop);
  let server: SupervisorMetricsServer | undefined;
  let control: SupervisorSocket | undefined;
  try {
    if (config.metricsPort !== undefined) server = await SupervisorMetricsServer.start(metrics, supervisor, config.metricsPort, config.metricsHost);
    await supervisor.start();
    control = await SupervisorSocket.listen(runtimeDir, (request) => supervisor.upgrade(request), log).catch((err: unknown) => {
      log.warn({ err: (err as Error).message }, 'no supervisor socket: a new build cannot take this mount over');
      return undefined;
    });
  } catch (err) {
    reportFailure(exitCodeOf(err), oneLine(err));
    await supervisor.stop();
    await server?.close();
    // The serving process wrote its one line to our shared stderr already.
    if (err instanceof ServingStartError && err.printed) exitAfterFlush(log, err.exitCode);
    throw err;
  }
  if (config.pidFile) writeFileSync(config.pidFile, `${process.pid}\n`);
  reportReady();
  log.info({ mountpoint: config.mountpoint, servingPid: supervisor.serving()?.pid, metricsPort: server?.port }, 'supervising the mount');
  const why = await supervisor.ended;
  log.info({ mountpoint: config.mountpoint, why }, 'supervision ended');
  await control?.close();
  await server?.close();
  if (config.pidFile) rmSync(config.pidFile, { force: true });
  exitAfterFlush(log, 0);
}

/**
 * V8 flags of the serving process, each unless the node command line or NODE_OPTIONS
 * sets it. A young generation of at most 4 MiB per semi-space, where V8 grows it to 16:
 * a cold 1 GiB read through the embedded cache peaked 17-22 MiB lower (149-156 against
 * 171-172 MiB) and took 16.5-18k page faults against 21.6-28k (each costs ~10 us or more
 * on a VM like this one). Its MB/s was no better: 323-406 against 354-383 in paired
 * rounds of that read alone, 471 against 498 median in seven rounds in compare.sh's
 * setting (10,000 listed files, info logging), within this machine's noise.
 * The old generation grows by a tenth of what a full collection leaves before the next,
 * where V8 lets it grow up to 4x on a heap that collects fast: the metadata cache is a
 * budget of live bytes, and `find` over a folder of 100,000 files (68 MB live after a
 * collection) peaked at 283-350 MB RSS, with a quarter at 173-182 MB, for about the same
 * CPU (13-15 s against 15-18 s of the serving process, load 13-19). A tenth rather than a
 * quarter: a cold `find` of a million files (256 MiB budget, ~230 MB live at its peak)
 * peaked at 343 against 363 MiB, in 51.2 against 52.7 s.
 */
const SERVING_V8_FLAGS = ['--max-semi-space-size=4', '--heap-growing-percent=10'];

/** The node flags of the serving process: ours that `execArgv` and NODE_OPTIONS leave unset, then `execArgv`. */
export function servingNodeFlags(execArgv: readonly string[], nodeOptions = ''): string[] {
  const name = (arg: string): string => arg.split('=')[0]!.replace(/_/g, '-');
  const given = new Set([...execArgv, ...nodeOptions.split(/\s+/)].map(name));
  return [...SERVING_V8_FLAGS.filter((flag) => !given.has(name(flag))), ...execArgv];
}

/**
 * libuv's thread pool of the serving process, unless the environment sets one: Node's 4,
 * plus the threads that always wait in reads of /dev/fuse when the device is read through
 * the pool (fuse/device-poll.ts says when), so that block-file reads keep four. With one device read and a pool of 4, 2000 small files read
 * from the cache went at 1696 files/s median against 1965 before the device was read
 * through the pool; with a pool of 5, 1996 (seven alternating rounds; this machine's
 * figures drift by 2x between rounds).
 */
const SERVING_THREADPOOL_SIZE = String(4 + DEVICE_READS);

/**
 * glibc's malloc arenas of the serving process, unless the environment sets them: two
 * rather than eight per core (a thread that finds its arena locked makes another, up to
 * that bound: the thread pool, the folder thread and V8's). A cold and a warm `find` of a
 * million files (256 MiB budget) peaked at 347-352 MiB against 359-361 with glibc's own.
 */
const SERVING_MALLOC_ARENAS = '2';

/** The serving process's environment: `env` less the supervisor's ready pipe, with our thread pool and malloc arenas unless it sets them. */
export function servingEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out = { ...env };
  // The ready pipe of `detach()` is the supervisor's to answer; the serving process reports over IPC.
  delete out[READY_ENV];
  out.UV_THREADPOOL_SIZE ??= SERVING_THREADPOOL_SIZE;
  out.MALLOC_ARENA_MAX ??= SERVING_MALLOC_ARENAS;
  return out;
}

/** This command line again, as the serving process. */
function servingCommand(): ServingCommand {
  const env = servingEnv(process.env);
  const flags = servingNodeFlags(process.execArgv, env.NODE_OPTIONS);
  return { file: process.execPath, args: [...flags, process.argv[1]!, ...process.argv.slice(2), '--supervised'], env };
}

/** The serving process: mounts, tells the supervisor, serves until signalled or unmounted from outside. */
async function serve(config: MountConfig, kept: KeptConnection | undefined): Promise<void> {
  const log = createLogger(config.logLevel, config.logFile).child({ role: 'serving' });
  // Listening before mounting: a stop while mounting unmounts right after, instead of killing us mid-mount.
  const signalled = untilSignalled();
  if (kept?.standby) {
    if ((await standBy(config, signalled, log)) === 'ended') exitAfterFlush(log, 0);
    kept = { ...kept, resume: true, standby: false };
    log.info('the standby takes the connection over');
  }
  whenSupervisorGone(() => log.warn('the supervisor is gone: serving on without one'));
  let mount;
  try {
    // Loaded here, not at the top: the supervisor never needs the filesystem, the backends or their SDKs.
    const { serveMount } = await import('./serve-mount.js');
    const metricsPort = config.metricsPort === undefined ? undefined : 0;
    mount = await serveMount({ ...config, metricsPort, metricsHost: '127.0.0.1', pidFile: undefined }, log, kept);
  } catch (err) {
    await tellSupervisor({ kind: 'failed', exitCode: exitCodeOf(err), message: oneLine(err) });
    throw err;
  }
  const handOver = kept ? new Promise<void>((resolve) => process.once('SIGUSR2', resolve)) : new Promise<void>(() => undefined);
  await tellSupervisor({ kind: 'ready', metricsPort: mount.metricsPort });
  const why = await Promise.race([signalled.then(() => 'signal'), mount.gone.then(() => 'unmounted from outside'), handOver.then(() => 'upgrade')]);
  if (why === 'upgrade') {
    // The supervisor hands the connection to a serving process of a new build: the mount and the runtime dir stay.
    log.info({ mountpoint: mount.mountpoint }, 'draining: the connection goes to a serving process of a new build');
    await mount.drain();
    exitAfterFlush(log, HANDED_OVER_EXIT);
  }
  log.info({ mountpoint: mount.mountpoint, why }, 'unmounting');
  await mount.close();
  // A supervisor that was killed could not release its anchor of this mount.
  if (!hasSupervisor()) await MountAnchor.sweepOrphans(log);
  exitAfterFlush(log, 0);
}

const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;
/** A serving process that handed its connection on exits so (EX_TEMPFAIL): not 0, which would end supervision. */
const HANDED_OVER_EXIT = 75;

/** Resolves on SIGTERM, SIGINT or SIGHUP. */
function untilSignalled(): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      for (const s of SIGNALS) process.off(s, done);
      resolve();
    };
    for (const s of SIGNALS) process.on(s, done);
  });
}

function exitAfterFlush(log: { flush(): void }, code: number): never {
  log.flush();
  process.exit(code);
}

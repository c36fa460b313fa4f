/**
 * `cachefs mount MOUNTPOINT --ufs URI`: mounts an object store or folder with the
 * embedded block cache. Without `--foreground` it detaches and returns once the
 * mount answers.
 */
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Command, Option } from 'commander';
import { createLogger } from '../log.js';
import { reportFailure, reportReady, detach } from './daemon.js';
import { exitCodeOf, oneLine, runAction } from './exit.js';
import { MOUNT_DEFAULTS, parseMountConfig, type MountFlags } from './mount-config.js';
import { collect } from './options.js';
import { serveMount } from './serve-mount.js';

export function registerMountCommand(program: Command): void {
  program
    .command('mount')
    .description('mount an object store (s3://, oss://, cosn://) or a folder (file://) read-only, with a local block cache')
    .argument('<mountpoint>', 'an existing empty directory')
    .option('--ufs <uri>', 'what to mount: s3://bucket/prefix, oss://bucket/prefix, cosn://bucket-appid/prefix, file:///path')
    .option('--master <host:port>', 'mount the cluster namespace of this master (its mount table) instead of one --ufs')
    .option('--cache-group <name>', 'with --master: the cache group whose workers serve blocks', MOUNT_DEFAULTS.cacheGroup)
    .option('--no-sharing', 'with --master: only read from the group; run no embedded worker (for short-lived pods)')
    .option('--worker-port <port>', 'with --master and sharing: port of the embedded worker (0 picks one)', MOUNT_DEFAULTS.workerPort)
    .option('--advertise-host <host>', 'with --master and sharing: host other nodes reach the embedded worker at')
    .option('-f, --foreground', 'stay in the foreground (default: detach once mounted)')
    .option('--cache-dir <dir>', 'where cached blocks are kept (default /var/cache/cachefs as root, ~/.cache/cachefs otherwise)')
    .option('--cache-size <size>', 'cache quota', MOUNT_DEFAULTS.cacheSize)
    .option('--block-size <size>', 'block size, 1MiB to 256MiB', MOUNT_DEFAULTS.blockSize)
    .option('--readahead <size>', 'most bytes fetched ahead of a sequential reader (0 disables)', MOUNT_DEFAULTS.readahead)
    .option('--attr-timeout <duration>', 'how long the kernel caches attributes', MOUNT_DEFAULTS.attrTimeout)
    .option('--entry-timeout <duration>', 'how long the kernel caches name lookups', MOUNT_DEFAULTS.entryTimeout)
    .option('--meta-ttl <duration>', 'how long cachefs trusts listed metadata before asking the store again', MOUNT_DEFAULTS.metaTtl)
    .option('--allow-other', 'let other users access the mount (needs user_allow_other for non-root)')
    .addOption(new Option('--log-level <level>', 'log level').default(MOUNT_DEFAULTS.logLevel))
    .option('--log-file <file>', 'log to a file (default: stderr in the foreground, <cache-dir>/cachefs.log when detached)')
    .option('--pid-file <file>', 'write the pid of the serving process here while mounted')
    .option('--metrics-port <port>', 'serve Prometheus metrics on /metrics at this port (0 picks one)')
    .option('--metrics-host <host>', 'address the metrics server listens on', MOUNT_DEFAULTS.metricsHost)
    .option('--s3-endpoint <url>', 'S3 endpoint, e.g. http://127.0.0.1:9000 (same as --option s3.endpoint=...)')
    .option('--s3-region <region>', 'S3 region (default from AWS_REGION, else us-east-1)')
    .option('--s3-path-style', 'address buckets by path, not by virtual host (default when --s3-endpoint is given)')
    .option('--option <key=value>', 'UFS option, repeatable: s3.endpoint, oss.endpoint, cos.region, ...', collect, [])
    .option('--option-from-file <key=path>', 'UFS option read from a file (e.g. a secret), repeatable', collect, [])
    .action(
      runAction(async (mountpoint: string, flags: MountFlags) => {
        const config = parseMountConfig(mountpoint, flags);
        if (!config.foreground) {
          if (config.logFile) await detach(config.logFile);
          else await detach(path.join(config.cacheDir, 'cachefs.log'), `log file in the cache dir (is --cache-dir ${config.cacheDir} writable?)`);
          return;
        }
        const log = createLogger(config.logLevel, config.logFile);
        let mount;
        try {
          mount = await serveMount(config, log);
        } catch (err) {
          reportFailure(exitCodeOf(err), oneLine(err));
          throw err;
        }
        if (config.pidFile) writeFileSync(config.pidFile, `${process.pid}\n`);
        reportReady();
        const why = await Promise.race([untilSignalled().then(() => 'signal'), mount.gone.then(() => 'unmounted from outside')]);
        log.info({ mountpoint: mount.mountpoint, why }, 'unmounting');
        await mount.close();
        if (config.pidFile) rmSync(config.pidFile, { force: true });
        log.flush();
        process.exit(0);
      }),
    );
}

/** Resolves on SIGTERM, SIGINT or SIGHUP. */
function untilSignalled(): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.off(s, done);
      resolve();
    };
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, done);
  });
}

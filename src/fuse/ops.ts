/**
 * The thin fuse-native adapter: each FUSE op calls the `Filesystem`, replies on
 * success, maps a failure to an errno in one place and counts it. No decisions
 * are made here.
 */
import type { FuseOps, FuseStat } from 'fuse-native';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { Attr } from '../vfs/entry.js';
import type { Filesystem } from '../vfs/filesystem.js';
import { errnoName, errnoOf, isFailure } from './errno.js';

const WRITE_OPS = ['write', 'create', 'mkdir', 'mknod', 'unlink', 'rmdir', 'rename', 'link', 'symlink', 'truncate', 'ftruncate', 'chmod', 'chown', 'utimens', 'setxattr', 'removexattr'] as const;

export function fuseOps(fs: Filesystem, metrics: Metrics, log: Logger): FuseOps {
  const opMetrics = new Map<string, { count: { inc(): void }; seconds: { observe(v: number): void } }>();
  /** Counts the op and returns a function that records its duration when it is answered. */
  const count = (op: string): (() => void) => {
    let m = opMetrics.get(op);
    if (!m) opMetrics.set(op, (m = { count: metrics.fuseOps.labels(op), seconds: metrics.fuseOpSeconds.labels(op) }));
    m.count.inc();
    const t0 = process.hrtime.bigint();
    const seconds = m.seconds;
    return () => seconds.observe(Number(process.hrtime.bigint() - t0) / 1e9);
  };
  /** Reports a failure as a negative errno, counted by op and errno name. */
  const failed = (op: string, path: string, err: unknown): number => {
    const errno = errnoOf(err);
    const name = errnoName(errno);
    metrics.fuseErrors.inc({ op, errno: name });
    if (isFailure(err)) log.warn({ op, path, errno: name, err: (err as Error).message }, 'FUSE op failed');
    else log.debug({ op, path, errno: name }, 'FUSE op answered with an error');
    return -errno;
  };
  /** Runs an op whose reply carries no value other than the result; a result that is not a promise is answered at once. */
  const run = <T>(op: string, path: string, work: () => Promise<T> | T, reply: (value: T) => void, fail: (errno: number) => void): void => {
    const done = count(op);
    const ok = (value: T): void => {
      done();
      reply(value);
    };
    const bad = (err: unknown): void => {
      done();
      fail(failed(op, path, err));
    };
    let result: Promise<T> | T;
    try {
      result = work();
    } catch (err) {
      return bad(err);
    }
    if (result instanceof Promise) result.then(ok, bad);
    else ok(result);
  };

  const ops: FuseOps = {
    getattr: (path, cb) => run('getattr', path, () => fs.getattr(path), (a) => cb(0, toStat(a)), (e) => cb(e)),
    fgetattr: (path, _fd, cb) => run('getattr', path, () => fs.getattr(path), (a) => cb(0, toStat(a)), (e) => cb(e)),
    access: (path, mode, cb) => run('access', path, () => fs.access(path, mode), () => cb(0), (e) => cb(e)),
    statfs: (path, cb) => run('statfs', path, () => fs.statfs(), (s) => cb(0, s), (e) => cb(e)),
    readdir: (path, cb) =>
      run('readdir', path, () => fs.readdir(path), (entries) => cb(0, entries.map((e) => e.name), entries.map((e) => toStat(e.attr))), (e) => cb(e)),
    open: (path, flags, cb) => run('open', path, () => fs.open(path, flags), (fh) => cb(0, fh), (e) => cb(e)),
    read: (path, fh, buf, len, pos, cb) => run('read', path, () => fs.read(fh, buf, len, pos), (n) => cb(n), (e) => cb(e)),
    release: (path, fh, cb) => run('release', path, () => fs.release(fh), () => cb(0), (e) => cb(e)),
  };
  for (const op of WRITE_OPS) {
    ops[op] = ((path: string, ...rest: unknown[]) => {
      const cb = rest[rest.length - 1] as (errno: number) => void;
      run(op, path, () => fs.refuseWrite(path), () => cb(0), (e) => cb(e));
    }) as FuseOps[string];
  }
  return ops;
}

function toStat(a: Attr): FuseStat {
  const t = new Date(a.mtimeMs);
  return { mode: a.mode, uid: a.uid, gid: a.gid, size: a.size, nlink: a.nlink, blksize: a.blksize, blocks: a.blocks, atime: t, mtime: t, ctime: t };
}

/**
 * `cachefs load PATH...`: warms the cache with a dataset before it is read. The CLI
 * walks the paths and cuts the objects into blocks; each block is filled where it
 * will be read — in a cluster (`--master`) by its owner in rendezvous order, which
 * fetches it from the UFS itself with `--threads` fetches in flight (the CLI moves no
 * data); in an embedded mount (`--mount`) by the mount, over its control socket.
 * Blocks their owner holds already are skipped, so a second load is a no-op.
 *
 * A block that fails is tried again (three times in all, unless the failure is one no
 * retry mends: gone, changed, refused); a worker that stops answering is dropped and
 * its blocks go to the next worker in rendezvous order, where reads will look for them
 * too. The failed files are listed and the exit code is non-zero.
 *
 * `--dry-run` prints the totals; `--evict` drops the dataset's blocks from every
 * server instead.
 */
import { Command } from 'commander';
import type { BlockRef } from '../block/block.js';
import { CachefsError, type ErrorCode } from '../errors.js';
import { MAX_FILL_BLOCKS, MAX_IDS, type FillObject, type FillResult } from '../net/dataset-protocol.js';
import { addClusterSecurityOptions, type ClusterSecurityFlags } from './cluster-options.js';
import { collectDataset, openClusterTarget, openMountTarget, ownedAndHeld, type Dataset, type DatasetServer, type DatasetTarget } from './dataset.js';
import { runAction } from './exit.js';
import { LoadProgress } from './load-progress.js';
import { DEFAULT_MASTER } from './mount-table.js';
import { humanSize } from './report.js';

/** Fetches in flight per worker: object stores answer many parallel GETs, each slow to start. */
const DEFAULT_THREADS = 64;
/** A block is tried this many times in all before it counts as failed. */
const MAX_TRIES = 3;
/** Failures every retry, on any server, would meet again. */
const FINAL: ReadonlySet<ErrorCode> = new Set(['NOT_FOUND', 'STALE', 'INVALID_ARGUMENT', 'ACCESS_DENIED', 'BUCKET_NOT_FOUND']);
/** Answers that stop the whole load: every server would give them. */
const FATAL: ReadonlySet<ErrorCode> = new Set(['UNAUTHENTICATED', 'INVALID_ARGUMENT', 'ACCESS_DENIED']);

interface LoadFlags extends ClusterSecurityFlags {
  master?: string;
  mount?: string;
  cacheGroup: string;
  threads: string;
  json?: boolean;
  dryRun?: boolean;
  evict?: boolean;
}

export interface BlockFailure {
  ref: BlockRef;
  path: string;
  code: ErrorCode;
  message: string;
}

export function registerLoadCommand(program: Command): void {
  const command = program
    .command('load')
    .description('load a dataset into the cache: each block filled by the worker that will serve it (or by an embedded mount)')
    .argument('<path...>', 'files or directories: namespace paths (/data/train) with --master, paths inside the mount with --mount')
    .option('--master <host:port>', `the master of the cluster to load into (default ${DEFAULT_MASTER})`)
    .option('--cache-group <name>', 'the cache group to load into', 'default')
    .option('--mount <mountpoint>', 'load into the embedded mount (--ufs) at this mount point instead, through its control socket')
    .option('--threads <n>', 'block fetches in flight per worker', String(DEFAULT_THREADS))
    .option('--dry-run', 'print what would be loaded, load nothing')
    .option('--evict', "drop the dataset's blocks from the cache instead of loading them")
    .option('--json', 'print JSON lines (the default when stdout is not a terminal)');
  addClusterSecurityOptions(command, 'admin').action(
    runAction(async (paths: string[], flags: LoadFlags) => {
      const threads = parseThreads(flags.threads);
      if (flags.mount !== undefined && flags.master !== undefined) throw new CachefsError('INVALID_ARGUMENT', '--mount and --master exclude each other: load into an embedded mount or into a cluster');
      if (flags.dryRun && flags.evict) throw new CachefsError('INVALID_ARGUMENT', '--dry-run and --evict exclude each other');
      const json = flags.json === true || !process.stdout.isTTY;
      const target = flags.mount !== undefined ? await openMountTarget(flags.mount) : await openClusterTarget({ ...flags, master: flags.master ?? DEFAULT_MASTER });
      try {
        const dataset = await collectDataset(target, paths);
        if (flags.evict) return await evict(target, dataset, json);
        await load(target, dataset, { threads, json, dryRun: flags.dryRun === true });
      } finally {
        await target.close();
      }
    }),
  );
}

function parseThreads(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > 1024) throw new CachefsError('INVALID_ARGUMENT', `invalid --threads '${text}': expected a whole number from 1 to 1024`);
  return n;
}

function print(json: boolean, record: Record<string, unknown>, text: string): void {
  process.stdout.write(json ? `${JSON.stringify(record)}\n` : `${text}\n`);
}

async function load(target: DatasetTarget, dataset: Dataset, opts: { threads: number; json: boolean; dryRun: boolean }): Promise<void> {
  const holdings = await ownedAndHeld(target, dataset);
  const todo: BlockRef[] = [];
  const perServer: Record<string, { blocks: number; bytes: number; cachedBlocks: number }> = {};
  for (const [server, h] of holdings) {
    const row = { blocks: 0, bytes: 0, cachedBlocks: h.held.size };
    for (const ref of h.owned) {
      if (h.held.has(ref.id)) continue;
      todo.push(ref);
      row.blocks++;
      row.bytes += ref.length;
    }
    perServer[server.id] = row;
  }
  const bytes = todo.reduce((n, r) => n + r.length, 0);
  const files = new Set(todo.map((r) => r.object)).size;
  const plan = { event: 'plan', target: target.what, files: dataset.files.length, blocks: dataset.blocks, bytes: dataset.bytes, cachedBlocks: dataset.blocks - todo.length, toLoad: { files, blocks: todo.length, bytes }, servers: perServer };
  const planText =
    `dataset: ${dataset.files.length} files, ${dataset.blocks} blocks, ${humanSize(dataset.bytes)} in ${target.what}; ` +
    `cached already: ${dataset.blocks - todo.length} blocks; to load: ${files} files, ${todo.length} blocks, ${humanSize(bytes)}`;
  if (opts.dryRun) {
    print(opts.json, { ...plan, dryRun: true }, `${planText}\n${Object.entries(perServer).map(([id, r]) => `  ${id}: ${r.blocks} blocks (${humanSize(r.bytes)}) to load, ${r.cachedBlocks} cached`).join('\n')}`);
    return;
  }
  if (todo.length === 0) {
    const message = `nothing to load: all ${dataset.blocks} blocks (${humanSize(dataset.bytes)}) of ${dataset.files.length} files are cached already`;
    print(opts.json, { event: 'done', nothingToLoad: true, files: dataset.files.length, blocks: dataset.blocks, bytes: dataset.bytes, message }, message);
    return;
  }
  if (opts.json) print(true, plan, planText);
  const progress = new LoadProgress({ files, blocks: todo.length, bytes }, todo, opts.json ? 'json' : 'bar');
  progress.start();
  let failures: BlockFailure[];
  try {
    failures = await fill(target, todo, opts.threads, progress, pathsOf(dataset));
  } finally {
    progress.stop();
  }
  const c = progress.counts();
  const filledBytes = c.bytes;
  print(
    opts.json,
    { event: 'done', ...c, filesTotal: files, blocksTotal: todo.length, bytesTotal: bytes, failedFiles: [...new Set(failures.map((f) => f.path))] },
    `loaded ${c.blocks - c.failedBlocks} of ${todo.length} blocks (${humanSize(filledBytes)}) of ${files} files in ${(c.elapsedMs / 1000).toFixed(1)}s, ${c.mbPerSec} MB/s` + (c.failedBlocks > 0 ? `; ${c.failedBlocks} blocks failed` : ''),
  );
  if (failures.length > 0) {
    const byPath = new Map<string, BlockFailure>();
    for (const f of failures) if (!byPath.has(f.path)) byPath.set(f.path, f);
    for (const f of byPath.values()) process.stderr.write(`failed: ${f.path}: ${f.code}: ${f.message}\n`);
    const first = [...byPath.keys()].slice(0, 3).join(', ');
    throw new CachefsError('IO', `${failures.length} blocks of ${byPath.size} files failed to load: ${first}${byPath.size > 3 ? ', ...' : ''}`);
  }
}

function pathsOf(dataset: Dataset): Map<BlockRef['object'], string> {
  return new Map(dataset.files.map((f) => [f.object, f.path]));
}

/**
 * Has each block filled by the first live server in its order, `threads` at once per
 * server; resolves with the blocks that failed for good.
 */
async function fill(target: DatasetTarget, blocks: readonly BlockRef[], threads: number, progress: LoadProgress, paths: Map<BlockRef['object'], string>): Promise<BlockFailure[]> {
  const dead = new Set<DatasetServer>();
  const queues = new Map<DatasetServer, BlockRef[]>(target.servers.map((s) => [s, []]));
  const running = new Map<DatasetServer, Promise<void>>();
  const tries = new Map<string, number>();
  const failures: BlockFailure[] = [];
  let fatal: CachefsError | undefined;
  // Large enough that a chunk's tail, run with fewer fetches than `threads`, is a small part of it.
  const chunk = Math.min(MAX_FILL_BLOCKS, Math.max(256, threads * 8));

  const failed = (ref: BlockRef, code: ErrorCode, message: string): void => {
    failures.push({ ref, path: paths.get(ref.object) ?? ref.object.key, code, message });
    progress.ended(ref, 'failed');
  };
  const assign = (ref: BlockRef): void => {
    const server = target.order(ref.id).find((s) => !dead.has(s));
    if (!server) return failed(ref, 'UNREACHABLE', 'no live server left to fill it');
    queues.get(server)!.push(ref);
    kick(server);
  };
  const kick = (server: DatasetServer): void => {
    if (!running.has(server)) running.set(server, drain(server).finally(() => running.delete(server)));
  };
  const settle = (server: DatasetServer, ref: BlockRef, r: FillResult): void => {
    if (r.outcome !== 'failed') return progress.ended(ref, r.outcome);
    const n = (tries.get(ref.id) ?? 0) + 1;
    tries.set(ref.id, n);
    const code = r.code ?? 'IO';
    if (n < MAX_TRIES && !FINAL.has(code)) queues.get(server)!.push(ref);
    else failed(ref, code, r.message ?? 'failed');
  };
  const drain = async (server: DatasetServer): Promise<void> => {
    const queue = queues.get(server)!;
    while (queue.length > 0 && !dead.has(server) && !fatal) {
      const batch = queue.splice(0, chunk);
      const pending = new Map(batch.map((r) => [r.id, r]));
      try {
        await server.link.fill({ bs: target.blockSize, threads, objects: fillObjects(batch) }, (r) => {
          const ref = pending.get(r.id);
          if (!ref) return;
          pending.delete(r.id);
          settle(server, ref, r);
        });
        for (const ref of pending.values()) settle(server, ref, { id: ref.id, key: ref.object.key, index: ref.index, bytes: ref.length, outcome: 'failed', code: 'IO', message: `${server.link.name} did not report the block` });
      } catch (err) {
        const e = err instanceof CachefsError ? err : new CachefsError('IO', (err as Error).message);
        if (FATAL.has(e.code)) {
          fatal = e;
          return;
        }
        dead.add(server);
        const left = [...pending.values(), ...queue.splice(0)];
        progress.note(`${server.link.name} failed (${e.message}): its ${left.length} blocks go to the next workers in rendezvous order`);
        for (const ref of left) assign(ref);
      }
    }
  };

  for (const ref of blocks) assign(ref);
  for (;;) {
    await Promise.all([...running.values()]);
    // Blocks queued to a server as its drain was ending (a retry, a lost worker's share) start it again.
    const idle = [...queues].filter(([s, q]) => q.length > 0 && !dead.has(s) && !running.has(s)).map(([s]) => s);
    if (fatal || (idle.length === 0 && running.size === 0)) break;
    for (const s of idle) kick(s);
  }
  if (fatal) throw fatal;
  return failures;
}

/** Blocks grouped by object, as a fill request names them. */
function fillObjects(refs: readonly BlockRef[]): FillObject[] {
  const byObject = new Map<BlockRef['object'], FillObject>();
  for (const ref of refs) {
    let o = byObject.get(ref.object);
    if (!o) byObject.set(ref.object, (o = { ...ref.object, indexes: [] }));
    o.indexes.push(ref.index);
  }
  return [...byObject.values()];
}

async function evict(target: DatasetTarget, dataset: Dataset, json: boolean): Promise<void> {
  const ids = dataset.files.flatMap((f) => f.blocks.map((r) => r.id));
  let blocks = 0;
  let bytes = 0;
  let pinned = 0;
  // Every server, not only owners: a block may sit on the worker that stood in for a lost owner.
  for (const server of target.servers) {
    for (let i = 0; i < ids.length; i += MAX_IDS) {
      const r = await server.link.evict(ids.slice(i, i + MAX_IDS));
      blocks += r.blocks;
      bytes += r.bytes;
      pinned += r.pinned;
    }
  }
  print(json, { event: 'evicted', files: dataset.files.length, blocks, bytes, pinned }, `evicted ${blocks} blocks (${humanSize(bytes)}) of ${dataset.files.length} files from ${target.what}${pinned > 0 ? `; ${pinned} blocks kept, pinned by readers` : ''}`);
}

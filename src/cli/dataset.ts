/**
 * What `cachefs load` and `report --dataset` share: the target a dataset is loaded
 * into — a cache group of a master (its live workers, each block owned by the first in
 * rendezvous order, as reads go) or one embedded mount (its control socket) — the
 * dataset itself (the objects at or below the given paths, cut into blocks), and the
 * inventory of which blocks their owners hold.
 *
 * A cluster dataset is walked by `walkObjects` through the master's shared namespace
 * cache, as a cluster mount lists (`SharedNamespaceUfs`: so a load fills that cache for
 * the mounts that follow, and a walk after it sends the store no LIST), with the mount
 * table's backends opened here for when the master does not answer; an embedded mount
 * walks its own UFS, which only it holds the credentials of.
 */
import path from 'node:path';
import { blocksCovering, type BlockRef, type ObjectRef } from '../block/block.js';
import { DatasetLink } from '../client/dataset-link.js';
import { WorkerRing } from '../client/worker-ring.js';
import { CachefsError } from '../errors.js';
import { silentLogger } from '../log.js';
import { NamespaceSync } from '../master/namespace-sync.js';
import { SharedNamespaceUfs } from '../master/shared-namespace-ufs.js';
import { authHeaders } from '../net/auth.js';
import { MAX_IDS, type WalkedObject } from '../net/dataset-protocol.js';
import { parseHostPort } from '../net/host-port.js';
import { NAMESPACE_MOUNT_ID } from '../ufs/namespace.js';
import type { Ufs } from '../ufs/ufs.js';
import { walkObjects } from '../ufs/walk.js';
import { controlEndpoint } from '../worker/control-socket.js';
import { parseCacheGroup } from '../master/api.js';
import { parseClusterSecurity } from './cluster-options.js';
import { adminClient, type MasterFlag } from './mount-table.js';

/** A server blocks are filled into: a worker, or an embedded mount. */
export interface DatasetServer {
  id: string;
  link: DatasetLink;
}

export interface DatasetTarget {
  /** For messages: `cache group g of master 127.0.0.1:19998`, `mount /mnt/data`. */
  readonly what: string;
  readonly blockSize: number;
  readonly servers: readonly DatasetServer[];
  /** The servers of a block, its owner first, then who takes over in order. */
  order(blockId: string): DatasetServer[];
  /** The objects at or below one path of the dataset (as the user gave it). */
  objects(userPath: string): AsyncIterable<WalkedObject>;
  /** The path a user knows an object by. */
  display(key: string): string;
  close(): Promise<void>;
}

export interface DatasetFile {
  /** The path as the user sees it: `/data/train/x.bin` (namespace) or under the mount point. */
  path: string;
  object: ObjectRef;
  blocks: BlockRef[];
}

export interface Dataset {
  files: DatasetFile[];
  blocks: number;
  bytes: number;
}

export interface ClusterTargetFlags extends MasterFlag {
  cacheGroup: string;
}

/** The live workers of a cache group, and the master's namespace to walk. */
export async function openClusterTarget(flags: ClusterTargetFlags): Promise<DatasetTarget> {
  const cacheGroup = parseCacheGroup(flags.cacheGroup, '--cache-group');
  const { secret, clientTls } = parseClusterSecurity(flags, 'admin');
  const master = adminClient(flags);
  try {
    const { workers } = await master.listWorkers({ cacheGroup, state: 'alive' });
    if (workers.length === 0) throw new CachefsError('UNREACHABLE', `cache group '${cacheGroup}' of master ${master.address.text} has no live workers to load into`);
    const sizes = new Set(workers.map((w) => w.blockSize).filter((b) => b !== undefined));
    if (sizes.size > 1) throw new CachefsError('CONFLICT', `the workers of cache group '${cacheGroup}' serve different block sizes (${[...sizes].join(', ')}): give them one --block-size`);
    // Its walk asks the master's namespace cache and the workers fetch: a backend (and its SDK) is opened only if the master does not answer.
    const namespace = new NamespaceSync(master, silentLogger, undefined, 'on-use');
    await namespace.start();
    const listing = new SharedNamespaceUfs(master, namespace.ufs, silentLogger);
    const servers = workers.map((w) => {
      const { host, port } = parseHostPort(w.address, `the address of worker ${w.id}`);
      return { id: w.id, link: new DatasetLink({ host, port }, `worker ${w.id} (${w.address})`, { headers: authHeaders(secret), tls: clientTls }) };
    });
    const ring = new WorkerRing(servers);
    let blockSize = [...sizes][0];
    blockSize ??= (await servers[0]!.link.inventory([])).blockSize;
    return {
      what: `cache group '${cacheGroup}' of master ${master.address.text}`,
      blockSize,
      servers,
      order: (id) => ring.order(id),
      objects: (userPath) => namespaceObjects(listing, namespaceKey(userPath)),
      display: (key) => `/${key}`,
      close: async () => {
        await namespace.close();
        await master.close();
      },
    };
  } catch (err) {
    await master.close();
    throw err;
  }
}

async function* namespaceObjects(ufs: Ufs, key: string): AsyncGenerator<WalkedObject> {
  for await (const o of walkObjects(ufs, key)) yield { mount: NAMESPACE_MOUNT_ID, key: o.key, etag: o.etag, size: o.size };
}

/** The namespace key of a path given to `--master` (`/data/train` → `data/train`). */
function namespaceKey(userPath: string): string {
  if (!userPath.startsWith('/')) throw new CachefsError('INVALID_ARGUMENT', `invalid path '${userPath}': expected an absolute path of the cluster namespace, e.g. /data/train`);
  return path.posix.normalize(userPath).replace(/^\/+|\/+$/g, '');
}

/** The embedded mount at `mountpoint`, through its control socket. */
export async function openMountTarget(mountpoint: string): Promise<DatasetTarget> {
  const root = path.resolve(mountpoint);
  const { socketPath, authorization } = await controlEndpoint(root);
  const server = { id: `mount ${root}`, link: new DatasetLink({ socketPath }, `the mount at ${root}`, { headers: { authorization } }) };
  const { blockSize } = await server.link.inventory([]);
  return {
    what: `mount ${root}`,
    blockSize,
    servers: [server],
    order: () => [server],
    objects: (userPath) => server.link.walk(mountKey(root, userPath)),
    display: (key) => path.join(root, key),
    close: async () => undefined,
  };
}

/** The key of a path of a mounted tree (absolute, or relative to the working dir) inside mount point `root`. */
function mountKey(root: string, userPath: string): string {
  const rel = path.relative(root, path.resolve(userPath));
  if (rel.startsWith('..') || path.isAbsolute(rel)) throw new CachefsError('INVALID_ARGUMENT', `invalid path '${userPath}': expected a path inside the mount ${root}`);
  return rel.split(path.sep).join('/');
}

/** Walks the paths into files and their blocks; the same object named twice counts once. */
export async function collectDataset(target: DatasetTarget, paths: readonly string[]): Promise<Dataset> {
  const files: DatasetFile[] = [];
  const seen = new Set<string>();
  let blocks = 0;
  let bytes = 0;
  for (const userPath of paths) {
    for await (const o of target.objects(userPath)) {
      if (seen.has(o.key)) continue;
      seen.add(o.key);
      const object: ObjectRef = { mount: o.mount, key: o.key, etag: o.etag, size: o.size };
      const refs = blocksCovering(object, target.blockSize, 0, o.size);
      files.push({ path: target.display(o.key), object, blocks: refs });
      blocks += refs.length;
      bytes += o.size;
    }
  }
  return { files, blocks, bytes };
}

/** Per server: the ids of the blocks it owns, and which of them it holds (one inventory query per server, in chunks). */
export interface ServerHoldings {
  owned: BlockRef[];
  held: Set<string>;
  capacityBytes: number;
}

export async function ownedAndHeld(target: DatasetTarget, dataset: Dataset, alive: (s: DatasetServer) => boolean = () => true): Promise<Map<DatasetServer, ServerHoldings>> {
  const out = new Map<DatasetServer, ServerHoldings>();
  for (const s of target.servers) if (alive(s)) out.set(s, { owned: [], held: new Set(), capacityBytes: 0 });
  for (const f of dataset.files) {
    for (const ref of f.blocks) {
      const owner = target.order(ref.id).find(alive);
      if (owner) out.get(owner)!.owned.push(ref);
    }
  }
  await Promise.all(
    [...out].map(async ([server, entry]) => {
      for (let i = 0; i === 0 || i < entry.owned.length; i += MAX_IDS) {
        const { held, capacityBytes } = await server.link.inventory(entry.owned.slice(i, i + MAX_IDS).map((r) => r.id));
        for (const h of held) entry.held.add(h.id);
        entry.capacityBytes = capacityBytes;
      }
    }),
  );
  return out;
}

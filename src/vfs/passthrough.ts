/**
 * Which opens pass through (FUSE passthrough): an open is answered with a backing file,
 * which the kernel then reads itself — no read of that open reaches cachefs — when the
 * file's whole content is one checked local file (`BlockClient.localFile`: the cached
 * block of an object of one block, or a larger object's whole-object file). Registering
 * the file with the kernel is `BackingFiles`' (fuse/ does it with ioctls on /dev/fuse);
 * this module owns the decision and the bookkeeping.
 *
 * The kernel allows one backing file per inode at a time, and no mix: while a file is
 * open through passthrough, every open of it must pass through with the same backing
 * file, and while it is open the ordinary way (page cache), none may (the kernel fails the
 * open with EIO otherwise). So a backing is kept per node, shared by the opens of it and
 * closed with the last one's release; a node open the ordinary way is not passed through
 * until those opens are released. A new version of the file cannot be opened while opens
 * of the old one pass through: that open fails STALE (the old opens keep their bytes).
 *
 * The kernel keeps its own reference to a registered file, so the descriptor is closed at
 * once, and a block evicted from the cache (its file unlinked) stays readable by the opens
 * that have it, its disk space held until they close.
 *
 * A backing id is not tied to a node in the kernel (only while opens of the node use it), so
 * one whose last open was released is kept registered, by its object, for the next open of
 * the same version, which then costs neither a look for the file nor an ioctl:
 * a data loader's epoch opens every file once, and after a drop of the page cache each
 * open otherwise opened the block file again (a path walk from the disk), and in a cluster
 * asked the co-located worker for its descriptor. Kept are at most MAX_KEPT, least recently
 * released first out. The mount's own store tells of its files' removal: a kept backing of a
 * file the cache drops is closed then, so its disk space is not held past the quota (one
 * still open is closed at its last release). A co-located worker's removals are not seen
 * here: its kept files are checked every SWEEP_MS, and one unlinked (evicted) or written
 * since is closed, so a worker's evicted file is held a few seconds at most.
 * An open of a node that has ordinary opens never takes a kept one; an open of another
 * version closes it. A kept backing is taken only while its file is unchanged: each holds
 * a descriptor of its own to the file, whose ctime must still be the one seen when the file
 * was registered (a write to the file moves it); otherwise it is closed, and the open looks
 * for the file as a first one does, which checks it (before, bytes flipped in a block file
 * after its first passthrough open were read by the kernel at every later open).
 */
import { closeSync, constants, fstatSync, openSync } from 'node:fs';
import type { ObjectRef } from '../block/block.js';
import type { BlockClient, OpenObject } from '../client/block-client.js';
import { CachefsError } from '../errors.js';
import type { Metrics } from '../metrics/metrics.js';

/** The kernel's registry of backing files for a connection (fuse/passthrough.ts). */
export interface BackingFiles {
  /**
   * Registers the open file `fd` (the caller may close it afterwards: the kernel holds its
   * own reference); its backing id, or undefined when the kernel refused (said there).
   */
  open(fd: number): number | undefined;
  /** Lets the kernel drop a backing id no open will be answered with any more; false when it had no such id (said there). */
  close(id: number): boolean;
}

/**
 * Backings kept registered after their last open: each holds a file of the cache open in the
 * kernel (a struct file and its inode in memory) and a descriptor here (to check its ctime),
 * so 4,096 at most, within the descriptors a process may have.
 */
const MAX_KEPT = 4_096;
/** How often the kept backings of a co-located worker's files are checked for removal. */
const SWEEP_MS = 2_000;

/** A registered backing file and the opens that use it. */
interface Backing {
  id: number;
  etag: string;
  size: number;
  opens: number;
  /** The object it holds a version of (`objectKey`): where it is kept after its last open. */
  key: string;
  /** Its file's id in the mount's own store (LocalFile.storeId); absent for a co-located worker's file (checked by the sweep once kept). */
  storeId?: string;
  /** Its file was dropped from the cache: closed at its last release, not kept. */
  gone?: boolean;
  /** A kept-able backing's own descriptor of its file, and the file's ctime when it was registered. */
  check?: { fd: number; ctimeNs: bigint };
}

/** What an open holds: its node, and whether it passes through. */
interface HeldOpen {
  nodeId: number;
  backing?: Backing;
}

export class PassthroughOpens {
  private backings?: BackingFiles;
  /** Nodes open through passthrough, with their backing. */
  private readonly byNode = new Map<number, Backing>();
  /** Nodes open the ordinary way: how many such opens each has. */
  private readonly ordinary = new Map<number, number>();
  private readonly opens = new Map<number, HeldOpen>();
  /** Backings no open uses, kept registered by object (one version each), least recently released first. */
  private readonly kept = new Map<string, Backing>();
  /** Checks the kept backings of co-located workers' files every SWEEP_MS, once passthrough is on. */
  private sweeper?: NodeJS.Timeout;
  /** Backings by the store id of their file, open or kept: closed or marked when the store drops it. */
  private readonly byFile = new Map<string, Set<Backing>>();

  constructor(
    private readonly client: BlockClient,
    private readonly metrics: Metrics,
  ) {
    metrics.passthroughOpen.sampledBy(() => this.byNode.size);
    metrics.passthroughKept.sampledBy(() => this.kept.size);
    client.onLocalFileRemoved((storeId) => this.fileRemoved(storeId));
  }

  /** Passthrough was negotiated with the kernel: opens may pass through from now on. */
  enable(backings: BackingFiles): void {
    this.backings = backings;
    this.sweeper ??= setInterval(() => this.sweep(), SWEEP_MS).unref(); // keeps no process alive
  }

  /** Closes the kept backings of co-located workers' files removed (or written) since they were registered. */
  private sweep(): void {
    for (const backing of this.kept.values()) {
      if (backing.storeId === undefined && !unchanged(backing)) this.close(backing);
    }
  }

  /**
   * Decides how an open `file` of node `nodeId` is answered: its backing id when it passes
   * through, undefined for ordinary reads (a promise only when a cached file had to be
   * looked up). Every decision is undone by `release(file.id)`.
   */
  open(file: OpenObject & { readonly path: string }, nodeId: number): number | undefined | Promise<number | undefined> {
    if (!this.backings) return undefined;
    const { id: fh, object, path } = file;
    const settled = this.forced(fh, nodeId, object, path);
    if (settled !== 'look') return settled;
    const key = objectKey(object);
    const kept = this.takeKept(key, nodeId, object);
    if (kept) return this.passThrough(fh, nodeId, kept);
    const local = this.client.localFile(file);
    if (!local) return this.openOrdinary(fh, nodeId);
    return local.then((held) => {
      if (!held) return this.openOrdinary(fh, nodeId);
      try {
        // Other opens of the node may have been decided while the file was looked up.
        const now = this.forced(fh, nodeId, object, path);
        if (now !== 'look') return now;
        const keptNow = this.takeKept(key, nodeId, object);
        if (keptNow) return this.passThrough(fh, nodeId, keptNow);
        const id = this.backings?.open(held.fd);
        if (id === undefined) return this.openOrdinary(fh, nodeId);
        const backing: Backing = { id, etag: object.etag, size: object.size, opens: 0, key, storeId: held.storeId };
        backing.check = ownDescriptor(held.fd);
        if (backing.storeId !== undefined) {
          let set = this.byFile.get(backing.storeId);
          if (!set) this.byFile.set(backing.storeId, (set = new Set()));
          set.add(backing);
        }
        this.byNode.set(nodeId, backing);
        return this.passThrough(fh, nodeId, backing);
      } finally {
        held.release();
      }
    });
  }

  /** The backing kept for this object, now the node's, if it holds this version; one of another version is closed. */
  private takeKept(key: string, nodeId: number, object: ObjectRef): Backing | undefined {
    const kept = this.kept.get(key);
    if (!kept) return undefined;
    if (kept.etag !== object.etag || kept.size !== object.size || !unchanged(kept)) return void this.close(kept);
    this.kept.delete(key);
    this.byNode.set(nodeId, kept);
    return kept;
  }

  /** The answer the node's other opens force on this one, or 'look' when a local file may be looked for. */
  private forced(fh: number, nodeId: number, object: ObjectRef, path: string): number | undefined | 'look' {
    const backing = this.byNode.get(nodeId);
    if (backing) {
      if (backing.etag === object.etag && backing.size === object.size) return this.passThrough(fh, nodeId, backing);
      throw new CachefsError('STALE', `${path} changed while it is open through passthrough at its earlier version: it can be opened again once those opens are closed`);
    }
    return this.ordinary.has(nodeId) ? this.openOrdinary(fh, nodeId) : 'look';
  }

  /**
   * An open the kernel holds from a serving process before this one (taken over): taken to
   * be an ordinary one, so that no open of its node is passed through while it lasts (the
   * kernel refuses a mix). Which of them passed through is not known: new opens of those
   * nodes are refused by the kernel until the old ones are closed.
   */
  restored(fh: number, nodeId: number): void {
    this.openOrdinary(fh, nodeId);
  }

  private openOrdinary(fh: number, nodeId: number): undefined {
    this.ordinary.set(nodeId, (this.ordinary.get(nodeId) ?? 0) + 1);
    this.opens.set(fh, { nodeId });
    return undefined;
  }

  private passThrough(fh: number, nodeId: number, backing: Backing): number {
    backing.opens += 1;
    this.opens.set(fh, { nodeId, backing });
    this.metrics.passthroughOpens.inc();
    return backing.id;
  }

  /** The open `fh` was released: the last open of a node through a backing lets the kernel drop it. */
  release(fh: number): void {
    const held = this.opens.get(fh);
    if (!held) return;
    this.opens.delete(fh);
    const { nodeId, backing } = held;
    if (!backing) {
      const n = this.ordinary.get(nodeId) ?? 0;
      if (n <= 1) this.ordinary.delete(nodeId);
      else this.ordinary.set(nodeId, n - 1);
      return;
    }
    backing.opens -= 1;
    if (backing.opens > 0) return;
    this.byNode.delete(nodeId);
    if (backing.gone || !backing.check) return this.close(backing);
    // One kept per object: another kept backing of it (its node was forgotten and made anew meanwhile) goes.
    const before = this.kept.get(backing.key);
    if (before) this.close(before);
    this.kept.set(backing.key, backing);
    if (this.kept.size > MAX_KEPT) this.close(this.kept.values().next().value!);
  }

  /** The store dropped a file: kept backings of it are closed, open ones marked to be closed at their last release. */
  private fileRemoved(storeId: string): void {
    const backings = this.byFile.get(storeId);
    if (!backings) return;
    for (const backing of backings) {
      if (this.kept.get(backing.key) === backing) this.close(backing);
      else backing.gone = true;
    }
  }

  /** Gives the backing id back to the kernel, and forgets it. */
  private close(backing: Backing): void {
    if (this.kept.get(backing.key) === backing) this.kept.delete(backing.key);
    if (backing.storeId !== undefined) {
      const set = this.byFile.get(backing.storeId);
      set?.delete(backing);
      if (set?.size === 0) this.byFile.delete(backing.storeId);
    }
    this.backings?.close(backing.id);
    if (backing.check) closeSync(backing.check.fd);
    backing.check = undefined;
  }
}

/** A descriptor of the file `fd` is open on, of our own (a new open of it), and the file's ctime now. */
function ownDescriptor(fd: number): { fd: number; ctimeNs: bigint } | undefined {
  let own: number;
  try {
    own = openSync(`/proc/self/fd/${fd}`, constants.O_RDONLY); // libuv opens close-on-exec
  } catch {
    return undefined; // not kept then: closed at its last release
  }
  return { fd: own, ctimeNs: fstatSync(own, { bigint: true }).ctimeNs };
}

/** The kept backing's file has not been written to, nor unlinked, since it was registered. */
function unchanged(backing: Backing): boolean {
  if (!backing.check) return false;
  try {
    const now = fstatSync(backing.check.fd, { bigint: true });
    return now.ctimeNs === backing.check.ctimeNs && now.nlink > 0n;
  } catch {
    return false;
  }
}

/** An object (of any version), as a kept backing is found by. */
function objectKey(object: ObjectRef): string {
  return `${object.mount}\0${object.key}`;
}

/**
 * Which opens pass through (FUSE passthrough): an open is answered with a backing file,
 * which the kernel then reads itself — no read of that open reaches cachefs — when the
 * file's whole content is one checked local file (`BlockClient.localFile`: the cached
 * block of an object of one block, or a larger object's whole-object file). Registering the file with the kernel is `BackingFiles`' (fuse/ does
 * it with ioctls on /dev/fuse); this module owns the decision and the bookkeeping.
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
 */
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
  /** Lets the kernel drop a backing id no open will be answered with any more. */
  close(id: number): void;
}

/** A node's registered backing file and the opens that use it. */
interface Backing {
  id: number;
  etag: string;
  size: number;
  opens: number;
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

  constructor(
    private readonly client: BlockClient,
    private readonly metrics: Metrics,
  ) {
    metrics.passthroughOpen.sampledBy(() => this.byNode.size);
  }

  /** Passthrough was negotiated with the kernel: opens may pass through from now on. */
  enable(backings: BackingFiles): void {
    this.backings = backings;
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
    const local = this.client.localFile(file);
    if (!local) return this.openOrdinary(fh, nodeId);
    return local.then((held) => {
      if (!held) return this.openOrdinary(fh, nodeId);
      try {
        // Other opens of the node may have been decided while the file was looked up.
        const now = this.forced(fh, nodeId, object, path);
        if (now !== 'look') return now;
        const id = this.backings?.open(held.fd);
        if (id === undefined) return this.openOrdinary(fh, nodeId);
        const backing = { id, etag: object.etag, size: object.size, opens: 0 };
        this.byNode.set(nodeId, backing);
        return this.passThrough(fh, nodeId, backing);
      } finally {
        held.release();
      }
    });
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
    this.backings?.close(backing.id);
  }
}

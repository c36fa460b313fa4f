/**
 * The kernel's node ids and the paths they stand for. The kernel learns a node id
 * from each lookup it is answered, counts how often, and forgets that many later;
 * a node lives here while the kernel holds it. Node id 1 is the root. A path keeps
 * its node id while it is held, so a name looked up again is the same inode.
 */

export interface Node {
  readonly id: number;
  readonly path: string;
  /** Lookups answered and not yet forgotten by the kernel. */
  lookups: number;
  /** The version as last told to the kernel, and as it was when the file was last opened. */
  version?: Version;
  openedVersion?: Version;
  /** A directory's listing as it was when last opened (its fingerprint), when it was one page. */
  openedListing?: string;
  /** How many children a directory's last listing had, when it was read to its end. */
  listedCount?: number;
  /** Last told to the kernel as a regular file. */
  file?: boolean;
}

/** What the kernel knows of a file's bytes: its ETag, mtime and size. */
export interface Version {
  readonly etag: string;
  readonly mtimeMs: number;
  readonly size: number;
}

export const ROOT_ID = 1;

export class Nodes {
  private readonly byId = new Map<number, Node>();
  private readonly byPath = new Map<string, Node>();
  private nextId = ROOT_ID + 1;

  constructor() {
    const root = newNode(ROOT_ID, '/');
    root.lookups = 1;
    this.byId.set(ROOT_ID, root);
    this.byPath.set('/', root);
  }

  get(id: number): Node | undefined {
    return this.byId.get(id);
  }

  get size(): number {
    return this.byId.size;
  }

  /** The node of `path`, made if the kernel holds none; one more lookup counted. */
  remember(path: string): Node {
    let node = this.byPath.get(path);
    if (!node) {
      node = newNode(this.nextId++, path);
      this.byId.set(node.id, node);
      this.byPath.set(path, node);
    }
    node.lookups += 1;
    return node;
  }

  /** Up to `max` node ids of regular files the kernel holds. */
  heldFiles(max: number): number[] {
    const ids: number[] = [];
    for (const node of this.byId.values()) {
      if (ids.length >= max) break;
      if (node.file) ids.push(node.id);
    }
    return ids;
  }

  /** The node id the kernel holds for `path`, if it holds one. */
  idOf(path: string): number | undefined {
    return this.byPath.get(path)?.id;
  }

  forget(id: number, count: number): void {
    const node = this.byId.get(id);
    if (!node || id === ROOT_ID) return;
    node.lookups -= count;
    if (node.lookups > 0) return;
    this.byId.delete(id);
    if (this.byPath.get(node.path) === node) this.byPath.delete(node.path);
  }
}

/** A node with every field present from the start, so that all nodes share one shape. */
function newNode(id: number, path: string): Node {
  return { id, path, lookups: 0, version: undefined, openedVersion: undefined, openedListing: undefined, listedCount: undefined, file: false };
}

/** The path of `name` in the directory at `dir`. */
export function childPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

/**
 * The kernel's node ids and the paths they stand for. The kernel learns a node id
 * from each lookup it is answered, counts how often, and forgets that many later;
 * a node lives here while the kernel holds it. Node id 1 is the root. A path keeps
 * its node id while it is held, so a name looked up again is the same inode.
 *
 * Nodes restored from a dead serving process's journal (`kernel-journal.ts`) have an
 * unknown lookup count: the kernel's first FORGET of one (it sends its whole count
 * when it drops an inode) drops it.
 *
 * The kernel holds a node as long as it keeps the inode, which without memory pressure
 * is as long as its dentry: a walk of a million files left a million nodes here. So the
 * nodes are kept in the order they were last looked up, and past a bound the regular
 * files looked up longest ago are named (`toLetGo`) for the kernel to be asked to drop
 * them (NOTIFY_PRUNE, or NOTIFY_INVAL_ENTRY of their entries): it then forgets them, unless something holds them
 * (an open file), and a later lookup makes a node again. Directories are not let go.
 */

export interface Node {
  readonly id: number;
  readonly path: string;
  /** Lookups answered and not yet forgotten by the kernel; Infinity when not known (restored). */
  lookups: number;
  /** The version as last told to the kernel, and as it was when the file was last opened. */
  version?: Version;
  openedVersion?: Version;
  /** What a directory's listings and lookups of its children left (undefined until one came: most nodes are files). */
  dir: DirState | undefined;
  /** Last told to the kernel as a regular file. */
  file?: boolean;
  /** The kernel was asked to drop its entry, and has not forgotten it yet. */
  lettingGo: boolean;
}

/** Of a directory's node: kept apart from the node, so that a file's node (nearly all of a walk's) is 24 bytes smaller. */
export interface DirState {
  /** Its listing as it was when last opened (its fingerprint), when it was one page. */
  openedListing: string | undefined;
  /** How many children its last listing had, when it was read to its end. */
  listedCount: number | undefined;
  /** Lookups of its children (a walk that stats them makes many). */
  childLookups: number;
  /**
   * A node was made for one of its children since its own was made (`remember`): while
   * not, and unless it was restored (its children may be too), a listing of it has no
   * child's node id to look for (`ls -f` of a million files built each one's path for that).
   */
  madeChildren: boolean;
}

/** The state of the directory `node`, made at first need. */
export function dirState(node: Node): DirState {
  return (node.dir ??= { openedListing: undefined, listedCount: undefined, childLookups: 0, madeChildren: false });
}

/** A node to ask the kernel to let go of: its entry is `name` in the directory node `parentId`. */
export interface NodeToLetGo {
  id: number;
  parentId: number;
  name: string;
}

/** What the kernel knows of a file's bytes: its ETag, mtime and size. */
export interface Version {
  readonly etag: string;
  readonly mtimeMs: number;
  readonly size: number;
}

export const ROOT_ID = 1;

/** Told of every node made and dropped (the journal of what the kernel holds). */
export interface NodesObserver {
  made(id: number, path: string): void;
  dropped(id: number): void;
}

export class Nodes {
  private readonly byId = new Map<number, Node>();
  private readonly byPath = new Map<string, Node>();
  private nextId = ROOT_ID + 1;
  /** Nodes the kernel was asked to let go of and still holds. */
  private lettingGo = 0;
  observer?: NodesObserver;

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

  /** Nodes held and not asked back (`toLetGo`) yet. */
  get held(): number {
    return this.byId.size - this.lettingGo;
  }

  /**
   * The node of `path`, made if the kernel holds none; one more lookup counted. `parent`:
   * its directory's node (none where it is not known: `childId` then always looks).
   */
  remember(path: string, parent: Node | undefined): Node {
    let node = this.byPath.get(path);
    if (!node) {
      if (parent) dirState(parent).madeChildren = true;
      node = newNode(this.nextId++, path);
      this.byId.set(node.id, node);
      this.byPath.set(path, node);
      this.observer?.made(node.id, path);
    } else {
      // Last in the order again: the nodes looked up longest ago are the first ones.
      this.byId.delete(node.id);
      this.byId.set(node.id, node);
      if (node.lettingGo) this.keep(node);
    }
    node.lookups += 1;
    return node;
  }

  /**
   * Regular files to ask the kernel to let go of, looked up longest ago first, once the
   * nodes held (less those it was asked about already) pass `max` by more than `slack`:
   * enough to bring them an eighth under it. Each is marked until the kernel forgets it, or
   * `kept` says it will not.
   */
  toLetGo(max: number, slack: number): NodeToLetGo[] {
    const over = this.held - max;
    if (over <= slack) return [];
    const want = over + Math.ceil(max / 8);
    const out: NodeToLetGo[] = [];
    for (const node of this.byId.values()) {
      if (out.length >= want) break;
      if (!node.file || node.lettingGo || node.lookups === Infinity) continue;
      const slash = node.path.lastIndexOf('/');
      const parentId = this.byPath.get(slash === 0 ? '/' : node.path.slice(0, slash))?.id;
      if (parentId === undefined) continue;
      node.lettingGo = true;
      out.push({ id: node.id, parentId, name: node.path.slice(slash + 1) });
    }
    this.lettingGo += out.length;
    return out;
  }

  /** The kernel will not let go of node `id` (it refused the ask): it counts as held again. */
  kept(id: number): void {
    const node = this.byId.get(id);
    if (node?.lettingGo) this.keep(node);
  }

  private keep(node: Node): void {
    node.lettingGo = false;
    this.lettingGo -= 1;
  }

  /** A node the kernel held from a serving process before this one; ids made later start past `nextId`. */
  restore(id: number, path: string, nextId: number): void {
    const node = newNode(id, path);
    node.lookups = Infinity;
    this.byId.set(id, node);
    this.byPath.set(path, node);
    this.nextId = Math.max(this.nextId, nextId);
  }

  /** Every node but the root, with its path. */
  *entries(): Generator<[number, string]> {
    for (const node of this.byId.values()) if (node.id !== ROOT_ID) yield [node.id, node.path];
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
  /** The node the kernel holds for `path`, if any. */
  ofPath(path: string): Node | undefined {
    return this.byPath.get(path);
  }

  /** The node id of `name` in the directory node `dir` (at `dirPath`), if the kernel holds one: none under a directory no child's node was made in. */
  childId(dir: Node | undefined, dirPath: string, name: string): number | undefined {
    if (dir && dir.lookups !== Infinity && !dir.dir?.madeChildren) return undefined;
    return this.byPath.get(childPath(dirPath, name))?.id;
  }

  idOf(path: string): number | undefined {
    return this.byPath.get(path)?.id;
  }

  forget(id: number, count: number): void {
    const node = this.byId.get(id);
    if (!node || id === ROOT_ID) return;
    node.lookups -= count;
    if (node.lookups > 0 && node.lookups !== Infinity) return;
    this.byId.delete(id);
    if (this.byPath.get(node.path) === node) this.byPath.delete(node.path);
    if (node.lettingGo) this.keep(node);
    this.observer?.dropped(id);
  }
}

/** A node with every field present from the start, so that all nodes share one shape. */
function newNode(id: number, path: string): Node {
  return { id, path, lookups: 0, version: undefined, openedVersion: undefined, dir: undefined, file: false, lettingGo: false };
}

/** The path of `name` in the directory at `dir`. */
export function childPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

/**
 * The cluster's namespace as one Ufs: the master's mount table maps paths
 * (`/data`, `/logs/2024`) to UFS roots, and keys are routed to the entry whose path
 * covers them (the longest). Directories above mount paths are synthesized so the
 * tree can be walked from the root. Mounts and workers build the same namespace
 * from the same table, so a block named by a namespace key means the same bytes
 * on both sides.
 */
import { CachefsError } from '../errors.js';
import type { Ufs, UfsListOptions, UfsListPage, UfsObject, UfsReadOptions } from './ufs.js';

export interface NamespaceEntry {
  /** Mount path as in the mount table, e.g. `/data` or `/`. */
  path: string;
  ufs: Ufs;
}

/** Block ids of namespace mounts use this as their mount identity. */
export const NAMESPACE_MOUNT_ID = 'cachefs-namespace';

interface Route {
  /** The entry path as a key: '' for `/`, `data` for `/data`. */
  key: string;
  ufs: Ufs;
}

export class NamespaceUfs implements Ufs {
  readonly displayUri = 'cachefs://namespace';
  private routes: Route[] = [];

  constructor(entries: NamespaceEntry[]) {
    this.replace(entries);
  }

  /** Swaps in a new mount table (closing nothing: the caller owns the Ufs instances). */
  replace(entries: NamespaceEntry[]): void {
    this.routes = entries.map((e) => ({ key: e.path.replace(/^\/+|\/+$/g, ''), ufs: e.ufs })).sort((a, b) => b.key.length - a.key.length);
  }

  get size(): number {
    return this.routes.length;
  }

  /** The route covering `key` and the key inside it. */
  private route(key: string): { route: Route; inner: string } | undefined {
    for (const route of this.routes) {
      if (route.key === '') return { route, inner: key };
      if (key === route.key) return { route, inner: '' };
      if (key.startsWith(`${route.key}/`)) return { route, inner: key.slice(route.key.length + 1) };
    }
    return undefined;
  }

  async check(signal?: AbortSignal): Promise<void> {
    await Promise.all(this.routes.map((r) => r.ufs.check(signal)));
  }

  async stat(key: string, signal?: AbortSignal): Promise<UfsObject | null> {
    const r = this.route(key);
    if (!r || r.inner === '') return null;
    const o = await r.route.ufs.stat(r.inner, signal);
    return o && { ...o, key };
  }

  async list(prefix: string, options: UfsListOptions = {}): Promise<UfsListPage> {
    const dir = prefix.replace(/\/$/, '');
    const r = this.route(dir);
    if (r) {
      const innerPrefix = r.inner === '' ? '' : `${r.inner}/`;
      const outer = r.route.key === '' ? '' : `${r.route.key}/`;
      const page = await r.route.ufs.list(innerPrefix, options);
      const synthetic = this.childrenAbove(dir);
      return {
        objects: page.objects.map((o) => ({ ...o, key: outer + o.key })),
        ...(page.names ? { names: page.names.map((key) => outer + key) } : {}),
        prefixes: [...new Set([...page.prefixes.map((p) => outer + p), ...(options.token ? [] : synthetic)])].sort(),
        nextToken: page.nextToken,
      };
    }
    return { objects: [], prefixes: this.childrenAbove(dir) };
  }

  /** Prefixes of mount paths one level below `dir` ('' for the root). */
  private childrenAbove(dir: string): string[] {
    const out = new Set<string>();
    const base = dir === '' ? '' : `${dir}/`;
    for (const { key } of this.routes) {
      if (key === '' || key === dir || !key.startsWith(base)) continue;
      out.add(`${base}${key.slice(base.length).split('/')[0]}/`);
    }
    return [...out].sort();
  }

  async readInto(key: string, offset: number, dest: Buffer | readonly Buffer[], options?: UfsReadOptions): Promise<number> {
    const r = this.route(key);
    if (!r || r.inner === '') throw new CachefsError('NOT_FOUND', `not found: ${key}`);
    return r.route.ufs.readInto(r.inner, offset, dest, options);
  }

  async close(): Promise<void> {
    this.routes = [];
  }
}

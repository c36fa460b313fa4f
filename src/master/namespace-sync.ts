/**
 * Keeps a `NamespaceUfs` in step with the master's mount table: polls it (the
 * master client falls back to its on-disk copy when the master is down; the
 * master itself reads its own table), opens a backend for each new entry and
 * closes the backends of removed ones.
 */
import { Poller } from '../lib/poller.js';
import type { Logger } from '../log.js';
import type { MountEntry } from './api.js';
import { CachefsError } from '../errors.js';
import { NAMESPACE_MOUNT_ID, NamespaceUfs } from '../ufs/namespace.js';
import { openUfs, openUfsOnUse } from '../ufs/open-ufs.js';
import type { Ufs, UfsResolver } from '../ufs/ufs.js';

/** Where the table comes from: a `MasterClient`, or the master's own table. */
export interface MountTableSource {
  mountTable(): Promise<{ value: MountEntry[] }>;
}

export class NamespaceSync {
  readonly ufs = new NamespaceUfs([]);
  private readonly open = new Map<string, Ufs>();
  private readonly poller: Poller;

  /**
   * `backends: 'on-use'` opens each entry's backend at its first use, for a process whose
   * reads and listings go elsewhere first (`openUfsOnUse`); 'now' opens them as entries come.
   */
  constructor(
    private readonly source: MountTableSource,
    private readonly log: Logger,
    intervalMs = 10_000,
    private readonly backends: 'now' | 'on-use' = 'now',
  ) {
    this.poller = new Poller('mount table', intervalMs, () => this.refresh(), log);
  }

  /** Loads the mount table once (from the master, or its cached copy) and keeps polling. */
  async start(): Promise<void> {
    await this.poller.start();
  }

  /** Block ids name the namespace as their mount: the one UFS a cluster's blocks are read from. */
  resolver(): UfsResolver {
    return async (mount) => {
      if (mount !== NAMESPACE_MOUNT_ID) throw new CachefsError('NOT_FOUND', `unknown mount '${mount}'`);
      return this.ufs;
    };
  }

  /** Refreshes now, e.g. after a lookup missed. */
  poke(): Promise<void> {
    return this.poller.poke();
  }

  private async refresh(): Promise<void> {
    const table = await this.source.mountTable();
    const wanted = new Map(table.value.map((e) => [identity(e), e]));
    for (const [id, ufs] of this.open) {
      if (!wanted.has(id)) {
        this.open.delete(id);
        await ufs.close();
      }
    }
    const entries = [];
    for (const [id, entry] of wanted) {
      let ufs = this.open.get(id);
      if (!ufs) {
        try {
          const options = { ...entry.options, ...entry.secretOptions };
          ufs = this.backends === 'on-use' ? openUfsOnUse(entry.uri, options) : await openUfs(entry.uri, options);
        } catch (err) {
          this.log.warn({ path: entry.path, uri: entry.uri, err: (err as Error).message }, 'cannot open mount-table entry');
          continue;
        }
        this.open.set(id, ufs);
      }
      entries.push({ path: entry.path, ufs });
    }
    this.ufs.replace(entries);
  }

  async close(): Promise<void> {
    await this.poller.close();
    for (const ufs of this.open.values()) await ufs.close();
    this.open.clear();
  }
}

function identity(e: MountEntry): string {
  return JSON.stringify([e.path, e.uri, e.options, e.secretOptions]);
}

/**
 * The cluster namespace as a cluster mount sees it: `stat` and `list` are asked of
 * the master's shared namespace cache (`namespace-cache.ts`), so that a directory
 * is listed from the UFS once per TTL for the whole cluster; `readInto` and
 * `check` go to the namespace's own backends, as before. Listings stay paged: a
 * page is at most what the caller asked for, and the cursor it hands back is the
 * master's, which either side can continue (`namespace-page.ts`).
 *
 * When the master does not answer (unreachable, timed out) or does not know the
 * namespace routes (NOT_FOUND: a master older than the mount, during an upgrade;
 * the routes themselves answer absence as null or an empty page, never 404), the
 * same requests go to the UFS directly, cut into the same pages, and keep going
 * there for `DIRECT_FOR_MS` before the master is tried again; the switch is logged
 * once each way. Other errors the master answered (ACCESS_DENIED, THROTTLED...)
 * are the caller's.
 */
import { isCachefsError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { Ufs, UfsListOptions, UfsListPage, UfsObject, UfsReadOptions } from '../ufs/ufs.js';
import type { MasterClient } from './client.js';
import { FIRST_PAGE, UFS_PAGE_KEYS, decodeCursor, encodeCursor, slicePage, ufsPage } from './namespace-page.js';

/** How long requests go straight to the UFS after the master failed to answer one. */
const DIRECT_FOR_MS = 10_000;
/** One attempt per request: a master that does not answer within this is gone round. */
const MASTER_TIMEOUT_MS = 5_000;

/** What the master answers when it cannot serve namespace requests at all. */
const GO_ROUND: readonly ErrorCode[] = ['UNREACHABLE', 'TIMEOUT', 'NOT_FOUND'];

export class SharedNamespaceUfs implements Ufs {
  readonly displayUri: string;
  private directUntil = 0;
  private direct = false;

  /** `namespace` is the mount's own view of the namespace (its backends); this does not close it. */
  constructor(private readonly master: MasterClient, private readonly namespace: Ufs, private readonly log: Logger) {
    this.displayUri = namespace.displayUri;
  }

  check(signal?: AbortSignal): Promise<void> {
    return this.namespace.check(signal);
  }

  stat(key: string, signal?: AbortSignal): Promise<UfsObject | null> {
    return this.viaMaster(
      () => this.master.namespaceStat(key, { signal, retries: 0, timeoutMs: MASTER_TIMEOUT_MS }),
      () => this.namespace.stat(key, signal),
      signal,
    );
  }

  async list(prefix: string, options: UfsListOptions = {}): Promise<UfsListPage> {
    const { token, maxKeys, signal } = options;
    return this.viaMaster(
      async () => {
        const page = await this.master.namespaceList(prefix, { cursor: token, maxKeys }, { signal, retries: 0, timeoutMs: MASTER_TIMEOUT_MS });
        return { objects: page.objects, prefixes: page.prefixes, ...(page.cursor === undefined ? {} : { nextToken: page.cursor }) };
      },
      async () => {
        const at = token === undefined ? FIRST_PAGE : decodeCursor(token);
        const page = ufsPage(await this.namespace.list(prefix, { maxKeys: UFS_PAGE_KEYS, signal, ...(at.token === undefined ? {} : { token: at.token }) }));
        const slice = slicePage(page, { page: at.page, offset: at.offset, ...(at.token === undefined ? {} : { token: at.token }) }, Math.min(maxKeys ?? UFS_PAGE_KEYS, UFS_PAGE_KEYS));
        return { objects: slice.objects, prefixes: slice.prefixes, ...(slice.cursor ? { nextToken: encodeCursor(slice.cursor) } : {}) };
      },
      signal,
    );
  }

  readInto(key: string, offset: number, dest: Buffer | readonly Buffer[], options?: UfsReadOptions): Promise<number> {
    return this.namespace.readInto(key, offset, dest, options);
  }

  async close(): Promise<void> {
    // The namespace belongs to its NamespaceSync, the client to the mount.
  }

  private async viaMaster<T>(fromMaster: () => Promise<T>, fromUfs: () => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    if (Date.now() < this.directUntil) return fromUfs();
    try {
      const answer = await fromMaster();
      if (this.direct) {
        this.direct = false;
        this.log.info({ master: this.master.address.text }, 'the master answers namespace requests again');
      }
      return answer;
    } catch (err) {
      if (signal?.aborted || !isCachefsError(err) || !GO_ROUND.includes(err.code)) throw err;
      this.directUntil = Date.now() + DIRECT_FOR_MS;
      if (!this.direct) {
        this.direct = true;
        this.log.warn({ master: this.master.address.text, err: err.message }, 'the master does not answer namespace requests: asking the object stores directly');
      }
      return fromUfs();
    }
  }
}

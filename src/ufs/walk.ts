/**
 * The walk of a dataset: every object at or below a path of a `Ufs`, found with the
 * interface's own paged `list` and `stat`, depth first, one page in memory at a
 * time. It is the only way `cachefs load` and `report --dataset` see a tree, so that
 * whichever `Ufs` they are handed (a backend, the cluster's `NamespaceUfs`, or a
 * namespace served by the master) is walked the same way. Directory markers (keys
 * ending in '/') are not objects of the dataset.
 */
import { CachefsError } from '../errors.js';
import type { Ufs, UfsObject } from './ufs.js';

/**
 * Yields the objects of `dir` ('' for the root, otherwise a key without slashes at
 * either end): the object at that key itself when there is one and no directory of
 * the name, else every object below it. NOT_FOUND when neither exists.
 */
export async function* walkObjects(ufs: Ufs, dir: string, signal?: AbortSignal): AsyncGenerator<UfsObject> {
  const key = dir.replace(/^\/+|\/+$/g, '');
  if (key !== '') {
    const first = await ufs.list(`${key}/`, { signal, maxKeys: 1 });
    if (first.objects.length === 0 && first.prefixes.length === 0) {
      const object = await ufs.stat(key, signal);
      if (!object) throw new CachefsError('NOT_FOUND', `no such file or directory: /${key}`);
      yield object;
      return;
    }
  }
  const pending = [key === '' ? '' : `${key}/`];
  while (pending.length > 0) {
    const prefix = pending.pop()!;
    const below: string[] = [];
    let token: string | undefined;
    do {
      signal?.throwIfAborted();
      const page = await ufs.list(prefix, { token, signal });
      for (const o of page.objects) {
        if (o.key.endsWith('/')) continue;
        yield o;
      }
      below.push(...page.prefixes);
      token = page.nextToken;
    } while (token !== undefined);
    // Depth first, in listing order: the pending stack takes the last prefix first.
    pending.push(...below.reverse());
  }
}

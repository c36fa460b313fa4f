/**
 * Repair of bind mounts left on a dead FUSE connection, as Fluid's FuseRecovery
 * does for kubelet's volume binds. A bind of the mount (or of a subdirectory of it)
 * is its own mount of the same connection: when the serving process dies and the
 * supervisor detaches the mount point, the bind keeps the dead connection and
 * answers ENOTCONN for ever. Once a new serving process has mounted, each such bind
 * gets a bind of the live mount point (at the same root) mounted on top of it.
 *
 * On top, not instead: a mount made on a bind propagates to every mount that
 * receives propagation from it — the copies in consumers' namespaces, and the binds
 * that container runtimes made of it there (HostToContainer) — so all of them heal.
 * Detaching the dead bind first would reach only copies at the same path. The price
 * is one dead layer beneath the bind per crash (Fluid has the same trade-off).
 *
 * Binds are recognised by the device (`major:minor`) of a connection this
 * supervisor saw die, and repaired only while on top at their path, so a bind of
 * any other filesystem, or one repaired already, is never touched. Only binds in
 * the supervisor's mount namespace are seen.
 */
import path from 'node:path';
import type { Logger } from '../log.js';
import { bindMount, pathAnswers } from '../sys/mount-commands.js';
import { readMountTable, topMountAt } from '../sys/mountinfo.js';

export interface BindRepair {
  /** Where the bind is mounted. */
  target: string;
  /** What it is bound from now: the live mount point joined with the bind's root. */
  source: string;
  outcome: 'repaired' | 'failed';
  reason?: string;
}

/** Most binds repaired in one call; a guard against a table that keeps changing under us. */
const MAX_REPAIRS = 256;

/**
 * Re-binds every mount of a dead connection (`deadDevices`) from the live mount at
 * `mountpoint`. Resolves to what was done, one entry per bind found.
 */
export async function repairBinds(mountpoint: string, deadDevices: ReadonlySet<string>, log: Logger): Promise<BindRepair[]> {
  const results: BindRepair[] = [];
  const attempted = new Set<string>();
  // One bind at a time, re-reading the table: detaching a bind also detaches mounts beneath it.
  while (results.length < MAX_REPAIRS) {
    const table = await readMountTable();
    const live = topMountAt(table, mountpoint);
    if (!live || deadDevices.has(live.device)) break;
    // A dead bind that something already covers was repaired before: only the top mount at a path is seen.
    const stale = table.find((m) => deadDevices.has(m.device) && m.mountpoint !== mountpoint && !attempted.has(m.mountpoint) && topMountAt(table, m.mountpoint) === m);
    if (!stale) break;
    attempted.add(stale.mountpoint);
    const source = path.join(mountpoint, stale.root);
    const readOnly = stale.options.split(',').includes('ro');
    try {
      // Leave the dead bind in place if there is nothing to bind it to: ENOTCONN then says more than an empty dir.
      if (!(await pathAnswers(source))) throw new Error(`${source} does not exist in the new mount`);
      await bindMount(source, stale.mountpoint, readOnly);
      results.push({ target: stale.mountpoint, source, outcome: 'repaired' });
      log.info({ target: stale.mountpoint, source }, 'repaired a bind of the dead mount');
    } catch (err) {
      const reason = (err as Error).message;
      results.push({ target: stale.mountpoint, source, outcome: 'failed', reason });
      log.error({ target: stale.mountpoint, source, reason }, 'cannot repair a bind of the dead mount');
    }
  }
  return results;
}

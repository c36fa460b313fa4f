/**
 * The supervisor's anchor: a bind of the mount kept in a private directory, so that
 * consumers holding a bind of the mount point itself can be reached after a crash.
 *
 * A container whose hostPath volume resolves to the mount point holds a bind of
 * that mount in its own namespace, a slave of the mount's peer group. Detaching the
 * dead mount and mounting anew at the mount point does not reach that bind: the new
 * mount goes onto the parent directory, which the container does not see. A mount
 * made on top of a member of the old peer group does reach it, so the supervisor
 * keeps one member — the anchor — and `bind-repair.ts` treats it like any other
 * dead bind: it binds the new mount on top, and propagation stacks it on every
 * consumer's bind as well. The anchor's directory is a private mount, so the anchor
 * itself never shows up in other namespaces.
 *
 * Needs root (mount --bind); without it there is no anchor, and such consumers need
 * a restart. Each crash leaves one dead layer beneath the anchor (and beneath each
 * repaired bind); they all go when the anchor is released. An anchor names its
 * supervisor (`owner`); anchors of supervisors that were killed are swept away by
 * the next supervisor that starts, or by the serving process of a killed supervisor
 * when it ends.
 */
import { createHash } from 'node:crypto';
import { readlinkSync } from 'node:fs';
import { chmod, mkdir, readFile, readdir, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../log.js';
import { bindMount, lazyUnmount, makePrivateMount } from '../sys/mount-commands.js';
import { readMountTable } from '../sys/mountinfo.js';
import { isAlive } from '../sys/pid.js';

/**
 * Where anchors live: a directory per mount namespace (`/run` may be shared by containers), one
 * per mount point in it. A runtime dir of its own, 0700: not under /run/cachefs, the workers'
 * default --domain-socket-dir, which is a hostPath shared with other pods.
 */
export const ANCHOR_ROOT = '/run/cachefs-anchors';

/** An anchor directory without an owner younger than this may be one being made right now. */
const OWNERLESS_GRACE_MS = 60_000;

export class MountAnchor {
  private constructor(private readonly dir: string) {}

  /** The anchor's private directory for `mountpoint` in this mount namespace. */
  static dirFor(mountpoint: string): string {
    return path.join(namespaceRoot(), createHash('sha256').update(mountpoint).digest('hex').slice(0, 16));
  }

  /** Binds the live mount at `mountpoint` into a fresh private directory; undefined (logged) if that is not possible. */
  static async create(mountpoint: string, log: Logger): Promise<MountAnchor | undefined> {
    if (process.getuid?.() !== 0) return undefined;
    await MountAnchor.sweepOrphans(log);
    const dir = MountAnchor.dirFor(mountpoint);
    try {
      await MountAnchor.clear(dir); // left by a supervisor of this mount point that was killed
      const anchor = path.join(dir, 'mount');
      await mkdir(ANCHOR_ROOT, { recursive: true, mode: 0o700 });
      await chmod(ANCHOR_ROOT, 0o700);
      await mkdir(anchor, { recursive: true });
      await writeFile(path.join(dir, 'owner'), `${process.pid}\n`);
      await makePrivateMount(dir);
      await bindMount(mountpoint, anchor, false);
      return new MountAnchor(dir);
    } catch (err) {
      log.warn({ dir, err: (err as Error).message }, 'no anchor for the mount: consumers holding a bind of the mount point itself will not heal');
      await MountAnchor.clear(dir).catch(() => undefined);
      return undefined;
    }
  }

  /** Detaches the anchor with every layer beneath it and removes its directory. */
  async release(): Promise<void> {
    await MountAnchor.clear(this.dir);
  }

  /** Clears the anchors of this namespace whose supervisor is gone (killed, so it could not release them). */
  static async sweepOrphans(log: Logger): Promise<void> {
    if (process.getuid?.() !== 0) return;
    const root = namespaceRoot();
    let names: string[];
    try {
      names = await readdir(root);
    } catch {
      return;
    }
    for (const name of names) {
      const dir = path.join(root, name);
      const owner = Number((await readFile(path.join(dir, 'owner'), 'utf8').catch(() => '')).trim());
      const orphan = owner > 0 ? !isAlive(owner) : Date.now() - ((await stat(dir).catch(() => undefined))?.mtimeMs ?? 0) > OWNERLESS_GRACE_MS;
      if (!orphan) continue;
      await MountAnchor.clear(dir).then(
        () => log.info({ dir, owner }, 'cleared the anchor of a supervisor that is gone'),
        (err: unknown) => log.warn({ dir, err: (err as Error).message }, 'cannot clear the anchor of a supervisor that is gone'),
      );
    }
  }

  private static async clear(dir: string): Promise<void> {
    for (let i = 0; i < 4 && (await readMountTable()).some((m) => m.mountpoint === dir); i++) await lazyUnmount(dir);
    if ((await readMountTable()).some((m) => m.mountpoint.startsWith(`${dir}/`) || m.mountpoint === dir)) throw new Error(`${dir} is still mounted`);
    // Never a recursive delete: nothing mounted must ever be walked into.
    await rm(path.join(dir, 'owner'), { force: true });
    await rmdir(path.join(dir, 'mount')).catch(ignoreMissing);
    await rmdir(dir).catch(ignoreMissing);
    await rmdir(path.dirname(dir)).catch(() => undefined); // the namespace's directory, once empty
  }
}

/** Anchors of this mount namespace only: another namespace's are not ours to judge (nor are its pids). */
function namespaceRoot(): string {
  const ns = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/mnt'))?.[1] ?? 'unknown';
  return path.join(ANCHOR_ROOT, `mnt-${ns}`);
}


function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
}

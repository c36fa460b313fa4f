/**
 * The full mount table of a mount namespace, from `/proc/<pid>/mountinfo`: what
 * supervision needs beyond `mountpoint.ts`'s view — the device (`major:minor`, one
 * per FUSE connection, shared by every bind of it), the root of each mount inside
 * its filesystem (`/sub/dir` for a bind of a subdirectory) and the propagation
 * tags. Reading only; changing mounts is `bind-repair.ts`'s and the supervisor's.
 */
import { readFile } from 'node:fs/promises';

export interface MountEntry {
  /** Unique id of the mount in its namespace. */
  id: number;
  parentId: number;
  /** `major:minor` of the filesystem; a FUSE connection and all binds of it share it. */
  device: string;
  /** Path inside the filesystem that is mounted here (`/` for the whole filesystem). */
  root: string;
  mountpoint: string;
  /** Per-mount options (`ro,nosuid,nodev,relatime`). */
  options: string;
  /** Propagation tags: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`. */
  propagation: string[];
  fstype: string;
  source: string;
}

/** The mounts of this process's mount namespace, or of the namespace of process `pid`. */
export async function readMountTable(pid: number | 'self' = 'self'): Promise<MountEntry[]> {
  return parseMountInfo(await readFile(`/proc/${pid}/mountinfo`, 'utf8'));
}

export function parseMountInfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    if (left.length < 6 || right.length < 2) continue;
    out.push({
      id: Number(left[0]),
      parentId: Number(left[1]),
      device: left[2]!,
      root: unescapeOctal(left[3]!),
      mountpoint: unescapeOctal(left[4]!),
      options: left[5]!,
      propagation: left.slice(6),
      fstype: right[0]!,
      source: unescapeOctal(right[1]!),
    });
  }
  return out;
}

/** The mount on top at `mountpoint` (the last one listed there), if any. */
export function topMountAt(table: readonly MountEntry[], mountpoint: string): MountEntry | undefined {
  let top: MountEntry | undefined;
  for (const m of table) if (m.mountpoint === mountpoint) top = m;
  return top;
}

function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

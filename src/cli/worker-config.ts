/**
 * `cachefs worker` options (and the embedded worker of a sharing mount) parsed
 * into a typed config: tiers `MEDIUM:DIR:SIZE`, watermarks, addresses. Refuses
 * overlapping tier dirs, quotas larger than their disk, `--low` ≥ `--high`.
 */
import { statfsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseFraction, parsePort, parseSize } from '../config/units.js';
import { CachefsError } from '../errors.js';
import { parseCacheGroup, parseWorkerId } from '../master/api.js';
import type { Medium, TierConfig } from '../cache/tier.js';

const MEDIA: readonly Medium[] = ['MEM', 'SSD', 'HDD'];

export function parseTier(text: string): TierConfig {
  const first = text.indexOf(':');
  const last = text.lastIndexOf(':');
  const bad = (why: string): CachefsError => new CachefsError('INVALID_ARGUMENT', `invalid --tier '${text}': ${why} (expected MEDIUM:DIR:SIZE, e.g. SSD:/mnt/ssd/cachefs:100GiB)`);
  if (first < 0 || last === first) throw bad('missing parts');
  const medium = text.slice(0, first).toUpperCase();
  const dir = text.slice(first + 1, last);
  if (!MEDIA.includes(medium as Medium)) throw bad(`medium '${text.slice(0, first)}' is not MEM, SSD or HDD`);
  if (!path.isAbsolute(dir)) throw bad(`dir '${dir}' is not an absolute path`);
  return { medium: medium as Medium, dir: path.resolve(dir), quotaBytes: parseSize(text.slice(last + 1), `--tier size in '${text}'`) };
}

/** Checks tiers against each other and their disks. */
export function checkTiers(tiers: TierConfig[]): void {
  if (tiers.length === 0) throw new CachefsError('INVALID_ARGUMENT', 'no --tier given: expected at least one MEDIUM:DIR:SIZE');
  for (const a of tiers) {
    for (const b of tiers) {
      if (a !== b && (a.dir === b.dir || a.dir.startsWith(b.dir + path.sep))) {
        throw new CachefsError('INVALID_ARGUMENT', `tier dirs overlap: '${a.dir}' and '${b.dir}' (each tier needs its own directory)`);
      }
    }
    const disk = diskSize(a.dir);
    if (disk !== undefined && a.quotaBytes > disk) {
      throw new CachefsError('INVALID_ARGUMENT', `tier ${a.medium}:${a.dir} quota ${a.quotaBytes} bytes is larger than its disk (${disk} bytes)`);
    }
  }
}

/** Size of the filesystem holding `dir` (or its nearest existing parent). */
function diskSize(dir: string): number | undefined {
  for (let d = dir; ; d = path.dirname(d)) {
    try {
      const s = statfsSync(d);
      return s.blocks * s.bsize;
    } catch {
      if (d === path.dirname(d)) return undefined;
    }
  }
}

export function parseWatermarks(highText: string, lowText: string): { high: number; low: number } {
  const high = parseFraction(highText, '--high');
  const low = parseFraction(lowText, '--low');
  if (low >= high) throw new CachefsError('INVALID_ARGUMENT', `invalid --low '${lowText}': must be below --high (${highText})`);
  return { high, low };
}

/** The address other nodes reach this one at: the first non-loopback IPv4, else the hostname. */
export function defaultAdvertiseHost(listenHost: string): string {
  if (listenHost !== '0.0.0.0' && listenHost !== '::') return listenHost;
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return os.hostname();
}

export { parseCacheGroup, parseWorkerId, parsePort };

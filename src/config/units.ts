/**
 * Parsing of the units users type on the command line: sizes (`4MiB`, `2GiB`,
 * `512KiB`, `1.5G`, plain bytes) and durations (`500ms`, `1s`, `5m`, plain seconds).
 * Every error names the bad value and what was expected.
 */
import { CachefsError } from '../errors.js';

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kb: 1024, kib: 1024,
  m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1024 ** 4, tib: 1024 ** 4,
};

/** Parses a positive size in bytes. `what` names the option in the error message. */
export function parseSize(text: string, what: string, limits: { min?: number; max?: number } = {}): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text}': expected a size like 4MiB, 2GiB, 512KiB or a number of bytes`);
  }
  const bytes = Math.floor(Number(m[1]) * unit);
  const min = limits.min ?? 1;
  if (bytes < min) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text}': must be at least ${formatSize(min)}`);
  if (limits.max !== undefined && bytes > limits.max) {
    throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text}': must be at most ${formatSize(limits.max)}`);
  }
  return bytes;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, '': 1000, m: 60_000, h: 3_600_000 };

/** Parses a duration into milliseconds; a plain number means seconds. Zero is allowed. */
export function parseDuration(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|)\s*$/.exec(text);
  if (!m) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text}': expected a duration like 500ms, 1s, 5m or a number of seconds`);
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2]!]!);
}

/** Parses a fraction in [0, 1], e.g. a watermark. */
export function parseFraction(text: string, what: string): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) {
    throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text}': expected a number between 0 and 1`);
  }
  return n;
}

/** Parses a TCP port (0 lets the system pick). */
export function parsePort(text: string, what: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n > 65535) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text}': expected a port number from 0 to 65535`);
  return n;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) { v /= 1024; i++; }
  return `${v}${units[i]}`;
}

/**
 * Option parsing shared by subcommands: `KEY=VALUE` lists, `KEY=PATH` secret files,
 * default directories. Every error names the bad value and what was expected.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CachefsError } from '../errors.js';

/** Commander collector for repeatable options. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export function parsePairs(pairs: string[], what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${pair}': expected KEY=VALUE`);
    out[pair.slice(0, eq).trim()] = pair.slice(eq + 1);
  }
  return out;
}

/** `KEY=PATH` pairs whose values are read from files (Kubernetes secret mounts); the values are secrets. */
export function readSecretFiles(pairs: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, file] of Object.entries(parsePairs(pairs, '--option-from-file'))) {
    try {
      out[key] = readFileSync(file, 'utf8').trim();
    } catch (err) {
      throw new CachefsError('INVALID_ARGUMENT', `invalid --option-from-file '${key}=${file}': ${(err as { code?: string }).code ?? 'unreadable'}`);
    }
  }
  return out;
}

export function defaultCacheDir(): string {
  return process.getuid?.() === 0 ? '/var/cache/cachefs' : path.join(os.homedir(), '.cache', 'cachefs');
}

/**
 * Group names and ids, as `--domain-socket-group` takes them: a numeric gid, or a name
 * looked up in /etc/group (Node has no getgrnam). A name that is not there is an error
 * naming it, never a silent fallback.
 */
import { readFileSync } from 'node:fs';
import { CachefsError } from '../errors.js';

export function parseGroup(text: string, what: string, groupFile = '/etc/group'): number {
  if (/^\d+$/.test(text)) {
    const gid = Number(text);
    if (gid <= 0xfffffffe) return gid;
  }
  let lines: string[] = [];
  try {
    lines = readFileSync(groupFile, 'utf8').split('\n');
  } catch {
    // no group file: only numeric ids can be given
  }
  for (const line of lines) {
    const [name, , gid] = line.split(':');
    if (name === text && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text}': expected a group id or a group name of ${groupFile}`);
}

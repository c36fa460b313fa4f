/**
 * Which object-store names can be POSIX names. Object keys may contain empty
 * segments (`a//b`), `.` or `..`, or segments longer than a file name may be; such
 * objects are left out of listings (with one warning per listing), never crash one.
 */
const MAX_NAME_BYTES = 255;

export function isPosixName(name: string): boolean {
  return name !== '' && name !== '.' && name !== '..' && !name.includes('\0') && Buffer.byteLength(name) <= MAX_NAME_BYTES;
}

/** Splits a FUSE path (`/a/b`) into its UFS key (`a/b`); the root is ''. */
export function keyOfPath(path: string): string {
  // The kernel's paths (`/a/b`, built by childPath) take the short way: one lookup each of a walk.
  if (path.charCodeAt(0) === 0x2f && path.charCodeAt(1) !== 0x2f && path.charCodeAt(path.length - 1) !== 0x2f) return path.slice(1);
  return path.replace(/^\/+/, '').replace(/\/+$/, '');
}

/** The parent key of a key ('' for top-level entries). */
export function parentKey(key: string): string {
  const i = key.lastIndexOf('/');
  return i < 0 ? '' : key.slice(0, i);
}

export function baseName(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}

/**
 * `cachefs mount --fluid-config FILE`: the file Fluid's ThinRuntime writes for its FUSE
 * container (`/etc/fluid/config/config.json`), read into a `MountConfig`. Its shape is
 * Fluid's `Config` (fluid-cloudnative/fluid, pkg/ddc/thin/type.go, filled in by
 * transform_config.go), one line of JSON:
 *
 *     {"mounts":[{"mountPoint":"s3://bucket/images","name":"images","options":{...}}, ...],
 *      "targetPath":"/runtime-mnt/thin/<namespace>/<dataset>/thin-fuse",
 *      "runtimeOptions":{"cache-size":"20GiB"},"accessModes":["ReadOnlyMany"]}
 *
 * - `targetPath` is the mount point (made if missing, as Fluid's own FUSE scripts do);
 * - each of `mounts` is a source shown at its `path` when that is absolute, else at
 *   `/<name>` (Fluid's rule, pkg/utils/ufs_path_builder.go); one source at `/` is the
 *   whole mount;
 * - `options` are the source's UFS options, by their cachefs key (`s3.endpoint`) or
 *   without the scheme (`endpoint` of an s3:// source); a key no backend reads is refused;
 * - Fluid turns a Dataset's `encryptOptions` into options whose value is the file the
 *   Secret is mounted at, `/etc/fluid/secrets/<secret>/<key>`: such a value is replaced
 *   by the file's contents (with Fluid's config stored as a Secret, the value itself is
 *   written inline instead, and used as it is);
 * - `runtimeOptions` (the ThinRuntime's `fuse.options`) set mount flags of the same
 *   names, over the command line's (Fluid's rule: the runtime's options cover the
 *   profile's).
 *
 * Secrets stay in this process: never in argv (the serving process reads the file
 * again), never in a message or the log.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { CachefsError, isCachefsError } from '../errors.js';
import { Fields } from '../master/decode.js';
import { UFS_OPTION_KEYS } from '../ufs/option-keys.js';
import { parseUfsUri, type UfsScheme } from '../ufs/uri.js';
import { parseMountConfig, type MountConfig, type MountFlags, type NamespaceSource } from './mount-config.js';

/** Where Fluid mounts the Secrets of encrypted options in the FUSE container (pkg/ddc/thin/transform_config.go). */
export const FLUID_SECRETS_DIR = '/etc/fluid/secrets';

/** runtimeOptions keys and the mount flags they set. */
export const FLUID_RUNTIME_OPTIONS: Readonly<Record<string, keyof MountFlags>> = {
  'cache-dir': 'cacheDir',
  'cache-size': 'cacheSize',
  'block-size': 'blockSize',
  readahead: 'readahead',
  'meta-ttl': 'metaTtl',
  'attr-timeout': 'attrTimeout',
  'entry-timeout': 'entryTimeout',
  'allow-other': 'allowOther',
  'log-level': 'logLevel',
};

/** Flags that would give what the file gives: the sources and their options. */
const SOURCE_FLAGS: readonly [keyof MountFlags, string][] = [
  ['ufs', '--ufs'],
  ['master', '--master'],
  ['s3Endpoint', '--s3-endpoint'],
  ['s3Region', '--s3-region'],
  ['s3PathStyle', '--s3-path-style'],
];

/** The mount `file` describes, with the command line's other flags. */
export function fluidMountConfig(file: string, mountpoint: string | undefined, flags: MountFlags): MountConfig {
  if (mountpoint !== undefined) throw new CachefsError('INVALID_ARGUMENT', `--fluid-config gives the mount point (targetPath): drop MOUNTPOINT '${mountpoint}'`);
  for (const [key, flag] of SOURCE_FLAGS) {
    if (flags[key] !== undefined && flags[key] !== false) throw new CachefsError('INVALID_ARGUMENT', `${flag} excludes --fluid-config: the sources and their options come from the file`);
  }
  if (flags.option.length > 0 || flags.optionFromFile.length > 0) {
    throw new CachefsError('INVALID_ARGUMENT', "--option and --option-from-file exclude --fluid-config: each source's options come from the file");
  }
  let fluid: FluidConfig;
  try {
    fluid = readFluidConfig(file);
  } catch (err) {
    if (!isCachefsError(err, 'INVALID_ARGUMENT')) throw err;
    throw new CachefsError('INVALID_ARGUMENT', `invalid --fluid-config '${file}': ${err.message}`);
  }
  const mount = parseMountConfig(fluid.targetPath, { ...flags, ...fluid.runtimeFlags }, fluid.sources);
  makeTargetPath(mount.mountpoint);
  return mount;
}

interface FluidConfig {
  targetPath: string;
  sources: NamespaceSource[];
  runtimeFlags: Partial<MountFlags>;
}

function readFluidConfig(file: string): FluidConfig {
  const config = Fields.of(readJson(file), 'config');
  if (!config.has('targetPath')) throw new CachefsError('INVALID_ARGUMENT', 'missing targetPath (the mount point, e.g. /runtime-mnt/thin/default/data/thin-fuse)');
  const targetPath = config.string('targetPath');
  if (!path.isAbsolute(targetPath)) throw new CachefsError('INVALID_ARGUMENT', `targetPath '${targetPath}' is not an absolute path`);
  const modes = config.optionalArray('accessModes') ?? [];
  const writable = modes.filter((m) => typeof m !== 'string' || m.startsWith('ReadWrite'));
  if (writable.length > 0) throw new CachefsError('INVALID_ARGUMENT', `accessModes ${writable.join(', ')}: cachefs mounts read-only, expected ReadOnlyMany`);
  const mounts = config.optionalArray('mounts') ?? [];
  if (mounts.length === 0) throw new CachefsError('INVALID_ARGUMENT', 'no mounts: expected at least one Dataset mount');
  const sources = mounts.map((m, i) => parseSource(Fields.of(m, `mounts[${i}]`), i));
  const paths = new Set<string>();
  for (const s of sources) {
    if (paths.has(s.path)) throw new CachefsError('INVALID_ARGUMENT', `two mounts at ${s.path}: each needs its own name or path`);
    paths.add(s.path);
  }
  return { targetPath, sources, runtimeFlags: parseRuntimeOptions(config.stringMap('runtimeOptions')) };
}

function readJson(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CachefsError('INVALID_ARGUMENT', `cannot read it (${(err as { code?: string }).code ?? 'unreadable'})`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    // Only the position: V8's message quotes the text, and a config stored as a Secret holds secrets.
    const at = /position (\d+)/.exec((err as Error).message)?.[1];
    throw new CachefsError('INVALID_ARGUMENT', `not valid JSON${at === undefined ? '' : ` (at position ${at})`}`);
  }
}

function parseSource(m: Fields, index: number): NamespaceSource {
  const mountPoint = m.string('mountPoint');
  const name = m.optionalString('name') ?? '';
  const what = `mount '${name || index}'`;
  if (m.has('encryptOptions')) throw new CachefsError('INVALID_ARGUMENT', `${what} has encryptOptions: expected Fluid to have written them as options naming files under ${FLUID_SECRETS_DIR}`);
  let uri;
  try {
    uri = parseUfsUri(mountPoint);
  } catch (err) {
    throw new CachefsError('INVALID_ARGUMENT', `${what}: ${(err as Error).message}`);
  }
  // Fluid's rule: an absolute path as given, else /<name>.
  const given = m.optionalString('path');
  const at = given !== undefined && path.isAbsolute(given) ? given : `/${name.replace(/^\/+/, '')}`;
  const segments = at.split('/').filter((s) => s !== '');
  if (segments.length === 0 && given === undefined) throw new CachefsError('INVALID_ARGUMENT', `${what} has neither a name nor an absolute path: expected one to place it in the mount`);
  if (segments.some((s) => s === '.' || s === '..')) throw new CachefsError('INVALID_ARGUMENT', `${what}: path '${at}' may not contain '.' or '..'`);
  return { path: `/${segments.join('/')}`, uri, options: parseOptions(m.stringMap('options'), uri.scheme, what) };
}

/** A source's options under their cachefs keys, secrets read from the files Fluid names. */
function parseOptions(given: Record<string, string>, scheme: UfsScheme, what: string): Record<string, string> {
  const known = UFS_OPTION_KEYS[scheme];
  const out: Record<string, string> = {};
  const from: Record<string, string> = {};
  for (const [key, value] of Object.entries(given)) {
    const full = known.includes(key) ? key : known.includes(`${scheme}.${key}`) ? `${scheme}.${key}` : undefined;
    if (full === undefined) {
      const expected = known.length === 0 ? `${scheme}:// sources take no options` : `expected one of ${known.join(', ')}`;
      throw new CachefsError('INVALID_ARGUMENT', `unknown option '${key}' of ${what}: ${expected}`);
    }
    if (from[full] !== undefined) throw new CachefsError('INVALID_ARGUMENT', `options '${from[full]}' and '${key}' of ${what} both set ${full}`);
    from[full] = key;
    out[full] = value.startsWith(`${FLUID_SECRETS_DIR}/`) ? readSecret(value, key, what) : value;
  }
  return out;
}

/** The value of an encrypted option, from the file of its Secret that Fluid names. */
function readSecret(file: string, key: string, what: string): string {
  const resolved = path.resolve(file);
  if (!resolved.startsWith(`${FLUID_SECRETS_DIR}/`)) throw new CachefsError('INVALID_ARGUMENT', `option '${key}' of ${what} names ${file}, outside ${FLUID_SECRETS_DIR}`);
  let text: string;
  try {
    text = readFileSync(resolved, 'utf8').trim();
  } catch (err) {
    throw new CachefsError('INVALID_ARGUMENT', `cannot read the secret of option '${key}' of ${what} at ${resolved} (${(err as { code?: string }).code ?? 'unreadable'})`);
  }
  if (text === '') throw new CachefsError('INVALID_ARGUMENT', `the secret of option '${key}' of ${what} at ${resolved} is empty`);
  return text;
}

function parseRuntimeOptions(given: Record<string, string>): Partial<MountFlags> {
  const out: Partial<Record<keyof MountFlags, string | boolean>> = {};
  for (const [key, value] of Object.entries(given)) {
    const flag = FLUID_RUNTIME_OPTIONS[key];
    if (flag === undefined) throw new CachefsError('INVALID_ARGUMENT', `unknown runtimeOptions key '${key}': expected one of ${Object.keys(FLUID_RUNTIME_OPTIONS).join(', ')}`);
    if (flag !== 'allowOther') out[flag] = value;
    else if (['', 'true', 'false'].includes(value)) out[flag] = value !== 'false';
    else throw new CachefsError('INVALID_ARGUMENT', `runtimeOptions ${key} '${value}': expected true, false or empty (true)`);
  }
  return out as Partial<MountFlags>;
}

/** Fluid's FUSE scripts `mkdir -p` the targetPath; a path already there (a dead mount too) is left to the mount point checks. */
function makeTargetPath(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'EEXIST' || code === 'ENOTCONN') return;
    throw new CachefsError('INVALID_ARGUMENT', `cannot make the targetPath ${dir} of --fluid-config (${code ?? 'failed'})`);
  }
}

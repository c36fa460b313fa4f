/**
 * The mount(8) helper convention translated into a `cachefs mount` command line:
 * `mount.cachefs SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`, where
 * SOURCE is a UFS URI or `master=HOST:PORT` and every `cachefs mount` flag is an
 * option of the same name (`cache-size=10GiB`, `no-sharing`, `allow_other`). The
 * option table is read from the `cachefs mount` command itself, so a new flag is an
 * option at once. The generic options of mount(8) and systemd are understood here;
 * running the command is `mount-helper-main.ts`.
 *
 * Nothing secret may come through the option string: mount(8) and this helper show it
 * in `ps`, and options end up in logs and unit files. Secret values are refused; they
 * come from files (`option-from-file=KEY=PATH`, `auth-token-file=PATH`) or the
 * environment.
 */
import { Command, type Option } from 'commander';
import { CachefsError } from '../errors.js';
import { looksSecret } from '../master/api.js';
import { registerMountCommand } from './mount.js';

export interface HelperInvocation {
  source: string;
  mountpoint: string;
  /** The `-o` string as given (several `-o` joined by commas). */
  options: string;
  /** -s: ignore options this helper does not know. */
  sloppy: boolean;
  /** -f: check everything, mount nothing. */
  fake: boolean;
  /** -v: say what is run. */
  verbose: boolean;
}

/** The file-system types whose helpers we are (`-t` is passed for subtypes: `fuse.cachefs`). */
const TYPES = ['cachefs', 'fuse.cachefs'];

/** Parses the helper's argv (without node and script), flags before or after the two operands. */
export function parseHelperArgs(argv: readonly string[]): HelperInvocation {
  const operands: string[] = [];
  const options: string[] = [];
  const out = { sloppy: false, fake: false, verbose: false };
  const value = (i: number, flag: string): string => {
    const v = argv[i];
    if (v === undefined) throw usage(`${flag} needs a value`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '-o') options.push(value(++i, '-o'));
    else if (arg.startsWith('-o') && arg.length > 2) options.push(arg.slice(2));
    else if (arg === '-t') checkType(value(++i, '-t'));
    else if (arg === '-N' || arg.startsWith('--namespace')) throw usage('mounting in another namespace (-N) is not supported: run mount(8) inside that namespace');
    else if (/^-[sfnv]+$/.test(arg)) {
      if (arg.includes('s')) out.sloppy = true;
      if (arg.includes('f')) out.fake = true;
      if (arg.includes('v')) out.verbose = true;
      // -n (do not write /etc/mtab): there is no mtab to write; the kernel's table is the record.
    } else if (arg.startsWith('-') && arg !== '-') throw usage(`unknown flag '${arg}'`);
    else operands.push(arg);
  }
  if (operands.length !== 2) throw usage(`expected SOURCE and MOUNTPOINT, got ${operands.length} operand${operands.length === 1 ? '' : 's'}`);
  return { source: operands[0]!, mountpoint: operands[1]!, options: options.join(','), ...out };
}

/** `cachefs mount` arguments (after `mount`) for one helper invocation. */
export function mountCommandArgs(invocation: HelperInvocation): string[] {
  const args = [invocation.mountpoint, ...sourceArgs(invocation.source)];
  const flags = mountFlagTable();
  for (const option of splitOptions(invocation.options)) {
    const eq = option.indexOf('=');
    const name = eq < 0 ? option : option.slice(0, eq);
    const given = eq < 0 ? undefined : option.slice(eq + 1);
    if (isGeneric(name, given)) continue;
    const refusal = REFUSED[name];
    if (refusal) throw invalid(refusal);
    const flag = flags.get(name.replace(/_/g, '-'));
    if (!flag) {
      if (invocation.sloppy) continue;
      throw invalid(`unknown mount option '${name}': expected a 'cachefs mount' flag without its dashes (e.g. cache-size=10GiB, allow_other) or a generic option (ro, _netdev, nofail, x-systemd.*)`);
    }
    if (flag.takesValue && (given === undefined || given === '')) throw invalid(`mount option '${name}' needs a value: ${name}=${flag.valueName}`);
    if (!flag.takesValue && given !== undefined) throw invalid(`mount option '${name}' takes no value (got '${option}')`);
    if (flag.long === '--option') refuseInlineSecret(given!);
    args.push(flag.long, ...(given === undefined ? [] : [given]));
  }
  return args;
}

function sourceArgs(source: string): string[] {
  if (source.startsWith('master=')) return ['--master', source.slice('master='.length)];
  if (/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(source)) return ['--ufs', source];
  throw invalid(`invalid source '${source}': expected a UFS URI (s3://bucket/prefix, oss://..., cosn://..., file:///path) or master=HOST:PORT`);
}

/**
 * Options of mount(8) and systemd that need nothing from cachefs. mount(8) passes `ro`
 * (or `rw`), `nofail`, `_netdev` and the user-mount ones; it keeps `noauto`, `x-*` and
 * `comment=` to itself, but a helper run by hand may see them.
 */
const GENERIC = new Set([
  'defaults', 'ro', 'auto', 'noauto', '_netdev', 'nofail', 'user', 'users', 'owner', 'group', 'nouser',
  // cachefs mounts are always nosuid and nodev (`user` implies both).
  'nosuid', 'nodev', 'exec',
  // a read-only file system has no access times to keep.
  'atime', 'noatime', 'relatime', 'norelatime', 'strictatime', 'nostrictatime', 'lazytime', 'nolazytime', 'diratime', 'nodiratime',
  'async', 'silent', 'loud',
]);

function isGeneric(name: string, value: string | undefined): boolean {
  if (name.startsWith('x-') || name === 'comment') return true;
  return value === undefined && GENERIC.has(name);
}

const REFUSED: Record<string, string> = {
  rw: "cachefs mounts are read-only: give 'ro' (mount(8) passes 'rw' when 'ro' is not among the options)",
  suid: "cachefs mounts are always nosuid: remove 'suid'",
  dev: "cachefs mounts are always nodev: remove 'dev'",
  noexec: "'noexec' is not supported by cachefs mounts yet: remove it ('user' and 'users' imply it)",
  sync: "'sync' does not apply to a read-only cachefs mount: remove it",
  foreground: "'foreground' does not apply to mount.cachefs, which detaches once the mount answers: run 'cachefs mount --foreground' instead",
  ufs: "the UFS URI is the mount's source, not an option: 'mount -t cachefs s3://bucket/prefix MOUNTPOINT'",
  master: "the master is the mount's source, not an option: 'mount -t cachefs master=HOST:PORT MOUNTPOINT'",
};

function refuseInlineSecret(pair: string): void {
  const key = pair.slice(0, Math.max(pair.indexOf('='), 0)).trim();
  if (key && looksSecret(key)) {
    throw invalid(`refusing the secret option '${key}' given inline: it would show in ps and the mount's options; give option-from-file=${key}=/path/to/file, or the environment`);
  }
}

interface FlagSpec {
  long: string;
  takesValue: boolean;
  valueName: string;
}

/** `cachefs mount`'s flags by name without dashes (`cache-size`, `no-sharing`), the hidden ones left out. */
function mountFlagTable(): Map<string, FlagSpec> {
  const program = new Command('cachefs');
  registerMountCommand(program);
  const mount = program.commands.find((c) => c.name() === 'mount')!;
  const table = new Map<string, FlagSpec>();
  for (const option of mount.options as readonly (Option & { hidden?: boolean })[]) {
    if (!option.long || option.hidden) continue;
    const name = option.long.slice(2);
    if (name in REFUSED) continue;
    const valueName = /<([^>]+)>/.exec(option.flags)?.[1] ?? 'VALUE';
    table.set(name, { long: option.long, takesValue: option.required || option.optional, valueName: valueName.toUpperCase() });
  }
  return table;
}

/** Splits an option string at commas outside double quotes (`a="x,y"` is one option), dropping the quotes. */
export function splitOptions(text: string): string[] {
  const out: string[] = [];
  let current = '';
  let quoted = false;
  for (const ch of text) {
    if (ch === '"') quoted = !quoted;
    else if (ch === ',' && !quoted) {
      out.push(current);
      current = '';
    } else current += ch;
  }
  if (quoted) throw invalid(`unbalanced '"' in the mount options '${text}'`);
  out.push(current);
  return out.map((o) => o.trim()).filter((o) => o !== '');
}

function checkType(type: string): void {
  if (!TYPES.includes(type)) throw usage(`unexpected file-system type '${type}': expected ${TYPES.join(' or ')}`);
}

function usage(why: string): CachefsError {
  return invalid(`${why} (usage: mount.cachefs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS])`);
}

function invalid(message: string): CachefsError {
  return new CachefsError('INVALID_ARGUMENT', message);
}

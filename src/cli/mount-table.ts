/**
 * `cachefs mount-table add|list|remove|apply`: edits and shows the master's mount
 * table; `apply -f FILE` makes it what a file declares (a ConfigMap), idempotently.
 * Validates paths, URIs and options locally for a clear error before asking the
 * master; reads `--option-from-file` (and the file's `optionFromFile`) secrets here
 * and sends them, never printing them. Presents the cluster secret (`--auth-token-file` or
 * CACHEFS_AUTH_TOKEN_FILE). Wiring only: the table lives in `master/`.
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { CachefsError } from '../errors.js';
import { Fields } from '../master/decode.js';
import { parseUfsUri } from '../ufs/uri.js';
import { SECRET_PLACEHOLDER, type MountEntryView, type PutMountRequest } from '../master/api.js';
import { MasterClient } from '../master/client.js';
import { normalizeMountPath } from '../master/mount-path.js';
import { addClusterSecurityOptions, parseClusterSecurity, type ClusterSecurityFlags } from './cluster-options.js';
import { runAction } from './exit.js';
import { collect, parsePairs, readSecretFiles } from './options.js';

/** The master admin commands talk to unless `--master` says otherwise. */
export const DEFAULT_MASTER = '127.0.0.1:19998';

/** A client for one-shot admin commands: a few quick retries, then a clear error. */
export function adminClient(flags: MasterFlag): MasterClient {
  const { secret, clientTls } = parseClusterSecurity(flags, 'admin');
  return new MasterClient(flags.master, { retries: 2, timeoutMs: 10_000, backoffInitialMs: 200, backoffMaxMs: 1000, auth: secret, tls: clientTls });
}

async function withClient<T>(flags: MasterFlag, use: (client: MasterClient) => Promise<T>): Promise<T> {
  const client = adminClient(flags);
  try {
    return await use(client);
  } finally {
    await client.close();
  }
}

function describeOptions(entry: MountEntryView): string {
  const parts = [
    ...Object.entries(entry.options).map(([k, v]) => `${k}=${v}`),
    ...Object.keys(entry.secretOptions).map((k) => `${k}=${SECRET_PLACEHOLDER}`),
  ];
  return parts.length === 0 ? '' : parts.join(' ');
}

/** The listing as text: one line per entry, path, URI and options with secrets masked. */
export function formatMountTable(entries: MountEntryView[]): string {
  if (entries.length === 0) return 'the mount table is empty\n';
  const width = Math.max(...entries.map((e) => e.path.length));
  const uriWidth = Math.max(...entries.map((e) => e.uri.length));
  return entries.map((e) => `${e.path.padEnd(width)}  ${e.uri.padEnd(uriWidth)}  ${describeOptions(e)}`.trimEnd() + '\n').join('');
}

export interface MasterFlag extends ClusterSecurityFlags {
  master: string;
}

interface AddFlags extends MasterFlag {
  option: string[];
  optionFromFile: string[];
  replace?: boolean;
}

export function registerMountTableCommand(program: Command): void {
  const table = program.command('mount-table').description("edit and show the master's mount table (path → UFS URI and options)");

  const add = table
    .command('add')
    .description('map a path of the cachefs namespace to a UFS URI')
    .argument('<path>', 'absolute path in the namespace, e.g. /data')
    .argument('<uri>', 's3://bucket/prefix, oss://bucket/prefix, cosn://bucket-appid/prefix or file:///path')
    .option('--option <key=value>', 'UFS option, repeatable: s3.endpoint, s3.region, oss.endpoint, ...', collect, [])
    .option('--option-from-file <key=path>', 'UFS option read from a file (a secret: stored, never shown), repeatable', collect, [])
    .option('--replace', 'replace an existing entry at the same path')
    .option('--master <host:port>', 'the master', DEFAULT_MASTER);
  addClusterSecurityOptions(add, 'admin')
    .action(
      runAction(async (path: string, uri: string, flags: AddFlags) => {
        const mountPath = normalizeMountPath(path);
        parseUfsUri(uri);
        const options = parsePairs(flags.option, '--option');
        const secretOptions = readSecretFiles(flags.optionFromFile);
        const result = await withClient(flags, (c) => c.addMount({ path: mountPath, uri, options, secretOptions, replace: flags.replace === true }));
        const what = result.created ? 'added' : flags.replace ? 'set' : 'unchanged';
        process.stdout.write(`${what}: ${formatMountTable([result.entry])}`);
      }),
    );

  const list = table
    .command('list')
    .description('show the mount table (secret option values are never shown)')
    .option('--json', 'print JSON')
    .option('--master <host:port>', 'the master', DEFAULT_MASTER);
  addClusterSecurityOptions(list, 'admin')
    .action(
      runAction(async (flags: MasterFlag & { json?: boolean }) => {
        const entries = await withClient(flags, (c) => c.listMounts());
        process.stdout.write(flags.json ? `${JSON.stringify({ entries }, null, 2)}\n` : formatMountTable(entries));
      }),
    );

  const remove = table
    .command('remove')
    .description('remove the entry at a path')
    .argument('<path>', 'the path of the entry, e.g. /data')
    .option('--master <host:port>', 'the master', DEFAULT_MASTER);
  addClusterSecurityOptions(remove, 'admin')
    .action(
      runAction(async (path: string, flags: MasterFlag) => {
        const removed = await withClient(flags, (c) => c.removeMount(normalizeMountPath(path)));
        process.stdout.write(`removed: ${formatMountTable([removed])}`);
      }),
    );

  const apply = table
    .command('apply')
    .description('make the mount table what FILE declares: add new entries, replace changed ones; with --prune, remove the rest')
    .requiredOption('-f, --file <file>', 'YAML or JSON: {"mounts": [{"path": "/data", "uri": "s3://b/p", "options": {...}, "optionFromFile": {"s3.secretAccessKey": "/secrets/key"}}]}')
    .option('--prune', 'also remove entries the file does not declare')
    .option('--master <host:port>', 'the master', DEFAULT_MASTER);
  addClusterSecurityOptions(apply, 'admin')
    .action(
      runAction(async (flags: MasterFlag & { file: string; prune?: boolean }) => {
        const desired = readTableFile(flags.file);
        await withClient(flags, async (c) => {
          const current = new Map((await c.listMounts()).map((e) => [e.path, e]));
          for (const want of desired) {
            const have = current.get(want.path);
            if (have && sameEntry(have, want)) {
              process.stdout.write(`unchanged: ${want.path}\n`);
              continue;
            }
            await c.addMount({ ...want, replace: have !== undefined });
            process.stdout.write(`${have ? 'replaced' : 'added'}: ${want.path}\n`);
          }
          const declared = new Set(desired.map((e) => e.path));
          for (const path of current.keys()) {
            if (declared.has(path)) continue;
            if (!flags.prune) {
              process.stdout.write(`kept (not in the file; --prune removes it): ${path}\n`);
              continue;
            }
            await c.removeMount(path);
            process.stdout.write(`removed: ${path}\n`);
          }
        });
      }),
    );
}

/**
 * The entries a mount-table file (YAML or JSON) declares, validated and with their secret
 * files read.
 */
export function readTableFile(file: string): PutMountRequest[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CachefsError('INVALID_ARGUMENT', `invalid --file '${file}': ${(err as { code?: string }).code ?? 'unreadable'}`);
  }
  let raw: unknown;
  try {
    // YAML 1.2 is a superset of JSON: one parser reads both.
    raw = parseYaml(text);
  } catch (err) {
    throw new CachefsError('INVALID_ARGUMENT', `invalid --file '${file}': expected YAML or JSON (${(err as Error).message.split('\n')[0]})`);
  }
  const seen = new Set<string>();
  return Fields.of(raw, file).array('mounts').map((item, i) => {
    const f = Fields.of(item, `${file}: mounts[${i}]`);
    const path = normalizeMountPath(f.string('path'));
    if (seen.has(path)) throw new CachefsError('INVALID_ARGUMENT', `invalid --file '${file}': mounts[${i}] declares ${path} a second time`);
    seen.add(path);
    const uri = f.string('uri');
    parseUfsUri(uri);
    const fromFiles = Object.entries(f.stringMap('optionFromFile')).map(([key, secretFile]) => `${key}=${secretFile}`);
    return { path, uri, options: f.stringMap('options'), secretOptions: readSecretFiles(fromFiles) };
  });
}

/**
 * Whether the master's entry already is the declared one. Secret values are never shown by
 * the master, so an entry with secrets is never taken as unchanged: it is sent again, so a
 * rotated secret file takes effect.
 */
function sameEntry(have: MountEntryView, want: PutMountRequest): boolean {
  if (Object.keys(have.secretOptions).length > 0 || Object.keys(want.secretOptions ?? {}).length > 0) return false;
  return have.uri === want.uri && sameMap(have.options, want.options ?? {});
}

function sameMap(a: Record<string, string>, b: Record<string, string>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}

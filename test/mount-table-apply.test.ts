/**
 * `cachefs mount-table apply -f FILE`: the mount table declared by a file (a ConfigMap),
 * applied idempotently against a real master: adds, leaves equal entries alone, replaces
 * changed ones, removes undeclared ones only with --prune, takes secrets by file reference
 * and never shows them.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachefs } from './support/cachefs.js';
import { startMaster, stopAllServices, type ServiceProcess } from './support/cluster.js';

let master: ServiceProcess;
let work: string;
let file: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-apply-'));
  file = path.join(work, 'table.json');
  master = await startMaster();
});

afterAll(async () => {
  await stopAllServices();
  await rm(work, { recursive: true, force: true });
});

async function apply(mounts: unknown[], extra: string[] = []): Promise<{ code: number; stdout: string; stderr: string }> {
  await writeFile(file, JSON.stringify({ mounts }));
  return cachefs(['mount-table', 'apply', '-f', file, '--master', master.address, ...extra]);
}

async function listed(): Promise<{ path: string; uri: string; options: Record<string, string>; secretOptions: Record<string, string> }[]> {
  const r = await cachefs(['mount-table', 'list', '--json', '--master', master.address]);
  return (JSON.parse(r.stdout) as { entries: { path: string; uri: string; options: Record<string, string>; secretOptions: Record<string, string> }[] }).entries;
}

describe('mount-table apply', () => {
  it('adds, keeps equal entries, replaces changed ones, and removes undeclared ones only with --prune', async () => {
    const secretFile = path.join(work, 'secret-key');
    await writeFile(secretFile, 'very-secret-value\n', { mode: 0o600 });
    const first = await apply([
      { path: '/a', uri: 'file:///srv/a' },
      { path: '/b', uri: 's3://bucket/b', options: { 's3.endpoint': 'http://127.0.0.1:9000' }, optionFromFile: { 's3.secretAccessKey': secretFile } },
    ]);
    expect(first.code).toBe(0);
    expect(first.stdout).toBe('added: /a\nadded: /b\n');
    const entries = await listed();
    expect(entries.map((e) => [e.path, e.uri])).toEqual([['/a', 'file:///srv/a'], ['/b', 's3://bucket/b']]);
    expect(Object.keys(entries[1]!.secretOptions)).toEqual(['s3.secretAccessKey']);
    expect(JSON.stringify(entries)).not.toContain('very-secret-value');

    const again = await apply([{ path: '/a', uri: 'file:///srv/a' }]);
    expect(again.stdout).toBe('unchanged: /a\nkept (not in the file; --prune removes it): /b\n');

    const changed = await apply([{ path: '/a', uri: 'file:///srv/a2' }], ['--prune']);
    expect(changed.code).toBe(0);
    expect(changed.stdout).toBe('replaced: /a\nremoved: /b\n');
    expect((await listed()).map((e) => [e.path, e.uri])).toEqual([['/a', 'file:///srv/a2']]);

    // The same table as YAML, the way a ConfigMap holds it.
    const yamlFile = path.join(work, 'table.yaml');
    await writeFile(yamlFile, 'mounts:\n  - path: /a\n    uri: file:///srv/a2\n  - path: /y\n    uri: file:///srv/y\n    options:\n      s3.region: eu-west-1\n');
    const fromYaml = await cachefs(['mount-table', 'apply', '-f', yamlFile, '--master', master.address]);
    expect(fromYaml.stdout).toBe('unchanged: /a\nadded: /y\n');
    await cachefs(['mount-table', 'remove', '/y', '--master', master.address]);
  });

  it('refuses a bad file with one line naming it, changing nothing', async () => {
    const r = await apply([{ path: '/c', uri: 'ftp://nope' }]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('ftp://nope');
    await writeFile(file, '{ not json');
    const broken = await cachefs(['mount-table', 'apply', '-f', file, '--master', master.address]);
    expect(broken.code).toBe(2);
    expect(broken.stderr).toContain(`invalid --file '${file}': expected YAML or JSON`);
    expect((await listed()).map((e) => e.path)).toEqual(['/a']);
  });
});

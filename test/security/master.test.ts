/**
 * Findings 1 and 8 of issue 24, as attacks on a real `cachefs master` process:
 * anyone who reached its port read every secret option (`resolve-all`) and could
 * add (`/pwn` → `file:///`), replace or delete mount-table entries; its
 * `data.mdb` held the secrets in plain text and was 0644 in a meta dir that
 * already existed with 0755. Each attack must now fail: 401 without the cluster
 * secret (the probes excepted, which carry none), admin commands without it exit
 * 4, secrets never in data.mdb, the meta dir 0700 and its files 0600. Also: the
 * master refuses to start without a secret unless `--insecure`, which it warns
 * about (the one test of this suite that runs a cluster without a secret).
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cachefs } from '../support/cachefs.js';
import { AUTH_HEADER, CLUSTER_TOKEN, startMaster, stopAllServices } from '../support/cluster.js';
import { waitFor } from '../support/processes.js';

const FILE_SECRET = `file-secret-${randomBytes(12).toString('hex')}`;
const PLAIN_SECRET = `plain-secret-${randomBytes(12).toString('hex')}`;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-sec-master-'));
});

afterEach(async () => {
  await stopAllServices();
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function call(address: string, method: string, route: string, headers: Record<string, string> = {}, body?: unknown): Promise<{ status: number; text: string }> {
  const res = await fetch(`http://${address}${route}`, {
    method,
    headers: body === undefined ? headers : { ...headers, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, text: await res.text() };
}

/** A master with one entry whose secrets came from a file and from a secret-looking plain option. */
async function masterWithSecrets(metaDir?: string) {
  const master = await startMaster({ metaDir });
  const secretFile = path.join(work, `secret-${master.port}`);
  await writeFile(secretFile, `${FILE_SECRET}\n`, { mode: 0o600 });
  const add = await cachefs(['mount-table', 'add', '/data', 's3://bucket/prefix', '--master', master.address, '--option', 's3.endpoint=http://127.0.0.1:9', '--option', 's3.accessKeyId=AKIDvisible', '--option', `oss.accessKeySecret=${PLAIN_SECRET}`, '--option-from-file', `s3.secretAccessKey=${secretFile}`]);
  expect(add.code, add.stderr).toBe(0);
  return master;
}

describe('the master API', () => {
  it('refuses every /v1 route to callers without the cluster secret, and leaves the table as it was', async () => {
    const master = await masterWithSecrets();
    const attacks: [string, string, unknown?][] = [
      ['GET', '/v1/mount-table/resolve-all'],
      ['GET', '/v1/mount-table/resolve?path=/data/x'],
      ['GET', '/v1/mount-table'],
      ['PUT', '/v1/mount-table', { path: '/pwn', uri: 'file:///' }],
      ['PUT', '/v1/mount-table', { path: '/data', uri: 's3://bucket/prefix', options: { 's3.endpoint': 'http://attacker:9000' }, replace: true }],
      ['DELETE', '/v1/mount-table?path=/data'],
      ['GET', '/v1/workers'],
      ['POST', '/v1/workers/register', { id: 'evil', cacheGroup: 'g', address: '10.6.6.6:29999', hostname: 'evil', startedAt: 1, capacityBytes: 1, usedBytes: 0, blocks: 0 }],
      ['DELETE', '/v1/workers?id=any&force=1'],
      ['GET', '/v1/cache-groups'],
      ['GET', '/v1/namespace/list?prefix=data/'],
      ['GET', '/v1/namespace/stat?key=data/x'],
      ['POST', '/v1/namespace/refresh', { path: '/data' }],
      ['GET', '/v1/no-such-route'],
    ];
    for (const headers of [{} as Record<string, string>, { authorization: 'Bearer not-the-cluster-secret-at-all' }, { authorization: `Basic ${Buffer.from(`x:${CLUSTER_TOKEN}`).toString('base64')}` }, { authorization: CLUSTER_TOKEN }]) {
      for (const [method, route, body] of attacks) {
        const res = await call(master.address, method, route, headers, body);
        expect(res.status, `${method} ${route} with ${JSON.stringify(headers)}`).toBe(401);
        expect(JSON.parse(res.text)).toMatchObject({ error: { code: 'UNAUTHENTICATED', message: expect.stringMatching(/missing or wrong cluster secret/) } });
        for (const secret of [FILE_SECRET, PLAIN_SECRET]) expect(res.text).not.toContain(secret);
      }
    }
    // Nothing changed: one entry, the original endpoint, no /pwn.
    const table = await call(master.address, 'GET', '/v1/mount-table/resolve-all', { authorization: AUTH_HEADER });
    expect(table.status).toBe(200);
    expect(JSON.parse(table.text)).toMatchObject({ entries: [{ path: '/data', options: { 's3.endpoint': 'http://127.0.0.1:9' }, secretOptions: { 's3.secretAccessKey': FILE_SECRET } }] });
    expect((JSON.parse(table.text) as { entries: unknown[] }).entries).toHaveLength(1);
    // With the secret, listings still show no secret value.
    const list = await call(master.address, 'GET', '/v1/mount-table', { authorization: AUTH_HEADER });
    for (const secret of [FILE_SECRET, PLAIN_SECRET]) expect(list.text).not.toContain(secret);

    // Probes answer without it, and carry neither the secrets nor the token.
    for (const probe of ['/healthz', '/readyz', '/metrics']) {
      const res = await call(master.address, 'GET', probe);
      expect(res.status, probe).toBe(200);
      for (const secret of [FILE_SECRET, PLAIN_SECRET, CLUSTER_TOKEN]) expect(res.text).not.toContain(secret);
    }
    // The token never reaches the master's argv, environment, or output.
    const pid = master.child.pid!;
    for (const file of [`/proc/${pid}/cmdline`, `/proc/${pid}/environ`]) expect(await readFile(file, 'utf8')).not.toContain(CLUSTER_TOKEN);
    expect(master.output()).not.toContain(CLUSTER_TOKEN);
  });

  it('turns away admin commands without the cluster secret: exit 4 and one line', async () => {
    const master = await masterWithSecrets();
    const noSecret = { CACHEFS_AUTH_TOKEN_FILE: '' };
    for (const args of [['mount-table', 'list'], ['mount-table', 'add', '/pwn', 'file:///'], ['mount-table', 'remove', '/data'], ['report']]) {
      const r = await cachefs([...args, '--master', master.address], noSecret);
      expect(r.code, args.join(' ')).toBe(4);
      expect(r.stderr).toBe('cachefs: missing or wrong cluster secret: give the cluster token file with --auth-token-file (or CACHEFS_AUTH_TOKEN_FILE)\n');
    }
    expect((await cachefs(['mount-table', 'list', '--master', master.address])).stdout).toMatch(/^\/data\s+s3:\/\/bucket\/prefix\s/);
  });

  it('never writes secret options to data.mdb, and makes an existing 0755 meta dir 0700 with 0600 files', async () => {
    const metaDir = path.join(work, 'meta-0755');
    await mkdir(metaDir, { mode: 0o755 });
    await chmod(metaDir, 0o755);
    const master = await masterWithSecrets(metaDir);
    await master.stop();
    const mdb = await readFile(path.join(metaDir, 'data.mdb'));
    expect(mdb.includes('/data')).toBe(true); // the entry is there...
    for (const secret of [FILE_SECRET, PLAIN_SECRET]) expect(mdb.includes(secret), secret).toBe(false); // ...its secrets are not
    expect((await stat(metaDir)).mode & 0o777).toBe(0o700);
    for (const name of await readdir(metaDir)) expect((await stat(path.join(metaDir, name))).mode & 0o777, name).toBe(0o600);

    // The same secret opens them again after a restart...
    const again = await startMaster({ metaDir });
    const table = await call(again.address, 'GET', '/v1/mount-table/resolve-all', { authorization: AUTH_HEADER });
    expect(JSON.parse(table.text)).toMatchObject({ entries: [{ path: '/data', options: { 's3.accessKeyId': 'AKIDvisible' }, secretOptions: { 's3.secretAccessKey': FILE_SECRET, 'oss.accessKeySecret': PLAIN_SECRET } }] });
    await again.stop();

    // ...another one does not: the entry is left out, with an error in the log.
    const otherToken = path.join(work, 'other-token');
    await writeFile(otherToken, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const other = await startMaster({ metaDir, env: { CACHEFS_AUTH_TOKEN_FILE: otherToken } });
    expect(other.output()).toMatch(/does not open with this cluster secret.*skipping unreadable mount-table record/);
    for (const secret of [FILE_SECRET, PLAIN_SECRET]) expect(other.output()).not.toContain(secret);
  });
});

describe('starting a master', () => {
  it('refuses a token file others may read, and no secret at all unless --insecure, which it warns about at every start', async () => {
    const loose = path.join(work, 'loose-token');
    await writeFile(loose, `${randomBytes(32).toString('hex')}\n`, { mode: 0o644 });
    await chmod(loose, 0o644);
    const base = ['master', '--host', '127.0.0.1', '--port', '0'];
    const tooOpen = await cachefs([...base, '--meta-dir', path.join(work, 'm1'), '--auth-token-file', loose], {}, 30_000);
    expect(tooOpen).toMatchObject({ code: 2, stderr: expect.stringMatching(/^cachefs: invalid --auth-token-file '.*loose-token': other users may access it \(mode 0644\)/) });
    const none = await cachefs([...base, '--meta-dir', path.join(work, 'm2')], { CACHEFS_AUTH_TOKEN_FILE: '' }, 30_000);
    expect(none).toMatchObject({ code: 2, stderr: 'cachefs: no cluster secret: expected --auth-token-file FILE (or CACHEFS_AUTH_TOKEN_FILE=FILE), or --insecure to run without one\n' });
    expect((await readdir(work)).filter((n) => n === 'm1' || n === 'm2')).toEqual([]);

    const metaDir = path.join(work, 'insecure-meta');
    for (let start = 0; start < 2; start++) {
      const insecure = await startMaster({ metaDir, args: ['--insecure'], env: { CACHEFS_AUTH_TOKEN_FILE: '' } });
      await waitFor(() => /running without a cluster secret \(--insecure\): anyone who reaches 127\.0\.0\.1:\d+ can read and change the mount table/.test(insecure.output()), { what: 'the --insecure warning' });
      // It keeps no secret options: it could neither seal them nor keep them from anyone.
      const put = await call(insecure.address, 'PUT', '/v1/mount-table', {}, { path: '/d', uri: 's3://bucket/p', options: { 's3.secretAccessKey': PLAIN_SECRET } });
      expect(put.status).toBe(400);
      expect(put.text).toMatch(/runs without a cluster secret \(--insecure\), so it cannot keep secret options \(s3\.secretAccessKey\)/);
      await insecure.stop();
    }
  });
});

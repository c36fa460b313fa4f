/**
 * Findings 2, 3 and 5 of issue 24, as attacks on a real cluster (master, a
 * worker, a cluster mount) whose mount table has a `file://` entry: a block
 * request without the cluster secret, or with an empty `etag` (which skipped the
 * version check), or with a block size of the caller's choosing; a `file://` FIFO
 * (whose open blocked the worker's thread pool) and a symlink out of the root; and
 * a fake worker that registers the real one's id or deletes it so that mounts
 * read the attacker's bytes. Each must fail: 401, 400, 403 at once, 409, 403 —
 * and the mount keeps reading the right bytes from the real worker.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, mkdtemp, open, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockRef } from '../../src/block/block.js';
import { blockRequestPath } from '../../src/net/block-protocol.js';
import { LocalUfs } from '../../src/ufs/local.js';
import { NAMESPACE_MOUNT_ID } from '../../src/ufs/namespace.js';
import { parseUfsUri } from '../../src/ufs/uri.js';
import { cachefs, mountCachefs, sh, sha256Of, stopAllMounts, type TestMount } from '../support/cachefs.js';
import { addMountEntry, AUTH_HEADER, startMaster, startWorker, stopAllServices, type ServiceProcess } from '../support/cluster.js';
import { expectServedBy } from '../support/metrics.js';
import { isMounted, runCommand } from '../support/processes.js';

const MiB = 1024 * 1024;
const DATA = randomBytes(3 * MiB + 17);
const OUTSIDE = `outside the root ${randomBytes(8).toString('hex')}\n`;
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

let work: string;
let root: string;
let master: ServiceProcess;
let worker: ServiceProcess & { id: string; stateDir: string };
let mount: TestMount;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-sec-workers-'));
  root = path.join(work, 'root');
  await mkdir(root);
  await mkdir(path.join(work, 'outside'));
  await writeFile(path.join(root, 'data.bin'), DATA);
  await writeFile(path.join(work, 'outside', 'secret.txt'), OUTSIDE);
  await symlink(path.join(work, 'outside', 'secret.txt'), path.join(root, 'escape'));
  const mkfifo = await runCommand('mkfifo', [path.join(root, 'pipe')]);
  expect(mkfifo.code, mkfifo.stderr).toBe(0);
  master = await startMaster();
  await addMountEntry(master.address, '/sec', `file://${root}`);
  worker = await startWorker({ master: master.address, cacheGroup: 'sec' });
  mount = await mountCachefs({ args: ['--master', master.address, '--cache-group', 'sec', '--no-sharing'] });
}, 120_000);

afterAll(async () => {
  // Be the writer a blocked open of the FIFO waits for (an O_RDWR open of a FIFO never blocks).
  const fifo = await open(path.join(root, 'pipe'), constants.O_RDWR).catch(() => undefined);
  await fifo?.close();
  await stopAllMounts();
  await stopAllServices();
  if (work) await rm(work, { recursive: true, force: true });
});

/** The block request path for block `index` of a file, as a mount would ask for it (`etag`, `bs` overridable). */
function blockPath(key: string, object: { size: number; etag: string }, opts: { bs?: number; etag?: string; index?: number } = {}): string {
  const ref = blockRef({ mount: NAMESPACE_MOUNT_ID, key, etag: opts.etag ?? object.etag, size: object.size }, opts.bs ?? 4 * MiB, opts.index ?? 0);
  return blockRequestPath(ref);
}

async function get(p: string, headers: Record<string, string> = { authorization: AUTH_HEADER }, timeoutMs = 10_000): Promise<{ status: number; body: Buffer }> {
  const res = await fetch(`http://${worker.address}${p}`, { headers, signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, body: Buffer.from(await res.arrayBuffer()) };
}

async function stat(key: string, dir = root): Promise<{ size: number; etag: string }> {
  const ufs = new LocalUfs(parseUfsUri(`file://${dir}`));
  const o = await ufs.stat(key);
  await ufs.close();
  return o!;
}

describe("a worker's block service", () => {
  it('answers 401 and no bytes to a block request without the cluster secret', async () => {
    const p = blockPath('sec/data.bin', await stat('data.bin'));
    const ok = await get(p);
    expect(ok.status).toBe(200);
    expect(ok.body.equals(DATA)).toBe(true); // one block: the whole file
    const served = (await worker.metrics()).value('cachefs_worker_served_bytes_total');
    for (const headers of [{} as Record<string, string>, { authorization: 'Bearer wrong-secret-0123456789abcdef' }]) {
      const refused = await get(p, headers);
      expect(refused.status).toBe(401);
      expect(JSON.parse(refused.body.toString())).toMatchObject({ error: { code: 'UNAUTHENTICATED' } });
    }
    expect((await worker.metrics()).value('cachefs_worker_served_bytes_total')).toBe(served);
    // Probes need no secret.
    expect((await get('/healthz', {})).status).toBe(200);
  });

  it('refuses a block request with an empty etag, or with a block size other than its own (400)', async () => {
    const object = await stat('data.bin');
    for (const [what, p] of [
      ['empty etag', blockPath('sec/data.bin', object, { etag: '' })],
      ['bs 1MiB', blockPath('sec/data.bin', object, { bs: MiB })],
      ['bs 256MiB', blockPath('sec/data.bin', { size: 256 * MiB, etag: object.etag }, { bs: 256 * MiB })],
    ] as const) {
      const res = await get(p);
      expect(res.status, what).toBe(400);
      expect(JSON.parse(res.body.toString()), what).toMatchObject({ error: { code: 'INVALID_ARGUMENT', message: expect.stringMatching(/etag must name the version|is not this worker's block size 4194304/) } });
    }
  });

  it('refuses a FIFO under a file:// root at once, and keeps serving', async () => {
    // More blocks than libuv's pool has threads (one etag each: the worker fetches one block once, so
    // requests for the same block would share one open): blocking opens would stall all of them, and the worker.
    const fifo = (i: number): string => blockPath('sec/pipe', { size: 4096, etag: `version-${i}` });
    const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => get(fifo(i), undefined, 5000).then((r) => r.status, (err: unknown) => String(err))));
    expect(answers).toEqual(Array(6).fill(403));
    const after = await get(blockPath('sec/data.bin', await stat('data.bin'), { index: 0 }), undefined, 5000);
    expect(after.status).toBe(200);
  });

  it('does not follow a symlink out of a file:// root, through the block service or the mount', async () => {
    const res = await get(blockPath('sec/escape', await stat('secret.txt', path.join(work, 'outside'))));
    expect(res.status).toBe(403);
    expect(res.body.toString()).not.toContain(OUTSIDE.trim());
    const ls = await sh(`ls -a ${mount.mountpoint}/sec`);
    expect(ls.stdout.split('\n').filter(Boolean).sort()).toEqual(['.', '..', 'data.bin']);
    const cat = await sh(`cat ${mount.mountpoint}/sec/escape`);
    expect(cat.code).not.toBe(0);
    expect(cat.stdout).toBe('');
  });
});

describe('processes with another cluster secret', () => {
  it('are turned away: a mount and a worker exit 4 with one line, nothing mounted or registered', async () => {
    const other = path.join(work, 'other-token');
    await writeFile(other, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const env = { CACHEFS_AUTH_TOKEN_FILE: other };
    const mnt = path.join(work, 'refused-mnt');
    await mkdir(mnt);
    const m = await cachefs(['mount', mnt, '--master', master.address, '--cache-group', 'sec', '--no-sharing', '--cache-dir', path.join(work, 'refused-cache'), '--foreground'], env, 60_000);
    expect(m).toMatchObject({ code: 4, stderr: `cachefs: the master at ${master.address} refused this mount: missing or wrong cluster secret: give the cluster token file with --auth-token-file (or CACHEFS_AUTH_TOKEN_FILE)\n` });
    expect(await isMounted(mnt)).toBe(false);
    const w = await cachefs(['worker', '--master', master.address, '--cache-group', 'sec', '--id', 'refused', '--host', '127.0.0.1', '--port', '0', '--tier', `SSD:${path.join(work, 'refused-tier')}:64MiB`, '--state-dir', path.join(work, 'refused-state'), '--domain-socket-dir', 'none'], env, 30_000);
    expect(w).toMatchObject({ code: 4, stderr: expect.stringMatching(/^cachefs: missing or wrong cluster secret/) });
    expect(w.stderr.trim().split('\n')).toHaveLength(1);
    const workers = await fetch(`http://${master.address}/v1/workers`, { headers: { authorization: AUTH_HEADER } });
    expect(((await workers.json()) as { workers: { id: string }[] }).workers.map((x) => x.id)).not.toContain('refused');
  });
});

describe('worker registration', () => {
  it('keeps a live worker from being replaced or removed by another caller, and mounts read its bytes', async () => {
    /** Who holds which id, where, since which registration. */
    const listed = async (): Promise<string[]> => {
      const res = await fetch(`http://${master.address}/v1/workers?cacheGroup=sec`, { headers: { authorization: AUTH_HEADER } });
      const { workers } = (await res.json()) as { workers: { id: string; address: string; instance: string; registeredAt: number; state: string }[] };
      return workers.map((w) => `${w.id} ${w.address} ${w.instance} ${w.registeredAt} ${w.state}`);
    };
    const before = await listed();
    expect(before).toEqual([expect.stringMatching(new RegExp(`^${worker.id} ${worker.address} .* alive$`))]);
    const fake = { id: worker.id, cacheGroup: 'sec', address: '127.0.0.1:9', hostname: os.hostname(), domainSocketPath: '', startedAt: Date.now(), capacityBytes: 1, usedBytes: 0, blocks: 0, tiers: [] };
    const post = (headers: Record<string, string>, body: unknown): Promise<Response> =>
      fetch(`http://${master.address}/v1/workers/register`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const remove = (headers: Record<string, string>, query = ''): Promise<Response> => fetch(`http://${master.address}/v1/workers?id=${worker.id}${query}`, { method: 'DELETE', headers });

    // The attack of the issue, without the cluster secret: remove the real worker, register the id at our address.
    expect((await remove({})).status).toBe(401);
    expect((await post({}, fake)).status).toBe(401);
    // With the secret but without the worker's registration credential: no removal unless an admin says force...
    const denied = await remove({ authorization: AUTH_HEADER });
    expect(denied.status).toBe(403);
    expect(await denied.json()).toMatchObject({ error: { code: 'ACCESS_DENIED' } });
    expect((await remove({ authorization: AUTH_HEADER, 'x-cachefs-worker-credential': 'guessed' })).status).toBe(403);
    // ...and not its id, at any address (its own included: that took a live id over before).
    expect((await post({ authorization: AUTH_HEADER }, fake)).status).toBe(409);
    expect((await post({ authorization: AUTH_HEADER }, { ...fake, address: worker.address })).status).toBe(409);
    expect((await post({ authorization: AUTH_HEADER }, { ...fake, credential: 'guessed' })).status).toBe(409);

    expect(await listed()).toEqual(before);
    expect(await sha256Of(path.join(mount.mountpoint, 'sec/data.bin'))).toBe(sha(DATA));
    expectServedBy(await mount.metrics(), 'remote', DATA.length);
    expect(worker.output()).not.toMatch(/taken by another live worker/);
  });

  it('lets a restarted worker that keeps its state dir take its id back at once; one without it is refused', async () => {
    const args = { master: master.address, cacheGroup: 'sec-restart', id: 'sec-restart-w' };
    const first = await startWorker(args);
    await first.kill();
    // Registered again well within the master's 3 s worker timeout: the credential in the state dir proves it.
    const started = Date.now();
    const again = await startWorker({ ...args, stateDir: first.stateDir });
    expect(Date.now() - started).toBeLessThan(3000);
    const impostor = await cachefs(['worker', '--master', master.address, '--cache-group', 'sec-restart', '--id', args.id, '--host', '127.0.0.1', '--port', '0', '--tier', `SSD:${path.join(work, 'impostor-tier')}:64MiB`, '--state-dir', path.join(work, 'impostor-state'), '--domain-socket-dir', 'none'], {}, 30_000);
    expect(impostor.code).toBe(6);
    expect(impostor.stderr).toMatch(/^cachefs: worker id 'sec-restart-w' is already registered by a live worker/);
    await again.stop();
  });
});

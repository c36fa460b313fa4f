/**
 * The dataset routes of `cachefs load` as attacks: a worker asked to fill, list or
 * drop blocks without the cluster secret (or with a wrong one) answers 401 and does
 * nothing; an embedded mount's control socket lives in a private dir (0700, the
 * socket and its token 0600) and refuses a request without the mount's token; a fill
 * cannot size blocks of the caller's choosing.
 */
import { randomBytes } from 'node:crypto';
import { request } from 'node:http';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockRef } from '../../src/block/block.js';
import { LocalUfs } from '../../src/ufs/local.js';
import { NAMESPACE_MOUNT_ID } from '../../src/ufs/namespace.js';
import { parseUfsUri } from '../../src/ufs/uri.js';
import { controlDirFor } from '../../src/worker/control-socket.js';
import { BLOCK_FILE, mountCachefs, stopAllMounts, type TestMount } from '../support/cachefs.js';
import { addMountEntry, AUTH_HEADER, startMaster, startWorker, stopAllServices, type ServiceProcess } from '../support/cluster.js';

const MiB = 1024 * 1024;
const DATA = randomBytes(2 * MiB + 5);

let work: string;
let root: string;
let worker: ServiceProcess & { tierDir: string };
let mount: TestMount;
let fillBody: string;

async function blockCount(dir: string): Promise<number> {
  return (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => e.isFile() && BLOCK_FILE.test(e.name)).length;
}

async function post(url: string, body: string, headers: Record<string, string>): Promise<{ status: number; text: string }> {
  const res = await fetch(url, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers }, signal: AbortSignal.timeout(20_000) });
  return { status: res.status, text: await res.text() };
}

/** A POST over a Unix socket. */
function postSocket(socketPath: string, p: string, body: string, headers: Record<string, string>): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: p, method: 'POST', headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-sec-dataset-'));
  root = path.join(work, 'root');
  await mkdir(root);
  await writeFile(path.join(root, 'data.bin'), DATA);
  const master = await startMaster();
  await addMountEntry(master.address, '/sec', `file://${root}`);
  worker = await startWorker({ master: master.address, cacheGroup: 'sec', blockSize: '1MiB' });
  const ufs = new LocalUfs(parseUfsUri(`file://${root}`));
  const o = (await ufs.stat('data.bin'))!;
  await ufs.close();
  fillBody = JSON.stringify({ bs: MiB, threads: 4, objects: [{ mount: NAMESPACE_MOUNT_ID, key: 'sec/data.bin', etag: o.etag, size: o.size, indexes: [0, 1, 2] }] });
  mount = await mountCachefs({ ufs: `file://${root}`, args: ['--block-size', '1MiB'] });
}, 120_000);

afterAll(async () => {
  await stopAllMounts();
  await stopAllServices();
  if (work) await rm(work, { recursive: true, force: true });
});

describe("a worker's dataset routes", () => {
  it('answer 401 to fill, inventory and evict without the cluster secret or with a wrong one, and fill nothing', async () => {
    const base = `http://${worker.address}/v1/dataset`;
    const id = blockRef({ mount: NAMESPACE_MOUNT_ID, key: 'sec/data.bin', etag: 'x', size: 1 }, MiB, 0).id;
    const refused: Record<string, string>[] = [{}, { authorization: `Bearer ${'0'.repeat(64)}` }];
    for (const headers of refused) {
      expect((await post(`${base}/fill`, fillBody, headers)).status).toBe(401);
      expect((await post(`${base}/inventory`, JSON.stringify({ ids: [id] }), headers)).status).toBe(401);
      expect((await post(`${base}/evict`, JSON.stringify({ ids: [id] }), headers)).status).toBe(401);
    }
    expect(await blockCount(worker.tierDir)).toBe(0);
    // The same fill with the secret does fill: the 401s above were the secret's doing.
    const ok = await post(`${base}/fill`, fillBody, { authorization: AUTH_HEADER });
    expect(ok.status).toBe(200);
    expect(ok.text.trim().split('\n').at(-1)).toBe('{"done":true}');
    expect(await blockCount(worker.tierDir)).toBe(3);
  });

  it('refuse a fill of another block size, and a walk (a worker walks no tree)', async () => {
    const other = await post(`http://${worker.address}/v1/dataset/fill`, fillBody.replace(`"bs":${MiB}`, `"bs":${2 * MiB}`), { authorization: AUTH_HEADER });
    expect(other.status).toBe(400);
    expect(other.text).toContain("is not this server's block size");
    const walk = await post(`http://${worker.address}/v1/dataset/walk`, JSON.stringify({ path: '' }), { authorization: AUTH_HEADER });
    expect(walk.status).toBe(404);
  });
});

describe("an embedded mount's control socket", () => {
  it('is in a private dir, and refuses a request without the mount’s token', async () => {
    const dir = controlDirFor(mount.mountpoint);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(path.join(dir, 'control.sock'))).mode & 0o777).toBe(0o600);
    expect((await stat(path.join(dir, 'token'))).mode & 0o777).toBe(0o600);
    const socketPath = path.join(dir, 'control.sock');
    const walk = JSON.stringify({ path: '' });
    expect((await postSocket(socketPath, '/v1/dataset/walk', walk, {})).status).toBe(401);
    expect((await postSocket(socketPath, '/v1/dataset/walk', walk, { authorization: AUTH_HEADER })).status).toBe(401);
  });
});

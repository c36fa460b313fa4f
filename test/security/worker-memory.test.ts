/**
 * A worker's memory under a flood of cold block requests (finding 5): 64 requests at once
 * for 64 different cold 4 MiB blocks would hold 512 MiB (each request's answer and the
 * block it fetches). The worker holds at most its in-flight budget, answers the rest
 * 503 with Retry-After, and its peak RSS stays far below what serving all at once costs;
 * every block it does answer is right.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockRef } from '../../src/block/block.js';
import { blockRequestPath } from '../../src/net/block-protocol.js';
import { LocalUfs } from '../../src/ufs/local.js';
import { NAMESPACE_MOUNT_ID } from '../../src/ufs/namespace.js';
import { parseUfsUri } from '../../src/ufs/uri.js';
import { addMountEntry, AUTH_HEADER, startMaster, startWorker, stopAllServices, type ServiceProcess } from '../support/cluster.js';

const MiB = 1024 * 1024;
const BLOCKS = 64;

let work: string;
let worker: ServiceProcess;
let object: { size: number; etag: string };
/** A pattern that differs in every block, so a wrong block is caught. */
const blockBytes = (i: number): Buffer => Buffer.alloc(4 * MiB, `block ${i} `);

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-sec-mem-'));
  const root = path.join(work, 'root');
  await mkdir(root);
  await writeFile(path.join(root, 'big.bin'), Buffer.concat(Array.from({ length: BLOCKS }, (_, i) => blockBytes(i))));
  const ufs = new LocalUfs(parseUfsUri(`file://${root}`));
  const { size, etag } = (await ufs.stat('big.bin'))!;
  object = { size, etag };
  await ufs.close();
  const master = await startMaster();
  await addMountEntry(master.address, '/m', `file://${root}`);
  worker = await startWorker({ master: master.address, cacheGroup: 'mem' });
}, 120_000);

afterAll(async () => {
  await stopAllServices();
  if (work) await rm(work, { recursive: true, force: true });
});

async function peakRssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

describe("a worker's memory under a flood of cold block requests", () => {
  it('stays within its in-flight budget: the rest are answered 503 with Retry-After, the answered ones are right', async () => {
    const before = await peakRssMiB(worker.child.pid!);
    const answers = await Promise.all(
      Array.from({ length: BLOCKS }, async (_, i) => {
        const p = blockRequestPath(blockRef({ mount: NAMESPACE_MOUNT_ID, key: 'm/big.bin', etag: object.etag, size: object.size }, 4 * MiB, i));
        const res = await fetch(`http://${worker.address}${p}`, { headers: { authorization: AUTH_HEADER } });
        return { i, status: res.status, retryAfter: res.headers.get('retry-after'), body: Buffer.from(await res.arrayBuffer()) };
      }),
    );
    const busy = answers.filter((a) => a.status === 503);
    const served = answers.filter((a) => a.status === 200);
    expect(busy.length + served.length).toBe(BLOCKS);
    expect(busy.length).toBeGreaterThan(0);
    expect(busy.every((a) => a.retryAfter === '1')).toBe(true);
    expect(served.length).toBeGreaterThan(0);
    for (const a of served) expect(createHash('sha256').update(a.body).digest('hex')).toBe(createHash('sha256').update(blockBytes(a.i)).digest('hex'));
    const peak = await peakRssMiB(worker.child.pid!);
    // Serving all 64 at once holds 512 MiB more; the budget is 128 MiB.
    expect(peak - before, `peak RSS ${peak} MiB, ${before} MiB before`).toBeLessThan(300);
  });
});

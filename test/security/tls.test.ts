/**
 * TLS across a real cluster (issue 24, "optional TLS"): a master and a worker
 * serving HTTPS with a certificate the test makes with openssl, admin commands
 * and a mount verifying them with the CA (`--tls-ca`). A mount reads every byte
 * from the worker over HTTPS; a client that trusts another CA, or speaks plain
 * HTTP, gets nothing.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachefs, mountCachefs, sh, sha256Of, stopAllMounts } from '../support/cachefs.js';
import { AUTH_HEADER, startMaster, startWorker, stopAllServices, type ServiceProcess } from '../support/cluster.js';
import { expectServedBy } from '../support/metrics.js';
import { freePort, isMounted } from '../support/processes.js';
import { startS3Server, type S3TestServer } from '../support/s3-server.js';
import { makeTestPki, type TestPki } from '../support/tls.js';

const DATA = randomBytes(6 * 1024 * 1024 + 3);
let pki: TestPki;
let s3: S3TestServer;
let master: ServiceProcess;
let worker: ServiceProcess;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'cachefs-sec-tls-'));
  pki = await makeTestPki();
  s3 = await startS3Server({ buckets: ['data'] });
  await s3.putObject('data', 'x.bin', DATA);
  const serve = ['--tls-cert', pki.cert, '--tls-key', pki.key];
  master = await startMaster({ args: serve });
  const add = await cachefs(['mount-table', 'add', '/data', 's3://data', '--master', master.address, '--tls-ca', pki.ca, '--option', `s3.endpoint=${s3.endpoint}`, '--option', 's3.accessKeyId=S3RVER', '--option', 's3.secretAccessKey=S3RVER']);
  expect(add.code, add.stderr).toBe(0);
  worker = await startWorker({ master: master.address, cacheGroup: 'tls', args: [...serve, '--tls-ca', pki.ca] });
}, 120_000);

afterAll(async () => {
  await stopAllMounts();
  await stopAllServices();
  await s3?.close();
  await pki?.remove();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('a cluster with TLS', () => {
  it('serves a mount every byte from a worker over HTTPS, verified with the CA', async () => {
    const m = await mountCachefs({ args: ['--master', master.address, '--cache-group', 'tls', '--no-sharing', '--tls-ca', pki.ca] });
    expect(await sha256Of(path.join(m.mountpoint, 'data/x.bin'))).toBe(createHash('sha256').update(DATA).digest('hex'));
    expectServedBy(await m.metrics(), 'remote', DATA.length);
    const report = await cachefs(['report', '--master', master.address, '--tls-ca', pki.ca]);
    expect(report.stdout).toMatch(/cache group tls: 1 alive/);
    await m.stop();
  });

  it('gives nothing to a client that trusts another CA or speaks plain HTTP', async () => {
    const wrongCa = await cachefs(['mount-table', 'list', '--master', master.address, '--tls-ca', pki.otherCa]);
    expect(wrongCa.code).toBe(5);
    expect(wrongCa.stderr).toMatch(/^cachefs: cannot reach master 127\.0\.0\.1:\d+: .*certificate/i);
    const plain = await cachefs(['mount-table', 'list', '--master', master.address]);
    expect(plain.code).toBe(5);
    for (const address of [master.address, worker.address]) {
      const r = await sh(`curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: ${AUTH_HEADER}' http://${address}/healthz`);
      expect(r.stdout, address).toBe('000');
      const verified = await sh(`curl -s --cacert ${pki.ca} https://${address}/healthz`);
      expect(verified.stdout, address).toMatch(/ok/);
    }
    const mnt = path.join(work, 'mnt');
    await mkdir(mnt);
    const mount = await cachefs(['mount', mnt, '--master', master.address, '--cache-group', 'tls', '--no-sharing', '--tls-ca', pki.otherCa, '--cache-dir', path.join(work, 'cache'), '--foreground', '--metrics-port', String(await freePort())], {}, 60_000);
    expect(mount.code).not.toBe(0);
    expect(mount.stderr.trim().split('\n')).toHaveLength(1);
    expect(mount.stderr).toMatch(/^cachefs: cannot get the mount table from the master at .*certificate/i);
    expect(await isMounted(mnt)).toBe(false);
  });
});

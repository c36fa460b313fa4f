/**
 * Certificates for TLS tests, made by `openssl` in a temporary directory: a CA,
 * and a server certificate it signs for 127.0.0.1 and localhost. A second,
 * unrelated CA lets a test show that a client trusting the wrong CA refuses the
 * server.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { runCommand } from './processes.js';

export interface TestPki {
  dir: string;
  /** CA certificate that signed `cert`. */
  ca: string;
  cert: string;
  key: string;
  /** Another CA, which signed nothing here. */
  otherCa: string;
  remove(): Promise<void>;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  const r = await runCommand('openssl', args, { cwd, timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export async function makeTestPki(): Promise<TestPki> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-pki-'));
  for (const ca of ['ca', 'other-ca']) await openssl(['req', '-x509', ...EC, '-keyout', `${ca}.key`, '-out', `${ca}.crt`, '-days', '2', '-subj', `/CN=${ca}`], dir);
  await openssl(['req', ...EC, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=cachefs-test'], dir);
  await writeFile(path.join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  await openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.crt', '-days', '2', '-extfile', 'san.ext'], dir);
  return {
    dir,
    ca: path.join(dir, 'ca.crt'),
    cert: path.join(dir, 'server.crt'),
    key: path.join(dir, 'server.key'),
    otherCa: path.join(dir, 'other-ca.crt'),
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

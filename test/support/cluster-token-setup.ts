/**
 * vitest globalSetup: the cluster secret of a whole test run. Before any test file runs it
 * makes one temp dir (0700) holding a token file (0600), hands the file's path to the test
 * workers (vitest's provide; support/cluster.ts injects it), and removes the dir when the
 * run ends, also when tests failed. A dir made by each test file at module load outlived the
 * run: vitest ends its worker processes without their `exit` handlers running.
 *
 * The secret travels only in the file, never in argv or the environment: the security tests
 * check that a master's /proc environ does not hold it, and every process a test starts
 * inherits the test process's environment.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The run's cluster token file (see support/cluster.ts). */
    clusterTokenFile: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cachefs-token-'));
  const remove = (): Promise<void> => rm(dir, { recursive: true, force: true });
  try {
    const file = path.join(dir, 'token');
    await writeFile(file, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
    project.provide('clusterTokenFile', file);
  } catch (err) {
    await remove();
    throw err;
  }
  return remove;
}

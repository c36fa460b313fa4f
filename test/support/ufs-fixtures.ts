/**
 * One seeded source of each kind — file://, s3:// (s3rver), oss:// and cosn://
 * (the protocol test servers) — holding the same objects, with what a mount needs
 * to reach it: the URI, the CLI arguments (secrets passed as files, never argv)
 * and the environment.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startCosServer } from './cos-server.js';
import { startOssServer } from './oss-server.js';
import { startS3Server } from './s3-server.js';

export type SourceKind = 'file' | 's3' | 'oss' | 'cos';

export interface Source {
  kind: SourceKind;
  uri: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  /** Whether keys that cannot be POSIX paths (`a//b`, `x/../y`) can be stored. */
  storesAnyKey: boolean;
  close(): Promise<void>;
}

const SECRET = 'test-secret-Zq8w';

/** Options as `--option` pairs, with those that look secret read from files instead. */
async function optionArgs(dir: string, options: Record<string, string>): Promise<string[]> {
  const args: string[] = [];
  for (const [key, value] of Object.entries(options)) {
    if (/secret|token/i.test(key)) {
      const file = path.join(dir, key);
      await writeFile(file, value, { mode: 0o600 });
      args.push('--option-from-file', `${key}=${file}`);
    } else args.push('--option', `${key}=${value}`);
  }
  return args;
}

/** Starts a source of `kind` holding `objects` (keys ending in '/' are directory markers). */
export async function startSource(kind: SourceKind, objects: Record<string, Buffer>): Promise<Source> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `cachefs-src-${kind}-`));
  const cleanup = (): Promise<void> => rm(dir, { recursive: true, force: true });
  switch (kind) {
    case 'file': {
      const root = path.join(dir, 'root');
      for (const [key, body] of Object.entries(objects)) {
        const file = path.join(root, key);
        if (key.endsWith('/')) await mkdir(file, { recursive: true });
        else {
          await mkdir(path.dirname(file), { recursive: true });
          await writeFile(file, body);
        }
      }
      return { kind, uri: `file://${root}`, args: [], env: {}, storesAnyKey: false, close: cleanup };
    }
    case 's3': {
      const s3 = await startS3Server({ buckets: ['data'] });
      await s3.putObjects('data', Object.entries(objects).map(([key, body]) => ({ key, body })));
      const args = ['--s3-endpoint', s3.endpoint, ...(await optionArgs(dir, { 's3.accessKeyId': 'S3RVER', 's3.secretAccessKey': 'S3RVER' }))];
      return { kind, uri: 's3://data', args, env: {}, storesAnyKey: false, close: async () => { await s3.close(); await cleanup(); } };
    }
    case 'oss': {
      const oss = await startOssServer({ buckets: ['data'], accessKeyId: 'LTAItestkey', secret: SECRET });
      for (const [key, body] of Object.entries(objects)) oss.put('data', key, body);
      return { kind, uri: 'oss://data', args: await optionArgs(dir, oss.ufsOptions()), env: {}, storesAnyKey: true, close: async () => { await oss.close(); await cleanup(); } };
    }
    case 'cos': {
      const cos = await startCosServer({ buckets: ['data-1250000000'], accessKeyId: 'AKIDtestkey', secret: SECRET });
      for (const [key, body] of Object.entries(objects)) cos.put('data-1250000000', key, body);
      return { kind, uri: 'cosn://data-1250000000', args: await optionArgs(dir, cos.ufsOptions()), env: {}, storesAnyKey: true, close: async () => { await cos.close(); await cleanup(); } };
    }
  }
}

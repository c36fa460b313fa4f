/**
 * One seeded source of each kind — file://, s3:// (s3rver), oss:// and cosn://
 * (the protocol test servers) — holding the same objects, with what a mount needs
 * to reach it: the URI, the CLI arguments (secrets passed as files, never argv)
 * and the environment. A source can also replace objects while mounted, for tests
 * of changed content.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startCosServer } from './cos-server.js';
import { startOssServer } from './oss-server.js';
import { startS3Server } from './s3-server.js';

export type SourceKind = 'file' | 's3' | 'oss' | 'cos';

export const SOURCE_KINDS: readonly SourceKind[] = ['file', 's3', 'oss', 'cos'];

export interface Source {
  kind: SourceKind;
  /** The URI of the whole source (bucket or folder); `uriOf(prefix)` for a part of it. */
  uri: string;
  uriOf(prefix: string): string;
  args: string[];
  env: NodeJS.ProcessEnv;
  /** Whether keys that cannot be POSIX paths (`a//b`, `x/../y`) can be stored. */
  storesAnyKey: boolean;
  /** Stores or replaces one object (a key ending in '/' is a directory marker). */
  put(key: string, body: Buffer): Promise<void>;
  close(): Promise<void>;
}

/** The secret every credentialed source of this module is started with. */
export const SOURCE_SECRET = 'test-secret-Zq8w';

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

interface Started {
  uri: string;
  args: string[];
  storesAnyKey: boolean;
  put(key: string, body: Buffer): Promise<void>;
  stop(): Promise<void>;
}

async function startKind(kind: SourceKind, dir: string): Promise<Started> {
  switch (kind) {
    case 'file': {
      const root = path.join(dir, 'root');
      await mkdir(root);
      const put = async (key: string, body: Buffer): Promise<void> => {
        const file = path.join(root, key);
        if (key.endsWith('/')) await mkdir(file, { recursive: true });
        else {
          await mkdir(path.dirname(file), { recursive: true });
          await writeFile(file, body);
        }
      };
      return { uri: `file://${root}`, args: [], storesAnyKey: false, put, stop: async () => undefined };
    }
    case 's3': {
      const s3 = await startS3Server({ buckets: ['data'] });
      const args = ['--s3-endpoint', s3.endpoint, ...(await optionArgs(dir, { 's3.accessKeyId': s3.accessKeyId, 's3.secretAccessKey': s3.secretAccessKey }))];
      return { uri: 's3://data', args, storesAnyKey: false, put: async (key, body) => void (await s3.putObject('data', key, body)), stop: () => s3.close() };
    }
    case 'oss': {
      const oss = await startOssServer({ buckets: ['data'], accessKeyId: 'LTAItestkey', secret: SOURCE_SECRET });
      const put = async (key: string, body: Buffer): Promise<void> => void oss.put('data', key, body);
      return { uri: 'oss://data', args: await optionArgs(dir, oss.ufsOptions()), storesAnyKey: true, put, stop: () => oss.close() };
    }
    case 'cos': {
      const cos = await startCosServer({ buckets: ['data-1250000000'], accessKeyId: 'AKIDtestkey', secret: SOURCE_SECRET });
      const put = async (key: string, body: Buffer): Promise<void> => void cos.put('data-1250000000', key, body);
      return { uri: 'cosn://data-1250000000', args: await optionArgs(dir, cos.ufsOptions()), storesAnyKey: true, put, stop: () => cos.close() };
    }
  }
}

/** Starts a source of `kind` holding `objects` (keys ending in '/' are directory markers). */
export async function startSource(kind: SourceKind, objects: Record<string, Buffer>): Promise<Source> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `cachefs-src-${kind}-`));
  let started: Started | undefined;
  const close = async (): Promise<void> => {
    await started?.stop();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    started = await startKind(kind, dir);
    const s = started;
    const entries = Object.entries(objects);
    // Bounded concurrency: s3rver writes each object to disk.
    for (let i = 0; i < entries.length; i += 32) await Promise.all(entries.slice(i, i + 32).map(([key, body]) => s.put(key, body)));
    return {
      kind,
      uri: s.uri,
      uriOf: (prefix) => `${s.uri}/${prefix}`,
      args: s.args,
      env: {},
      storesAnyKey: s.storesAnyKey,
      put: s.put,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

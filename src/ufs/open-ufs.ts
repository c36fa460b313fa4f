/**
 * Opens the Ufs backend for a parsed URI. Backends are imported lazily so that a
 * mount of one store never loads the SDKs of the others.
 */
import type { Ufs, UfsOptions } from './ufs.js';
import { parseUfsUri, type UfsUri } from './uri.js';

type Backend = (uri: UfsUri, options: UfsOptions) => Ufs;

/** Each scheme's backend, imported at its first use. */
const BACKENDS: Record<UfsUri['scheme'], () => Promise<Backend>> = {
  file: async () => {
    const { LocalUfs } = await import('./local.js');
    return (uri) => new LocalUfs(uri);
  },
  s3: async () => {
    const { S3Ufs } = await import('./s3.js');
    return (uri, options) => new S3Ufs(uri, options);
  },
  oss: async () => {
    const { OssUfs } = await import('./oss.js');
    return (uri, options) => new OssUfs(uri, options);
  },
  cos: async () => {
    const { CosUfs } = await import('./cos.js');
    return (uri, options) => new CosUfs(uri, options);
  },
};

export async function openUfs(uri: string | UfsUri, options: UfsOptions = {}): Promise<Ufs> {
  const parsed = typeof uri === 'string' ? parseUfsUri(uri) : uri;
  return (await BACKENDS[parsed.scheme]())(parsed, options);
}

/** Imports the backend of `scheme` ahead of its use (a standby serving process does: taking over then loads no SDK). */
export async function loadUfsBackend(scheme: UfsUri['scheme']): Promise<void> {
  await BACKENDS[scheme]();
}

/**
 * A backend opened at its first use rather than now (an error opening it is then that
 * call's), for a process that may never use it: `cachefs load` walks the master's
 * namespace cache and has the workers fetch, the backends being only its fallback, and
 * loading the S3 SDK cost it ~0.5 s of CPU before its first request.
 */
export function openUfsOnUse(uri: string | UfsUri, options: UfsOptions = {}): Ufs {
  const parsed = typeof uri === 'string' ? parseUfsUri(uri) : uri;
  let opened: Promise<Ufs> | undefined;
  const ufs = (): Promise<Ufs> => (opened ??= openUfs(parsed, options));
  return {
    displayUri: parsed.text,
    check: async (signal) => (await ufs()).check(signal),
    stat: async (key, signal) => (await ufs()).stat(key, signal),
    list: async (prefix, listOptions) => (await ufs()).list(prefix, listOptions),
    readInto: async (key, offset, dest, readOptions) => (await ufs()).readInto(key, offset, dest, readOptions),
    close: async () => {
      if (opened) await (await opened.catch(() => undefined))?.close();
    },
  };
}

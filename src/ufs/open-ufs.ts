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

/**
 * Opens the Ufs backend for a parsed URI. Backends are imported lazily so that a
 * mount of one store never loads the SDKs of the others.
 */
import type { Ufs, UfsOptions } from './ufs.js';
import { parseUfsUri, type UfsUri } from './uri.js';

export async function openUfs(uri: string | UfsUri, options: UfsOptions = {}): Promise<Ufs> {
  const parsed = typeof uri === 'string' ? parseUfsUri(uri) : uri;
  switch (parsed.scheme) {
    case 'file': {
      const { LocalUfs } = await import('./local.js');
      return new LocalUfs(parsed);
    }
    case 's3': {
      const { S3Ufs } = await import('./s3.js');
      return new S3Ufs(parsed, options);
    }
    case 'oss': {
      const { OssUfs } = await import('./oss.js');
      return new OssUfs(parsed, options);
    }
    case 'cos': {
      const { CosUfs } = await import('./cos.js');
      return new CosUfs(parsed, options);
    }
  }
}

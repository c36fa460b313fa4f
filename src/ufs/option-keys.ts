/**
 * The option keys each backend reads (`s3.endpoint`, `oss.accessKeySecret`, ...), so
 * that a configuration naming a key no backend reads can be refused instead of being
 * ignored. The backends read their options themselves; this list says which they are
 * (test/fluid-config.test.ts checks it against the backends' sources).
 */
import type { UfsScheme } from './uri.js';

export const UFS_OPTION_KEYS: Readonly<Record<UfsScheme, readonly string[]>> = {
  s3: ['s3.endpoint', 's3.region', 's3.pathStyle', 's3.accessKeyId', 's3.secretAccessKey', 's3.sessionToken'],
  oss: ['oss.endpoint', 'oss.region', 'oss.signatureVersion', 'oss.accessKeyId', 'oss.accessKeySecret', 'oss.securityToken'],
  cos: ['cos.endpoint', 'cos.region', 'cos.secretId', 'cos.secretKey', 'cos.securityToken'],
  file: [],
};

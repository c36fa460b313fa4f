/**
 * The options every cluster command shares to reach the cluster safely: the
 * cluster secret (`--auth-token-file`, or the file CACHEFS_AUTH_TOKEN_FILE names;
 * `--insecure` to run without one, which every start then warns about) and TLS
 * (`--tls-cert`/`--tls-key` for what a process serves, `--tls-ca` to verify what it
 * connects to). The files are read here, once, when the flags are parsed. A
 * master, worker or cluster mount refuses to start with neither a secret nor
 * `--insecure`; the admin commands present the secret when they have one.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import { AUTH_TOKEN_ENV, ClusterSecret, type ClusterAuth } from '../net/auth.js';
import type { ClientTls, ServerTls } from '../net/tls.js';

export interface ClusterSecurityFlags {
  authTokenFile?: string;
  insecure?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
}

export interface ClusterSecurity {
  /** Whom the process's servers admit. */
  auth: ClusterAuth;
  /** What its clients present; none when it runs `--insecure` (or an admin command has none). */
  secret?: ClusterSecret;
  /** What its servers present. */
  serverTls?: ServerTls;
  /** What its clients trust: with it, they speak HTTPS to the master and the workers. */
  clientTls?: ClientTls;
}

/** master: serves only; worker and mount: serve and connect; admin: connects, secret optional. */
export type ClusterRole = 'master' | 'worker' | 'mount' | 'admin';

export function addClusterSecurityOptions(command: Command, role: ClusterRole): Command {
  command.option('--auth-token-file <file>', `the cluster secret: a file only its owner (and group) may read (default: the file $${AUTH_TOKEN_ENV} names)`);
  if (role !== 'admin') {
    command
      .option('--insecure', 'run without a cluster secret: whoever reaches the ports may use them (warned at every start)')
      .option('--tls-cert <file>', `serve HTTPS with this certificate (PEM)${role === 'mount' ? ' (the embedded worker of a sharing mount)' : ''}`)
      .option('--tls-key <file>', 'the private key of --tls-cert (PEM)');
  }
  if (role !== 'master') command.option('--tls-ca <file>', 'speak HTTPS to the master and workers, verifying them with this CA certificate (PEM)');
  return command;
}

/** True when any of these flags is given (a mount of one UFS takes none of them). */
export function hasClusterSecurityFlags(flags: ClusterSecurityFlags): boolean {
  return [flags.authTokenFile, flags.insecure, flags.tlsCert, flags.tlsKey, flags.tlsCa].some((f) => f !== undefined && f !== false);
}

export function parseClusterSecurity(flags: ClusterSecurityFlags, role: ClusterRole, env: NodeJS.ProcessEnv = process.env): ClusterSecurity {
  const fromEnv = env[AUTH_TOKEN_ENV] === '' ? undefined : env[AUTH_TOKEN_ENV];
  const file = flags.authTokenFile ?? fromEnv;
  const what = flags.authTokenFile !== undefined ? '--auth-token-file' : AUTH_TOKEN_ENV;
  if (file !== undefined && flags.insecure) throw new CachefsError('INVALID_ARGUMENT', `--insecure and a cluster secret (${what}) exclude each other`);
  if (file === undefined && !flags.insecure && role !== 'admin') {
    throw new CachefsError('INVALID_ARGUMENT', `no cluster secret: expected --auth-token-file FILE (or ${AUTH_TOKEN_ENV}=FILE), or --insecure to run without one`);
  }
  if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) throw new CachefsError('INVALID_ARGUMENT', '--tls-cert and --tls-key go together: expected both or neither');
  const secret = file === undefined ? undefined : ClusterSecret.fromFile(file, what);
  return {
    auth: secret ?? 'insecure',
    secret,
    serverTls: flags.tlsCert !== undefined && flags.tlsKey !== undefined ? { cert: readPem(flags.tlsCert, '--tls-cert'), key: readPem(flags.tlsKey, '--tls-key') } : undefined,
    clientTls: flags.tlsCa !== undefined ? { ca: readPem(flags.tlsCa, '--tls-ca') } : undefined,
  };
}

/** The warning an `--insecure` process logs at every start: what it leaves open (`consequence`). */
export function warnIfInsecure(security: ClusterSecurity, log: Logger, consequence: string): void {
  if (security.auth !== 'insecure') return;
  log.warn(`running without a cluster secret (--insecure): ${consequence}; give --auth-token-file to close that`);
}

function readPem(file: string, what: string): Buffer {
  try {
    const pem = readFileSync(file);
    if (!pem.includes('-----BEGIN ')) throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${file}': not a PEM file`);
    return pem;
  } catch (err) {
    if (err instanceof CachefsError) throw err;
    throw new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${file}': cannot read it (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`, { cause: err });
  }
}

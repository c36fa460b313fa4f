/**
 * Parsing of `host:port` network addresses: the `--master` option of every
 * command and the block-service address a worker advertises. Accepts a
 * hostname, an IPv4 address or a bracketed IPv6 address (`[::1]:19998`), and an
 * optional `http://` in front; nothing else (no paths, no credentials).
 */
import { CachefsError } from '../errors.js';

export interface HostPort {
  host: string;
  port: number;
  /** Normalized `host:port` text (IPv6 hosts in brackets). */
  text: string;
  /** `http://host:port`, for undici. */
  origin: string;
}

const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?$/;

export function parseHostPort(text: string, what: string): HostPort {
  const bad = (why: string): CachefsError =>
    new CachefsError('INVALID_ARGUMENT', `invalid ${what} '${text}': ${why} (expected host:port, e.g. master-0:19998 or 10.0.0.5:19998)`);
  const rest = text.trim().replace(/^http:\/\//i, '').replace(/\/$/, '');
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^:/\[\]@]+):(\d{1,5})$/.exec(rest);
  if (!m) throw bad('not a host:port');
  const rawHost = m[1]!;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw bad(`port ${port} is not between 1 and 65535`);
  const host = rawHost.startsWith('[') ? rawHost.slice(1, -1) : rawHost;
  if (!rawHost.startsWith('[') && !HOSTNAME.test(host)) throw bad(`'${host}' is not a valid host name`);
  const hostText = rawHost.startsWith('[') ? rawHost : host;
  return { host, port, text: `${hostText}:${port}`, origin: `http://${hostText}:${port}` };
}

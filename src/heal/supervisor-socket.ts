/**
 * The supervisor's control socket: `supervisor.sock` in the mount's runtime dir
 * (`controlDirFor`, 0700; the socket 0600), one JSON line each way. Its one request is
 * an upgrade: `cachefs mount` of a new build on a live mount point hands its serving
 * command to the running supervisor, which starts it on the kept connection
 * (`MountSupervisor.upgrade`). Whoever reaches the socket has the supervisor run a
 * command as itself, so only its user can: the modes of the dir and the socket.
 */
import { createConnection, createServer, type Server } from 'node:net';
import { chmod, unlink } from 'node:fs/promises';
import path from 'node:path';
import { CachefsError, ERROR_CODES, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { ServingCommand } from './supervisor.js';

const SOCKET_NAME = 'supervisor.sock';
/** How long an upgrade may take: the new build's standby loads, the old process drains, the new one takes over. */
const UPGRADE_TIMEOUT_MS = 120_000;

export interface UpgradeRequest {
  kind: 'upgrade';
  command: ServingCommand;
  /** What the kernel mount was made with (source, allow_other, owner): an upgrade must not change it. */
  fuseOptions: string;
}

export type UpgradeAnswer = { ok: true; servingPid: number } | { ok: false; code: ErrorCode; message: string };

export class SupervisorSocket {
  private constructor(private readonly server: Server, private readonly socketPath: string) {}

  /** Listens in `dir` (the mount's runtime dir, which the serving process made private). */
  static async listen(dir: string, upgrade: (request: UpgradeRequest) => Promise<UpgradeAnswer>, log: Logger): Promise<SupervisorSocket> {
    const socketPath = path.join(dir, SOCKET_NAME);
    await unlink(socketPath).catch(() => undefined); // a killed supervisor's
    const server = createServer((conn) => {
      let text = '';
      conn.setEncoding('utf8');
      conn.on('data', (chunk: string) => {
        text += chunk;
        const end = text.indexOf('\n');
        if (end < 0) return;
        conn.removeAllListeners('data');
        const request = asUpgradeRequest(parse(text.slice(0, end)));
        const answer: Promise<UpgradeAnswer> = request ? upgrade(request) : Promise.resolve({ ok: false, code: 'INVALID_ARGUMENT', message: 'expected an upgrade request' });
        answer.then(
          (a) => conn.end(`${JSON.stringify(a)}\n`),
          (err: unknown) => conn.end(`${JSON.stringify({ ok: false, code: 'IO', message: (err as Error).message })}\n`),
        );
      });
      conn.on('error', (err) => log.debug({ err: err.message }, 'a supervisor socket connection failed'));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new CachefsError('CONFLICT', `cannot listen on ${socketPath}: ${err.message}`)));
      server.listen(socketPath, resolve);
    });
    await chmod(socketPath, 0o600);
    return new SupervisorSocket(server, socketPath);
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await unlink(this.socketPath).catch(() => undefined);
  }
}

/** Asks the supervisor of the mount whose runtime dir is `dir` to upgrade; undefined when no supervisor listens there. */
export function askUpgrade(dir: string, request: UpgradeRequest): Promise<UpgradeAnswer | undefined> {
  return new Promise((resolve, reject) => {
    const conn = createConnection(path.join(dir, SOCKET_NAME));
    let text = '';
    let connected = false;
    conn.setEncoding('utf8');
    conn.setTimeout(UPGRADE_TIMEOUT_MS, () => conn.destroy(new CachefsError('TIMEOUT', `the supervisor did not answer the upgrade within ${UPGRADE_TIMEOUT_MS / 1000} s`)));
    conn.on('connect', () => {
      connected = true;
      conn.write(`${JSON.stringify(request)}\n`);
    });
    conn.on('data', (chunk: string) => (text += chunk));
    conn.on('end', () => {
      const answer = asUpgradeAnswer(parse(text.trim()));
      if (answer) resolve(answer);
      else reject(new CachefsError('IO', `the supervisor answered the upgrade with '${text.trim().slice(0, 80)}'`));
    });
    conn.on('error', (err: NodeJS.ErrnoException) => {
      // No socket, or nobody listening on it: no supervisor runs this mount.
      if (!connected && (err.code === 'ENOENT' || err.code === 'ECONNREFUSED')) resolve(undefined);
      else reject(err);
    });
  });
}

function parse(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}

function asUpgradeRequest(value: unknown): UpgradeRequest | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  const command = v.command as Record<string, unknown> | undefined;
  if (v.kind !== 'upgrade' || typeof v.fuseOptions !== 'string' || typeof command !== 'object' || command === null) return undefined;
  const { file, args, env } = command;
  if (typeof file !== 'string' || !Array.isArray(args) || !args.every((a) => typeof a === 'string') || typeof env !== 'object' || env === null) return undefined;
  return { kind: 'upgrade', fuseOptions: v.fuseOptions, command: { file, args: args as string[], env: env as NodeJS.ProcessEnv } };
}

function asUpgradeAnswer(value: unknown): UpgradeAnswer | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  if (v.ok === true && typeof v.servingPid === 'number') return { ok: true, servingPid: v.servingPid };
  if (v.ok === false && typeof v.message === 'string') {
    const code = (ERROR_CODES as readonly string[]).includes(v.code as string) ? (v.code as ErrorCode) : 'IO';
    return { ok: false, code, message: v.message };
  }
  return undefined;
}

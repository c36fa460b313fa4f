/**
 * An embedded mount's control socket: the dataset routes (`DatasetRoutes`, with the
 * mount's own UFS to walk) over HTTP on a Unix socket, so that `cachefs load --mount`
 * can warm the cache of a running mount that no worker shares.
 *
 * Least access: the socket lives in a directory of its own per mount point
 * (`controlDirFor`), `0700` and owned by the mount's user; the socket is `0600`.
 * Each start of the serving process writes a new random token there (`token`,
 * `0600`), and every request must carry it as a bearer credential, checked like the
 * cluster secret (constant time). Only the mount's user can read the token or reach
 * the socket; the client checks the directory's owner and mode before it sends the
 * token, so a socket planted by someone else is never told it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { chmod, lstat, mkdir, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import { checkAuthorization, ClusterSecret } from '../net/auth.js';
import { answerError, type DatasetRoutes } from './dataset-routes.js';

const SOCKET_NAME = 'control.sock';
const TOKEN_NAME = 'token';

/** The runtime dir of mounts: `/run/cachefs/mounts` for root, the user's runtime dir otherwise. */
function runtimeRoot(): string {
  if (process.getuid?.() === 0) return '/run/cachefs/mounts';
  const xdg = process.env.XDG_RUNTIME_DIR;
  return xdg ? path.join(xdg, 'cachefs', 'mounts') : path.join(os.tmpdir(), `cachefs-${process.getuid?.() ?? 'user'}`, 'mounts');
}

/** The control directory of the mount at `mountpoint` (an absolute, resolved path). */
export function controlDirFor(mountpoint: string): string {
  return path.join(runtimeRoot(), createHash('sha256').update(mountpoint).digest('hex').slice(0, 16));
}

export class ControlSocket {
  private constructor(private readonly server: Server, readonly dir: string) {}

  static async start(mountpoint: string, routes: DatasetRoutes, log: Logger): Promise<ControlSocket> {
    const dir = controlDirFor(mountpoint);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
    await checkPrivate(dir);
    const token = randomBytes(32).toString('hex');
    const secret = ClusterSecret.of(token, 'control token');
    const tmp = path.join(dir, `.${TOKEN_NAME}.${process.pid}`);
    await writeFile(tmp, `${token}\n`, { mode: 0o600 });
    await rename(tmp, path.join(dir, TOKEN_NAME));
    const socketPath = path.join(dir, SOCKET_NAME);
    // The dir is this mount's alone: a socket file left there is a dead serving process's.
    await unlink(socketPath).catch(() => undefined);
    const server = createServer((req, res) => {
      const pathname = (req.url ?? '/').split('?')[0]!;
      (async () => {
        checkAuthorization(secret, req, pathname);
        if (!(await routes.handle(req, res, pathname))) throw new CachefsError('NOT_FOUND', `no such resource: ${req.method} ${pathname}`);
      })().catch((err: unknown) => answerError(res, err));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new CachefsError('CONFLICT', `cannot listen on ${socketPath}: ${err.message}`)));
      server.listen(socketPath, resolve);
    });
    await chmod(socketPath, 0o600);
    log.debug({ socket: socketPath }, 'control socket listening');
    return new ControlSocket(server, dir);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** The socket and credential of the mount at `mountpoint`, after checking that only this user can reach them. */
export async function controlEndpoint(mountpoint: string): Promise<{ socketPath: string; authorization: string }> {
  const dir = controlDirFor(mountpoint);
  try {
    await lstat(dir);
  } catch {
    throw new CachefsError('NOT_FOUND', `no embedded mount of this user serves '${mountpoint}' (no control socket in ${dir}): is it mounted with --ufs?`);
  }
  await checkPrivate(dir);
  const token = ClusterSecret.of(await readFile(path.join(dir, TOKEN_NAME), 'utf8'), `control token of '${mountpoint}'`);
  return { socketPath: path.join(dir, SOCKET_NAME), authorization: token.authorization };
}

/** ACCESS_DENIED unless `dir` is a real directory of this user that nobody else may enter. */
async function checkPrivate(dir: string): Promise<void> {
  const st = await lstat(dir);
  const uid = process.getuid?.();
  if (!st.isDirectory() || (uid !== undefined && st.uid !== uid) || (st.mode & 0o077) !== 0) {
    throw new CachefsError('ACCESS_DENIED', `control dir ${dir} is not a private directory of this user (expected mode 0700, owner uid ${uid})`);
  }
}

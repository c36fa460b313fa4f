/**
 * The worker's Unix-domain-socket service for co-located clients: short-circuit
 * (`open` pins a cached block and answers its file path, the client reads the file
 * itself) and the domain socket stream (`read` sends the bytes over the socket,
 * for clients that cannot see the tier dirs). Protocol in `socket-protocol.ts`.
 *
 * Who may use it: the socket's dir is made 0750 and the socket 0660, owned by the
 * worker's user and `group` (--domain-socket-group, e.g. a Kubernetes fsGroup), so only
 * root and that group reach it; and every connection must first answer the worker's
 * challenge with the cluster secret (socket-protocol.ts). One connection holds at most
 * `MAX_PINS_PER_CONNECTION` pins: past that, opens answer no path and the client reads
 * those blocks over the socket. A stale socket left by a dead worker is replaced; one a
 * live process still answers on is refused. Stale uuid-named sockets of other dead
 * workers in the same dir are swept at start.
 */
import { randomBytes } from 'node:crypto';
import { chmod, chown, lstat, mkdir, readdir, unlink } from 'node:fs/promises';
import path from 'node:path';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { asCachefsError, CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { CachedBlocks } from '../cache/cached-blocks.js';
import { UNAUTHENTICATED_MESSAGE, type ClusterAuth } from '../net/auth.js';
import { encodeFrame, FrameReader, fromWire, type SocketAnswer, type SocketChallenge, type SocketRequest } from '../net/socket-protocol.js';

/** Blocks one connection may hold pinned at once: a mount's open files, 16 pins each (READ_POLICY.pinsPerHandle), for 16 of them. */
export const MAX_PINS_PER_CONNECTION = 256;

export interface DomainSocketOptions {
  path: string;
  /** Who may connect: the cluster secret's holders, or anyone the file modes let in (insecure). */
  auth: ClusterAuth;
  /** The group that may use the socket (and read block files); the worker's own group when absent. */
  group?: number;
}

export class DomainSocketService {
  private readonly connections = new Set<Socket>();
  /** Bytes handed out by short-circuit opens (the clients read them themselves). */
  shortCircuitBytes = 0;

  private constructor(private readonly server: Server, readonly path: string) {}

  static async start(options: DomainSocketOptions, blocks: CachedBlocks, metrics: Metrics, log: Logger): Promise<DomainSocketService> {
    const { path: socketPath, group } = options;
    await prepareSocketPath(socketPath, group);
    await sweepStaleSockets(path.dirname(socketPath), log);
    let service: DomainSocketService | undefined;
    const server = createServer((socket) => service!.serve(socket, options.auth, blocks, metrics, log));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new CachefsError('CONFLICT', `cannot listen on ${socketPath}: ${err.message}`)));
      server.listen(socketPath, resolve);
    });
    try {
      if (group !== undefined) await chown(socketPath, process.getuid?.() ?? 0, group);
      await chmod(socketPath, 0o660);
    } catch (err) {
      server.close();
      throw new CachefsError('INVALID_ARGUMENT', `cannot give the domain socket ${socketPath} to group ${group}: ${(err as Error).message}`, { cause: err });
    }
    service = new DomainSocketService(server, socketPath);
    return service;
  }

  private serve(socket: Socket, auth: ClusterAuth, blocks: CachedBlocks, metrics: Metrics, log: Logger): void {
    this.connections.add(socket);
    const pins = new Map<string, number>();
    const gone = new AbortController();
    const readThrough = blocks.readThrough;
    const answer = (a: SocketAnswer | SocketChallenge, payload?: Buffer): void => {
      if (!socket.destroyed) for (const part of encodeFrame(a, payload)) socket.write(part);
    };
    const challenge = randomBytes(32).toString('hex');
    let trusted = false;
    answer({ challenge });
    const handle = async (req: SocketRequest): Promise<void> => {
      if (!trusted) {
        if (req.op !== 'hello' || (auth !== 'insecure' && !auth.acceptsProof(challenge, req.proof))) {
          metrics.workerRequests.inc({ path: 'domain_socket', status: 'UNAUTHENTICATED' });
          answer({ seq: req.seq, ok: false, code: 'UNAUTHENTICATED', message: UNAUTHENTICATED_MESSAGE });
          // Nothing more is read from it; the answer goes out, then the connection closes.
          socket.pause();
          socket.end();
          return;
        }
        trusted = true;
        return answer({ seq: req.seq, ok: true });
      }
      if (req.op === 'hello') throw new CachefsError('INVALID_ARGUMENT', 'hello sent twice on one connection');
      if (req.op === 'close') {
        const n = pins.get(req.id);
        if (n !== undefined) {
          readThrough.store.unpin(req.id);
          if (n <= 1) pins.delete(req.id);
          else pins.set(req.id, n - 1);
        }
        metrics.workerRequests.inc({ path: 'short_circuit', status: 'close' });
        return answer({ seq: req.seq, ok: true });
      }
      const ref = fromWire(req.block);
      if (req.op === 'read') {
        const end = Math.min(ref.length, req.offset + req.length);
        if (!(req.offset >= 0 && req.offset < end)) throw new CachefsError('INVALID_ARGUMENT', `range ${req.offset}+${req.length} outside block of ${ref.length}`);
        const bytes = Buffer.allocUnsafe(end - req.offset);
        await blocks.read(ref, req.offset, bytes.length, bytes, 0, gone.signal);
        metrics.workerServedBytes.inc({ path: 'domain_socket' }, bytes.length);
        metrics.workerRequests.inc({ path: 'domain_socket', status: 'ok' });
        return answer({ seq: req.seq, ok: true, bytes: bytes.length }, bytes);
      }
      const ensured = await readThrough.ensure(ref, gone.signal);
      // Every tier full of pinned blocks, or this connection holding its share of pins:
      // nothing to hand out; the client reads the bytes with `read`.
      if (!ensured.stored || (!pins.has(ref.id) && pins.size >= MAX_PINS_PER_CONNECTION)) return answer({ seq: req.seq, ok: true, length: ref.length });
      readThrough.store.pin(ref.id);
      pins.set(ref.id, (pins.get(ref.id) ?? 0) + 1);
      this.shortCircuitBytes += ref.length;
      metrics.workerServedBytes.inc({ path: 'short_circuit' }, ref.length);
      metrics.workerRequests.inc({ path: 'short_circuit', status: 'open' });
      return answer({ seq: req.seq, ok: true, path: ensured.stored.path, sum: ensured.stored.sum, length: ref.length });
    };
    const reader = new FrameReader<SocketRequest>(
      () => 0,
      (req) => {
        handle(req).catch((err: unknown) => {
          const e = asCachefsError(err);
          metrics.workerRequests.inc({ path: req.op === 'read' ? 'domain_socket' : 'short_circuit', status: e.code });
          answer({ seq: req.seq, ok: false, code: e.code, message: e.message });
        });
      },
    );
    socket.on('data', (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'bad frame on the domain socket; closing the connection');
        socket.destroy();
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.connections.delete(socket);
      // The fetches this client waited for go on only for others that wait for them.
      gone.abort();
      // A client that went away (closed, crashed, killed) leaves no pins behind.
      for (const [id, n] of pins) for (let i = 0; i < n; i++) readThrough.store.unpin(id);
      pins.clear();
    });
  }

  async close(): Promise<void> {
    for (const s of this.connections) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await unlink(this.path).catch(() => undefined);
  }
}

/**
 * Makes the socket's directory, 0750 and of `group`, and clears a stale socket file;
 * refuses a live one or a non-socket.
 */
async function prepareSocketPath(socketPath: string, group: number | undefined): Promise<void> {
  const dir = path.dirname(socketPath);
  try {
    await mkdir(dir, { recursive: true, mode: 0o750 });
    if (group !== undefined) await chown(dir, process.getuid?.() ?? 0, group);
    await chmod(dir, 0o750);
  } catch (err) {
    throw new CachefsError('INVALID_ARGUMENT', `domain socket dir ${dir} cannot be made (mode 0750${group === undefined ? '' : `, group ${group}`}): ${(err as Error).message}`, { cause: err });
  }
  const st = await lstat(socketPath).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket()) throw new CachefsError('CONFLICT', `${socketPath} exists and is not a socket: refusing to replace it`);
  if (await socketAnswers(socketPath)) throw new CachefsError('CONFLICT', `another worker is serving on ${socketPath}`);
  await unlink(socketPath);
}

/** The name of a uuid-mode socket (`<dir>/<uuid>`, cli/worker.ts). */
const UUID_SOCKET = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * Removes the uuid-mode sockets in `dir` that nobody listens on: each killed worker (or mount)
 * leaves one, under a name no later start reuses, so without a sweep they pile up in the
 * shared dir forever. Only sockets with a uuid name that refuse a connection are touched.
 */
async function sweepStaleSockets(dir: string, log: Logger): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!UUID_SOCKET.test(name)) continue;
    const file = path.join(dir, name);
    const st = await lstat(file).catch(() => undefined);
    if (!st?.isSocket() || (await socketAnswers(file))) continue;
    await unlink(file).then(
      () => log.info({ socket: file }, 'removed a stale worker socket (nobody listening)'),
      (err: unknown) => log.warn({ socket: file, err: (err as Error).message }, 'cannot remove a stale worker socket'),
    );
  }
}

function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const c = createConnection(socketPath);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

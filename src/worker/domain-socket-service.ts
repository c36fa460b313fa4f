/**
 * The worker's Unix-domain-socket service for co-located clients: short-circuit
 * (`open` pins a cached block and answers its file path, the client reads the file
 * itself) and the domain socket stream (`read` sends the bytes over the socket,
 * for clients that cannot see the tier dirs). Protocol in `socket-protocol.ts`.
 *
 * The socket file is created mode 0666: any local process that can reach the
 * directory may read cached blocks, exactly what it could read through the mount;
 * restrict access with the directory's own permissions. A stale socket left by a
 * dead worker is replaced; one a live process still answers on is refused.
 */
import { chmod, lstat, mkdir, unlink } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { asCachefsError, CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { CachedBlocks } from '../cache/cached-blocks.js';
import { encodeFrame, FrameReader, fromWire, type SocketAnswer, type SocketRequest } from '../net/socket-protocol.js';

export class DomainSocketService {
  private readonly connections = new Set<Socket>();
  /** Bytes handed out by short-circuit opens (the clients read them themselves). */
  shortCircuitBytes = 0;

  private constructor(private readonly server: Server, readonly path: string) {}

  static async start(path: string, blocks: CachedBlocks, metrics: Metrics, log: Logger): Promise<DomainSocketService> {
    await prepareSocketPath(path);
    let service: DomainSocketService | undefined;
    const server = createServer((socket) => service!.serve(socket, blocks, metrics, log));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new CachefsError('CONFLICT', `cannot listen on ${path}: ${err.message}`)));
      server.listen(path, resolve);
    });
    await chmod(path, 0o666);
    service = new DomainSocketService(server, path);
    return service;
  }

  private serve(socket: Socket, blocks: CachedBlocks, metrics: Metrics, log: Logger): void {
    this.connections.add(socket);
    const pins = new Map<string, number>();
    const gone = new AbortController();
    const readThrough = blocks.readThrough;
    const answer = (a: SocketAnswer, payload?: Buffer): void => {
      if (!socket.destroyed) for (const part of encodeFrame(a, payload)) socket.write(part);
    };
    const handle = async (req: SocketRequest): Promise<void> => {
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
      // Every tier full of pinned blocks: nothing to hand out; the client reads the bytes with `read`.
      if (!ensured.stored) return answer({ seq: req.seq, ok: true, length: ref.length });
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

/** Makes the socket's directory and clears a stale socket file; refuses a live one or a non-socket. */
async function prepareSocketPath(path: string): Promise<void> {
  await mkdir(path.slice(0, path.lastIndexOf('/')) || '/', { recursive: true }).catch((err: Error) => {
    throw new CachefsError('INVALID_ARGUMENT', `domain socket dir for ${path} cannot be created: ${err.message}`);
  });
  const st = await lstat(path).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket()) throw new CachefsError('CONFLICT', `${path} exists and is not a socket: refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new CachefsError('CONFLICT', `another worker is serving on ${path}`);
  await unlink(path);
}

/**
 * The worker's Unix-domain-socket service for co-located clients: short-circuit (`open`
 * pins a cached block and passes the client its open, checked file descriptor — or, for a
 * client that cannot take descriptors, answers its file path — and the client reads the
 * file itself) and the domain socket stream (`read` sends the bytes over the socket, the
 * last resort). Protocol, and how descriptors travel, in `socket-protocol.ts`.
 *
 * Who may use it: the socket's dir is made 0750 and the socket 0660, owned by the
 * worker's user and `group` (--domain-socket-group, e.g. a Kubernetes fsGroup), so only
 * root and that group reach it; and every connection must first answer the worker's
 * challenge with the cluster secret (socket-protocol.ts), or be a descriptor channel that
 * an authenticated connection claims within ATTACH_TIMEOUT_MS. One connection holds at most
 * `MAX_PINS_PER_CONNECTION` pins: past that, opens answer neither descriptor nor path and
 * the client reads those blocks over the socket. A stale socket left by a dead worker is
 * replaced; one a live process still answers on is refused. Stale uuid-named sockets of
 * other dead workers in the same dir are swept at start.
 *
 * Descriptors are sent with a non-blocking `sendmsg` on the event loop (sys/fd-passing.ts),
 * on a channel libuv has nothing left to write to (its challenge went out before it was
 * paired); a record the channel has no room for (a client that does not read it) is not
 * waited for: that open answers the path instead.
 */
import { randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { chmod, chown, lstat, mkdir, readdir, unlink } from 'node:fs/promises';
import path from 'node:path';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { asCachefsError, CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/metrics.js';
import type { CachedBlocks } from '../cache/cached-blocks.js';
import type { StoredBlock } from '../cache/tiered-store.js';
import { wholeRef, WholeObjects } from '../cache/whole-objects.js';
import { UNAUTHENTICATED_MESSAGE, type ClusterAuth } from '../net/auth.js';
import { ATTACH_TIMEOUT_MS, encodeFrame, FD_RECORD, FrameReader, fromWire, type SocketAnswer, type SocketChallenge, type SocketRequest } from '../net/socket-protocol.js';
import { EAGAIN, loadFdPassing, type FdPassing } from '../sys/fd-passing.js';

/** Blocks one connection may hold pinned at once: a mount's open files, 16 pins each (READ_POLICY.pinsPerHandle), for 16 of them. */
export const MAX_PINS_PER_CONNECTION = 256;

export interface DomainSocketOptions {
  path: string;
  /** Who may connect: the cluster secret's holders, or anyone the file modes let in (insecure). */
  auth: ClusterAuth;
  /** The group that may use the socket (and read block files); the worker's own group when absent. */
  group?: number;
  /** Pass block file descriptors to clients that ask (the default); off: paths and the stream only. */
  passDescriptors?: boolean;
}

/** A descriptor channel that arrived, waiting for its connection's `attach`. */
interface WaitingChannel {
  socket: Socket;
  /** Settles once the channel's challenge is written: nothing of libuv's is queued on it after. */
  flushed: Promise<void>;
  timer: NodeJS.Timeout;
}

export class DomainSocketService {
  private readonly connections = new Set<Socket>();
  /** Descriptor channels by token, until their connection claims them. */
  private readonly channels = new Map<string, WaitingChannel>();
  /** Connections' `attach` waiting for their channel, by token. */
  private readonly claims = new Map<string, (channel: WaitingChannel) => void>();
  /** Bytes handed out by short-circuit opens (the clients read them themselves). */
  shortCircuitBytes = 0;
  /** Pins held by connections now. */
  private pinsHeld = 0;

  private constructor(
    private readonly server: Server,
    readonly path: string,
    private readonly fds: FdPassing | undefined,
    private readonly wholes: WholeObjects,
  ) {}

  /** `wholes`: the whole-object files of the store `blocks` reads (one per store). */
  static async start(options: DomainSocketOptions, blocks: CachedBlocks, metrics: Metrics, log: Logger, wholes = new WholeObjects(blocks, metrics, log)): Promise<DomainSocketService> {
    const { path: socketPath, group } = options;
    let fds: FdPassing | undefined;
    if (options.passDescriptors !== false) {
      fds = await loadFdPassing().catch((err: unknown) => {
        log.warn({ err: (err as Error).message }, 'cannot pass block file descriptors: co-located clients read block files by path or over the socket');
        return undefined;
      });
    }
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
    service = new DomainSocketService(server, socketPath, fds, wholes);
    const started = service;
    metrics.workerSocketPins.sampledBy(() => started.pinsHeld);
    return service;
  }

  private serve(socket: Socket, auth: ClusterAuth, blocks: CachedBlocks, metrics: Metrics, log: Logger): void {
    this.connections.add(socket);
    const pins = new Map<string, number>();
    const gone = new AbortController();
    // Every fetch of a block this connection waits for listens to it (a stream pins 14 ahead): not a leak.
    setMaxListeners(MAX_PINS_PER_CONNECTION, gone.signal);
    const readThrough = blocks.readThrough;
    /** This connection's descriptor channel, once paired: its socket and descriptor. */
    let channel: { socket: Socket; fd: number } | undefined;
    const answer = (a: SocketAnswer | SocketChallenge, payload?: Buffer): void => {
      if (!socket.destroyed) for (const part of encodeFrame(a, payload)) socket.write(part);
    };
    const unpin = (id: string): void => {
      const n = pins.get(id);
      if (n === undefined) return;
      readThrough.store.unpin(id);
      this.pinsHeld--;
      if (n <= 1) pins.delete(id);
      else pins.set(id, n - 1);
    };
    const challenge = randomBytes(32).toString('hex');
    let flushed!: () => void;
    const challenged = new Promise<void>((resolve) => (flushed = resolve));
    let trusted = false;
    /** A descriptor channel: it sends nothing after its `attach`. */
    let isChannel = false;
    if (!socket.destroyed) for (const [i, part] of encodeFrame({ challenge }).entries()) socket.write(part, i === 0 ? undefined : () => flushed());
    const handle = async (req: SocketRequest): Promise<void> => {
      if (isChannel) return void socket.destroy();
      if (!trusted) {
        if (req.op === 'attach' && this.fds && typeof req.token === 'string' && req.token.length >= 32 && !this.channels.has(req.token)) {
          isChannel = true;
          return this.waitForClaim(req.token, socket, challenged);
        }
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
      if (req.op === 'attach') {
        if (!this.fds) throw new CachefsError('INVALID_ARGUMENT', 'this worker does not pass descriptors');
        if (channel) throw new CachefsError('INVALID_ARGUMENT', 'a second descriptor channel on one connection');
        const waiting = await this.claim(req.token);
        await waiting.flushed;
        const fd = socketFd(waiting.socket);
        if (fd === undefined || waiting.socket.destroyed || socket.destroyed) {
          waiting.socket.destroy();
          throw new CachefsError('IO', 'the descriptor channel closed before it was paired');
        }
        channel = { socket: waiting.socket, fd };
        // The channel lives and dies with its connection.
        waiting.socket.once('close', () => {
          if (channel?.socket === waiting.socket) channel = undefined;
        });
        return answer({ seq: req.seq, ok: true });
      }
      if (req.op === 'close') {
        unpin(req.id);
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
      // With `whole`: the object's whole-object file (the mount passes it through), never fetched: answered only when held.
      const whole = req.whole === true;
      const file = whole ? wholeRef(ref.object) : ref;
      const wholes = this.wholes;
      const lend = <T>(use: (fd: number, sum: string) => T): Promise<{ value: T } | undefined> =>
        whole ? wholes.lend(ref.object, ref.blockSize, use) : blocks.lendFile(ref, use, gone.signal);
      const stored = async (): Promise<StoredBlock | undefined> => (whole ? wholes.checked(ref.object, ref.blockSize) : (await readThrough.ensure(ref, gone.signal)).stored);
      // This connection holding its share of pins: nothing to hand out; the client reads the bytes with `read`.
      if (!pins.has(file.id) && pins.size >= MAX_PINS_PER_CONNECTION) {
        if (!whole) await readThrough.ensure(ref, gone.signal);
        return answer({ seq: req.seq, ok: true, length: file.length });
      }
      // Pinned before it is cached or opened: no eviction comes between the block's store and its open.
      readThrough.store.pin(file.id);
      this.pinsHeld++;
      pins.set(file.id, (pins.get(file.id) ?? 0) + 1);
      let opened: { value: boolean } | undefined;
      try {
        const fds = req.fd && channel ? this.fds : undefined;
        const via = channel;
        opened = fds && via
          ? await lend(
              (fd, sum) => {
                // The record first, then the answer, in one turn of the loop: the client finds the record when it reads the answer.
                const record = Buffer.alloc(FD_RECORD);
                record.writeUInt32BE(req.seq);
                if (via.socket.destroyed || socket.destroyed) return false;
                const sent = fds.send(via.fd, record, fd);
                if (sent !== FD_RECORD) {
                  // No room (a client that does not read its channel): this one answers the path. Anything else (a torn
                  // record, a dead channel): no more descriptors on it.
                  if (sent !== -EAGAIN) via.socket.destroy();
                  log.debug({ block: file.id, errno: -sent }, 'could not pass a block file descriptor: answering its path');
                  return false;
                }
                metrics.workerPassedDescriptors.inc();
                answer({ seq: req.seq, ok: true, fd: true, sum, length: file.length });
                return true;
              },
            )
          : undefined;
        if (!opened?.value) {
          const held = await stored();
          if (!held) opened = undefined;
          else {
            answer({ seq: req.seq, ok: true, path: held.path, sum: held.sum, length: file.length });
            opened = { value: true };
          }
        }
      } catch (err) {
        unpin(file.id);
        throw err;
      }
      // Every tier full of pinned blocks (or no whole-object file): nothing to hand out; the client reads the bytes with `read`.
      if (!opened) {
        unpin(file.id);
        return answer({ seq: req.seq, ok: true, length: file.length });
      }
      this.shortCircuitBytes += file.length;
      metrics.workerServedBytes.inc({ path: 'short_circuit' }, file.length);
      metrics.workerRequests.inc({ path: 'short_circuit', status: 'open' });
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
      channel?.socket.destroy();
      channel = undefined;
      // The fetches this client waited for go on only for others that wait for them.
      gone.abort();
      // A client that went away (closed, crashed, killed) leaves no pins behind.
      for (const [id, n] of pins) for (let i = 0; i < n; i++) readThrough.store.unpin(id);
      for (const n of pins.values()) this.pinsHeld -= n;
      pins.clear();
    });
  }

  /**
   * A descriptor channel's first message named `token`: it waits (reading nothing more; any
   * further byte closes it) for the connection that claims it, for ATTACH_TIMEOUT_MS.
   */
  private waitForClaim(token: string, socket: Socket, flushed: Promise<void>): void {
    const timer = setTimeout(() => {
      this.channels.delete(token);
      socket.destroy();
    }, ATTACH_TIMEOUT_MS);
    const waiting: WaitingChannel = { socket, flushed, timer };
    socket.once('close', () => {
      clearTimeout(timer);
      if (this.channels.get(token) === waiting) this.channels.delete(token);
    });
    const claim = this.claims.get(token);
    if (claim) {
      clearTimeout(timer);
      return claim(waiting);
    }
    this.channels.set(token, waiting);
  }

  /** The channel named `token`, once it is there (within ATTACH_TIMEOUT_MS). */
  private claim(token: string): Promise<WaitingChannel> {
    if (typeof token !== 'string' || token.length < 32) return Promise.reject(new CachefsError('INVALID_ARGUMENT', 'attach needs a token of at least 32 characters'));
    const waiting = this.takeChannel(token);
    if (waiting) return Promise.resolve(waiting);
    if (this.claims.has(token)) return Promise.reject(new CachefsError('CONFLICT', 'that descriptor channel is claimed already'));
    return new Promise<WaitingChannel>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.claims.delete(token);
        reject(new CachefsError('TIMEOUT', `no descriptor channel named by the token came in ${ATTACH_TIMEOUT_MS} ms`));
      }, ATTACH_TIMEOUT_MS);
      this.claims.set(token, (channel) => {
        clearTimeout(timer);
        this.claims.delete(token);
        resolve(channel);
      });
    });
  }

  private takeChannel(token: string): WaitingChannel | undefined {
    const waiting = this.channels.get(token);
    if (!waiting) return undefined;
    this.channels.delete(token);
    clearTimeout(waiting.timer);
    return waiting;
  }

  async close(): Promise<void> {
    for (const s of this.connections) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await unlink(this.path).catch(() => undefined);
  }
}

/** The descriptor of a libuv socket (its handle's, which Node does not document but has on every Unix). */
function socketFd(socket: Socket): number | undefined {
  const handle: unknown = (socket as unknown as { _handle?: unknown })._handle;
  const fd = handle && typeof handle === 'object' && 'fd' in handle ? (handle as { fd: unknown }).fd : undefined;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
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

/**
 * A client's connection to a co-located worker's Unix socket: `open` (pin a block, get its
 * file descriptor or path), `close` (unpin) and `read` (bytes over the socket), many at once
 * on one connection. If the connection drops, every call in flight fails with UNREACHABLE,
 * the worker has already unpinned what it held for us, and the `onLost` listeners are told
 * (to close the descriptors they hold).
 *
 * Descriptors come on a second connection, the descriptor channel (net/socket-protocol.ts),
 * made with libc's socket() and connect() (sys/fd-passing.ts), never read by libuv: libuv
 * reads our connection, and an answer saying a descriptor was passed tells us its record is
 * already in the channel, so the channel is read with a non-blocking recvmsg on the event
 * loop, no thread waiting on it. The channel is attached before the connection is used; a
 * worker that cannot pass descriptors (or koffi that cannot load here) leaves the connection
 * without one, and opens answer paths.
 */
import { randomBytes } from 'node:crypto';
import { createConnection, type Socket } from 'node:net';
import type { BlockRef } from '../block/block.js';
import { wholeRef } from '../cache/whole-objects.js';
import { isBlockSum } from '../block/checksum.js';
import { abortError, CachefsError, errorCodeOf } from '../errors.js';
import type { ClusterSecret } from '../net/auth.js';
import { encodeFrame, FD_RECORD, FrameReader, toWire, type SocketAnswer, type SocketChallenge, type SocketRequest } from '../net/socket-protocol.js';
import { loadFdPassing, type FdPassing } from '../sys/fd-passing.js';

type Reply = { answer: SocketAnswer; payload: Buffer; fd?: number };
type Pending = { resolve: (a: Reply) => void; reject: (err: Error) => void };
type Request = SocketRequest extends infer R ? (R extends { seq: number } ? Omit<R, 'seq'> : never) : never;

const CONNECT_TIMEOUT_MS = 2000;

/** What an `open` got: the block file's descriptor (ours to close), or its path, with its checksum; neither when the worker could not store it (then nothing is pinned). */
export interface OpenedBlock {
  fd?: number;
  path?: string;
  sum?: string;
  length: number;
}

/** A descriptor channel: its socket (libc's), and whether the worker's challenge on it has been read. */
interface Channel {
  fd: number;
  fds: FdPassing;
}

export class WorkerSocket {
  private socket?: Socket;
  private connecting?: Promise<Socket>;
  private channel?: Channel;
  private seq = 0;
  private readonly pending = new Map<number, Pending>();
  private readonly lost: (() => void)[] = [];
  /** Why the last connection has no descriptor channel, if it has none. */
  noDescriptorsBecause?: string;

  constructor(
    readonly path: string,
    /** Answers the worker's challenge; none against a worker that runs --insecure. */
    private readonly secret?: ClusterSecret,
    /** Ask for block file descriptors (a descriptor channel) rather than paths. */
    private readonly descriptors = true,
  ) {}

  /** Calls `listener` whenever a connection drops (pins and passed descriptors are gone with it). */
  onLost(listener: () => void): void {
    this.lost.push(listener);
  }

  /**
   * Pins the block and answers its descriptor (with a descriptor channel) or file path, and its
   * checksum. With `whole`, the same for the whole-object file of the block's object (`ref`
   * is its block 0), pinned under that file's id; neither when the worker holds none.
   */
  async open(ref: BlockRef, options: { descriptor?: boolean; whole?: boolean } = {}): Promise<OpenedBlock> {
    const socket = await this.connect();
    const wantFd = (options.descriptor ?? true) && this.channel !== undefined;
    const file = options.whole ? wholeRef(ref.object) : ref;
    const { answer, fd } = await this.send(socket, { op: 'open', block: toWire(ref), ...(wantFd ? { fd: true } : {}), ...(options.whole ? { whole: true } : {}) });
    const sum = typeof answer.sum === 'string' && isBlockSum(answer.sum) ? answer.sum : undefined;
    if (answer.length !== file.length || (fd !== undefined && !sum)) {
      if (fd !== undefined) this.channel?.fds.close(fd);
      throw new CachefsError('IO', `worker at ${this.path} answered open with a length of ${answer.length} and checksum ${answer.sum}, expected ${file.length}`);
    }
    if (answer.fd) {
      if (fd !== undefined) return { fd, sum, length: answer.length };
      // Pinned, but its descriptor did not come: let the pin go, the block is read over the socket.
      this.close(file.id).catch(() => undefined);
      return { length: answer.length };
    }
    return { path: typeof answer.path === 'string' ? answer.path : undefined, sum, length: answer.length };
  }

  async close(id: string): Promise<void> {
    await this.call({ op: 'close', id });
  }

  /** The bytes over the socket; a caller whose signal aborts stops waiting (the answer, when it comes, is dropped). */
  async read(ref: BlockRef, offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    const { payload } = await this.call({ op: 'read', block: toWire(ref), offset, length }, signal);
    return payload;
  }

  /** Whether the current connection takes descriptors. */
  get passesDescriptors(): boolean {
    return this.channel !== undefined;
  }

  get connected(): boolean {
    return this.socket !== undefined && !this.socket.destroyed;
  }

  private async call(req: Request, signal?: AbortSignal): Promise<Reply> {
    if (signal?.aborted) throw abortError(signal);
    return this.send(await this.connect(), req, signal);
  }

  private async send(socket: Socket, req: Request, signal?: AbortSignal): Promise<Reply> {
    if (signal?.aborted) throw abortError(signal);
    const seq = ++this.seq;
    const result = new Promise<Reply>((resolve, reject) => this.pending.set(seq, { resolve, reject }));
    const onAbort = (): void => {
      const p = this.pending.get(seq);
      this.pending.delete(seq);
      p?.reject(abortError(signal!));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    for (const part of encodeFrame({ ...req, seq })) socket.write(part);
    let out: Reply;
    try {
      out = await result;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    if (!out.answer.ok) {
      if (out.fd !== undefined) this.channel?.fds.close(out.fd);
      throw new CachefsError(errorCodeOf(out.answer.code), out.answer.message ?? `worker at ${this.path} refused ${req.op}`);
    }
    return out;
  }

  /**
   * The connection, once the worker's challenge is answered and the answer accepted
   * (UNAUTHENTICATED otherwise: the worker wants another cluster secret), and its
   * descriptor channel attached where it can be.
   */
  private connect(): Promise<Socket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket);
    this.connecting ??= new Promise<Socket>((resolve, reject) => {
      const s = createConnection(this.path);
      const timer = setTimeout(() => s.destroy(new Error('connect timeout')), CONNECT_TIMEOUT_MS);
      const fail = (err: Error): void => {
        clearTimeout(timer);
        reject(err);
        s.destroy();
      };
      const hello = (challenge: string): void => {
        const seq = ++this.seq;
        this.pending.set(seq, {
          resolve: ({ answer }) => {
            clearTimeout(timer);
            if (!answer.ok) return fail(new CachefsError(errorCodeOf(answer.code), `worker socket ${this.path} refused this client: ${answer.message ?? answer.code}`));
            this.attach(s).then(
              () => {
                this.socket = s;
                resolve(s);
              },
              (err: Error) => fail(err),
            );
          },
          reject: fail,
        });
        for (const part of encodeFrame({ seq, op: 'hello', proof: this.secret?.proof(challenge) ?? '' })) s.write(part);
      };
      const reader = new FrameReader<SocketAnswer | SocketChallenge>(
        (a) => ('ok' in a && a.ok && typeof a.bytes === 'number' ? a.bytes : 0),
        (frame, payload) => {
          if ('challenge' in frame) return hello(String(frame.challenge));
          const fd = frame.ok && frame.fd ? this.takeRecord(frame.seq) : undefined;
          const p = this.pending.get(frame.seq);
          this.pending.delete(frame.seq);
          if (p) p.resolve({ answer: frame, payload, fd });
          else if (fd !== undefined) this.channel?.fds.close(fd); // its caller stopped waiting
        },
      );
      s.on('data', (chunk: Buffer) => {
        try {
          reader.push(chunk);
        } catch {
          s.destroy();
        }
      });
      s.on('error', (err) => fail(new CachefsError('UNREACHABLE', `worker socket ${this.path}: ${err.message}`)));
      s.on('close', () => {
        clearTimeout(timer);
        reject(new CachefsError('UNREACHABLE', `worker socket ${this.path} closed`));
        const wasUp = this.socket === s;
        if (wasUp) this.socket = undefined;
        this.closeChannel();
        for (const p of this.pending.values()) p.reject(new CachefsError('UNREACHABLE', `worker socket ${this.path} closed`));
        this.pending.clear();
        if (wasUp) for (const listener of this.lost) listener();
      });
    }).finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  /**
   * Makes the descriptor channel and has the worker pair it with `socket` (authenticated).
   * Anything short of that leaves the connection without one (`noDescriptorsBecause`): a
   * worker that does not pass descriptors, koffi that cannot load, a channel that breaks.
   */
  private async attach(socket: Socket): Promise<void> {
    this.closeChannel();
    if (!this.descriptors) return;
    let fds: FdPassing;
    let fd: number;
    try {
      fds = await loadFdPassing();
      fd = fds.connect(this.path);
    } catch (err) {
      this.noDescriptorsBecause = (err as Error).message;
      return;
    }
    try {
      const token = randomBytes(32).toString('hex');
      const hello = Buffer.concat(encodeFrame({ seq: 0, op: 'attach', token }));
      const sent = fds.send(fd, hello);
      if (sent !== hello.length) throw new Error(`the channel took ${sent} of ${hello.length} bytes`);
      await this.send(socket, { op: 'attach', token });
      // The worker answered once the channel's challenge was written: it is there to be read past.
      const length = readExactly(fds, fd, 4).readUInt32BE(0);
      const challenge = JSON.parse(readExactly(fds, fd, length).toString('utf8')) as Partial<SocketChallenge>;
      if (typeof challenge.challenge !== 'string') throw new Error('the channel did not open with a challenge');
      this.channel = { fd, fds };
      this.noDescriptorsBecause = undefined;
    } catch (err) {
      fds.close(fd);
      this.noDescriptorsBecause = (err as Error).message;
    }
  }

  /**
   * The descriptor passed for the answer `seq`: its record is in the channel already (the
   * worker sends it before the answer). A record that is missing or for another answer breaks
   * the channel: it is closed, and later opens answer paths.
   */
  private takeRecord(seq: number): number | undefined {
    const channel = this.channel;
    if (!channel) return undefined;
    const got = channel.fds.receive(channel.fd, FD_RECORD);
    const fd = 'data' in got ? got.fd : undefined;
    if (!('data' in got) || got.data.length !== FD_RECORD || got.data.readUInt32BE(0) !== seq || fd === undefined || got.truncated) {
      if (fd !== undefined) channel.fds.close(fd);
      this.noDescriptorsBecause = 'errno' in got ? `the descriptor channel had no record (errno ${got.errno})` : got.truncated ? 'this process is out of descriptors' : 'the descriptor channel is out of step';
      this.closeChannel();
      return undefined;
    }
    return fd;
  }

  private closeChannel(): void {
    if (this.channel) this.channel.fds.close(this.channel.fd);
    this.channel = undefined;
  }

  destroy(): void {
    this.socket?.destroy();
    this.closeChannel();
  }
}

/** Exactly `n` bytes of the channel, which must be there now (never waited for). */
function readExactly(fds: FdPassing, fd: number, n: number): Buffer {
  const parts: Buffer[] = [];
  let have = 0;
  while (have < n) {
    const got = fds.receive(fd, Math.min(n - have, 1024));
    if (!('data' in got)) throw new Error(`the descriptor channel had ${have} of ${n} bytes (errno ${got.errno})`);
    if (got.fd !== undefined) fds.close(got.fd);
    if (got.data.length === 0) throw new Error('the descriptor channel closed');
    parts.push(got.data);
    have += got.data.length;
  }
  return Buffer.concat(parts);
}

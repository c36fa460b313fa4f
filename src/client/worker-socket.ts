/**
 * A client's connection to a co-located worker's Unix socket: `open` (pin a
 * block, get its file path), `close` (unpin) and `read` (bytes over the socket),
 * many at once on one connection. If the connection drops, every call in flight
 * fails with UNREACHABLE and the worker has already unpinned what it held for us.
 */
import { createConnection, type Socket } from 'node:net';
import type { BlockRef } from '../block/block.js';
import { isBlockSum } from '../block/checksum.js';
import { abortError, CachefsError, errorCodeOf } from '../errors.js';
import { encodeFrame, FrameReader, toWire, type SocketAnswer, type SocketRequest } from '../net/socket-protocol.js';

type Pending = { resolve: (a: { answer: SocketAnswer; payload: Buffer }) => void; reject: (err: Error) => void };
type Request = SocketRequest extends infer R ? (R extends { seq: number } ? Omit<R, 'seq'> : never) : never;

const CONNECT_TIMEOUT_MS = 2000;

export class WorkerSocket {
  private socket?: Socket;
  private connecting?: Promise<Socket>;
  private seq = 0;
  private readonly pending = new Map<number, Pending>();

  constructor(readonly path: string) {}

  /** Pins the block and answers its file path and checksum; no path when the worker could not store it (then nothing is pinned). */
  async open(ref: BlockRef): Promise<{ path?: string; sum?: string; length: number }> {
    const { answer } = await this.call({ op: 'open', block: toWire(ref) });
    if (answer.length !== ref.length) throw new CachefsError('IO', `worker at ${this.path} answered open with a length of ${answer.length}, expected ${ref.length}`);
    const sum = typeof answer.sum === 'string' && isBlockSum(answer.sum) ? answer.sum : undefined;
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

  get connected(): boolean {
    return this.socket !== undefined && !this.socket.destroyed;
  }

  private async call(req: Request, signal?: AbortSignal): Promise<{ answer: SocketAnswer; payload: Buffer }> {
    if (signal?.aborted) throw abortError(signal);
    const socket = await this.connect();
    const seq = ++this.seq;
    const result = new Promise<{ answer: SocketAnswer; payload: Buffer }>((resolve, reject) => this.pending.set(seq, { resolve, reject }));
    const onAbort = (): void => {
      const p = this.pending.get(seq);
      this.pending.delete(seq);
      p?.reject(abortError(signal!));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    for (const part of encodeFrame({ ...req, seq })) socket.write(part);
    let out: { answer: SocketAnswer; payload: Buffer };
    try {
      out = await result;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    if (!out.answer.ok) throw new CachefsError(errorCodeOf(out.answer.code), out.answer.message ?? `worker at ${this.path} refused ${req.op}`);
    return out;
  }

  private connect(): Promise<Socket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket);
    this.connecting ??= new Promise<Socket>((resolve, reject) => {
      const s = createConnection(this.path);
      const timer = setTimeout(() => s.destroy(new Error('connect timeout')), CONNECT_TIMEOUT_MS);
      const reader = new FrameReader<SocketAnswer>(
        (a) => (a.ok && typeof a.bytes === 'number' ? a.bytes : 0),
        (answer, payload) => {
          const p = this.pending.get(answer.seq);
          this.pending.delete(answer.seq);
          p?.resolve({ answer, payload });
        },
      );
      s.once('connect', () => {
        clearTimeout(timer);
        this.socket = s;
        resolve(s);
      });
      s.on('data', (chunk: Buffer) => {
        try {
          reader.push(chunk);
        } catch {
          s.destroy();
        }
      });
      s.on('error', (err) => {
        clearTimeout(timer);
        reject(new CachefsError('UNREACHABLE', `worker socket ${this.path}: ${err.message}`));
      });
      s.on('close', () => {
        this.socket = undefined;
        for (const p of this.pending.values()) p.reject(new CachefsError('UNREACHABLE', `worker socket ${this.path} closed`));
        this.pending.clear();
      });
    }).finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  destroy(): void {
    this.socket?.destroy();
  }
}

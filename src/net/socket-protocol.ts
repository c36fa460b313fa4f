/**
 * The framing of the worker's Unix-socket protocol (short-circuit and domain
 * socket stream). Every message, both ways, is
 *
 *     uint32 BE  header length
 *     header     UTF-8 JSON object
 *     payload    `header.bytes` raw bytes (only on `read` answers)
 *
 * Requests carry a `seq` that the answer repeats, so one connection carries many
 * requests at once. The worker opens every connection with a challenge, and the
 * client's first message answers it (an HMAC under a key derived from the cluster
 * secret, net/auth.ts); a connection whose first message is anything else is refused
 * (UNAUTHENTICATED) and closed:
 *
 *   worker: {challenge}                       client: {seq: 0, op: 'hello', proof}
 *
 *   {seq, op: 'attach', token}                → {seq, ok}   the descriptor channel named `token` is this connection's
 *   {seq, op: 'open',  block, fd?}            → {seq, ok, path, sum, length}   pins the block
 *                                               or, asked with `fd` on an attached connection,
 *                                               {seq, ok, fd: true, sum, length}: its descriptor
 *                                               (no path, no fd: it could not be stored; use read)
 *   {seq, op: 'open',  block, whole: true, fd?} → the same for the object's whole-object file
 *                                               (cache/whole-objects.ts; `block` names block 0
 *                                               at the client's block size, `length` is the
 *                                               object's size, the pin is under the file's id):
 *                                               only when the worker holds it, never fetched
 *   {seq, op: 'close', id}                    → {seq, ok}                 unpins it
 *   {seq, op: 'read',  block, offset, length} → {seq, ok, bytes} + bytes
 *   any failure                               → {seq, ok: false, code, message}
 *
 * `block` is `{mount, key, etag, size, bs, index}`; the worker derives the block id
 * from it (as the HTTP service does), so no path ever comes from a client. Pins are
 * owned by the connection: when it closes, the worker unpins everything it opened.
 *
 * **Descriptors** (HDFS's short-circuit: pass the capability, not the path) travel on a
 * second connection of the client's, its descriptor channel, which libuv never reads on the
 * client's side (sys/fd-passing.ts). The client makes it and sends, as its first and only
 * message, `{seq: 0, op: 'attach', token}` with a random token of its own, then asks
 * `attach` with the same token on its authenticated connection; the worker pairs the two (a
 * channel nobody claims within ATTACH_TIMEOUT_MS is closed) once the channel's challenge has
 * gone out, and answers. From then on, for each `open` it answers with a descriptor, the
 * worker first sends on the channel a record of FD_RECORD bytes — the request's `seq`, uint32
 * BE — carrying the open block file's read-only descriptor (`SCM_RIGHTS`), then the answer on
 * the connection. So when the client reads that answer, the record is already in its
 * channel: it reads the channel (after the challenge, once) without waiting, in order.
 */
import { blockRef, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, type BlockRef } from '../block/block.js';
import { CachefsError } from '../errors.js';

export interface WireBlock {
  mount: string;
  key: string;
  etag: string;
  size: number;
  bs: number;
  index: number;
}

/** The worker's first message on a connection. */
export interface SocketChallenge {
  challenge: string;
}

export type SocketRequest =
  | { seq: number; op: 'hello'; proof: string }
  | { seq: number; op: 'attach'; token: string }
  | { seq: number; op: 'open'; block: WireBlock; fd?: boolean; whole?: boolean }
  | { seq: number; op: 'close'; id: string }
  | { seq: number; op: 'read'; block: WireBlock; offset: number; length: number };

export interface SocketAnswer {
  seq: number;
  ok: boolean;
  path?: string;
  /** The block file's checksum, with `path`: the client checks the file against it before reading it. */
  sum?: string;
  length?: number;
  /** The block file's descriptor was passed on the connection's descriptor channel (FD_RECORD). */
  fd?: boolean;
  bytes?: number;
  code?: string;
  message?: string;
}

const MAX_HEADER = 64 * 1024;
/** Bytes of a descriptor record on the descriptor channel: the answer's seq, uint32 BE. */
export const FD_RECORD = 4;
/** How long a descriptor channel waits to be claimed by its connection, and `attach` for its channel. */
export const ATTACH_TIMEOUT_MS = 2000;

export function toWire(ref: BlockRef): WireBlock {
  return { mount: ref.object.mount, key: ref.object.key, etag: ref.object.etag, size: ref.object.size, bs: ref.blockSize, index: ref.index };
}

/** The block a request names, validated like an HTTP block request. */
export function fromWire(b: WireBlock): BlockRef {
  const ok =
    b && typeof b.mount === 'string' && typeof b.key === 'string' && typeof b.etag === 'string' &&
    Number.isSafeInteger(b.size) && b.size > 0 && Number.isSafeInteger(b.bs) && b.bs >= MIN_BLOCK_SIZE && b.bs <= MAX_BLOCK_SIZE && Number.isSafeInteger(b.index);
  if (!ok) throw new CachefsError('INVALID_ARGUMENT', 'bad block in socket request');
  return blockRef({ mount: b.mount, key: b.key, etag: b.etag, size: b.size }, b.bs, b.index);
}

export function encodeFrame(header: object, payload?: Buffer): Buffer[] {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.allocUnsafe(4);
  len.writeUInt32BE(json.length);
  return payload ? [len, json, payload] : [len, json];
}

/**
 * Splits a byte stream into frames. `payloadOf(header)` says how many raw bytes
 * follow a header; frames are handed to `onFrame` in order.
 */
export class FrameReader<H extends object> {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private header?: H;
  private need = 0;

  constructor(private readonly payloadOf: (header: H) => number, private readonly onFrame: (header: H, payload: Buffer) => void) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (!this.header) {
        if (this.buffered < 4) return;
        const hlen = this.peek(4).readUInt32BE(0);
        if (hlen > MAX_HEADER) throw new CachefsError('INVALID_ARGUMENT', `socket frame header of ${hlen} bytes`);
        if (this.buffered < 4 + hlen) return;
        this.take(4);
        this.header = JSON.parse(this.take(hlen).toString('utf8')) as H;
        this.need = this.payloadOf(this.header);
      }
      if (this.buffered < this.need) return;
      const header = this.header;
      const payload = this.need > 0 ? this.take(this.need) : Buffer.alloc(0);
      this.header = undefined;
      this.need = 0;
      this.onFrame(header, payload);
    }
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!.subarray(0, n);
    return Buffer.concat(this.chunks).subarray(0, n);
  }

  private take(n: number): Buffer {
    if (this.chunks[0]!.length >= n) {
      const first = this.chunks[0]!;
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return out;
    }
    const all = Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.buffered -= n;
    return out;
  }
}

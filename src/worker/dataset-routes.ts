/**
 * The server side of the dataset protocol (`net/dataset-protocol.ts`): filling named
 * blocks into the cache with many UFS reads in flight, telling which blocks are
 * cached, and dropping them. Served by a worker's block service and by an embedded
 * mount's control socket, both of which authenticate the request before it gets here.
 *
 * A fill goes through the same read-through as a read (`ReadThrough.ensure`), so a
 * block being read and loaded at once is fetched once. Its fetches hold a whole
 * block each until stored: at most `LOAD_BYTES` of them at once, whatever the client
 * asks for. A client that goes away stops the fill; fetches under way finish for
 * whoever else waits on them.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { BlockRef } from '../block/block.js';
import type { CachedBlocks } from '../cache/cached-blocks.js';
import { asCachefsError, CachefsError } from '../errors.js';
import { EVICT_PATH, FILL_PATH, INVENTORY_PATH, parseFillRequest, parseIdsRequest, parseWalkRequest, readJsonBody, WALK_PATH, type EvictResult, type FillResult, type Inventory, type WalkedObject } from '../net/dataset-protocol.js';
import { statusForCode } from '../net/block-protocol.js';
import type { Ufs } from '../ufs/ufs.js';
import { walkObjects } from '../ufs/walk.js';

/** Bytes of block fetches one fill holds at once at most (64 blocks of 4 MiB). */
const LOAD_BYTES = 256 * 1024 * 1024;
/** Lines of a stream wait at most this long, or until this many bytes, before they are written together. */
const LINES_FLUSH_MS = 50;
const LINES_FLUSH_BYTES = 64 * 1024;

/**
 * Writes the lines of an ndjson answer in batches: a write per line was a chunk, a
 * cork and a socket write per block, 8% of a worker's CPU in a load of 128 KiB objects.
 */
class LineBatch {
  private text = '';
  private timer?: NodeJS.Timeout;

  constructor(private readonly res: ServerResponse) {}

  add(line: unknown): void {
    this.text += `${JSON.stringify(line)}\n`;
    if (this.text.length >= LINES_FLUSH_BYTES) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), LINES_FLUSH_MS);
  }

  /** Ends the answer with what is left and `last`, or with nothing more when the client went away. */
  end(last?: string): void {
    clearTimeout(this.timer);
    this.res.end(last === undefined ? undefined : this.text + last);
  }

  private flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.text && !this.res.destroyed) this.res.write(this.text);
    this.text = '';
  }
}

export class DatasetRoutes {
  /** `tree`: what a walk request walks (an embedded mount's UFS and its identity in block ids); without it, walks are refused. */
  constructor(private readonly blocks: CachedBlocks, private readonly blockSize: number, private readonly tree?: { ufs: Ufs; mountId: string }) {}

  /** True when the request was for a dataset route (answered, or failed with a thrown error before any byte was sent). */
  async handle(req: IncomingMessage, res: ServerResponse, pathname: string): Promise<boolean> {
    if (pathname !== FILL_PATH && pathname !== INVENTORY_PATH && pathname !== EVICT_PATH && pathname !== WALK_PATH) return false;
    if (req.method !== 'POST') throw new CachefsError('INVALID_ARGUMENT', `${pathname} takes POST, not ${req.method}`);
    const body = await readJsonBody(req);
    if (pathname === FILL_PATH) {
      const { refs, threads } = parseFillRequest(body, this.blockSize);
      await this.fill(refs, Math.min(threads, Math.max(1, Math.floor(LOAD_BYTES / this.blockSize))), res);
    } else if (pathname === WALK_PATH) {
      if (!this.tree) throw new CachefsError('NOT_FOUND', 'this server walks no tree: ask the master for the namespace');
      await walk(this.tree.ufs, this.tree.mountId, parseWalkRequest(body), res);
    } else if (pathname === INVENTORY_PATH) {
      const store = this.blocks.readThrough.store;
      const inventory: Inventory = { held: store.heldOf(parseIdsRequest(body)), blockSize: this.blockSize, capacityBytes: store.capacityBytes, usedBytes: store.usedBytes };
      answer(res, inventory);
    } else {
      const result: EvictResult = await this.blocks.readThrough.store.drop(parseIdsRequest(body));
      answer(res, result);
    }
    return true;
  }

  /** Fills `refs` with `threads` fetches at once, answering a line per block as it ends. */
  private async fill(refs: readonly BlockRef[], threads: number, res: ServerResponse): Promise<void> {
    const gone = new AbortController();
    res.once('close', () => gone.abort());
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
    let next = 0;
    const one = async (ref: BlockRef): Promise<FillResult> => {
      const base = { id: ref.id, key: ref.object.key, index: ref.index, bytes: ref.length };
      if (this.blocks.readThrough.cached(ref)) return { ...base, outcome: 'cached' };
      try {
        const block = await this.blocks.readThrough.ensure(ref, gone.signal);
        if (block.stored) return { ...base, outcome: 'filled' };
        return { ...base, outcome: 'failed', code: 'IO', message: 'fetched but not stored: every tier is full of pinned blocks' };
      } catch (err) {
        const e = asCachefsError(err);
        return { ...base, outcome: 'failed', code: e.code, message: e.message };
      }
    };
    const lines = new LineBatch(res);
    const lane = async (): Promise<void> => {
      while (next < refs.length && !gone.signal.aborted) {
        const result = await one(refs[next++]!);
        if (!gone.signal.aborted) lines.add(result);
      }
    };
    await Promise.all(Array.from({ length: Math.min(threads, refs.length) }, lane));
    lines.end(gone.signal.aborted ? undefined : '{"done":true}\n');
  }
}

/** Streams the objects at or below `dir`; a failure after the first line ends the stream with an error line. */
async function walk(ufs: Ufs, mount: string, dir: string, res: ServerResponse): Promise<void> {
  const gone = new AbortController();
  res.once('close', () => gone.abort());
  const lines = new LineBatch(res);
  let started = false;
  try {
    for await (const o of walkObjects(ufs, dir, gone.signal)) {
      if (!started) res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
      started = true;
      const line: WalkedObject = { mount, key: o.key, etag: o.etag, size: o.size };
      lines.add(line);
    }
  } catch (err) {
    if (!started) throw err;
    const e = asCachefsError(err);
    lines.end(`${JSON.stringify({ error: { code: e.code, message: e.message } })}\n`);
    return;
  }
  if (!started) res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  lines.end('{"done":true}\n');
}

/** Answers a failed dataset request as `{error:{code,message}}` with the block protocol's status for its code. */
export function answerError(res: ServerResponse, err: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const e = asCachefsError(err);
  const text = JSON.stringify({ error: { code: e.code, message: e.message } });
  res.writeHead(statusForCode(e.code), { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) }).end(text);
}

function answer(res: ServerResponse, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) }).end(text);
}

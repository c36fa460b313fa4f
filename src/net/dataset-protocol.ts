/**
 * The dataset protocol both sides share (`cachefs load` and `report --dataset`
 * against a worker's block service, or an embedded mount's control socket): three
 * JSON requests under `/v1/dataset/`, each authenticated like a block request.
 *
 * - `POST fill` `{bs, threads, objects:[{mount,key,etag,size,indexes}]}`: the server
 *   makes sure each named block is cached, fetching at most `threads` from the UFS at
 *   once, and answers one JSON line per block as it is done (`FillResult`), then
 *   `{"done":true}`. Blocks are named as in a block request (the server derives the
 *   ids), never by path.
 * - `POST inventory` `{ids}`: which of these blocks are cached, with their lengths,
 *   and the server's block size and cache capacity (`Inventory`).
 * - `POST evict` `{ids}`: drops these blocks where not pinned; answers the count.
 * - `POST walk` `{path}` (an embedded mount only, which alone holds its UFS's
 *   credentials): one JSON line per object at or below the path (`WalkedObject`),
 *   then `{"done":true}`, or `{"error":{code,message}}` if the walk failed.
 *
 * Decoders here check what a server takes; what a client gets back is checked where
 * it is read.
 */
import type { IncomingMessage } from 'node:http';
import { MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, blockCount, blockRef, isBlockId, type BlockRef } from '../block/block.js';
import { CachefsError, type ErrorCode } from '../errors.js';

export const DATASET_PATH = '/v1/dataset/';
export const FILL_PATH = `${DATASET_PATH}fill`;
export const INVENTORY_PATH = `${DATASET_PATH}inventory`;
export const EVICT_PATH = `${DATASET_PATH}evict`;
export const WALK_PATH = `${DATASET_PATH}walk`;

/** Blocks one fill request may name, and ids one inventory or evict request may carry. */
export const MAX_FILL_BLOCKS = 4096;
export const MAX_IDS = 20_000;
/** Request bodies are at most this long (a full fill request of long keys fits). */
export const MAX_BODY_BYTES = 16 * 1024 * 1024;

/** The blocks of one object a fill asks for. */
export interface FillObject {
  mount: string;
  key: string;
  etag: string;
  size: number;
  indexes: number[];
}

export interface FillRequest {
  bs: number;
  threads: number;
  objects: FillObject[];
}

/** How one block of a fill ended: already cached, fetched and stored now, or not. */
export type FillOutcome = 'cached' | 'filled' | 'failed';

export interface FillResult {
  id: string;
  key: string;
  index: number;
  bytes: number;
  outcome: FillOutcome;
  code?: ErrorCode;
  message?: string;
}

export interface Inventory {
  held: HeldBlock[];
  blockSize: number;
  capacityBytes: number;
  usedBytes: number;
}

export interface WalkedObject {
  /** The source identity block ids of the object name (the mount's URI). */
  mount: string;
  key: string;
  etag: string;
  size: number;
}

export interface HeldBlock {
  id: string;
  length: number;
}

export interface EvictResult {
  blocks: number;
  bytes: number;
  /** Blocks held but pinned by a reader, so kept. */
  pinned: number;
}

const bad = (why: string): CachefsError => new CachefsError('INVALID_ARGUMENT', `bad dataset request: ${why}`);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function wholeNumber(v: unknown, what: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw bad(`${what} must be a whole number in ${min}..${max}`);
  return v;
}

function text(v: unknown, what: string, allowEmpty = true): string {
  if (typeof v !== 'string' || v.length > 4096 || (!allowEmpty && v === '')) throw bad(`${what} must be a string of at most 4096 characters${allowEmpty ? '' : ', not empty'}`);
  return v;
}

/** The blocks a fill request names, checked against the server's block size; and its thread count. */
export function parseFillRequest(body: unknown, blockSize: number): { refs: BlockRef[]; threads: number } {
  if (!isRecord(body) || !Array.isArray(body.objects)) throw bad('expected {bs, threads, objects: [...]}');
  const bs = wholeNumber(body.bs, 'bs', MIN_BLOCK_SIZE, MAX_BLOCK_SIZE);
  if (bs !== blockSize) throw bad(`bs ${bs} is not this server's block size ${blockSize} (give load the cache group's --block-size)`);
  const threads = wholeNumber(body.threads, 'threads', 1, 1024);
  const refs: BlockRef[] = [];
  for (const o of body.objects as unknown[]) {
    if (!isRecord(o) || !Array.isArray(o.indexes)) throw bad('each object must be {mount, key, etag, size, indexes}');
    const size = wholeNumber(o.size, 'size', 1);
    const object = { mount: text(o.mount, 'mount'), key: text(o.key, 'key'), etag: text(o.etag, 'etag', false), size };
    for (const i of o.indexes as unknown[]) {
      refs.push(blockRef(object, bs, wholeNumber(i, 'index', 0, blockCount(size, bs) - 1)));
      if (refs.length > MAX_FILL_BLOCKS) throw bad(`more than ${MAX_FILL_BLOCKS} blocks in one fill`);
    }
  }
  return { refs, threads };
}

/** The block ids of an inventory or evict request. */
export function parseIdsRequest(body: unknown): string[] {
  if (!isRecord(body) || !Array.isArray(body.ids)) throw bad('expected {ids: [...]}');
  if (body.ids.length > MAX_IDS) throw bad(`more than ${MAX_IDS} ids in one request`);
  return (body.ids as unknown[]).map((id) => {
    if (typeof id !== 'string' || !isBlockId(id)) throw bad('each id must be 40 lowercase hex characters');
    return id;
  });
}

/** The path of a walk request. */
export function parseWalkRequest(body: unknown): string {
  if (!isRecord(body)) throw bad('expected {path}');
  return text(body.path, 'path');
}

/** Reads and parses a JSON request body of at most MAX_BODY_BYTES. */
export async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw bad(`body larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch (err) {
    throw bad(`body is not JSON: ${(err as Error).message}`);
  }
}

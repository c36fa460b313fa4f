/**
 * The client side of the dataset protocol (`net/dataset-protocol.ts`): one server —
 * a worker's block service over HTTP(S), or an embedded mount's control socket —
 * asked to fill blocks (its answer read line by line as blocks are done), to say
 * which blocks it holds, or to drop them. Carries the credential it is given; checks
 * the shape of what comes back.
 */
import { request as httpRequest, type IncomingMessage, type RequestOptions } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { CachefsError, errorCodeOf } from '../errors.js';
import { errorFromResponse } from '../net/block-protocol.js';
import { EVICT_PATH, FILL_PATH, INVENTORY_PATH, WALK_PATH, type EvictResult, type FillRequest, type FillResult, type Inventory, type WalkedObject } from '../net/dataset-protocol.js';
import type { ClientTls } from '../net/tls.js';

/** Where the server listens: a TCP address, or a Unix socket. */
export type DatasetEndpoint = { host: string; port: number } | { socketPath: string };

export interface DatasetLinkOptions {
  /** Headers every request carries (the credential). */
  headers: Record<string, string>;
  tls?: ClientTls;
  /** Time allowed for an answer to start, and between lines of a fill. */
  idleTimeoutMs?: number;
}

const IDLE_TIMEOUT_MS = 60_000;

export class DatasetLink {
  constructor(readonly endpoint: DatasetEndpoint, readonly name: string, private readonly options: DatasetLinkOptions) {}

  /** Fills the blocks of `fill`, calling `onResult` for each as the server reports it; resolves when it reported them all. */
  async fill(fill: FillRequest, onResult: (result: FillResult) => void, signal?: AbortSignal): Promise<void> {
    let done = false;
    for await (const line of jsonLines(await this.post(FILL_PATH, fill, signal), this.name)) {
      const parsed = parseFillLine(line, this.name);
      if (parsed === 'done') done = true;
      else onResult(parsed);
    }
    if (!done) throw new CachefsError('UNREACHABLE', `${this.name} ended its fill answer early`);
  }

  async inventory(ids: readonly string[], signal?: AbortSignal): Promise<Inventory> {
    const body = (await readJson(await this.post(INVENTORY_PATH, { ids }, signal))) as Partial<Inventory>;
    if (!Array.isArray(body.held) || typeof body.blockSize !== 'number' || typeof body.capacityBytes !== 'number') throw new CachefsError('IO', `${this.name} answered an inventory without held blocks, block size and capacity`);
    return { held: body.held, blockSize: body.blockSize, capacityBytes: body.capacityBytes, usedBytes: body.usedBytes ?? 0 };
  }

  /** The objects at or below `dir` of the server's tree (an embedded mount's). */
  async *walk(dir: string, signal?: AbortSignal): AsyncGenerator<WalkedObject> {
    let done = false;
    for await (const line of jsonLines(await this.post(WALK_PATH, { path: dir }, signal), this.name)) {
      const v = line as Partial<WalkedObject> & { done?: boolean; error?: { code?: string; message?: string } };
      if (v.error) throw new CachefsError(errorCodeOf(v.error.code), v.error.message ?? `${this.name} failed the walk`);
      if (v.done === true) done = true;
      else if (typeof v.key === 'string' && typeof v.etag === 'string' && typeof v.size === 'number' && typeof v.mount === 'string') yield { mount: v.mount, key: v.key, etag: v.etag, size: v.size };
      else throw new CachefsError('IO', `${this.name} sent a walk line without mount, key, etag and size`);
    }
    if (!done) throw new CachefsError('UNREACHABLE', `${this.name} ended its walk early`);
  }

  async evict(ids: readonly string[], signal?: AbortSignal): Promise<EvictResult> {
    const body = (await readJson(await this.post(EVICT_PATH, { ids }, signal))) as Partial<EvictResult>;
    if (typeof body.blocks !== 'number' || typeof body.bytes !== 'number') throw new CachefsError('IO', `${this.name} answered an evict without counts`);
    return { blocks: body.blocks, bytes: body.bytes, pinned: body.pinned ?? 0 };
  }

  /** POSTs `body` as JSON; resolves with a 200 answer, or fails with the error the server answered. */
  private post(path: string, body: unknown, signal?: AbortSignal): Promise<IncomingMessage> {
    const text = JSON.stringify(body);
    const options: RequestOptions = {
      ...this.endpoint,
      method: 'POST',
      path,
      signal,
      headers: { ...this.options.headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) },
    };
    const useTls = this.options.tls !== undefined && !('socketPath' in this.endpoint);
    return new Promise<IncomingMessage>((resolve, reject) => {
      const req = useTls ? httpsRequest({ ...options, ca: this.options.tls!.ca }) : httpRequest(options);
      req.setTimeout(this.options.idleTimeoutMs ?? IDLE_TIMEOUT_MS, () => req.destroy(new CachefsError('TIMEOUT', `${this.name} did not answer within ${(this.options.idleTimeoutMs ?? IDLE_TIMEOUT_MS) / 1000}s`)));
      req.once('error', (err) => reject(err instanceof CachefsError ? err : new CachefsError('UNREACHABLE', `cannot reach ${this.name}: ${err.message}`, { cause: err })));
      req.once('response', (res) => {
        if (res.statusCode === 200) {
          resolve(res);
          return;
        }
        readText(res).then(
          (answer) => reject(withWhere(errorFromResponse(res.statusCode ?? 0, answer), this.name)),
          (err: unknown) => reject(new CachefsError('UNREACHABLE', `${this.name} answered ${res.statusCode} and broke off: ${(err as Error).message}`)),
        );
      });
      req.end(text);
    });
  }
}

function withWhere(err: CachefsError, name: string): CachefsError {
  return new CachefsError(err.code, `${name}: ${err.message}`);
}

async function readText(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of res as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function readJson(res: IncomingMessage): Promise<Record<string, unknown>> {
  const parsed = JSON.parse(await readText(res)) as unknown;
  if (typeof parsed !== 'object' || parsed === null) throw new CachefsError('IO', 'the answer is not a JSON object');
  return parsed as Record<string, unknown>;
}

/** The JSON values of an answer of JSON lines, each as soon as its line is in. */
async function* jsonLines(res: IncomingMessage, name: string): AsyncGenerator<unknown> {
  let rest = '';
  for await (const chunk of res as AsyncIterable<Buffer>) {
    rest += chunk.toString('utf8');
    let nl: number;
    while ((nl = rest.indexOf('\n')) >= 0) {
      const line = rest.slice(0, nl);
      rest = rest.slice(nl + 1);
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch {
        throw new CachefsError('IO', `${name} sent a line that is not JSON`);
      }
      yield value;
    }
  }
}

function parseFillLine(v: unknown, name: string): FillResult | 'done' {
  const r = v as Partial<FillResult> & { done?: boolean };
  if (r.done === true) return 'done';
  if (typeof r.id !== 'string' || typeof r.bytes !== 'number' || (r.outcome !== 'cached' && r.outcome !== 'filled' && r.outcome !== 'failed')) {
    throw new CachefsError('IO', `${name} sent a fill line without id, bytes and outcome`);
  }
  return { ...(r as FillResult), ...(r.code !== undefined ? { code: errorCodeOf(r.code) } : {}) };
}

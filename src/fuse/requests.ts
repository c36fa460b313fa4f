/**
 * The requests of a FUSE connection between their arrival and their answer, each a
 * `FuseRequest` carrying its cancellation. An INTERRUPT from the kernel answers its
 * request EINTR at once and aborts it; a request not answered within its timeout
 * is answered ETIMEDOUT and aborted, so an application never hangs on a stuck
 * backend. The op's own reply, when it comes, is then dropped: the kernel takes one
 * answer per request. An INTERRUPT read before its request (the session reads two
 * requests at a time) is kept until the request begins. Writing is the session's
 * (`write`), timing the caller's (`sweep`).
 */
import { constants } from 'node:os';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Cancellation } from '../vfs/vfs.js';
import { outHeader } from './protocol.js';

const E = constants.errno;
/** INTERRUPTs kept for requests not begun yet; more means they were for requests that will not come. */
const MAX_EARLY_INTERRUPTS = 64;

/** A request read from the kernel and not yet answered. */
export class FuseRequest implements Cancellation {
  /** Answered: a later reply is dropped. */
  answered = false;
  private controller?: AbortController;
  private reason?: CachefsError;

  constructor(
    readonly unique: number,
    /** The op's name, for metrics and messages. */
    readonly op: string,
    /** When it is answered ETIMEDOUT (ms since the epoch); Infinity for never. */
    readonly deadline: number,
  ) {}

  get aborted(): boolean {
    return this.reason !== undefined;
  }

  /** Made on first use: most requests are answered without waiting and never need one. */
  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.reason) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  abort(reason: CachefsError): void {
    if (this.reason) return;
    this.reason = reason;
    this.controller?.abort(reason);
  }
}

export class FuseRequests {
  private readonly pending = new Map<number, FuseRequest>();
  /** The highest unique begun: the kernel's uniques only grow. */
  private highest = 0;
  /** INTERRUPTs of requests not begun yet, by their unique. */
  private readonly early = new Set<number>();

  constructor(
    /** Writes one reply (its parts) to the kernel. */
    private readonly write: (unique: number, parts: Buffer[]) => void,
    /** Longest a request may go unanswered; 0 for no limit. */
    private readonly timeoutMs: number,
    private readonly log: Logger,
  ) {}

  /** Requests read from the kernel and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** A request now in progress: answered ETIMEDOUT if no reply comes in time, EINTR if the kernel interrupts it. */
  begin(unique: number, op: string): FuseRequest {
    const req = new FuseRequest(unique, op, this.timeoutMs > 0 ? Date.now() + this.timeoutMs : Infinity);
    this.pending.set(unique, req);
    if (unique > this.highest) this.highest = unique;
    if (this.early.size > 0 && this.early.delete(unique)) this.interrupt(unique);
    return req;
  }

  /** The request in progress with this unique, if any. */
  get(unique: number): FuseRequest | undefined {
    return this.pending.get(unique);
  }

  /** Answers a request: `error` is 0 or a negative errno; `body` the reply's payload. A request answered already gets nothing more. */
  reply(req: FuseRequest, error: number, ...body: Buffer[]): void {
    if (req.answered) return;
    req.answered = true;
    this.pending.delete(req.unique);
    this.send(req.unique, error, body);
  }

  /** Answers a request that was never begun (refused before any op ran). */
  replyNow(unique: number, error: number, ...body: Buffer[]): void {
    this.send(unique, error, body);
  }

  private send(unique: number, error: number, body: Buffer[]): void {
    let length = 0;
    for (const b of body) length += b.length;
    this.write(unique, [outHeader(unique, error, length), ...body]);
  }

  /**
   * The kernel interrupted a request (its task got a signal): it is answered EINTR now and
   * aborted. Undefined when it is not in progress: answered already, or not begun yet (then
   * it is interrupted as it begins).
   */
  interrupt(unique: number): FuseRequest | undefined {
    const req = this.pending.get(unique);
    if (!req) {
      if (unique > this.highest) {
        if (this.early.size >= MAX_EARLY_INTERRUPTS) this.early.clear();
        this.early.add(unique);
      }
      return undefined;
    }
    this.answerEarly(req, -E.EINTR, new CachefsError('INTERRUPTED', `FUSE request ${unique} (${req.op}) was interrupted`));
    return req;
  }

  /** Answers ETIMEDOUT, and aborts, every request past its deadline at `now`. */
  sweep(now: number): void {
    for (const req of this.pending.values()) {
      if (req.deadline > now) continue;
      this.log.warn({ unique: req.unique, op: req.op, timeoutMs: this.timeoutMs }, 'a FUSE request took too long: answered ETIMEDOUT');
      this.answerEarly(req, -E.ETIMEDOUT, new CachefsError('TIMEOUT', `FUSE request ${req.unique} (${req.op}) took longer than ${this.timeoutMs} ms`));
    }
  }

  private answerEarly(req: FuseRequest, errno: number, reason: CachefsError): void {
    this.reply(req, errno);
    req.abort(reason);
  }
}

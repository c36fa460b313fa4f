/**
 * A thread that stats a folder's files, a batch at a time, while the main thread goes on
 * serving: a walk that stats every file (find, ls -l, a loader) then waits for the kernel's
 * answers and the stats of the next page at once, on both cores, instead of one after the
 * other on the event loop (a cold stat reads its inode from disk: ~16 µs each on the main
 * thread, most of a LOOKUP's time in a cold `find`).
 *
 * The thread runs this same module (`workerData.role`), statting by statx(2) through koffi
 * (`folder.ts`) relative to a descriptor the caller opened: descriptors are the process's,
 * so the caller checks the folder and keeps it open until its batch is answered. Answers
 * come back as one buffer of records, moved (not copied) to the caller. A thread that dies
 * fails its batches with IO errors; the next batch starts another. Where no thread starts
 * at all (a runtime without worker threads, or this module run from its TypeScript source
 * as the unit tests do), batches are stat'ed on the calling thread.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { CachefsError } from '../errors.js';
import { statxOfRecord, statxRecords, type FileStatx } from './folder.js';

const ROLE = 'cachefs-folder-stats';

interface Ask {
  id: number;
  dirfd: number;
  names: readonly string[];
}
type Answer = { id: number; records: Buffer } | { id: number; error: string };

if (!isMainThread && (workerData as { role?: string } | null)?.role === ROLE) {
  const port = parentPort!;
  const stat = await statxRecords();
  port.on('message', ({ id, dirfd, names }: Ask) => {
    try {
      if (!stat) throw new Error("the 'koffi' package cannot load");
      const records = stat(dirfd, names);
      port.postMessage({ id, records } satisfies Answer, [records.buffer as ArrayBuffer]);
    } catch (err) {
      port.postMessage({ id, error: (err as Error).message } satisfies Answer);
    }
  });
}

interface Waiting {
  dirfd: number;
  names: readonly string[];
  resolve(v: (FileStatx | null)[]): void;
  reject(e: Error): void;
}

export class StatThread {
  private worker: Worker | undefined;
  /** No thread could start (none ever answered): batches are stat'ed here. */
  private here = false;
  /** A thread answered once: one that stops later is started again. */
  private answeredOnce = false;
  private nextId = 1;
  private readonly waiting = new Map<number, Waiting>();

  /** The figures of `names` in the folder open as `dirfd` (kept open by the caller until this settles), null for those not there. */
  stat(dirfd: number, names: readonly string[]): Promise<(FileStatx | null)[]> {
    if (this.here) return statHere(dirfd, names);
    const worker = this.started();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { dirfd, names, resolve, reject });
      if (this.waiting.size === 1) worker.ref();
      worker.postMessage({ id, dirfd, names } satisfies Ask);
    });
  }

  /** Whether batches go to a thread (one is running), rather than being stat'ed here. */
  get threaded(): boolean {
    return this.worker !== undefined && this.answeredOnce;
  }

  close(): void {
    void this.worker?.terminate();
    this.worker = undefined;
  }

  private started(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(new URL(import.meta.url), { workerData: { role: ROLE } });
    worker.unref(); // idle, it keeps no process alive
    worker.on('message', (answer: Answer) => this.answered(worker, answer));
    worker.on('error', (err) => this.gone(worker, err));
    worker.on('exit', (code) => this.gone(worker, new Error(`exited with code ${code}`)));
    this.worker = worker;
    return worker;
  }

  private answered(worker: Worker, answer: Answer): void {
    this.answeredOnce = true;
    const ask = this.waiting.get(answer.id);
    if (!ask) return;
    this.waiting.delete(answer.id);
    if (this.waiting.size === 0) worker.unref();
    if ('error' in answer) return ask.reject(new CachefsError('IO', `cannot stat files: ${answer.error}`));
    try {
      ask.resolve(figuresOf(Buffer.from(answer.records.buffer, answer.records.byteOffset, answer.records.byteLength), ask.names));
    } catch (err) {
      ask.reject(err as Error);
    }
  }

  private gone(worker: Worker, err: Error): void {
    if (this.worker !== worker) return;
    this.worker = undefined;
    const asks = [...this.waiting.values()];
    this.waiting.clear();
    if (!this.answeredOnce) {
      // It never ran: the batches are stat'ed here, now and from now on.
      this.here = true;
      for (const ask of asks) statHere(ask.dirfd, ask.names).then(ask.resolve, ask.reject);
      return;
    }
    for (const ask of asks) ask.reject(new CachefsError('IO', `the thread that stats files stopped: ${err.message}`));
  }
}

/** Stats a batch on this thread. */
async function statHere(dirfd: number, names: readonly string[]): Promise<(FileStatx | null)[]> {
  const stat = await statxRecords();
  if (!stat) throw new CachefsError('IO', "cannot stat files: the 'koffi' package cannot load");
  return figuresOf(stat(dirfd, names), names);
}

/** The figures of a batch's records, in the order of its names. */
function figuresOf(records: Buffer, names: readonly string[]): (FileStatx | null)[] {
  return names.map((name, i) => statxOfRecord(records, i, name));
}

/**
 * A thread that reads a folder while the main thread goes on serving: it stats the files
 * of a listing page, a batch at a time, and reads the folder's directory stream ahead
 * (getdents64(2), a buffer at a time). A walk that stats every file (find, ls -l, a loader)
 * then waits for the kernel's answers and the stats of the next page at once, on both
 * cores, instead of one after the other on the event loop (a cold stat reads its inode
 * from disk: ~16 µs each on the main thread, most of a LOOKUP's time in a cold `find`);
 * and a listing (`ls -f` of a million files: 1.2 s in getdents of a cold folder) is read
 * while the pages before are answered.
 *
 * The thread runs this same module (`workerData.role`), through koffi (`folder.ts`),
 * relative to a descriptor the caller opened: descriptors are the process's, so the caller
 * checks the folder and keeps it open until its ask is answered. Answers come back as one
 * buffer, moved (not copied) to the caller. A thread that dies fails its asks with IO
 * errors; the next ask starts another. Where no thread starts at all (a runtime without
 * worker threads, or this module run from its TypeScript source as the unit tests do),
 * asks are answered on the calling thread.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { CachefsError } from '../errors.js';
import { direntsReader, statxOfRecord, statxRecords, type FileStatx } from './folder.js';

const ROLE = 'cachefs-folder-stats';

/** Stats of `names` in the folder `dirfd`, or (with `bytes`) the next entries of its stream, up to that many bytes. */
type Ask = { id: number; dirfd: number; names: readonly string[] } | { id: number; dirfd: number; bytes: number };
type Answer = { id: number; records: Buffer } | { id: number; error: string };

if (!isMainThread && (workerData as { role?: string } | null)?.role === ROLE) {
  const port = parentPort!;
  const [stat, read] = await Promise.all([statxRecords(), direntsReader()]);
  port.on('message', (ask: Ask) => {
    try {
      if (!stat || !read) throw new Error("the 'koffi' package cannot load");
      const records = 'names' in ask ? stat(ask.dirfd, ask.names) : read(ask.dirfd, ask.bytes);
      port.postMessage({ id: ask.id, records } satisfies Answer, [records.buffer as ArrayBuffer]);
    } catch (err) {
      port.postMessage({ id: ask.id, error: (err as Error).message } satisfies Answer);
    }
  });
}

interface Waiting {
  /** Answers it on this thread (no thread could start). */
  here(): Promise<Buffer>;
  resolve(records: Buffer): void;
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
  async stat(dirfd: number, names: readonly string[]): Promise<(FileStatx | null)[]> {
    const records = await this.ask({ dirfd, names }, () => statHere(dirfd, names), 'cannot stat files');
    return figuresOf(records, names);
  }

  /**
   * The next entries of the directory stream of the folder open as `dirfd` (kept open by
   * the caller until this settles, and read by nothing else meanwhile), as getdents64(2)
   * gives them, at most `bytes`: empty at its end.
   */
  readEntries(dirfd: number, bytes: number): Promise<Buffer> {
    return this.ask({ dirfd, bytes }, () => readHere(dirfd, bytes), 'cannot read a folder');
  }

  private ask(what: { dirfd: number; names: readonly string[] } | { dirfd: number; bytes: number }, here: () => Promise<Buffer>, failing: string): Promise<Buffer> {
    if (this.here) return here();
    const worker = this.started();
    const id = this.nextId++;
    return new Promise<Buffer>((resolve, reject) => {
      this.waiting.set(id, { here, resolve, reject: (e) => reject(e instanceof CachefsError ? e : new CachefsError('IO', `${failing}: ${e.message}`)) });
      if (this.waiting.size === 1) worker.ref();
      worker.postMessage({ id, ...what } satisfies Ask);
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
    if ('error' in answer) return ask.reject(new Error(answer.error));
    ask.resolve(Buffer.from(answer.records.buffer, answer.records.byteOffset, answer.records.byteLength));
  }

  private gone(worker: Worker, err: Error): void {
    if (this.worker !== worker) return;
    this.worker = undefined;
    const asks = [...this.waiting.values()];
    this.waiting.clear();
    if (!this.answeredOnce) {
      // It never ran: the asks are answered here, now and from now on.
      this.here = true;
      for (const ask of asks) ask.here().then(ask.resolve, ask.reject);
      return;
    }
    for (const ask of asks) ask.reject(new CachefsError('IO', `the thread that reads folders stopped: ${err.message}`));
  }
}

/** Stats a batch on this thread. */
async function statHere(dirfd: number, names: readonly string[]): Promise<Buffer> {
  const stat = await statxRecords();
  if (!stat) throw new CachefsError('IO', "cannot stat files: the 'koffi' package cannot load");
  return stat(dirfd, names);
}

/** Reads directory entries on this thread. */
async function readHere(dirfd: number, bytes: number): Promise<Buffer> {
  const read = await direntsReader();
  if (!read) throw new CachefsError('IO', "cannot read a folder: the 'koffi' package cannot load");
  return read(dirfd, bytes);
}

/** The figures of a batch's records, in the order of its names. */
function figuresOf(records: Buffer, names: readonly string[]): (FileStatx | null)[] {
  return names.map((name, i) => statxOfRecord(records, i, name));
}

/**
 * Notifications to the kernel written from a thread of their own. A notification that
 * invalidates a directory entry (NOTIFY_INVAL_ENTRY) takes the directory's inode lock
 * inside the write(2): written on the event loop while a LOOKUP in that directory waits
 * for this process's answer (holding the lock shared), the write would wait for the answer
 * and the answer for the write. From this thread, the write waits while the event loop
 * answers.
 *
 * The thread runs this same module (`workerData.role`) and writes each notification to the
 * connection's descriptor (descriptors are the process's), handed over a batch at a time
 * in one buffer; one the kernel refuses (the entry is gone already: ENOENT) is told back
 * with its tag. A batch may come with the same nodes as one NOTIFY_PRUNE (kernel 6.18 on),
 * written instead while the kernel takes it: one write, and no directory lock. Where no
 * thread starts (a runtime without worker threads, or this module run from its TypeScript
 * source as the unit tests do), `start` answers undefined and nothing is sent.
 */
import { writeSync } from 'node:fs';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const ROLE = 'cachefs-fuse-notify';

/**
 * Notifications one after another in `bytes`, each `tags[i]`, its length in its first 4
 * bytes (as the kernel reads it); `instead`, one notification that does what they do, tried
 * first.
 */
interface Batch {
  tags: number[];
  bytes: Uint8Array;
  instead?: Uint8Array;
}
/** A notification refused (`tag`), or the kernel refused the batches' `instead` (`insteadRefused`): they are not tried again. */
type Refused = { tag: number; code: string } | { insteadRefused: string };

if (!isMainThread && (workerData as { role?: string } | null)?.role === ROLE) {
  const port = parentPort!;
  const fd = (workerData as { fd: number }).fd;
  let takesInstead = true;
  port.on('message', ({ tags, bytes, instead }: Batch) => {
    if (instead && takesInstead) {
      try {
        writeSync(fd, instead);
        return;
      } catch (err) {
        takesInstead = false;
        port.postMessage({ insteadRefused: (err as NodeJS.ErrnoException).code ?? 'EIO' } satisfies Refused);
      }
    }
    const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0, at = 0; i < tags.length; i++) {
      const length = b.readUInt32LE(at);
      try {
        writeSync(fd, b, at, length);
      } catch (err) {
        port.postMessage({ tag: tags[i]!, code: (err as NodeJS.ErrnoException).code ?? 'EIO' } satisfies Refused);
      }
      at += length;
    }
  });
}

export class NotifyThread {
  private constructor(private readonly worker: Worker) {}

  /**
   * A thread writing notifications to the connection open as `fd`; `refused` is told the
   * tag and error code of each the kernel refused. Undefined where no thread can start.
   */
  static start(fd: number, refused: (tag: number, code: string) => void, insteadRefused?: (code: string) => void): NotifyThread | undefined {
    if (!import.meta.url.endsWith('.js')) return undefined; // TypeScript source: no thread can run it
    let worker: Worker;
    try {
      worker = new Worker(new URL(import.meta.url), { workerData: { role: ROLE, fd } });
    } catch {
      return undefined;
    }
    worker.unref(); // it keeps no process alive
    worker.on('message', (m: Refused) => ('insteadRefused' in m ? insteadRefused?.(m.insteadRefused) : refused(m.tag, m.code)));
    worker.on('error', () => undefined); // a thread that dies sends nothing more: the nodes it was asked about stay held
    return new NotifyThread(worker);
  }

  /**
   * Writes the notifications in `bytes`, one after another, each starting with its length
   * (`tags[i]` is told back if the i-th is refused), after those sent before them; or
   * `instead`, one notification doing what they do, while the kernel takes it. Buffers of
   * their own are moved to the thread, not copied.
   */
  send(tags: number[], bytes: Buffer, instead?: Buffer): void {
    const moved = [bytes, instead].filter((b) => b && b.byteOffset === 0 && b.byteLength === b.buffer.byteLength).map((b) => b!.buffer as ArrayBuffer);
    this.worker.postMessage({ tags, bytes, instead } satisfies Batch, moved);
  }

  close(): void {
    void this.worker.terminate();
  }
}

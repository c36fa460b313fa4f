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
 * with its tag. Where no thread starts (a
 * runtime without worker threads, or this module run from its TypeScript source as the
 * unit tests do), `start` answers undefined and nothing is sent.
 */
import { writeSync } from 'node:fs';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const ROLE = 'cachefs-fuse-notify';

/** Notifications one after another in `bytes`, each `tags[i]`, its length in its first 4 bytes (as the kernel reads it). */
interface Batch {
  tags: number[];
  bytes: Uint8Array;
}
type Refused = { tag: number; code: string };

if (!isMainThread && (workerData as { role?: string } | null)?.role === ROLE) {
  const port = parentPort!;
  const fd = (workerData as { fd: number }).fd;
  port.on('message', ({ tags, bytes }: Batch) => {
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
  static start(fd: number, refused: (tag: number, code: string) => void): NotifyThread | undefined {
    if (!import.meta.url.endsWith('.js')) return undefined; // TypeScript source: no thread can run it
    let worker: Worker;
    try {
      worker = new Worker(new URL(import.meta.url), { workerData: { role: ROLE, fd } });
    } catch {
      return undefined;
    }
    worker.unref(); // it keeps no process alive
    worker.on('message', ({ tag, code }: Refused) => refused(tag, code));
    worker.on('error', () => undefined); // a thread that dies sends nothing more: the nodes it was asked about stay held
    return new NotifyThread(worker);
  }

  /**
   * Writes the notifications in `bytes`, one after another, each starting with its length
   * (`tags[i]` is told back if the i-th is refused), after those sent before them. A buffer
   * of its own is moved to the thread, not copied.
   */
  send(tags: number[], bytes: Buffer): void {
    const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
    this.worker.postMessage({ tags, bytes } satisfies Batch, own ? [bytes.buffer as ArrayBuffer] : []);
  }

  close(): void {
    void this.worker.terminate();
  }
}

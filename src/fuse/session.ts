/**
 * A FUSE connection served straight over /dev/fuse, without libfuse: the device is
 * opened here and handed to mount(8) as `fd=3`. Requests are read on the event loop
 * (the device is polled like a socket: no thread waits in a read, so nothing holds
 * the process or the device open at exit); replies are written at once — a write
 * to /dev/fuse never blocks, it completes the request the kernel is holding.
 *
 * Doing it ourselves is what lets the kernel send reads of up to 1 MiB (max_pages,
 * which libfuse 2 never asks for) and spares each request two thread hand-offs.
 * Each request not answered within `opTimeoutMs` is answered ETIMEDOUT, so an
 * application never hangs on a stuck backend.
 */
import { openSync, closeSync, writevSync } from 'node:fs';
import { Socket } from 'node:net';
import { constants } from 'node:os';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import { runCommand } from '../sys/mount-commands.js';
import { readMountTable, topMountAt } from '../sys/mountinfo.js';
import { IN_HEADER, outHeader, readHeader, type RequestHeader } from './protocol.js';

/**
 * The largest write the kernel may send (none: the mount is read-only, but the kernel
 * sizes its checks by it). A request and its headers must fit one read of the device.
 */
export const MAX_WRITE = 32 * 1024;
/** Each read of the device lands in one buffer of this size, reused for every request. */
const DEVICE_READ = 64 * 1024;
const SWEEP_MS = 1000;
const E = constants.errno;

export interface SessionHandler {
  /** Called for each request; `body` is valid only until it returns. */
  request(header: RequestHeader, body: Buffer): void;
}

export interface SessionMountOptions {
  allowOther: boolean;
  opTimeoutMs: number;
}

/** libuv's pipe handle, which polls any descriptor that supports poll(2); node:net takes it as a socket's handle. */
interface PipeBinding {
  Pipe: new (type: number) => { open(fd: number): number };
  constants: { SOCKET: number };
}

export class FuseSession {
  /** Requests in progress and when they time out. */
  private readonly pending = new Map<number, number>();
  /** Requests answered ETIMEDOUT whose own reply has not come yet. */
  private readonly timedOut = new Set<number>();
  private readonly sweeper: NodeJS.Timeout;
  private device?: Socket;
  private closed = false;
  private endResolve!: () => void;
  /** Resolves once the kernel has ended the connection (unmounted, or aborted) or `close()` closed it. */
  readonly ended = new Promise<void>((resolve) => (this.endResolve = resolve));
  /** `major:minor` of the connection (its bdi is named so). */
  deviceId?: string;

  private constructor(
    private readonly fd: number,
    readonly mountpoint: string,
    private readonly options: SessionMountOptions,
    private readonly log: Logger,
  ) {
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
    this.sweeper.unref();
  }

  /** Opens /dev/fuse and mounts it at `mountpoint`; requests go to a handler once `start()` is called. */
  static async mount(mountpoint: string, options: SessionMountOptions, log: Logger): Promise<FuseSession> {
    let fd: number;
    try {
      fd = openSync('/dev/fuse', 'r+');
    } catch (err) {
      throw new CachefsError('IO', `cannot mount ${mountpoint}: cannot open /dev/fuse: ${(err as Error).message}`, { cause: err });
    }
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const data = ['ro', 'nosuid', 'nodev', 'fd=3', 'rootmode=40000', `user_id=${uid}`, `group_id=${gid}`, ...(options.allowOther ? ['allow_other'] : [])];
    try {
      // -i: no mount.fuse helper; the kernel takes the device from fd 3 of mount(8).
      await runCommand('mount', ['-i', '-t', 'fuse.cachefs', '-o', data.join(','), 'cachefs', mountpoint], fd);
    } catch (err) {
      closeSync(fd);
      // mount(8) with a device descriptor is root's (CAP_SYS_ADMIN); there is no fusermount path.
      const who = uid === 0 ? '' : ' (cachefs mounts as root only)';
      throw new CachefsError('IO', `cannot mount ${mountpoint}${who}: ${(err as Error).message.split('\n')[0]}`, { cause: err });
    }
    const session = new FuseSession(fd, mountpoint, options, log);
    session.deviceId = topMountAt(await readMountTable(), mountpoint)?.device;
    return session;
  }

  start(handler: SessionHandler): void {
    const { Pipe, constants: pipeConstants } = (process as unknown as { binding(name: string): PipeBinding }).binding('pipe_wrap');
    const handle = new Pipe(pipeConstants.SOCKET);
    const rc = handle.open(this.fd);
    if (rc !== 0) throw new CachefsError('IO', `cannot poll /dev/fuse (uv error ${rc})`);
    // onread: each request is read into one reused buffer and handed over at once, with
    // none of a stream's per-read allocation and event machinery. `body` is valid until
    // `request` returns, so the buffer is free again by the next read.
    const buffer = Buffer.allocUnsafeSlow(DEVICE_READ);
    const device = new Socket({
      handle,
      readable: true,
      writable: false,
      onread: { buffer, callback: (n: number) => this.dispatch(handler, buffer.subarray(0, n)) },
    } as ConstructorParameters<typeof Socket>[0]);
    this.device = device;
    device.on('error', (err: NodeJS.ErrnoException) => {
      // ENODEV: unmounted, the connection is over.
      if (err.code !== 'ENODEV' && !this.closed) this.log.error({ err: err.message }, 'reading /dev/fuse failed: the connection is lost');
      this.end();
    });
    device.on('close', () => this.end());
  }

  /** Each read of the device is one request; the chunk is walked only as a guard. */
  private dispatch(handler: SessionHandler, chunk: Buffer): void {
    let at = 0;
    while (chunk.length - at >= IN_HEADER) {
      const request = chunk.subarray(at);
      const header = readHeader(request);
      if (header.len < IN_HEADER || header.len > request.length) {
        this.log.error({ len: header.len, read: request.length, opcode: header.opcode }, 'a FUSE request that does not fit its read: answered EIO');
        this.reply(header.unique, -E.EIO);
        return;
      }
      try {
        handler.request(header, request.subarray(IN_HEADER, header.len));
      } catch (err) {
        this.log.error({ opcode: header.opcode, err: (err as Error).message }, 'a FUSE request failed to dispatch: answered EIO');
        this.reply(header.unique, -E.EIO);
      }
      at += header.len;
    }
  }

  private end(): void {
    clearInterval(this.sweeper);
    this.closed = true;
    this.endResolve();
  }

  /** Marks a request as in progress: it is answered ETIMEDOUT if no reply comes in time. */
  begin(unique: number): void {
    if (this.options.opTimeoutMs > 0) this.pending.set(unique, Date.now() + this.options.opTimeoutMs);
  }

  /** Answers a request: `error` is 0 or a negative errno; `body` the reply's payload. A reply to a request already answered ETIMEDOUT is dropped. */
  reply(unique: number, error: number, ...body: Buffer[]): void {
    if (this.timedOut.delete(unique)) return;
    this.pending.delete(unique);
    let length = 0;
    for (const b of body) length += b.length;
    this.write(unique, [outHeader(unique, error, length), ...body]);
  }

  private write(unique: number, parts: Buffer[]): void {
    if (this.closed) return;
    try {
      writevSync(this.fd, parts);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // ENOENT: the kernel no longer waits for this request (interrupted); ENODEV: the connection is gone.
      if (code !== 'ENOENT' && code !== 'ENODEV') this.log.warn({ unique, err: (err as Error).message }, 'cannot write a FUSE reply');
    }
  }

  private sweep(): void {
    const now = Date.now();
    for (const [unique, deadline] of this.pending) {
      if (deadline > now) continue;
      this.pending.delete(unique);
      this.timedOut.add(unique);
      this.log.warn({ unique, timeoutMs: this.options.opTimeoutMs }, 'a FUSE request took too long: answered ETIMEDOUT');
      this.write(unique, [outHeader(unique, -E.ETIMEDOUT, 0)]);
    }
  }

  /**
   * Unmounts (lazily when files are still open) and closes the device. Closing it
   * aborts the connection, so other mounts of it — the supervisor's anchor, binds
   * held by consumers — answer ENOTCONN from then on, as with libfuse.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    await runCommand('umount', [this.mountpoint]).catch(() => runCommand('umount', ['-l', this.mountpoint]).catch(() => undefined));
    this.closed = true;
    if (this.device) this.device.destroy();
    else closeSync(this.fd);
    this.end();
  }
}

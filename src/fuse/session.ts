/**
 * A FUSE connection served straight over /dev/fuse, without libfuse: the device is
 * opened here and handed to mount(8) as `fd=3`. Requests are read on the event loop,
 * the device polled like a pipe (`device-poll.ts`); where the runtime cannot poll it,
 * through libuv's thread pool, two reads always waiting in the kernel (a read of the
 * device returns one request): while one request is handled and answered, the next
 * one is being read, and the read that returned is started again only after the
 * answer, off the next request's path. Replies are written at once — a write to /dev/fuse never
 * blocks, it completes the request the kernel is holding. Two requests may come in
 * the other order (the kernel's order matters only for an INTERRUPT that overtakes
 * its request, which `requests.ts` keeps for it).
 *
 * Doing it ourselves is what lets the kernel send reads of up to 1 MiB (max_pages,
 * which libfuse 2 never asks for) and spares each request libfuse's hand-offs.
 *
 * The requests in progress are `requests.ts`'s; the session sweeps them for
 * timeouts and writes their replies.
 *
 * Through the pool, a read of the device waits in the kernel until a request comes, the device is
 * released (and the connection aborted) only once no read holds it, and the process
 * cannot exit while a thread waits there (Node joins its pool's threads at exit). So
 * ending the session, or the process, first wakes that read with a request made on
 * our demand and reads no more: a NOTIFY_RETRIEVE of a node the kernel holds, which
 * the kernel answers with a request; failing that (no regular file held, on recent
 * kernels), a statfs through a path that still reaches the mount.
 *
 * The device may come from the mount supervisor, which keeps a copy (`heal/supervisor.ts`):
 * the kernel connection then outlives this process, and a serving process started on the
 * same descriptor after it died takes the connection over (`resume`): no mount, no INIT,
 * and a NOTIFY_RESEND first, so that the requests the dead process had read and not
 * answered come again.
 */
import { closeSync, openSync, read, statfs, writeSync, writevSync } from 'node:fs';
import { constants } from 'node:os';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import { runCommand } from '../sys/mount-commands.js';
import { readMountTable, topMountAt } from '../sys/mountinfo.js';
import { IN_HEADER, Op, readHeader, RESENT, resendNotice, retrieveNothing, type RequestHeader } from './protocol.js';
import { FuseRequests } from './requests.js';
import { deviceReadMode, pollDevice, type DevicePoller } from './device-poll.js';

/**
 * The largest write the kernel may send (none: the mount is read-only, but the kernel
 * sizes its checks by it). A request and its headers must fit one read of the device.
 */
export const MAX_WRITE = 32 * 1024;
/** Each read of the device lands in its own buffer of this size. */
const DEVICE_READ = 64 * 1024;
/** Reads of the device waiting in the kernel at once (each holds a thread of libuv's pool). */
export const DEVICE_READS = 2;
const SWEEP_MS = 1000;
/** How long ending the session waits for the device read to return before giving up on it. */
const WAKE_TIMEOUT_MS = 5000;
const E = constants.errno;
const ROOT_ID = 1;

export interface SessionHandler {
  /** Called for each request, in the kernel's order; `body` is valid only until it returns. */
  request(header: RequestHeader, body: Buffer): void;
}

export interface SessionMountOptions {
  allowOther: boolean;
  opTimeoutMs: number;
  /** What /proc/mounts shows as the mount's source (the UFS URI, or master=HOST:PORT). */
  source: string;
  /** An open /dev/fuse to mount (the supervisor's, which keeps a copy); else one is opened here. */
  deviceFd?: number;
}

/** What can wake the device read when the session ends. */
export interface WakeTargets {
  /** Node ids of regular files the kernel holds. */
  fileNodes(): number[];
  /** Paths besides the mount point that may reach this mount (a bind of it). */
  paths: readonly string[];
}

export class FuseSession {
  /** Requests in progress. */
  readonly requests: FuseRequests;
  private readonly sweeper: NodeJS.Timeout;
  private handler?: SessionHandler;
  private wakeTargets: WakeTargets = { fileNodes: () => [], paths: [] };
  /** Polls the device on the event loop (else it is read through the pool). */
  private poller?: DevicePoller;
  /** Reads of the device waiting in the kernel (through the pool). */
  private reading = 0;
  /** No more reads: the session is ending. */
  private stopping = false;
  private stopped?: () => void;
  private closed = false;
  private closing?: Promise<void>;
  private endResolve!: () => void;
  /** Resolves once the kernel has ended the connection (unmounted, or aborted) or `close()` closed it. */
  readonly ended = new Promise<void>((resolve) => (this.endResolve = resolve));
  /** `major:minor` of the connection (its bdi is named so). */
  deviceId?: string;
  /** Taken over from a serving process that died: the kernel is asked to send its unanswered requests again at start. */
  private resumed = false;

  private constructor(
    private readonly fd: number,
    readonly mountpoint: string,
    options: SessionMountOptions,
    private readonly log: Logger,
  ) {
    this.requests = new FuseRequests((unique, parts) => this.write(unique, parts), options.opTimeoutMs, log);
    this.sweeper = setInterval(() => this.requests.sweep(Date.now()), SWEEP_MS);
    this.sweeper.unref();
  }

  /** Opens /dev/fuse and mounts it at `mountpoint`; requests go to a handler once `start()` is called. */
  static async mount(mountpoint: string, options: SessionMountOptions, log: Logger): Promise<FuseSession> {
    let fd: number;
    try {
      fd = options.deviceFd ?? openSync('/dev/fuse', 'r+');
    } catch (err) {
      throw new CachefsError('IO', `cannot mount ${mountpoint}: cannot open /dev/fuse: ${(err as Error).message}`, { cause: err });
    }
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    const data = ['ro', 'nosuid', 'nodev', 'fd=3', 'rootmode=40000', `user_id=${uid}`, `group_id=${gid}`, ...(options.allowOther ? ['allow_other'] : [])];
    try {
      // -i: no mount.fuse helper; the kernel takes the device from fd 3 of mount(8).
      await runCommand('mount', ['-i', '-t', 'fuse.cachefs', '-o', data.join(','), options.source, mountpoint], fd);
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

  /** The /dev/fuse descriptor, for ioctls on the connection (passthrough.ts). */
  get device(): number {
    return this.fd;
  }

  /**
   * Takes over the connection of `fd`, mounted at `mountpoint` and negotiated by a serving
   * process that died; `start()` then asks the kernel for that process's unanswered requests.
   */
  static async resume(fd: number, mountpoint: string, options: SessionMountOptions, log: Logger): Promise<FuseSession> {
    const session = new FuseSession(fd, mountpoint, options, log);
    session.resumed = true;
    session.deviceId = topMountAt(await readMountTable(), mountpoint)?.device;
    return session;
  }

  start(handler: SessionHandler, wake?: WakeTargets): void {
    if (this.resumed) this.resend();
    this.handler = handler;
    if (wake) this.wakeTargets = wake;
    process.on('exit', this.wakeAtExit);
    process.on('uncaughtExceptionMonitor', this.noteCrash);
    if (deviceReadMode() === 'poll') {
      this.poller = pollDevice(this.fd, DEVICE_READ, (chunk) => this.dispatch(chunk), (err) => this.pollEnded(err));
    }
    this.log.debug({ deviceRead: this.poller ? 'poll' : 'pool' }, 'reading /dev/fuse');
    if (this.poller) return;
    for (let i = 0; i < DEVICE_READS; i++) this.readInto(Buffer.allocUnsafeSlow(DEVICE_READ));
  }

  /** NOTIFY_RESEND, before the first read: afterwards it would send again what this process has read itself. */
  private resend(): void {
    try {
      writeSync(this.fd, resendNotice());
      this.log.info('took over the FUSE connection: asked the kernel to send the unanswered requests again');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENODEV') throw new CachefsError('IO', `cannot take over the FUSE connection of ${this.mountpoint}: it is gone`, { cause: err });
      // EINVAL: a kernel before 6.9. Requests the dead process had read wait until their callers are killed.
      this.log.warn({ err: (err as Error).message }, 'the kernel cannot send unanswered requests again (NOTIFY_RESEND): their callers wait until killed');
    }
  }

  private pollEnded(err?: NodeJS.ErrnoException): void {
    // ENODEV: unmounted; ENOENT: a request aborted with the connection. Either way it is over.
    if (err && err.code !== 'ENODEV' && err.code !== 'ENOENT' && !this.closed) this.log.error({ err: err.message }, 'reading /dev/fuse failed: the connection is lost');
    this.end();
  }

  private readInto(buffer: Buffer): void {
    this.reading += 1;
    read(this.fd, buffer, 0, buffer.length, null, (err, n) => {
      this.reading -= 1;
      if (this.stopping) {
        // The last requests read are still answered: one may be the statfs that woke us.
        if (!err) this.dispatch(buffer.subarray(0, n));
        if (this.reading === 0) this.stopped?.();
        return;
      }
      if (err) return this.readFailed(err, buffer);
      this.dispatch(buffer.subarray(0, n));
      if (!this.stopping) this.readInto(buffer);
    });
  }

  private readFailed(err: NodeJS.ErrnoException, buffer: Buffer): void {
    // EINTR, EAGAIN: try again; ENOENT: the request was interrupted before it was read (libfuse does the same).
    if (err.code === 'EINTR' || err.code === 'EAGAIN' || err.code === 'ENOENT') return this.readInto(buffer);
    // ENODEV: unmounted, the connection is over.
    if (err.code !== 'ENODEV' && !this.closed) this.log.error({ err: err.message }, 'reading /dev/fuse failed: the connection is lost');
    this.end();
  }

  /** Each read of the device is one request; its length is checked against the read. */
  private dispatch(chunk: Buffer): void {
    if (chunk.length < IN_HEADER) {
      this.log.error({ read: chunk.length }, 'a read of /dev/fuse shorter than a request header: ignored');
      return;
    }
    const header = readHeader(chunk);
    if (header.len < IN_HEADER || header.len > chunk.length) {
      this.log.error({ len: header.len, read: chunk.length, opcode: header.opcode }, 'a FUSE request that does not fit its read: answered EIO');
      if (header.opcode !== Op.NOTIFY_REPLY) this.requests.replyNow(header.unique, -E.EIO);
      return;
    }
    if (header.unique >= RESENT) this.log.info({ opcode: header.opcode, nodeid: header.nodeid }, 'serving a request the dead serving process left unanswered');
    try {
      this.handler!.request(header, chunk.subarray(IN_HEADER, header.len));
    } catch (err) {
      this.log.error({ opcode: header.opcode, err: (err as Error).message }, 'a FUSE request failed to dispatch: answered EIO');
      const req = this.requests.get(header.unique);
      if (req) this.requests.reply(req, -E.EIO);
      else this.requests.replyNow(header.unique, -E.EIO);
    }
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

  /**
   * Hands the connection on (an upgrade): reads no more requests, and waits at most
   * `timeoutMs` for those read to be answered. The mount stays; requests still unanswered
   * when this process ends are sent again to the next one (NOTIFY_RESEND).
   */
  async drain(timeoutMs: number): Promise<void> {
    await this.stopReading();
    const until = Date.now() + timeoutMs;
    while (this.requests.inFlight > 0 && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 10));
    if (this.requests.inFlight > 0) this.log.warn({ inFlight: this.requests.inFlight, timeoutMs }, 'handing the connection on with requests unanswered: the next serving process gets them again');
  }

  /** Stops reading the device: the reads waiting in the kernel are woken, and the requests they bring are the last ones served. */
  private async stopReading(): Promise<void> {
    this.stopping = true;
    this.poller?.stop();
    if (this.reading === 0) return;
    const done = new Promise<void>((resolve) => (this.stopped = resolve));
    if (this.retrieve(this.reading)) this.log.debug({ reads: this.reading }, 'woke the reads of /dev/fuse with NOTIFY_RETRIEVEs');
    else {
      // No node to ask about: statfs through the mount (or a bind of it) makes the requests.
      this.log.debug({ paths: [this.mountpoint, ...this.wakeTargets.paths] }, 'waking the reads of /dev/fuse with statfs');
      for (let i = this.reading; i > 0; i--) for (const path of [this.mountpoint, ...this.wakeTargets.paths]) statfs(path, () => undefined);
    }
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), WAKE_TIMEOUT_MS)));
    if ((await Promise.race([done, late])) === 'late') {
      this.log.error({ timeoutMs: WAKE_TIMEOUT_MS }, 'the read of /dev/fuse did not return: the connection stays until the process ends');
    }
    clearTimeout(timer);
  }

  /**
   * Asks the kernel for `count` requests (NOTIFY_RETRIEVEs) about the root, else a regular
   * file it holds; false if it took none.
   */
  private retrieve(count: number): boolean {
    for (const nodeid of [ROOT_ID, ...this.wakeTargets.fileNodes()]) {
      try {
        for (let i = 0; i < count; i++) writeSync(this.fd, retrieveNothing(nodeid));
        return true;
      } catch (err) {
        // ENODEV: the connection is gone, and the reads have returned with it. EINVAL: not a
        // node the kernel retrieves from (a directory, on recent kernels); ENOENT: not held any more.
        if ((err as NodeJS.ErrnoException).code === 'ENODEV') return true;
        this.log.debug({ nodeid, err: (err as Error).message }, 'the kernel took no NOTIFY_RETRIEVE of this node');
      }
    }
    return false;
  }

  /**
   * At exit the read waiting in the kernel must return, or the exit waits for it forever.
   * When no request can be asked for, the process ends itself with SIGKILL: a supervisor
   * replaces it, as it would after the failure that brought us here. Node prints an
   * uncaught exception only after the exit listeners, so its stack is written here first.
   */
  private readonly wakeAtExit = (code: number): void => {
    if (this.reading === 0 || this.retrieve(this.reading)) return;
    const why = this.crash instanceof Error ? (this.crash.stack ?? this.crash.message) : this.crash !== undefined ? String(this.crash) : `exit code ${code}`;
    writeSync(2, `cachefs: ending with SIGKILL: a read of /dev/fuse waits that nothing can wake; the process was exiting on: ${why}\n`);
    process.kill(process.pid, 'SIGKILL');
  };

  private crash?: unknown;
  private readonly noteCrash = (err: unknown): void => {
    this.crash = err;
  };

  private end(): void {
    clearInterval(this.sweeper);
    this.closed = true;
    this.endResolve();
  }

  /**
   * Unmounts (lazily when files are still open) and closes the device. Closing it
   * aborts the connection, so other mounts of it — the supervisor's anchor, binds
   * held by consumers — answer ENOTCONN from then on, as with libfuse.
   */
  close(): Promise<void> {
    return (this.closing ??= this.unmountAndClose());
  }

  private async unmountAndClose(): Promise<void> {
    await runCommand('umount', [this.mountpoint]).catch(() => runCommand('umount', ['-l', this.mountpoint]).catch(() => undefined));
    // The device is released (and the connection aborted) only once no read holds it.
    await this.stopReading();
    this.closed = true;
    if (this.reading === 0) {
      process.off('exit', this.wakeAtExit);
      process.off('uncaughtExceptionMonitor', this.noteCrash);
    }
    // A polled descriptor belongs to its pipe handle: closed through it, never twice.
    if (this.poller) this.poller.close();
    else closeSync(this.fd);
    this.end();
  }
}

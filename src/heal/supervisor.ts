/**
 * The mount supervisor: a small process that runs the FUSE serving process as its
 * child and keeps the mount point served. It opens /dev/fuse itself, hands the
 * descriptor to each serving process (`DEVICE_FD`, which the first one mounts) and
 * keeps its own copy, so the kernel connection outlives a serving process.
 *
 * When the serving process dies — any signal, any non-zero exit, the OOM killer —
 * the supervisor starts a new one on the same descriptor (`--resume`): no unmount,
 * no new mount. The new process takes the connection over: it learns what INIT
 * settled and the node ids and handles the kernel holds from the dead one's files in
 * the runtime dir, and has the kernel send again the requests the dead one read and
 * never answered (NOTIFY_RESEND, `fuse/session.ts`). Meanwhile the kernel holds every
 * request: descriptors and working directories held across the crash go on working,
 * and a reader caught mid-read gets its bytes late. The replacement is a **standby**,
 * started once the serving process serves, that has loaded its code and waits
 * (`serving-channel.ts`): taking over costs no process start and no module loading,
 * which dominate a cold start (about 1 s here, more on a loaded machine); it costs the
 * memory of one idle Node process. The first restart after a stable
 * period is immediate, each further one in a row waits twice as long, capped; it
 * never gives up, and logs every attempt.
 *
 * Where the connection cannot be kept — the mount at the mount point is no longer the
 * connection's, or a serving process could not take it over — the supervisor falls
 * back to mounting anew (logged):
 *
 * 1. it closes its descriptor (the connection is aborted: every access through it
 *    answers ENOTCONN) and detaches the dead mount lazily; copies of it that other
 *    mount namespaces received by propagation are detached with it;
 * 2. it starts a serving process on a new descriptor, which mounts anew;
 * 3. once that process has mounted, it mounts the new mount on top of every bind of
 *    the dead one that it can see, its anchor included (`bind-repair.ts`,
 *    `mount-anchor.ts`): binds of the mount in other namespaces (Kubernetes:
 *    Bidirectional on the FUSE side, HostToContainer on the application side) heal
 *    through them, but descriptors held across the crash stay dead.
 *
 * An upgrade (`upgrade`, asked over `supervisor-socket.ts` by `cachefs mount --upgrade`
 * of a new build) hands the connection over the same way, without a crash: a standby of the new
 * command line, the serving process drained (SIGUSR2), the standby told to take over.
 *
 * A serving process that exits with code 0 ended the mount on purpose (`cachefs
 * umount`, SIGTERM to it): supervision ends too. `stop()` (SIGTERM to the supervisor)
 * stops the serving process, which unmounts; whatever is left mounted, the anchor
 * included, is detached, and the descriptor closed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import { repairBinds } from './bind-repair.js';
import { MountAnchor } from './mount-anchor.js';
import { lazyUnmount } from '../sys/mount-commands.js';
import { readMountTable, topMountAt } from '../sys/mountinfo.js';
import { asServingMessage, deviceArgs, DEVICE_FD, TAKE_OVER } from './serving-channel.js';
import type { SupervisorMetrics } from './supervisor-metrics.js';
import type { UpgradeAnswer, UpgradeRequest } from './supervisor-socket.js';

/** How to start a serving process: it reports on its IPC channel (`serving-channel.ts`). */
export interface ServingCommand {
  file: string;
  args: string[];
  env: NodeJS.ProcessEnv;
}

export interface Backoff {
  /** Pause before the second restart in a row; doubled for each further one. */
  firstDelayMs: number;
  maxDelayMs: number;
  /** A serving process that served this long ends a crash loop: the next restart is immediate. */
  stableAfterMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { firstDelayMs: 500, maxDelayMs: 30_000, stableAfterMs: 10_000 };

export interface SupervisorOptions {
  mountpoint: string;
  command: ServingCommand;
  log: Logger;
  metrics: SupervisorMetrics;
  backoff?: Backoff;
  /** A replacement that has not mounted after this long is killed and tried again. */
  restartTimeoutMs?: number;
  /** A serving process that has not stopped this long after SIGTERM is killed. */
  stopTimeoutMs?: number;
  /** Keep an anchor bind (`mount-anchor.ts`) so that binds of the mount point itself heal; default true (root only). */
  anchor?: boolean;
  /** What the kernel mount is made with (source, allow_other, owner): an upgrade that would change it is refused. */
  fuseOptions?: string;
}

/** Why supervision ended: `stop()`, or the serving process ended the mount on purpose. */
export type SupervisionEnd = 'stopped' | 'unmounted';

/** The first serving process did not mount. `printed`: it already wrote its one-line message to the shared stderr. */
export class ServingStartError extends CachefsError {
  constructor(
    message: string,
    readonly exitCode: number,
    readonly printed: boolean,
  ) {
    super('IO', message);
  }
}

export class MountSupervisor {
  private readonly backoff: Backoff;
  private current?: ServingProcess;
  /** Devices (`major:minor`) of connections whose serving process died: their mounts and binds are stale. */
  private readonly deadDevices = new Set<string>();
  /** Restarts since the last serving process that stayed up `stableAfterMs`. */
  private streak = 0;
  private diedAt = 0;
  private retryTimer?: NodeJS.Timeout;
  private stopping?: Promise<void>;
  private anchor?: MountAnchor;
  /** The supervisor's copy of the serving processes' /dev/fuse; undefined if it could not be opened (each mounts its own then). */
  private deviceFd?: number;
  /** `major:minor` of the connection on `deviceFd`, once a serving process mounted it. */
  private connection?: string;
  /** A serving process could not take the connection over: the next one mounts anew. */
  private resumeFailed = false;
  /** The next serving process, waiting to be told to take the connection over. */
  private standby?: ServingProcess;
  /** What serving processes are started with: the mount's command line, or an upgrade's. */
  private command: ServingCommand;
  /** An upgrade under way: the serving process draining, and where the answer goes. */
  private handOver?: { from: ServingProcess; previous: ServingCommand; done: (answer: UpgradeAnswer) => void };
  private end!: (why: SupervisionEnd) => void;
  /** Resolves when supervision ends; the serving process is gone by then. */
  readonly ended: Promise<SupervisionEnd> = new Promise((resolve) => (this.end = resolve));

  constructor(private readonly options: SupervisorOptions) {
    this.backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.command = options.command;
  }

  /**
   * Upgrade: hands the kept connection to a serving process of `request.command` (a new
   * build) — its standby is started, the serving process drains (SIGUSR2: it stops reading
   * the device, answers what it read, and exits without unmounting), and the standby takes
   * over. Refused when the FUSE options would change, or while the mount is not served on a
   * kept connection. Resolves once the new process serves, or with why not.
   */
  async upgrade(request: UpgradeRequest): Promise<UpgradeAnswer> {
    if (request.fuseOptions !== (this.options.fuseOptions ?? '')) {
      return { ok: false, code: 'CONFLICT', message: `the FUSE options would change (mounted with ${this.options.fuseOptions}, asked for ${request.fuseOptions}): unmount, then mount` };
    }
    const from = this.current;
    if (this.stopping || this.handOver || !from?.alive || from.readyAt === undefined || this.deviceFd === undefined || !this.connection) {
      return { ok: false, code: 'CONFLICT', message: `${this.options.mountpoint} is not served on a kept connection right now (recovering, stopping or upgrading): try again` };
    }
    const done = new Promise<UpgradeAnswer>((resolve) => (this.handOver = { from, previous: this.command, done: resolve }));
    this.command = request.command;
    await this.dropStandby();
    this.prepareStandby();
    // The old process serves on until the new build has loaded: the pause is only the take-over.
    await this.standby?.standingBy;
    // Stopped meanwhile: the hand-over was answered already.
    if (this.stopping) return done;
    this.options.log.info({ servingPid: from.pid, standbyPid: this.standby?.pid }, 'upgrade: the serving process drains and hands the connection to one of the new build');
    from.kill('SIGUSR2');
    return done;
  }

  private endHandOver(answer: UpgradeAnswer): void {
    const handOver = this.handOver;
    this.handOver = undefined;
    if (!handOver) return;
    if (!answer.ok) this.command = handOver.previous;
    handOver.done(answer);
  }

  /** The serving process now, if one is mounted. */
  serving(): { pid: number; metricsPort?: number } | undefined {
    const proc = this.current;
    return proc?.readyAt !== undefined && proc.alive ? { pid: proc.pid, metricsPort: proc.metricsPort } : undefined;
  }

  /** Starts the first serving process; resolves once it has mounted, throws `ServingStartError` if it could not. */
  async start(): Promise<void> {
    this.openDevice();
    const proc = this.spawn('mount');
    try {
      await proc.ready;
    } catch (err) {
      await proc.exited;
      this.current = undefined;
      throw err;
    }
    await this.adopt(proc);
  }

  /** Stops the serving process (it unmounts), detaches anything left mounted, ends supervision. */
  stop(): Promise<void> {
    this.stopping ??= this.shutDown();
    return this.stopping;
  }

  private async shutDown(): Promise<void> {
    const { log } = this.options;
    clearTimeout(this.retryTimer);
    this.endHandOver({ ok: false, code: 'INTERRUPTED', message: 'the supervisor is stopping' });
    await this.dropStandby();
    const proc = this.current;
    if (proc?.alive) {
      proc.kill('SIGTERM');
      const timeoutMs = this.options.stopTimeoutMs ?? 15_000;
      const killer = setTimeout(() => {
        log.warn({ servingPid: proc.pid, timeoutMs }, 'serving process did not stop in time: killing it');
        proc.kill('SIGKILL');
      }, timeoutMs);
      await proc.exited;
      clearTimeout(killer);
    }
    if (proc?.device) this.deadDevices.add(proc.device);
    if (this.connection) this.deadDevices.add(this.connection);
    await this.detachDeadMount().catch((err: unknown) => log.error({ err: (err as Error).message }, 'cannot detach the mount'));
    this.closeDevice();
    this.options.metrics.servingUp.set(0);
    await this.finish('stopped');
  }

  private async finish(why: SupervisionEnd): Promise<void> {
    await this.dropStandby();
    this.closeDevice();
    await this.anchor?.release().catch((err: unknown) => this.options.log.error({ err: (err as Error).message }, 'cannot release the anchor'));
    this.anchor = undefined;
    this.end(why);
  }

  /** Starts a serving process on the kept descriptor: to mount it, or to take its connection over. */
  private spawn(mode: 'mount' | 'resume'): ServingProcess {
    const proc = new ServingProcess(this.command, this.deviceFd, mode);
    this.current = proc;
    this.options.log.debug({ servingPid: proc.pid, mode }, 'started a serving process');
    return proc;
  }

  /** Starts a standby for the kept connection, unless there is one. */
  private prepareStandby(): void {
    if (this.deviceFd === undefined || !this.connection || this.stopping || this.standby?.alive) return;
    const standby = new ServingProcess(this.command, this.deviceFd, 'standby');
    this.standby = standby;
    this.options.log.debug({ standbyPid: standby.pid }, 'started a standby serving process');
    void standby.exited.then((exit) => {
      if (this.standby !== standby) return;
      this.standby = undefined;
      if (!this.stopping) this.options.log.warn({ standbyPid: standby.pid, code: exit.code, signal: exit.signal }, 'the standby serving process ended: the next replacement starts cold');
    });
  }

  /**
   * Ends the standby (it holds nothing but its copy of the descriptor); `wait`: until it
   * has exited. A remount does not wait: the old connection's descriptor in the standby
   * keeps nothing from being mounted, and the mount is down meanwhile.
   */
  private async dropStandby(wait = true): Promise<void> {
    const standby = this.standby;
    this.standby = undefined;
    if (!standby?.alive) return;
    standby.kill('SIGTERM');
    if (wait) await standby.exited;
  }

  private openDevice(): void {
    try {
      this.deviceFd = openSync('/dev/fuse', 'r+');
    } catch (err) {
      this.options.log.warn({ err: (err as Error).message }, 'cannot open /dev/fuse: the serving process opens its own, and a crash of it ends its connection');
    }
  }

  /** Closes the kept descriptor: its connection is aborted once no serving process holds it either. */
  private closeDevice(): void {
    if (this.deviceFd !== undefined) closeSync(this.deviceFd);
    this.deviceFd = undefined;
    this.connection = undefined;
  }

  /** Why the connection on the kept descriptor cannot be taken over by a new serving process; undefined if it can. */
  private async whyNotKept(): Promise<string | undefined> {
    if (this.deviceFd === undefined || !this.connection) return 'no kept descriptor with a mounted connection';
    if (this.resumeFailed) return 'the last serving process could not take the connection over';
    const top = topMountAt(await readMountTable(), this.options.mountpoint);
    if (top?.device !== this.connection) return `the mount point shows ${top ? `connection ${top.device}` : 'no mount'}, not ${this.connection}`;
    return undefined;
  }

  /** Takes a mounted serving process into service: remembers its connection and watches it. */
  private async adopt(proc: ServingProcess): Promise<void> {
    try {
      proc.device = topMountAt(await readMountTable(), this.options.mountpoint)?.device;
    } catch (err) {
      // Without the device the dead mount is not recognised later; a replacement then finds it and fails, and is retried.
      this.options.log.error({ err: (err as Error).message }, 'cannot read the mount table');
    }
    if (this.deviceFd !== undefined) this.connection = proc.device;
    if (!proc.resume) this.resumeFailed = false;
    if (!this.anchor && this.options.anchor !== false) this.anchor = await MountAnchor.create(this.options.mountpoint, this.options.log);
    this.options.metrics.servingUp.set(1);
    void proc.exited.then((exit) => this.onExit(proc, exit));
    this.prepareStandby();
  }

  private onExit(proc: ServingProcess, exit: Exit): void {
    const { log, metrics } = this.options;
    metrics.servingUp.set(0);
    if (this.current === proc) this.current = undefined;
    if (this.stopping) return;
    if (this.handOver?.from === proc) {
      log.info({ servingPid: proc.pid, code: exit.code, signal: exit.signal }, 'upgrade: the serving process drained: handing the connection over');
      this.diedAt = Date.now();
      void this.restart(true);
      return;
    }
    if (exit.code === 0) {
      log.info({ servingPid: proc.pid }, 'serving process ended the mount on purpose: supervision ends');
      void this.finish('unmounted');
      return;
    }
    this.diedAt = Date.now();
    const servedMs = this.diedAt - (proc.readyAt ?? this.diedAt);
    if (servedMs >= this.backoff.stableAfterMs) this.streak = 0;
    // Without a kept descriptor the connection died with the process.
    if (proc.device && this.deviceFd === undefined) this.deadDevices.add(proc.device);
    log.error({ servingPid: proc.pid, code: exit.code, signal: exit.signal, servedMs }, 'serving process died: replacing it');
    this.scheduleRestart();
  }

  private scheduleRestart(): void {
    const delayMs = this.streak === 0 ? 0 : Math.min(this.backoff.maxDelayMs, this.backoff.firstDelayMs * 2 ** (this.streak - 1));
    this.streak += 1;
    this.options.log.warn({ attempt: this.streak, delayMs }, 'restarting the serving process');
    this.retryTimer = setTimeout(() => void this.restart(), delayMs);
  }

  /** Starts the next serving process; `upgrade`: after a hand-over's drain, not a crash. */
  private async restart(upgrade = false): Promise<void> {
    const { log, metrics } = this.options;
    const attempt = this.streak;
    if (this.stopping) return;
    const whyNot = await this.whyNotKept().catch((err: unknown) => `cannot read the mount table: ${(err as Error).message}`);
    if (whyNot) {
      if (this.connection) {
        log.warn({ attempt, connection: this.connection, reason: whyNot }, 'cannot keep the kernel connection: mounting anew');
        this.deadDevices.add(this.connection);
      }
      // A descriptor mounted once cannot be mounted again: a new one for the new mount.
      if (this.deviceFd !== undefined) {
        this.closeDevice();
        this.openDevice();
      }
    }
    // The dead mount must go before a new one can be made on the same directory.
    if (whyNot) await this.dropStandby(false);
    if (whyNot) await this.detachDeadMount().catch((err: unknown) => log.error({ attempt, err: (err as Error).message }, 'cannot detach the dead mount'));
    if (this.stopping) return;
    const proc = !whyNot && this.standby?.alive ? this.takeOverByStandby(this.standby) : this.spawn(whyNot ? 'mount' : 'resume');
    const timeoutMs = this.options.restartTimeoutMs ?? 60_000;
    const timer = setTimeout(() => {
      log.error({ attempt, servingPid: proc.pid, timeoutMs }, 'serving process did not mount in time: killing it');
      proc.kill('SIGKILL');
    }, timeoutMs);
    try {
      await proc.ready;
    } catch (err) {
      await proc.exited;
      if (this.current === proc) this.current = undefined;
      if (this.stopping) return;
      log.error({ attempt, servingPid: proc.pid, resume: proc.resume, code: (err as ServingStartError).exitCode, reason: (err as Error).message }, 'serving process could not mount');
      if (upgrade) this.endHandOver({ ok: false, code: 'IO', message: `the serving process of the new build could not take over: ${(err as Error).message}; the mount goes on with the old build` });
      if (!proc.resume) return this.scheduleRestart();
      // Not a crash loop: the connection could not be taken over. Mounting anew is tried at once.
      this.resumeFailed = true;
      this.retryTimer = setTimeout(() => void this.restart(), 0);
      return;
    } finally {
      clearTimeout(timer);
    }
    if (this.stopping) return; // shutDown() stops it: it is `current`
    if (upgrade) {
      log.info({ servingPid: proc.pid, downMs: Date.now() - this.diedAt }, 'upgrade: the new build serves the mount');
      this.endHandOver({ ok: true, servingPid: proc.pid });
    } else {
      metrics.recoveries.inc();
      log.info({ attempt, servingPid: proc.pid, downMs: Date.now() - this.diedAt, keptConnection: proc.resume }, 'mount recovered');
    }
    await this.adopt(proc);
    if (!proc.resume) await this.repairBinds();
  }

  private takeOverByStandby(standby: ServingProcess): ServingProcess {
    this.standby = undefined;
    this.current = standby;
    standby.takeOver();
    this.options.log.debug({ servingPid: standby.pid }, 'told the standby to take the connection over');
    return standby;
  }

  /** Detaches the mount at the mount point while it is one of a dead connection (there may be several stacked). */
  private async detachDeadMount(): Promise<void> {
    for (let i = 0; i < 8; i++) {
      const top = topMountAt(await readMountTable(), this.options.mountpoint);
      if (!top || !this.deadDevices.has(top.device)) return;
      await lazyUnmount(this.options.mountpoint);
      this.options.log.info({ mountpoint: this.options.mountpoint, device: top.device }, 'detached the dead mount');
    }
  }

  private async repairBinds(): Promise<void> {
    const { log, metrics, mountpoint } = this.options;
    try {
      for (const r of await repairBinds(mountpoint, this.deadDevices, log)) metrics.bindRepairs.inc({ outcome: r.outcome });
      // Forget connections of which nothing is mounted any more.
      const inUse = new Set((await readMountTable()).map((m) => m.device));
      for (const device of this.deadDevices) if (!inUse.has(device)) this.deadDevices.delete(device);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'cannot repair binds of the dead mount');
    }
  }
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** One serving process: its readiness report and its end. */
class ServingProcess {
  private readonly child: ChildProcess;
  readyAt?: number;
  metricsPort?: number;
  /** `major:minor` of the connection it serves, once mounted. */
  device?: string;
  private failure?: { exitCode: number; message: string };
  /** Started to take over the connection of one that died (a standby, once told to). */
  readonly resume: boolean;
  /** Resolves once the process is gone and its IPC channel closed. */
  readonly exited: Promise<Exit>;
  /** Resolves when it reports that it mounted; rejects with ServingStartError if it fails or ends first. */
  readonly ready: Promise<void>;
  /** A standby: resolves once it has loaded what it needs (or has ended). */
  readonly standingBy: Promise<void>;
  private onStandingBy!: () => void;

  /** `deviceFd`: the supervisor's /dev/fuse, handed over as the child's DEVICE_FD. */
  constructor(command: ServingCommand, deviceFd: number | undefined, mode: 'mount' | 'resume' | 'standby') {
    this.resume = mode !== 'mount' && deviceFd !== undefined;
    const args = deviceFd === undefined ? command.args : [...command.args, ...deviceArgs(mode)];
    const stdio: (number | 'ignore' | 'inherit' | 'ipc')[] = ['ignore', 'inherit', 'inherit', 'ipc'];
    if (deviceFd !== undefined) stdio[DEVICE_FD] = deviceFd;
    this.child = spawn(command.file, args, {
      env: command.env,
      stdio,
      // Its own process group: a terminal's ^C reaches the supervisor only, which decides.
      detached: true,
    });
    this.exited = new Promise((resolve) => {
      this.child.once('close', (code, signal) => resolve({ code, signal }));
      this.child.once('error', () => resolve({ code: this.child.exitCode ?? 127, signal: null }));
    });
    this.standingBy = new Promise((resolve) => (this.onStandingBy = resolve));
    void this.exited.then(() => this.onStandingBy());
    this.ready = new Promise((resolve, reject) => {
      this.child.on('message', (raw) => {
        const message = asServingMessage(raw);
        if (message?.kind === 'standing-by') this.onStandingBy();
        else if (message?.kind === 'ready') {
          this.readyAt = Date.now();
          this.metricsPort = message.metricsPort;
          resolve();
        } else if (message?.kind === 'failed') {
          this.failure = { exitCode: message.exitCode, message: message.message };
        }
      });
      void this.exited.then((exit) => reject(this.startError(exit)));
    });
    this.ready.catch(() => undefined);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined;
  }

  kill(signal: NodeJS.Signals): void {
    if (this.alive) this.child.kill(signal);
  }

  /** Tells a standby to take the connection over; one that cannot hear it is killed (and so replaced). */
  takeOver(): void {
    this.child.send(TAKE_OVER, (err) => {
      if (err) this.kill('SIGKILL');
    });
  }

  private startError(exit: Exit): ServingStartError {
    if (this.failure) return new ServingStartError(this.failure.message, this.failure.exitCode, true);
    const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
    return new ServingStartError(`the serving process ${how} before it mounted`, exit.code || 1, false);
  }
}

/**
 * The mount supervisor: a small process that runs the FUSE serving process as its
 * child and keeps the mount point served. When the serving process dies — any
 * signal, any non-zero exit, the OOM killer — the kernel connection dies with it
 * and every access through the mount answers ENOTCONN. The supervisor then
 *
 * 1. detaches the dead mount (lazily: descriptors opened on it keep failing, new
 *    lookups find the bare directory); copies of it that other mount namespaces
 *    received by propagation are detached with it;
 * 2. starts a new serving process with the same command line — at once for the
 *    first crash after a stable period, then after a pause that doubles with each
 *    crash in a row, capped; it never gives up, and logs every attempt;
 * 3. once that process has mounted, counts the recovery and mounts the new mount on
 *    top of every bind of the dead one that it can see, its anchor included
 *    (`bind-repair.ts`, `mount-anchor.ts`).
 *
 * The new mount reaches consumers in other mount namespaces by propagation when the
 * mount point sits in a shared subtree (Kubernetes: Bidirectional on the FUSE side,
 * HostToContainer on the application side); binds of the mount in those namespaces
 * heal through the repaired binds. A serving process that exits with code 0 ended
 * the mount on purpose (`cachefs umount`, SIGTERM to it): supervision ends too.
 * `stop()` (SIGTERM to the supervisor) stops the serving process, which unmounts;
 * whatever is left mounted, the anchor included, is detached.
 *
 * What it does not do: keep the kernel connection itself alive across a crash.
 * The connection is the serving process's open /dev/fuse (`session.ts`): it dies
 * with the process, and the kernel's node ids with it. (Handing the descriptor to
 * the supervisor would let a new serving process take it over, if it could also
 * learn the node ids the kernel holds; not done.) So consumers see errors for the
 * recovery window.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { CachefsError } from '../errors.js';
import type { Logger } from '../log.js';
import { repairBinds } from './bind-repair.js';
import { MountAnchor } from './mount-anchor.js';
import { lazyUnmount } from '../sys/mount-commands.js';
import { readMountTable, topMountAt } from '../sys/mountinfo.js';
import { asServingMessage } from './serving-channel.js';
import type { SupervisorMetrics } from './supervisor-metrics.js';

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
  private end!: (why: SupervisionEnd) => void;
  /** Resolves when supervision ends; the serving process is gone by then. */
  readonly ended: Promise<SupervisionEnd> = new Promise((resolve) => (this.end = resolve));

  constructor(private readonly options: SupervisorOptions) {
    this.backoff = options.backoff ?? DEFAULT_BACKOFF;
  }

  /** The serving process now, if one is mounted. */
  serving(): { pid: number; metricsPort?: number } | undefined {
    const proc = this.current;
    return proc?.readyAt !== undefined && proc.alive ? { pid: proc.pid, metricsPort: proc.metricsPort } : undefined;
  }

  /** Starts the first serving process; resolves once it has mounted, throws `ServingStartError` if it could not. */
  async start(): Promise<void> {
    const proc = this.spawn();
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
    await this.detachDeadMount().catch((err: unknown) => log.error({ err: (err as Error).message }, 'cannot detach the mount'));
    this.options.metrics.servingUp.set(0);
    await this.finish('stopped');
  }

  private async finish(why: SupervisionEnd): Promise<void> {
    await this.anchor?.release().catch((err: unknown) => this.options.log.error({ err: (err as Error).message }, 'cannot release the anchor'));
    this.anchor = undefined;
    this.end(why);
  }

  private spawn(): ServingProcess {
    const proc = new ServingProcess(this.options.command);
    this.current = proc;
    this.options.log.debug({ servingPid: proc.pid }, 'started a serving process');
    return proc;
  }

  /** Takes a mounted serving process into service: remembers its connection and watches it. */
  private async adopt(proc: ServingProcess): Promise<void> {
    try {
      proc.device = topMountAt(await readMountTable(), this.options.mountpoint)?.device;
    } catch (err) {
      // Without the device the dead mount is not recognised later; a replacement then finds it and fails, and is retried.
      this.options.log.error({ err: (err as Error).message }, 'cannot read the mount table');
    }
    if (!this.anchor && this.options.anchor !== false) this.anchor = await MountAnchor.create(this.options.mountpoint, this.options.log);
    this.options.metrics.servingUp.set(1);
    void proc.exited.then((exit) => this.onExit(proc, exit));
  }

  private onExit(proc: ServingProcess, exit: Exit): void {
    const { log, metrics } = this.options;
    metrics.servingUp.set(0);
    if (this.current === proc) this.current = undefined;
    if (this.stopping) return;
    if (exit.code === 0) {
      log.info({ servingPid: proc.pid }, 'serving process ended the mount on purpose: supervision ends');
      void this.finish('unmounted');
      return;
    }
    this.diedAt = Date.now();
    const servedMs = this.diedAt - (proc.readyAt ?? this.diedAt);
    if (servedMs >= this.backoff.stableAfterMs) this.streak = 0;
    if (proc.device) this.deadDevices.add(proc.device);
    log.error({ servingPid: proc.pid, code: exit.code, signal: exit.signal, servedMs }, 'serving process died: replacing it');
    this.scheduleRestart();
  }

  private scheduleRestart(): void {
    const delayMs = this.streak === 0 ? 0 : Math.min(this.backoff.maxDelayMs, this.backoff.firstDelayMs * 2 ** (this.streak - 1));
    this.streak += 1;
    this.options.log.warn({ attempt: this.streak, delayMs }, 'restarting the serving process');
    this.retryTimer = setTimeout(() => void this.restart(), delayMs);
  }

  private async restart(): Promise<void> {
    const { log, metrics } = this.options;
    const attempt = this.streak;
    if (this.stopping) return;
    // The dead mount must go before a new one can be made on the same directory.
    await this.detachDeadMount().catch((err: unknown) => log.error({ attempt, err: (err as Error).message }, 'cannot detach the dead mount'));
    if (this.stopping) return;
    const proc = this.spawn();
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
      log.error({ attempt, servingPid: proc.pid, code: (err as ServingStartError).exitCode, reason: (err as Error).message }, 'serving process could not mount');
      this.scheduleRestart();
      return;
    } finally {
      clearTimeout(timer);
    }
    if (this.stopping) return; // shutDown() stops it: it is `current`
    metrics.recoveries.inc();
    log.info({ attempt, servingPid: proc.pid, downMs: Date.now() - this.diedAt }, 'mount recovered');
    await this.adopt(proc);
    await this.repairBinds();
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
  /** Resolves once the process is gone and its IPC channel closed. */
  readonly exited: Promise<Exit>;
  /** Resolves when it reports that it mounted; rejects with ServingStartError if it fails or ends first. */
  readonly ready: Promise<void>;

  constructor(command: ServingCommand) {
    this.child = spawn(command.file, command.args, {
      env: command.env,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      // Its own process group: a terminal's ^C reaches the supervisor only, which decides.
      detached: true,
    });
    this.exited = new Promise((resolve) => {
      this.child.once('close', (code, signal) => resolve({ code, signal }));
      this.child.once('error', () => resolve({ code: this.child.exitCode ?? 127, signal: null }));
    });
    this.ready = new Promise((resolve, reject) => {
      this.child.on('message', (raw) => {
        const message = asServingMessage(raw);
        if (message?.kind === 'ready') {
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

  private startError(exit: Exit): ServingStartError {
    if (this.failure) return new ServingStartError(this.failure.message, this.failure.exitCode, true);
    const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
    return new ServingStartError(`the serving process ${how} before it mounted`, exit.code || 1, false);
  }
}

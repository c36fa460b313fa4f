/**
 * A worker's membership in its cache group: registers with the master, sends
 * heartbeats at the interval the master asks for, registers again when the master
 * forgot it (restart, expiry), and keeps retrying with capped backoff while the
 * master is down. A duplicate id held by another live worker is fatal.
 *
 * The master answers each registration with a credential that the heartbeats
 * present. It is kept in a file of the worker's state dir (0600), so that a
 * restarted worker takes its id back at once instead of waiting for the old
 * registration to expire; nobody without that file can. Closing deregisters.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CachefsError, isCachefsError } from '../errors.js';
import { Fields } from '../master/decode.js';
import type { Logger } from '../log.js';
import type { RegisterWorkerRequest, WorkerUsage } from '../master/api.js';
import type { MasterClient } from '../master/client.js';

const MAX_BACKOFF_MS = 5000;
/** A stopping worker waits this long at most for the master to take its leave. */
const DEREGISTER_TIMEOUT_MS = 2000;

export class Registration {
  readonly instance = randomUUID();
  readonly startedAt = Date.now();
  private timer?: NodeJS.Timeout;
  private closed = false;
  private registered = false;
  private intervalMs = 2000;
  private backoffMs = 200;
  /** The credential of the current registration (or of the last one, read back from the state dir). */
  private credential: string | undefined;

  constructor(
    private readonly master: MasterClient,
    private readonly identity: Omit<RegisterWorkerRequest, keyof WorkerUsage | 'startedAt' | 'instance' | 'credential'>,
    private readonly usage: () => WorkerUsage,
    private readonly log: Logger,
    private readonly onFatal: (err: CachefsError) => void,
    /** Where the credential is kept across restarts; none: a restart waits for the old registration to expire. */
    private readonly stateDir?: string,
  ) {}

  /** Whether the master knows this worker now: registered and not deregistered or forgotten. */
  get isRegistered(): boolean {
    return this.registered;
  }

  /** Registers once (CONFLICT for a duplicate id is thrown; an unreachable master is retried in the background). */
  async start(): Promise<void> {
    this.credential = await this.loadCredential();
    try {
      await this.register();
    } catch (err) {
      if (isCachefsError(err, 'CONFLICT') || isCachefsError(err, 'INVALID_ARGUMENT')) throw err;
      this.log.warn({ err: (err as Error).message }, 'master not reachable: registering in the background');
    }
    this.schedule(this.registered ? this.intervalMs : this.backoffMs);
  }

  private request(): RegisterWorkerRequest {
    const req: RegisterWorkerRequest = { ...this.identity, ...this.usage(), startedAt: this.startedAt, instance: this.instance };
    return this.credential === undefined ? req : { ...req, credential: this.credential };
  }

  private async register(): Promise<void> {
    const res = await this.master.registerWorker(this.request(), { retries: 0 });
    this.credential = res.credential;
    await this.saveCredential(res.credential);
    this.intervalMs = res.heartbeatIntervalMs;
    this.registered = true;
    this.backoffMs = 200;
    this.log.info({ id: this.identity.id, cacheGroup: this.identity.cacheGroup, address: this.identity.address }, 'registered with the master');
  }

  private async beat(): Promise<void> {
    try {
      if (!this.registered) await this.register();
      else {
        const res = await this.master.heartbeat({ id: this.identity.id, startedAt: this.startedAt, instance: this.instance, credential: this.credential!, ...this.usage() }, { retries: 0 });
        this.intervalMs = res.heartbeatIntervalMs;
      }
      this.schedule(this.intervalMs);
    } catch (err) {
      if (isCachefsError(err, 'NOT_FOUND')) {
        this.registered = false;
        this.schedule(0);
        return;
      }
      if (isCachefsError(err, 'CONFLICT')) {
        this.onFatal(new CachefsError('CONFLICT', `worker id '${this.identity.id}' is taken by another live worker: ${(err as Error).message}`));
        return;
      }
      this.log.warn({ err: (err as Error).message }, 'heartbeat failed; retrying');
      this.schedule(this.backoffMs);
      this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs * 2);
    }
  }

  private credentialFile(): string | undefined {
    return this.stateDir === undefined ? undefined : path.join(this.stateDir, `registration-${this.identity.id}.json`);
  }

  private async loadCredential(): Promise<string | undefined> {
    const file = this.credentialFile();
    if (file === undefined) return undefined;
    try {
      return Fields.of(JSON.parse(await readFile(file, 'utf8')) as unknown, file).string('credential');
    } catch {
      return undefined;
    }
  }

  /** Written whole (temp file, rename) and readable by this user only; a failure costs only a fast restart. */
  private async saveCredential(credential: string): Promise<void> {
    const file = this.credentialFile();
    if (file === undefined) return;
    try {
      await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      const tmp = `${file}.${process.pid}.tmp`;
      await writeFile(tmp, JSON.stringify({ id: this.identity.id, credential }), { mode: 0o600 });
      await rename(tmp, file);
    } catch (err) {
      this.log.warn({ err: (err as Error).message, stateDir: this.stateDir }, 'cannot keep the registration credential: a restart will wait for this registration to expire');
    }
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.beat(), ms);
    this.timer.unref();
  }

  /**
   * Stops the heartbeats and leaves the group at once: a worker stopped on purpose is gone
   * from the master's view now, not after the heartbeat timeout, so clients stop choosing it.
   * A master that cannot be reached lets the registration expire as after a crash.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    if (!this.registered || this.credential === undefined) return;
    this.registered = false;
    try {
      await this.master.removeWorker(this.identity.id, { credential: this.credential }, { retries: 0, timeoutMs: DEREGISTER_TIMEOUT_MS });
      this.log.info({ id: this.identity.id }, 'deregistered from the master');
    } catch (err) {
      this.log.warn({ id: this.identity.id, err: (err as Error).message }, 'cannot deregister: the master forgets this worker at its heartbeat timeout');
    }
  }
}

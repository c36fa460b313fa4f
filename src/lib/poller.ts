/**
 * Runs a refresh now and then every `intervalMs` (never two at once), for the
 * views of master state that mounts and workers keep: failures are logged and
 * the last good state stays in use.
 */
import type { Logger } from '../log.js';

export class Poller {
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private closed = false;

  constructor(private readonly what: string, private readonly intervalMs: number, private readonly refresh: () => Promise<void>, private readonly log: Logger) {}

  /** Runs the first refresh and schedules the next ones; with `lenient`, a failed first refresh is only logged. */
  async start(lenient = false): Promise<void> {
    if (lenient) await this.poke();
    else await this.refresh();
    this.schedule();
  }

  /** Refreshes now (joining one under way). */
  async poke(): Promise<void> {
    this.running ??= this.refresh()
      .catch((err: unknown) => this.log.warn({ err: (err as Error).message }, `cannot refresh the ${this.what}; keeping the last one`))
      .finally(() => (this.running = undefined));
    await this.running;
  }

  private schedule(): void {
    if (this.closed) return;
    this.timer = setTimeout(() => void this.poke().then(() => this.schedule()), this.intervalMs);
    this.timer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.running;
  }
}

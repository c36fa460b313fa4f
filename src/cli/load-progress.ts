/**
 * The progress of `cachefs load`: files, blocks and bytes done of those to load, the
 * rate and the time left. On a terminal, one bar redrawn on stderr; otherwise (or
 * with `--json`) a JSON line on stdout every second and one at the end. Counts only;
 * the load itself is `load.ts`'s.
 */
import type { BlockRef, ObjectRef } from '../block/block.js';
import { humanSize } from './report.js';

export interface LoadTotals {
  files: number;
  blocks: number;
  bytes: number;
}

export interface LoadCounts extends LoadTotals {
  /** Blocks a server found cached already when asked to fill them. */
  cachedBlocks: number;
  failedBlocks: number;
  elapsedMs: number;
  mbPerSec: number;
  etaSeconds: number | null;
}

const BAR_WIDTH = 24;

export class LoadProgress {
  private readonly started = Date.now();
  private readonly left = new Map<ObjectRef, number>();
  private files = 0;
  private blocks = 0;
  private bytes = 0;
  private cachedBlocks = 0;
  private failedBlocks = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly totals: LoadTotals, blocks: readonly BlockRef[], private readonly mode: 'bar' | 'json') {
    for (const ref of blocks) this.left.set(ref.object, (this.left.get(ref.object) ?? 0) + 1);
  }

  start(): void {
    this.timer = setInterval(() => this.draw(), this.mode === 'bar' ? 200 : 1000);
    this.timer.unref();
  }

  /** A block ended: filled, found cached, or failed for good. */
  ended(ref: BlockRef, outcome: 'filled' | 'cached' | 'failed'): void {
    this.blocks++;
    this.bytes += ref.length;
    if (outcome === 'cached') this.cachedBlocks++;
    if (outcome === 'failed') this.failedBlocks++;
    const n = (this.left.get(ref.object) ?? 1) - 1;
    this.left.set(ref.object, n);
    if (n === 0) this.files++;
  }

  /** A line that interrupts the bar (a worker lost). */
  note(text: string): void {
    if (this.mode === 'bar') process.stderr.write(`\r\x1b[K${text}\n`);
    else process.stdout.write(`${JSON.stringify({ event: 'note', message: text })}\n`);
  }

  counts(): LoadCounts {
    const elapsedMs = Date.now() - this.started;
    const rate = elapsedMs > 0 ? this.bytes / (elapsedMs / 1000) : 0;
    return {
      files: this.files,
      blocks: this.blocks,
      bytes: this.bytes,
      cachedBlocks: this.cachedBlocks,
      failedBlocks: this.failedBlocks,
      elapsedMs,
      mbPerSec: Math.round((rate / 1e6) * 10) / 10,
      etaSeconds: rate > 0 ? Math.ceil((this.totals.bytes - this.bytes) / rate) : null,
    };
  }

  /** Stops redrawing; ends the bar's line. */
  stop(): void {
    clearInterval(this.timer);
    this.draw();
    if (this.mode === 'bar') process.stderr.write('\n');
  }

  private draw(): void {
    const c = this.counts();
    if (this.mode === 'json') {
      process.stdout.write(`${JSON.stringify({ event: 'progress', ...c, filesTotal: this.totals.files, blocksTotal: this.totals.blocks, bytesTotal: this.totals.bytes })}\n`);
      return;
    }
    const share = this.totals.bytes > 0 ? c.bytes / this.totals.bytes : 1;
    const full = Math.round(share * BAR_WIDTH);
    const eta = c.etaSeconds === null ? '-' : `${c.etaSeconds}s`;
    const failed = c.failedBlocks > 0 ? ` ${c.failedBlocks} failed` : '';
    process.stderr.write(
      `\r\x1b[K[${'#'.repeat(full)}${'-'.repeat(BAR_WIDTH - full)}] ${Math.floor(share * 100)}% ${c.files}/${this.totals.files} files ${c.blocks}/${this.totals.blocks} blocks ${humanSize(c.bytes)}/${humanSize(this.totals.bytes)} ${c.mbPerSec} MB/s ETA ${eta}${failed}`,
    );
  }
}

// A worker's block index at scale: makes COUNT block files of 64 bytes in DIR (a tier
// dir, `blocks/<id[0..2]>/<id>.<sum>`) unless it has them, then opens a TieredStore on it
// as a worker does at start, and prints how long the open took (the index rebuilt from
// the files on disk and the index file the last open or close wrote; run it twice to see
// both: the first open of files made here has no index), its CPU time and the heap bytes the store then holds per block.
// Usage: node --expose-gc worker-index.mjs DIR COUNT
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readdirSync, writeSync } from 'node:fs';
import path from 'node:path';
import { TieredStore } from '../../dist/cache/tiered-store.js';
import { createLogger } from '../../dist/log.js';
import { Metrics } from '../../dist/metrics/metrics.js';

const [dir, countText] = process.argv.slice(2);
const count = Number(countText);
const blocks = path.join(dir, 'blocks');
mkdirSync(blocks, { recursive: true });
const have = readdirSync(blocks).reduce((n, shard) => n + readdirSync(path.join(blocks, shard)).length, 0);
if (have < count) {
  const bytes = Buffer.alloc(64, 98);
  for (let s = 0; s < 256; s++) mkdirSync(path.join(blocks, s.toString(16).padStart(2, '0')), { recursive: true });
  for (let i = 0; i < count; i++) {
    const id = createHash('sha1').update(String(i)).digest('hex');
    const fd = openSync(path.join(blocks, id.slice(0, 2), `${id}.${i.toString(16).padStart(16, '0')}`), 'w', 0o640);
    writeSync(fd, bytes);
    closeSync(fd);
  }
}
const metrics = new Metrics(false);
globalThis.gc();
const before = process.memoryUsage();
const store = new TieredStore({ tiers: [{ medium: 'SSD', dir, quotaBytes: 1e15 }], high: 0.95, low: 0.7 }, metrics, createLogger('silent'));
const t0 = performance.now();
const cpu0 = process.cpuUsage();
await store.open();
const seconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
globalThis.gc();
const after = process.memoryUsage();
console.log(`worker index: ${store.blockCount} blocks, open ${seconds.toFixed(2)} s (CPU ${((cpu.user + cpu.system) / 1e6).toFixed(2)} s), ${((after.heapUsed - before.heapUsed) / store.blockCount).toFixed(0)} heap bytes per block, rss ${(after.rss / 1048576).toFixed(0)} MiB`);
await store.close();

/**
 * `cachefs report --dataset PATH`: how much of a dataset the cache holds — its size in
 * the UFS, files and blocks, the bytes its blocks' owners hold and their share, and the
 * cache capacity of the group — from the walk of the namespace and one inventory query
 * per worker (the ids of the blocks it owns; it answers which it holds), never a read
 * of the UFS per block. Per worker with `-v`.
 */
import { collectDataset, ownedAndHeld, type DatasetTarget } from './dataset.js';
import { humanSize } from './report.js';

export interface DatasetWorkerReport {
  id: string;
  ownedBlocks: number;
  ownedBytes: number;
  cachedBlocks: number;
  cachedBytes: number;
  cachedPercent: number;
  capacityBytes: number;
}

export interface DatasetReport {
  paths: string[];
  target: string;
  files: number;
  blocks: number;
  ufsBytes: number;
  cachedBlocks: number;
  cachedBytes: number;
  cachedPercent: number;
  capacityBytes: number;
  workers?: DatasetWorkerReport[];
}

function percent(part: number, whole: number): number {
  return whole > 0 ? Math.round((part / whole) * 1000) / 10 : 0;
}

export async function buildDatasetReport(target: DatasetTarget, paths: string[], verbose: boolean): Promise<DatasetReport> {
  const dataset = await collectDataset(target, paths);
  const holdings = await ownedAndHeld(target, dataset);
  const workers: DatasetWorkerReport[] = [];
  for (const [server, h] of holdings) {
    const ownedBytes = h.owned.reduce((n, r) => n + r.length, 0);
    const cached = h.owned.filter((r) => h.held.has(r.id));
    const cachedBytes = cached.reduce((n, r) => n + r.length, 0);
    workers.push({ id: server.id, ownedBlocks: h.owned.length, ownedBytes, cachedBlocks: cached.length, cachedBytes, cachedPercent: percent(cachedBytes, ownedBytes), capacityBytes: h.capacityBytes });
  }
  const cachedBytes = workers.reduce((n, w) => n + w.cachedBytes, 0);
  return {
    paths,
    target: target.what,
    files: dataset.files.length,
    blocks: dataset.blocks,
    ufsBytes: dataset.bytes,
    cachedBlocks: workers.reduce((n, w) => n + w.cachedBlocks, 0),
    cachedBytes,
    cachedPercent: percent(cachedBytes, dataset.bytes),
    capacityBytes: workers.reduce((n, w) => n + w.capacityBytes, 0),
    ...(verbose ? { workers } : {}),
  };
}

export function formatDatasetReport(r: DatasetReport): string {
  let out =
    `dataset ${r.paths.join(' ')} in ${r.target}: ${r.files} files, ${r.blocks} blocks, ${humanSize(r.ufsBytes)} in the UFS; ` +
    `cached ${humanSize(r.cachedBytes)} (${r.cachedPercent}%), ${r.cachedBlocks} blocks; cache capacity ${humanSize(r.capacityBytes)}\n`;
  for (const w of r.workers ?? []) {
    out += `  ${w.id}: owns ${w.ownedBlocks} blocks (${humanSize(w.ownedBytes)}), caches ${w.cachedBlocks} (${humanSize(w.cachedBytes)}, ${w.cachedPercent}%), capacity ${humanSize(w.capacityBytes)}\n`;
  }
  return out;
}

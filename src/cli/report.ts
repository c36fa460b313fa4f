/**
 * `cachefs report`: what the cache cluster holds, from the master's worker
 * registry: per cache group and per worker, alive or lost, capacity, cached
 * bytes and their share of the capacity, blocks, per-tier usage and
 * short-circuit bytes where a worker reports them. Text for people, `--json`
 * for scripts. Only shapes what the master answers; `--dataset` is
 * `dataset-report.ts`'s.
 */
import { Command } from 'commander';
import { parseCacheGroup, type TierMedium, type WorkerRecord, type WorkerState } from '../master/api.js';
import { addClusterSecurityOptions } from './cluster-options.js';
import { runAction } from './exit.js';
import { adminClient, DEFAULT_MASTER, type MasterFlag } from './mount-table.js';
import { buildDatasetReport, formatDatasetReport } from './dataset-report.js';
import { openClusterTarget } from './dataset.js';
import { collect } from './options.js';

export interface TierReport {
  medium: TierMedium;
  dir: string;
  quotaBytes: number;
  usedBytes: number;
  usedPercent: number;
}

export interface WorkerReport {
  id: string;
  state: WorkerState;
  address: string;
  hostname: string;
  domainSocketPath: string;
  capacityBytes: number;
  usedBytes: number;
  usedPercent: number;
  blocks: number;
  tiers: TierReport[];
  shortCircuitBytes?: number;
  startedAt: number;
  lastHeartbeatAgoMs: number;
}

export interface TotalsReport {
  alive: number;
  lost: number;
  /** Sums over alive workers: what the group can serve now. */
  capacityBytes: number;
  cachedBytes: number;
  cachedPercent: number;
  blocks: number;
}

export interface CacheGroupReport extends TotalsReport {
  name: string;
  workers: WorkerReport[];
}

export interface ClusterReport extends TotalsReport {
  master: string;
  generatedAt: number;
  cacheGroups: CacheGroupReport[];
}

function percent(part: number, whole: number): number {
  return whole > 0 ? Math.round((part / whole) * 1000) / 10 : 0;
}

function totals(workers: WorkerReport[]): TotalsReport {
  const alive = workers.filter((w) => w.state === 'alive');
  const capacityBytes = alive.reduce((s, w) => s + w.capacityBytes, 0);
  const cachedBytes = alive.reduce((s, w) => s + w.usedBytes, 0);
  return {
    alive: alive.length,
    lost: workers.length - alive.length,
    capacityBytes,
    cachedBytes,
    cachedPercent: percent(cachedBytes, capacityBytes),
    blocks: alive.reduce((s, w) => s + w.blocks, 0),
  };
}

/** Builds the report from worker records; `now` is the master's clock when it answered. */
export function buildReport(master: string, workers: WorkerRecord[], now: number): ClusterReport {
  const byGroup = new Map<string, WorkerReport[]>();
  for (const w of workers) {
    const report: WorkerReport = {
      id: w.id,
      state: w.state,
      address: w.address,
      hostname: w.hostname,
      domainSocketPath: w.domainSocketPath,
      capacityBytes: w.capacityBytes,
      usedBytes: w.usedBytes,
      usedPercent: percent(w.usedBytes, w.capacityBytes),
      blocks: w.blocks,
      tiers: w.tiers.map((t) => ({ ...t, usedPercent: percent(t.usedBytes, t.quotaBytes) })),
      startedAt: w.startedAt,
      lastHeartbeatAgoMs: Math.max(0, now - w.lastHeartbeat),
    };
    if (w.shortCircuitBytes !== undefined) report.shortCircuitBytes = w.shortCircuitBytes;
    const list = byGroup.get(w.cacheGroup) ?? [];
    list.push(report);
    byGroup.set(w.cacheGroup, list);
  }
  const cacheGroups = [...byGroup.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([name, list]) => ({ name, ...totals(list), workers: list }));
  return { master, generatedAt: now, ...totals(cacheGroups.flatMap((g) => g.workers)), cacheGroups };
}

/** Sizes for people: `1.5GiB`, `512KiB`, `0B`. */
export function humanSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const text = i === 0 || v >= 100 ? String(Math.round(v)) : v.toFixed(1).replace(/\.0$/, '');
  return `${text}${units[i]}`;
}

function ago(ms: number): string {
  if (ms < 1000) return `${ms}ms ago`;
  if (ms < 120_000) return `${Math.round(ms / 1000)}s ago`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)}m ago`;
  return `${Math.round(ms / 3_600_000)}h ago`;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => `  ${r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd()}\n`).join('');
}

export function formatReport(r: ClusterReport): string {
  let out = `master ${r.master}: workers ${r.alive} alive, ${r.lost} lost; cached ${humanSize(r.cachedBytes)} of ${humanSize(r.capacityBytes)} (${r.cachedPercent}%), ${r.blocks} blocks\n`;
  if (r.cacheGroups.length === 0) return `${out}no workers registered\n`;
  for (const g of r.cacheGroups) {
    out += `\ncache group ${g.name}: ${g.alive} alive, ${g.lost} lost; cached ${humanSize(g.cachedBytes)} of ${humanSize(g.capacityBytes)} (${g.cachedPercent}%), ${g.blocks} blocks\n`;
    const showShortCircuit = g.workers.some((w) => w.shortCircuitBytes !== undefined);
    const header = ['WORKER', 'STATE', 'ADDRESS', 'HOST', 'CAPACITY', 'CACHED', 'USE%', 'BLOCKS', ...(showShortCircuit ? ['SHORT-CIRCUIT'] : []), 'HEARTBEAT'];
    const rows = g.workers.map((w) => [
      w.id,
      w.state,
      w.address,
      w.hostname,
      humanSize(w.capacityBytes),
      humanSize(w.usedBytes),
      `${w.usedPercent}%`,
      String(w.blocks),
      ...(showShortCircuit ? [w.shortCircuitBytes === undefined ? '-' : humanSize(w.shortCircuitBytes)] : []),
      ago(w.lastHeartbeatAgoMs),
    ]);
    out += table([header, ...rows]);
    const tierRows = g.workers.flatMap((w) =>
      w.tiers.map((t) => [w.id, t.medium, t.dir, `${humanSize(t.usedBytes)} / ${humanSize(t.quotaBytes)}`, `${t.usedPercent}%`]),
    );
    if (tierRows.length > 0) out += `  tiers:\n${table([['WORKER', 'MEDIUM', 'DIR', 'USED / QUOTA', 'USE%'], ...tierRows]).replace(/^(?=.)/gm, '  ')}`;
  }
  return out;
}

interface ReportFlags extends MasterFlag {
  json?: boolean;
  cacheGroup?: string;
  dataset?: string[];
  verbose?: boolean;
}

export function registerReportCommand(program: Command): void {
  const command = program
    .command('report')
    .description('show the cache cluster: workers (alive/lost), capacity, cached bytes and percentage, blocks, per-tier usage')
    .option('--master <host:port>', 'the master', DEFAULT_MASTER)
    .option('--cache-group <name>', 'only this cache group')
    .option('--dataset <path>', "how much of this dataset (a namespace path, repeatable) the cache group holds: UFS size, cached bytes and share, per worker with -v", collect, [])
    .option('-v, --verbose', 'with --dataset: per worker')
    .option('--json', 'print JSON');
  addClusterSecurityOptions(command, 'admin')
    .action(
      runAction(async (flags: ReportFlags) => {
        if (flags.dataset !== undefined && flags.dataset.length > 0) {
          const target = await openClusterTarget({ ...flags, cacheGroup: flags.cacheGroup ?? 'default' });
          try {
            const report = await buildDatasetReport(target, flags.dataset, flags.verbose === true);
            process.stdout.write(flags.json ? `${JSON.stringify(report, null, 2)}\n` : formatDatasetReport(report));
          } finally {
            await target.close();
          }
          return;
        }
        const cacheGroup = flags.cacheGroup === undefined ? undefined : parseCacheGroup(flags.cacheGroup, '--cache-group');
        const client = adminClient(flags);
        try {
          const { workers, now } = await client.listWorkers({ cacheGroup });
          const report = buildReport(client.address.text, workers, now);
          process.stdout.write(flags.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
        } finally {
          await client.close();
        }
      }),
    );
}

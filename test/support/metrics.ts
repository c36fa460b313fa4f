/**
 * Reads a Prometheus text endpoint (or an in-process registry) and answers sums of
 * series by name and labels.
 */
import type { Registry } from 'prom-client';
import { expect } from 'vitest';

export interface MetricsSnapshot {
  /** Sum of every series of `name` whose labels include `labels` (0 when none). */
  value(name: string, labels?: Record<string, string>): number;
  text: string;
}

export function parseMetrics(text: string): MetricsSnapshot {
  const series: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, '$1');
    series.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return {
    text,
    value(name, want = {}) {
      return series
        .filter((s) => s.name === name && Object.entries(want).every(([k, v]) => s.labels[k] === v))
        .reduce((sum, s) => sum + s.value, 0);
    },
  };
}

/** Sum of every series of an in-process metric whose labels include `labels` (0 when none). */
export async function registryValue(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name} in the registry`);
  const { values } = await metric.get();
  return values.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((sum, v) => sum + v.value, 0);
}

export async function scrapeMetrics(url: string): Promise<MetricsSnapshot> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url} answered ${res.status}`);
  return parseMetrics(await res.text());
}

/**
 * Checks that every byte a mount answered to the kernel's reads (since `before`, if given)
 * came by `paths`, and that it answered at least `bytes`. Not exactly `bytes`: the kernel asks
 * again for pages it let go, and this machine's proactive reclaim (DAMON) takes page-cache
 * pages within seconds.
 */
export function expectServedBy(m: MetricsSnapshot, paths: string | string[], bytes: number, before?: MetricsSnapshot): void {
  const delta = (name: string, labels?: Record<string, string>): number => m.value(name, labels) - (before?.value(name, labels) ?? 0);
  const answered = delta('cachefs_fuse_read_bytes_total');
  expect(answered, 'bytes answered to the kernel').toBeGreaterThanOrEqual(bytes);
  const served = [paths].flat().reduce((sum, path) => sum + delta('cachefs_client_read_bytes_total', { path }), 0);
  const byPath = m.text.split('\n').filter((l) => l.startsWith('cachefs_client_read_bytes_total{')).join(', ');
  expect(served, `bytes served by ${[paths].flat().join(' and ')} (all paths: ${byPath})`).toBe(answered);
}

/**
 * Checks that `opens` opens since `before` were answered with FUSE passthrough and that the
 * kernel read their bytes from the cached file itself: none reached cachefs, none came from
 * the store.
 */
export function expectPassedThrough(m: MetricsSnapshot, opens: number, before: MetricsSnapshot): void {
  const delta = (name: string): number => m.value(name) - before.value(name);
  expect(delta('cachefs_fuse_passthrough_opens_total'), 'opens passed through').toBe(opens);
  expect(delta('cachefs_fuse_read_bytes_total'), 'bytes answered to the kernel').toBe(0);
  expect(delta('cachefs_ufs_read_bytes_total'), 'bytes read from the store').toBe(0);
}

/**
 * The metrics of a process whose cache has written every block it fetched: a reader is
 * answered from a fetch's bytes before the block file is written (cache/read-through.ts),
 * so what a test then finds on disk, or in the cache's gauges, depends on how far those
 * writes got. Polls (bounded) until `cachefs_cache_writes_in_flight` is 0; the series must
 * be there, or a process without it would pass at once.
 */
export async function settledCacheMetrics(scrape: () => Promise<MetricsSnapshot>, timeoutMs = 10_000): Promise<MetricsSnapshot> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await scrape();
    expect(m.text, 'the process reports cachefs_cache_writes_in_flight').toMatch(/^cachefs_cache_writes_in_flight /m);
    if (m.value('cachefs_cache_writes_in_flight') === 0) return m;
    if (Date.now() > deadline) throw new Error(`block writes still in flight after ${timeoutMs} ms: ${m.value('cachefs_cache_writes_in_flight')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * The master's Prometheus metrics, in a registry of its own (never prom-client's
 * global default, so several masters can live in one test process). Request
 * counts and latency by route; the namespace cache's hits, misses and requests
 * to the UFS; mount-table and worker gauges are computed from
 * the live tables at scrape time.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { MountTable } from './mount-table.js';
import type { WorkerRegistry } from './worker-registry.js';

export class MasterMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'cachefs_master_requests_total',
    help: 'API requests answered by the master, by route and HTTP status',
    labelNames: ['route', 'status'] as const,
    registers: [this.registry],
  });
  readonly requestSeconds = new Histogram({
    name: 'cachefs_master_request_seconds',
    help: 'Time to answer an API request, by route',
    labelNames: ['route'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1],
    registers: [this.registry],
  });

  readonly namespaceRequests = new Counter({
    name: 'cachefs_master_namespace_requests_total',
    help: 'Namespace cache requests by op (list: one page, stat) and result: hit, miss (asked the UFS), passthrough (a page not kept: past the per-directory bound, or of another generation)',
    labelNames: ['op', 'result'] as const,
    registers: [this.registry],
  });
  readonly namespaceUfsRequests = new Counter({
    name: 'cachefs_master_namespace_ufs_requests_total',
    help: 'Requests the namespace cache sent to the UFS, by op (list: one LIST page, stat: one HEAD)',
    labelNames: ['op'] as const,
    registers: [this.registry],
  });

  constructor(mountTable: MountTable, workers: WorkerRegistry, withProcessMetrics = true) {
    new Counter({
      name: 'cachefs_master_workers_lost_total',
      help: 'Times a worker was marked lost after missing its heartbeats',
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(workers.lostTotal);
      },
    });
    new Gauge({
      name: 'cachefs_master_mount_entries',
      help: 'Entries in the mount table',
      registers: [this.registry],
      collect() {
        this.set(mountTable.size);
      },
    });
    new Gauge({
      name: 'cachefs_master_workers',
      help: 'Registered workers by cache group and state',
      labelNames: ['cache_group', 'state'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const g of workers.groups()) {
          this.set({ cache_group: g.name, state: 'alive' }, g.alive);
          this.set({ cache_group: g.name, state: 'lost' }, g.lost);
        }
      },
    });
    new Gauge({
      name: 'cachefs_master_cache_used_bytes',
      help: 'Bytes cached by the alive workers of each cache group',
      labelNames: ['cache_group'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const g of workers.groups()) this.set({ cache_group: g.name }, g.usedBytes);
      },
    });
    new Gauge({
      name: 'cachefs_master_cache_capacity_bytes',
      help: 'Cache capacity of the alive workers of each cache group',
      labelNames: ['cache_group'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const g of workers.groups()) this.set({ cache_group: g.name }, g.capacityBytes);
      },
    });
    if (withProcessMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'cachefs_process_' });
  }
}

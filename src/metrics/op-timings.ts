/**
 * Counts and durations of FUSE ops, by op: `cachefs_fuse_ops_total` and
 * `cachefs_fuse_op_seconds` (a histogram). Every request the kernel sends passes here
 * twice, so the hot path only adds to plain numbers of the op's own record; the
 * Prometheus series are made from them when scraped. (prom-client's labelled `inc` and
 * `observe` hash their labels at each call: about 3 µs of every LOOKUP, a tenth of its
 * JavaScript, in a `find` over a cold folder.)
 */
import type { Metric, Registry } from 'prom-client';

/** One op's figures. */
export class OpRecord {
  /** Requests begun. */
  count = 0;
  /** Requests answered, the sum of their seconds, and how many took at most each bucket's bound. */
  answered = 0;
  sum = 0;
  readonly buckets: Float64Array;

  constructor(
    readonly op: string,
    private readonly bounds: readonly number[],
  ) {
    this.buckets = new Float64Array(bounds.length);
  }

  /** A request of this op was answered `seconds` after it began. */
  observe(seconds: number): void {
    this.answered += 1;
    this.sum += seconds;
    const bounds = this.bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (seconds <= bounds[i]!) {
        this.buckets[i]! += 1;
        return;
      }
    }
  }
}

interface Sample {
  metricName?: string;
  labels: Record<string, string | number>;
  value: number;
}

export class OpTimings {
  private readonly records = new Map<string, OpRecord>();

  constructor(
    registry: Registry,
    count: { name: string; help: string },
    private readonly seconds: { name: string; help: string },
    private readonly bounds: readonly number[],
  ) {
    registry.registerMetric(this.metric(count.name, count.help, 'counter', () => this.counts()));
    registry.registerMetric(this.metric(seconds.name, seconds.help, 'histogram', () => this.histogram()));
  }

  /** The record of `op`, made at its first request. */
  of(op: string): OpRecord {
    let record = this.records.get(op);
    if (!record) this.records.set(op, (record = new OpRecord(op, this.bounds)));
    return record;
  }

  private counts(): Sample[] {
    return [...this.records.values()].map((r) => ({ labels: { op: r.op }, value: r.count }));
  }

  private histogram(): Sample[] {
    const samples: Sample[] = [];
    const name = this.seconds.name;
    for (const r of this.records.values()) {
      let cumulative = 0;
      this.bounds.forEach((le, i) => {
        cumulative += r.buckets[i]!;
        samples.push({ metricName: `${name}_bucket`, labels: { le, op: r.op }, value: cumulative });
      });
      samples.push({ metricName: `${name}_bucket`, labels: { le: '+Inf', op: r.op }, value: r.answered });
      samples.push({ metricName: `${name}_sum`, labels: { op: r.op }, value: r.sum });
      samples.push({ metricName: `${name}_count`, labels: { op: r.op }, value: r.answered });
    }
    return samples;
  }

  /** A metric as a registry takes one (what prom-client's own classes give it): read from the records when scraped. */
  private metric(name: string, help: string, type: 'counter' | 'histogram', values: () => Sample[]): Metric {
    const metric = {
      name,
      help,
      type,
      aggregator: 'sum',
      get: async () => ({ name, help, type, aggregator: 'sum', values: values() }),
      reset: () => this.records.clear(),
    };
    return metric as unknown as Metric;
  }
}

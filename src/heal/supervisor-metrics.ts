/**
 * Metrics of a supervised mount on the one `--metrics-port`: the supervisor owns the
 * endpoint and answers with its own families (recoveries, whether a serving process
 * is up, bind repairs) followed by everything the current serving process exposes
 * on its private endpoint (127.0.0.1, a port of its own choosing). Scrapers keep a
 * single target across crashes, and the recovery counter lives in the process that
 * survives them. While no serving process answers, only the supervisor's families
 * are served. `/healthz` (liveness) answers 200 while the supervisor runs, recovering or
 * not, so a probe never restarts a container that is healing itself; `/readyz` (readiness)
 * answers 200 only while a serving process is mounted, 503 while it is being replaced.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge } from 'prom-client';
import { CachefsError } from '../errors.js';
import { Metrics } from '../metrics/metrics.js';

const SCRAPE_TIMEOUT_MS = 2000;

export class SupervisorMetrics {
  // The shared definition of cachefs_mount_recoveries_total; the other families of Metrics stay unexported here.
  private readonly metrics = new Metrics(false);
  readonly recoveries = this.metrics.recoveries;
  readonly servingUp = new Gauge({ name: 'cachefs_mount_serving_up', help: 'Whether a serving process is mounted and answering (1) or being replaced (0)', registers: [this.metrics.registry] });
  readonly bindRepairs = new Counter({ name: 'cachefs_mount_bind_repairs_total', help: 'Binds of a dead mount re-bound from the live one, by outcome', labelNames: ['outcome'], registers: [this.metrics.registry] });
  private readonly own = ['cachefs_mount_recoveries_total', 'cachefs_mount_serving_up', 'cachefs_mount_bind_repairs_total'];

  get contentType(): string {
    return this.metrics.registry.contentType;
  }

  /** The supervisor's families in Prometheus text format. */
  async text(): Promise<string> {
    const parts = await Promise.all(this.own.map((name) => this.metrics.registry.getSingleMetricAsString(name)));
    return `${parts.join('\n')}\n`;
  }

  /** A serving process's exposition without the families the supervisor owns (the child's are always zero). */
  withoutOwn(text: string): string {
    const own = new Set(this.own);
    return text
      .split('\n')
      .filter((line) => {
        const name = line.startsWith('# ') ? line.split(' ')[2] : /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
        return name === undefined || !own.has(name);
      })
      .join('\n');
  }
}

export interface ServingEndpoint {
  /** Whether a serving process is up, and the port of its own metrics endpoint. */
  serving(): { metricsPort?: number } | undefined;
}

export class SupervisorMetricsServer {
  private constructor(private readonly server: Server, readonly port: number) {}

  static async start(metrics: SupervisorMetrics, serving: ServingEndpoint, port: number, host: string): Promise<SupervisorMetricsServer> {
    const server = createServer((req, res) => {
      if (req.url === '/metrics') {
        render(metrics, serving.serving()?.metricsPort).then(
          (text) => res.writeHead(200, { 'content-type': metrics.contentType }).end(text),
          (err: unknown) => res.writeHead(500).end(String(err)),
        );
      } else if (req.url === '/healthz') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end(serving.serving() ? 'ok\n' : 'ok, recovering\n');
      } else if (req.url === '/readyz') {
        const up = serving.serving() !== undefined;
        res.writeHead(up ? 200 : 503, { 'content-type': 'text/plain' }).end(up ? 'ready\n' : 'recovering\n');
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new CachefsError('CONFLICT', `cannot listen for metrics on ${host}:${port}: ${err.message}`)));
      server.listen(port, host, resolve);
    });
    return new SupervisorMetricsServer(server, (server.address() as AddressInfo).port);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

async function render(metrics: SupervisorMetrics, servingPort: number | undefined): Promise<string> {
  const own = await metrics.text();
  if (servingPort === undefined) return own;
  try {
    const res = await fetch(`http://127.0.0.1:${servingPort}/metrics`, { signal: AbortSignal.timeout(SCRAPE_TIMEOUT_MS) });
    if (!res.ok) return own;
    const served = metrics.withoutOwn(await res.text());
    return `${served.endsWith('\n') ? served : `${served}\n`}${own}`;
  } catch {
    // The serving process is dying or being replaced: what the supervisor knows is still worth serving.
    return own;
  }
}

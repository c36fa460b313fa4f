/**
 * HTTP endpoint for a process's metrics: `/metrics` (Prometheus text), `/healthz`
 * (the process answers) and `/readyz` (it is ready to serve, as `ready` says). Used by
 * mounts; workers and the master serve the same paths from their own servers.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { CachefsError } from '../errors.js';

export class MetricsServer {
  private constructor(private readonly server: Server, readonly port: number) {}

  static async start(registry: Registry, port: number, host = '0.0.0.0', ready: () => boolean = () => true): Promise<MetricsServer> {
    const server = createServer((req, res) => {
      if (req.url === '/metrics') {
        registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
          (err: unknown) => res.writeHead(500).end(String(err)),
        );
      } else if (req.url === '/healthz') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      } else if (req.url === '/readyz') {
        const up = ready();
        res.writeHead(up ? 200 : 503, { 'content-type': 'text/plain' }).end(up ? 'ready\n' : 'not ready\n');
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new CachefsError('CONFLICT', `cannot listen for metrics on ${host}:${port}: ${err.message}`)));
      server.listen(port, host, resolve);
    });
    return new MetricsServer(server, (server.address() as AddressInfo).port);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

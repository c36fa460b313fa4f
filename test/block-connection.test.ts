/**
 * The block service's connection pool against a real node:http server on 127.0.0.1:
 * bodies land byte-exactly in the caller's buffers under concurrency, errors and
 * closed keep-alive connections are handled, and a silent server times out.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ConnectionPool } from '../src/client/block-connection.js';

const MiB = 1024 * 1024;
const servers: http.Server[] = [];
const pools: ConnectionPool[] = [];

afterEach(async () => {
  for (const p of pools.splice(0)) p.close();
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

async function serve(handler: http.RequestListener, keepAliveTimeout?: number): Promise<number> {
  const server = http.createServer(handler);
  if (keepAliveTimeout !== undefined) server.keepAliveTimeout = keepAliveTimeout;
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

function pool(port: number, timeouts = { connectMs: 2000, headersMs: 5000, bodyMs: 5000 }): ConnectionPool {
  const p = new ConnectionPool('127.0.0.1', port, 4, timeouts);
  pools.push(p);
  return p;
}

describe('ConnectionPool', () => {
  it('reads 4 MiB and tiny bodies into the callers\' buffers, 40 at a time over 4 connections', async () => {
    const bodies = new Map<string, Buffer>();
    for (let i = 0; i < 40; i++) bodies.set(`/b${i}`, randomBytes(i % 3 === 0 ? i : 4 * MiB));
    let connections = 0;
    const port = await serve((req, res) => {
      const b = bodies.get(req.url!)!;
      res.writeHead(200, { 'content-length': String(b.length) }).end(b);
    });
    servers[0]!.on('connection', () => connections++);
    const p = pool(port);
    const results = await Promise.all(
      [...bodies].map(async ([path, body]) => {
        const dest = Buffer.alloc(body.length);
        const r = await p.request({ path, dest });
        return r.status === 200 && r.length === body.length && dest.equals(body);
      }),
    );
    expect(results.every(Boolean)).toBe(true);
    expect(connections).toBeLessThanOrEqual(4);
  });

  it('returns error statuses with their body, and keeps the connection usable', async () => {
    const port = await serve((req, res) => {
      const body = req.url === '/missing' ? '{"error":{"code":"NOT_FOUND","message":"no block"}}' : 'fine';
      res.writeHead(req.url === '/missing' ? 404 : 200, { 'content-length': String(body.length) }).end(body);
    });
    const p = pool(port);
    const missing = await p.request({ path: '/missing', dest: Buffer.alloc(8) });
    expect(missing).toMatchObject({ status: 404, errorBody: '{"error":{"code":"NOT_FOUND","message":"no block"}}' });
    const dest = Buffer.alloc(4);
    expect(await p.request({ path: '/ok', dest })).toMatchObject({ status: 200, length: 4 });
    expect(dest.toString()).toBe('fine');
  });

  it('refuses a body larger than the buffer given for it', async () => {
    const port = await serve((_req, res) => res.writeHead(200, { 'content-length': '100' }).end(Buffer.alloc(100)));
    await expect(pool(port).request({ path: '/x', dest: Buffer.alloc(10) })).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/100 bytes, more than the 10/) });
  });

  it('retries once on a new connection when the server closed a kept-alive one', async () => {
    const port = await serve((_req, res) => res.writeHead(200, { 'content-length': '2' }).end('ok'), 50);
    const p = pool(port);
    const dest = Buffer.alloc(2);
    expect((await p.request({ path: '/a', dest })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 200)); // the server has closed the idle connection
    expect((await p.request({ path: '/b', dest })).status).toBe(200);
    expect(dest.toString()).toBe('ok');
  });

  it('gives up on a server that never answers, and on a cancelled request', async () => {
    const port = await serve(() => undefined);
    const p = pool(port, { connectMs: 2000, headersMs: 300, bodyMs: 300 });
    const t0 = Date.now();
    await expect(p.request({ path: '/slow', dest: Buffer.alloc(1) })).rejects.toThrow(/no answer within 300 ms/);
    expect(Date.now() - t0).toBeLessThan(3000);
    const cancel = new AbortController();
    setTimeout(() => cancel.abort(), 50);
    await expect(p.request({ path: '/slow', dest: Buffer.alloc(1), signal: cancel.signal })).rejects.toThrow(/cancelled/);
  });

  it('fails fast when nothing listens', async () => {
    const port = await serve(() => undefined);
    servers.pop()!.close();
    await expect(pool(port).request({ path: '/x', dest: Buffer.alloc(1) })).rejects.toThrow(/ECONNREFUSED/);
  });
});

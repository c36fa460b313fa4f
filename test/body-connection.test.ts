/**
 * Body connections against real node:http and node:https servers on 127.0.0.1:
 * bodies land byte-exactly in the caller's buffers under concurrency (also over TLS),
 * headers go both ways, error bodies (also chunked) come back and leave the
 * connection usable, closed keep-alive connections are handled, and a silent server
 * times out.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BodyConnectionPool, decodeChunked } from '../src/net/body-connection.js';

const MiB = 1024 * 1024;
const servers: http.Server[] = [];
const pools: BodyConnectionPool[] = [];
const TLS_KEY = readFileSync(new URL('./support/tls/localhost.key', import.meta.url));
const TLS_CERT = readFileSync(new URL('./support/tls/localhost.crt', import.meta.url));

afterEach(async () => {
  for (const p of pools.splice(0)) p.close();
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

async function serve(handler: http.RequestListener, keepAliveTimeout?: number, secure = false): Promise<number> {
  const server = secure ? https.createServer({ key: TLS_KEY, cert: TLS_CERT }, handler) : http.createServer(handler);
  if (keepAliveTimeout !== undefined) server.keepAliveTimeout = keepAliveTimeout;
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

function pool(port: number, timeouts = { connectMs: 2000, headersMs: 5000, bodyMs: 5000 }, tls?: { ca?: Buffer }): BodyConnectionPool {
  const p = new BodyConnectionPool({ host: '127.0.0.1', port, size: 4, timeouts, tls });
  pools.push(p);
  return p;
}

describe('BodyConnectionPool', () => {
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
    expect(missing).toMatchObject({ status: 404 });
    expect(missing.errorBody?.toString()).toBe('{"error":{"code":"NOT_FOUND","message":"no block"}}');
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

  it('sends the caller\'s headers, returns the response\'s, and reads over TLS against a given CA', async () => {
    const body = randomBytes(4 * MiB);
    const seen: http.IncomingHttpHeaders[] = [];
    const port = await serve(
      (req, res) => {
        seen.push(req.headers);
        res.writeHead(206, { 'content-length': String(body.length), etag: '"abc"', 'x-amz-meta-a': 'b' }).end(body);
      },
      undefined,
      true,
    );
    const p = pool(port, undefined, { ca: TLS_CERT });
    const dest = Buffer.alloc(body.length);
    const r = await p.request({ path: '/o?x-id=GetObject', headers: { host: 'bucket.example', range: 'bytes=0-9', authorization: 'AWS4 sig' }, dest });
    expect(r).toMatchObject({ status: 206, length: body.length, headers: { etag: '"abc"', 'x-amz-meta-a': 'b' } });
    expect(dest.equals(body)).toBe(true);
    expect(seen[0]).toMatchObject({ host: 'bucket.example', range: 'bytes=0-9', authorization: 'AWS4 sig' });
    // Without the CA the self-signed certificate is refused.
    await expect(pool(port, undefined, {}).request({ path: '/o', dest })).rejects.toThrow(/self-signed certificate/);
  });

  it('decodes a chunked error body and reuses the connection; a Connection: close answer closes it', async () => {
    let connections = 0;
    const port = await serve((req, res) => {
      if (req.url === '/chunked') {
        res.writeHead(404, { 'content-type': 'application/xml' }); // no length: node:http sends it chunked
        res.write('<Error><Code>NoSuchKey</Code>');
        setTimeout(() => res.end('<Message>gone</Message></Error>'), 20);
      } else if (req.url === '/close') {
        res.writeHead(200, { 'content-length': '5', connection: 'close' }).end('bye!!');
      } else res.writeHead(200, { 'content-length': '2' }).end('ok');
    });
    servers[0]!.on('connection', () => connections++);
    const p = new BodyConnectionPool({ host: '127.0.0.1', port, size: 1, timeouts: { connectMs: 2000, headersMs: 5000, bodyMs: 5000 } });
    pools.push(p);
    const missing = await p.request({ path: '/chunked', dest: Buffer.alloc(2) });
    expect(missing.status).toBe(404);
    expect(missing.errorBody?.toString()).toBe('<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>');
    const dest = Buffer.alloc(5);
    expect((await p.request({ path: '/ok', dest })).length).toBe(2);
    expect(connections).toBe(1);
    expect((await p.request({ path: '/close', dest })).length).toBe(5);
    expect(dest.toString()).toBe('bye!!');
    expect((await p.request({ path: '/ok', dest })).length).toBe(2);
    expect(connections).toBe(2);
  });

  it('refuses a 2xx body without a Content-Length (it could not be placed)', async () => {
    const port = await serve((_req, res) => {
      res.writeHead(200);
      res.end('streamed');
    });
    await expect(pool(port).request({ path: '/x', dest: Buffer.alloc(100) })).rejects.toMatchObject({ code: 'IO', message: expect.stringMatching(/200 response without a Content-Length/) });
  });
});

describe('decodeChunked', () => {
  it('decodes complete messages with extensions and trailers, and waits for incomplete ones', () => {
    expect(decodeChunked(Buffer.from('3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\nNEXT'))).toEqual({ body: Buffer.from('abcde'), rest: 4 });
    expect(decodeChunked(Buffer.from('0\r\n\r\n'))).toEqual({ body: Buffer.alloc(0), rest: 0 });
    expect(decodeChunked(Buffer.from('3\r\nabc\r\n0\r\n'))).toBeNull();
    expect(decodeChunked(Buffer.from('5\r\nab'))).toBeNull();
    expect(decodeChunked(Buffer.from('zz\r\nab\r\n'))).toBe('malformed');
  });
});
